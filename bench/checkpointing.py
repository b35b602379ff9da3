"""Checkpointing: how long the training loop blocks per save, synchronous against background.

The same state (a model of `parameters` fp32 weights and its AdamW moments, as after a step) is
saved by `CheckpointWriter` both ways into fresh directories, alternating, `runs` times each:
synchronously the loop waits for the write, the checksums and the commit; in the background it
waits only for the copy to host memory, and the commit comes later (measured too). One process,
no process group: rank 0 of a DDP job does exactly this, the other ranks nothing."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.stats import median
from pretrain_trainer.checkpoint import CheckpointWriter
from pretrain_trainer.distributed import Runtime


def state(width: int, layers: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, width)).sum().backward()
    optimizer.step()  # the moments exist, as in a real checkpoint
    return model, optimizer


def save_once(root: Path | str, background: bool, model: nn.Module,
              optimizer: torch.optim.Optimizer) -> tuple[float, float]:  # fmt: skip
    """(seconds the caller was blocked, seconds until the checkpoint was committed)."""
    committed: list[float] = []

    def on_commit(_: int, seconds: float | None) -> None:
        committed.append(seconds or 0.0)

    writer = CheckpointWriter(root, Runtime(), keep=1, background=background, on_commit=on_commit)
    started = time.perf_counter()
    writer.save(1, 0, model, optimizer)
    blocked = time.perf_counter() - started
    writer.close()
    return blocked, committed[0]


def measure(width: int = 2048, layers: int = 12, runs: int = 3) -> dict[str, Any]:
    model, optimizer = state(width, layers)
    parameters = sum(p.numel() for p in model.parameters())
    times: dict[str, list[tuple[float, float]]] = {"sync": [], "background": []}
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as work:
        for run in range(runs):
            for side in ("sync", "background"):
                root = Path(work) / f"{side}-{run}"
                times[side].append(save_once(root, side == "background", model, optimizer))
                shutil.rmtree(root)
    blocked = {side: median([b for b, _ in pairs]) for side, pairs in times.items()}
    committed = {side: median([c for _, c in pairs]) for side, pairs in times.items()}
    return {
        "parameters": parameters,
        "state_bytes": parameters * 4 * 3,  # weights and two AdamW moments, fp32
        "blocked_seconds": blocked,
        "commit_seconds": committed,
        "blocked_ratio": blocked["background"] / blocked["sync"],
        "summary": (
            f"{parameters / 1e6:.0f}M parameters ({parameters * 12 / 1e9:.2f} GB of state): "
            f"the loop blocks {blocked['background']:.2f} s in the background vs "
            f"{blocked['sync']:.2f} s synchronously "
            f"(background/sync {blocked['background'] / blocked['sync']:.2f}); "
            f"committed after {committed['background']:.2f} s vs {committed['sync']:.2f} s"
        ),
    }
