"""KPL aggregates through the whole processor on moto's server: forwards, checkpoints and restarts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import pytest
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.demo import read_whole_stream
from anomaly_pipeline.provisioning import provision
from anomaly_pipeline.spec import Pipeline, StreamSpec
from anomaly_processor.checkpoint import Checkpoint, CheckpointStore
from anomaly_processor.kpl import MAGIC
from anomaly_processor.leases import LeaseTable
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import messages_pb2

from tests.worker_harness import running_worker, wait_for

pytestmark = pytest.mark.e2e


def aggregate(*user_records: tuple[str, bytes]) -> bytes:
    aggregator = RecordAggregator()
    for key, data in user_records:
        assert aggregator.add_user_record(key, data) is None
    packed = aggregator.clear_and_get()
    assert packed is not None
    return bytes(packed.get_contents()[2])


def event(event_id: str, amount: str) -> bytes:
    return f'{{"event_id": "{event_id}", "transaction_amount": {amount}}}'.encode()


@pytest.fixture
def aws(moto_endpoint: str) -> Aws:
    return Aws("eu-west-1", endpoint_url=moto_endpoint)


@pytest.fixture
def pipeline(aws: Aws, example_pipeline: Pipeline) -> Pipeline:
    one_shard = dataclasses.replace(example_pipeline, input=dataclasses.replace(example_pipeline.input, shard_count=1))
    provision(aws, one_shard)
    return one_shard


def put(aws: Aws, stream: str, data: bytes, partition_key: str) -> str:
    return str(
        aws.client("kinesis").put_record(StreamName=stream, Data=data, PartitionKey=partition_key)["SequenceNumber"]
    )


def forwarded(aws: Aws, pipeline: Pipeline) -> list[tuple[bytes, str]]:
    return [(r["Data"], r["PartitionKey"]) for r in read_whole_stream(aws.client("kinesis"), pipeline.output.name)]


def checkpoint(aws: Aws, pipeline: Pipeline) -> Checkpoint | None:
    store = CheckpointStore(aws.client("dynamodb"), pipeline.checkpoint_table)
    items = store.read_all()
    assert len(items) == 1
    return store.read(next(iter(items)))


def only_shard(aws: Aws, pipeline: Pipeline) -> str:
    shards = aws.client("kinesis").list_shards(StreamName=pipeline.input.name)["Shards"]
    assert len(shards) == 1
    return str(shards[0]["ShardId"])


def settle(aws: Aws, pipeline: Pipeline, expected: int) -> None:
    wait_for(lambda: len(forwarded(aws, pipeline)) >= expected, f"{expected} anomalies")
    time.sleep(1.0)  # past the last batch, so a stray forward would show up


def test_aggregate_user_records_forwarded_alone(aws: Aws, pipeline: Pipeline) -> None:
    first, second, third = event("u1", "150"), event("u2", "50"), event("u3", "300")
    plain = event("p1", "150")
    aggregated_sequence = put(
        aws, pipeline.input.name, aggregate(("card-1", first), ("card-2", second), ("card-3", third)), "agg"
    )
    plain_sequence = put(aws, pipeline.input.name, plain, "card-4")

    with running_worker(aws, pipeline, "kpl-test") as worker:
        settle(aws, pipeline, 3)

    assert sorted(forwarded(aws, pipeline)) == sorted([(first, "card-1"), (third, "card-3"), (plain, "card-4")])
    assert checkpoint(aws, pipeline) == Checkpoint(plain_sequence, 0)
    assert int(plain_sequence) > int(aggregated_sequence)
    progress = worker.finished[only_shard(aws, pipeline)]
    assert progress.records == 2
    assert progress.anomalies == 3


def test_checkpoint_after_aggregate_names_last_user_record(aws: Aws, pipeline: Pipeline) -> None:
    records = [("card-1", event("u1", "150")), ("card-2", event("u2", "50")), ("card-3", event("u3", "300"))]
    sequence = put(aws, pipeline.input.name, aggregate(*records), "agg")

    with running_worker(aws, pipeline, "kpl-test"):
        settle(aws, pipeline, 2)

    assert checkpoint(aws, pipeline) == Checkpoint(sequence, 2)


def test_restart_inside_aggregate_resumes_at_next_user_record(aws: Aws, pipeline: Pipeline) -> None:
    users = [(f"card-{i}", event(f"u{i}", amount)) for i, amount in enumerate(["150", "50", "300", "250"])]
    sequence = put(aws, pipeline.input.name, aggregate(*users), "agg")
    plain = event("p1", "150")
    plain_sequence = put(aws, pipeline.input.name, plain, "card-9")
    # A checkpoint left inside the aggregate: user records 0 and 1 were handled before the stop.
    shard_id = only_shard(aws, pipeline)
    assert LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table).create(shard_id, ())
    CheckpointStore(aws.client("dynamodb"), pipeline.checkpoint_table).write(shard_id, Checkpoint(sequence, 1), None)

    with running_worker(aws, pipeline, "kpl-test"):
        settle(aws, pipeline, 3)

    expected = [(users[2][1], users[2][0]), (users[3][1], users[3][0]), (plain, "card-9")]
    assert sorted(forwarded(aws, pipeline)) == sorted(expected)
    assert checkpoint(aws, pipeline) == Checkpoint(plain_sequence, 0)


def test_restart_after_whole_aggregate_repeats_nothing(aws: Aws, pipeline: Pipeline) -> None:
    before = [("card-1", event("b1", "150")), ("card-2", event("b2", "50")), ("card-3", event("b3", "300"))]
    after = [("card-4", event("a1", "500")), ("card-5", event("a2", "5")), ("card-6", event("a3", "101"))]
    put(aws, pipeline.input.name, aggregate(*before), "agg-1")
    with running_worker(aws, pipeline, "kpl-test"):
        settle(aws, pipeline, 2)

    second = put(aws, pipeline.input.name, aggregate(*after), "agg-2")
    with running_worker(aws, pipeline, "kpl-test"):
        settle(aws, pipeline, 4)

    result = forwarded(aws, pipeline)
    expected = [(data, key) for key, data in (before[0], before[2], after[0], after[2])]
    assert sorted(result) == sorted(expected)
    assert len(result) == len(set(result)), "no user record was forwarded twice"
    assert checkpoint(aws, pipeline) == Checkpoint(second, 2)


def test_restart_after_plain_record_repeats_nothing(aws: Aws, pipeline: Pipeline) -> None:
    first = event("p1", "150")
    put(aws, pipeline.input.name, first, "card-1")
    with running_worker(aws, pipeline, "kpl-test"):
        settle(aws, pipeline, 1)
    second = event("p2", "150")
    put(aws, pipeline.input.name, second, "card-2")
    with running_worker(aws, pipeline, "kpl-test"):
        settle(aws, pipeline, 2)
    assert sorted(forwarded(aws, pipeline)) == sorted([(first, "card-1"), (second, "card-2")])


def test_corrupt_aggregate_is_malformed(aws: Aws, pipeline: Pipeline) -> None:
    """A corrupt aggregate is malformed and the records around it are still judged."""
    data = bytearray(aggregate(("card-1", event("u1", "150"))))
    data[-1] ^= 0xFF
    put(aws, pipeline.input.name, bytes(data), "agg")
    after = event("p1", "150")
    put(aws, pipeline.input.name, after, "card-2")

    with running_worker(aws, pipeline, "kpl-test") as worker:
        settle(aws, pipeline, 1)

    assert forwarded(aws, pipeline) == [(after, "card-2")]
    assert worker.finished[only_shard(aws, pipeline)].malformed == 1


def test_non_utf8_partition_key_does_not_block_shard(aws: Aws, pipeline: Pipeline) -> None:
    """The aggregate is dead-lettered whole under its outer partition key, and the record after it is forwarded."""
    with_dead_letters = dataclasses.replace(pipeline, dead_letter=StreamSpec("dead-default-payments", 1))
    provision(aws, with_dead_letters)
    message = messages_pb2.AggregatedRecord()
    message.partition_key_table.extend(["card-1", "card-?"])
    for index in range(2):
        user = message.records.add()
        user.partition_key_index = index
        user.data = event(f"u{index}", "150")
    # protobuf's setters accept only valid UTF-8, so the key's bytes are swapped in after
    # serializing. The placeholder has the same length, so the field's length prefix stays right.
    body = message.SerializeToString().replace(b"card-?", b"card-\xff")
    corrupt = MAGIC + body + hashlib.md5(body).digest()
    corrupt_sequence = put(aws, pipeline.input.name, corrupt, "agg")
    after = event("p1", "150")
    after_sequence = put(aws, pipeline.input.name, after, "card-2")

    with running_worker(aws, with_dead_letters, "kpl-test") as worker:
        settle(aws, pipeline, 1)

    assert forwarded(aws, pipeline) == [(after, "card-2")]
    assert worker.finished[only_shard(aws, pipeline)].malformed == 1
    assert checkpoint(aws, pipeline) == Checkpoint(after_sequence, 0)
    letters = [json.loads(r["Data"]) for r in read_whole_stream(aws.client("kinesis"), "dead-default-payments")]
    assert len(letters) == 1
    assert letters[0]["sequenceNumber"] == corrupt_sequence
    assert letters[0]["partitionKey"] == "agg"
    assert letters[0]["reason"] == "corrupt_aggregate"
    assert letters[0]["detail"] == "user record 1 has a partition key of 6 bytes that is not valid UTF-8"
