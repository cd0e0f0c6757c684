"""The robot side of a chunked policy: which action runs when, and when the next chunk is requested.

A chunk policy returns H actions per call; the robot executes ``s`` of them (the execution horizon) between
requests, and inference takes ``d`` control steps (the inference delay), during which the previous chunk
keeps running. Two modes, with the same timing:

* ``"naive"``: request the next chunk after ``s`` actions of the current one; when it arrives ``d`` steps
  later, switch to it at index ``d`` (its first ``d`` actions belong to steps that already ran). With
  ``d = 0`` this is `posevla.policy.ActionChunker` with ``replan_every = s``.
* ``"rtc"`` (real-time chunking, `posevla.models.rtc`): the same, and the request carries
  ``action_prefix`` = the current chunk's actions from the request step on (``chunk[s:]``), ``inference_delay
  = d`` and ``execution_horizon = s``, so the policy samples a chunk that continues what the robot is doing.

Both need ``d ≤ H − s`` (the current chunk must cover the delay). At every chunk switch a `Switch` records the
action *jump* ``‖a_new[first] − a_old[would-have-been]‖`` (what the old chunk would have done at that step)
and the *seam delta* ``‖a_new[first] − a_old[last executed]‖``.

Two drivers share that schedule (`_Schedule`):

* :class:`ChunkExecutor`: deterministic simulated delay for simulation / evaluation. An ``obs -> action``
  callable (with ``reset()``) for `posevla.eval.rollout.rollout`: the request made with the observation of
  step k is answered at once but its chunk becomes usable at step k + d.
* :func:`run_robot`: a threaded real-time loop at ``rate_hz`` on a :class:`RobotInterface`; requests run in a
  background thread while the loop keeps executing; ``d`` is measured from past latencies
  (``ceil(latency × rate)``) unless fixed.

The policy is any ``policy_fn(obs, **kwargs)`` (or ``policy_fn(obs)``: the keys then go into the request dict,
as the server reads them) returning a dict with ``"actions"`` (H, A) (a
`posevla.serving.client.PolicyClient`'s ``infer``, or an in-process ``Policy.infer``), an object with an
``actions`` attribute, or an array. With ``relative=True`` (or a response carrying ``"relative": True``) the
chunk is relative to the EE pose at request time (`posevla.serving.relative`) and is made absolute with the
pose recorded from the request's observation; the prefix sent back is always absolute. numpy only: no torch.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from posevla.errors import ConfigError, InferenceError
from posevla.serving.relative import chunk_to_absolute, reference_pose

__all__ = ["MODES", "Request", "Switch", "RobotInterface", "ChunkExecutor", "RunResult", "run_robot"]

MODES = ("naive", "rtc")
Mode = Literal["naive", "rtc"]


@dataclass
class Request:
    """One policy request. ``step``: control step of its observation; ``prefix_len``: rows of
    ``action_prefix`` sent (0 = none); ``latency_s``: wall-clock seconds of the call (None until answered)."""

    step: int
    prefix_len: int
    inference_delay: int
    execution_horizon: int
    latency_s: float | None = None


@dataclass
class Switch:
    """A chunk switch at control `step`: the new chunk starts at `start_index` (= steps since its request).

    ``jump``: ‖a_new[start_index] − a_old[would-have-been]‖ (None at the first chunk of an episode);
    ``seam_delta``: ‖a_new[start_index] − the last executed action‖ (None at the first chunk).
    """

    step: int
    start_index: int
    jump: float | None
    seam_delta: float | None


def _chunk_of(raw: Any) -> tuple[np.ndarray, bool]:
    """(chunk (H, A) float64, relative flag) of a policy's raw output; InferenceError if unusable."""
    relative = False
    if isinstance(raw, Mapping):
        if "actions" not in raw:
            raise InferenceError(f"the policy's reply has no 'actions' (keys: {sorted(raw)[:10]})")
        relative = bool(raw.get("relative", False))
        raw = raw["actions"]
    elif hasattr(raw, "actions"):
        raw = raw.actions
    chunk = np.asarray(raw, np.float64)
    chunk = chunk[None] if chunk.ndim == 1 else chunk
    if chunk.ndim != 2 or chunk.shape[0] < 1 or not np.all(np.isfinite(chunk)):
        raise InferenceError(f"the policy returned an unusable chunk of shape {chunk.shape}; need (H, A)")
    return chunk, relative


def _caller(policy_fn: Callable[..., Any]) -> Callable[..., Any]:
    """``call(obs, **kwargs)`` for `policy_fn`: keyword arguments as such when it takes them
    (``Policy.infer``, a `RemotePolicy`), else merged into the request dict (a bare
    ``PolicyClient.infer(obs)``: the server reads the reserved keys ``action_prefix``, ``inference_delay``,
    ... from the observation)."""
    try:
        params = inspect.signature(policy_fn).parameters.values()
    except (TypeError, ValueError):
        return policy_fn
    if any(p.kind is p.VAR_KEYWORD for p in params) or any(p.name == "action_prefix" for p in params):
        return policy_fn
    return lambda obs, **kwargs: policy_fn({**obs, **kwargs} if kwargs else obs)


