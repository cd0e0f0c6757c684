"""The robot-side client of `posevla serve` (no torch: numpy, msgpack and websockets only).

:class:`PolicyClient` speaks the protocol of :mod:`posevla.serving.server` (openpi's): it reads the metadata
frame on connect, sends one observation per request, and turns the server's error text frame into a
:class:`ServerError` carrying the server's message. openpi's own ``WebsocketClientPolicy`` works against the
same server; this one adds timeouts, retries on connect, reconnect after an error, and round-trip timing.

:class:`RemotePolicy` adapts a client to the closed-loop rollout (:mod:`posevla.eval.rollout`): ``policy(obs)
-> {"actions": (H, A), ...}``. It numbers its calls like an in-process :class:`posevla.policy.Policy` does and
sends each call's noise seed, so an evaluation through a server gives the same chunks -- and the same
per-seed outcomes -- as one in process, whatever else the server is serving.

Usage::

    from posevla.serving.client import PolicyClient
    with PolicyClient("ws://gpu-host:8000", api_key=KEY) as client:
        print(client.metadata["observation_spec"])
        chunk = client.infer({"observation/image": img, "observation/wrist_image": wrist,
                              "observation/state": state, "prompt": "pick up the bowl"})["actions"]  # (H, A)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import websockets
import websockets.sync.client as ws_client

from posevla.errors import ConfigError, InferenceError
from posevla.serving.wire import pack, unpack

__all__ = ["PolicyClient", "RemotePolicy", "ServerError", "call_seed"]


class ServerError(InferenceError):
    """The server could not answer a request; the message is the server's (what was wrong, how to fix it)."""


def call_seed(policy_seed: int, call: int) -> int:
    """The noise seed of call number `call` of a policy seeded `policy_seed` (the numbering of
    :class:`posevla.policy.Policy` for calls without a seed of their own)."""
    return int(np.random.SeedSequence([int(policy_seed), int(call)]).generate_state(1)[0])


class PolicyClient:
    """A websocket connection to a policy server.

    Args:
        url: ``ws://host:port`` (``host:port`` is accepted too).
        api_key: sent as ``Authorization: Api-Key <key>``.
        connect_timeout_s: how long to keep retrying the connection (the server may still be loading).
        timeout_s: the longest a reply may take.

    Attributes:
        metadata: the server's metadata frame (observation spec, action dims, chunk size, ...).
        round_trip_ms: wall-clock milliseconds of every `infer` so far.
    """

    def __init__(self, url: str = "ws://127.0.0.1:8000", *, api_key: str | None = None,
                 connect_timeout_s: float = 30.0, timeout_s: float = 120.0) -> None:
        self.url = url if url.startswith(("ws://", "wss://")) else f"ws://{url}"
        self.api_key = api_key
        self.connect_timeout_s = float(connect_timeout_s)
        self.timeout_s = float(timeout_s)
        self.round_trip_ms: list[float] = []
        self._ws: Any = None
        self.metadata: dict[str, Any] = {}
        self._connect()

    def _connect(self) -> None:
        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        deadline = time.monotonic() + self.connect_timeout_s
        last: Exception | None = None
        while True:
            try:
                self._ws = ws_client.connect(self.url, compression=None, max_size=None,
                                             additional_headers=headers, open_timeout=10)
                break
            except websockets.InvalidStatus as e:  # e.g. 401: retrying will not help
                body = getattr(e.response, "body", b"") or b""
                raise ConfigError(f"the server at {self.url} refused the connection: HTTP "
                                  f"{e.response.status_code} {body.decode('utf-8', 'replace').strip()}") from None
            except (OSError, websockets.WebSocketException, TimeoutError) as e:
                last = e
                if time.monotonic() >= deadline:
                    raise ConfigError(f"no policy server at {self.url} after {self.connect_timeout_s:.0f}s "
                                      f"({type(e).__name__}: {e}); start one with `posevla serve --checkpoint RUN`"
                                      ) from None
                time.sleep(0.2)
        del last
        first = self._ws.recv(timeout=self.timeout_s)
        if isinstance(first, str):
            raise ServerError(f"the server sent text instead of its metadata frame: {first[:500]}")
        meta = unpack(first)
        if not isinstance(meta, dict):
            raise ServerError(f"the server's first frame is not a metadata map but {type(meta).__name__}")
        self.metadata = meta

    def infer(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """Send one observation, return the reply (``"actions"`` (H, A) float32, ``"server_timing"``, ...).

        Raises:
            ServerError: the server answered with an error (the connection is then closed by the server;
                the next call reconnects).
        """
        if self._ws is None:
            self._connect()
        t0 = time.perf_counter()
        try:
            self._ws.send(pack(dict(obs)))
            reply = self._ws.recv(timeout=self.timeout_s)
        except websockets.ConnectionClosed as e:
            self._ws = None
            raise ServerError(f"the connection to {self.url} closed ({e})") from None
        except TimeoutError:
            self.close()
            raise ServerError(f"no reply from {self.url} within {self.timeout_s:.0f}s") from None
        if isinstance(reply, str):
            self.close()
            raise ServerError(reply)
        out = unpack(reply)
        if not isinstance(out, dict) or "actions" not in out:
            raise ServerError(f"the server's reply has no 'actions' (keys: {list(out)[:10] if isinstance(out, dict) else type(out).__name__})")
        self.round_trip_ms.append(1e3 * (time.perf_counter() - t0))
        return out

    def reset(self) -> None:
        """Start of an episode (the server keeps no episode state)."""

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class RemotePolicy:
    """A `PolicyClient` as a rollout policy: ``policy(obs) -> reply`` with each call's noise seed sent.

    Args:
        client: the connection (or a URL to open one).
        seed: the seed of the in-process policy this one stands for (``Policy.from_checkpoint(seed=...)``).
        **kwargs: extra reserved request keys sent with every call (e.g. ``num_steps=5``).
    """

    def __init__(self, client: PolicyClient | str, *, seed: int = 0, **kwargs: Any) -> None:
        self.client = client if isinstance(client, PolicyClient) else PolicyClient(client)
        self.seed = int(seed)
        self.calls = 0
        self.extra = kwargs
        meta = self.client.metadata
        self.action_dim = int(meta.get("action_dim", 0))
        self.cameras = list(meta.get("cameras", []))
        self.chunk_size = int(meta.get("chunk_size", 0))

    def __call__(self, obs: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        request = {**obs, **self.extra, **kwargs}
        request.setdefault("seed", call_seed(self.seed, self.calls))
        self.calls += 1
        reply = self.client.infer(request)
        reply["latency_ms"] = {"total": float(self.client.round_trip_ms[-1]),
                               **{f"server_{k}": float(v) for k, v in reply.get("server_timing", {}).items()}}
        return reply

    infer = __call__

    def reset(self) -> None:
        self.client.reset()

    def close(self) -> None:
        self.client.close()
