"""The kinesalite helper: it starts a working Kinesis endpoint on loopback and stops it."""

from __future__ import annotations

import time
import urllib.parse
import urllib.request

import boto3
import pytest
from botocore.config import Config

from tests.tools.kinesalite import REGION, run_kinesalite

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