def _check_mode(mode: Any, s: Any, d: Any) -> tuple[str, int, int | None]:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    for name, v, lo in (("execution_horizon", s, 1), ("inference_delay", d, 0)):
        if v is None and name == "inference_delay":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    return str(mode), int(s), None if d is None else int(d)


class _Schedule:
    """The current chunk, the index of its next action, and the bookkeeping of requests and switches."""

    def __init__(self, mode: str, s: int, *, relative: bool, ee_keys: Sequence[str]) -> None:
        self.mode, self.s, self.relative, self.ee_keys = mode, s, relative, tuple(ee_keys)
        self.chunk: np.ndarray | None = None
        self.index = 0
        self.last_action: np.ndarray | None = None
        self.requests: list[Request] = []
        self.switches: list[Switch] = []

    def due(self) -> bool:
        """True when the next request should be made (no chunk yet, or s of its actions have run)."""
        return self.chunk is None or self.index >= min(self.s, len(self.chunk))

    def check_fits(self, H: int, d: int) -> None:
        if self.s + d > H:
            raise ConfigError(
                f"execution_horizon s={self.s} + inference_delay d={d} exceed the chunk size H={H}: the "
                f"current chunk would run out before the next one starts; use s <= H - d = {H - d}"
            )

    def request_kwargs(self, d: int) -> dict[str, Any]:
        """The RTC keys of a request made now (empty for ``"naive"`` and for the first chunk)."""
        if self.mode != "rtc" or self.chunk is None:
            return {}
        rest = self.chunk[self.index :]  # (k, A) from the request step on
        return {"action_prefix": rest.astype(np.float32), "inference_delay": int(min(d, len(rest))),
                "execution_horizon": int(self.s)}

    def absolute(self, raw: Any, obs: Mapping[str, Any]) -> np.ndarray:
        chunk, rel = _chunk_of(raw)
        if self.relative or rel:
            chunk = chunk_to_absolute(chunk, reference_pose(obs, self.ee_keys), num_arms=len(self.ee_keys))
        return chunk

    def switch(self, new: np.ndarray, start: int, step: int) -> None:
        if self.chunk is not None and new.shape[1] != self.chunk.shape[1]:
            raise InferenceError(
                f"the policy changed its action size from {self.chunk.shape[1]} to {new.shape[1]}"
            )
        start = min(int(start), len(new) - 1)
        jump = seam = None
        if self.chunk is not None:
            old = self.chunk[min(self.index, len(self.chunk) - 1)]  # what the old chunk would have done now
            jump = float(np.linalg.norm(new[start] - old))
            if self.last_action is not None:
                seam = float(np.linalg.norm(new[start] - self.last_action))
        self.switches.append(Switch(step=step, start_index=start, jump=jump, seam_delta=seam))
        self.chunk, self.index = new, start

    def pop(self) -> np.ndarray | None:
        """The next action of the current chunk, or None when it is used up (the robot waits)."""
        if self.chunk is None or self.index >= len(self.chunk):
            return None
        a = self.chunk[self.index]
        self.index += 1
        self.last_action = a
        return a


def _stats(switches: Sequence[Switch]) -> dict[str, Any]:
    jumps = [w.jump for w in switches if w.jump is not None]
    seams = [w.seam_delta for w in switches if w.seam_delta is not None]
    return {"switches": len(jumps), "mean_jump": float(np.mean(jumps)) if jumps else None,
            "max_jump": float(np.max(jumps)) if jumps else None,
            "mean_seam_delta": float(np.mean(seams)) if seams else None}


# ----------------------------------------------------------------------------------------------
# simulated delay (simulation / evaluation)
# ----------------------------------------------------------------------------------------------


