"""The two consumers under test and how each is set up and started as a process of its own.

``Ours`` provisions a pipeline with the project's own ``provision`` (streams on
kinesalite; checkpoint table, roles and policies on moto) and runs
``anomaly-processor --config FILE`` with the settings ``processor_config`` derives.
``Peer`` creates plain streams and runs ``bench/peer_consumer.py`` in the peer's
virtual environment. Both read with TRIM_HORIZON, checkpoint to DynamoDB on moto,
and forward to an anomaly stream with as many shards as the input stream, so the
anomaly stream could take the forwarded rate within Kinesis's 1,000 records per
second per shard.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import boto3
import yaml
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.provisioning import provision
from anomaly_pipeline.spec import API_VERSION, KIND, Pipeline, parse_pipeline, processor_config
from anomaly_processor.config import ENV_METRICS_PORT, ENV_WORKER_ID
from anomaly_processor.health import ENV_METRICS_ADDRESS

from bench.processes import ConsumerProcess
from bench.stand_ins import StandIns

NAMESPACE: Final = "bench"
# moto's default account; the tester role must name some principal.
TESTER_PRINCIPAL: Final = "123456789012"
STREAM_ACTIVE_TIMEOUT_SECONDS: Final = 30.0
PEER_SCRIPT: Final = Path(__file__).resolve().parent / "peer_consumer.py"
# Log lines that mark a consumer as ready: the processor writes one per shard, the peer one in all.
OURS_READY_TEXT: Final = "started reading shard"
PEER_READY_TEXT: Final = "peer consumer ready"


@dataclass(frozen=True)
class Streams:
    """The input stream, the anomaly stream and the checkpoint table of one consumer run."""

    input: str
    output: str
    table: str


class Consumer(Protocol):
    """A consumer under test: ``prepare`` makes its streams, ``start`` runs it on them."""

    name: str

    def prepare(self, scenario: str, shards: int, input_stream: str | None = None) -> Streams:
        """Make fresh streams and checkpoint state for one run; reuse ``input_stream`` when given."""
        ...

    def start(self, streams: Streams, label: str) -> ConsumerProcess: ...

    def ready_lines(self, shards: int) -> tuple[str, int]: ...


def wait_for_stream(kinesis: Any, name: str) -> None:
    """Wait until stream ``name`` is ACTIVE (kinesalite creates streams in CREATING first)."""
    deadline = time.monotonic() + STREAM_ACTIVE_TIMEOUT_SECONDS
    while kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise RuntimeError(f"stream {name} not ACTIVE after {STREAM_ACTIVE_TIMEOUT_SECONDS} s")
        time.sleep(0.05)


def create_stream(kinesis: Any, name: str, shards: int) -> None:
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    wait_for_stream(kinesis, name)


def delete_streams(kinesis: Any, *names: str) -> None:
    """Delete streams and wait until they are gone.

    kinesalite allows 10 open shards per account, as Kinesis did by default, so each
    run deletes its streams before the next run creates its own.
    """
    for name in names:
        kinesis.delete_stream(StreamName=name)
    deadline = time.monotonic() + STREAM_ACTIVE_TIMEOUT_SECONDS
    remaining = set(names)
    while remaining:
        listed = set(kinesis.list_streams()["StreamNames"])
        remaining &= listed
        if remaining and time.monotonic() > deadline:
            raise RuntimeError(
                f"streams {sorted(remaining)} still exist {STREAM_ACTIVE_TIMEOUT_SECONDS} s after deletion"
            )
        time.sleep(0.05)


def delete_table(dynamodb: Any, name: str) -> None:
    """Delete DynamoDB table ``name`` if it exists and wait until it is gone."""
    try:
        dynamodb.delete_table(TableName=name)
    except dynamodb.exceptions.ResourceNotFoundException:
        return
    dynamodb.get_waiter("table_not_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})


class Ours:
    """The anomaly processor, run as ``anomaly-processor --config FILE``."""

    name = "ours"

    def __init__(self, stand_ins: StandIns, work_directory: Path) -> None:
        self._stand_ins = stand_ins
        self._work = work_directory
        self._configs: dict[str, dict[str, Any]] = {}

    def prepare(self, scenario: str, shards: int, input_stream: str | None = None) -> Streams:
        """Provision a pipeline named after the scenario, with an empty checkpoint table.

        ``input_stream`` may only name the input stream of an earlier ``prepare`` of the
        same scenario (a repeated run on the same backlog): that stream is adopted, and
        the checkpoint table is deleted first so the run starts from TRIM_HORIZON again.
        """
        pipeline = self._pipeline(scenario, shards)
        if input_stream is not None:
            if input_stream != pipeline.input.name:
                raise ValueError(f"input stream {input_stream} is not the input of pipeline {pipeline.key}")
            delete_table(boto3.client("dynamodb"), pipeline.checkpoint_table)
        provisioned = provision(Aws(region=pipeline.region), pipeline)
        streams = Streams(provisioned.input.name, provisioned.output.name, provisioned.checkpoint_table.name)
        self._configs[streams.input] = processor_config(pipeline).as_document()
        return streams

    def _pipeline(self, scenario: str, shards: int) -> Pipeline:
        document = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": scenario, "namespace": NAMESPACE},
            "spec": {
                "region": self._stand_ins.region,
                "input": {"shardCount": shards},
                "output": {"shardCount": shards},
                "tester": {"principals": [TESTER_PRINCIPAL]},
            },
        }
        return parse_pipeline(document)

    def start(self, streams: Streams, label: str) -> ConsumerProcess:
        config_path = self._work / f"{label}-ours.yaml"
        config_path.write_text(yaml.safe_dump(self._configs[streams.input], sort_keys=False))
        environment = self._stand_ins.child_environment()
        environment[ENV_WORKER_ID] = f"bench-{label}"
        # Its /metrics server listens on loopback, on a port the system picks.
        environment[ENV_METRICS_ADDRESS] = "127.0.0.1"
        environment[ENV_METRICS_PORT] = "0"
        command = [str(Path(sys.executable).with_name("anomaly-processor")), "--config", str(config_path)]
        return ConsumerProcess("anomaly-processor", command, environment, self._work / f"{label}-ours.log")

    def ready_lines(self, shards: int) -> tuple[str, int]:
        return OURS_READY_TEXT, shards


class Peer:
    """The async-kinesis baseline, run as ``peer_consumer.py`` with the peer's own interpreter."""

    name = "peer"

    def __init__(self, stand_ins: StandIns, work_directory: Path, python: Path, checkpointer: str) -> None:
        self._stand_ins = stand_ins
        self._work = work_directory
        self._python = python
        self._checkpointer = checkpointer
        self._runs = 0

    def prepare(self, scenario: str, shards: int, input_stream: str | None = None) -> Streams:
        """Create the peer's anomaly stream, and its input stream unless ``input_stream`` names one.

        Each run gets a checkpoint table of its own, which the peer creates, so a repeated
        run starts from TRIM_HORIZON again.
        """
        kinesis = boto3.client("kinesis")
        if input_stream is None:
            input_stream = f"ingest-{NAMESPACE}-{scenario}-peer"
            create_stream(kinesis, input_stream, shards)
        output = f"anomaly-{NAMESPACE}-{scenario}-peer"
        create_stream(kinesis, output, shards)
        self._runs += 1
        return Streams(input_stream, output, f"peer-checkpoints-{NAMESPACE}-{scenario}-{self._runs}")

    def start(self, streams: Streams, label: str) -> ConsumerProcess:
        command = [
            str(self._python),
            str(PEER_SCRIPT),
            "--input",
            streams.input,
            "--output",
            streams.output,
            "--table",
            streams.table,
            "--checkpointer",
            self._checkpointer,
        ]
        environment = self._stand_ins.child_environment()
        return ConsumerProcess("peer consumer", command, environment, self._work / f"{label}-peer.log")

    def ready_lines(self, shards: int) -> tuple[str, int]:
        return PEER_READY_TEXT, 1
