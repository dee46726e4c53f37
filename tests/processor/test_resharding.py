"""Resharding while events flow: splits and merges on kinesalite, UpdateShardCount on moto.

moto keeps routing new records to a closed parent shard and never ends its iterator, so
splits and merges run on kinesalite, which behaves like Kinesis there. Only Kinesis is
pointed at kinesalite (``AWS_ENDPOINT_URL_KINESIS``); the checkpoint table stays on
moto's server. kinesalite has no UpdateShardCount, so that call is checked on moto, where
only the discovery of the new shards and their parents can be checked.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.provisioning import provision, reconcile_shard_count
from anomaly_pipeline.spec import Pipeline
from anomaly_processor.checkpoint import SHARD_END, Checkpoint, CheckpointStore
from anomaly_processor.leases import LeaseTable

from tests.processor.lease_harness import (
    anomaly_ids,
    events,
    forwarded_ids,
    kinesalite_pipeline,
    leases,
    open_shards,
    put_events,
    read_stream,
    running_workers,
    wait_active,
    wait_for,
)
from tests.tools.kinesalite import run_kinesalite

pytestmark = pytest.mark.e2e

KEYS = 16  # partition keys, each with its own numbered sequence of events


@pytest.fixture(scope="module")
def kinesalite_endpoint() -> Iterator[str]:
    with run_kinesalite() as endpoint:
        yield endpoint


@pytest.fixture
def split_aws(kinesalite_endpoint: str, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    """Return clients that reach Kinesis on kinesalite and every other service on moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite_endpoint)
    return Aws("eu-west-1")


class KeyedWriter:
    """Writes events on a steady schedule, numbering each partition key's events from 0.

    Every third event is an anomaly. ``written`` keeps (key, number, anomalous) in write order.
    """

    def __init__(self, kinesis: Any, stream: str, per_round: int = 32, interval: float = 0.1) -> None:
        self._kinesis = kinesis
        self._stream = stream
        self._per_round = per_round
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyed-writer")
        self.written: list[tuple[str, int, bool]] = []

    def __enter__(self) -> KeyedWriter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        numbers = [0] * KEYS
        index = 0
        while not self._stop.is_set():
            records = []
            for _ in range(self._per_round):
                key = index % KEYS
                anomalous = index % 3 == 0
                event = {"event_id": f"k{key}-{numbers[key]}", "key": key, "n": numbers[key]}
                event["transaction_amount"] = 500 if anomalous else 5
                records.append({"Data": json.dumps(event).encode(), "PartitionKey": f"card-{key}"})
                self.written.append((f"card-{key}", numbers[key], anomalous))
                numbers[key] += 1
                index += 1
            pending = records
            while pending:
                response = self._kinesis.put_records(StreamName=self._stream, Records=pending)
                pending = [p for p, r in zip(pending, response["Records"], strict=True) if "ErrorCode" in r]
            self._stop.wait(self._interval)

    def anomalies(self) -> list[tuple[str, int]]:
        return [(key, number) for key, number, anomalous in self.written if anomalous]


def forwarded_in_order(kinesis: Any, stream: str) -> list[tuple[str, int]]:
    """Return (partition key, number) of each anomaly in the single-shard anomaly stream, in its order."""
    events = [json.loads(record["Data"]) for record in read_stream(kinesis, stream)]
    return [(f"card-{event['key']}", event["n"]) for event in events]


def assert_each_once_in_key_order(forwarded: list[tuple[str, int]], expected: list[tuple[str, int]]) -> None:
    assert len(forwarded) == len(set(forwarded)), "no anomaly is forwarded twice"
    assert set(forwarded) == set(expected), "every anomaly is forwarded, and nothing else"
    for key in {key for key, _ in expected}:
        numbers = [number for k, number in forwarded if k == key]
        assert numbers == sorted(numbers), f"anomalies of partition key {key} are forwarded in order"


