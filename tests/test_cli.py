"""The anomaly-pipeline command line, run as a user runs it: as a separate process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.demo import read_whole_stream
from anomaly_pipeline.emulator import free_port

from tests.conftest import EXAMPLE

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "anomaly_pipeline.cli"]


def run_cli(*args: str, endpoint: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def test_demo_json_reports_no_missing_and_no_unexpected() -> None:
    result = run_cli("demo", "--events", "400", "--rate", "400", "--json", "--no-progress")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) == {"sent", "expected", "received", "missing", "unexpected", "duplicates", "latency_ms"}
    assert summary["sent"] == 400
    assert summary["expected"] > 0
    assert summary["received"] == summary["expected"]
    assert summary["missing"] == 0
    assert summary["unexpected"] == 0
    assert set(summary["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["max"]


def test_apply_json_prints_every_resource(moto_endpoint: str) -> None:
    result = run_cli("apply", "-f", str(EXAMPLE), "--json", endpoint=moto_endpoint)

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["input"] == {
        "name": "ingest-default-payments",
        "arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/ingest-default-payments",
    }
    assert output["output"]["name"] == "anomaly-default-payments"
    assert output["checkpointTable"]["name"] == "anomaly-checkpoints-default-payments"
    assert output["processorRoleArn"].endswith(":role/anomaly-pipeline/anomaly-default-payments-processor")
    assert output["testerRoleArn"].endswith(":role/anomaly-pipeline/anomaly-default-payments-tester")


def test_apply_twice_reports_no_changes(moto_endpoint: str) -> None:
    run_cli("apply", "-f", str(EXAMPLE), endpoint=moto_endpoint)

    again = run_cli("apply", "-f", str(EXAMPLE), endpoint=moto_endpoint)

    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("no changes")


def test_credentials_json_has_assume_role_shape(moto_endpoint: str) -> None:
    run_cli("apply", "-f", str(EXAMPLE), endpoint=moto_endpoint)

    result = run_cli("credentials", "-f", str(EXAMPLE), "--json", endpoint=moto_endpoint)

    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert set(output["Credentials"]) == {"AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert ":assumed-role/anomaly-default-payments-tester/" in output["AssumedRoleUser"]["Arn"]
    assert output["inputStream"] == "ingest-default-payments"
    assert output["outputStream"] == "anomaly-default-payments"
    assert output["region"] == "eu-west-1"


def test_credentials_prints_export_lines_with_endpoint(moto_endpoint: str) -> None:
    run_cli("apply", "-f", str(EXAMPLE), endpoint=moto_endpoint)

    result = run_cli("credentials", "-f", str(EXAMPLE), endpoint=moto_endpoint)

    names = [line.split("=", 1)[0] for line in result.stdout.splitlines()]
    assert names == [
        "export AWS_ACCESS_KEY_ID",
        "export AWS_SECRET_ACCESS_KEY",
        "export AWS_SESSION_TOKEN",
        "export AWS_REGION",
        "export AWS_DEFAULT_REGION",
        "export AWS_ENDPOINT_URL",
    ]
    assert f"export AWS_ENDPOINT_URL={moto_endpoint}" in result.stdout


def test_invalid_pipeline_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("shardCount: 2", "shardCount: 0"))

    result = run_cli("apply", "-f", str(bad))

    assert result.returncode == 2
    assert "spec.input.shardCount: invalid value 0: out of range; expected 1 to 500" in result.stderr


def test_delete_keeps_streams_under_retain(moto_endpoint: str) -> None:
    run_cli("apply", "-f", str(EXAMPLE), endpoint=moto_endpoint)

    result = run_cli("delete", "-f", str(EXAMPLE), endpoint=moto_endpoint)

    assert result.returncode == 0, result.stderr
    assert "deleted role anomaly-default-payments-tester" in result.stdout
    assert "kept streams ingest-default-payments, anomaly-default-payments" in result.stdout
    streams = Aws("eu-west-1", moto_endpoint).client("kinesis").list_streams()["StreamNames"]
    assert sorted(streams) == ["anomaly-default-payments", "ingest-default-payments"]


def test_process_forwards_then_exits_0_on_sigterm(moto_endpoint: str) -> None:
    assert run_cli("apply", "-f", str(EXAMPLE), endpoint=moto_endpoint).returncode == 0
    kinesis = Aws("eu-west-1", moto_endpoint).client("kinesis")
    kinesis.put_record(
        StreamName="ingest-default-payments", Data=b'{"event_id":"x","transaction_amount":250}', PartitionKey="x"
    )
    metrics_port = free_port()
    env = dict(os.environ, AWS_ENDPOINT_URL=moto_endpoint, ANOMALY_PROCESSOR_METRICS_PORT=str(metrics_port))
    process = subprocess.Popen([*CLI, "process", "-f", str(EXAMPLE)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not read_whole_stream(kinesis, "anomaly-default-payments"):
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics_page = response.read().decode()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, stderr
    assert "anomaly_processor_anomalies_forwarded_total" in metrics_page
    assert [r["Data"] for r in read_whole_stream(kinesis, "anomaly-default-payments")] == [
        b'{"event_id":"x","transaction_amount":250}'
    ]
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(line["message"] == "worker stopped" for line in lines)
    assert all(line["pipeline"] == "default/payments" for line in lines)


def test_emulator_prints_endpoint_and_serves_kinesis() -> None:
    port = free_port()
    process = subprocess.Popen([*CLI, "emulator", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(5)]
        assert f"export AWS_ENDPOINT_URL=http://127.0.0.1:{port}\n" in lines
        streams = Aws("eu-west-1", f"http://127.0.0.1:{port}").client("kinesis").list_streams()
        assert streams["StreamNames"] == []
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)


def test_emulator_on_taken_port_exits_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_cli("emulator", "--port", str(port), timeout=30)

    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_pipeline_file_with_broken_yaml_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("spec: {region: [\n")

    result = run_cli("apply", "-f", str(bad))

    assert result.returncode == 2
    assert f"{bad}: not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_pipeline_file_exits_2_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"

    result = run_cli("apply", "-f", str(missing))

    assert result.returncode == 2
    assert f"{missing}: cannot be read: No such file or directory; check the path given with -f" in result.stderr
    assert "Errno" not in result.stderr


def test_credentials_without_source_exits_2() -> None:
    result = run_cli("credentials", timeout=30)

    assert result.returncode == 2
    assert "-f: missing: give a pipeline file with -f or a cluster resource with --from-cluster" in result.stderr
    assert "None" not in result.stderr


@pytest.mark.parametrize(
    ("option", "value"), [("--shards", "0"), ("--events", "0"), ("--events", "-5"), ("--rate", "0")]
)
def test_demo_rejects_out_of_range_options(option: str, value: str) -> None:
    result = run_cli("demo", option, value, timeout=30)

    assert result.returncode == 2
    assert f"{option}: invalid value '{value}'" in result.stderr
