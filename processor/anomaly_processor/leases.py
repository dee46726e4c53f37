"""Shard leases: which worker reads which shard, stored in the pipeline's checkpoint table.

Every shard of the input stream has one item, keyed by ``leaseKey`` = shard id, that is
both its lease and its checkpoint (checkpoint.py writes the checkpoint attributes):

- ``leaseOwner``: the worker id that holds the lease; absent while the lease is free.
- ``leaseCounter``: incremented by every take, renewal and release.
- ``parentShardIds``: the shard's parents, so that a child is read only after they end.
- ``leaseRequestedBy``: a worker with fewer leases that requests this one from the owner.
- ``startingTimestamp``: with the LATEST starting position, when the shard's first holder
  started reading it (seconds since the epoch). A later holder that finds no checkpoint
  starts there instead of at a later LATEST, so nothing written in between is skipped.

Every change is a write conditional on the owner and counter the writer last read, so
two workers never both hold one lease. A worker judges another worker's lease expired
when its counter has not changed for ``LeaseSettings.duration`` seconds on its own
monotonic clock, so the hosts' clocks never need to agree. The holder is stricter: it
starts a forward only within half the duration after it sent its last successful
renewal, so it has stopped starting forwards before any other worker can see the lease
as expired.

This module stores leases and decides which ones to take; the worker (worker.py) calls it
and runs the consumers. It never calls Kinesis.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from botocore.exceptions import ClientError

from anomaly_processor.checkpoint import (
    KEY,
    SHARD_END,
    Checkpoint,
    CheckpointConflictError,
    CheckpointStore,
    checkpoint_of,
)

OWNER: Final = "leaseOwner"
COUNTER: Final = "leaseCounter"
PARENTS: Final = "parentShardIds"
REQUESTED_BY: Final = "leaseRequestedBy"
STARTING_TIMESTAMP: Final = "startingTimestamp"
# The holder's lease duration, so that workers configured with a shorter one (during a rollout
# that changes it) do not take a lease that its holder still renews on a longer schedule.
DURATION: Final = "leaseDurationSeconds"

ENV_LEASE_DURATION: Final = "ANOMALY_PROCESSOR_LEASE_DURATION_SECONDS"

_NAMES: Final = {
    "#owner": OWNER,
    "#counter": COUNTER,
    "#requested": REQUESTED_BY,
    "#start": STARTING_TIMESTAMP,
    "#duration": DURATION,
}


@dataclass(frozen=True)
class LeaseSettings:
    """Timing of the lease protocol, in seconds."""

    # Time without a renewal after which other workers take a lease. A killed worker's
    # shards wait this long; a worker stopped with SIGTERM releases its leases at once.
    duration: float = 10.0
    # Time between renewals of each held lease; well under half the duration, so that
    # one failed renewal does not yet stop the holder from forwarding.
    renew_interval: float = 2.0
    # Time between reads of the lease table. It bounds how soon a released or expired
    # lease is taken and how soon a worker detects that it lost a lease.
    scan_interval: float = 1.0
    # Time between ListShards calls that find the shards of a split, merge or UpdateShardCount.
    discovery_interval: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.duration / 2:
            raise ValueError(
                f"lease renew_interval {self.renew_interval} s must be above 0 and below half the "
                f"lease duration {self.duration} s"
            )
        if self.scan_interval <= 0 or self.discovery_interval <= 0:
            raise ValueError(
                f"lease scan_interval {self.scan_interval} s and discovery_interval "
                f"{self.discovery_interval} s must be above 0"
            )

    @property
    def valid_for(self) -> float:
        """Time after sending a successful renewal during which the holder may start a forward."""
        return self.duration / 2

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> LeaseSettings:
        """Read the lease duration from ``ANOMALY_PROCESSOR_LEASE_DURATION_SECONDS`` when set.

        The renew interval becomes a fifth of the duration; the other settings keep their defaults.
        """
        text = environ.get(ENV_LEASE_DURATION)
        if not text:
            return cls()
        try:
            duration = float(text)
        except ValueError as error:
            raise ValueError(f"{ENV_LEASE_DURATION}: invalid value {text!r}: expected seconds, such as 10") from error
        if not 1.0 <= duration <= 3600.0:
            raise ValueError(f"{ENV_LEASE_DURATION}: invalid value {text!r}: expected 1 to 3600 seconds")
        return cls(duration=duration, renew_interval=duration / 5)


@dataclass(frozen=True, slots=True)
class Lease:
    """One shard's lease item as last read from the table."""

    shard_id: str
    owner: str | None
    counter: int
    checkpoint: Checkpoint | None
    parent_ids: tuple[str, ...] = ()
    requested_by: str | None = None
    starting_timestamp: float | None = None
    # The lease duration of the worker that took it last, in seconds, when that worker recorded one.
    duration: float | None = None

    @property
    def ended(self) -> bool:
        return self.checkpoint is not None and self.checkpoint.is_shard_end


