"""Self-describing, atomically written checkpoints, and the one loader that rebuilds them from what they saved.

Layout of `<out_dir>/checkpoints/step_000500/`:
  model.safetensors      weights (tied embeddings stored once)
  optimizer.pt           optimizer + scheduler state
  trainer_state.json     step, data position, metrics of the last step
  rng.pt                 torch / numpy / python RNG states (for exact resume)
  config.json            sections ``train`` (the resolved TrainConfig), ``model`` (PoseVLMConfig), ``expert``
                         (ActionExpertConfig, post-training only) and ``data`` (what the run's data was:
                         token runs: categories and sources; post-training: cameras, image sizes, camera
                         config and the state / action dims)
  bins.json              the pose-token bin spec the model was trained with
  norm_stats.json        state / action normalisation statistics (post-training checkpoints only;
                         `posevla.data.normalize.load_norm_stats` reads and validates it)
  tokenizer/             the text tokenizer (pose tokens included)
  versions.json          package versions
  manifest.json          size and SHA-256 of every other file, verified when the checkpoint is read

A checkpoint is written under a temporary name and renamed into place; `checkpoints/latest.json` is replaced
atomically only after that rename (the trainer promotes a checkpoint only once the next step's loss is finite),
so killing the process at any moment never leaves a corrupt "latest"; :func:`clean_leftovers` removes what a
killed run left. No device is recorded anywhere.

:func:`load_checkpoint` is the only reader: the trainer (resume / init), `posevla.policy.Policy` and the
grounding predictor all use the :class:`Checkpoint` it returns. The model is rebuilt from the *saved*
``model`` / ``expert`` sections (:meth:`Checkpoint.build_model`), never from the named-size registries, so
editing ``MODEL_CONFIGS["tiny"]`` cannot change how an existing checkpoint loads. Checkpoints written before
the training config was nested (a flat ``train`` section) load through `TrainConfig.from_dict`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from posevla.data.action_space import ActionConfig
from posevla.data.normalize import NORM_STATS_FILE, NormStats, load_norm_stats
from posevla.errors import CheckpointError, ConfigError, DataError
from posevla.models.config import ActionExpertConfig, PoseVLMConfig
from posevla.models.factory import build_policy, build_vlm
from posevla.models.text import PoseTextTokenizer
from posevla.runtime import package_versions
from posevla.tokens import BinSpec
from posevla.training.config import TrainConfig
from posevla.training.integrity import check_weights_header, verify_manifest, write_manifest

__all__ = [
    "Checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "resolve_checkpoint",
    "load_model_weights",
    "load_training_state",
    "promote_checkpoint",
    "discard_checkpoint",
    "clean_leftovers",
]

REQUIRED_FILES = ("model.safetensors", "trainer_state.json", "config.json", "bins.json")
#: The sharded optimizer state of a distributed run (torch.distributed.checkpoint), inside a step_* folder.
OPTIMIZER_DCP_DIR = "optimizer"
#: What `load_checkpoint` reads (and verifies against the manifest); resuming also reads optimizer.pt and rng.pt.
_CONSUMER_FILES = (*REQUIRED_FILES, "norm_stats.json", "tokenizer")


#: The fix of a damaged or inconsistent checkpoint.
DAMAGED = "restore the checkpoint from a copy, or use another one (an earlier step_* folder of the run)"


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (KeyError / TypeError / ValueError when `state` is something else)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    config: dict[str, Any],
    bins_json: dict[str, Any],
    tokenizer,
    trainer_state: dict[str, Any],
    keep: int = 2,
    norm_stats: dict[str, Any] | None = None,
    promote: bool = True,
) -> Path:
    """Write checkpoint `step` atomically (with its manifest); with `promote`, point `latest` at it and prune.

    `norm_stats` is the ``norm_stats.json`` document (`posevla.data.normalize.norm_stats_json`) of a model
    that reads a state / predicts actions; None for VLM-only stages. With ``promote=False`` the directory is
    complete but not yet `latest` (:func:`promote_checkpoint` makes it so once it is known to be good).

    Raises:
        CheckpointError: a write failed (full disk, permissions); the folder is removed and the previous
            checkpoint stays `latest` (the message names both).
    """
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, step, model, optimizer, scheduler, config, bins_json, tokenizer, trainer_state, norm_stats)
        write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = _latest_name(root)
        raise CheckpointError(
            f"could not write the checkpoint of step {step} to {tmp} ({e.strerror or e}); nothing was kept of it and "
            f"{'the previous checkpoint ' + prev + ' stays latest' if prev else 'no earlier checkpoint exists'}. "
            "Free disk space or fix the folder's permissions, then continue with --resume"
        ) from e
    if promote:
        promote_checkpoint(final, keep=keep)
    return final


def _write_files(tmp, step, model, optimizer, scheduler, config, bins_json, tokenizer, trainer_state, norm_stats,
                 weights: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None) -> None:
    """Every file of a checkpoint but the manifest. `weights` = (unique tensors, aliases) gathered by a
    distributed run (`posevla.training.dist_checkpoint`); its optimizer state is written there, sharded, and
    ``optimizer.pt`` holds the scheduler and a pointer to it."""
    if weights is None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        # Tied weights share storage; safetensors refuses shared tensors, so store each storage once.
        seen: dict[int, str] = {}
        aliases: dict[str, str] = {}
        unique: dict[str, torch.Tensor] = {}
        for k, v in model.state_dict().items():
            ptr = v.untyped_storage().data_ptr()
            if ptr in seen and v.shape == unique[seen[ptr]].shape:
                aliases[k] = seen[ptr]
            else:
                seen[ptr] = k
                unique[k] = state[k]
    else:
        unique, aliases = weights
    save_file(unique, str(tmp / "model.safetensors"), metadata={"aliases": json.dumps(aliases)})
    if weights is not None:
        torch.save({"optimizer_dcp": OPTIMIZER_DCP_DIR, "scheduler": scheduler.state_dict() if scheduler else None},
                   tmp / "optimizer.pt")
    elif optimizer is not None:
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None},
            tmp / "optimizer.pt",
        )
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state}, indent=2, default=str))
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (tmp / "bins.json").write_text(json.dumps(bins_json, indent=2))
    if norm_stats is not None:
        (tmp / "norm_stats.json").write_text(json.dumps(norm_stats, indent=2))
    (tmp / "versions.json").write_text(json.dumps(package_versions(), indent=2))
    tokenizer.save(tmp / "tokenizer")
    with open(tmp / "model.safetensors", "rb") as f:  # make sure the bytes are on disk before the rename
        os.fsync(f.fileno())


def promote_checkpoint(final: Path, *, keep: int = 2) -> None:
    """Point ``checkpoints/latest.json`` at the complete checkpoint `final`; keep the `keep` newest ones."""
    root = final.parent
    _write_json_atomic(root / "latest.json", {"step": int(final.name.split("_")[-1]), "dir": final.name})
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and p.name <= final.name)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def discard_checkpoint(final: Path) -> None:
    """Remove a written but never promoted checkpoint (its next step diverged)."""
    shutil.rmtree(final, ignore_errors=True)


def _latest_name(root: Path) -> str | None:
    try:
        return str(root / json.loads((root / "latest.json").read_text())["dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clean_leftovers(out_dir: str | Path) -> list[tuple[Path, int]]:
    """Remove what killed runs left in ``out_dir/checkpoints``: temporary folders of processes that no longer
    run, and written-but-never-promoted checkpoints newer than `latest`. Returns (path, bytes) of each."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    latest = _latest_name(root)
    latest_name = Path(latest).name if latest else ""
    removed = []
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        stale_tmp = p.name.startswith(".tmp_step_") and not _pid_alive(p.name.rsplit("_", 1)[-1])
        unpromoted = p.name.startswith("step_") and p.name > latest_name
        if stale_tmp or unpromoted:
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            shutil.rmtree(p, ignore_errors=True)
            removed.append((p, size))
    return removed


