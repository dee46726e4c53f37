"""The per-record path: de-aggregate, decode, judge, collect.

``select_anomalies`` takes one GetRecords batch and returns the anomalies to forward
(each with its own bytes and partition key) and the malformed records to count, log and
dead-letter. Records in the KPL aggregated format are split into user records, each
judged on its own; a corrupt aggregate is one malformed record.

The detectors are read from the ``DetectorSource`` once per record, so a rules reload
takes effect between two records and no record is judged by a mix of two rule sets. A
shadow detector's verdicts are only tallied against the active detector's; an
exception from it is counted and never stops the shard.

Nothing here logs or touches a metric: the consumer does both once per batch from the
``BatchTally``. Plain records cost one prefix test more than before de-aggregation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from anomaly_processor.checkpoint import Checkpoint
from anomaly_processor.detector import Detector, DetectorSource
from anomaly_processor.events import Malformed, MalformedReason
from anomaly_processor.forwarder import Entry
from anomaly_processor.kpl import MAGIC, CorruptAggregateError, deaggregate

Decode = Callable[[bytes], tuple[dict[str, Any] | None, MalformedReason | None]]


@dataclass(slots=True)
class ShadowTally:
    """Tally of one shadow detector's verdicts against the active detector's during a batch."""

    detector: Detector
    # Indexed by active verdict + 2 * shadow verdict: both normal, only the active detector
    # anomalous, only the shadow detector anomalous, both anomalous.
    outcomes: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    errors: int = 0
    last_error: str = ""

    @property
    def agreements(self) -> int:
        return self.outcomes[0] + self.outcomes[3]

    @property
    def disagreements(self) -> int:
        return self.outcomes[1] + self.outcomes[2]


@dataclass(slots=True)
class BatchTally:
    """Counts that ``select_anomalies`` gathers besides the anomalies and malformed records."""

    # Sub-sequence number of the batch's last user record: 0 for a plain or corrupt record.
    last_sub_sequence_number: int = 0
    user_records: int = 0
    # One entry per shadow detector in force during the batch, normally one.
    shadows: list[ShadowTally] = field(default_factory=list)
    # Sequence number and user record count of the latest aggregated record.
    last_aggregate_size: tuple[str, int] | None = None

    def shadow_tally(self, shadow: Detector) -> ShadowTally:
        shadows = self.shadows
        if shadows and shadows[-1].detector is shadow:
            return shadows[-1]
        tally = ShadowTally(shadow)
        shadows.append(tally)
        return tally


def _compare_shadow(shadow: Detector, event: dict[str, Any], active_verdict: bool, tally: BatchTally) -> None:
    shadow_tally = tally.shadow_tally(shadow)
    try:
        shadow_verdict = shadow.is_anomaly(event)
    except Exception as error:  # a shadow detector on trial must never stop the shard
        shadow_tally.errors += 1
        shadow_tally.last_error = f"{type(error).__name__}: {error}"
        return
    shadow_tally.outcomes[active_verdict + 2 * bool(shadow_verdict)] += 1


def _select_aggregate(
    record: dict[str, Any],
    first_sub_sequence_number: int,
    decode: Decode,
    detectors: DetectorSource,
    entries: list[Entry],
    malformed: list[Malformed],
    tally: BatchTally,
) -> None:
    """Judge the user records of one aggregated record, from ``first_sub_sequence_number`` on."""
    data = record["Data"]
    sequence_number = record["SequenceNumber"]
    arrival = record["ApproximateArrivalTimestamp"]
    try:
        user_records = deaggregate(data)
    except CorruptAggregateError as error:
        tally.last_aggregate_size = (sequence_number, 0)
        # A corrupt aggregate is one unit at sub-sequence number 0; a resume after it skips it.
        if first_sub_sequence_number == 0:
            corrupt = MalformedReason.CORRUPT_AGGREGATE
            malformed.append(
                Malformed(sequence_number, corrupt, data, record["PartitionKey"], arrival, None, str(error))
            )
        return
    tally.last_aggregate_size = (sequence_number, len(user_records))
    tally.user_records += len(user_records)
    arrival_seconds = arrival.timestamp()
    # The same steps as the plain-record loop in select_anomalies, kept inline for speed.
    for user in user_records[first_sub_sequence_number:]:
        event, reason = decode(user.data)
        if event is None:
            malformed.append(
                Malformed(sequence_number, reason, user.data, user.partition_key, arrival, user.sub_sequence_number)  # type: ignore[arg-type]
            )
            continue
        current = detectors.current
        anomalous = current.active.is_anomaly(event)
        if anomalous:
            entries.append(Entry(user.data, user.partition_key, arrival_seconds))
        if current.shadow is not None:
            _compare_shadow(current.shadow, event, anomalous, tally)


def select_anomalies(
    records: Sequence[dict[str, Any]],
    decode: Decode,
    detectors: DetectorSource,
    tally: BatchTally | None = None,
    resume_after: Checkpoint | None = None,
) -> tuple[list[Entry], list[Malformed]]:
    """Judge each record; return the anomalies to forward and the malformed records, in order.

    ``resume_after`` is the checkpoint the shard was started from. The batch starts with
    that checkpoint's record when the reader started at it rather than after it. Then the
    record's user records up to the checkpoint's sub-sequence number are skipped, and a
    plain record is skipped whole. So a restart inside an aggregate neither repeats nor
    skips a user record.
    """
    if tally is None:
        tally = BatchTally()
    entries: list[Entry] = []
    malformed: list[Malformed] = []
    start = 0
    if resume_after is not None and records and records[0]["SequenceNumber"] == resume_after.sequence_number:
        first = records[0]
        if first["Data"].startswith(MAGIC):
            skip = resume_after.sub_sequence_number + 1
            _select_aggregate(first, skip, decode, detectors, entries, malformed, tally)
        start = 1

    magic = MAGIC
    for record in records[start:] if start else records:
        data = record["Data"]
        if data.startswith(magic):
            _select_aggregate(record, 0, decode, detectors, entries, malformed, tally)
            continue
        event, reason = decode(data)
        if event is None:
            malformed.append(
                Malformed(
                    record["SequenceNumber"],
                    reason,  # type: ignore[arg-type]
                    data,
                    record["PartitionKey"],
                    record["ApproximateArrivalTimestamp"],
                )
            )
            continue
        current = detectors.current
        anomalous = current.active.is_anomaly(event)
        if anomalous:
            entries.append(Entry(data, record["PartitionKey"], record["ApproximateArrivalTimestamp"].timestamp()))
        if current.shadow is not None:
            _compare_shadow(current.shadow, event, anomalous, tally)

    last_aggregate = tally.last_aggregate_size
    if records and last_aggregate is not None and last_aggregate[0] == records[-1]["SequenceNumber"]:
        tally.last_sub_sequence_number = max(0, last_aggregate[1] - 1)
    return entries, malformed
