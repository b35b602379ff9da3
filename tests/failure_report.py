"""What a failed cluster test leaves behind, printed with its failure: the nodes, the pods, the
jobs' status, the namespace's events, the tail of every pod's log and of the operator's log.

A flake seen once in CI cannot be rerun there; this is what its report has to say instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from devcluster.session import ClusterSession

LOG_LINES = 40


def lines(cluster: ClusterSession, namespace: str, operator_log: Path | None) -> Iterator[str]:
    def section(title: str, *args: str, tail: int | None = None) -> Iterator[str]:
        result = cluster.kubectl(*args, check=False)
        text = (result.stdout or result.stderr).rstrip().splitlines()
        yield f"---- {title}"
        yield from text[-tail:] if tail else text

    yield from section("nodes", "get", "nodes", "-o", "wide")
    yield from section("pods", "get", "pods", "-n", namespace, "-o", "wide")
    jobs = cluster.kubectl("get", "pretrainjobs,finetunejobs", "-n", namespace, "-o", "json",
                           check=False)  # fmt: skip
    yield "---- jobs' status"
    for job in json.loads(jobs.stdout or '{"items": []}')["items"]:
        yield f"{job['kind']} {job['metadata']['name']}: {json.dumps(job.get('status', {}))}"
    yield from section("events", "get", "events", "-n", namespace, "--sort-by=.lastTimestamp",
                       tail=LOG_LINES)  # fmt: skip
    names = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).stdout
    for pod in names.split():
        yield from section(f"log of {pod}", "logs", "-n", namespace, pod, f"--tail={LOG_LINES}")
    if operator_log is not None and operator_log.exists():
        # The operator serves the whole session: its lines about this namespace, and its errors.
        text = operator_log.read_text(errors="replace").splitlines()
        mine = [line for line in text if namespace in line or " ERROR " in line]
        yield f"---- operator log ({operator_log}), lines naming {namespace} or ERROR"
        yield from mine[-LOG_LINES:]
