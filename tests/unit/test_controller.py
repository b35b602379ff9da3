"""The controller's own timing: a plan that asks to be looked at again is, on time, once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import cast

from pretrain_operator import kube
from pretrain_operator.api import PRETRAIN_JOB
from pretrain_operator.controller import Controller, Settings


def controller() -> Controller:
    return Controller(cast(kube.Api, None), Settings(), lambda *_: None)  # no API call here


def test_a_wake_up_comes_when_asked_and_the_latest_request_wins() -> None:
    async def scenario() -> list[str]:
        woken: list[str] = []
        ctl = controller()

        def waker(name: str) -> Callable[[], Awaitable[None]]:
            async def wake() -> None:
                woken.append(name)

            return wake

        ctl.wake_up_later("job-a", 0.05, waker("first"))
        ctl.wake_up_later("job-a", 0.10, waker("second"))  # replaces the first
        ctl.wake_up_later("job-b", 0.05, waker("other job"))
        ctl.wake_up_later("job-c", 0.05, waker("deleted job"))
        ctl.forget("job-c", PRETRAIN_JOB)
        await asyncio.sleep(0.3)
        return woken

    assert asyncio.run(scenario()) == ["other job", "second"]
