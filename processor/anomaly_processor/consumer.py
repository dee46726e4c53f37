"""One shard's loop: read a batch, judge each record, forward anomalies, checkpoint.

The checkpoint after a batch is written only once the forwarder has had every anomaly
of the batch accepted, so a crash re-forwards at most that batch and loses nothing. A
stop request is honoured between batches: the batch in flight is finished and
checkpointed first.

``select_anomalies`` (in ``selection``) is the per-record path: de-aggregate, decode,
judge, collect. It logs nothing. The consumer counts and logs malformed records and
shadow verdicts once per batch. When a dead-letter stream is set, it also writes a
dead-letter envelope for each malformed record. Dead letters, like anomalies, are accepted
before the checkpoint moves. The checkpoint carries the sub-sequence number of the
batch's last user record.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from anomaly_processor import metrics
from anomaly_processor.checkpoint import (
    SHARD_END,
    Checkpoint,
    CheckpointConflictError,
    CheckpointStore,
    LeaseLostError,
)
from anomaly_processor.deadletter import build_envelopes
from anomaly_processor.detector import DetectorSource
from anomaly_processor.events import EventDecoder, Malformed, MalformedReason
from anomaly_processor.forwarder import Forwarder
from anomaly_processor.reader import ShardReader
from anomaly_processor.selection import BatchTally, ShadowTally, select_anomalies

__all__ = ["Malformed", "ShardConsumer", "ShardProgress", "select_anomalies"]

log = logging.getLogger(__name__)

# Malformed records are logged one line each, up to this many per batch; the rest are counted.
MAX_MALFORMED_LOG_LINES_PER_BATCH: Final = 20


@dataclass
class ShardProgress:
    """Counts and last checkpoint of one consumer, for tests and shutdown reporting."""

    records: int = 0
    anomalies: int = 0
    malformed: int = 0
    checkpoint: Checkpoint | None = None
    ended: bool = False
    errors: list[str] = field(default_factory=list)


class ShardConsumer:
    """Consumes one shard until it ends, the stop event is set, or ``keep_going`` fails."""

    def __init__(
        self,
        *,
        shard_id: str,
        stream: str,
        reader: ShardReader,
        forwarder: Forwarder,
        checkpoints: CheckpointStore,
        decoder: EventDecoder,
        detectors: DetectorSource,
        stop: threading.Event,
        start_checkpoint: Checkpoint | None,
        keep_going: Callable[[], bool] = lambda: True,
        lease_usable: Callable[[], bool] = lambda: True,
        dead_letters: Forwarder | None = None,
    ) -> None:
        self.shard_id = shard_id
        self._stream = stream
        self._reader = reader
        self._forwarder = forwarder
        self._checkpoints = checkpoints
        self._decoder = decoder
        self._decode = decoder.decode
        # Read once per record, so a rules reload takes effect between two records.
        self._detectors = detectors
        self._dead_letters = dead_letters
        # The start checkpoint, until the first batch: the reader may return its record again.
        self._resume_after = start_checkpoint if start_checkpoint and not start_checkpoint.is_shard_end else None
        self._stop = stop
        self._keep_going = keep_going
        # Waits while the shard's lease renewals are late; False once the lease is lost.
        self._lease_usable = lease_usable
        self.progress = ShardProgress(checkpoint=start_checkpoint)
        self._read_counter = metrics.RECORDS_READ.labels(stream=stream, shard=shard_id)
        self._user_record_counter = metrics.USER_RECORDS_DEAGGREGATED.labels(stream=stream, shard=shard_id)

    def run(self) -> ShardProgress:
        context = {"stream": self._stream, "shard": self.shard_id}
        log.info("started reading shard", extra={**context, "checkpoint": self._describe_checkpoint()})
        try:
            while not self._stop.is_set() and self._keep_going():
                batch = self._reader.read()
                if batch is None:
                    continue
                # A worker whose lease was taken must not forward this batch: the new holder reads it.
                if not self._lease_usable():
                    break
                if batch.records:
                    self._handle(batch.records)
                if batch.shard_ended:
                    self._write_checkpoint(Checkpoint(SHARD_END))
                    self.progress.ended = True
                    log.info("shard read to its end", extra=context)
                    break
        except LeaseLostError as error:
            # The batch in hand may have been forwarded but not checkpointed: the new holder forwards it again.
            log.warning("lease lost while handling a batch", extra={**context, "error": str(error)})
        log.info("stopped reading shard", extra={**context, "checkpoint": self._describe_checkpoint()})
        return self.progress

    def _handle(self, records: list[dict[str, Any]]) -> None:
        tally = BatchTally()
        entries, malformed = select_anomalies(records, self._decode, self._detectors, tally, self._resume_after)
        self._resume_after = None
        self._read_counter.inc(len(records))
        if tally.user_records:
            self._user_record_counter.inc(tally.user_records)
        for shadow in tally.shadows:
            self._report_shadow(shadow)
        if malformed:
            malformed = [item if item.detail else self._explained(item) for item in malformed]
            self._report_malformed(malformed)
        if entries:
            self._forwarder.forward(entries)
        if malformed and self._dead_letters is not None:
            self._write_dead_letters(malformed)
        last = records[-1]["SequenceNumber"]
        self._write_checkpoint(Checkpoint(last, tally.last_sub_sequence_number))
        self._reader.confirm(last)
        self.progress.records += len(records)
        self.progress.anomalies += len(entries)
        self.progress.malformed += len(malformed)

    def _write_checkpoint(self, checkpoint: Checkpoint) -> None:
        attempt = 0
        while True:
            try:
                self._checkpoints.write(self.shard_id, checkpoint, self.progress.checkpoint)
                self.progress.checkpoint = checkpoint
                return
            except CheckpointConflictError:
                raise
            except (ClientError, BotoCoreError) as error:
                # A checkpoint that cannot be written is retried: moving on would lose the position.
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "checkpoint write failed; retrying",
                        extra={"stream": self._stream, "shard": self.shard_id, "error": str(error), "attempt": attempt},
                    )
                time.sleep(min(5.0, 0.1 * 2**attempt))

    def _explained(self, item: Malformed) -> Malformed:
        return dataclasses.replace(item, detail=self._decoder.explain(item.data))

    def _report_malformed(self, malformed: list[Malformed]) -> None:
        by_reason: dict[MalformedReason, int] = {}
        for item in malformed:
            by_reason[item.reason] = by_reason.get(item.reason, 0) + 1
        for reason, count in by_reason.items():
            metrics.MALFORMED_RECORDS.labels(stream=self._stream, reason=reason.value).inc(count)
        for item in malformed[:MAX_MALFORMED_LOG_LINES_PER_BATCH]:
            log.warning(
                "malformed record not forwarded",
                extra={
                    "stream": self._stream,
                    "shard": self.shard_id,
                    "sequence_number": item.sequence_number,
                    "sub_sequence_number": item.sub_sequence_number,
                    "reason": item.reason.value,
                    "detail": item.detail,
                    "dead_letter": self._dead_letters is not None,
                },
            )
        if len(malformed) > MAX_MALFORMED_LOG_LINES_PER_BATCH:
            log.warning(
                "more malformed records in this batch were counted but not logged",
                extra={
                    "stream": self._stream,
                    "shard": self.shard_id,
                    "not_logged": len(malformed) - MAX_MALFORMED_LOG_LINES_PER_BATCH,
                    "last_sequence_number": malformed[-1].sequence_number,
                },
            )

    def _write_dead_letters(self, malformed: list[Malformed]) -> None:
        """Write one envelope per malformed record; returns once all are accepted, retrying like a forward."""
        assert self._dead_letters is not None
        envelopes, truncated = build_envelopes(malformed, self._stream, self.shard_id)
        if truncated:
            metrics.DEAD_LETTERS_TRUNCATED.labels(stream=self._stream).inc(truncated)
            log.warning(
                "dead-letter envelopes cut to the 1 MiB record limit",
                extra={"stream": self._stream, "shard": self.shard_id, "truncated": truncated},
            )
        self._dead_letters.forward(envelopes)

    def _report_shadow(self, shadow: ShadowTally) -> None:
        name = shadow.detector.name
        outcomes = shadow.outcomes
        labels = (
            ("agreement", "normal", outcomes[0]),
            ("disagreement", "normal", outcomes[1]),
            ("disagreement", "anomalous", outcomes[2]),
            ("agreement", "anomalous", outcomes[3]),
        )
        for result, verdict, count in labels:
            if count:
                metrics.SHADOW_VERDICTS.labels(
                    stream=self._stream, detector=name, result=result, shadow_verdict=verdict
                ).inc(count)
        if shadow.errors:
            metrics.SHADOW_ERRORS.labels(stream=self._stream, detector=name).inc(shadow.errors)
            log.warning(
                "shadow detector failed on events; the active verdicts stand",
                extra={
                    "stream": self._stream,
                    "shard": self.shard_id,
                    "detector": name,
                    "failed_events": shadow.errors,
                    "error": shadow.last_error,
                },
            )

    def _describe_checkpoint(self) -> str | None:
        checkpoint = self.progress.checkpoint
        return checkpoint.sequence_number if checkpoint else None
