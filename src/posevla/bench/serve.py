"""`posevla bench serve`: the policy server under load and under malformed input, in one run.

* **Load**: `--clients` concurrent connections (threads of this process, each its own websocket) send
  `--requests` valid observations each to a `posevla serve` running in a **separate process**; reports
  failures (any reply that is not a chunk of the right shape), the round-trip latency p50 / p99 and the
  throughput. Inference on the server is serialised, so the throughput is the model's.
* **Fuzz**: `--fuzz` malformed frames (:func:`malformed_frames`: garbage bytes, truncated msgpack, non-map
  messages, text frames, wrong dtype / shape images, missing camera / state / prompt, NaN and inf states,
  a 50 MB array, object-dtype and inconsistent array headers, bad reserved keys), each on a connection of its
  own while a background client keeps asking for chunks. A frame counts as answered clearly when the server
  replies with one text frame that starts ``posevla serve:`` and is not an internal error (a traceback), then
  closes with 1011. The background client must get only good replies.
* **Memory**: the server process's RSS before the load, after the load, and after the fuzz.

The default checkpoint is a tiny post-trained one trained here in a few seconds on the repository's LeRobot
fixture (`--checkpoint` serves your own). Prints a table; ``--json OUT`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from posevla.serving.wire import pack

__all__ = ["malformed_frames", "main", "fuzz_server", "load_server", "is_clear_error"]

FIXTURE = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "lerobot_v3_tiny"


def _ndarray_map(dtype: str, shape: list, data: bytes) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def malformed_frames(valid: Mapping[str, Any], spec: Mapping[str, Any], n: int = 200, seed: int = 0
                     ) -> list[tuple[str, bytes | str]]:
    """At least `n` malformed request frames built from one valid request (a dict of the client layout).

    Args:
        valid: a request the server answers (its images, state and prompt keys).
        spec: the server's metadata ``observation_spec``.
    Returns:
        (category, frame) pairs; text frames are ``str``.
    """
    rng = np.random.default_rng(seed)
    image_keys = [k for k in spec["images"] if k in valid or not k.startswith("images/")]
    img_key = next(iter(spec["images"]))
    state_key = spec["state"]["key"] if spec.get("state") else None
    out: list[tuple[str, bytes | str]] = []

    def with_(changes: Mapping[str, Any]) -> dict:
        d = dict(valid)
        for k, v in changes.items():
            if v is _DROP:
                d.pop(k, None)
            else:
                d[k] = v
        return d

    img = valid[img_key] if img_key in valid else None
    fixed: list[tuple[str, bytes | str]] = [
        ("empty frame", b""),
        ("text frame", "hello"),
        ("json text frame", json.dumps({"prompt": "x"})),
        ("non-map: int", msgpack.packb(5)),
        ("non-map: list", msgpack.packb([1, 2, 3])),
        ("non-map: string", msgpack.packb("observation")),
        ("non-map: nil", msgpack.packb(None)),
        ("non-map: array", pack(np.zeros((4, 4), np.uint8))),
        ("empty map", msgpack.packb({})),
        ("truncated msgpack", pack(valid)[: len(pack(valid)) // 2]),
        ("two messages in one frame", pack({"a": 1}) + pack({"b": 2})),
        ("int map keys", msgpack.packb({1: 2, 3: 4})),
        ("deep nesting", msgpack.packb(_nested(40))),
        ("object dtype header", pack(with_({img_key: _ndarray_map("|O", [2], b"\0" * 16)}))),
        ("void dtype header", pack(with_({img_key: _ndarray_map("|V8", [2], b"\0" * 16)}))),
        ("complex dtype header", pack(with_({img_key: _ndarray_map("<c16", [1], b"\0" * 16)}))),
        ("unknown dtype string", pack(with_({img_key: _ndarray_map("foo", [1], b"\0")}))),
        ("negative shape", pack(with_({img_key: _ndarray_map("|u1", [-1, 3], b"\0" * 3)}))),
        ("shape/data mismatch", pack(with_({img_key: _ndarray_map("|u1", [10, 10, 3], b"\0" * 7)}))),
        ("huge declared shape", pack(with_({img_key: _ndarray_map("<f8", [1 << 20, 1 << 20], b"")}))),
        ("header without data", pack(with_({img_key: {b"__ndarray__": True, b"dtype": "|u1"}}))),
        ("50 MB array", pack(with_({img_key: np.zeros((50 << 20,), np.uint8)}))),
        ("missing prompt", pack(with_({"prompt": _DROP, "task": _DROP, "instruction": _DROP}))),
        ("prompt not a string", pack(with_({"prompt": 12, "task": _DROP}))),
        ("empty prompt", pack(with_({"prompt": "   ", "task": _DROP}))),
        ("bad seed", pack(with_({"seed": "seven"}))),
        ("negative seed", pack(with_({"seed": -3}))),
        ("bad num_steps", pack(with_({"num_steps": 0}))),
        ("bad return_poses", pack(with_({"return_poses": "yes"}))),
    ]
    for key in image_keys:
        k = key
        fixed += [
            (f"missing camera {key}", pack(with_({k: _DROP}))),
            (f"{key} as float64", pack(with_({k: np.asarray(img, np.float64)}))) if img is not None else None,
            (f"{key} as a list", pack(with_({k: [[1, 2, 3]]}))),
            (f"{key} as a string", pack(with_({k: "image.png"}))),
            (f"{key} 2-D", pack(with_({k: np.zeros((24, 32), np.uint8)}))),
            (f"{key} 4 channels", pack(with_({k: np.zeros((24, 32, 4), np.uint8)}))),
        ]
    if state_key is not None:
        k = state_key
        dim = int(spec["state"]["dim"])
        fixed += [
            ("missing state", pack(with_({k: _DROP}))),
            ("state NaN", pack(with_({k: np.full(dim, np.nan)}))),
            ("state inf", pack(with_({k: np.r_[np.inf, np.zeros(dim - 1)]}))),
            ("state too short", pack(with_({k: np.zeros(dim - 1)}))),
            ("state too long", pack(with_({k: np.zeros(dim + 3)}))),
            ("state 2-D", pack(with_({k: np.zeros((2, dim))}))),
            ("state as string", pack(with_({k: "0 0 0"}))),
            ("state bool", pack(with_({k: np.zeros(dim, bool)}))),
        ]
    fixed = [f for f in fixed if f is not None]
    out += fixed
    while len(out) < n:  # random variations: garbage bytes, wrong image sizes, NaN at random state dims
        r = int(rng.integers(4))
        if r == 0:
            out.append(("random garbage bytes", rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()))
        elif r == 1 and img is not None:
            h, w = (int(v) for v in rng.integers(1, 64, 2))
            if (h, w) == tuple(img.shape[:2]):
                w += 1
            out.append(("random wrong image size", pack(with_({img_key: np.zeros((h, w, 3), np.uint8)}))))
        elif r == 2 and state_key is not None:
            s = np.asarray(valid[state_key], np.float64).copy()
            s[int(rng.integers(s.size))] = rng.choice([np.nan, np.inf, -np.inf])
            out.append(("random non-finite state dim", pack(with_({state_key: s}))))
        else:
            good = bytearray(pack(valid))
            cut = int(rng.integers(1, max(2, len(good) - 1)))
            out.append(("random truncation", bytes(good[:cut])))
    return out


class _Drop:
    pass


_DROP = _Drop()


def _nested(depth: int) -> Any:
    x: Any = 1
    for _ in range(depth):
        x = {"a": x}
    return x


def is_clear_error(text: str) -> bool:
    """Whether an error text frame is one of the server's clear errors (not an internal traceback)."""
    return text.startswith("posevla serve:") and "internal error" not in text.splitlines()[0]


