"""Text for the terminal from a job object as the API server returns it (plain dicts): pure."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

SPARKS = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 30


def progress_bar(step: int, total: int | None, width: int = BAR_WIDTH) -> str:
    """`[#########.....]  120/1000  12.0%`; without a total, the step alone."""
    if not total:
        return f"step {step}"
    fraction = min(1.0, max(0.0, step / total))
    filled = int(fraction * width)  # full only when done
    return f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} {fraction:6.1%}"


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """One character per value (the last `width`), scaled between their min and max."""
    shown = [v for v in values[-width:] if math.isfinite(v)]
    if not shown:
        return ""
    low, high = min(shown), max(shown)
    if high == low:
        return SPARKS[len(SPARKS) // 2] * len(shown)
    scale = (len(SPARKS) - 1) / (high - low)
    return "".join(SPARKS[round((v - low) * scale)] for v in shown)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def duration(seconds: float) -> str:
    """kubectl's style: 45s, 12m, 3h4m, 2d5h."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def age(timestamp: str | None, now: datetime) -> str:
    moment = parse_time(timestamp)
    return duration((now - moment).total_seconds()) if moment else "-"


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def eta(progress: dict[str, Any]) -> str:
    """Remaining steps at the current throughput (tokens per step from the tokens so far)."""
    step, total = progress.get("step") or 0, progress.get("totalSteps")
    speed, tokens = progress.get("tokensPerSecond"), progress.get("tokens") or 0
    if not (step and total and speed and tokens) or step >= total:
        return "-"
    return duration((total - step) * (tokens / step) / speed)


def status_text(job: dict[str, Any], losses: Sequence[float], now: datetime | None = None) -> str:
    """The `kubectl pretrain status` report of one job."""
    now = now or datetime.now(UTC)
    meta, spec = job.get("metadata") or {}, job.get("spec") or {}
    status = job.get("status") or {}
    progress = status.get("progress") or {}
    replicas = status.get("replicas") or {}
    lines = [
        f"{job.get('kind', 'Job')} {meta.get('namespace', '')}/{meta.get('name', '')}"
        f"  phase {status.get('phase', 'Pending')}"
        f"{'  (suspended)' if spec.get('suspend') else ''}"
        f"  age {age(meta.get('creationTimestamp'), now)}",
        f"Nodes       {status.get('nodes') or '-'}  ready {replicas.get('ready', 0)}"
        f"  pending {replicas.get('pending', 0)}  failed {replicas.get('failed', 0)}"
        f"  world size {status.get('worldSize', 0)}  restarts {status.get('restarts', 0)}",
        f"Progress    {progress_bar(progress.get('step') or 0, progress.get('totalSteps'))}"
        f"  ETA {eta(progress)}",
        f"Loss        {number(progress.get('loss'))}"
        f"  tokens/s {rate(progress.get('tokensPerSecond'))}"
        f"  tokens {rate(progress.get('tokens'))}"
        + (f"  MFU {progress['mfu']:.1%}" if progress.get("mfu") is not None else ""),
        f"Loss trend  {loss_trend(losses)}",
    ]
    checkpoint = status.get("checkpoint") or {}
    lines.append(f"Checkpoint  step {checkpoint['step']}  {checkpoint.get('uri', '')}"
                 if checkpoint.get("uri") else "Checkpoint  none yet")  # fmt: skip
    base = (status.get("base") or {}).get("resolvedCheckpoint")
    if base:
        lines.append(f"Base        {base}")
    evaluation = status.get("evaluation")
    if evaluation and evaluation.get("metrics"):
        metrics = "  ".join(f"{k} {v:.4g}" for k, v in sorted(evaluation["metrics"].items()))
        lines.append(f"Evaluation  step {evaluation.get('step', 0)}  {metrics}")
    lines.append("Conditions")
    lines += conditions_table(status.get("conditions") or [], now)
    return "\n".join(lines)


def loss_trend(losses: Sequence[float]) -> str:
    if len(losses) < 2:
        return "(needs two observed steps; `status -w` or `watch` collects them)"
    return f"{sparkline(losses)}  {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} samples"


def table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]  # fmt: skip


def conditions_table(conditions: Sequence[dict[str, Any]], now: datetime) -> list[str]:
    if not conditions:
        return ["  (none yet)"]
    rows = [("TYPE", "STATUS", "REASON", "AGE", "MESSAGE")]
    rows += [(c.get("type", ""), c.get("status", ""), c.get("reason", ""),
              age(c.get("lastTransitionTime"), now), c.get("message", ""))
             for c in conditions]  # fmt: skip
    return table(rows, indent="  ")


def jobs_table(jobs: Sequence[dict[str, Any]], losses: Mapping[str, Sequence[float]],
               now: datetime | None = None, all_namespaces: bool = False) -> str:  # fmt: skip
    """`kubectl pretrain watch`: one line per job; `losses` is keyed by the job's uid."""
    now = now or datetime.now(UTC)
    if not jobs:
        return "No PretrainJobs or FinetuneJobs."
    header = ["NAMESPACE"] if all_namespaces else []
    rows = [(*header, "KIND", "NAME", "PHASE", "NODES", "PROGRESS", "LOSS", "TREND", "TOKENS/S",
             "RESTARTS", "CKPT", "AGE")]  # fmt: skip
    for job in jobs:
        meta, status = job.get("metadata") or {}, job.get("status") or {}
        progress = status.get("progress") or {}
        short = "ftj" if job.get("kind") == "FinetuneJob" else "ptj"
        namespace = [meta.get("namespace", "")] if all_namespaces else []
        rows.append((
            *namespace, short, meta.get("name", ""), status.get("phase", "Pending"),
            status.get("nodes") or "-",
            progress_bar(progress.get("step") or 0, progress.get("totalSteps"), width=12),
            number(progress.get("loss")), sparkline(losses.get(meta.get("uid", ""), []), 12),
            rate(progress.get("tokensPerSecond")), str(status.get("restarts", 0)),
            str((status.get("checkpoint") or {}).get("step", 0) or "-"),
            age(meta.get("creationTimestamp"), now),
        ))  # fmt: skip
    return "\n".join(table(rows))
