"""The end-to-end demo: the whole pipeline on an embedded endpoint, checked record by record.

It provisions the pipeline, runs the processor with the processor role's credentials,
writes events with the tester's credentials, reads the anomaly stream with the same
tester credentials, and compares what arrived with what the threshold defines as anomalies. Which events are anomalies is decided here independently of the processor's
rules, from the amount's decimal text, so the demo checks the processor rather than
repeating it.

Latency is the anomaly record's ApproximateArrivalTimestamp minus the input record's,
both as the service reports them. The input arrival times are read with the
administrator's credentials, because the tester may not read the input stream.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from anomaly_processor.__main__ import use_utc_timestamps
from anomaly_processor.worker import Worker
from tqdm import tqdm

from anomaly_pipeline.aws import Aws
from anomaly_pipeline.credentials import assume_role, tester_credentials
from anomaly_pipeline.provisioning import Provisioned, provision
from anomaly_pipeline.spec import Pipeline, processor_config

THRESHOLD: Final = Decimal(100)
LATENCY_PROMISE_MS: Final = 2000
# How long the demo waits for the last anomalies after the last event was written.
DRAIN_TIMEOUT_SECONDS: Final = 15.0
# Amount texts at and around the threshold, written as real producers write them.
EDGE_AMOUNTS: Final = ("100", "100.0", "100.00", "1e2", "100.01", "100.0000000001", "99.99", "101", "0", "-5.5")


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    data: bytes
    anomalous: bool


def generate_events(count: int, seed: int = 7) -> list[Event]:
    """Return ``count`` events with amounts below, at and above 100, integers and decimals."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    events: list[Event] = []
    for index in range(count):
        roll = rng.random()
        if roll < 0.05:
            amount = rng.choice(EDGE_AMOUNTS)
        elif roll < 0.15:
            amount = f"{rng.uniform(100.01, 5000):.2f}" if rng.random() < 0.5 else str(rng.randint(101, 20000))
        elif roll < 0.6:
            amount = f"{rng.uniform(0.5, 99.99):.2f}"
        else:
            amount = str(rng.randint(1, 100))
        event_id = f"{index:08d}"
        data = f'{{"event_id": "{event_id}", "transaction_amount": {amount}}}'.encode()
        events.append(Event(event_id, data, Decimal(amount) > THRESHOLD))
    return events


@dataclass
class Summary:
    sent: int = 0
    expected: int = 0
    received: int = 0
    missing: int = 0
    unexpected: int = 0
    duplicates: int = 0
    latency_ms: dict[str, float | None] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        worst = self.latency_ms.get("max")
        late = worst is not None and worst >= LATENCY_PROMISE_MS
        return self.missing == 0 and self.unexpected == 0 and not late

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "expected": self.expected,
            "received": self.received,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "duplicates": self.duplicates,
            "latency_ms": self.latency_ms,
        }

    def table(self) -> str:
        rows = [(k, str(v)) for k, v in self.as_dict().items() if k != "latency_ms"]
        rows += [(f"latency {k} (ms)", "-" if v is None else f"{v:.0f}") for k, v in self.latency_ms.items()]
        width = max(len(k) for k, _ in rows)
        lines = [f"{'':-<{width}}  {'':-<10}"] + [f"{k:<{width}}  {v:>10}" for k, v in rows]
        return "\n".join(lines)


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_summary(latencies: list[float]) -> dict[str, float | None]:
    # Arrival timestamps have millisecond precision, so latencies are whole milliseconds.
    ordered = sorted(round(value) for value in latencies)
    return {
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
    }