def fuzz_server(url: str, frames: list[tuple[str, bytes | str]], *, timeout_s: float = 60.0) -> dict[str, Any]:
    """Send each frame on a connection of its own; tally how each was answered."""
    import websockets
    import websockets.sync.client as ws_client

    tally: dict[str, Any] = {"frames": len(frames), "clear": 0, "unclear": [], "by_category": {}}
    for cat, frame in frames:
        verdict = "no reply"
        try:
            with ws_client.connect(url, compression=None, max_size=None, open_timeout=timeout_s) as ws:
                ws.recv(timeout=timeout_s)  # metadata
                ws.send(frame)
                reply = ws.recv(timeout=timeout_s)
                if isinstance(reply, str):
                    verdict = "clear" if is_clear_error(reply) else f"unclear text: {reply[:200]}"
                    try:
                        ws.recv(timeout=timeout_s)
                    except websockets.ConnectionClosed as e:
                        if e.rcvd is None or e.rcvd.code != 1011:
                            verdict = f"closed with {getattr(e.rcvd, 'code', None)} instead of 1011"
                else:
                    verdict = "answered as if valid"
        except Exception as e:
            verdict = f"{type(e).__name__}: {e}"
        tally["by_category"].setdefault(cat, {"n": 0, "clear": 0})
        tally["by_category"][cat]["n"] += 1
        if verdict == "clear":
            tally["clear"] += 1
            tally["by_category"][cat]["clear"] += 1
        else:
            tally["unclear"].append({"category": cat, "verdict": verdict})
    return tally


