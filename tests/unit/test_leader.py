"""Leader election's decisions, as client-go makes them: pure, on this process's own clock."""

from __future__ import annotations

import datetime

from pretrain_operator.leader import LEASE_SECONDS, Action, LeaseRecord, decide, next_record

NOW = datetime.datetime(2026, 12, 3, 1, 2, 3, 456789, tzinfo=datetime.UTC)


def held_by(holder: str, transitions: int = 0) -> LeaseRecord:
    stamp = "2026-12-03T01:00:00.000000Z"
    return LeaseRecord(holder, LEASE_SECONDS, stamp, stamp, transitions)


def test_no_lease_is_created_and_our_own_is_renewed() -> None:
    assert decide(None, "me", observed_at=0, now=0) is Action.CREATE
    assert decide(held_by("me"), "me", observed_at=0, now=100) is Action.RENEW


def test_another_holder_is_waited_out_for_a_whole_lease_after_its_last_change() -> None:
    # Measured from when this process saw the record change, whatever the record's timestamps
    # say: another node's clock may be off.
    assert decide(held_by("other"), "me", observed_at=50, now=50 + LEASE_SECONDS - 0.1) is (
        Action.WAIT)  # fmt: skip
    assert decide(held_by("other"), "me", observed_at=50, now=50 + LEASE_SECONDS) is Action.TAKE


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(held_by(""), "me", observed_at=50, now=50) is Action.TAKE


def test_taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() -> None:
    taken = next_record(Action.TAKE, held_by("other", transitions=3), "me", NOW)
    assert (taken.holder, taken.transitions, taken.duration_seconds) == ("me", 4, LEASE_SECONDS)
    assert taken.acquire_time == taken.renew_time == "2026-12-03T01:02:03.456789Z"
    later = NOW + datetime.timedelta(seconds=2)
    renewed = next_record(Action.RENEW, taken, "me", later)
    assert renewed.acquire_time == taken.acquire_time
    assert renewed.renew_time == "2026-12-03T01:02:05.456789Z"
    assert renewed.transitions == 4
    assert next_record(Action.CREATE, None, "me", NOW).transitions == 0