class StreamTail:
    """Reads every shard of a stream from its start in a thread, collecting records."""

    def __init__(self, kinesis: Any, stream: str) -> None:
        self._kinesis = kinesis
        self._stream = stream
        self.records: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"tail-{stream}", daemon=True)

    def start(self) -> StreamTail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def _run(self) -> None:
        shards = self._kinesis.list_shards(StreamName=self._stream)["Shards"]
        iterators = {
            s["ShardId"]: self._kinesis.get_shard_iterator(
                StreamName=self._stream, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            for s in shards
        }
        while not self._stop.is_set():
            for shard_id, iterator in list(iterators.items()):
                if iterator is None:
                    continue
                response = self._kinesis.get_records(ShardIterator=iterator, Limit=10_000)
                iterators[shard_id] = response.get("NextShardIterator")
                with self._lock:
                    self.records.extend(response["Records"])
            self._stop.wait(0.2)


def read_whole_stream(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    """Read every record now in the stream, shard by shard, until each shard has no more."""
    records: list[dict[str, Any]] = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            records.extend(response["Records"])
            iterator = response.get("NextShardIterator")
            if not response["Records"] and response.get("MillisBehindLatest", 0) == 0:
                break
    return records


def send_events(kinesis: Any, stream: str, events: list[Event], rate: float, progress: Callable[[int], Any]) -> None:
    """Write events with PutRecords at about ``rate`` events per second, resending failed entries."""
    tick = 0.1
    per_tick = max(1, round(rate * tick))
    started = time.monotonic()
    for index in range(0, len(events), per_tick):
        chunk = events[index : index + per_tick]
        pending = [{"Data": e.data, "PartitionKey": e.event_id} for e in chunk]
        while pending:
            response = kinesis.put_records(StreamName=stream, Records=pending)
            pending = [p for p, r in zip(pending, response["Records"], strict=True) if "ErrorCode" in r]
            if pending:
                time.sleep(0.1)
        progress(len(chunk))
        due = started + (index // per_tick + 1) * tick
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def compare(events: list[Event], anomalies: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> Summary:
    """Compare what arrived in the anomaly stream with what should have arrived."""
    expected = {e.data: e for e in events if e.anomalous}
    arrived_at: dict[bytes, float] = {}
    counts: dict[bytes, int] = {}
    for record in anomalies:
        data = record["Data"]
        counts[data] = counts.get(data, 0) + 1
        arrived_at.setdefault(data, record["ApproximateArrivalTimestamp"].timestamp())
    input_arrival = {r["Data"]: r["ApproximateArrivalTimestamp"].timestamp() for r in inputs}

    received = [d for d in counts if d in expected]
    latencies = [(arrived_at[d] - input_arrival[d]) * 1000 for d in received if d in input_arrival]
    return Summary(
        sent=len(events),
        expected=len(expected),
        received=len(received),
        missing=len(expected) - len(received),
        unexpected=sum(1 for d in counts if d not in expected),
        duplicates=sum(c - 1 for c in counts.values()),
        latency_ms=latency_summary(latencies),
    )


def run_demo(
    admin: Aws,
    pipeline: Pipeline,
    events: int,
    rate: float,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Summary, Provisioned]:
    """Run the whole pipeline once against ``admin``'s endpoint and return the comparison."""
    provisioned = provision(admin, pipeline)
    for change in provisioned.changes:
        log(f"  {change}")

    processor_credentials = assume_role(admin, provisioned.processor_role_arn, 3600)["Credentials"]
    processor_aws = Aws.with_credentials(pipeline.region, processor_credentials, admin.endpoint_url)
    use_utc_timestamps(processor_aws.session)
    worker = Worker(
        processor_config(pipeline, "demo"), processor_aws.client("kinesis"), processor_aws.client("dynamodb")
    )
    worker_thread = threading.Thread(target=worker.run, name="processor")
    worker_thread.start()

    tester = tester_credentials(admin, pipeline, provisioned.tester_role_arn)
    tester_aws = Aws.with_credentials(pipeline.region, tester["Credentials"], admin.endpoint_url)
    tester_kinesis = tester_aws.client("kinesis")
    log(f"  tester assumed {tester['AssumedRoleUser']['Arn']}")

    batch = generate_events(events)
    expected = sum(1 for e in batch if e.anomalous)
    tail = StreamTail(tester_kinesis, pipeline.output.name).start()
    try:
        worker.ready.wait(30)
        with tqdm(total=len(batch), desc="events sent", unit="ev", disable=not show_progress) as bar:
            send_events(tester_kinesis, pipeline.input.name, batch, rate, bar.update)
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        with tqdm(total=expected, desc="anomalies received", unit="ev", disable=not show_progress) as bar:
            while time.monotonic() < deadline:
                bar.update(min(tail.count(), expected) - bar.n)
                if tail.count() >= expected:
                    break
                time.sleep(0.2)
        # A short wait past the last expected anomaly lets late duplicates or strays show up.
        time.sleep(1.0)
    finally:
        tail.stop()
        worker.stop()
        worker_thread.join()

    inputs = read_whole_stream(admin.client("kinesis"), pipeline.input.name)
    return compare(batch, tail.records, inputs), provisioned