def test_split_children_read_after_parent(split_aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = kinesalite_pipeline(split_aws, example_pipeline, "split", 2)
    kinesis = split_aws.client("kinesis")
    parent = open_shards(kinesis, pipeline.input.name)[0]
    hash_range = parent["HashKeyRange"]
    middle = (int(hash_range["StartingHashKey"]) + int(hash_range["EndingHashKey"])) // 2

    with running_workers(split_aws, pipeline, "w1", "w2"), KeyedWriter(kinesis, pipeline.input.name) as writer:
        time.sleep(1.5)
        kinesis.split_shard(
            StreamName=pipeline.input.name, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(middle)
        )
        split_at = time.monotonic()
        wait_for(
            lambda: sum(1 for lease in leases(split_aws, pipeline).values() if lease.parent_ids) == 2,
            15,
            "leases of both children",
        )
        discovered = time.monotonic() - split_at
        wait_for(
            lambda: all(lease.owner for lease in leases(split_aws, pipeline).values() if lease.parent_ids),
            15,
            "both children to be leased",
        )
        read = time.monotonic() - split_at
        time.sleep(1.5)
        writer.stop()
        expected = writer.anomalies()
        wait_for(lambda: len(forwarded_in_order(kinesis, pipeline.output.name)) >= len(expected), 20, "every anomaly")
        time.sleep(1.0)  # past the last batch, so a stray duplicate would show up
    print(f"\nsplit: children's leases created after {discovered:.1f} s, taken after {read:.1f} s")

    assert_each_once_in_key_order(forwarded_in_order(kinesis, pipeline.output.name), expected)
    table = leases(split_aws, pipeline)
    assert table[parent["ShardId"]].ended, "the parent was read to its end"
    children = [lease for lease in table.values() if lease.parent_ids]
    assert [child.parent_ids for child in children] == [(parent["ShardId"],)] * 2


def test_merge_child_read_after_both_parents(split_aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = kinesalite_pipeline(split_aws, example_pipeline, "merge", 2)
    kinesis = split_aws.client("kinesis")
    first, second = sorted(shard["ShardId"] for shard in open_shards(kinesis, pipeline.input.name))

    with running_workers(split_aws, pipeline, "w1", "w2"), KeyedWriter(kinesis, pipeline.input.name) as writer:
        wait_for(lambda: {lease.owner for lease in leases(split_aws, pipeline).values()} == {"w1", "w2"}, 15, "spread")
        time.sleep(1.0)
        kinesis.merge_shards(StreamName=pipeline.input.name, ShardToMerge=first, AdjacentShardToMerge=second)
        merged_at = time.monotonic()
        wait_for(
            lambda: any(lease.owner for lease in leases(split_aws, pipeline).values() if lease.parent_ids),
            15,
            "the merged shard to be leased",
        )
        read = time.monotonic() - merged_at
        time.sleep(1.5)
        writer.stop()
        expected = writer.anomalies()
        wait_for(lambda: len(forwarded_in_order(kinesis, pipeline.output.name)) >= len(expected), 20, "every anomaly")
        time.sleep(1.0)
    print(f"\nmerge: the merged shard was leased {read:.1f} s after MergeShards")

    assert_each_once_in_key_order(forwarded_in_order(kinesis, pipeline.output.name), expected)
    table = leases(split_aws, pipeline)
    assert table[first].ended
    assert table[second].ended
    (child,) = [lease for lease in table.values() if lease.parent_ids]
    assert set(child.parent_ids) == {first, second}


def test_latest_start_skips_children_records_from_before(split_aws: Aws, example_pipeline: Pipeline) -> None:
    created = kinesalite_pipeline(split_aws, example_pipeline, "latest-split", 1)
    pipeline = dataclasses.replace(created, input=dataclasses.replace(created.input, starting_position="LATEST"))
    kinesis = split_aws.client("kinesis")
    parent = open_shards(kinesis, pipeline.input.name)[0]["ShardId"]
    hash_range = open_shards(kinesis, pipeline.input.name)[0]["HashKeyRange"]
    middle = (int(hash_range["StartingHashKey"]) + int(hash_range["EndingHashKey"])) // 2
    kinesis.split_shard(StreamName=pipeline.input.name, ShardToSplit=parent, NewStartingHashKey=str(middle))
    wait_active(kinesis, pipeline.input.name)
    put_events(kinesis, pipeline.input.name, events("before", 30))
    time.sleep(1.0)  # keep the start clear of the arrival timestamps above
    started = round(time.time(), 3)  # stored with millisecond precision
    after = events("after", 30)
    put_events(kinesis, pipeline.input.name, after)

    # A first worker started at LATEST, read the parent to its end and stopped before the children.
    # (kinesalite never responds to an AT_TIMESTAMP iterator request past a shard's last record, so the
    # parent cannot be read at LATEST here.)
    table = LeaseTable(split_aws.client("dynamodb"), pipeline.checkpoint_table)
    table.create(parent, ())
    taken = table.take(table.scan()[parent], "w0")
    assert taken is not None
    assert table.fix_starting_timestamp(parent, "w0", started) == started
    CheckpointStore(split_aws.client("dynamodb"), pipeline.checkpoint_table, owner="w0").write(
        parent, Checkpoint(SHARD_END), None
    )
    assert table.release(parent, "w0", taken.counter)

    with running_workers(split_aws, pipeline, "w1"):
        wait_for(lambda: set(forwarded_ids(kinesis, pipeline.output.name)) >= anomaly_ids(after), 20, "new anomalies")
        time.sleep(1.0)  # past the last batch, so a record from before the start would show up

    assert sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(anomaly_ids(after))


def test_update_shard_count_leases_new_shards(moto_endpoint: str, example_pipeline: Pipeline) -> None:
    aws = Aws("eu-west-1", endpoint_url=moto_endpoint)
    pipeline = dataclasses.replace(example_pipeline, input=dataclasses.replace(example_pipeline.input, shard_count=2))
    provision(aws, pipeline)
    kinesis = aws.client("kinesis")

    with running_workers(aws, pipeline, "w1") as (w1,):
        wait_for(lambda: len(w1.worker.held_shards()) == 2, 10, "both leases")
        assert reconcile_shard_count(aws, pipeline.input.name, 4) == [
            f"changed stream {pipeline.input.name} from 2 to 4 open shards"
        ]
        listed = kinesis.list_shards(StreamName=pipeline.input.name)["Shards"]
        parents = {
            shard["ShardId"]: tuple(p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p)
            for shard in listed
        }
        wait_for(lambda: set(leases(aws, pipeline)) == set(parents), 10, "a lease for every listed shard")
        time.sleep(1.0)
        held = w1.worker.held_shards()

    table = leases(aws, pipeline)
    assert {shard: lease.parent_ids for shard, lease in table.items()} == parents
    assert len(open_shards(kinesis, pipeline.input.name)) == 4
    # moto never ends a closed parent's iterator, so the children wait for their parents here.
    children = {shard for shard, ids in parents.items() if ids}
    assert children
    assert not children & set(held), "no child is read before its parents end"


def test_parent_past_retention_unblocks_children(moto_endpoint: str, example_pipeline: Pipeline) -> None:
    aws = Aws("eu-west-1", endpoint_url=moto_endpoint)
    pipeline = dataclasses.replace(example_pipeline, input=dataclasses.replace(example_pipeline.input, shard_count=1))
    provision(aws, pipeline)
    kinesis = aws.client("kinesis")
    child = kinesis.list_shards(StreamName=pipeline.input.name)["Shards"][0]["ShardId"]
    # The processor was stopped longer than the retention period across a reshard: the parent's lease
    # was never read to its end, and Kinesis no longer lists the parent.
    expired_parent = "shardId-000000000099"
    table = LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table)
    table.create(expired_parent, ())
    table.create(child, (expired_parent,))
    batch = events("after", 30)
    put_events(kinesis, pipeline.input.name, batch)

    with running_workers(aws, pipeline, "w1"):
        wait_for(
            lambda: sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(anomaly_ids(batch)),
            20,
            "the child's anomalies",
            details=lambda: f"leases now: {leases(aws, pipeline)}",
        )
        wait_for(
            lambda: expired_parent not in leases(aws, pipeline),
            10,
            "the ended lease of the expired_parent parent to be deleted",
        )
