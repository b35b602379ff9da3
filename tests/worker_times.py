"""Where the suite's time went: the seconds of each pytest-xdist worker and of each test file
(setup, call and teardown together), so the split of tests/scheduling.py can be judged by its
critical path, not by the ten slowest tests alone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import pytest

SLOWEST_FILES = 12


def worker(report: pytest.TestReport) -> str:
    """The xdist worker that ran the test ("gw0"), or "main" without xdist (the controller sets
    `node` on every report a worker sends it)."""
    node = getattr(report, "node", None)
    return str(getattr(getattr(node, "gateway", None), "id", "main"))


def totals(reports: Iterable[pytest.TestReport]) -> tuple[dict[str, float], dict[str, float]]:
    by_worker: defaultdict[str, float] = defaultdict(float)
    by_file: defaultdict[str, float] = defaultdict(float)
    for report in reports:
        by_worker[worker(report)] += report.duration
        by_file[report.nodeid.split("::", 1)[0]] += report.duration
    return by_worker, by_file


def lines(reports: Iterable[pytest.TestReport]) -> list[str]:
    by_worker, by_file = totals(reports)
    return [
        *(
            f"{name}: {seconds:.0f} s ({seconds / 60:.1f} min)"
            for name, seconds in sorted(by_worker.items())
        ),
        *(
            f"{path}: {seconds:.0f} s"
            for path, seconds in sorted(by_file.items(), key=lambda item: -item[1])[:SLOWEST_FILES]
        ),
    ]
