"""Shard leases shared by several workers, on moto's server: items, spread, loss, expiry, release.

The balancing rules are tested as a pure function first. The rest runs real workers in
threads against moto's DynamoDB and Kinesis, with a 3 s lease duration.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter

import pytest
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.provisioning import provision
from anomaly_pipeline.spec import Pipeline, processor_config
from anomaly_processor import metrics
from anomaly_processor.checkpoint import SHARD_END, Checkpoint, CheckpointConflictError, CheckpointStore
from anomaly_processor.leases import ExpiryClock, Lease, LeaseSettings, LeaseTable, plan_leases, should_hand_off
from anomaly_processor.worker import Worker

from tests.processor.lease_harness import (
    FAST_LEASES,
    anomaly_ids,
    events,
    forwarded_ids,
    leases,
    owners,
    put_events,
    running_workers,
    wait_for,
)


def lease(shard: str, owner: str | None, counter: int = 1, **kwargs: object) -> Lease:
    return Lease(shard, owner, counter, None, **kwargs)  # type: ignore[arg-type]


def never_expired(_: Lease) -> bool:
    return False


# Balancing, as a pure function


def test_plan_takes_free_leases_up_to_fair_share() -> None:
    table = {f"s{i}": lease(f"s{i}", None) for i in range(4)} | {"s4": lease("s4", "other")}
    plan = plan_leases(table, "me", held=[], expired=never_expired, rng=random.Random(1))
    assert plan.target == 3, "5 shards over 2 live workers: the fair share rounded up"
    assert len(plan.take) == 3
    assert all(taken.owner is None for taken in plan.take)
    assert plan.request is None


def test_plan_requests_handoff_only_from_worker_two_above() -> None:
    crowded = {f"s{i}": lease(f"s{i}", "busy") for i in range(4)}
    plan = plan_leases(crowded, "me", held=[], expired=never_expired)
    assert plan.take == []
    assert plan.request is not None
    assert plan.request.owner == "busy"

    even = {"s0": lease("s0", "a"), "s1": lease("s1", "b"), "s2": lease("s2", "me")}
    assert plan_leases(even, "me", held=["s2"], expired=never_expired).request is None
    one_above = {"s0": lease("s0", "a"), "s1": lease("s1", "a"), "s2": lease("s2", "me")}
    assert plan_leases(one_above, "me", held=["s2"], expired=never_expired).request is None


def test_plan_asks_nothing_while_its_request_is_pending() -> None:
    table = {f"s{i}": lease(f"s{i}", "busy") for i in range(4)}
    table["s0"] = lease("s0", "busy", requested_by="me")
    assert plan_leases(table, "me", held=[], expired=never_expired).request is None


def test_plan_skips_children_until_parents_end() -> None:
    parent = Lease("p", None, 3, Checkpoint("49590338271490256608559692538361571095921575989136588898"))
    child = Lease("c", None, 0, None, parent_ids=("p",))
    plan = plan_leases({"p": parent, "c": child}, "me", held=[], expired=never_expired)
    assert [taken.shard_id for taken in plan.take] == ["p"]

    ended = dataclasses.replace(parent, checkpoint=Checkpoint(SHARD_END))
    plan = plan_leases({"p": ended, "c": child}, "me", held=[], expired=never_expired)
    assert [taken.shard_id for taken in plan.take] == ["c"]


def test_plan_takes_expired_and_own_leases() -> None:
    table = {"s0": lease("s0", "dead"), "s1": lease("s1", "me"), "s2": lease("s2", "alive")}
    plan = plan_leases(table, "me", held=[], expired=lambda item: item.owner == "dead")
    assert {taken.shard_id for taken in plan.take} == {"s0", "s1"}
    busy = plan_leases(table, "me", held=[], expired=lambda item: item.owner == "dead", busy=["s0"])
    assert {taken.shard_id for taken in busy.take} == {"s1"}, "a shard whose consumer is still stopping waits"


def test_plan_takes_own_leases_above_fair_share() -> None:
    # "me" holds its fair share of 2 (6 leases, 3 workers), and a lease was handed over to it since.
    table = {f"h{i}": lease(f"h{i}", "me") for i in range(2)} | {"given": lease("given", "me")}
    table |= {"p0": lease("p0", "peer"), "p1": lease("p1", "peer"), "o0": lease("o0", "other")}
    plan = plan_leases(table, "me", held=["h0", "h1"], expired=never_expired)
    assert [taken.shard_id for taken in plan.take] == ["given"]


def test_handoff_granted_only_to_worker_two_below() -> None:
    table = {f"s{i}": lease(f"s{i}", "me") for i in range(3)} | {"s3": lease("s3", "peer")}
    assert should_hand_off(table, "me", "newcomer", mine=3), "3 against 0"
    assert should_hand_off(table, "me", "peer", mine=3), "3 against 1"
    assert not should_hand_off(table, "me", "peer", mine=2), "2 against 1 is already even"


def test_expiry_waits_for_holders_longer_duration() -> None:
    now = [100.0]
    clock = ExpiryClock(10.0, clock=lambda: now[0])
    # The holder runs with a 60 s lease and renews every 12 s, as during a rollout that shortens it.
    held = lease("s0", "old-pod", counter=5, duration=60.0)
    clock.observe({"s0": held})
    now[0] += 11.0
    assert not clock.expired(held)
    now[0] += 49.0
    assert clock.expired(held)


def test_expiry_counts_from_last_counter_change() -> None:
    now = [100.0]
    clock = ExpiryClock(3.0, clock=lambda: now[0])
    held = lease("s0", "other", counter=5)
    clock.observe({"s0": held})
    now[0] += 2.9
    assert not clock.expired(held)
    now[0] += 0.2
    assert clock.expired(held)
    renewed = lease("s0", "other", counter=6)
    clock.observe({"s0": renewed})
    assert not clock.expired(renewed), "a renewal restarts the expiry"
    assert not clock.expired(lease("s1", None)), "a free lease has nothing to expire"


def test_lease_settings_reject_renewal_slower_than_half_duration() -> None:
    with pytest.raises(ValueError, match="renew_interval"):
        LeaseSettings(duration=4.0, renew_interval=2.0)
    assert LeaseSettings.from_environment({"ANOMALY_PROCESSOR_LEASE_DURATION_SECONDS": "6"}).duration == 6.0
    with pytest.raises(ValueError, match="ANOMALY_PROCESSOR_LEASE_DURATION_SECONDS"):
        LeaseSettings.from_environment({"ANOMALY_PROCESSOR_LEASE_DURATION_SECONDS": "soon"})


# Workers on moto's server


@pytest.fixture
def aws(moto_endpoint: str) -> Aws:
    return Aws("eu-west-1", endpoint_url=moto_endpoint)


def provisioned(aws: Aws, pipeline: Pipeline, shards: int) -> Pipeline:
    pipeline = dataclasses.replace(pipeline, input=dataclasses.replace(pipeline.input, shard_count=shards))
    provision(aws, pipeline)
    return pipeline


def one_taken_lease(aws: Aws, example_pipeline: Pipeline, owner: str) -> tuple[Pipeline, LeaseTable, Lease]:
    """Provision a one-shard pipeline; return it, its lease table and its only lease, taken by ``owner``."""
    pipeline = provisioned(aws, example_pipeline, 1)
    table = LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table)
    shard = aws.client("kinesis").list_shards(StreamName=pipeline.input.name)["Shards"][0]["ShardId"]
    table.create(shard, ())
    taken = table.take(table.scan()[shard], owner)
    assert taken is not None
    return pipeline, table, taken


def owner_counts(aws: Aws, pipeline: Pipeline) -> list[int]:
    return sorted(Counter(owner for owner in owners(aws, pipeline).values() if owner).values())


@pytest.mark.e2e
def test_lease_item_holds_owner_counter_and_checkpoint(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = provisioned(aws, example_pipeline, 2)
    kinesis = aws.client("kinesis")
    batch = events("item", 30)
    with running_workers(aws, pipeline, "w1"):
        wait_for(lambda: set(owners(aws, pipeline).values()) == {"w1"}, 10, "w1 to hold both leases")
        put_events(kinesis, pipeline.input.name, batch)
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 10, 15, "10 anomalies")
        first = leases(aws, pipeline)
        time.sleep(FAST_LEASES.renew_interval * 3)
        later = leases(aws, pipeline)

    assert len(first) == 2
    for shard, item in first.items():
        assert item.owner == "w1"
        assert item.parent_ids == ()
        assert item.duration == FAST_LEASES.duration, "the holder records its lease duration"
        assert later[shard].counter > item.counter, "the holder renews by incrementing the counter"
    assert all(item.checkpoint is not None for item in later.values()), "both shards received events"
    released = leases(aws, pipeline)
    assert all(item.owner is None for item in released.values()), "a stopped worker releases its leases"
    assert sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(anomaly_ids(batch))


@pytest.mark.e2e
def test_workers_spread_shards_evenly_without_duplicates(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = provisioned(aws, example_pipeline, 8)
    kinesis = aws.client("kinesis")
    written: list[tuple[str, bytes]] = []
    stop_writing = threading.Event()

    def write_steadily() -> None:
        round_number = 0
        while not stop_writing.is_set():
            batch = events(f"r{round_number}", 40)
            put_events(kinesis, pipeline.input.name, batch)
            written.extend(batch)
            round_number += 1
            stop_writing.wait(0.25)

    writer = threading.Thread(target=write_steadily)
    writer.start()
    try:
        with running_workers(aws, pipeline, "w1", "w2", "w3") as pool:
            wait_for(lambda: owner_counts(aws, pipeline) == [2, 3, 3], 20, "8 shards spread 3, 3, 2")
            time.sleep(FAST_LEASES.duration)
            assert owner_counts(aws, pipeline) == [2, 3, 3], "the spread stays once stable"

            fourth = pool.start("w4")
            took = wait_for(lambda: owner_counts(aws, pipeline) == [2, 2, 2, 2], 20, "8 shards spread 2, 2, 2, 2")
            print(f"\nfourth worker reached its fair share after {took:.1f} s")
            fourth.stop()
            wait_for(lambda: owner_counts(aws, pipeline) == [2, 3, 3], 20, "8 shards spread 3, 3, 2 again")
            stop_writing.set()
            writer.join()
            expected = anomaly_ids(written)
            wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= len(expected), 20, "every anomaly")
            time.sleep(1.0)  # past the last batch, so a stray duplicate would show up
    finally:
        stop_writing.set()
        writer.join()

    forwarded = forwarded_ids(kinesis, pipeline.output.name)
    assert set(forwarded) == expected
    duplicates = len(forwarded) - len(set(forwarded))
    assert duplicates == 0, "handoffs finish the batch in flight and checkpoint before releasing"


@pytest.mark.e2e
def test_lost_lease_stops_forwarding_and_checkpointing(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = provisioned(aws, example_pipeline, 1)
    kinesis = aws.client("kinesis")
    table = LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table)
    before, after = events("before", 9), events("after", 9)
    lost_before = metrics.LEASES_LOST._value.get()

    with running_workers(aws, pipeline, "w1") as (w1,):
        put_events(kinesis, pipeline.input.name, before)
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) == 3, 10, "the first 3 anomalies")
        (shard,) = leases(aws, pipeline)
        current = leases(aws, pipeline)[shard]
        intruder = table.take(current, "intruder")
        assert intruder is not None
        checkpoint_at_loss = intruder.checkpoint
        wait_for(lambda: w1.worker.held_shards() == [], 5, "w1 to notice that it lost the lease")

        # The intruder keeps its lease alive for longer than the lease duration.
        put_events(kinesis, pipeline.input.name, after)
        counter = intruder.counter
        renew_until = time.monotonic() + FAST_LEASES.duration * 1.5
        while time.monotonic() < renew_until:
            assert table.renew(shard, "intruder", counter)
            counter += 1
            time.sleep(FAST_LEASES.renew_interval)
        assert sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(anomaly_ids(before))
        assert leases(aws, pipeline)[shard].checkpoint == checkpoint_at_loss, "w1 wrote no checkpoint after the loss"
        assert leases(aws, pipeline)[shard].owner == "intruder"

        # The intruder stops renewing: w1 takes the expired lease and resumes from the checkpoint.
        wait_for(lambda: w1.worker.held_shards() == [shard], FAST_LEASES.duration * 3, "w1 to take the lease back")
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 6, 10, "the later anomalies")
        time.sleep(1.0)

    forwarded = forwarded_ids(kinesis, pipeline.output.name)
    assert sorted(forwarded) == sorted(anomaly_ids(before) | anomaly_ids(after))
    assert metrics.LEASES_LOST._value.get() - lost_before == 1


@pytest.mark.e2e
def test_expired_lease_taken_over_from_its_checkpoint(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = provisioned(aws, example_pipeline, 1)
    kinesis = aws.client("kinesis")
    table = LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table)
    shard = kinesis.list_shards(StreamName=pipeline.input.name)["Shards"][0]["ShardId"]
    handled, pending = events("handled", 6), events("pending", 6)
    put_events(kinesis, pipeline.input.name, handled)
    last_handled = kinesis.put_record(
        StreamName=pipeline.input.name, Data=b'{"event_id":"x","transaction_amount":1}', PartitionKey="x"
    )["SequenceNumber"]
    put_events(kinesis, pipeline.input.name, pending)

    # A worker killed after it checkpointed `last_handled` left its lease behind.
    assert table.create(shard, ())
    dead = table.take(leases(aws, pipeline)[shard], "killed-worker")
    assert dead is not None
    CheckpointStore(aws.client("dynamodb"), pipeline.checkpoint_table, owner="killed-worker").write(
        shard, Checkpoint(last_handled), None
    )

    with running_workers(aws, pipeline, "w1") as (w1,):
        started = time.monotonic()
        took = wait_for(lambda: w1.worker.held_shards() == [shard], FAST_LEASES.duration * 3, "the takeover")
        print(f"\nexpired lease taken over {took:.1f} s after the worker started (lease duration 3 s)")
        assert time.monotonic() - started >= FAST_LEASES.duration, "a lease is taken only after its duration"
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 2, 10, "the pending anomalies")
        time.sleep(1.0)

    assert sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(anomaly_ids(pending))


@pytest.mark.e2e
def test_stopped_worker_releases_leases_before_expiry(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = provisioned(aws, example_pipeline, 4)
    slow_expiry = dataclasses.replace(FAST_LEASES, duration=60.0, renew_interval=1.0)
    with running_workers(aws, pipeline, "w1", "w2", settings=slow_expiry) as (w1, w2):
        wait_for(lambda: owner_counts(aws, pipeline) == [2, 2], 20, "2 leases each")
        # From the table: a lease just handed over to w1 counts as w1's before w1 has taken it.
        released = {shard for shard, owner in owners(aws, pipeline).items() if owner == "w1"}
        stopped_at = time.monotonic()
        w1.stop()
        # Well below the 60 s expiry, with room for a loaded machine; the message shows the table if it fails.
        wait_for(
            lambda: all(owners(aws, pipeline)[shard] == "w2" for shard in released),
            30,
            f"w2 to take w1's leases {sorted(released)}",
            details=lambda: f"leases now: {leases(aws, pipeline)}",
        )
        print(f"\nleases of a stopped worker taken {time.monotonic() - stopped_at:.2f} s after the stop request")
        # w2 records a lease as held just after the table write that takes it.
        wait_for(lambda: set(w2.worker.held_shards()) == set(owners(aws, pipeline)), 5, "w2 to hold every lease")


@pytest.mark.e2e
def test_checkpoint_never_moves_backwards(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = provisioned(aws, example_pipeline, 1)
    dynamodb = aws.client("dynamodb")
    table = LeaseTable(dynamodb, pipeline.checkpoint_table)
    assert table.create("shardId-000000000000", ())
    assert table.take(leases(aws, pipeline)["shardId-000000000000"], "w1") is not None
    store = CheckpointStore(dynamodb, pipeline.checkpoint_table, owner="w1")
    early, late = Checkpoint("100"), Checkpoint("200")

    store.write("shardId-000000000000", early, None)
    store.write("shardId-000000000000", late, early)
    with pytest.raises(ValueError, match="would move back"):
        store.write("shardId-000000000000", early, late)
    with pytest.raises(CheckpointConflictError):
        store.write("shardId-000000000000", Checkpoint("300"), early)  # stale: the table contains 200
    other = CheckpointStore(dynamodb, pipeline.checkpoint_table, owner="w2")
    with pytest.raises(CheckpointConflictError, match="w2 no longer holds"):
        other.write("shardId-000000000000", Checkpoint("300"), late)
    assert leases(aws, pipeline)["shardId-000000000000"].checkpoint == late


def latest_pipeline(aws: Aws, example: Pipeline) -> Pipeline:
    pipeline = dataclasses.replace(
        example, input=dataclasses.replace(example.input, shard_count=1, starting_position="LATEST")
    )
    provision(aws, pipeline)
    return pipeline


@pytest.mark.e2e
def test_latest_start_stored_at_first_lease(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = latest_pipeline(aws, example_pipeline)
    kinesis = aws.client("kinesis")
    old, new = events("old", 9), events("new", 9)
    put_events(kinesis, pipeline.input.name, old)
    before = time.time()

    with running_workers(aws, pipeline, "w1") as (w1,):
        wait_for(lambda: len(w1.worker.held_shards()) == 1, 10, "the lease")
        wait_for(lambda: next(iter(leases(aws, pipeline).values())).starting_timestamp, 5, "a starting timestamp")
        put_events(kinesis, pipeline.input.name, new)
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 3, 10, "the new anomalies")
        time.sleep(1.0)

    (stored,) = leases(aws, pipeline).values()
    assert stored.starting_timestamp is not None
    assert before - 1 <= stored.starting_timestamp <= time.time()
    assert sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(anomaly_ids(new)), "LATEST skips old events"


@pytest.mark.e2e
def test_latest_start_survives_takeover(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = latest_pipeline(aws, example_pipeline)
    kinesis = aws.client("kinesis")
    table = LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table)
    shard = kinesis.list_shards(StreamName=pipeline.input.name)["Shards"][0]["ShardId"]
    old, pending = events("old", 9), events("pending", 9)
    put_events(kinesis, pipeline.input.name, old)
    time.sleep(0.1)

    # A worker started reading at LATEST, then was killed before its first checkpoint.
    assert table.create(shard, ())
    dead = table.take(leases(aws, pipeline)[shard], "killed-worker")
    assert dead is not None
    started = table.fix_starting_timestamp(shard, "killed-worker", time.time())
    assert started is not None
    time.sleep(0.1)
    put_events(kinesis, pipeline.input.name, pending)

    with running_workers(aws, pipeline, "w1") as (w1,):
        wait_for(lambda: w1.worker.held_shards() == [shard], FAST_LEASES.duration * 3, "the takeover")
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 3, 10, "the pending anomalies")
        time.sleep(1.0)

    assert leases(aws, pipeline)[shard].starting_timestamp == started, "the first holder's start is kept"
    assert sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(anomaly_ids(pending))


@pytest.mark.e2e
def test_stopped_worker_withdraws_its_handoff_request(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = provisioned(aws, example_pipeline, 4)
    slow_expiry = dataclasses.replace(FAST_LEASES, duration=60.0, renew_interval=1.0)
    table = LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table)
    shard_ids = [s["ShardId"] for s in aws.client("kinesis").list_shards(StreamName=pipeline.input.name)["Shards"]]
    for shard_id in shard_ids:
        table.create(shard_id, ())
        assert table.take(table.scan()[shard_id], "absent") is not None

    with running_workers(aws, pipeline, "w1", settings=slow_expiry) as (w1,):
        # "absent" owns all four leases and never responds, so w1 requests one of them.
        wait_for(lambda: any(lease.requested_by == "w1" for lease in table.scan().values()), 10, "w1's request")
        w1.stop()

    assert all(lease.requested_by is None for lease in table.scan().values())


@pytest.mark.e2e
def test_stopping_worker_releases_untaken_handoff(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = provisioned(aws, example_pipeline, 2)
    table = LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table)
    shard_ids = [s["ShardId"] for s in aws.client("kinesis").list_shards(StreamName=pipeline.input.name)["Shards"]]
    for shard_id in shard_ids:
        table.create(shard_id, ())
    taken = table.take(table.scan()[shard_ids[0]], "w0")
    assert taken is not None
    assert table.request_handoff(shard_ids[0], "w0", "w1")
    assert table.hand_over(shard_ids[0], "w0", taken.counter, "w1")
    assert table.scan()[shard_ids[0]].owner == "w1"

    # Stopped before its first table read, w1 never takes the lease it was handed.
    worker = Worker(processor_config(pipeline, "w1"), aws.client("kinesis"), aws.client("dynamodb"))
    worker.stop()
    worker.run()

    assert table.scan()[shard_ids[0]].owner is None, "the lease waits for no expiry"
    assert worker.held_shards() == []


@pytest.mark.e2e
def test_take_of_lease_ended_meanwhile_releases_it(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline, table, taken = one_taken_lease(aws, example_pipeline, "w0")
    shard = taken.shard_id
    dynamodb = aws.client("dynamodb")
    worker = Worker(processor_config(pipeline, "w1"), aws.client("kinesis"), dynamodb)
    stale = table.scan()[shard]

    # w1 saw w0's lease expire, but w0 was only slow: it read the shard to its end after w1's table read.
    CheckpointStore(dynamodb, pipeline.checkpoint_table, owner="w0").write(shard, Checkpoint(SHARD_END), None)
    try:
        worker._take(stale)
        held = worker.held_shards()
    finally:
        worker.stop()
        worker.run()

    assert held == [], "no consumer starts on an ended shard"
    assert table.scan()[shard].owner is None
    assert table.scan()[shard].ended


@pytest.mark.e2e
def test_handoff_after_withdrawn_request_fails(aws: Aws, example_pipeline: Pipeline) -> None:
    _, table, taken = one_taken_lease(aws, example_pipeline, "w0")
    shard = taken.shard_id
    assert table.request_handoff(shard, "w0", "w1")

    # w0 read w1's request and decided to hand over, but w1 withdrew the request to stop.
    assert table.withdraw_handoff(shard, "w1")

    assert table.hand_over(shard, "w0", taken.counter, "w1") is False
    assert table.scan()[shard].owner == "w0"


@pytest.mark.e2e
def test_renewal_after_lost_response_keeps_lease(aws: Aws, example_pipeline: Pipeline) -> None:
    _, table, taken = one_taken_lease(aws, example_pipeline, "w1")
    shard = taken.shard_id

    # The first renewal reached DynamoDB but its response was lost, so w1 still knows the old counter.
    assert table.renew(shard, "w1", taken.counter) == taken.counter + 1
    renewed = table.renew(shard, "w1", taken.counter)

    assert renewed == taken.counter + 2
    assert table.scan()[shard].owner == "w1"
    assert table.release(shard, "w1", taken.counter)
    assert table.scan()[shard].owner is None


@pytest.mark.e2e
def test_renewal_of_taken_lease_fails(aws: Aws, example_pipeline: Pipeline) -> None:
    _, table, taken = one_taken_lease(aws, example_pipeline, "w1")
    shard = taken.shard_id
    assert table.take(table.scan()[shard], "w2") is not None

    assert table.renew(shard, "w1", taken.counter) is None
    assert table.release(shard, "w1", taken.counter) is False
    assert table.scan()[shard].owner == "w2"
