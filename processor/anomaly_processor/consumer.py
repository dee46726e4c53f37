"""One shard's loop: read a batch, judge each record, forward anomalies, checkpoint.

The checkpoint after a batch is written only once the forwarder has had every anomaly
of the batch accepted, so a crash re-forwards at most that batch and loses nothing. A
stop request is honoured between batches: the batch in flight is finished and
checkpointed first.

``select_anomalies`` is the per-record path: decode, judge, collect. It logs nothing;
malformed records are returned for the caller to count and log once per batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
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
from anomaly_processor.detector import Detector
from anomaly_processor.events import EventDecoder, MalformedReason
from anomaly_processor.forwarder import Entry, Forwarder
from anomaly_processor.reader import ShardReader

log = logging.getLogger(__name__)

# Malformed records are logged one line each, up to this many per batch; the rest are counted.
MAX_MALFORMED_LOG_LINES_PER_BATCH: Final = 20


@dataclass(frozen=True, slots=True)
class Malformed:
    sequence_number: str
    reason: MalformedReason


def select_anomalies(
    records: Iterable[dict[str, Any]],
    decode: Callable[[bytes], tuple[dict[str, Any] | None, MalformedReason | None]],
    is_anomaly: Callable[[dict[str, Any]], bool],
) -> tuple[list[Entry], list[Malformed]]:
    """Judge each record; return the anomalies to forward and the malformed records."""
    entries: list[Entry] = []
    malformed: list[Malformed] = []
    for record in records:
        data = record["Data"]
        event, reason = decode(data)
        if event is None:
            malformed.append(Malformed(record["SequenceNumber"], reason))  # type: ignore[arg-type]
        elif is_anomaly(event):
            entries.append(Entry(data, record["PartitionKey"], record["ApproximateArrivalTimestamp"].timestamp()))
    return entries, malformed


@dataclass
class ShardProgress:
    """What a consumer did, for tests and shutdown reporting."""

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
        detector: Callable[[], Detector],
        stop: threading.Event,
        start_checkpoint: Checkpoint | None,
        keep_going: Callable[[], bool] = lambda: True,
        lease_usable: Callable[[], bool] = lambda: True,
    ) -> None:
        self.shard_id = shard_id
        self._stream = stream
        self._reader = reader
        self._forwarder = forwarder
        self._checkpoints = checkpoints
        self._decode = decoder.decode
        self._detector = detector
        self._stop = stop
        self._keep_going = keep_going
        # Waits while the shard's lease renewals are late; False once the lease is lost.
        self._lease_usable = lease_usable
        self.progress = ShardProgress(checkpoint=start_checkpoint)
        self._read_counter = metrics.RECORDS_READ.labels(stream=stream, shard=shard_id)

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
        detector = self._detector()  # taken once per batch, so a rule reload applies between batches
        entries, malformed = select_anomalies(records, self._decode, detector.is_anomaly)
        self._read_counter.inc(len(records))
        if malformed:
            self._report_malformed(malformed)
        if entries:
            self._forwarder.forward(entries)
        last = records[-1]["SequenceNumber"]
        self._write_checkpoint(Checkpoint(last))
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
                    "reason": item.reason.value,
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

    def _describe_checkpoint(self) -> str | None:
        checkpoint = self.progress.checkpoint
        return checkpoint.sequence_number if checkpoint else None
