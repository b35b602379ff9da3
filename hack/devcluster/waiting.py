"""Polling with a deadline, for tests and tooling that wait on a cluster to converge."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from kubernetes.client.exceptions import ApiException

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """The awaited condition did not hold in time; the message says what was awaited and seen."""


def wait_until(
    probe: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.25
) -> T:
    """Call `probe` until it returns something truthy and return that; else raise WaitTimeoutError.

    `what` describes the awaited condition for the error message, which also carries the last
    value the probe returned, so a failing test says what it saw instead of only "timed out".
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}"
            )
        time.sleep(interval)


def exists(read: Callable[[], object]) -> bool:
    """Whether `read` (a client's read_... call) finds its object: False on 404, other errors
    raised."""
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True
