"""Checkpoints with torch.distributed.checkpoint (DCP): every rank writes its shards, resharded on
load to whatever the world size is then.

Atomic: a checkpoint is written under a temporary name; rank 0 adds `manifest.json` (step, world
size, data position, the size and SHA-256 of every file) and renames the directory to
`step-NNNNNNNNN` only when all ranks are done. On resume the newest directory whose manifest
matches its files is loaded; a partial or corrupted one is skipped with a warning, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as load_shards
from torch.distributed.checkpoint.state_dict_saver import save as save_shards

from pretrain_operator.naming import checkpoint_step_dir
from pretrain_trainer.distributed import Runtime

LOG = logging.getLogger("pretrain_trainer.checkpoint")
MANIFEST = "manifest.json"
PREFIX = "step-"


@dataclass(frozen=True, slots=True)
class Restored:
    step: int
    data_position: int
    directory: Path


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _files(directory: Path) -> dict[str, dict[str, Any]]:
    return {
        str(path.relative_to(directory)): {"bytes": path.stat().st_size, "sha256": _digest(path)}
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def _broadcast_name(name: str, runtime: Runtime) -> str:
    if not runtime.distributed:
        return name
    holder = [name]
    dist.broadcast_object_list(holder, src=0)
    return str(holder[0])


def save(
    root: Path,
    step: int,
    data_position: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    keep: int,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically (with `extra_files`, e.g. the tokenizer, written
    by rank 0 and covered by the manifest); keep the `keep` newest."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / _broadcast_name(f".partial-{checkpoint_step_dir(step)}-{uuid.uuid4().hex[:8]}",
                                     runtime)  # fmt: skip
    model_state, optimizer_state = get_state_dict(model, optimizer)
    save_shards({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(staging))
    _barrier(runtime)  # every rank's shards are on disk
    final = root / checkpoint_step_dir(step)
    if runtime.main:
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        manifest = {"step": step, "data_position": data_position,
                    "world_size": runtime.world_size, "files": _files(staging)}  # fmt: skip
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists():  # a re-run of the same step after a restart replaces it
            shutil.rmtree(final)
        staging.rename(final)
        for old in complete(root)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(runtime)
    return final


def complete(root: Path) -> list[Path]:
    """Directories that look committed, newest first (validity is checked on load)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def verify(directory: Path) -> dict[str, Any] | None:
    """The manifest, if every file it lists is there with the recorded size and digest."""
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    for name, recorded in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != recorded["bytes"]:
            return None
        if _digest(path) != recorded["sha256"]:
            return None
    return manifest


def latest(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose manifest matches its files; invalid ones are skipped."""
    for directory in complete(root):
        manifest = verify(directory)
        if manifest is not None:
            return directory, manifest
        LOG.warning("skipping checkpoint %s: incomplete or corrupted", directory)
    return None


def restore(
    found: tuple[Path, dict[str, Any]], model: nn.Module, optimizer: torch.optim.Optimizer
) -> Restored:
    """Load a checkpoint into `model` and `optimizer`, resharding to the current world size."""
    directory, manifest = found
    model_state, optimizer_state = get_state_dict(model, optimizer)
    load_shards({"model": model_state}, checkpoint_id=str(directory))  # every weight, strictly
    # Parameters an objective never uses (BERT's pooler under MaskedLM) have no optimizer
    # state in the checkpoint; they keep the fresh state they have.
    load_shards({"optimizer": optimizer_state}, checkpoint_id=str(directory),
                planner=DefaultLoadPlanner(allow_partial_load=True))  # fmt: skip
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict=optimizer_state)  # fmt: skip
    return Restored(int(manifest["step"]), int(manifest["data_position"]), directory)