def lease_of(item: Mapping[str, Any]) -> Lease:
    """Parse a lease item as DynamoDB returns it."""
    owner = item.get(OWNER, {}).get("S")
    requested = item.get(REQUESTED_BY, {}).get("S")
    parents = tuple(value["S"] for value in item.get(PARENTS, {}).get("L", []))
    start = item.get(STARTING_TIMESTAMP, {}).get("N")
    duration = item.get(DURATION, {}).get("N")
    return Lease(
        shard_id=item[KEY]["S"],
        owner=owner,
        counter=int(item.get(COUNTER, {"N": "0"})["N"]),
        checkpoint=checkpoint_of(dict(item)),
        parent_ids=parents,
        requested_by=requested,
        starting_timestamp=float(start) if start is not None else None,
        duration=float(duration) if duration is not None else None,
    )


def _conflict(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class LeaseTable:
    """Conditional reads and writes of lease items in the checkpoint table.

    Methods that change a lease return False (or None) when the condition failed because
    another worker changed the item first. Other AWS errors are raised.
    """

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._dynamodb = dynamodb
        self._table = table

    def scan(self) -> dict[str, Lease]:
        """Return every lease of the table by shard id, paging through a consistent Scan."""
        leases: dict[str, Lease] = {}
        kwargs: dict[str, Any] = {"TableName": self._table, "ConsistentRead": True}
        while True:
            page = self._dynamodb.scan(**kwargs)
            for item in page.get("Items", []):
                lease = lease_of(item)
                leases[lease.shard_id] = lease
            if "LastEvaluatedKey" not in page:
                return leases
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def create(self, shard_id: str, parent_ids: Iterable[str]) -> bool:
        """Create a free lease for a shard unless one exists."""
        item: dict[str, Any] = {KEY: {"S": shard_id}, COUNTER: {"N": "0"}}
        parents = [{"S": parent} for parent in parent_ids]
        if parents:
            item[PARENTS] = {"L": parents}
        try:
            self._dynamodb.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(#key)",
                ExpressionAttributeNames={"#key": KEY},
            )
        except ClientError as error:
            if _conflict(error):
                return False
            raise
        return True

    def take(self, lease: Lease, owner: str, duration: float | None = None) -> Lease | None:
        """Make ``owner`` the holder if the lease is still as ``lease`` shows; return the new item.

        ``duration`` records the new holder's lease duration, in seconds, for other workers' expiry.
        """
        values: dict[str, Any] = {":me": {"S": owner}, ":seen": {"N": str(lease.counter)}, ":one": {"N": "1"}}
        if lease.owner is None:
            condition = "attribute_not_exists(#owner) AND #counter = :seen"
        else:
            condition = "#owner = :previous AND #counter = :seen"
            values[":previous"] = {"S": lease.owner}
        update = "SET #owner = :me, #counter = #counter + :one"
        if duration is not None:
            update += ", #duration = :duration"
            values[":duration"] = {"N": str(duration)}
        response = self._update(lease.shard_id, f"{update} REMOVE #requested", condition, values, return_item=True)
        return lease_of(response["Attributes"]) if response is not None else None

    def renew(self, shard_id: str, owner: str, counter: int) -> int | None:
        """Increment the counter of a lease that ``owner`` holds; return the new counter, or None when lost."""
        update = "SET #counter = #counter + :one"
        for seen in self._counters_to_try(shard_id, owner, counter):
            values = {":me": {"S": owner}, ":seen": {"N": str(seen)}, ":one": {"N": "1"}}
            if self._update(shard_id, update, "#owner = :me AND #counter = :seen", values) is not None:
                return seen + 1
        return None

    def release(self, shard_id: str, owner: str, counter: int) -> bool:
        """Free a lease that ``owner`` holds; its checkpoint stays. Return False when it was lost."""
        update = "SET #counter = #counter + :one REMOVE #owner, #requested"
        for seen in self._counters_to_try(shard_id, owner, counter):
            values = {":me": {"S": owner}, ":seen": {"N": str(seen)}, ":one": {"N": "1"}}
            if self._update(shard_id, update, "#owner = :me AND #counter = :seen", values) is not None:
                return True
        return False

    def _counters_to_try(self, shard_id: str, owner: str, counter: int) -> Iterator[int]:
        """Yield ``counter``, then the stored counter once if ``owner`` still holds the lease.

        A renewal whose response was lost (a timeout after DynamoDB applied it, then
        botocore's retry failing its condition) leaves the stored counter ahead of the
        worker's. Only the owner changes the counter of a lease it holds, so the stored
        value can be adopted rather than the lease given up.
        """
        yield counter
        response = self._dynamodb.get_item(TableName=self._table, Key={KEY: {"S": shard_id}}, ConsistentRead=True)
        item = response.get("Item")
        if item is not None:
            stored = lease_of(item)
            if stored.owner == owner and stored.counter != counter:
                yield stored.counter

    def hand_over(self, shard_id: str, owner: str, counter: int, new_owner: str) -> bool:
        """Make ``new_owner`` the owner of a lease that ``owner`` holds at ``counter``.

        The new owner finds the lease in its name and takes it at its next table read.
        Other workers see it owned all along, so none of them takes it in between. The
        request must still be there, because a requester that withdrew it is stopping
        and would never take the lease.
        """
        values = {":me": {"S": owner}, ":seen": {"N": str(counter)}, ":one": {"N": "1"}, ":new": {"S": new_owner}}
        condition = "#owner = :me AND #counter = :seen AND #requested = :new"
        update = "SET #owner = :new, #counter = #counter + :one REMOVE #requested"
        return self._update(shard_id, update, condition, values) is not None

    def fix_starting_timestamp(self, shard_id: str, owner: str, timestamp: float) -> float | None:
        """Store ``timestamp`` as the shard's starting timestamp unless one is stored; return the stored one.

        Returns None when ``owner`` no longer holds the lease.
        """
        values = {":me": {"S": owner}, ":start": {"N": f"{timestamp:.3f}"}}
        update = "SET #start = if_not_exists(#start, :start)"
        response = self._update(shard_id, update, "#owner = :me", values, return_item=True)
        return lease_of(response["Attributes"]).starting_timestamp if response is not None else None

    def request_handoff(self, shard_id: str, owner: str, requester: str) -> bool:
        """Ask ``owner`` to release the lease, unless another worker asked first."""
        values = {":owner": {"S": owner}, ":requester": {"S": requester}}
        condition = "#owner = :owner AND attribute_not_exists(#requested)"
        return self._update(shard_id, "SET #requested = :requester", condition, values) is not None

    def decline_handoff(self, shard_id: str, owner: str, requester: str) -> bool:
        """Remove ``requester``'s request from a lease that ``owner`` keeps."""
        values = {":owner": {"S": owner}, ":requester": {"S": requester}}
        condition = "#owner = :owner AND #requested = :requester"
        return self._update(shard_id, "REMOVE #requested", condition, values) is not None

    def withdraw_handoff(self, shard_id: str, requester: str) -> bool:
        """Remove ``requester``'s own pending request from a lease, regardless of its owner."""
        values = {":requester": {"S": requester}}
        return self._update(shard_id, "REMOVE #requested", "#requested = :requester", values) is not None

    def end_unlisted(self, shard_id: str, seen: Checkpoint | None) -> bool:
        """Mark a shard that left the stream as read to its end, if its checkpoint is still ``seen``."""
        # Whoever holds the lease only retries reads of the missing shard, so the write needs no owner.
        try:
            CheckpointStore(self._dynamodb, self._table).write(shard_id, Checkpoint(SHARD_END), seen)
        except CheckpointConflictError:
            return False
        return True

    def delete_ended(self, shard_id: str) -> bool:
        """Delete the lease of a shard that was read to its end."""
        try:
            self._dynamodb.delete_item(
                TableName=self._table,
                Key={KEY: {"S": shard_id}},
                ConditionExpression="#checkpoint = :end",
                ExpressionAttributeNames={"#checkpoint": "checkpoint"},
                ExpressionAttributeValues={":end": {"S": SHARD_END}},
            )
        except ClientError as error:
            if _conflict(error):
                return False
            raise
        return True

    def _update(
        self, shard_id: str, update: str, condition: str, values: dict[str, Any], return_item: bool = False
    ) -> dict[str, Any] | None:
        names = {name: attribute for name, attribute in _NAMES.items() if name in update or name in condition}
        try:
            response = self._dynamodb.update_item(
                TableName=self._table,
                Key={KEY: {"S": shard_id}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW" if return_item else "NONE",
            )
        except ClientError as error:
            if _conflict(error):
                return None
            raise
        return dict(response)


class ExpiryClock:
    """Tells when another worker's lease expired, from how long its counter stayed unchanged.

    A lease seen for the first time counts from that moment, so a worker that just started
    waits a whole duration before it takes a lease that another worker holds.
    """

    def __init__(self, duration: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._duration = duration
        self._clock = clock
        self._seen: dict[str, tuple[str | None, int, float]] = {}

    def observe(self, leases: Mapping[str, Lease]) -> None:
        now = self._clock()
        seen: dict[str, tuple[str | None, int, float]] = {}
        for shard_id, lease in leases.items():
            previous = self._seen.get(shard_id)
            if previous is not None and previous[:2] == (lease.owner, lease.counter):
                seen[shard_id] = previous
            else:
                seen[shard_id] = (lease.owner, lease.counter, now)
        self._seen = seen

    def expired(self, lease: Lease) -> bool:
        """Tell whether ``lease`` has an owner whose counter stood still for the whole duration.

        The duration is this worker's or the holder's recorded one, whichever is longer.
        """
        seen = self._seen.get(lease.shard_id)
        if lease.owner is None or seen is None or seen[:2] != (lease.owner, lease.counter):
            return False
        return self._clock() - seen[2] >= max(self._duration, lease.duration or 0.0)


@dataclass
class HeldLease:
    """A lease this worker holds, shared between the lease loop and the shard's consumer thread."""

    shard_id: str
    counter: int
    renewed_at: float  # monotonic time at which the last successful renewal (or take) was sent
    valid_for: float
    clock: Callable[[], float] = time.monotonic
    checkpoint: Checkpoint | None = None
    parent_ids: tuple[str, ...] = ()
    starting_timestamp: float | None = None
    # The worker this lease goes to once the consumer has finished its batch and checkpointed.
    handoff_to: str | None = None
    lost: threading.Event = field(default_factory=threading.Event)

    def usable(self) -> bool:
        """Tell whether the holder may start a forward: the lease is held and recently renewed."""
        return not self.lost.is_set() and self.clock() < self.renewed_at + self.valid_for

    def keep_reading(self) -> bool:
        """Tell whether the consumer should read another batch."""
        return not self.lost.is_set() and self.handoff_to is None

    def wait_usable(self, stop: threading.Event, poll: float = 0.1) -> bool:
        """Wait while renewals are late; return True once usable, False if lost or ``stop`` is set first."""
        while not self.usable():
            if self.lost.is_set() or stop.is_set():
                return False
            stop.wait(poll)
        return True


def parents_done(lease: Lease, leases: Mapping[str, Lease]) -> bool:
    """Tell whether every parent of a shard was read to its end.

    A parent without a lease counts as done: leases are created parents first, so a
    missing parent lease means the parent had left the stream's retention before then,
    or its ended lease was deleted after it left.
    """
    for parent in lease.parent_ids:
        parent_lease = leases.get(parent)
        if parent_lease is not None and not parent_lease.ended:
            return False
    return True


@dataclass(frozen=True)
class Plan:
    """The leases one worker takes and requests after one read of the table."""

    take: list[Lease]
    request: Lease | None
    target: int


def plan_leases(
    leases: Mapping[str, Lease],
    me: str,
    held: Iterable[str],
    expired: Callable[[Lease], bool],
    busy: Iterable[str] = (),
    rng: random.Random | None = None,
) -> Plan:
    """Choose the leases to take and, when none is free, a lease to request from the busiest worker.

    Live workers are the owners of unexpired leases, the workers requesting a lease, and
    this one. Each aims at the fair share rounded up. It requests a handoff only from a
    worker holding at least two more leases than itself, so that once stable no worker
    holds more than one lease above the fair share. ``busy`` shards still have a consumer
    thread stopping here and are not taken yet. Leases already in this worker's name are
    always taken.
    """
    rng = rng or random.Random()  # noqa: S311 - spreads concurrent takers, not a secret
    held_set, busy_set = set(held), set(busy)
    readable = [lease for lease in leases.values() if not lease.ended and parents_done(lease, leases)]
    counts: Counter[str] = Counter()
    assigned: list[Lease] = []
    free: list[Lease] = []
    for lease in readable:
        if lease.owner == me and lease.shard_id in held_set:
            counts[me] += 1
        elif lease.shard_id in busy_set:
            continue
        elif lease.owner == me:
            assigned.append(lease)
        elif lease.owner is None or expired(lease):
            free.append(lease)
        else:
            counts[lease.owner] += 1
    workers = set(counts) | {lease.requested_by for lease in leases.values() if lease.requested_by} | {me}
    target = math.ceil(len(readable) / len(workers)) if readable else 0
    mine = counts[me]
    rng.shuffle(free)
    # Leases in this worker's name (handed over, or from an earlier run with this id) are taken
    # even above the fair share, because no other worker takes them before they expire.
    take = assigned + free[: max(0, target - mine - len(assigned))]
    request = None
    already_requested = any(lease.requested_by == me for lease in leases.values())
    if not free and not already_requested:
        busiest, busiest_count = max(
            ((w, n) for w, n in counts.items() if w != me), key=lambda pair: pair[1], default=("", 0)
        )
        if busiest_count - mine >= 2:
            choices = [lease for lease in readable if lease.owner == busiest and lease.requested_by is None]
            request = rng.choice(choices) if choices else None
    return Plan(take, request, target)


def should_hand_off(leases: Mapping[str, Lease], me: str, requester: str, mine: int) -> bool:
    """Tell whether this worker, holding ``mine`` leases, should give one to ``requester``."""
    theirs = sum(
        1 for lease in leases.values() if lease.owner == requester and not lease.ended and parents_done(lease, leases)
    )
    return mine - theirs >= 2