class ChunkExecutor:
    """``obs -> action (A,)`` with a deterministic simulated inference delay (module docstring).

    Use it as the policy of `posevla.eval.rollout.rollout` (it returns one action per call, so the rollout's
    own chunker calls it every step). The first chunk of an episode is waited for (nothing runs before it).

    Args:
        policy_fn: ``policy_fn(obs, **kwargs) -> reply`` (a dict with ``"actions"``, an object with
            ``actions``, or an (H, A) array).
        mode: ``"naive"`` or ``"rtc"``.
        execution_horizon: s, actions executed per chunk between requests.
        inference_delay: d, control steps between a request and its chunk becoming usable (d ≤ H − s).
        relative: the replies are relative EE chunks (made absolute with the request observation's EE pose).
        ee_keys: the EE pose feature of each arm (``relative`` only).
        seed: request j of episode e is sent ``seed = seed + 100003·e + j`` (the same seeds in both modes);
            None sends no seed.
        **infer_kwargs: passed with every request (e.g. ``num_steps=5``).

    Attributes:
        requests, switches: of the current episode (`Request`, `Switch`); history: ``(requests, switches)`` of
            every finished episode; step: control steps of this episode.
    """

    def __init__(
        self,
        policy_fn: Callable[..., Any],
        *,
        mode: Mode = "rtc",
        execution_horizon: int,
        inference_delay: int = 0,
        relative: bool = False,
        ee_keys: Sequence[str] = ("observation.ee_pose",),
        seed: int | None = None,
        **infer_kwargs: Any,
    ) -> None:
        self.mode, self.s, d = _check_mode(mode, execution_horizon, inference_delay)
        self.d = int(d or 0)
        self.policy_fn = policy_fn
        self._call = _caller(policy_fn)
        self.relative, self.ee_keys, self.seed = bool(relative), tuple(ee_keys), seed
        self.infer_kwargs = infer_kwargs
        self.history: list[tuple[list[Request], list[Switch]]] = []
        self._episode = -1
        self.reset()

    def reset(self) -> None:
        """Start an episode: drop the current chunk and any pending one."""
        if self._episode >= 0 and (self._sched.requests or self._sched.switches):
            self.history.append((self._sched.requests, self._sched.switches))
        self._episode += 1
        self._sched = _Schedule(self.mode, self.s, relative=self.relative, ee_keys=self.ee_keys)
        self._pending: tuple[np.ndarray, int] | None = None  # (chunk, step of its request)
        self.step = 0
        reset = getattr(self.policy_fn, "reset", None)
        if callable(reset):
            reset()

    @property
    def requests(self) -> list[Request]:
        return self._sched.requests

    @property
    def switches(self) -> list[Switch]:
        return self._sched.switches

    def all_switches(self) -> list[Switch]:
        """Switches of every episode so far, the current one included."""
        return [w for _, sw in self.history for w in sw] + list(self._sched.switches)

    def summary(self) -> dict[str, Any]:
        """Mean / max jump and mean seam delta over every switch so far (`_stats`)."""
        return {"mode": self.mode, "execution_horizon": self.s, "inference_delay": self.d,
                **_stats(self.all_switches())}

    def _request(self, obs: Mapping[str, Any]) -> np.ndarray:
        sched = self._sched
        kwargs = dict(self.infer_kwargs)
        extra = sched.request_kwargs(self.d)
        kwargs.update(extra)
        if self.seed is not None:
            kwargs["seed"] = int(self.seed) + 100003 * self._episode + len(sched.requests)
        req = Request(step=self.step, prefix_len=len(extra.get("action_prefix", ())), inference_delay=self.d,
                      execution_horizon=self.s)
        t0 = time.perf_counter()
        raw = self._call(obs, **kwargs)
        req.latency_s = time.perf_counter() - t0
        sched.requests.append(req)
        chunk = sched.absolute(raw, obs)
        sched.check_fits(len(chunk), self.d)
        return chunk

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        """The action (A,) of this control step."""
        sched, k = self._sched, self.step
        if self._pending is not None and k - self._pending[1] >= self.d:
            chunk, at = self._pending
            self._pending = None
            sched.switch(chunk, k - at, k)
        if self._pending is None and sched.due():
            first = sched.chunk is None
            chunk = self._request(obs)
            if first or self.d == 0:
                sched.switch(chunk, 0, k)
            else:
                self._pending = (chunk, k)
        a = sched.pop()
        if a is None:  # cannot happen when d <= H - s (checked per chunk); kept as a guard
            raise InferenceError(f"the current chunk ran out at step {k} while the next one was pending")
        self.step += 1
        return a.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# real-time threaded loop
# ----------------------------------------------------------------------------------------------


@runtime_checkable
class RobotInterface(Protocol):
    """What :func:`run_robot` drives: read an observation, apply one action."""

    def get_observation(self) -> Mapping[str, Any]:
        """The current observation (the flat dict a policy takes; the EE pose for relative chunks)."""
        ...

    def apply_action(self, action: np.ndarray) -> None:
        """Send one action (A,) to the robot; should return quickly (within one control period)."""
        ...


@dataclass
class RunResult:
    """What :func:`run_robot` did. ``steps``: control ticks; ``applied``: actions sent; ``starved``: ticks
    with no action to send (the chunk ran out while a request was in flight); ``overruns``: ticks that took
    longer than the period; ``delays``: the inference delay sent with each request."""

    steps: int = 0
    applied: int = 0
    starved: int = 0
    overruns: int = 0
    requests: list[Request] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    delays: list[int] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = [r.latency_s for r in self.requests if r.latency_s is not None]
        return {"steps": self.steps, "applied": self.applied, "starved": self.starved,
                "overruns": self.overruns, "requests": len(self.requests),
                "latency_s_mean": float(np.mean(lat)) if lat else None,
                "delays": sorted(set(self.delays)), "wall_s": self.wall_s, **_stats(self.switches)}


