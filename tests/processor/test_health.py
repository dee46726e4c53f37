"""The metrics port: probes that follow the worker's state, metrics and JSON logs of a real process."""

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
from pathlib import Path
from typing import Any

import pytest
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.emulator import free_port
from anomaly_pipeline.provisioning import provision
from anomaly_pipeline.spec import Pipeline, processor_config
from anomaly_processor.health import HealthServer
from prometheus_client.parser import text_string_to_metric_families

from tests.processor.lease_harness import anomaly_ids, events, forwarded_ids, leases, put_events, wait_for

ISSUE_METRICS = (
    "anomaly_processor_records_read",
    "anomaly_processor_anomalies_forwarded",
    "anomaly_processor_malformed_records",
    "anomaly_processor_put_retries",
    "anomaly_processor_leases_held",
    "anomaly_processor_millis_behind_latest",
    "anomaly_processor_forward_latency_seconds",
)


@dataclasses.dataclass
class FakeWorker:
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    last_pass_at: float | None = None
    stopping: bool = False


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError as error:
        return 0, str(error.reason)  # nothing listens yet


def test_probes_follow_worker_state() -> None:
    worker = FakeWorker()
    now = [1000.0]
    server = HealthServer(worker, "127.0.0.1", 0, liveness_timeout=60, clock=lambda: now[0]).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(f"{base}/readyz")[0] == 503, "not ready before the first read of the lease table"
        assert get(f"{base}/healthz")[0] == 200, "alive while starting"
        worker.ready.set()
        worker.last_pass_at = now[0]
        assert get(f"{base}/readyz") == (200, "ok\n")

        now[0] += 61
        assert get(f"{base}/healthz")[0] == 503, "a lease loop without a pass for 61 s is stuck"
        worker.last_pass_at = now[0]
        assert get(f"{base}/healthz")[0] == 200

        worker.stopping = True
        assert get(f"{base}/readyz")[0] == 503, "not ready while stopping"
        assert get(f"{base}/other")[0] == 404
        status, text = get(f"{base}/metrics")
        assert status == 200
        names = {family.name for family in text_string_to_metric_families(text)}
        assert set(ISSUE_METRICS) <= names
    finally:
        server.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of a /metrics page by name and sorted labels."""
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            samples[(item.name, tuple(sorted(item.labels.items())))] = item.value
    return samples


def start_processor(config_file: Path, env: dict[str, str], worker_id: str, port: int) -> subprocess.Popen[str]:
    environment = {
        **env,
        "ANOMALY_PROCESSOR_WORKER_ID": worker_id,
        "ANOMALY_PROCESSOR_METRICS_PORT": str(port),
        "ANOMALY_PROCESSOR_METRICS_ADDRESS": "127.0.0.1",
    }
    command = [sys.executable, "-m", "anomaly_processor", "--config", str(config_file)]
    return subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.e2e
def test_processor_serves_metrics_and_json_logs(moto_endpoint: str, example_pipeline: Pipeline, tmp_path: Path) -> None:
    aws = Aws("eu-west-1", endpoint_url=moto_endpoint)
    pipeline = dataclasses.replace(example_pipeline, input=dataclasses.replace(example_pipeline.input, shard_count=2))
    provision(aws, pipeline)
    config_file = tmp_path / "processor.yaml"
    config_file.write_text(json.dumps(processor_config(pipeline).as_document()))
    port = free_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": moto_endpoint}
    kinesis = aws.client("kinesis")
    batch = events("probe", 30)

    process = start_processor(config_file, env, "probe-worker", port)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 20, "/readyz to return 200")
        put_events(kinesis, pipeline.input.name, batch)
        wait_for(lambda: len(forwarded_ids(kinesis, pipeline.output.name)) >= 10, 20, "the anomalies")
        time.sleep(0.5)
        samples = scrape(port)
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr[-2000:]
    stream = (("stream", pipeline.input.name),)
    assert samples[("anomaly_processor_leases_held", ())] == 2
    read = sum(v for (name, _), v in samples.items() if name == "anomaly_processor_records_read_total")
    assert read == 30
    assert samples[("anomaly_processor_anomalies_forwarded_total", (("stream", pipeline.output.name),))] == 10
    assert samples[("anomaly_processor_forward_latency_seconds_count", ())] == 10
    shards = sorted(leases(aws, pipeline))
    for shard in shards:
        assert ("anomaly_processor_millis_behind_latest", (("shard", shard), *stream)) in samples
    assert sorted(forwarded_ids(kinesis, pipeline.output.name)) == sorted(anomaly_ids(batch))
    assert all(lease.owner is None for lease in leases(aws, pipeline).values()), "SIGTERM released the leases"

    lines = json_lines(stderr)
    took = [line for line in lines if line["message"] == "took lease"]
    assert sorted(line["shard"] for line in took) == shards
    for line in took:
        assert line["pipeline"] == pipeline.key
        assert line["stream"] == pipeline.input.name
        assert line["worker"] == "probe-worker"
    assert any(line["message"] == "released lease" for line in lines)
