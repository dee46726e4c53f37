"""The filter-path benchmark: the processor's per-record path against a bare JSON parse loop.

Both loops run in this process over the same records, shaped as boto3's GetRecords
returns them. The per-record path is what a shard consumer does with a batch:
``selection.select_anomalies`` (the KPL prefix test, ``EventDecoder.decode``, then the
default rule set with no shadow detector) and then ``Forwarder.forward``, which splits
the anomalies into PutRecords calls. The forwarder
talks to an in-memory stand-in that accepts every entry, so no network is involved.
The bare loop calls ``json.loads`` on each record's bytes and nothing else: it is the
lower bound of any consumer that reads JSON with the standard library.

The two loops alternate for a number of rounds and the median round of each is
reported, so a slow moment on a shared machine hits both rather than one.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from anomaly_processor.detector import FixedDetectors, RuleDetector
from anomaly_processor.events import EventDecoder
from anomaly_processor.forwarder import Forwarder
from anomaly_processor.rules import parse_rule_set
from anomaly_processor.selection import BatchTally, select_anomalies

from bench.events import Event

Records = list[dict[str, Any]]


@dataclass(frozen=True)
class FilterPathResult:
    """Records per second of both loops; ``ratio`` is per-record path / bare parse."""

    events: int
    batch_size: int
    rounds: int
    mean_event_bytes: float
    anomalies_per_round: int
    per_record_path_records_per_s: float
    bare_parse_records_per_s: float
    ratio: float
    per_record_path_round_seconds: list[float]
    bare_parse_round_seconds: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AcceptingKinesis:
    """A Kinesis client stand-in whose PutRecords accepts every entry without a network call."""

    def __init__(self) -> None:
        self.calls = 0
        self.entries = 0

    def put_records(self, *, StreamName: str, Records: Sequence[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's names
        self.calls += 1
        self.entries += len(Records)
        return {"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1", "ShardId": "shardId-0"}] * len(Records)}


def as_get_records_batches(events: Sequence[Event], batch_size: int) -> list[Records]:
    """Shape events as GetRecords returns them, cut into batches of ``batch_size`` records."""
    arrival = datetime.now(tz=UTC)
    records = [
        {
            "SequenceNumber": f"{49_600_000_000_000_000_000_000_000_000_000_000_000_000_000 + index}",
            "ApproximateArrivalTimestamp": arrival,
            "Data": event.data,
            "PartitionKey": event.partition_key,
        }
        for index, event in enumerate(events)
    ]
    return [records[start : start + batch_size] for start in range(0, len(records), batch_size)]


def make_per_record_path() -> tuple[Callable[[list[Records]], int], AcceptingKinesis]:
    """Return a function running the processor's per-record path over batches, and its client stand-in."""
    decoder = EventDecoder(("transaction_amount",))
    detectors = FixedDetectors(RuleDetector(parse_rule_set(None)))
    kinesis = AcceptingKinesis()
    forwarder = Forwarder(kinesis, "bench-anomalies", "shardId-000000000000")

    def run(batches: list[Records]) -> int:
        anomalies = 0
        for batch in batches:
            entries, _ = select_anomalies(batch, decoder.decode, detectors, BatchTally())
            if entries:
                forwarder.forward(entries)
            anomalies += len(entries)
        return anomalies

    return run, kinesis


def bare_parse(batches: list[Records]) -> int:
    """Parse every record's bytes with ``json.loads`` and do nothing else."""
    loads = json.loads
    parsed = 0
    for batch in batches:
        for record in batch:
            loads(record["Data"])
        parsed += len(batch)
    return parsed


def run_filter_path(
    events: Sequence[Event], batch_size: int, rounds: int, progress: Callable[[int], Any] = lambda _: None
) -> FilterPathResult:
    """Time both loops ``rounds`` times each, alternating, and return the median rates."""
    if rounds < 1:
        raise ValueError(f"rounds {rounds} is invalid: expected at least 1")
    batches = as_get_records_batches(events, batch_size)
    per_record_path, _ = make_per_record_path()
    path_seconds: list[float] = []
    bare_seconds: list[float] = []
    anomalies = 0
    for _ in range(rounds):
        started = time.perf_counter()
        bare_parse(batches)
        bare_seconds.append(time.perf_counter() - started)
        progress(1)

        started = time.perf_counter()
        anomalies = per_record_path(batches)
        path_seconds.append(time.perf_counter() - started)
        progress(1)

    count = len(events)
    path_rate = count / statistics.median(path_seconds)
    bare_rate = count / statistics.median(bare_seconds)
    return FilterPathResult(
        events=count,
        batch_size=batch_size,
        rounds=rounds,
        mean_event_bytes=sum(len(e.data) for e in events) / max(1, count),
        anomalies_per_round=anomalies,
        per_record_path_records_per_s=path_rate,
        bare_parse_records_per_s=bare_rate,
        ratio=path_rate / bare_rate,
        per_record_path_round_seconds=path_seconds,
        bare_parse_round_seconds=bare_seconds,
    )
