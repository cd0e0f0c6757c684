"""`posevla serve`: a post-trained policy behind an openpi-compatible websocket server.

Protocol (the one of openpi's ``src/openpi/serving/websocket_policy_server.py`` and its client
``packages/openpi-client/src/openpi_client/websocket_client_policy.py``):

1. The client opens a websocket (no compression); with ``--api-key`` set, the upgrade request must carry
   ``Authorization: Api-Key <key>`` (else HTTP 401).
2. The server sends **one metadata frame** (:meth:`PolicyServer.metadata`): the observation the checkpoint
   expects (``observation_spec``: client image keys with camera and shape, the flat state with its pieces,
   the prompt key), ``action_dim``, ``action_names``, ``action_space``, ``chunk_size``, ``num_steps``,
   ``norm_stats_sha256``, the checkpoint, the default prompt, the wire limits and the reserved request keys.
3. Every request is one binary frame: an observation map (:mod:`posevla.serving.wire`). The reply is one
   binary frame ``{"actions": (H, A) float32, "server_timing": {"infer_ms", "queue_ms", "decode_ms",
   "prev_total_ms"}, "policy_timing": {...}}`` plus ``"ee_pose"`` (H, arms, 7) for the ``ee_pose`` space and
   ``"pose_tokens"`` when asked for; with ``--relative-ee`` the chunk is relative to the request's EE pose and
   the reply says ``"relative": True``.
4. A request that cannot be answered (malformed frame, wrong keys, shapes, dtypes, NaN state, a failing
   model) gets **one text frame** with the error (what, which key, how to fix) and the connection is closed
   with code 1011; other connections are not affected.

Reserved request keys (posevla extras, all optional): ``seed`` (noise seed), ``num_steps`` (flow steps),
``return_poses`` (also decode the VLM's waypoint plan), and for real-time chunking ``action_prefix`` /
``inference_delay`` / ``execution_horizon`` (passed to :meth:`posevla.policy.Policy.infer`).

HTTP on the same port: ``GET /healthz`` → 200 ``OK``; ``GET /stats.json`` → request / error counts and
latency percentiles; ``GET /viewer…`` → the live plan viewer (:mod:`posevla.serving.viewer`) when on.

Inference is **serialised**: one forward pass at a time on one worker thread, in arrival order, so requests
of several clients never interleave inside the model; the event loop keeps receiving and answering health
checks meanwhile. Frames above ``max_message_bytes`` are answered with an error (the transport refuses
anything above four times that outright).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http
import json
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
import websockets.asyncio.server as ws_server
from websockets.datastructures import Headers
from websockets.http11 import Response

from posevla.data.input_spec import InputSpec, state_layout
from posevla.errors import ConfigError, DataError, PoseVLAError, check_int
from posevla.serving.relative import chunk_to_relative, reference_pose
from posevla.serving.wire import WireError, pack, unpack

__all__ = ["PolicyServer", "ServerHandle", "serve_in_thread", "RESERVED_KEYS", "DEFAULT_MAX_MESSAGE_BYTES"]

#: Request keys that are arguments of the call, not observation features.
RESERVED_KEYS = ("seed", "num_steps", "return_poses", "action_prefix", "inference_delay", "execution_horizon")
#: Default limit of one request frame: three 1080p RGB frames with depth fit.
DEFAULT_MAX_MESSAGE_BYTES = 32 << 20
#: With a viewer, requests decode the waypoint plan (costly) while the page has polled within this many seconds.
VIEWER_WATCH_S = 10.0
#: Close code of a request that could not be answered (websockets' CloseCode.INTERNAL_ERROR, as openpi).
CLOSE_ERROR = 1011


def _policy_input_spec(policy: Any, layout: str | None) -> InputSpec:
    """The checkpoint's saved input spec, or one derived from what it recorded (`layout` overrides)."""
    saved = policy.data.get("input_spec")
    if saved is not None and layout in (None, "auto"):
        return InputSpec.from_dict(saved, source=f"{policy.checkpoint} config.json data.input_spec")
    pieces = state_layout(policy.action_cfg, len(policy.stats["state"].names))
    return InputSpec.default(policy.cameras, policy.image_sizes, pieces, layout or "auto")


