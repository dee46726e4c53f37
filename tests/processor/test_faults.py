"""Faults that neither moto nor kinesalite produce, injected at the boto3 client with botocore hooks.

Throttling and expired iterators are returned by ``before-call`` handlers instead of the
server's response; partial PutRecords failures drop entries from the request in
``before-parameter-build`` and report them as failed in ``after-call``, so a failed entry
never reaches the stream. The processor's code is not patched: it sees what a real
client would return. The endpoint outage stops moto's server for 30 s.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.emulator import HOST, free_port
from anomaly_pipeline.provisioning import provision
from anomaly_pipeline.spec import Pipeline
from anomaly_processor import forwarder as forwarder_module
from anomaly_processor.forwarder import BACKOFF_BASE_SECONDS, BACKOFF_MAX_SECONDS, Entry, Forwarder
from anomaly_processor.reader import ShardReader
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from prometheus_client import REGISTRY

from tests.processor.lease_harness import (
    CLIENT_CONFIG,
    anomaly_ids,
    events,
    forwarded_ids,
    leases,
    put_events,
    running_workers,
    wait_for,
)

pytestmark = pytest.mark.e2e


def error_response(code: str, status: int = 400) -> tuple[AWSResponse, dict[str, Any]]:
    """Return what botocore's ``before-call`` expects: an HTTP response and its parsed body."""
    parsed = {"Error": {"Code": code, "Message": f"injected {code}"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return AWSResponse("http://127.0.0.1/injected", status, HTTPHeaders(), None), parsed


class FailCalls:
    """Return an error code for the next ``count`` calls of one operation, then let calls through."""

    def __init__(self, client: Any, operation: str, code: str, count: int = 0) -> None:
        self.code = code
        self.remaining = count
        self.injected = 0
        self._lock = threading.Lock()
        client.meta.events.register(f"before-call.kinesis.{operation}", self._answer)

    def arm(self, count: int) -> None:
        with self._lock:
            self.remaining = count

    def _answer(self, **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        with self._lock:
            if self.remaining <= 0:
                return None
            self.remaining -= 1
            self.injected += 1
        return error_response(self.code)


class RecordedCalls:
    """Records the parameters of every call of one operation, with the time order across operations."""

    def __init__(self, client: Any, service: str, operation: str, log: list[tuple[str, dict[str, Any]]]) -> None:
        self._log = log
        self._operation = operation
        client.meta.events.register(f"provide-client-params.{service}.{operation}", self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self._log.append((self._operation, dict(params)))


def record_jitter(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """Make the backoff's random draw return the middle of its range, and record each range."""
    ranges: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        ranges.append((low, high))
        return (low + high) / 2

    monkeypatch.setattr(forwarder_module.random, "uniform", uniform)
    return ranges


def expected_caps(attempts: int) -> list[float]:
    return [min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt) for attempt in range(1, attempts + 1)]


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def aws(moto_endpoint: str) -> Aws:
    return Aws("eu-west-1", endpoint_url=moto_endpoint)


@pytest.fixture
def pipeline(aws: Aws, example_pipeline: Pipeline) -> Pipeline:
    one_shard = dataclasses.replace(example_pipeline, input=dataclasses.replace(example_pipeline.input, shard_count=1))
    provision(aws, one_shard)
    return one_shard


def test_get_records_throttling_backs_off(aws: Aws, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    kinesis = aws.client("kinesis", CLIENT_CONFIG)
    batch = events("read", 12)
    put_events(kinesis, pipeline.input.name, batch)
    shard = kinesis.list_shards(StreamName=pipeline.input.name)["Shards"][0]["ShardId"]
    ranges = record_jitter(monkeypatch)
    throttle = FailCalls(kinesis, "GetRecords", "ProvisionedThroughputExceededException", count=6)
    retries_before = sample(
        "anomaly_processor_get_retries_total",
        {"stream": pipeline.input.name, "reason": "ProvisionedThroughputExceededException"},
    )
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    reader = ShardReader(kinesis, pipeline.input.name, shard, None, "TRIM_HORIZON", 0.2, sleep, lambda: now[0])
    results = [reader.read() for _ in range(7)]

    assert results[:6] == [None] * 6, "each throttled call returns no batch, and the reader survives"
    final = results[6]
    assert final is not None
    assert [r["Data"] for r in final.records] == [data for _, data in batch]
    assert throttle.injected == 6
    assert [high for _, high in ranges] == expected_caps(6), "full jitter up to a doubling cap"
    assert all(low == 0 for low, _ in ranges)
    # The first call does not wait; each later one waits the jittered backoff, at least the poll interval.
    assert waits == pytest.approx([max(0.2, cap / 2) for cap in expected_caps(6)])
    retries_after = sample(
        "anomaly_processor_get_retries_total",
        {"stream": pipeline.input.name, "reason": "ProvisionedThroughputExceededException"},
    )
    assert retries_after - retries_before == 6


def test_put_records_throttling_backs_off(aws: Aws, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    kinesis = aws.client("kinesis", CLIENT_CONFIG)
    ranges = record_jitter(monkeypatch)
    throttle = FailCalls(kinesis, "PutRecords", "ProvisionedThroughputExceededException", count=4)
    waits: list[float] = []
    entries = [Entry(data, event_id, time.time()) for event_id, data in events("put", 5, anomaly_every=1)]

    calls = Forwarder(kinesis, pipeline.output.name, "shardId-000000000000", sleep=waits.append).forward(entries)

    assert calls == 5, "four throttled calls and one accepted call"
    assert throttle.injected == 4
    assert [high for _, high in ranges] == expected_caps(4)
    assert waits == [cap / 2 for cap in expected_caps(4)]
    assert sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(f"put-{i}" for i in range(5))


class PartialFailures:
    """Fails the entries at odd positions of the next ``calls`` PutRecords calls of more than one entry.

    The failed entries are removed from the request before it is sent and reported back
    with ``ProvisionedThroughputExceededException``, as Kinesis reports a partial failure.
    """

    def __init__(self, client: Any, calls: int) -> None:
        self.remaining = calls
        client.meta.events.register("before-parameter-build.kinesis.PutRecords", self._drop)
        client.meta.events.register("after-call.kinesis.PutRecords", self._report)

    def _drop(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        records = params["Records"]
        if self.remaining <= 0 or len(records) < 2:
            return
        self.remaining -= 1
        context["failed_positions"] = list(range(1, len(records), 2))
        params["Records"] = records[0::2]

    def _report(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        failed = context.get("failed_positions")
        if not failed or "Records" not in parsed:
            return
        accepted = iter(parsed["Records"])
        total = len(parsed["Records"]) + len(failed)
        results = []
        for position in range(total):
            if position in failed:
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "injected"})
            else:
                results.append(next(accepted))
        parsed["Records"] = results
        parsed["FailedRecordCount"] = len(failed)


def ids_of(params: dict[str, Any]) -> list[str]:
    return [json.loads(record["Data"])["event_id"] for record in params["Records"]]


def test_failed_entries_resent_alone_before_checkpoint(aws: Aws, pipeline: Pipeline) -> None:
    batch = events("partial", 30)
    put_events(aws.client("kinesis"), pipeline.input.name, batch)
    calls: list[tuple[str, dict[str, Any]]] = []

    def prepare(kinesis: Any, dynamodb: Any) -> None:
        PartialFailures(kinesis, calls=3)
        RecordedCalls(kinesis, "kinesis", "PutRecords", calls)
        RecordedCalls(dynamodb, "dynamodb", "UpdateItem", calls)

    with running_workers(aws, pipeline, "w1", prepare=prepare):
        kinesis = aws.client("kinesis")
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 10, 15, "10 anomalies")
        time.sleep(1.0)

    forwarded = forwarded_ids(kinesis, pipeline.output.name)
    assert sorted(forwarded) == sorted(anomaly_ids(batch)), "every anomaly exactly once"
    steps = [
        (name, ids_of(params) if name == "PutRecords" else params["UpdateExpression"])
        for name, params in calls
        if name == "PutRecords" or "#checkpoint" in params.get("UpdateExpression", "")
    ]
    first, second, third, fourth = (ids for _, ids in steps[:4])
    assert [name for name, _ in steps[:5]] == ["PutRecords"] * 4 + ["UpdateItem"], "the checkpoint waits"
    assert len(first) == 10
    assert second == first[1::2], "only the failed entries are resent"
    assert third == second[1::2]
    assert fourth == third[1::2]


def test_expired_iterator_resumes_after_checkpoint(aws: Aws, pipeline: Pipeline) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    faults: list[FailCalls] = []

    def prepare(kinesis: Any, dynamodb: Any) -> None:
        faults.append(FailCalls(kinesis, "GetRecords", "ExpiredIteratorException"))
        RecordedCalls(kinesis, "kinesis", "GetShardIterator", calls)

    kinesis = aws.client("kinesis")
    first, second = events("first", 15), events("second", 15)
    with running_workers(aws, pipeline, "w1", prepare=prepare) as (w1,):
        put_events(kinesis, pipeline.input.name, first)
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 5, 15, "the first anomalies")
        wait_for(lambda: next(iter(leases(aws, pipeline).values())).checkpoint is not None, 5, "a checkpoint")
        checkpoint = next(iter(leases(aws, pipeline).values())).checkpoint
        assert checkpoint is not None
        faults[0].arm(2)
        wait_for(lambda: faults[0].injected == 2, 10, "two expired iterators")
        put_events(kinesis, pipeline.input.name, second)
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 10, 15, "the second anomalies")
        time.sleep(1.0)
        held = w1.worker.held_shards()

    assert held == [next(iter(leases(aws, pipeline)))], "the worker kept its lease"
    iterators = [params for _, params in calls]
    assert iterators[0]["ShardIteratorType"] == "TRIM_HORIZON"
    resumed = {**iterators[0], "ShardIteratorType": "AFTER_SEQUENCE_NUMBER"}
    resumed["StartingSequenceNumber"] = checkpoint.sequence_number
    assert iterators[1:] == [resumed, resumed], "each new iterator starts after the checkpoint"
    forwarded = forwarded_ids(kinesis, pipeline.output.name)
    assert sorted(forwarded) == sorted(anomaly_ids(first) | anomaly_ids(second)), "nothing forwarded twice"


def test_unexpected_errors_do_not_crash_worker(aws: Aws, pipeline: Pipeline) -> None:
    explosions = [1]  # the first GetRecords that gets past the throttling raises a RuntimeError

    def explode(**_: Any) -> None:
        if explosions[0] > 0:
            explosions[0] -= 1
            raise RuntimeError("injected: a bug in a library below the processor")

    def prepare(kinesis: Any, dynamodb: Any) -> None:
        FailCalls(kinesis, "PutRecords", "ProvisionedThroughputExceededException", count=3)
        FailCalls(kinesis, "GetRecords", "ProvisionedThroughputExceededException", count=3)
        FailCalls(kinesis, "ListShards", "LimitExceededException", count=2)
        kinesis.meta.events.register("before-call.kinesis.GetRecords", explode)

    kinesis = aws.client("kinesis")
    batch = events("survive", 30)
    with running_workers(aws, pipeline, "w1", prepare=prepare) as (w1,):
        put_events(kinesis, pipeline.input.name, batch)
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 10, 20, "every anomaly")
        time.sleep(1.0)
        assert explosions == [0]
        assert w1.thread.is_alive()
        assert len(w1.worker.held_shards()) == 1

    assert sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(anomaly_ids(batch))


def restartable_moto(port: int) -> Callable[[], Callable[[], None]]:
    """Return a function that starts moto's server on ``port`` and returns its stop function."""
    from moto.server import ThreadedMotoServer

    def start() -> Callable[[], None]:
        server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
        server.start()
        return server.stop

    return start


def test_endpoint_down_30s_loses_nothing(moto_endpoint: str, example_pipeline: Pipeline) -> None:
    # moto keeps its state in this process, so a second server on another port serves the same streams
    # and table. Stopping that server takes AWS away from the worker, and the state survives.
    port = free_port()
    start = restartable_moto(port)
    stop = start()
    aws = Aws("eu-west-1", endpoint_url=f"http://{HOST}:{port}")
    pipeline = dataclasses.replace(example_pipeline, input=dataclasses.replace(example_pipeline.input, shard_count=2))
    provision(aws, pipeline)
    kinesis = Aws("eu-west-1", endpoint_url=moto_endpoint).client("kinesis")
    before, after = events("before", 30), events("after", 30)
    try:
        with running_workers(aws, pipeline, "w1") as (w1,):
            put_events(kinesis, pipeline.input.name, before)
            wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 10, 15, "the first anomalies")
            stop()
            down_at = time.monotonic()
            time.sleep(30.0)
            assert w1.thread.is_alive(), "the worker survives 30 s without AWS"
            stop = start()
            put_events(kinesis, pipeline.input.name, after)
            recovered = wait_for(
                lambda: len(set(forwarded_ids(kinesis, pipeline.output.name))) >= 20, 40, "the later anomalies"
            )
            print(f"\nall anomalies forwarded {recovered:.1f} s after a 30 s outage ended")
            time.sleep(1.0)
            assert sorted(w1.worker.held_shards()) == sorted(leases(aws, pipeline)), "the worker holds both again"
            assert time.monotonic() - down_at > 30
    finally:
        stop()

    forwarded = forwarded_ids(kinesis, pipeline.output.name)
    assert set(forwarded) == anomaly_ids(before) | anomaly_ids(after), "nothing lost, nothing unexpected"
    print(f"duplicates after the outage: {len(forwarded) - len(set(forwarded))}")
