"""How `make test` shares the suite between its two pytest-xdist workers.

Every test under tests/e2e and tests/integration is one unit of work, run in file order by one
worker: they share the session's one cluster, real nodes must never run twice at once, and these
tests mostly wait (on pods, keep-alives, backoffs, grace periods). The rest go module by module
(a module's trained bases are built once, in one process), in file order, to whichever worker is
free: the training tests first, the quick unit tests last to even out the end.

(xdist's own `--dist loadgroup` would say this with markers, but 3.8 does not group under
pytest 9: its workers rename items after pytest has fixed their ids.)"""

from __future__ import annotations

import pytest
from xdist.scheduler import LoadScopeScheduling

CLUSTER_DIRECTORIES = ("tests/e2e/", "tests/integration/")
CLUSTER_SCOPE = "tests of the cluster"


class ClusterApart(LoadScopeScheduling):  # type: ignore[misc]  # xdist: untyped
    def __init__(self, config: pytest.Config, log: object = None) -> None:
        config.option.loadscopereorder = False  # file order, not the most tests first
        super().__init__(config, log)

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.startswith(CLUSTER_DIRECTORIES):
            return CLUSTER_SCOPE
        return nodeid.split("::", 1)[0]  # the module, whatever classes it holds


def misplaced_cluster_tests(items: list[pytest.Item]) -> list[str]:
    """Tests that use the session's cluster outside the directories whose unit runs it (a second
    worker would start a second cluster, and its real nodes beside the first's)."""
    return [item.nodeid for item in items
            if "cluster" in getattr(item, "fixturenames", ())
            and not item.nodeid.startswith(CLUSTER_DIRECTORIES)]  # fmt: skip