def _norm_stats_sha(policy: Any) -> str:
    path = policy.checkpoint / "norm_stats.json"
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    blob = json.dumps({k: v.to_dict() if hasattr(v, "to_dict") else str(v) for k, v in policy.stats.items()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _error_text(e: BaseException) -> str:
    """The text frame of a failed request: the message of our errors, a traceback for anything else."""
    if isinstance(e, PoseVLAError):
        return f"posevla serve: {type(e).__name__}: {e}"
    return f"posevla serve: internal error ({type(e).__name__}: {e})\n{traceback.format_exc()}"


@dataclass
class ServerStats:
    """Counters of one server (thread-safe enough: written from the event loop only)."""

    connections: int = 0
    requests: int = 0
    answered: int = 0
    errors: int = 0
    infer_ms: deque = field(default_factory=lambda: deque(maxlen=10_000))
    last_errors: deque = field(default_factory=lambda: deque(maxlen=20))

    def to_dict(self) -> dict[str, Any]:
        ms = np.asarray(self.infer_ms, np.float64)
        pct = {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)} if ms.size else {}
        return {"connections": self.connections, "requests": self.requests, "answered": self.answered,
                "errors": self.errors, "infer": pct, "last_errors": list(self.last_errors)}


class PolicyServer:
    """Serves one `Policy` over websockets (module docstring for the protocol).

    Args:
        policy: a loaded :class:`posevla.policy.Policy` (or anything with its ``infer`` and attributes).
        host, port: where to listen (localhost unless told otherwise; port 0 picks a free one).
        api_key: required ``Authorization: Api-Key …`` of every client (None: no key).
        max_message_bytes: the largest request frame answered.
        input_layout: ``auto`` (the checkpoint's saved spec), ``native``, ``libero`` or ``aloha``.
        default_prompt: the instruction used when a request carries none.
        relative_ee: send each ``ee_pose`` chunk relative to the EE pose of its request's observation
            (``T_ref⁻¹ · T_t``, reply key ``"relative": True``); the robot side makes it absolute with the pose
            it recorded at request time (`posevla.serving.robot`).
        viewer: a :class:`posevla.serving.viewer.Viewer` to feed (None: no viewer); while its page is open
            (polled within :data:`VIEWER_WATCH_S`), requests also decode the waypoint plan (``return_poses``)
            unless they say otherwise, so an unwatched viewer costs nothing.
    """

    def __init__(
        self,
        policy: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        input_layout: str | None = "auto",
        default_prompt: str | None = None,
        viewer: Any = None,
        relative_ee: bool = False,
    ) -> None:
        check_int(port, "--port", lo=0, hi=65535)
        if relative_ee and policy.action_cfg.space != "ee_pose":
            raise ConfigError(f"--relative-ee needs a policy of the 'ee_pose' action space; {policy.checkpoint} "
                              f"predicts '{policy.action_cfg.space}' actions")
        self.relative_ee = bool(relative_ee)
        check_int(max_message_bytes, "--max-message-bytes", lo=1024)
        if api_key is not None and not api_key.strip():
            raise ConfigError("--api-key is empty; pass a key or leave it out")
        self.policy = policy
        self.host, self.port = host, int(port)
        self.api_key = api_key
        self.max_message_bytes = int(max_message_bytes)
        self.spec = _policy_input_spec(policy, input_layout)
        self.default_prompt = default_prompt
        self.viewer = viewer
        self.stats = ServerStats()
        self._viewer_seen = -float("inf")  # when the viewer page last asked for anything
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="posevla-infer")
        self._metadata = self._build_metadata()
        self._packed_metadata = pack(self._metadata)

    # -- metadata ----------------------------------------------------------------------------------
    def _build_metadata(self) -> dict[str, Any]:
        p = self.policy
        return {
            "server": "posevla",
            "protocol": "openpi-websocket-msgpack",
            "checkpoint": str(p.checkpoint),
            "train_config": getattr(p.train_config, "name", None),
            "train_data": str(getattr(getattr(p.train_config, "data", None), "train_data", "") or ""),
            "observation_spec": self.spec.describe(),
            "cameras": list(p.cameras),
            "action_dim": int(p.action_dim),
            "action_names": list(p.action_names),
            "action_space": str(p.action_cfg.space),
            "chunk_size": int(p.chunk_size),
            "num_steps": int(p.model.cfg.num_inference_steps),
            "state_dim": int(self.spec.state_dim),
            "norm_stats_sha256": _norm_stats_sha(p),
            "prompt": self.default_prompt,
            "reserved_keys": list(RESERVED_KEYS),
            "max_message_bytes": self.max_message_bytes,
            "viewer": self.viewer is not None,
            "relative_ee": self.relative_ee,
        }

    def metadata(self) -> dict[str, Any]:
        """The metadata frame every connection receives first (module docstring)."""
        return dict(self._metadata)

    # -- one request -------------------------------------------------------------------------------
    def _call_kwargs(self, obs: dict[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if "seed" in obs:
            kw["seed"] = check_int(_scalar(obs.pop("seed")), "seed", lo=0, hi=2**63 - 1)
        if "num_steps" in obs:
            kw["num_steps"] = check_int(_scalar(obs.pop("num_steps")), "num_steps", lo=1, hi=1000)
        if "return_poses" in obs:
            v = _scalar(obs.pop("return_poses"))
            if not isinstance(v, (bool, np.bool_)):
                raise DataError(f"return_poses must be true or false, got {v!r}", field="return_poses")
            kw["return_poses"] = bool(v)
        elif self.viewer is not None and time.monotonic() - self._viewer_seen < VIEWER_WATCH_S:
            kw["return_poses"] = True  # someone is watching: decode the plan for the page
        if "action_prefix" in obs:
            kw["action_prefix"] = obs.pop("action_prefix")
        for k in ("inference_delay", "execution_horizon"):
            if k in obs:
                kw[k] = check_int(_scalar(obs.pop(k)), k, lo=0, hi=10_000)
        return kw

    def answer(self, obs: Any) -> dict[str, Any]:
        """The reply to one decoded request (runs on the inference thread); raises on a bad request."""
        if not isinstance(obs, dict):
            raise WireError(f"a request must be a msgpack map (an observation dict), got {type(obs).__name__}",
                            fix="send the observation dict of the server's metadata 'observation_spec'")
        obs = dict(obs)
        kw = self._call_kwargs(obs)
        native = self.spec.to_native(obs)
        if "task" not in native and "instruction" not in native and self.default_prompt:
            native["task"] = self.default_prompt
        t0 = time.perf_counter()
        out = self.policy.infer(native, **kw)
        infer_ms = 1e3 * (time.perf_counter() - t0)
        reply: dict[str, Any] = {"actions": np.asarray(out["actions"], np.float32),
                                 "policy_timing": dict(out.get("latency_ms", {}))}
        if self.relative_ee:  # the chunk in the EE frame of the request's pose; the robot re-anchors it
            keys = self.policy.action_cfg.ee_keys
            ref = reference_pose(native, keys)
            reply["actions"] = chunk_to_relative(reply["actions"], ref, num_arms=len(keys)).astype(np.float32)
            reply["relative"] = True
        elif "ee_pose" in out:
            reply["ee_pose"] = np.asarray(out["ee_pose"], np.float32)
        if kw.get("return_poses") and "pose_tokens" in out:
            reply["pose_tokens"] = out["pose_tokens"]
        reply["_infer_ms"] = infer_ms
        if self.viewer is not None:
            try:
                self.viewer.update(native, out, {"infer_ms": infer_ms, "total_ms": float(out["latency_ms"]["total"]),
                                                 "request": self.stats.requests})
            except Exception as e:  # the viewer never fails a request
                self.stats.last_errors.append(f"viewer: {type(e).__name__}: {e}")
        return reply

    # -- websocket handler -------------------------------------------------------------------------
    async def _handler(self, ws: ws_server.ServerConnection) -> None:
        self.stats.connections += 1
        loop = asyncio.get_running_loop()
        await ws.send(self._packed_metadata)
        prev_total_ms: float | None = None
        while True:
            try:
                message = await ws.recv()
            except websockets.ConnectionClosed:
                return
            t0 = time.perf_counter()
            self.stats.requests += 1
            try:
                if isinstance(message, str):
                    raise WireError("got a text frame; requests are binary msgpack frames",
                                    fix="pack the observation with openpi_client.msgpack_numpy.packb")
                if len(message) > self.max_message_bytes:
                    raise WireError(
                        f"a request of {len(message) / 1e6:.1f} MB is larger than this server's limit of "
                        f"{self.max_message_bytes / 1e6:.1f} MB",
                        fix="send images at the shapes of the metadata's observation_spec, or start the server "
                            "with a larger --max-message-mb",
                    )
                obs = unpack(message, max_array_bytes=self.max_message_bytes)
                t1 = time.perf_counter()
                reply = await loop.run_in_executor(self._pool, self.answer, obs)
                infer_ms = reply.pop("_infer_ms")
                timing = {"infer_ms": infer_ms, "decode_ms": 1e3 * (t1 - t0),
                          "queue_ms": max(0.0, 1e3 * (time.perf_counter() - t1) - infer_ms)}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                reply["server_timing"] = timing
                data = pack(reply)
            except Exception as e:  # answered as a text frame, then this connection (only) closes
                self.stats.errors += 1
                text = _error_text(e)
                self.stats.last_errors.append(text.splitlines()[0][:300])
                try:
                    await ws.send(text)
                    await ws.close(CLOSE_ERROR, "request failed; the error is in the previous text frame")
                except websockets.ConnectionClosed:
                    pass
                return
            try:
                await ws.send(data)
            except websockets.ConnectionClosed:
                return
            self.stats.answered += 1
            self.stats.infer_ms.append(infer_ms)
            prev_total_ms = 1e3 * (time.perf_counter() - t0)

    # -- HTTP --------------------------------------------------------------------------------------
    def _authorised(self, request: Any) -> bool:
        if self.api_key is None:
            return True
        if request.headers.get("Authorization", "") == f"Api-Key {self.api_key}":
            return True
        return f"api_key={self.api_key}" in request.path.partition("?")[2].split("&")

    def _process_request(self, connection: ws_server.ServerConnection, request: Any) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if not self._authorised(request):
            return connection.respond(
                http.HTTPStatus.UNAUTHORIZED,
                "posevla serve: this server needs an API key: send the header 'Authorization: Api-Key <key>'\n",
            )
        if path == "/stats.json":
            return _response(200, {"Content-Type": "application/json"}, json.dumps(self.stats.to_dict()).encode())
        if path.startswith("/viewer"):
            self._viewer_seen = time.monotonic()
            if self.viewer is None:
                return connection.respond(http.HTTPStatus.NOT_FOUND, "the viewer is off (posevla serve --viewer)\n")
            res = self.viewer.handle_http(request.path)
            if res is None:
                return connection.respond(http.HTTPStatus.NOT_FOUND, f"no such page: {path}\n")
            status, headers, body = res
            return _response(status, headers, body)
        if path == "/" and request.headers.get("Upgrade", "").lower() != "websocket":
            text = ("posevla policy server: connect a websocket client (openpi_client.websocket_client_policy) "
                    "to this address; GET /healthz, /stats.json" + (", /viewer" if self.viewer else "") + "\n")
            return connection.respond(http.HTTPStatus.OK, text)
        return None

    # -- running -----------------------------------------------------------------------------------
    def serve_context(self) -> Any:
        """The websockets server (an async context manager) on ``host:port``."""
        return ws_server.serve(
            self._handler, self.host, self.port, compression=None, max_size=4 * self.max_message_bytes,
            max_queue=4, process_request=self._process_request, ping_interval=20, ping_timeout=60,
        )

    async def run(self, ready: threading.Event | None = None, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (forever without one)."""
        async with self.serve_context() as server:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            if ready is not None:
                ready.set()
            else:
                print(f"[posevla] listening on ws://{self.host}:{self.port}", flush=True)
            if stop is None:
                await server.serve_forever()
            else:
                await stop.wait()

    def serve_forever(self) -> None:
        """Block serving (Ctrl-C stops)."""
        try:
            asyncio.run(self.run())
        except KeyboardInterrupt:
            pass
        finally:
            self._pool.shutdown(wait=False)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def _scalar(v: Any) -> Any:
    """A request value that should be a scalar (numpy scalars and 0-d arrays are unwrapped)."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _response(status: int, headers: Mapping[str, str], body: bytes) -> Response:
    h = Headers()
    for k, v in headers.items():
        h[k] = v
    h["Content-Length"] = str(len(body))
    h.setdefault("Cache-Control", "no-store")
    return Response(int(status), http.HTTPStatus(int(status)).phrase, h, body)


class ServerHandle:
    """A server running on a thread of this process (`serve_in_thread`); ``stop()`` or use as a context."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="posevla-serve", daemon=True)

    def _main(self) -> None:
        async def go() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.run(ready=self._ready, stop=self._stop)

        try:
            asyncio.run(go())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()

    def start(self, timeout_s: float = 30.0) -> ServerHandle:
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            raise ConfigError(f"the policy server did not start on {self.server.host}:{self.server.port}: "
                              f"{self._error or 'timed out'}")
        return self

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://{self.server.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.server.host}:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        self.server.close()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_in_thread(policy: Any, *, host: str = "127.0.0.1", port: int = 0, viewer: Any = False,
                    **kwargs: Any) -> ServerHandle:
    """Start a `PolicyServer` for `policy` on a background thread; returns its running `ServerHandle`.

    ``viewer=True`` makes a :class:`posevla.serving.viewer.Viewer` for the policy; a Viewer instance is used
    as given. Other keyword arguments go to `PolicyServer`.
    """
    if viewer is True:
        from posevla.serving.viewer import Viewer

        viewer = Viewer(policy_info(policy))
    server = PolicyServer(policy, host=host, port=port, viewer=viewer or None, **kwargs)
    return ServerHandle(server).start()


def policy_info(policy: Any) -> dict[str, Any]:
    """What the viewer needs to know about a policy."""
    return {"cameras": list(policy.cameras), "camera_config": policy.camera_config,
            "action_names": list(policy.action_names), "chunk_size": int(policy.chunk_size),
            "checkpoint": str(policy.checkpoint), "image_size": int(policy.spec.image_size)}
