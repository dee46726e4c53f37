"""The worker: holds shard leases and runs one consumer thread per leased shard.

Several workers, in one process or many, share a stream through the leases in the
checkpoint table (leases.py). The worker's own thread runs the lease loop every
``scan_interval``. Each pass renews the held leases and reads the table. It then takes
free and expired leases up to the fair share, or requests a handoff from the busiest
worker when none is free and this worker has too few. A lease is released, or handed
over, once its consumer has stopped after the shard's end or a handoff. Every
``discovery_interval``, and at once after a shard ends, it lists the stream's shards and
creates leases for new ones, so shards made by a split, a merge or UpdateShardCount are
found without a restart. A child shard is leased only after each of its parents has
been read to its end, so a partition key's records are read in order across a reshard.

After ``stop``, every consumer finishes its batch and checkpoints. ``run`` then releases
the leases, so other workers take them within a scan interval, and returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from anomaly_processor import metrics
from anomaly_processor.checkpoint import CheckpointStore
from anomaly_processor.config import ProcessorConfig
from anomaly_processor.consumer import ShardConsumer, ShardProgress
from anomaly_processor.detector import DetectorSource, FixedDetectors
from anomaly_processor.events import EventDecoder
from anomaly_processor.forwarder import Forwarder
from anomaly_processor.leases import (
    ExpiryClock,
    HeldLease,
    Lease,
    LeaseSettings,
    LeaseTable,
    plan_leases,
    should_hand_off,
)
from anomaly_processor.reader import ShardReader
from anomaly_processor.reload import build_detectors

log = logging.getLogger(__name__)

DISCOVERY_INTERVAL_SECONDS: Final = 5.0
# A consumer that failed with an unexpected error restarts from its checkpoint after this delay.
RESTART_DELAY_SECONDS: Final = 2.0
# Repeated failures of one lease-loop step are logged on the first and then every this many.
LOG_EVERY_FAILURES: Final = 10
# Listings in a row that must lack a shard before its unfinished lease is ended, so that one
# listing that missed a shard cannot end it.
UNLISTED_LISTINGS_BEFORE_END: Final = 2


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    parent_ids: tuple[str, ...]
    closed: bool


def list_shards(kinesis: Any, stream: str) -> list[Shard]:
    """Return every shard of the stream, open and closed, paging through ListShards."""
    shards: list[Shard] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = kinesis.list_shards(**kwargs)
        for raw in page["Shards"]:
            parents = tuple(p for p in (raw.get("ParentShardId"), raw.get("AdjacentParentShardId")) if p)
            closed = "EndingSequenceNumber" in raw["SequenceNumberRange"]
            shards.append(Shard(raw["ShardId"], parents, closed))
        token = page.get("NextToken")
        if not token:
            return shards
        kwargs = {"NextToken": token}


@dataclass
class _Running:
    consumer: ShardConsumer
    thread: threading.Thread = field(init=False)
    failed: bool = False


class Worker:
    """Runs the lease loop and the consumers of one processor process."""

    def __init__(
        self,
        config: ProcessorConfig,
        kinesis: Any,
        dynamodb: Any,
        detectors: DetectorSource | None = None,
        discovery_interval: float | None = None,
        lease_settings: LeaseSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.worker_id = config.worker_id
        settings = lease_settings or LeaseSettings()
        if discovery_interval is not None:
            settings = LeaseSettings(
                duration=settings.duration,
                renew_interval=settings.renew_interval,
                scan_interval=min(settings.scan_interval, discovery_interval),
                discovery_interval=discovery_interval,
            )
        self.lease_settings = settings

        self._kinesis = kinesis
        self._table = LeaseTable(dynamodb, config.checkpoint_table)
        self._checkpoints = CheckpointStore(dynamodb, config.checkpoint_table, owner=config.worker_id)
        self._decoder = EventDecoder(config.required_numeric_fields)
        if detectors is None:
            # Without a rules reloader, the detectors stay as the settings define them.
            built = build_detectors(config)
            detectors = FixedDetectors(built.active, built.shadow)
        self._detectors = detectors

        self._clock = clock
        self._expiry = ExpiryClock(settings.duration, clock)
        self._stop = threading.Event()
        self._leases: dict[str, Lease] = {}
        self._held: dict[str, HeldLease] = {}
        self._running: dict[str, _Running] = {}
        self._restart_at: dict[str, float] = {}
        self._next_discovery = float("-inf")
        # Shards with an unfinished lease that the last listings lacked, and how many listings in a row.
        self._unlisted: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._context = {"stream": config.input_stream}

        self.finished: dict[str, ShardProgress] = {}
        self.ready = threading.Event()
        # Monotonic time at which the lease loop last completed a pass; the liveness probe reads it.
        self.last_pass_at: float | None = None

    def stop(self) -> None:
        """Ask every consumer to finish its batch, checkpoint and stop; ``run`` then releases the leases."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def held_shards(self) -> list[str]:
        """Return the shard ids whose leases this worker holds now."""
        return sorted(self._held)

    def run(self) -> None:
        """Run the lease loop until ``stop`` is called; return once every lease is released."""
        log.info(
            "worker started",
            extra={
                **self._context,
                "anomaly_stream": self.config.output_stream,
                "lease_duration_seconds": self.lease_settings.duration,
            },
        )
        while not self._stop.is_set():
            self._pass()
            self._stop.wait(self.lease_settings.scan_interval)
        self._shut_down()
        log.info("worker stopped", extra=self._context)

    # The lease loop

    def _pass(self) -> None:
        self._reap_consumers()
        if self._clock() >= self._next_discovery:
            self._attempt("discover", self._discover)
        self._renew_due()
        if self._attempt("scan", self._scan_and_balance):
            self.ready.set()
        self._restart_failed_consumers()
        metrics.LEASES_HELD.set(len(self._held))
        self.last_pass_at = self._clock()

    def _attempt(self, step: str, action: Callable[[], None]) -> bool:
        """Run one step of the lease loop; log and count an AWS failure instead of raising it."""
        try:
            action()
        except (ClientError, BotoCoreError) as error:
            failures = self._failures.get(step, 0) + 1
            self._failures[step] = failures
            if failures == 1 or failures % LOG_EVERY_FAILURES == 0:
                log.warning(
                    "lease loop step failed; retrying at the next pass",
                    extra={**self._context, "step": step, "attempt": failures, "error": str(error)},
                )
            return False
        if self._failures.pop(step, 0):
            log.info("lease loop step succeeded again", extra={**self._context, "step": step})
        return True

    def _discover(self) -> None:
        """List the stream's shards and create a lease for each shard that has none."""
        self._next_discovery = self._clock() + self.lease_settings.discovery_interval
        shards = list_shards(self._kinesis, self.config.input_stream)
        # ListShards returns parents before their children, so a child's lease never exists without its parents'.
        for shard in shards:
            if shard.shard_id not in self._leases and self._table.create(shard.shard_id, shard.parent_ids):
                log.info(
                    "created lease for new shard",
                    extra={**self._context, "shard": shard.shard_id, "parents": list(shard.parent_ids)},
                )
        listed = {shard.shard_id for shard in shards}
        self._unlisted = {shard: count for shard, count in self._unlisted.items() if shard not in listed}
        for lease in self._leases.values():
            if lease.shard_id in listed:
                continue
            # A shard that ended and left the stream's retention needs its lease no more.
            if lease.ended and self._table.delete_ended(lease.shard_id):
                log.info("deleted lease of a shard past retention", extra={**self._context, "shard": lease.shard_id})
            elif not lease.ended:
                self._end_unlisted(lease)

    def _end_unlisted(self, lease: Lease) -> None:
        """End the lease of a shard that left the stream before it was read to its end.

        Kinesis lists a shard until its records leave the retention period, so its unread
        records are gone. Ending the lease lets its child shards be read, which would
        otherwise wait for it forever. Two listings in a row must lack the shard first.
        """
        missing = self._unlisted.get(lease.shard_id, 0) + 1
        self._unlisted[lease.shard_id] = missing
        if missing < UNLISTED_LISTINGS_BEFORE_END or not self._table.end_unlisted(lease.shard_id, lease.checkpoint):
            return
        del self._unlisted[lease.shard_id]
        metrics.SHARDS_EXPIRED_UNREAD.labels(stream=self.config.input_stream).inc()
        log.error(
            "shard left the stream's retention before it was read to its end, so its records after the checkpoint"
            " are lost. The processor was stopped or behind for longer than the retention period. Raise"
            " spec.input.retentionHours, or alert on anomaly_processor_millis_behind_latest",
            extra={
                **self._context,
                "shard": lease.shard_id,
                "owner": lease.owner,
                "checkpoint": lease.checkpoint.sequence_number if lease.checkpoint else None,
            },
        )

    def _renew_due(self) -> None:
        now = self._clock()
        for lease in list(self._held.values()):
            if lease.lost.is_set() or now - lease.renewed_at < self.lease_settings.renew_interval:
                continue
            sent = self._clock()
            try:
                renewed = self._table.renew(lease.shard_id, self.worker_id, lease.counter)
            except (ClientError, BotoCoreError) as error:
                self._log_renew_failure(lease, error)
                continue
            if renewed is not None:
                lease.counter = renewed
                lease.renewed_at = sent
                if self._failures.pop("renew", 0):
                    log.info("lease renewal succeeded again", extra={**self._context, "shard": lease.shard_id})
            else:
                self._lose(lease, "renewal found another owner or counter")

    def _log_renew_failure(self, lease: HeldLease, error: Exception) -> None:
        failures = self._failures.get("renew", 0) + 1
        self._failures["renew"] = failures
        if failures == 1 or failures % LOG_EVERY_FAILURES == 0:
            log.warning(
                "lease renewal failed; the consumer pauses before forwarding once the lease is half expired",
                extra={**self._context, "shard": lease.shard_id, "attempt": failures, "error": str(error)},
            )

    def _scan_and_balance(self) -> None:
        leases = self._table.scan()
        self._leases = leases
        self._expiry.observe(leases)
        self._check_held(leases)
        if self._stop.is_set():
            return
        plan = plan_leases(leases, self.worker_id, self._held, self._expiry.expired, busy=self._running)
        for lease in plan.take:
            self._take(lease)
        request = plan.request
        if request is not None and request.owner is not None:
            self._request_handoff(request, request.owner, plan.target)

    def _request_handoff(self, lease: Lease, owner: str, target: int) -> None:
        if self._table.request_handoff(lease.shard_id, owner, self.worker_id):
            log.info(
                "requested a lease handoff",
                extra={**self._context, "shard": lease.shard_id, "owner": owner, "target": target},
            )

    def _check_held(self, leases: dict[str, Lease]) -> None:
        """Detect leases taken by other workers, and grant or decline handoff requests for held leases."""
        mine = sum(1 for lease in self._held.values() if lease.handoff_to is None and not lease.lost.is_set())
        for held in list(self._held.values()):
            item = leases.get(held.shard_id)
            if item is None or item.owner != self.worker_id or item.counter != held.counter:
                self._lose(held, f"the table shows owner {item.owner if item else None}")
                continue
            requester = item.requested_by
            if requester is None or requester == self.worker_id or held.handoff_to or self._stop.is_set():
                continue
            if should_hand_off(leases, self.worker_id, requester, mine):
                held.handoff_to = requester
                mine -= 1
                log.info(
                    "handing off lease after the batch in flight",
                    extra={**self._context, "shard": held.shard_id, "requester": requester},
                )
            else:
                self._table.decline_handoff(held.shard_id, self.worker_id, requester)

    def _take(self, lease: Lease) -> None:
        # "assigned": the lease is in this worker's name, after a handoff or from an earlier run with this id.
        if lease.owner is None:
            reason = "free"
        elif lease.owner == self.worker_id:
            reason = "assigned"
        else:
            reason = "expired"
        sent = self._clock()
        taken = self._table.take(lease, self.worker_id, self.lease_settings.duration)
        if taken is None:
            return  # another worker took it first
        held = HeldLease(
            shard_id=taken.shard_id,
            counter=taken.counter,
            renewed_at=sent,
            valid_for=self.lease_settings.valid_for,
            clock=self._clock,
            checkpoint=taken.checkpoint,
            parent_ids=taken.parent_ids,
            starting_timestamp=taken.starting_timestamp,
        )
        self._leases[taken.shard_id] = taken
        if taken.ended:
            # The previous owner read the shard to its end after this worker's table read. A checkpoint
            # write leaves the counter alone, so the take succeeded, but there is nothing left to read.
            self._release(held)
            return
        self._held[taken.shard_id] = held
        metrics.LEASES_TAKEN.labels(reason=reason).inc()
        log.info(
            "took lease",
            extra={
                **self._context,
                "shard": taken.shard_id,
                "reason": reason,
                "previous_owner": lease.owner,
                "checkpoint": taken.checkpoint.sequence_number if taken.checkpoint else None,
            },
        )
        self._start_consumer(held)

    def _lose(self, held: HeldLease, why: str) -> None:
        if held.lost.is_set():
            return
        held.lost.set()
        metrics.LEASES_LOST.inc()
        log.warning(
            "lost lease; stopping the shard's consumer", extra={**self._context, "shard": held.shard_id, "why": why}
        )
        if held.shard_id not in self._running:
            self._forget(held.shard_id)

    def _release(self, held: HeldLease, to: str | None = None) -> None:
        """Free a lease, or hand it over to the worker ``to`` that asked for it."""
        context = {**self._context, "shard": held.shard_id}
        try:
            if to is None:
                released = self._table.release(held.shard_id, self.worker_id, held.counter)
            else:
                released = self._table.hand_over(held.shard_id, self.worker_id, held.counter, to)
        except (ClientError, BotoCoreError) as error:
            # The lease expires instead, after the lease duration.
            log.warning("releasing lease failed", extra={**context, "error": str(error)})
        else:
            if released:
                log.info("released lease", extra={**context, "new_owner": to})
            elif to is not None:
                # A lease still in this worker's name is taken again at the next table read.
                log.info(
                    "handoff failed: the request was withdrawn or replaced, or the lease was lost",
                    extra={**context, "requester": to},
                )
        self._forget(held.shard_id)

    def _forget(self, shard_id: str) -> None:
        self._held.pop(shard_id, None)
        self._restart_at.pop(shard_id, None)
        metrics.forget_shard(self.config.input_stream, shard_id)

    # Consumers

    def _start_consumer(self, held: HeldLease) -> None:
        config = self.config
        checkpoint = held.checkpoint
        # A child's records follow its parents', so it is read from its start whatever the configured position.
        parents = [self._leases[parent] for parent in held.parent_ids if parent in self._leases]
        position = "TRIM_HORIZON" if parents else config.starting_position
        timestamp = None
        parent_starts = [parent.starting_timestamp for parent in parents if parent.starting_timestamp is not None]
        if checkpoint is None and parent_starts and config.starting_position == "LATEST":
            # The parents began at LATEST, so the child's records written before then (a reshard before
            # the first deploy) are as unwanted as the parents' were.
            position, timestamp = "AT_TIMESTAMP", min(parent_starts)
        elif checkpoint is None and position == "LATEST":
            # LATEST means "from when the shard was first leased", so that a holder that dies before its
            # first checkpoint does not make its successor skip what was written in between.
            timestamp = self._starting_timestamp(held)
            if timestamp is None:
                self._restart_at[held.shard_id] = self._clock() + RESTART_DELAY_SECONDS
                return
            position = "AT_TIMESTAMP"
        reader = ShardReader(
            self._kinesis,
            config.input_stream,
            held.shard_id,
            checkpoint.sequence_number if checkpoint else None,
            position,
            config.poll_interval_millis / 1000,
            include_start_record=True,
            starting_timestamp=timestamp,
        )

        consumer = ShardConsumer(
            shard_id=held.shard_id,
            stream=config.input_stream,
            reader=reader,
            forwarder=Forwarder(self._kinesis, config.output_stream, held.shard_id),
            checkpoints=self._checkpoints,
            decoder=self._decoder,
            detectors=self._detectors,
            dead_letters=self._dead_letter_forwarder(held.shard_id),
            stop=self._stop,
            start_checkpoint=checkpoint,
            keep_going=held.keep_reading,
            lease_usable=lambda: held.wait_usable(self._stop),
        )

        running = _Running(consumer)
        running.thread = threading.Thread(target=self._run_consumer, args=(running,), name=f"shard-{held.shard_id}")
        self._running[held.shard_id] = running
        running.thread.start()

    def _starting_timestamp(self, held: HeldLease) -> float | None:
        """Return the shard's stored starting timestamp, storing the current time if it has none."""
        if held.starting_timestamp is not None:
            return held.starting_timestamp
        try:
            stored = self._table.fix_starting_timestamp(held.shard_id, self.worker_id, time.time())
        except (ClientError, BotoCoreError) as error:
            log.warning(
                "storing the shard's starting timestamp failed; retrying",
                extra={**self._context, "shard": held.shard_id, "error": str(error)},
            )
            return None
        held.starting_timestamp = stored
        return stored

    def _dead_letter_forwarder(self, shard_id: str) -> Forwarder | None:
        """Return a writer to the dead-letter stream, counted apart from anomalies, or None without one."""
        stream = self.config.dead_letter_stream
        if stream is None:
            return None
        counter = metrics.DEAD_LETTERS_WRITTEN.labels(stream=stream)
        return Forwarder(self._kinesis, stream, shard_id, accepted_counter=counter, latency=None)

    def _run_consumer(self, running: _Running) -> None:
        consumer = running.consumer
        try:
            consumer.run()
        except Exception:
            # The lease loop restarts a failed consumer from its checkpoint after a delay.
            log.exception(
                "shard consumer failed; it restarts from its checkpoint",
                extra={**self._context, "shard": consumer.shard_id},
            )
            running.failed = True

    def _reap_consumers(self) -> None:
        """Collect stopped consumers; release leases after a shard end or handoff, or when stopping."""
        for shard_id, running in list(self._running.items()):
            if running.thread.is_alive():
                continue
            del self._running[shard_id]
            progress = running.consumer.progress
            self._add_progress(shard_id, progress)
            held = self._held.get(shard_id)
            if held is None:
                continue
            held.checkpoint = progress.checkpoint
            if held.lost.is_set():
                self._forget(shard_id)
            elif running.failed and not self._stop.is_set() and held.handoff_to is None:
                self._restart_at[shard_id] = self._clock() + RESTART_DELAY_SECONDS
            elif held.handoff_to is not None and not progress.ended:
                self._release(held, to=held.handoff_to)
            elif progress.ended or held.handoff_to is not None or self._stop.is_set():
                self._release(held)
                if progress.ended:
                    self._next_discovery = float("-inf")  # create the children's leases now
            else:
                # Without an end, a handoff or a stop, the consumer returns only when a checkpoint write found
                # another owner or checkpoint. If the table still names this worker, the next pass takes the
                # lease again and reads on from the stored checkpoint.
                self._lose(held, "a checkpoint write found another owner or checkpoint")

    def _restart_failed_consumers(self) -> None:
        now = self._clock()
        for shard_id, due in list(self._restart_at.items()):
            held = self._held.get(shard_id)
            if held is None or shard_id in self._running:
                self._restart_at.pop(shard_id, None)
                continue
            if now >= due and not self._stop.is_set():
                del self._restart_at[shard_id]
                self._start_consumer(held)

    def _add_progress(self, shard_id: str, progress: ShardProgress) -> None:
        total = self.finished.get(shard_id)
        if total is None:
            self.finished[shard_id] = progress
            return
        total.records += progress.records
        total.anomalies += progress.anomalies
        total.malformed += progress.malformed
        total.checkpoint = progress.checkpoint or total.checkpoint
        total.ended = total.ended or progress.ended
        total.errors.extend(progress.errors)

    def _shut_down(self) -> None:
        """Keep renewing while the consumers finish their batches, then release every lease."""
        while any(running.thread.is_alive() for running in self._running.values()):
            self._renew_due()
            for running in list(self._running.values()):
                running.thread.join(timeout=self.lease_settings.scan_interval / max(1, len(self._running)))
        self._reap_consumers()
        for held in list(self._held.values()):
            if held.lost.is_set():
                self._forget(held.shard_id)
            else:
                self._release(held)
        self._clear_table_entries()
        metrics.LEASES_HELD.set(0)

    def _clear_table_entries(self) -> None:
        """Withdraw this worker's handoff requests, then release leases handed over but never taken.

        Other workers count a requester as live, and a handoff needs its request, so no lease
        reaches this worker after the withdrawal. A lease handed over before it would otherwise
        wait a whole lease duration to expire.
        """
        try:
            for lease in self._table.scan().values():
                if lease.requested_by == self.worker_id:
                    self._table.withdraw_handoff(lease.shard_id, self.worker_id)
            for lease in self._table.scan().values():
                left = lease.owner == self.worker_id and lease.shard_id not in self._held
                if left and self._table.release(lease.shard_id, self.worker_id, lease.counter):
                    log.info(
                        "released a lease left in this worker's name", extra={**self._context, "shard": lease.shard_id}
                    )
        except (ClientError, BotoCoreError) as error:
            log.warning(
                "withdrawing requests or releasing handed-over leases failed, so they expire instead",
                extra={**self._context, "error": str(error)},
            )
