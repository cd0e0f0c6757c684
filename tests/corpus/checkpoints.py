"""Damaged, incomplete and mismatched checkpoints: a CheckpointError naming the file (and the key) before any
model is built where the files allow it.

Cases marked ``bare`` delete ``manifest.json`` first, as in a checkpoint written before manifests existed, so the
checks behind the manifest speak (with a manifest, any edited file is named by its size or hash).
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import torch

from . import case
from .workspace import LEGACY

ckpt = partial(case, "checkpoint")


def _step(ws, tmp, run: str, bare: bool) -> Path:
    """A copy of the latest step dir of `run` ("token", "action", "legacy_tokens", "legacy_actions")."""
    src = {"token": lambda: ws.step_dir(ws.token_run), "action": lambda: ws.step_dir(ws.action_run),
           "legacy_tokens": lambda: LEGACY / "tokens", "legacy_actions": lambda: LEGACY / "actions"}[run]()
    d = ws.copy(src, tmp / "ckpt")
    if bare:
        (d / "manifest.json").unlink(missing_ok=True)
    return d


def _json_edit(name: str, fn):
    def edit(d: Path) -> None:
        p = d / name
        doc = json.loads(p.read_text())
        out = fn(doc)
        p.write_text(json.dumps(doc if out is None else out))

    return edit


def _truncate(name: str, keep: int = 100):
    def edit(d: Path) -> None:
        p = d / name
        p.write_bytes(p.read_bytes()[:keep])

    return edit


def _write(name: str, data: bytes | str):
    def edit(d: Path) -> None:
        p = d / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())

    return edit


def _delete(name: str):
    def edit(d: Path) -> None:
        p = d / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    return edit


def _tensors(fn):
    """Rewrite model.safetensors after ``fn(tensors)`` (metadata kept)."""
    def edit(d: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        p = d / "model.safetensors"
        with safe_open(str(p), "pt") as f:
            meta = f.metadata()
        t = load_file(str(p))
        fn(t)
        save_file(t, str(p), metadata=meta)

    return edit


def _key(t: dict, part: str) -> str:
    return next(k for k in sorted(t) if part in k)


def _drop_tensor(t):
    del t[_key(t, "language_model.layers.0.mlp.down_proj")]


def _reshape_tensor(t):
    k = _key(t, "pose_head") if any("pose_head" in k for k in t) else _key(t, "multi_modal_projector")
    t[k] = torch.zeros(t[k].shape[0] + 1, *t[k].shape[1:])


def _nan_tensor(t):
    k = _key(t, "language_model.layers.1.self_attn.q_proj")
    t[k] = t[k].clone()
    t[k][0, 0] = float("nan")


def _other_size(conf):
    from posevla.models.config import get_model_config

    conf["model"] = get_model_config("paligemma-3b").to_dict()


def _load(run: str, *edits, bare: bool = False, how: str = "load"):
    """Copy `run`'s checkpoint, apply `edits`, then read it: ``load`` (load_checkpoint), ``build`` (+ the model with
    its weights), ``policy`` (Policy.from_checkpoint)."""
    def call(ws, tmp):
        from posevla.policy import Policy
        from posevla.training.checkpoint import load_checkpoint

        d = _step(ws, tmp, run, bare)
        for e in edits:
            e(d)
        if how == "policy":
            Policy.from_checkpoint(d, device="cpu", precision="fp32")
        elif how == "build":
            load_checkpoint(d).build_model()
        else:
            load_checkpoint(d)

    return call


def _resume(*edits, bare: bool = False, foreign: str | None = None):
    """Copy the whole token run, damage its latest checkpoint (`foreign`: put the action run's file of that name
    in its place), and resume it for one more step."""
    def call(ws, tmp):
        import dataclasses

        from posevla.training.checkpoint import resolve_checkpoint
        from posevla.training.config import DataConfig
        from posevla.training.configs import get_config
        from posevla.training.trainer import train

        out = ws.copy(ws.token_run, tmp / "run")
        d = resolve_checkpoint(out)
        if bare:
            (d / "manifest.json").unlink()
        if foreign is not None:
            shutil.copy(ws.step_dir(ws.action_run) / foreign, d / foreign)
        for e in edits:
            e(d)
        train(dataclasses.replace(get_config("debug"), data=DataConfig(train_data=str(ws.scenes)), out_dir=str(out),
                                  steps=3, save_every=1, progress=False), resume=True)

    return call


def _at(path: str):
    def call(ws, tmp):
        from posevla.training.checkpoint import load_checkpoint

        p = tmp / path
        if path.endswith("file"):
            p.write_text("x")
        elif path.endswith("empty"):
            p.mkdir()
        load_checkpoint(p)

    return call


def _latest(text: str):
    def call(ws, tmp):
        from posevla.training.checkpoint import load_checkpoint

        out = ws.copy(ws.token_run, tmp / "run")
        (out / "checkpoints" / "latest.json").write_text(text)
        load_checkpoint(out)

    return call


def _policy_options(path=None, **kw):
    def call(ws, tmp):
        from posevla.policy import Policy

        Policy.from_checkpoint(ws.action_run if path is None else path, **kw)

    return call


def _init_from(*edits):
    """Stage-2 style: a new run initialised from a damaged token checkpoint."""
    def call(ws, tmp):
        import dataclasses

        from posevla.training.config import DataConfig
        from posevla.training.configs import get_config
        from posevla.training.trainer import train

        d = _step(ws, tmp, "token", False)
        for e in edits:
            e(d)
        train(dataclasses.replace(get_config("debug"), data=DataConfig(train_data=str(ws.scenes)),
                                  out_dir=str(tmp / "run"), init_checkpoint=str(d), steps=1, progress=False))

    return call


CONF, W, BINS, STATE, STATS = "config.json", "model.safetensors", "bins.json", "trainer_state.json", "norm_stats.json"

CASES = [
    # -- where the checkpoint is ----------------------------------------------------------------------------------
    ckpt("path_missing", ("nope", "no checkpoint"), call=_at("nope")),
    ckpt("path_is_a_file", ("a_file",), call=_at("a_file")),
    ckpt("run_without_checkpoints", ("empty", "no checkpoint"), call=_at("empty")),
    ckpt("latest_points_nowhere", ("latest.json", "step_0000009"), call=_latest('{"dir": "step_0000009", "step": 9}')),
    ckpt("latest_not_json", ("latest.json",), call=_latest('{"dir": ')),
    ckpt("latest_without_dir", ("latest.json", "dir"), call=_latest('{"step": 2}')),
    # -- files missing ----------------------------------------------------------------------------------------------
    ckpt("config_missing", (CONF,), call=_load("token", _delete(CONF))),
    ckpt("weights_missing", (W,), call=_load("token", _delete(W))),
    ckpt("bins_missing", (BINS,), call=_load("token", _delete(BINS))),
    ckpt("tokenizer_missing", ("tokenizer",), call=_load("token", _delete("tokenizer"))),
    ckpt("trainer_state_missing", (STATE,), call=_load("token", _delete(STATE))),
    ckpt("tokenizer_missing_bare", ("tokenizer",), call=_load("token", _delete("tokenizer"), bare=True, how="build")),
    # -- the manifest -------------------------------------------------------------------------------------------
    ckpt("manifest_not_json", ("manifest.json",), call=_load("token", _write("manifest.json", "{"))),
    ckpt("manifest_lists_a_missing_file", ("extra.bin", "manifest.json"), call=_load("token", _json_edit(
        "manifest.json", lambda m: m["files"].update({"tokenizer/extra.bin": {"size": 1, "sha256": "0" * 64}})))),
    ckpt("edited_bins_behind_the_manifest", (BINS, "manifest.json"),
         call=_load("token", _json_edit(BINS, lambda b: b.update(description="edited")))),
    ckpt("config_not_json", (CONF,), call=_load("token", _write(CONF, "{\"train\": "))),
    ckpt("weights_truncated", (W, "bytes"), call=_load("token", _truncate(W, 5000))),
    # -- config.json (bare: the checks behind the manifest) ---------------------------------------------------------
    ckpt("config_not_json_bare", (CONF, "not valid JSON"),
         call=_load("token", _write(CONF, "{\"train\": "), bare=True)),
    ckpt("config_unknown_train_key", (CONF, "lr_typo"),
         call=_load("token", _json_edit(CONF, lambda c: c["train"].update(lr_typo=1)), bare=True)),
    ckpt("config_without_train", (CONF, "'train'"),
         call=_load("token", _json_edit(CONF, lambda c: c.pop("train") and None),
                                                             bare=True)),
    ckpt("config_without_model", (CONF, "'model'"),
         call=_load("token", _json_edit(CONF, lambda c: c.pop("model") and None),
                                                             bare=True)),
    ckpt("config_of_another_model_size", (W, "text_hidden", "config.json"),
         call=_load("token", _json_edit(CONF, _other_size), bare=True)),
    ckpt("config_layers_edited", (W, "text_layers"),
         call=_load("token", _json_edit(CONF, lambda c: c["model"].update(text_layers=7)), bare=True)),
    ckpt("config_model_unknown_key", (CONF, "hidden_sizes"),
         call=_load("token", _json_edit(CONF, lambda c: c["model"].update(hidden_sizes=[1])), bare=True)),
    ckpt("config_objective_without_expert", (CONF, "'expert'"),
         call=_load("token", _json_edit(CONF, lambda c: c["train"].update(objective="actions")), bare=True)),
    # -- the weights (bare) -----------------------------------------------------------------------------------------
    ckpt("weights_truncated_bare", (W, "corrupt"), call=_load("token", _truncate(W, 5000), bare=True)),
    ckpt("weights_garbage_bare", (W, "corrupt"), call=_load("token", _write(W, b"\xff" * 64), bare=True)),
    ckpt("weights_empty_bare", (W, "corrupt"), call=_load("token", _write(W, b""), bare=True)),
    ckpt("weights_tensor_missing", (W, "down_proj"),
         call=_load("token", _tensors(_drop_tensor), bare=True, how="build")),
    ckpt("weights_extra_tensor", (W, "stray.weight"), call=_load("token", _tensors(
        lambda t: t.update({"stray.weight": torch.zeros(2)})), bare=True, how="build")),
    ckpt("weights_wrong_shape", (W, "shape"), call=_load("token", _tensors(_reshape_tensor), bare=True, how="build")),
    ckpt("weights_nan", (W, "q_proj", "non-finite"),
         call=_load("token", _tensors(_nan_tensor), bare=True, how="build")),
    # -- bins.json, trainer_state.json, the tokenizer (bare) ----------------------------------------------------
    ckpt("bins_not_json_bare", (BINS, "not valid JSON"), call=_load("token", _write(BINS, "{"), bare=True)),
    ckpt("bins_edge_nan_bare", (BINS, "families.size.edges"), call=_load("token", _json_edit(
        BINS, lambda b: b["families"]["size"]["edges"].__setitem__(2, float("nan"))), bare=True)),
    ckpt("trainer_state_without_step", (STATE, "'step'"),
         call=_load("token", _json_edit(STATE, lambda s: s.pop("step") and None), bare=True)),
    ckpt("trainer_state_negative_step", (STATE, "'step'"),
         call=_load("token", _json_edit(STATE, lambda s: s.update(step=-3)), bare=True)),
    ckpt("trainer_state_not_json", (STATE, "not valid JSON"), call=_load("token", _write(STATE, "[1, "), bare=True)),
    ckpt("tokenizer_json_corrupt", ("tokenizer.json",),
         call=_load("token", _write("tokenizer/tokenizer.json", "{\"version\": "), bare=True, how="build")),
    ckpt("tokenizer_meta_corrupt", ("posevla_tokenizer.json",),
         call=_load("token", _write("tokenizer/posevla_tokenizer.json", "nope"), bare=True, how="build")),
    # -- resuming a run ------------------------------------------------------------------------------------------
    ckpt("resume_optimizer_truncated", ("optimizer.pt", "bytes"), call=_resume(_truncate("optimizer.pt"))),
    ckpt("resume_optimizer_truncated_bare", ("optimizer.pt", "truncated"), call=_resume(_truncate("optimizer.pt"),
                                                                                      bare=True)),
    ckpt("resume_optimizer_missing_bare", ("optimizer.pt", "missing"),
         call=_resume(_delete("optimizer.pt"), bare=True)),
    ckpt("resume_optimizer_of_another_run", ("optimizer.pt",), call=_resume(bare=True, foreign="optimizer.pt")),
    ckpt("resume_rng_empty_bare", ("rng.pt",), call=_resume(_write("rng.pt", b""), bare=True)),
    ckpt("resume_rng_not_a_state", ("rng.pt",), call=_resume(
        lambda d: torch.save({"python": 3}, d / "rng.pt"), bare=True)),
    ckpt("resume_trainer_state_without_step", (STATE, "'step'"),
         call=_resume(_json_edit(STATE, lambda s: s.pop("step") and None), bare=True)),
    ckpt("init_checkpoint_truncated", ("--init-checkpoint", W), call=_init_from(_truncate(W, 5000))),
    # -- post-training checkpoints and the policy ------------------------------------------------------------
    ckpt("policy_from_a_vlm_checkpoint", ("no action expert", "posttrain"),
         call=lambda ws, tmp: _policy_options(path=ws.token_run)(ws, tmp)),
    ckpt("policy_norm_stats_missing", (STATS,), call=_load("action", _delete(STATS), how="policy")),
    ckpt("policy_norm_stats_missing_bare", (STATS, "normalisation statistics"),
         call=_load("action", _delete(STATS), bare=True, how="policy")),
    ckpt("policy_norm_stats_not_json", (STATS,), call=_load("action", _write(STATS, "{"), bare=True, how="policy")),
    ckpt("policy_norm_stats_std_nan", (STATS, "std"), call=_load("action", _json_edit(
        STATS, lambda s: s["stats"]["actions"]["std"].__setitem__(0, float("nan"))), bare=True, how="policy")),
    ckpt("policy_norm_stats_std_negative", (STATS, "std"), call=_load("action", _json_edit(
        STATS, lambda s: s["stats"]["state"]["std"].__setitem__(1, -1.0)), bare=True, how="policy")),
    ckpt("policy_norm_stats_short", (STATS, "mean"), call=_load("action", _json_edit(
        STATS, lambda s: s["stats"]["actions"].update(mean=[0.0])), bare=True, how="policy")),
    ckpt("policy_norm_stats_other_space", (STATS, "joints"), call=_load("action", _json_edit(
        STATS, lambda s: s.update(action_space="joints")), bare=True, how="policy")),
    ckpt("policy_norm_stats_other_dims", (STATS, "data.action_names"), call=_load("action", _json_edit(
        CONF, lambda c: c["data"].update(action_names=["a"] * 10)), bare=True, how="policy")),
    ckpt("policy_expert_chunk_mismatch", (CONF, "chunks of 8"), call=_load("action", _json_edit(
        CONF, lambda c: c["expert"].update(chunk_size=8)), bare=True, how="policy")),
    ckpt("policy_expert_unknown_key", (CONF, "expert_width"), call=_load("action", _json_edit(
        CONF, lambda c: c["expert"].update(expert_width=3)), bare=True, how="policy")),
    ckpt("policy_expert_layers_edited", (W, "expert.layers"), call=_load("action", _json_edit(
        CONF, lambda c: c["expert"].update(layers=2)), bare=True, how="policy")),
    ckpt("policy_without_data", (CONF, "'data'"), call=_load("action", _json_edit(
        CONF, lambda c: c.pop("data") and None), bare=True, how="policy")),
    ckpt("policy_camera_config_bad", (CONF, "data.camera_config", "tcp_offset"), call=_load("action", _json_edit(
        CONF, lambda c: c["data"]["camera_config"].update(tcp_offset=[0, 0])), bare=True, how="policy")),
    ckpt("policy_device_unknown", ("tpu", "cuda"), call=_policy_options(device="tpu")),
    ckpt("policy_precision_unknown", ("fp8", "fp32"), call=_policy_options(device="cpu", precision="fp8")),
    # -- checkpoints of the previous layout (no manifest) --------------------------------------------------------
    ckpt("legacy_config_unknown_key", (CONF, "lr_typo"), call=_load("legacy_tokens", _json_edit(
        CONF, lambda c: c["train"].update(lr_typo=1)))),
    ckpt("legacy_weights_truncated", (W, "corrupt"), call=_load("legacy_tokens", _truncate(W, 4000))),
    ckpt("legacy_policy_norm_stats_missing", (STATS,), call=_load("legacy_actions", _delete(STATS), how="policy")),
    ckpt("legacy_policy_other_model_size", (W, "config.json"),
         call=_load("legacy_actions", _json_edit(CONF, _other_size), how="policy")),
]
