"""The chaos run: worker processes killed, stopped and replaced while shards split and merge.

Three ``anomaly-processor`` processes share a 4-shard input stream on kinesalite, with the
checkpoint table on moto's server. 20,000 events are written at a steady rate; every
tenth is an anomaly with a known id. Mid-run the test kills one worker with SIGKILL,
splits one shard, merges two adjacent shards, starts a replacement worker and stops
another worker with SIGTERM.

It asserts that no anomaly is missing, no other event is forwarded, every duplicate comes
from a batch that the killed worker had in flight, and every shard is owned again after
the lease expiry. It prints (and does not assert) the takeover times and the latency
percentiles, because they depend on the machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import pytest
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.demo import latency_summary
from anomaly_pipeline.emulator import free_port
from anomaly_pipeline.spec import Pipeline, processor_config
from anomaly_processor.leases import Lease, LeaseSettings, LeaseTable, parents_done

from tests.processor.lease_harness import kinesalite_pipeline, open_shards, read_stream, wait_active, wait_for
from tests.tools.kinesalite import run_kinesalite

pytestmark = pytest.mark.e2e

EVENTS: Final = 20_000
RATE_PER_SECOND: Final = 700
TICK_SECONDS: Final = 0.1
ANOMALY_EVERY: Final = 10
# Seconds after the first event at which each fault happens.
KILL_AT, SPLIT_AT, MERGE_AT, REPLACE_AT, SIGTERM_AT = 4.0, 7.0, 10.0, 13.0, 17.0
LEASE_DURATION: Final = LeaseSettings().duration
DRAIN_TIMEOUT_SECONDS: Final = 90.0


@pytest.fixture
def chaos_aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Aws, dict[str, str]]]:
    """Return clients with Kinesis on a fresh kinesalite and DynamoDB on moto, and that environment."""
    with run_kinesalite() as kinesalite:
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
        monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesalite)
        yield Aws("eu-west-1"), {**os.environ}


def event_data(index: int) -> tuple[str, bytes, bool]:
    event_id = f"e{index:05d}"
    anomalous = index % ANOMALY_EVERY == 0
    amount = 250 + index % 1000 if anomalous else 1 + index % 99
    return event_id, json.dumps({"event_id": event_id, "transaction_amount": amount}).encode(), anomalous


@dataclasses.dataclass
class Process:
    worker_id: str
    popen: subprocess.Popen[bytes]
    port: int
    log_file: Path
    log_handle: IO[bytes]


class Workers:
    """Processor processes of the run, each logging JSON lines to its own file."""

    def __init__(self, config_file: Path, env: dict[str, str], log_dir: Path) -> None:
        self._config_file = config_file
        self._env = env
        self._log_dir = log_dir
        self.processes: dict[str, Process] = {}

    def start(self, worker_id: str) -> Process:
        port = free_port()
        log_file = self._log_dir / f"{worker_id}.log"
        handle = log_file.open("wb")
        environment = {
            **self._env,
            "ANOMALY_PROCESSOR_WORKER_ID": worker_id,
            "ANOMALY_PROCESSOR_METRICS_PORT": str(port),
            "ANOMALY_PROCESSOR_METRICS_ADDRESS": "127.0.0.1",
        }
        command = [sys.executable, "-m", "anomaly_processor", "--config", str(self._config_file)]
        popen = subprocess.Popen(command, env=environment, stdout=handle, stderr=subprocess.STDOUT)
        process = Process(worker_id, popen, port, log_file, handle)
        self.processes[worker_id] = process
        return process

    def ready(self, worker_id: str) -> bool:
        url = f"http://127.0.0.1:{self.processes[worker_id].port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=10)
            process.log_handle.close()

    def takes(self) -> list[tuple[float, str]]:
        """Return the time and shard of every lease take in the workers' logs."""
        found = []
        for process in self.processes.values():
            for line in process.log_file.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"took lease"' in line:
                    entry = json.loads(line)
                    at = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                    found.append((at.timestamp(), entry["shard"]))
        return found

    def lines_with(self, text: str) -> list[str]:
        """Return the log lines of every worker that contain ``text``, each prefixed with the worker id."""
        found = []
        for worker_id, process in self.processes.items():
            for line in process.log_file.read_text(errors="replace").splitlines():
                if text in line:
                    found.append(f"{worker_id}: {line}")
        return found

    def log_tail(self, worker_id: str, lines: int = 20) -> str:
        return "\n".join(self.processes[worker_id].log_file.read_text(errors="replace").splitlines()[-lines:])


