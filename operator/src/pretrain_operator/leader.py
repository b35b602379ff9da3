"""Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection package
(and so controller-runtime's manager) does it, with its defaults: a 15 s lease, a 10 s renew
deadline, a 2 s retry period.

A candidate that sees a Lease held by another waits until the holder has not renewed it for a
whole lease duration. That is measured on this process's own clock from when it last saw the
record change, never from the timestamps in it, so clock skew between nodes cannot make two
leaders. The leader renews every retry period; if no renewal succeeds within the renew deadline
it has lost the Lease and must stop at once (the caller exits), before another candidate may
take over at the end of the lease duration.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from pretrain_operator.restclient import ApiError, RestClient, collection

LEASE_SECONDS = 15
RENEW_DEADLINE_SECONDS = 10.0
RETRY_PERIOD_SECONDS = 2.0
JITTER = 0.5  # a retry waits 2 s to 3 s (client-go: up to 4.4 s): a takeover within 20 s

logger = logging.getLogger("pretrain_operator.leader")
# What a round that could not reach a decision raises: the API server refused, restarts or is
# unreachable.
API_ERRORS = (ApiError, aiohttp.ClientError, OSError)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    holder: str
    duration_seconds: int
    acquire_time: str
    renew_time: str
    transitions: int


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    TAKE = "take"  # free, or its holder stopped renewing
    WAIT = "wait"  # another holds it


def decide(record: LeaseRecord | None, identity: str, observed_at: float, now: float) -> Action:
    """What a candidate does with the Lease as it reads it now; `observed_at` is when (on this
    process's clock) the record was last seen to change."""
    if record is None:
        return Action.CREATE
    if record.holder == identity:
        return Action.RENEW
    if record.holder and now < observed_at + record.duration_seconds:
        return Action.WAIT
    return Action.TAKE


def micro_time(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def next_record(
    action: Action, record: LeaseRecord | None, identity: str, now: datetime.datetime
) -> LeaseRecord:
    """The record a candidate writes for `action` (not WAIT)."""
    stamp = micro_time(now)
    if action is Action.RENEW and record is not None:
        return LeaseRecord(identity, LEASE_SECONDS, record.acquire_time, stamp, record.transitions)
    transitions = record.transitions + 1 if record is not None else 0
    return LeaseRecord(identity, LEASE_SECONDS, stamp, stamp, transitions)


def _read_record(lease: dict[str, Any]) -> LeaseRecord:
    spec = lease.get("spec") or {}
    return LeaseRecord(
        holder=spec.get("holderIdentity") or "",
        duration_seconds=int(spec.get("leaseDurationSeconds") or LEASE_SECONDS),
        acquire_time=spec.get("acquireTime") or "",
        renew_time=spec.get("renewTime") or "",
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def _spec(record: LeaseRecord) -> dict[str, Any]:
    return {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.duration_seconds,
        "acquireTime": record.acquire_time or None,
        "renewTime": record.renew_time or None,
        "leaseTransitions": record.transitions,
    }


@dataclass
class LeaderElector:
    rest: RestClient
    namespace: str
    name: str
    identity: str
    clock: Callable[[], float] = time.monotonic
    _observed: LeaseRecord | None = None
    _observed_at: float = 0.0
    _renewed_at: float = 0.0

    @property
    def _leases(self) -> str:
        return collection("coordination.k8s.io/v1", self.namespace, "leases")

    @property
    def _path(self) -> str:
        return f"{self._leases}/{self.name}"

    async def acquire(self) -> None:
        """Return once this process holds the Lease (a standby waits here)."""
        announced = False
        while not await self._try_logged():
            if not announced:
                holder = self._observed.holder if self._observed else "?"
                logger.info("waiting for the Lease %s/%s held by %s", self.namespace, self.name,
                            holder)  # fmt: skip
                announced = True
            await asyncio.sleep(RETRY_PERIOD_SECONDS * (1 + random.random() * JITTER))
        logger.info("became the leader (Lease %s/%s)", self.namespace, self.name)

    async def hold(self) -> None:
        """Renew every retry period; return when the Lease is lost (no renewal within the
        renew deadline, or another holder in it)."""
        while True:
            await asyncio.sleep(RETRY_PERIOD_SECONDS)
            remaining = RENEW_DEADLINE_SECONDS - (self.clock() - self._renewed_at)
            try:
                renewed = await asyncio.wait_for(self._try(), timeout=max(remaining, 0.1))
            except (TimeoutError, *API_ERRORS) as error:
                logger.warning("renewing the Lease failed: %s", error)
                renewed = False
            if renewed:
                continue
            if self._observed is not None and self._observed.holder not in {"", self.identity}:
                logger.error("the Lease is held by %s now", self._observed.holder)
                return
            if self.clock() - self._renewed_at >= RENEW_DEADLINE_SECONDS:
                logger.error("no renewal of the Lease for %.0f s", RENEW_DEADLINE_SECONDS)
                return

    async def _try_logged(self) -> bool:
        try:
            return await self._try()
        except API_ERRORS as error:  # the API server restarts, RBAC is missing
            logger.warning("reading the Lease %s/%s failed: %s", self.namespace, self.name, error)
            return False

    async def release(self) -> None:
        """On a clean stop: hand the Lease back so a standby takes over at its next retry."""
        if self._observed is None or self._observed.holder != self.identity:
            return
        try:
            lease = await self.rest.request("GET", self._path)
            if _read_record(lease).holder != self.identity:
                return
            released = LeaseRecord("", 1, "", micro_time(_now()), self._observed.transitions)
            body = {"metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": _spec(released)}  # fmt: skip
            await self.rest.request("PUT", self._path, body)
        except API_ERRORS as error:
            logger.warning("could not release the Lease: %s", error)

    async def _try(self) -> bool:
        """One round of client-go's tryAcquireOrRenew; True when this process holds it."""
        lease: dict[str, Any] | None
        try:
            lease = await self.rest.request("GET", self._path)
        except ApiError as error:
            if error.status != 404:
                raise
            lease = None
        record = _read_record(lease) if lease is not None else None
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        action = decide(record, self.identity, self._observed_at, now)
        if action is Action.WAIT:
            return False
        wanted = next_record(action, record, self.identity, _now())
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        try:
            if lease is None:
                await self.rest.request("POST", self._leases,
                                        {"metadata": metadata, "spec": _spec(wanted)})  # fmt: skip
            else:
                metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
                await self.rest.request("PUT", self._path,
                                        {"metadata": metadata, "spec": _spec(wanted)})  # fmt: skip
        except ApiError as error:
            if error.status == 409:  # another candidate wrote first
                return False
            raise
        self._observed, self._observed_at = wanted, self.clock()
        self._renewed_at = self._observed_at
        return True


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