def _pid_alive(pid: str) -> bool:
    """True when `pid` is another process that still runs (it may still be writing its folder)."""
    try:
        if int(pid) == os.getpid():  # a folder of an earlier run in this process that failed mid-write
            return False
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from either itself, a `checkpoints/` folder or a run directory."""
    p = Path(path)
    for root in (p, p / "checkpoints"):
        latest = root / "latest.json"
        if latest.exists():
            try:
                name = json.loads(latest.read_text())["dir"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{latest} is unreadable ({type(e).__name__}: {e}); delete it and pass a step_* "
                                      "folder of the run") from e
            if not isinstance(name, str) or not (root / name).is_dir():
                have = sorted(d.name for d in root.glob("step_*") if (d / "model.safetensors").is_file())
                raise CheckpointError(f"{latest} points at {name!r}, which is not there; pass one of the step_* "
                                      f"folders there ({', '.join(have) or 'none'}) or fix {latest.name}")
            return root / name
    if (p / "model.safetensors").exists():
        return p
    raise CheckpointError(
        f"no checkpoint at {p}: expected a step_* directory with model.safetensors, or a run directory "
        "with checkpoints/latest.json. Train first (`posevla train ...`) or pass the right path."
    )


def load_model_weights(model: torch.nn.Module, ckpt_dir: str | Path, *, strict: bool = True) -> None:
    """Load model.safetensors (with tied-weight aliases) into `model`."""
    d = resolve_checkpoint(ckpt_dir)
    from safetensors import safe_open

    path = d / "model.safetensors"
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path} cannot be read ({e}); the checkpoint is corrupt: {DAMAGED}") from e
    for k, src in aliases.items():
        tensors[k] = tensors[src]
    own = model.state_dict()
    shapes = {k: (tuple(own[k].shape), tuple(v.shape)) for k, v in tensors.items()
              if k in own and own[k].shape != v.shape}
    if shapes:
        first = dict(list(shapes.items())[:3])
        raise CheckpointError(f"{path} holds tensors of other shapes than the model its config.json describes "
                              f"({len(shapes)} tensor(s); {{name: (model, file)}} = {first}): {DAMAGED}")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights in {len(bad)} tensor(s) (first: {bad[0]}): the run "
                              f"that wrote it had diverged, or the file is corrupt; {DAMAGED}")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "was it written for another model size? Check config.json in the checkpoint, or "
            f"{DAMAGED}"
        )


def load_training_state(ckpt_dir: str | Path, optimizer, scheduler, model: torch.nn.Module | None = None
                        ) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG; return trainer_state.json. Errors name the damaged file.

    `model` (the parallel-wrapped module of a distributed run) makes the optimizer state load by parameter
    name, resharded to this run's ranks, from either kind of checkpoint (`posevla.training.dist_checkpoint`);
    without it a one-process checkpoint loads as saved and a distributed one by name onto the plain model.
    """
    d = resolve_checkpoint(ckpt_dir)
    verify_manifest(d, ["optimizer.pt", "rng.pt"] + ([OPTIMIZER_DCP_DIR] if (d / OPTIMIZER_DCP_DIR).is_dir() else []))
    loaded = {}
    for name in ("optimizer.pt", "rng.pt"):
        try:
            loaded[name] = torch.load(d / name, weights_only=False)
        except FileNotFoundError:
            raise CheckpointError(f"{d / name} is missing: the checkpoint cannot resume a run (it can still be "
                                  "loaded for inference); resume from another checkpoint or start a new run") from None
        except Exception as e:  # torch raises several error types for truncated or empty files
            raise CheckpointError(f"{d / name} cannot be read ({type(e).__name__}: {e}); the file is truncated or "
                                  "corrupt: resume from another checkpoint or start a new run") from None
    opt, rng = loaded["optimizer.pt"], loaded["rng.pt"]
    try:
        if model is not None or (isinstance(opt, dict) and "optimizer_dcp" in opt):
            from posevla.training.dist_checkpoint import load_optimizer

            load_optimizer(model, optimizer, d, opt)
        else:
            optimizer.load_state_dict(opt["optimizer"])
        if scheduler is not None and opt.get("scheduler") is not None:
            scheduler.load_state_dict(opt["scheduler"])
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{d / 'optimizer.pt'} does not hold this model's optimizer state ({type(e).__name__}: "
                              f"{e}); it comes from another run: resume from another checkpoint or start a new "
                              "run") from None
    try:
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{d / 'rng.pt'} does not hold the random generators' state ({type(e).__name__}: {e}); "
                              "resume from another checkpoint or start a new run") from None
    return _trainer_state(d)


