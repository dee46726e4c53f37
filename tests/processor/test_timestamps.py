"""Timestamps from AWS responses parsed as UTC without dateutil's local-time conversion."""

from __future__ import annotations

from datetime import UTC, datetime

import boto3
from anomaly_processor.__main__ import parse_timestamp_as_utc, use_utc_timestamps
from botocore.utils import parse_timestamp
from moto import mock_aws


def test_epoch_seconds_parse_to_same_instant_as_botocore() -> None:
    for value in (0, 1733312345, 1733312345.123, 1733312345.999):
        parsed = parse_timestamp_as_utc(value)

        assert parsed.tzinfo is UTC
        assert parsed.timestamp() == parse_timestamp(str(value)).timestamp()


def test_text_timestamps_fall_back_to_botocore() -> None:
    parsed = parse_timestamp_as_utc("2026-12-04T20:00:00.250Z")

    assert parsed == datetime(2026, 12, 4, 20, 0, 0, 250000, tzinfo=UTC)


def test_kinesis_client_returns_utc_arrival_times() -> None:
    with mock_aws():
        session = boto3.session.Session(region_name="eu-west-1")
        use_utc_timestamps(session)
        kinesis = session.client("kinesis")
        kinesis.create_stream(StreamName="s", ShardCount=1)
        kinesis.put_record(StreamName="s", Data=b"{}", PartitionKey="k")
        shard = kinesis.list_shards(StreamName="s")["Shards"][0]["ShardId"]
        iterator = kinesis.get_shard_iterator(StreamName="s", ShardId=shard, ShardIteratorType="TRIM_HORIZON")

        record = kinesis.get_records(ShardIterator=iterator["ShardIterator"])["Records"][0]

    assert record["ApproximateArrivalTimestamp"].tzinfo is UTC
    assert abs(record["ApproximateArrivalTimestamp"].timestamp() - datetime.now(UTC).timestamp()) < 60
