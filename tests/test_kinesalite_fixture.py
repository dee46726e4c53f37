"""The kinesalite helper and the tool installer: kinesalite serves Kinesis on loopback and stops,
and ``make tools`` checks Node.js and does nothing when the pinned tools are present.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.tools import install
from tests.tools.kinesalite import REGION, run_kinesalite
from tests.tools.paths import REPO_ROOT

pytestmark = pytest.mark.e2e

ACTIVE_TIMEOUT_SECONDS = 10.0


def test_kinesalite_serves_put_and_get_records() -> None:
    with run_kinesalite() as endpoint:
        assert urllib.parse.urlsplit(endpoint).hostname == "127.0.0.1"
        kinesis = boto3.client(
            "kinesis",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}),
        )
        kinesis.create_stream(StreamName="fixture-check", ShardCount=1)
        deadline = time.monotonic() + ACTIVE_TIMEOUT_SECONDS
        description = kinesis.describe_stream(StreamName="fixture-check")["StreamDescription"]
        while description["StreamStatus"] != "ACTIVE":
            assert time.monotonic() < deadline, f"stream still {description['StreamStatus']}"
            time.sleep(0.05)
            description = kinesis.describe_stream(StreamName="fixture-check")["StreamDescription"]
        assert description["StreamARN"].startswith(f"arn:aws:kinesis:{REGION}:")

        put = kinesis.put_record(StreamName="fixture-check", Data=b'{"transaction_amount": 120}', PartitionKey="card-1")
        shard_id = description["Shards"][0]["ShardId"]
        assert put["ShardId"] == shard_id

        iterator = kinesis.get_shard_iterator(
            StreamName="fixture-check", ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records = kinesis.get_records(ShardIterator=iterator)["Records"]
        assert [r["Data"] for r in records] == [b'{"transaction_amount": 120}']
        assert records[0]["PartitionKey"] == "card-1"
        assert records[0]["SequenceNumber"] == put["SequenceNumber"]

    with pytest.raises(OSError):
        urllib.request.urlopen(endpoint, timeout=2)


def test_installer_rejects_node_older_than_20(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_node = tmp_path / "node"
    fake_node.write_text("#!/bin/sh\necho v18.19.0\n", encoding="utf-8")
    fake_node.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    assert install.node_major_version() == 18
    with pytest.raises(install.ToolInstallError, match=r"node 18 is too old for kinesalite: install Node\.js 20"):
        install.install_kinesalite()


def test_installer_is_quick_when_tools_present() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tests.tools.install"], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "helm v3.17.3" in result.stdout
    assert "already installed" in result.stdout
    assert "kinesalite 3.3.3 already installed" in result.stdout
    assert elapsed < 10, f"a second run took {elapsed:.1f} s"