def load_server(url: str, request: Mapping[str, Any], *, clients: int, requests: int, action_shape: tuple[int, int]
                ) -> dict[str, Any]:
    """`clients` threads × `requests` valid requests each; failures, latency percentiles, throughput."""
    from posevla.serving.client import PolicyClient

    lat: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        try:
            c = PolicyClient(url, timeout_s=600)
        except Exception as e:
            with lock:
                failures.append(f"client {i}: connect: {e}")
            start.wait()
            return
        start.wait()
        for j in range(requests):
            try:
                r = c.infer({**request, "seed": i * requests + j})
                if np.asarray(r["actions"]).shape != action_shape or not np.all(np.isfinite(r["actions"])):
                    raise ValueError(f"bad chunk {np.asarray(r['actions']).shape}")
                lat[i].append(c.round_trip_ms[-1])
            except Exception as e:
                with lock:
                    failures.append(f"client {i} request {j}: {type(e).__name__}: {e}"[:300])
        c.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.asarray([v for x in lat for v in x], np.float64)
    return {"clients": clients, "requests_per_client": requests, "answered": int(ms.size),
            "failures": len(failures), "failure_examples": failures[:5], "wall_s": wall,
            "throughput_rps": ms.size / wall if wall > 0 else 0.0,
            "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else None}


def rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tiny_checkpoint(out: Path, *, data: Path = FIXTURE, steps: int = 2, action: Any = None) -> Path:
    """A tiny post-trained checkpoint (`steps` steps of ``posttrain-tiny`` from scratch, batch 2, on the LeRobot
    dataset `data`), for the serving and latency benchmarks and tests; an existing run at `out` is reused.

    Args:
        action: the `ActionConfig` (default: the ``ee_pose`` space with the fixture's constant dims).
    """
    import dataclasses

    from posevla.data.action_space import ActionConfig
    from posevla.errors import ConfigError
    from posevla.training.config import DataConfig
    from posevla.training.configs import get_config
    from posevla.training.trainer import train

    if (out / "checkpoints" / "latest.json").exists():
        return out
    if not Path(data).is_dir():
        raise ConfigError(f"{data} not found (the default ships with the repository); pass --checkpoint RUN")
    cfg = get_config("posttrain-tiny")
    cfg = dataclasses.replace(
        cfg, init_checkpoint=None, data=DataConfig(train_data=str(data)), out_dir=str(out), steps=steps,
        batch_size=2, save_every=steps, log_every=1, optim=dataclasses.replace(cfg.optim, warmup_steps=1),
        progress=False, action=action if action is not None else ActionConfig(constant_dims=("z", "R20", "R21")),
    )
    train(cfg)
    return out


def valid_request(checkpoint: Path, layout_spec: Mapping[str, Any]) -> dict[str, Any]:
    """One valid request in the server's client layout, from the checkpoint's own training data."""
    from posevla.data.actions import ActionDataset
    from posevla.data.formats.lerobot import load_lerobot_v3
    from posevla.policy import Policy

    p = Policy.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    ds = ActionDataset(load_lerobot_v3(p.train_config.data.train_data), p.action_cfg, p.spec, p.stats)
    obs = ds.observation(0, 0)
    req: dict[str, Any] = {"prompt": obs["task"]}
    for key, info in layout_spec["images"].items():
        img = obs["observation.images." + info["camera"]]
        if key.startswith("images/"):
            req.setdefault("images", {})[key[7:]] = img
        else:
            req[key] = img
    if layout_spec.get("state"):
        req[layout_spec["state"]["key"]] = np.concatenate(
            [np.asarray(obs[k], np.float64).reshape(-1) for k, _ in layout_spec["state"]["pieces"]])
    return req


def _start_server(checkpoint: Path, port: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "posevla.cli", "serve", "--checkpoint", str(checkpoint), "--port", str(port),
           "--no-viewer", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    deadline = time.time() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"listening on (ws://\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
            return proc, m.group(1)
        if time.time() > deadline:
            break
    proc.kill()
    raise SystemExit(f"the server did not start: {' '.join(cmd)}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="posevla bench serve", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="post-trained checkpoint (default: a tiny one made here)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=500, help="valid requests per client")
    ap.add_argument("--fuzz", type=int, default=200, help="malformed frames (at least the fixed categories)")
    ap.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args(argv)
    ckpt = Path(a.checkpoint) if a.checkpoint else tiny_checkpoint(Path(tempfile.gettempdir()) / "posevla_bench_serve_ckpt")
    proc, url = _start_server(ckpt, a.port)
    try:
        from posevla.serving.client import PolicyClient

        meta = PolicyClient(url).metadata
        spec = meta["observation_spec"]
        request = valid_request(ckpt, spec)
        shape = (int(meta["chunk_size"]), int(meta["action_dim"]))
        mem = {"start_mb": rss_mb(proc.pid)}
        print(f"[bench serve] {url}: load {a.clients} clients x {a.requests} requests ...", flush=True)
        load = load_server(url, request, clients=a.clients, requests=a.requests, action_shape=shape)
        mem["after_load_mb"] = rss_mb(proc.pid)
        frames = malformed_frames(request, spec, n=a.fuzz)
        print(f"[bench serve] fuzz: {len(frames)} malformed frames while a client keeps asking ...", flush=True)
        stop = threading.Event()
        bg: dict[str, Any] = {"ok": 0, "bad": []}

        def background() -> None:
            c = PolicyClient(url)
            while not stop.is_set():
                try:
                    r = c.infer(request)
                    assert np.asarray(r["actions"]).shape == shape
                    bg["ok"] += 1
                except Exception as e:
                    bg["bad"].append(f"{type(e).__name__}: {e}"[:200])
            c.close()

        t = threading.Thread(target=background, daemon=True)
        t.start()
        fuzz = fuzz_server(url, frames)
        stop.set()
        t.join(timeout=120)
        mem["after_fuzz_mb"] = rss_mb(proc.pid)
        load2 = load_server(url, request, clients=a.clients, requests=max(1, a.requests // 10), action_shape=shape)
        mem["after_second_load_mb"] = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    res = {"checkpoint": str(ckpt), "load": load, "fuzz": {k: v for k, v in fuzz.items()},
           "background_during_fuzz": {"answered": bg["ok"], "failures": len(bg["bad"]), "examples": bg["bad"][:3]},
           "second_load": load2, "memory": mem, "threads": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"load: {load['answered']}/{a.clients * a.requests} answered, {load['failures']} failures, "
          f"p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, {load['throughput_rps']:.1f} req/s, "
          f"{load['wall_s']:.0f} s")
    print(f"fuzz: {fuzz['clear']}/{fuzz['frames']} malformed frames answered with a clear error; "
          f"{len(fuzz['unclear'])} not: {fuzz['unclear'][:3]}")
    print(f"background client during the fuzz: {bg['ok']} answered, {len(bg['bad'])} failures")
    print("server RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in mem.items()))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
