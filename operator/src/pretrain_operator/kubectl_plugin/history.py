"""The loss history behind the sparkline. A job's status holds only the latest loss (the trainer's
metrics hold no history either), so each `status` and `watch` keeps what it observed: one
(step, loss) per step seen, in a small file per job uid under the user's cache directory. The
sparkline therefore shows the steps this machine has observed, not every step of the run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

KEEP = 200


def observe(history: list[tuple[int, float]], job: dict[str, Any]) -> list[tuple[int, float]]:
    """`history` with the job's current (step, loss) added if it is a step not seen before; a
    step lower than the last (a resume from an earlier checkpoint) replaces the steps after it."""
    progress = (job.get("status") or {}).get("progress") or {}
    step, loss = progress.get("step"), progress.get("loss")
    if not step or loss is None:
        return history
    if history and history[-1][0] == step:
        return history  # the same step again
    kept = [(s, v) for s, v in history if s < step]
    return [*kept, (int(step), float(loss))][-KEEP:]


def directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubectl-pretrain" / "loss"


def load(uid: str, root: Path | None = None) -> list[tuple[int, float]]:
    path = (root or directory()) / f"{uid}.json"
    try:
        return [(int(s), float(v)) for s, v in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []  # none yet, or unreadable: start again


def save(uid: str, history: list[tuple[int, float]], root: Path | None = None) -> None:
    folder = root or directory()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{uid}.json.partial"
        partial.write_text(json.dumps(history))
        partial.replace(folder / f"{uid}.json")
    except OSError:
        pass  # a read-only home only costs the sparkline


def losses(history: list[tuple[int, float]]) -> list[float]:
    return [loss for _, loss in history]