def _trainer_state(d: Path) -> dict[str, Any]:
    path = d / "trainer_state.json"
    state = _read_json(path)
    step = state.get("step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: 'step' must be a non-negative integer, got {step!r}; the checkpoint is "
                              "damaged: resume from another checkpoint or start a new run")
    return state


@dataclass(frozen=True)
class Checkpoint:
    """Everything a consumer needs of one checkpoint directory, read from what it saved.

    Attributes:
        dir: the ``step_*`` directory.
        step: the training step it was written at.
        train: the resolved training config of the run that wrote it.
        model: the saved Pose-VLM architecture; expert: the saved action expert (post-training only).
        bins: the pose-token bins its tokens mean.
        norm_stats: ``{"state", "actions"}`` statistics (post-training only).
        data: the run's description of its data (see the module docstring).
        trainer_state: ``trainer_state.json``.
    """

    dir: Path
    step: int
    train: TrainConfig
    model: PoseVLMConfig
    expert: ActionExpertConfig | None
    bins: BinSpec
    norm_stats: dict[str, NormStats] | None
    data: dict[str, Any]
    trainer_state: dict[str, Any]

    @property
    def objective(self) -> str:
        return self.train.objective

    @property
    def action(self) -> ActionConfig | None:
        """The action config of a post-training checkpoint, else None."""
        return self.train.action if self.expert is not None else None

    @property
    def tokenizer_dir(self) -> Path:
        return self.dir / "tokenizer"

    def tokenizer(self) -> PoseTextTokenizer:
        """The saved text tokenizer (pose tokens included)."""
        return PoseTextTokenizer.load(self.tokenizer_dir)

    def embedding_rows(self) -> int:
        """Rows of the saved embedding matrix (read from the safetensors header, no tensor is loaded)."""
        from safetensors import safe_open

        path = self.dir / "model.safetensors"
        try:
            with safe_open(str(path), "pt") as f:
                key = next((k for k in f.keys() if k.endswith("language_model.embed_tokens.weight")), None)
                if key is None:
                    raise CheckpointError(f"{path} holds no Gemma embedding matrix (embed_tokens.weight)")
                return int(f.get_slice(key).get_shape()[0])
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise CheckpointError(f"{path} cannot be read ({e}); the checkpoint is corrupt: {DAMAGED}") from e

    def build_model(self, *, weights: bool = True) -> torch.nn.Module:
        """The saved model (`PoseVLM`, or `PoseVLA` for post-training), rebuilt from the saved ``model`` /
        ``expert`` sections, bins and tokenizer, with its weights (``weights=False``: random init, for tests)."""
        kw = dict(tokenizer=self.tokenizer(), embedding_rows=self.embedding_rows())
        if self.expert is not None:
            model = build_policy(self.model, self.expert, self.bins, **kw)
        else:
            model = build_vlm(self.model, self.bins, **kw)
        if weights:
            load_model_weights(model, self.dir)
        return model


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint (a ``step_*`` dir, or a run dir with ``checkpoints/latest.json``), validated.

    Raises:
        CheckpointError: missing, incomplete or corrupt files, a config that cannot be rebuilt, or
            statistics that do not belong to the config.
    """
    d = resolve_checkpoint(path)
    missing = [f for f in REQUIRED_FILES if not (d / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint {d} is incomplete: missing {', '.join(missing)}; {DAMAGED}")
    verify_manifest(d, _CONSUMER_FILES)
    conf = _read_json(d / "config.json")
    state = _trainer_state(d)
    for key in ("train", "model"):
        if not isinstance(conf.get(key), dict):
            raise CheckpointError(f"{d / 'config.json'} has no '{key}' section; the checkpoint is incomplete: "
                                  f"{DAMAGED}")
    try:
        train = TrainConfig.from_dict(conf["train"])
        model = PoseVLMConfig.from_dict(conf["model"])
        expert = ActionExpertConfig.from_dict(conf["expert"]) if "expert" in conf else None
    except ConfigError as e:
        raise CheckpointError(f"{d / 'config.json'}: the saved config cannot be rebuilt ({e})") from e
    try:
        bins = BinSpec.from_dict(_read_json(d / "bins.json"), file=str(d / "bins.json"))
    except DataError as e:
        raise CheckpointError(str(e)) from e
    if (train.objective == "actions") != (expert is not None):
        raise CheckpointError(
            f"{d / 'config.json'}: objective {train.objective!r} but the 'expert' section is "
            f"{'present' if expert is not None else 'missing'}; the checkpoint is inconsistent: {DAMAGED}"
        )
    check_weights_header(d / "model.safetensors", model, expert)
    data = conf.get("data") or {k: conf[k] for k in ("categories", "sources") if k in conf}
    stats = None
    if expert is not None:
        if "data" not in conf:
            raise CheckpointError(f"{d / 'config.json'} has no 'data' section; the checkpoint is incomplete: {DAMAGED}")
        stats, space = load_norm_stats(d)
        if space != train.action.space:
            raise CheckpointError(
                f"{d / NORM_STATS_FILE} is for action space {space!r} but the config says "
                f"{train.action.space!r}; the statistics belong to another run"
            )
        for feature, key in (("actions", "action_names"), ("state", "state_names")):
            if key in data and list(data[key]) != list(stats[feature].names):
                raise CheckpointError(
                    f"{d / NORM_STATS_FILE}: {feature} dims {list(stats[feature].names)} differ from the "
                    f"training data's (config.json data.{key}) {data[key]}; the statistics belong to another run: "
                    f"{DAMAGED}"
                )
        if expert.chunk_size != train.action.chunk_size:
            raise CheckpointError(
                f"{d / 'config.json'}: the expert predicts chunks of {expert.chunk_size} but the action config "
                f"cuts chunks of {train.action.chunk_size}; the checkpoint is inconsistent: {DAMAGED}"
            )
    return Checkpoint(
        dir=d,
        step=int(state["step"]),
        train=train,
        model=model,
        expert=expert,
        bins=bins,
        norm_stats=stats,
        data=dict(data),
        trainer_state=state,
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt: {DAMAGED}") from e
