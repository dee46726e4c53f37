"""Helpers for the lease, resharding and fault tests: workers in threads, events, waits.

Workers run in threads of the test process with short lease timings, so that expiry and
takeover take seconds. Every worker has its own boto3 clients, as separate processes would.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from anomaly_pipeline.aws import Aws
from anomaly_pipeline.spec import Pipeline, processor_config
from anomaly_processor.checkpoint import KEY
from anomaly_processor.leases import Lease, LeaseSettings, LeaseTable
from anomaly_processor.worker import Worker
from botocore.config import Config

# Expiry after 3 s; renewals, table reads and shard listings a few times a second.
FAST_LEASES: Final = LeaseSettings(duration=3.0, renew_interval=0.5, scan_interval=0.2, discovery_interval=0.5)
# Fail fast on moto's HTTP 500 for a malformed request, but keep one retry for a dropped connection.
CLIENT_CONFIG: Final = Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=2, read_timeout=10)
THRESHOLD: Final = 100
ACTIVE_TIMEOUT_SECONDS: Final = 10.0


@dataclass
class RunningWorker:
    worker: Worker
    thread: threading.Thread
    kinesis: Any
    dynamodb: Any

    def stop(self, timeout: float = 30.0) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"worker {self.worker.worker_id} did not stop within {timeout} s"


def start_worker(
    aws: Aws,
    pipeline: Pipeline,
    worker_id: str,
    settings: LeaseSettings = FAST_LEASES,
    prepare: Callable[[Any, Any], None] | None = None,
) -> RunningWorker:
    """Start a worker in a thread; ``prepare`` may register fault hooks on its clients first."""
    kinesis = aws.client("kinesis", CLIENT_CONFIG)
    dynamodb = aws.client("dynamodb", CLIENT_CONFIG)
    if prepare is not None:
        prepare(kinesis, dynamodb)
    worker = Worker(processor_config(pipeline, worker_id), kinesis, dynamodb, lease_settings=settings)
    thread = threading.Thread(target=worker.run, name=f"worker-{worker_id}")
    thread.start()
    return RunningWorker(worker, thread, kinesis, dynamodb)


class WorkerPool(list[RunningWorker]):
    """Workers started for one test; ``running_workers`` stops every one still running."""

    def __init__(self, aws: Aws, pipeline: Pipeline, **kwargs: Any) -> None:
        super().__init__()
        self._aws = aws
        self._pipeline = pipeline
        self._kwargs = kwargs

    def start(self, worker_id: str) -> RunningWorker:
        running = start_worker(self._aws, self._pipeline, worker_id, **self._kwargs)
        self.append(running)
        return running


@contextmanager
def running_workers(aws: Aws, pipeline: Pipeline, *worker_ids: str, **kwargs: Any) -> Iterator[WorkerPool]:
    pool = WorkerPool(aws, pipeline, **kwargs)
    try:
        for worker_id in worker_ids:
            pool.start(worker_id)
        yield pool
    finally:
        for running in pool:
            if running.thread.is_alive():
                running.stop()


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, details: Callable[[], str] | None = None
) -> float:
    """Poll ``condition`` until it is true; return the seconds it took, or fail naming ``what``.

    ``details`` adds the state at the timeout to the failure message.
    """
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            extra = f"; {details()}" if details else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(0.05)
    return time.monotonic() - started


def leases(aws: Aws, pipeline: Pipeline) -> dict[str, Lease]:
    return LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table).scan()


def owners(aws: Aws, pipeline: Pipeline) -> dict[str, str | None]:
    """Map each shard that is not read to its end to its lease owner."""
    return {shard: lease.owner for shard, lease in leases(aws, pipeline).items() if not lease.ended}


def event(event_id: str, amount: int) -> bytes:
    return json.dumps({"event_id": event_id, "transaction_amount": amount}).encode()


def events(prefix: str, count: int, anomaly_every: int = 3) -> list[tuple[str, bytes]]:
    """Return ``count`` (event id, data) pairs; every ``anomaly_every``-th is above the threshold."""
    return [
        (f"{prefix}-{index}", event(f"{prefix}-{index}", 500 if index % anomaly_every == 0 else 5))
        for index in range(count)
    ]


def anomaly_ids(batch: list[tuple[str, bytes]]) -> set[str]:
    return {event_id for event_id, data in batch if json.loads(data)["transaction_amount"] > THRESHOLD}


def put_events(kinesis: Any, stream: str, batch: list[tuple[str, bytes]], key: Callable[[str], str] = str) -> None:
    """Write events with PutRecords, resending entries that fail; the partition key defaults to the event id."""
    for start in range(0, len(batch), 500):
        pending = [{"Data": data, "PartitionKey": key(event_id)} for event_id, data in batch[start : start + 500]]
        while pending:
            response = kinesis.put_records(StreamName=stream, Records=pending)
            pending = [p for p, r in zip(pending, response["Records"], strict=True) if "ErrorCode" in r]


def read_stream(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    """Read every record now in every shard of a stream, in each shard's order."""
    records: list[dict[str, Any]] = []
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            response = kinesis.get_records(ShardIterator=iterator, Limit=10_000)
            records.extend({**record, "ShardId": shard["ShardId"]} for record in response["Records"])
            iterator = response.get("NextShardIterator")
            if not response["Records"]:
                break
    return records


def forwarded_ids(kinesis: Any, stream: str) -> list[str]:
    """Return the event ids in the anomaly stream, one per record, duplicates included."""
    return [json.loads(record["Data"])["event_id"] for record in read_stream(kinesis, stream)]


def wait_active(kinesis: Any, stream: str) -> None:
    wait_for(
        lambda: (
            kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"
        ),
        ACTIVE_TIMEOUT_SECONDS,
        f"stream {stream} to become ACTIVE",
    )


def kinesalite_pipeline(aws: Aws, example: Pipeline, name: str, shards: int) -> Pipeline:
    """Create the input and anomaly streams on kinesalite and the checkpoint table on moto."""
    pipeline = dataclasses.replace(
        example,
        input=dataclasses.replace(example.input, name=f"input-{name}", shard_count=shards),
        output=dataclasses.replace(example.output, name=f"anomalies-{name}", shard_count=1),
    )
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName=pipeline.input.name, ShardCount=shards)
    kinesis.create_stream(StreamName=pipeline.output.name, ShardCount=1)
    wait_active(kinesis, pipeline.input.name)
    wait_active(kinesis, pipeline.output.name)
    aws.client("dynamodb").create_table(
        TableName=pipeline.checkpoint_table,
        AttributeDefinitions=[{"AttributeName": KEY, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": KEY, "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return pipeline


def open_shards(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    return [shard for shard in shards if "EndingSequenceNumber" not in shard["SequenceNumberRange"]]
