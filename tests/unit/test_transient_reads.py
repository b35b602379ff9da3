"""Reads retried after transient errors give every item once, in order; permanent errors are
not retried."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pretrain_trainer.data import sources
from pretrain_trainer.data.sources import DataError, resumed, retrying, transient


def flaky(items: list[str], failures: list[int]) -> Iterator[str]:
    """Yields `items`; the first reads break (ConnectionResetError) after failures[i] items."""
    breaks_after = failures.pop(0) if failures else None
    for index, item in enumerate(items):
        if index == breaks_after:
            raise ConnectionResetError("connection reset by peer")
        yield item


def test_a_read_broken_twice_gives_every_item_once_in_order() -> None:
    items = [f"document {i}" for i in range(10)]
    failures = [3, 7]
    slept: list[float] = []
    assert list(resumed(lambda: flaky(items, failures), "s3://b/x", slept.append)) == items
    assert slept == [1.0, 2.0]  # backoff doubles


def test_a_read_that_keeps_failing_gives_up_with_the_error() -> None:
    slept: list[float] = []
    with pytest.raises(ConnectionResetError):
        list(resumed(lambda: flaky(["a", "b"], [0] * 10), "s3://b/x", slept.append))
    assert len(slept) == sources.ATTEMPTS - 1


def test_permanent_errors_are_not_retried() -> None:
    calls = []

    def missing() -> list[str]:
        calls.append(1)
        raise FileNotFoundError("s3://b/x")

    with pytest.raises(FileNotFoundError):
        retrying(missing, "s3://b/x", lambda _: None)
    assert calls == [1]
    assert not transient(PermissionError("refused"))
    assert not transient(DataError("spec.data.sources[0]: line 2 is not JSON"))
    assert transient(OSError("503 Slow Down"))
    assert transient(TimeoutError())
