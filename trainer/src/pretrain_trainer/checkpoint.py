"""Checkpoints with torch.distributed.checkpoint (DCP): every rank writes its shards, resharded on
load to whatever the world size is then.

Atomic: a checkpoint is written under a temporary name; rank 0 adds `manifest.json` (step, world
size, data position, the size and SHA-256 of every file) and renames the directory to
`step-NNNNNNNNN` only when all of it is on disk (with background saves, while training goes on).
On resume the newest directory whose manifest matches its files is loaded; a partial or
corrupted one is skipped with a warning, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as load_shards
from torch.distributed.checkpoint.state_dict_saver import async_save
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


def _commit(
    root: Path,
    staging: Path,
    step: int,
    data_position: int,
    world_size: int,
    keep: int,
    extra_files: dict[str, str] | None,
) -> Path:
    """Rank 0, once every rank's shards are on disk: add the manifest, rename, prune."""
    for name, text in (extra_files or {}).items():
        (staging / name).write_text(text)
    manifest = {"step": step, "data_position": data_position, "world_size": world_size,
                "files": _files(staging)}  # fmt: skip
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    final = root / checkpoint_step_dir(step)
    if final.exists():  # a re-run of the same step after a restart replaces it
        shutil.rmtree(final)
    staging.rename(final)
    for old in complete(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointWriter:
    """Saves checkpoints of one run, synchronously or in the background.

    In the background, the loop blocks only while the state is copied to host memory; a thread
    writes it (DCP's async_save) and commits it. That needs the whole state in one process, so
    it applies to replicated state (one process, or DDP, where rank 0 writes alone); sharded
    state (FSDP) is written by every rank together, synchronously. (Collectives from a second
    thread would need a process group of their own, and under torch elastic such a group breaks
    the next rendezvous after a restart: its workers fail to connect.)
    At most one save is in flight: the next one waits for it.
    """

    def __init__(
        self, root: Path, runtime: Runtime, keep: int, background: bool = False,
        sharded: bool = False, on_commit: Callable[[int, float | None], None] | None = None,
    ) -> None:  # fmt: skip
        self.root, self.runtime, self.keep = root, runtime, keep
        # (step, seconds from the save call to the commit; None where not measured): rank 0
        # commits; the other ranks learn of a commit at the next collective of a save.
        self.on_commit = on_commit
        self._unconfirmed: int | None = None  # a background save rank 0 may still be writing
        self._executor = (ThreadPoolExecutor(1, "checkpoint-writer")
                          if background and not sharded else None)  # fmt: skip
        self._pending: Future[Path | None] | None = None

    def save(
        self,
        step: int,
        data_position: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        extra_files: dict[str, str] | None = None,
        block: bool = False,
    ) -> None:
        """Checkpoint `step` (with `extra_files`, e.g. the tokenizer, written by rank 0 and
        covered by the manifest); with `block`, return only once it is committed."""
        self.wait()
        started = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / _broadcast_name(
            f".partial-{checkpoint_step_dir(step)}-{uuid.uuid4().hex[:8]}", self.runtime
        )  # rank 0 broadcasts only once its previous save is committed
        self._confirm(self._unconfirmed)
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}

        def commit() -> Path:
            final = _commit(self.root, staging, step, data_position, self.runtime.world_size,
                            self.keep, extra_files)  # fmt: skip
            if self.on_commit:
                self.on_commit(step, time.perf_counter() - started)
            return final

        if self._executor is None or block:
            save_shards(state, checkpoint_id=str(staging))
            _barrier(self.runtime)  # every rank's shards are on disk
            if self.runtime.main:
                commit()
            _barrier(self.runtime)
            self._confirm(step)
            return
        if not self.runtime.main:
            self._unconfirmed = step  # replicated state: rank 0 writes all of it
            return
        written = async_save(state, checkpoint_id=str(staging), no_dist=True)

        def write_then_commit() -> Path:
            written.result()  # type: ignore[union-attr]  # raises if the write failed
            return commit()

        self._pending = self._executor.submit(write_then_commit)

    def _confirm(self, step: int | None) -> None:
        if step is not None and not self.runtime.main and self.on_commit:
            self.on_commit(step, None)
        self._unconfirmed = None

    def wait(self) -> None:
        """Block until the save in flight, if any, is committed (re-raising its failure)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self.wait()
        if self._executor is not None:
            self._executor.shutdown()


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
    """Write the checkpoint of `step` synchronously and atomically; keep the `keep` newest."""
    CheckpointWriter(root, runtime, keep).save(step, data_position, model, optimizer,
                                               extra_files, block=True)  # fmt: skip
    return root / checkpoint_step_dir(step)


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
