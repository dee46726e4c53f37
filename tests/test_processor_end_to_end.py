"""The processor over HTTP against moto's server: what is forwarded, batching, restarts."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pytest
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.demo import read_whole_stream
from anomaly_pipeline.provisioning import provision
from anomaly_pipeline.spec import Pipeline
from anomaly_processor.checkpoint import CheckpointStore

from tests.worker_harness import FAST_FAIL, running_worker, wait_for

pytestmark = pytest.mark.e2e


MIXED_INPUTS = [
    b'{"event_id":"a","transaction_amount":150}',
    b'{ref: "X"}',
    b"\xff\xfe",
    b"[]",
    b'"txt"',
    b'{"event_id":"b"}',
    b'{"transaction_amount":null}',
    b'{"transaction_amount":"150"}',
    b'{"transaction_amount":true}',
    b'{"event_id":"c","transaction_amount":100.01}',
    b'{"event_id":"d","transaction_amount":1e2}',
    b'{"event_id":"e","transaction_amount":-500}',
]


@pytest.fixture
def aws(moto_endpoint: str) -> Aws:
    return Aws("eu-west-1", endpoint_url=moto_endpoint)


@pytest.fixture
def three_shard_pipeline(aws: Aws, example_pipeline: Pipeline) -> Pipeline:
    pipeline = dataclasses.replace(example_pipeline, input=dataclasses.replace(example_pipeline.input, shard_count=3))
    provision(aws, pipeline)
    return pipeline


class PutRecordsCalls:
    """Counts the entries of each PutRecords call a client makes."""

    def __init__(self, client: Any) -> None:
        self.sizes: list[int] = []
        client.meta.events.register("provide-client-params.kinesis.PutRecords", self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self.sizes.append(len(params["Records"]))


def put(aws: Aws, stream: str, payloads: list[bytes], key_prefix: str = "k") -> None:
    kinesis = aws.client("kinesis")
    for start in range(0, len(payloads), 500):
        chunk = payloads[start : start + 500]
        records = [{"Data": data, "PartitionKey": f"{key_prefix}{start + i}"} for i, data in enumerate(chunk)]
        response = kinesis.put_records(StreamName=stream, Records=records)
        assert response["FailedRecordCount"] == 0


def input_data_by_position(kinesis: Any, stream: str) -> dict[tuple[str, str], bytes]:
    """Map (shard id, sequence number) to the record's bytes, for every record now in the stream."""
    positions: dict[tuple[str, str], bytes] = {}
    for shard in kinesis.list_shards(StreamName=stream)["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        for record in kinesis.get_records(ShardIterator=iterator, Limit=10_000)["Records"]:
            positions[(shard["ShardId"], record["SequenceNumber"])] = record["Data"]
    return positions


def test_only_valid_anomalies_are_forwarded_byte_identical(
    aws: Aws, three_shard_pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = three_shard_pipeline
    put(aws, pipeline.input.name, MIXED_INPUTS)
    kinesis = aws.client("kinesis")
    data_at = input_data_by_position(kinesis, pipeline.input.name)

    with caplog.at_level(logging.WARNING, logger="anomaly_processor"), running_worker(aws, pipeline) as worker:
        wait_for(lambda: len(read_whole_stream(kinesis, pipeline.output.name)) >= 2, "2 anomalies")
        time.sleep(1.0)  # past the last batch, so a stray forward would show up

    forwarded = read_whole_stream(kinesis, pipeline.output.name)
    assert sorted(r["Data"] for r in forwarded) == sorted([MIXED_INPUTS[0], MIXED_INPUTS[9]])
    keys = {r["Data"]: r["PartitionKey"] for r in forwarded}
    assert keys[MIXED_INPUTS[0]] == "k0", "the original partition key is kept"
    assert keys[MIXED_INPUTS[9]] == "k9"

    assert sum(p.records for p in worker.finished.values()) == 12
    assert sum(p.malformed for p in worker.finished.values()) == 8
    malformed_lines = [r for r in caplog.records if r.getMessage() == "malformed record not forwarded"]
    logged = {(r.__dict__["shard"], r.__dict__["sequence_number"]) for r in malformed_lines}
    assert len(logged) == 8
    assert {data_at[position] for position in logged} == set(MIXED_INPUTS[1:9])
    assert all(r.__dict__["detail"] for r in malformed_lines), "each line says what exactly was wrong"


def test_every_shard_is_read_and_checkpointed(aws: Aws, three_shard_pipeline: Pipeline) -> None:
    pipeline = three_shard_pipeline
    payloads = [b'{"event_id":"%d","transaction_amount":500}' % i for i in range(60)]
    put(aws, pipeline.input.name, payloads)
    kinesis = aws.client("kinesis")

    with running_worker(aws, pipeline) as worker:
        wait_for(lambda: len(read_whole_stream(kinesis, pipeline.output.name)) >= 60, "60 anomalies")

    store = CheckpointStore(aws.client("dynamodb"), pipeline.checkpoint_table)
    items = store.read_all()
    shards = {s["ShardId"] for s in kinesis.list_shards(StreamName=pipeline.input.name)["Shards"]}
    written = {shard for shard, item in items.items() if "checkpoint" in item}
    used = {r["SequenceNumber"] for r in read_whole_stream(kinesis, pipeline.input.name)}
    assert written == shards, "each shard received records and has a checkpoint"
    assert all(items[s]["checkpoint"]["S"] in used for s in written)
    assert sum(p.records for p in worker.finished.values()) == 60


def test_put_records_calls_carry_at_most_500(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = dataclasses.replace(example_pipeline, input=dataclasses.replace(example_pipeline.input, shard_count=1))
    provision(aws, pipeline)
    payloads = [b'{"event_id":"%d","transaction_amount":101}' % i for i in range(1234)]
    put(aws, pipeline.input.name, payloads)
    kinesis = aws.client("kinesis")

    forwarding_client = aws.client("kinesis", FAST_FAIL)
    calls = PutRecordsCalls(forwarding_client)
    with running_worker(aws, pipeline, kinesis=forwarding_client):
        wait_for(lambda: len(read_whole_stream(kinesis, pipeline.output.name)) >= 1234, "1,234 anomalies")

    forwarded = read_whole_stream(kinesis, pipeline.output.name)
    assert sorted(r["Data"] for r in forwarded) == sorted(payloads)
    assert max(calls.sizes) == 500
    assert sum(calls.sizes) == 1234


def test_restart_resumes_after_checkpoint_without_loss_or_repeat(aws: Aws, three_shard_pipeline: Pipeline) -> None:
    pipeline = three_shard_pipeline
    first = [b'{"event_id":"first-%d","transaction_amount":200}' % i for i in range(30)]
    second = [b'{"event_id":"second-%d","transaction_amount":200}' % i for i in range(30)]
    kinesis = aws.client("kinesis")

    put(aws, pipeline.input.name, first, "first")
    with running_worker(aws, pipeline):
        wait_for(lambda: len(read_whole_stream(kinesis, pipeline.output.name)) >= 30, "the first 30 anomalies")

    store = CheckpointStore(aws.client("dynamodb"), pipeline.checkpoint_table)
    assert any("checkpoint" in item for item in store.read_all().values())
    put(aws, pipeline.input.name, second, "second")
    with running_worker(aws, pipeline):
        wait_for(lambda: len(read_whole_stream(kinesis, pipeline.output.name)) >= 60, "all 60 anomalies")
        time.sleep(1.0)

    forwarded = [r["Data"] for r in read_whole_stream(kinesis, pipeline.output.name)]
    assert sorted(forwarded) == sorted(first + second)
    assert len(forwarded) == len(set(forwarded)), "nothing checkpointed was forwarded twice"
