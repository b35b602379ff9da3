"""Checkpoints with torch.distributed.checkpoint (DCP): every rank writes its shards, resharded on
load to whatever the world size is then. The root is a local directory or an object-store
prefix (s3://, gs://: DCP's fsspec writer and reader).

Atomic: on a filesystem a checkpoint is written under a temporary name; rank 0 adds
`manifest.json` (step, world size, data position, the size and SHA-256 of every file) and renames
the directory to `step-NNNNNNNNN` only when all of it is on disk (with background saves, while
training goes on). Object stores have no rename: the shards are written under `step-NNNNNNNNN/`
and `manifest.json` (every object's size and version, its ETag) is written last, in one PUT; a
step without a manifest that matches its objects does not exist. On resume the newest step whose
manifest matches its files is loaded; a partial or corrupted one is skipped with a warning, never
used.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from torch.distributed.checkpoint.fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as load_shards
from torch.distributed.checkpoint.state_dict_saver import async_save
from torch.distributed.checkpoint.state_dict_saver import save as save_shards

from pretrain_operator.naming import checkpoint_step_dir
from pretrain_trainer.distributed import Runtime
from pretrain_trainer.storage import Location, object_version

LOG = logging.getLogger("pretrain_trainer.checkpoint")
MANIFEST = "manifest.json"
PREFIX = "step-"
PARTIAL = ".partial-"

Root = Location | Path | str


@dataclass(frozen=True, slots=True)
class Restored:
    step: int
    data_position: int
    directory: Location


def _digest(location: Location) -> str:
    sha = hashlib.sha256()
    with location.fs.open(location.path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _files(directory: Location) -> dict[str, dict[str, Any]]:
    """What the manifest records of each file: its size, and its SHA-256 on a filesystem (where
    a torn write can leave a file of the right size) or its version on an object store (where
    a PUT is whole, and reading every object back to hash it would double the commit's time)."""
    recorded = {}
    for name, info in sorted(directory.files().items()):
        if name == MANIFEST:
            continue
        entry: dict[str, Any] = {"bytes": int(info["size"])}
        if directory.local:
            entry["sha256"] = _digest(directory / name)
        else:
            entry["version"] = object_version(info)
        recorded[name] = entry
    return recorded


UPLOAD_THREADS = 4  # an object store takes parallel PUTs well: a rank's shards in 4 files


def shard_writer(directory: Location) -> Any:
    """DCP's writer for a location: a path for the filesystem writer, fsspec's elsewhere."""
    return None if directory.local else FsspecWriter(str(directory), thread_count=UPLOAD_THREADS)


def shard_reader(directory: Location) -> Any:
    return None if directory.local else FsspecReader(str(directory))


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def _broadcast_name(name: str, runtime: Runtime) -> str:
    if not runtime.distributed:
        return name
    holder = [name]
    dist.broadcast_object_list(holder, src=0)
    return str(holder[0])


def _forget(directory: Location) -> None:
    """Delete a checkpoint: its manifest first, so that a deletion cut short leaves a step that
    is never loaded rather than one that looks whole."""
    manifest = directory / MANIFEST
    if manifest.exists():
        manifest.fs.rm(manifest.path)
    directory.remove()


def _staging(root: Location, step: int) -> str:
    """Where a save writes: a temporary directory renamed on commit, or on an object store the
    step's own prefix (emptied first: a step is saved again only where it was never committed,
    or after a resume from an older one)."""
    if root.local:
        return f"{PARTIAL}{checkpoint_step_dir(step)}-{uuid.uuid4().hex[:8]}"
    _forget(root / checkpoint_step_dir(step))
    return checkpoint_step_dir(step)


def _commit(
    root: Location,
    staging: Location,
    step: int,
    data_position: int,
    world_size: int,
    keep: int,
    extra_files: dict[str, str] | None,
) -> Location:
    """Rank 0, once every rank's shards are written: add the manifest (and rename), prune."""
    for name, text in (extra_files or {}).items():
        (staging / name).write_text(text)
    manifest = {"step": step, "data_position": data_position, "world_size": world_size,
                "files": _files(staging)}  # fmt: skip
    final = root / checkpoint_step_dir(step)
    if root.local:
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if final.exists():  # a re-run of the same step after a restart replaces it
            final.remove()
        Path(staging.path).rename(final.path)
    else:
        (final / MANIFEST).write_text(json.dumps(manifest, indent=2))  # the commit
    for old in complete(root)[keep:]:
        _forget(old)
    for left in _abandoned(root, final):
        left.remove()
    return final


def _abandoned(root: Location, committed: Location) -> list[Location]:
    """What saves cut short left behind (partial directories, steps older than the one just
    committed that have no manifest): nothing will ever load them. At most one save is in
    flight, and it is the one just committed."""

    def abandoned(entry: Location) -> bool:
        if entry.name.startswith(PARTIAL):
            return True
        older = entry.name.startswith(PREFIX) and entry.name < committed.name
        return older and not (entry / MANIFEST).exists()

    return [entry for entry in root.children() if abandoned(entry)]


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
        self, root: Root, runtime: Runtime, keep: int, background: bool = False,
        sharded: bool = False, on_commit: Callable[[int, float | None], None] | None = None,
    ) -> None:  # fmt: skip
        self.root, self.runtime, self.keep = Location.of(root), runtime, keep
        # (step, seconds from the save call to the commit; None where not measured): rank 0
        # commits; the other ranks learn of a commit at the next collective of a save.
        self.on_commit = on_commit
        self._unconfirmed: int | None = None  # a background save rank 0 may still be writing
        self._executor = (ThreadPoolExecutor(1, "checkpoint-writer")
                          if background and not sharded else None)  # fmt: skip
        self._pending: Future[Location] | None = None

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
        if self.root.local:
            Path(self.root.path).mkdir(parents=True, exist_ok=True)
        # Rank 0 broadcasts only once its previous save is committed.
        name = _staging(self.root, step) if self.runtime.main else ""
        staging = self.root / _broadcast_name(name, self.runtime)
        self._confirm(self._unconfirmed)
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}

        def commit() -> Location:
            final = _commit(self.root, staging, step, data_position, self.runtime.world_size,
                            self.keep, extra_files)  # fmt: skip
            if self.on_commit:
                self.on_commit(step, time.perf_counter() - started)
            return final

        if self._executor is None or block:
            save_shards(state, checkpoint_id=str(staging), storage_writer=shard_writer(staging))
            _barrier(self.runtime)  # every rank's shards are written
            if self.runtime.main:
                commit()
            _barrier(self.runtime)
            self._confirm(step)
            return
        if not self.runtime.main:
            self._unconfirmed = step  # replicated state: rank 0 writes all of it
            return
        written = async_save(state, checkpoint_id=str(staging),
                             storage_writer=shard_writer(staging), no_dist=True)  # fmt: skip

        def write_then_commit() -> Location:
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
    root: Root,
    step: int,
    data_position: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    keep: int,
    extra_files: dict[str, str] | None = None,
) -> Location:
    """Write the checkpoint of `step` synchronously and atomically; keep the `keep` newest."""
    writer = CheckpointWriter(root, runtime, keep)
    writer.save(step, data_position, model, optimizer, extra_files, block=True)
    return writer.root / checkpoint_step_dir(step)