def run_robot(
    robot: RobotInterface,
    policy_fn: Callable[..., Any],
    rate_hz: float,
    *,
    mode: Mode = "rtc",
    execution_horizon: int,
    inference_delay: int | None = None,
    max_steps: int | None = None,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    relative: bool = False,
    ee_keys: Sequence[str] = ("observation.ee_pose",),
    latency_window: int = 5,
    **infer_kwargs: Any,
) -> RunResult:
    """Run the robot at `rate_hz`, requesting chunks in a background thread while executing (module doc).

    Each tick: switch to an answered chunk (at index = ticks since its request); when ``s`` actions of the
    current chunk have run and no request is in flight, read an observation and send a request (RTC: with the
    prefix, ``d`` and ``s``); apply the next action. The first chunk is waited for. The loop ends after
    `max_steps` ticks, `duration_s` seconds or when `stop` is set (at least one of them is required).

    Args:
        robot: the robot (:class:`RobotInterface`).
        policy_fn: as for :class:`ChunkExecutor`; called from one background thread (one request at a time).
        rate_hz: control rate.
        mode, execution_horizon, relative, ee_keys, **infer_kwargs: as for :class:`ChunkExecutor`.
        inference_delay: d sent with RTC requests; None measures it: ``ceil(max latency of the last
            `latency_window` requests × rate_hz)``, clamped to ``H − s``.
    """
    mode, s, d_fixed = _check_mode(mode, execution_horizon, inference_delay)
    if not (isinstance(rate_hz, (int, float)) and not isinstance(rate_hz, bool) and 0 < rate_hz < math.inf):
        raise ConfigError(f"rate_hz must be a positive number, got {rate_hz!r}")
    if max_steps is None and duration_s is None and stop is None:
        raise ConfigError("run_robot needs max_steps, duration_s or a stop event to end")
    period = 1.0 / float(rate_hz)
    policy_call = _caller(policy_fn)
    sched = _Schedule(mode, s, relative=relative, ee_keys=ee_keys)
    result = RunResult(requests=sched.requests, switches=sched.switches)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="posevla-policy")
    inflight: tuple[Future, int, Request] | None = None  # (future, tick of the request, record)

    def call(obs: Mapping[str, Any], kwargs: dict[str, Any], req: Request) -> np.ndarray:
        t0 = time.perf_counter()
        raw = policy_call(obs, **kwargs)
        req.latency_s = time.perf_counter() - t0
        return sched.absolute(raw, obs)

    def delay(H: int) -> int:
        if d_fixed is not None:
            return min(d_fixed, H - s)
        lat = [r.latency_s for r in sched.requests[-latency_window:] if r.latency_s is not None]
        return max(0, min(H - s, math.ceil(max(lat) * rate_hz) if lat else 0))

    def submit(tick: int) -> tuple[Future, int, Request]:
        obs = robot.get_observation()
        d = delay(len(sched.chunk)) if sched.chunk is not None else 0
        kwargs = {**infer_kwargs, **sched.request_kwargs(d)}
        req = Request(step=tick, prefix_len=len(kwargs.get("action_prefix", ())), inference_delay=d,
                      execution_horizon=s)
        sched.requests.append(req)
        result.delays.append(d)
        return pool.submit(call, obs, kwargs, req), tick, req

    t_start = time.perf_counter()
    tick = 0
    try:
        fut, at, _ = submit(0)  # the first chunk: wait for it
        first = fut.result()
        if s > len(first):
            raise ConfigError(f"execution_horizon s={s} exceeds the policy's chunk size H={len(first)}")
        sched.switch(first, 0, 0)
        next_t = time.perf_counter()
        while True:
            if max_steps is not None and tick >= max_steps:
                break
            if duration_s is not None and time.perf_counter() - t_start >= duration_s:
                break
            if stop is not None and stop.is_set():
                break
            if inflight is not None and inflight[0].done():
                fut, at, _ = inflight
                inflight = None
                sched.switch(fut.result(), tick - at, tick)  # re-raises the request's error, if any
            if inflight is None and sched.due():
                inflight = submit(tick)
            a = sched.pop()
            if a is None:
                result.starved += 1
            else:
                robot.apply_action(a.astype(np.float32))
                result.applied += 1
            tick += 1
            next_t += period
            wait = next_t - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                result.overruns += 1
                next_t = time.perf_counter()  # do not try to catch up with a burst of ticks
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        result.steps = tick
        result.wall_s = time.perf_counter() - t_start
    return result
