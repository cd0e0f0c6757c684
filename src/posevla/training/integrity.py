"""Checkpoint integrity: a per-file size + SHA-256 manifest, and the weights checked against the saved config.

* ``manifest.json`` lists every file of a checkpoint directory (tokenizer files included) with its size in bytes
  and its SHA-256, written last, before the directory is renamed into place. :func:`verify_manifest` compares the
  files a consumer is about to read with it and names the first one that is missing, truncated or changed.
  Checkpoints written before manifests existed have none; they are read unverified.
* :func:`check_weights_header` reads only the safetensors header (names and shapes, no tensor data) and compares
  the architecture it implies (Gemma width and layers, SigLIP width and layers, the expert's layers and width)
  with the saved ``model`` / ``expert`` sections, so weights of another model size are refused before any model
  is built.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from posevla.errors import CheckpointError

__all__ = ["MANIFEST", "file_sha256", "write_manifest", "verify_manifest", "check_weights_header"]

MANIFEST = "manifest.json"
_FORMAT = "posevla.checkpoint_manifest"


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path) -> Path:
    """Write ``manifest.json`` for every file under `directory` (relative POSIX paths, sizes, SHA-256)."""
    files = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    out = directory / MANIFEST
    out.write_text(json.dumps({"format": _FORMAT, "version": 1, "files": files}, indent=1) + "\n")
    return out


def verify_manifest(directory: Path, names: Iterable[str] | None = None) -> bool:
    """Check files of a checkpoint against its manifest; returns False when it has none (an older checkpoint).

    Args:
        directory: the ``step_*`` directory.
        names: relative paths to check (a folder name checks every file under it); None = every listed file.

    Raises:
        CheckpointError: naming the first file that is missing, has another size, or another SHA-256.
    """
    path = directory / MANIFEST
    if not path.is_file():
        return False
    try:
        doc = json.loads(path.read_text())
        listed: dict[str, Any] = doc["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); the checkpoint is corrupt: delete it or train again") from e
    wanted = list(listed) if names is None else [
        f for f in listed for n in names if f == n or f.startswith(n.rstrip("/") + "/")
    ]
    for rel in wanted:
        f = directory / rel
        want = listed[rel]
        fix = "the checkpoint is damaged (a copy cut short, a full disk, a killed copy): restore it or use the previous one"
        if not f.is_file():
            raise CheckpointError(f"{f} is missing; {MANIFEST} lists it. {fix}")
        size = f.stat().st_size
        if size != want["size"]:
            raise CheckpointError(f"{f} has {size} bytes, {MANIFEST} says {want['size']}: truncated or replaced. {fix}")
        if file_sha256(f) != want["sha256"]:
            raise CheckpointError(f"{f} does not match its SHA-256 in {MANIFEST}: its content changed. {fix}")
    return True


def _layer_count(keys: Iterable[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.search(k))})


def check_weights_header(path: Path, model: Any, expert: Any = None) -> None:
    """Refuse weights whose architecture differs from the saved configs (`PoseVLMConfig` / `ActionExpertConfig`).

    Only the safetensors header is read. Raises CheckpointError listing ``{field: (config, weights)}``.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path} cannot be read ({e}); the checkpoint is corrupt: restore it from a copy, or "
                              "use another checkpoint (an earlier step_* folder of the run)") from e
    prefix = "vlm." if expert is not None else ""
    embed = shapes.get(f"{prefix}hf.model.language_model.embed_tokens.weight")
    patch = shapes.get(f"{prefix}hf.model.vision_tower.embeddings.patch_embedding.weight")
    found = {
        "text_hidden": embed[1] if embed else None,
        "text_layers": _layer_count(shapes, rf"^{re.escape(prefix)}hf\.model\.language_model\.layers\.(\d+)\."),
        "vision_hidden": patch[0] if patch else None,
        "vision_layers": _layer_count(shapes, rf"^{re.escape(prefix)}hf\.model\.vision_tower\..*layers\.(\d+)\."),
    }
    want = {k: getattr(model, k) for k in found}
    if expert is not None:
        out = shapes.get("expert.action_out_proj.weight")
        found |= {"expert.layers": _layer_count(shapes, r"^expert\.layers\.(\d+)\."),
                  "expert.hidden": out[1] if out else None}
        want |= {"expert.layers": expert.layers, "expert.hidden": expert.hidden}
    diff = {k: (want[k], found[k]) for k in want if found[k] != want[k]}
    if diff:
        raise CheckpointError(
            f"{path} does not hold the model its config.json describes: {{field: (config.json, weights)}} = {diff}; "
            "the files come from different runs (or config.json was edited). Use the config.json written with "
            "these weights"
        )