def complete(root: Root) -> list[Location]:
    """Steps that have a manifest, newest first (whether it matches is checked on load). A
    prefix without one is a save cut short, or on some stores (SeaweedFS) the empty directory
    entry deleted objects leave."""
    found = [entry for entry in Location.of(root).children()
             if entry.name.startswith(PREFIX) and (entry / MANIFEST).exists()]  # fmt: skip
    return sorted(found, key=lambda entry: entry.name, reverse=True)


def verify(directory: Root) -> dict[str, Any] | None:
    """The manifest, if every file it lists is there with the recorded size and digest or
    version."""
    directory = Location.of(directory)
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    present = directory.files()
    for name, recorded in manifest.get("files", {}).items():
        info = present.get(name)
        if info is None or int(info["size"]) != recorded["bytes"]:
            return None
        if "sha256" in recorded and _digest(directory / name) != recorded["sha256"]:
            return None
        if "version" in recorded and object_version(info) != recorded["version"]:
            return None
    return manifest


def latest(root: Root) -> tuple[Location, dict[str, Any]] | None:
    """The newest checkpoint whose manifest matches its files; invalid ones are skipped."""
    for directory in complete(root):
        manifest = verify(directory)
        if manifest is not None:
            return directory, manifest
        LOG.warning("skipping checkpoint %s: incomplete or corrupted", directory)
    return None


def load_model_shards(state: dict[str, Any], directory: Location, **options: Any) -> None:
    """DCP's load from a local directory or an object store."""
    load_shards(state, checkpoint_id=str(directory), storage_reader=shard_reader(directory),
                **options)  # fmt: skip


def restore(
    found: tuple[Location, dict[str, Any]], model: nn.Module, optimizer: torch.optim.Optimizer
) -> Restored:
    """Load a checkpoint into `model` and `optimizer`, resharding to the current world size."""
    directory, manifest = found
    model_state, optimizer_state = get_state_dict(model, optimizer)
    load_model_shards({"model": model_state}, directory)  # every weight, strictly
    # Parameters an objective never uses (BERT's pooler under MaskedLM) have no optimizer
    # state in the checkpoint; they keep the fresh state they have.
    load_model_shards({"optimizer": optimizer_state}, directory,
                      planner=DefaultLoadPlanner(allow_partial_load=True))  # fmt: skip
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict=optimizer_state)  # fmt: skip
    return Restored(int(manifest["step"]), int(manifest["data_position"]), directory)