class LeaseMonitor:
    """Reads the lease table every 100 ms in a thread and keeps each reading with its time."""

    def __init__(self, table: LeaseTable) -> None:
        self._table = table
        self._stop = threading.Event()
        self.readings: list[tuple[float, dict[str, Lease]]] = []
        self._thread = threading.Thread(target=self._run, name="lease-monitor")

    def __enter__(self) -> LeaseMonitor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.readings.append((time.monotonic(), self._table.scan()))
            self._stop.wait(0.1)

    def taken_over(self, shards: set[str], gone: str, since: float) -> float | None:
        """Return the seconds after ``since`` at which no shard of ``shards`` was owned by ``gone``
        any more and each was owned by another worker or read to its end."""
        for at, leases in self.readings:
            if at < since:
                continue
            if all(
                shard in leases and (leases[shard].ended or leases[shard].owner not in (None, gone)) for shard in shards
            ):
                return at - since
        return None


class Writer:
    """Writes the events at a steady rate in a thread, resending entries that fail."""

    def __init__(self, kinesis: Any, stream: str) -> None:
        self._kinesis = kinesis
        self._stream = stream
        self.written = 0
        self.started = 0.0
        self._thread = threading.Thread(target=self._run, name="chaos-writer")

    def start(self) -> Writer:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        per_tick = round(RATE_PER_SECOND * TICK_SECONDS)
        for first in range(0, EVENTS, per_tick):
            pending = []
            for index in range(first, min(EVENTS, first + per_tick)):
                event_id, data, _ = event_data(index)
                pending.append({"Data": data, "PartitionKey": event_id})
            while pending:
                response = self._kinesis.put_records(StreamName=self._stream, Records=pending)
                pending = [p for p, r in zip(pending, response["Records"], strict=True) if "ErrorCode" in r]
            self.written = min(EVENTS, first + per_tick)
            delay = self.started + (first // per_tick + 1) * TICK_SECONDS - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def sleep_until(started: float, offset: float) -> None:
    delay = started + offset - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def busiest(leases: dict[str, Lease], candidates: tuple[str, ...]) -> str:
    """Return the candidate worker holding the most leases."""
    return max(sorted(candidates), key=lambda worker: sum(1 for lease in leases.values() if lease.owner == worker))


def last_take_after(takes: list[tuple[float, str]], shards: set[str], since: float) -> dict[str, float]:
    """Return, per shard, the seconds from ``since`` to the shard's first take after it."""
    firsts: dict[str, float] = {}
    for at, shard in sorted(takes):
        if shard in shards and at >= since and shard not in firsts:
            firsts[shard] = at - since
    return firsts


def describe_takeover(firsts: dict[str, float]) -> str:
    if not firsts:
        return "no take logged"
    each = ", ".join(f"{seconds:.2f}" for seconds in sorted(firsts.values()))
    return f"{max(firsts.values()):.2f} s (per shard: {each} s)"


def readable_shards(leases: dict[str, Lease]) -> dict[str, Lease]:
    return {shard: lease for shard, lease in leases.items() if not lease.ended and parents_done(lease, leases)}


def test_chaos_loses_no_anomaly(
    chaos_aws: tuple[Aws, dict[str, str]], example_pipeline: Pipeline, tmp_path: Path
) -> None:
    aws, env = chaos_aws
    pipeline = kinesalite_pipeline(aws, example_pipeline, "chaos", 4)
    kinesis = aws.client("kinesis")
    table = LeaseTable(aws.client("dynamodb"), pipeline.checkpoint_table)
    config_file = tmp_path / "processor.json"
    config_file.write_text(json.dumps(processor_config(pipeline).as_document()))
    workers = Workers(config_file, env, tmp_path)
    expected = {event_data(i)[0] for i in range(EVENTS) if event_data(i)[2]}

    try:
        for worker_id in ("w1", "w2", "w3"):
            workers.start(worker_id)
        wait_for(lambda: all(workers.ready(w) for w in ("w1", "w2", "w3")), 30, "3 workers to be ready")
        wait_for(
            lambda: (
                sorted(sum(1 for lease in table.scan().values() if lease.owner == w) for w in ("w1", "w2", "w3"))
                == [1, 1, 2]
            ),
            30,
            "the 4 shards spread over 3 workers",
        )

        with LeaseMonitor(table) as monitor:
            writer = Writer(kinesis, pipeline.input.name).start()

            sleep_until(writer.started, KILL_AT)
            killed = busiest(table.scan(), ("w1", "w2", "w3"))
            workers.processes[killed].popen.send_signal(signal.SIGKILL)
            killed_at, killed_wall = time.monotonic(), time.time()
            workers.processes[killed].popen.wait(timeout=10)
            at_kill = table.scan()
            killed_shards = {shard for shard, lease in at_kill.items() if lease.owner == killed}
            checkpoints_at_kill = {shard: at_kill[shard].checkpoint for shard in killed_shards}
            assert killed_shards, f"{killed} held leases when it was killed"

            sleep_until(writer.started, SPLIT_AT)
            split = next(s for s in open_shards(kinesis, pipeline.input.name) if s["ShardId"].endswith("0001"))
            hash_range = split["HashKeyRange"]
            middle = (int(hash_range["StartingHashKey"]) + int(hash_range["EndingHashKey"])) // 2
            kinesis.split_shard(
                StreamName=pipeline.input.name, ShardToSplit=split["ShardId"], NewStartingHashKey=str(middle)
            )
            wait_active(kinesis, pipeline.input.name)

            sleep_until(writer.started, MERGE_AT)
            kinesis.merge_shards(
                StreamName=pipeline.input.name,
                ShardToMerge="shardId-000000000002",
                AdjacentShardToMerge="shardId-000000000003",
            )
            wait_active(kinesis, pipeline.input.name)

            sleep_until(writer.started, REPLACE_AT)
            workers.start("w4")

            sleep_until(writer.started, SIGTERM_AT)
            before_stop = table.scan()
            stopped = busiest(before_stop, tuple({"w1", "w2", "w3"} - {killed}))
            stopped_shards = {shard for shard, lease in before_stop.items() if lease.owner == stopped}
            workers.processes[stopped].popen.send_signal(signal.SIGTERM)
            stopped_at, stopped_wall = time.monotonic(), time.time()
            assert workers.processes[stopped].popen.wait(timeout=30) == 0, workers.log_tail(stopped)

            writer.join()
            written_at = time.monotonic()
            deadline = written_at + DRAIN_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if expected <= {json.loads(r["Data"])["event_id"] for r in read_stream(kinesis, pipeline.output.name)}:
                    break
                time.sleep(0.5)
            drained = time.monotonic() - written_at
            time.sleep(2.0)  # past the last batch, so a stray forward would show up

            final = table.scan()
            readable = readable_shards(final)
            after_kill = monitor.taken_over(killed_shards, killed, killed_at)
            after_sigterm = monitor.taken_over(stopped_shards, stopped, stopped_at)
    finally:
        workers.stop_all()

    forwarded = read_stream(kinesis, pipeline.output.name)
    inputs = read_stream(kinesis, pipeline.input.name)
    forwarded_ids = [json.loads(record["Data"])["event_id"] for record in forwarded]
    counts: dict[str, int] = {}
    for event_id in forwarded_ids:
        counts[event_id] = counts.get(event_id, 0) + 1
    missing = expected - set(counts)
    unexpected = set(counts) - expected
    duplicated = {event_id for event_id, count in counts.items() if count > 1}
    duplicates = sum(count - 1 for count in counts.values())

    position = {json.loads(r["Data"])["event_id"]: (r["ShardId"], int(r["SequenceNumber"])) for r in inputs}
    input_arrival = {json.loads(r["Data"])["event_id"]: r["ApproximateArrivalTimestamp"].timestamp() for r in inputs}
    first_arrival: dict[str, float] = {}
    for record in forwarded:
        event_id = json.loads(record["Data"])["event_id"]
        first_arrival.setdefault(event_id, record["ApproximateArrivalTimestamp"].timestamp())
    latencies = [(first_arrival[e] - input_arrival[e]) * 1000 for e in first_arrival if e in input_arrival]
    # Anomalies of shards that neither the killed worker nor their parents' holder was reading
    # wait for no lease expiry: their latency is the steady state under resharding.
    delayed = set(killed_shards)
    for shard in sorted(final):  # shard ids grow with creation, so parents come first
        if delayed & set(final[shard].parent_ids):
            delayed.add(shard)
    unaffected = [
        (first_arrival[e] - input_arrival[e]) * 1000
        for e in first_arrival
        if e in input_arrival and position[e][0] not in delayed
    ]

    print(
        f"\nchaos run: {EVENTS} events at {RATE_PER_SECOND}/s, {len(expected)} anomalies, "
        f"lease duration {LEASE_DURATION:.0f} s"
    )
    print(f"  forwarded records {len(forwarded_ids)}, missing {len(missing)}, unexpected {len(unexpected)}")
    print(f"  duplicates {duplicates} (ids {len(duplicated)}); {killed} held {len(killed_shards)} shards at SIGKILL")
    # The workers log each take with its time, which is more exact than the monitor's 100 ms readings.
    took = workers.takes()
    kill_takeover = last_take_after(took, killed_shards, killed_wall)
    stop_takeover = last_take_after(took, stopped_shards, stopped_wall)
    print(f"  takeover after SIGKILL of {killed}: {describe_takeover(kill_takeover)}")
    print(f"  takeover after SIGTERM of {stopped} ({len(stopped_shards)} shards): {describe_takeover(stop_takeover)}")
    print(f"  last anomaly forwarded {drained:.1f} s after the last event was written")
    print(f"  latency ms, whole run: {latency_summary(latencies)}")
    print(f"  latency ms, shards not waiting for the killed worker's leases: {latency_summary(unaffected)}")

    input_ids = [json.loads(r["Data"])["event_id"] for r in inputs]
    repeated = sorted({e for e in input_ids if input_ids.count(e) > 1}) if len(input_ids) != EVENTS else []
    assert len(inputs) == EVENTS, f"{len(inputs)} input records for {EVENTS} events; repeated: {repeated[:5]}"
    assert not missing, f"{len(missing)} anomalies missing, such as {sorted(missing)[:5]}"
    assert not unexpected, f"non-anomalies forwarded: {sorted(unexpected)[:5]}"

    losses = workers.lines_with("lost lease")
    print(f"  leases lost by live workers: {len(losses)}")
    # A duplicate is an anomaly that the killed worker forwarded and did not checkpoint:
    # it lies after the shard's checkpoint at the kill, in a shard that worker held.
    for event_id in duplicated:
        shard, sequence = position[event_id]
        assert shard in killed_shards, (
            f"duplicate {event_id} in shard {shard} at {sequence}, which {killed} did not hold; "
            f"it held {sorted(killed_shards)}; leases lost: {losses}; logs in {tmp_path}"
        )
        checkpoint = checkpoints_at_kill[shard]
        if checkpoint is not None:
            assert sequence > int(checkpoint.sequence_number), (
                f"duplicate {event_id} at {sequence} was checkpointed ({checkpoint}) before the kill; logs in {tmp_path}"
            )
    # At most one batch per shard was in flight: per shard, the duplicates are the first anomalies after it.
    for shard in killed_shards:
        checkpoint = checkpoints_at_kill[shard]
        after = sorted(
            (sequence, event_id)
            for event_id, (s, sequence) in position.items()
            if s == shard
            and event_id in expected
            and (checkpoint is None or sequence > int(checkpoint.sequence_number))
        )
        flags = [event_id in duplicated for _, event_id in after]
        assert flags == sorted(flags, reverse=True), (
            f"duplicates in shard {shard} are not the first anomalies after {checkpoint}: "
            f"{[(event_id, event_id in duplicated) for _, event_id in after[:20]]}; logs in {tmp_path}"
        )

    assert after_kill is not None, f"{killed}'s shards were taken over after its leases expired"
    assert after_sigterm is not None, f"{stopped}'s shards were taken over after it stopped"
    assert readable, "the stream has shards to read at the end"
    live = {"w1", "w2", "w3", "w4"} - {killed, stopped}
    assert all(lease.owner in live for lease in readable.values()), {s: lease.owner for s, lease in readable.items()}
    ended = {shard for shard, lease in final.items() if lease.ended}
    assert {"shardId-000000000001", "shardId-000000000002", "shardId-000000000003"} <= ended
