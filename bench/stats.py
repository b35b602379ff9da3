"""Small pure helpers the benchmarks share: medians, percentiles, Prometheus histogram quantiles."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 50 values is the largest but none)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")


def histogram_buckets(text: str, name: str, labels: dict[str, str]) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of one histogram series in Prometheus text format."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    counts: dict[float, float] = {}  # several matching series (e.g. no labels given) add up
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] != f"{name}_bucket":
            continue
        parts = set((match["labels"] or "").split(","))
        if not wanted <= parts:
            continue
        bound = next(p for p in parts if p.startswith("le="))[4:-1]
        upper = math.inf if bound == "+Inf" else float(bound)
        counts[upper] = counts.get(upper, 0.0) + float(match["value"])
    return sorted(counts.items())


def counter_total(text: str, name: str) -> float:
    """The sum of every series of one counter in Prometheus text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            total += float(match["value"])
    return total


def histogram_quantile(buckets: Sequence[tuple[float, float]], fraction: float) -> float:
    """What PromQL's histogram_quantile computes: linear interpolation inside the bucket."""
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    total = buckets[-1][1]
    target = fraction * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if math.isinf(bound):
                return lower  # past the last finite bucket: its bound is all one can say
            inside = count - below
            return lower + (bound - lower) * ((target - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def difference(after: Sequence[tuple[float, float]], before: Sequence[tuple[float, float]]
               ) -> list[tuple[float, float]]:  # fmt: skip
    """Buckets of the observations made between two scrapes of the same series."""
    earlier = dict(before)
    return [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
