"""Writing load into the input stream and reading what arrived where, for the stream benchmarks.

Latency is the anomaly record's ``ApproximateArrivalTimestamp`` minus the input record's,
both as the Kinesis endpoint reports them (kinesalite stamps milliseconds), so neither
the load generator's clock nor its scheduling enters the figure. Input and anomaly
records are matched by their bytes, which are unique because each event has its own id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from anomaly_pipeline.demo import percentile

from bench.events import Event

MAX_ENTRIES_PER_CALL: Final = 500
SEND_TICK_SECONDS: Final = 0.1
RESEND_DELAY_SECONDS: Final = 0.1
READ_LIMIT: Final = 10_000


@dataclass(frozen=True)
class SendResult:
    """Number of events written and the seconds it took."""

    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def put_all(kinesis: Any, stream: str, events: Sequence[Event]) -> None:
    """Write ``events`` with PutRecords calls of at most 500 entries, resending failed entries."""
    for start in range(0, len(events), MAX_ENTRIES_PER_CALL):
        pending = [
            {"Data": e.data, "PartitionKey": e.partition_key} for e in events[start : start + MAX_ENTRIES_PER_CALL]
        ]
        while pending:
            response = kinesis.put_records(StreamName=stream, Records=pending)
            if not response.get("FailedRecordCount"):
                break
            pending = [p for p, r in zip(pending, response["Records"], strict=True) if "ErrorCode" in r]
            time.sleep(RESEND_DELAY_SECONDS)


def send_at_rate(
    kinesis: Any, stream: str, events: Sequence[Event], rate: float, progress: Callable[[int], Any]
) -> SendResult:
    """Write ``events`` at about ``rate`` per second, one burst every 100 ms.

    When the machine cannot keep up, bursts go out back to back and the returned rate
    is the highest this machine sustained.
    """
    per_tick = max(1, round(rate * SEND_TICK_SECONDS))
    started = time.monotonic()
    for tick, start in enumerate(range(0, len(events), per_tick)):
        chunk = events[start : start + per_tick]
        put_all(kinesis, stream, chunk)
        progress(len(chunk))
        delay = started + (tick + 1) * SEND_TICK_SECONDS - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return SendResult(len(events), time.monotonic() - started)


def write_backlog(kinesis: Any, stream: str, events: Sequence[Event], progress: Callable[[int], Any]) -> SendResult:
    """Write ``events`` as fast as the endpoint accepts them."""
    started = time.monotonic()
    for start in range(0, len(events), MAX_ENTRIES_PER_CALL):
        chunk = events[start : start + MAX_ENTRIES_PER_CALL]
        put_all(kinesis, stream, chunk)
        progress(len(chunk))
    return SendResult(len(events), time.monotonic() - started)


class StreamCounter:
    """Counts the records that arrive in a stream, reading only what is new at each ``poll``."""

    def __init__(self, kinesis: Any, stream: str) -> None:
        self._kinesis = kinesis
        self._stream = stream
        self._iterators: dict[str, str | None] = {}
        self.count = 0

    def poll(self) -> int:
        """Read every shard up to its newest record; return the total count so far."""
        if not self._iterators:
            for shard in self._kinesis.list_shards(StreamName=self._stream)["Shards"]:
                self._iterators[shard["ShardId"]] = self._kinesis.get_shard_iterator(
                    StreamName=self._stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
        for shard_id, iterator in self._iterators.items():
            while iterator:
                response = self._kinesis.get_records(ShardIterator=iterator, Limit=READ_LIMIT)
                iterator = response.get("NextShardIterator")
                self.count += len(response["Records"])
                if not response["Records"]:
                    break
            self._iterators[shard_id] = iterator
        return self.count

    def wait_for(self, expected: int, timeout: float, progress: Callable[[int], Any], interval: float = 0.25) -> bool:
        """Poll until ``expected`` records arrived or ``timeout`` seconds passed; return whether they did."""
        deadline = time.monotonic() + timeout
        reported = 0
        while True:
            count = self.poll()
            progress(min(count, expected) - reported)
            reported = min(count, expected)
            if count >= expected:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)


@dataclass
class Delivery:
    """Comparison of the anomaly stream with the expected anomalies, and their latencies."""

    expected: int = 0
    received: int = 0
    missing: int = 0
    unexpected: int = 0
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    last_arrival: float | None = None

    def as_dict(self) -> dict[str, int]:
        return {
            "expected": self.expected,
            "received": self.received,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "duplicates": self.duplicates,
        }


def compare_delivery(
    events: Sequence[Event], anomalies: list[dict[str, Any]], inputs: list[dict[str, Any]]
) -> Delivery:
    """Match anomaly records to the events and inputs they came from; latency in milliseconds."""
    expected = {e.data for e in events if e.anomalous}
    input_arrival = {r["Data"]: r["ApproximateArrivalTimestamp"].timestamp() for r in inputs}
    first_arrival: dict[bytes, float] = {}
    duplicates = 0
    for record in anomalies:
        data = record["Data"]
        if data in first_arrival:
            duplicates += 1
            continue
        first_arrival[data] = record["ApproximateArrivalTimestamp"].timestamp()
    received = [data for data in first_arrival if data in expected]
    latencies = [(first_arrival[d] - input_arrival[d]) * 1000 for d in received if d in input_arrival]
    return Delivery(
        expected=len(expected),
        received=len(received),
        missing=len(expected) - len(received),
        unexpected=sum(1 for data in first_arrival if data not in expected),
        duplicates=duplicates,
        latencies_ms=latencies,
        last_arrival=max(first_arrival.values()) if first_arrival else None,
    )


def latency_figures(latencies_ms: list[float]) -> dict[str, float | None]:
    """Return p50, p95, p99 and max in whole milliseconds (nearest rank), None when there are none."""
    ordered = sorted(round(value) for value in latencies_ms)
    return {
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
    }


def latency_curve(latencies_ms: list[float]) -> list[float]:
    """Return the 0th to 100th percentiles in steps of one (101 values), for plots; empty when none."""
    ordered = sorted(latencies_ms)
    curve: list[float] = []
    for step in range(101 if ordered else 0):
        value = percentile(ordered, step / 100)
        assert value is not None  # only None for an empty list
        curve.append(float(value))
    return curve
