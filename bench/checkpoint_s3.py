"""Checkpointing to an object store: the trainer's save of a model's state to the local S3
server (SeaweedFS), against writing the same bytes there with a plain s3fs `put`.

The state is `checkpointing`'s (a model of `parameters` fp32 weights and its AdamW moments). Ours
is `CheckpointWriter` on an `s3://` root, synchronously and in the background: DCP's fsspec
writer, the ETag listing and `manifest.json` last. Plain is the DCP files of the same state,
written once to a local directory, then `put` to a fresh prefix with s3fs: the bytes without our
protocol. Alternating, `runs` times each; medians. The figure is ours/plain commit time."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.checkpointing import save_once, state
from bench.stats import median


def measure(width: int = 2048, layers: int = 12, runs: int = 3) -> dict[str, Any]:
    import s3fs

    from devcluster.objectstore import ObjectStore, environment
    from pretrain_trainer.checkpoint import save
    from pretrain_trainer.distributed import Runtime

    model, optimizer = state(width, layers)
    parameters = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-s3-") as work:
        store = ObjectStore(Path(work) / "store")
        server = store.start()
        saved = dict(os.environ)
        os.environ.update(environment(server))  # where the trainer's s3fs finds the server
        s3fs.S3FileSystem.clear_instance_cache()
        s3 = s3fs.S3FileSystem()
        try:
            local = save(Path(work) / "local", 1, 0, model, optimizer, Runtime(), keep=1)
            files = sorted(p for p in Path(local.path).iterdir() if p.is_file())
            state_bytes = sum(p.stat().st_size for p in files)
            times: dict[str, list[tuple[float, float]]] = {"sync": [], "background": []}
            plain: list[float] = []
            for _ in range(runs):
                for side in ("sync", "background"):
                    root = f"s3://{server.bucket}/ours-{uuid.uuid4().hex[:8]}"
                    times[side].append(save_once(root, side == "background", model, optimizer))
                prefix = f"{server.bucket}/plain-{uuid.uuid4().hex[:8]}"
                started = time.perf_counter()
                s3.put([str(p) for p in files], f"{prefix}/")
                plain.append(time.perf_counter() - started)
        finally:
            store.stop()
            os.environ.clear()
            os.environ.update(saved)
            s3fs.S3FileSystem.clear_instance_cache()
    blocked = {side: median([b for b, _ in pairs]) for side, pairs in times.items()}
    committed = {side: median([c for _, c in pairs]) for side, pairs in times.items()}
    put = median(plain)
    ratio = committed["sync"] / put
    return {
        "parameters": parameters,
        "state_bytes": state_bytes,
        "blocked_seconds": blocked,
        "commit_seconds": committed,
        "plain_put_seconds": put,
        "ratio": ratio,
        "summary": (
            f"{parameters / 1e6:.0f}M parameters ({state_bytes / 1e9:.2f} GB) to S3: ours/plain "
            f"commit {ratio:.2f} ({committed['sync']:.2f} s vs a plain put's {put:.2f} s); the "
            f"loop blocks {blocked['background']:.2f} s in the background "
            f"(committed after {committed['background']:.2f} s), {blocked['sync']:.2f} s sync"
        ),
    }
