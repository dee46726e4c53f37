"""Dead-letter envelopes: their fields, the 1 MiB cut, and a failed write holding the checkpoint."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import Any

import pytest
from anomaly_processor.checkpoint import Checkpoint
from anomaly_processor.consumer import ShardConsumer
from anomaly_processor.deadletter import MAX_RECORD_BYTES, build_envelope, format_arrival
from anomaly_processor.detector import FixedDetectors, RuleDetector
from anomaly_processor.events import EventDecoder, Malformed, MalformedReason
from anomaly_processor.forwarder import Forwarder
from anomaly_processor.rules import parse_rule_set

from tests.processor.consumer_fakes import (
    ARRIVAL,
    FlakyKinesis,
    OneBatchReader,
    RecordingCheckpoints,
    kinesis_record,
)

STREAM = "ingest-default-payments"
SHARD = "shardId-000000000001"


def envelope_of(item: Malformed, stream: str = STREAM, shard: str = SHARD) -> tuple[dict[str, Any], bool, int]:
    letter = build_envelope(item, stream, shard)
    size = len(letter.entry.data) + len(letter.entry.partition_key.encode())
    return json.loads(letter.entry.data), letter.truncated, size


def test_envelope_fields() -> None:
    data = b'{"transaction_amount": "150"}'
    item = Malformed(
        "49600000000000000000000000000000000000000000000000000001",
        MalformedReason.NOT_A_NUMBER,
        data,
        "card-7",
        ARRIVAL,
    )
    envelope, truncated, _ = envelope_of(item)
    assert envelope == {
        "version": 1,
        "reason": "not_a_number",
        "sourceStream": STREAM,
        "shardId": SHARD,
        "sequenceNumber": "49600000000000000000000000000000000000000000000000000001",
        "subSequenceNumber": None,
        "partitionKey": "card-7",
        "arrivalTime": "2026-01-31T12:00:00.123Z",
        "detail": None,
        "dataLength": len(data),
        "dataSha256": hashlib.sha256(data).hexdigest(),
        "dataTruncated": False,
        "data": base64.b64encode(data).decode(),
    }
    assert truncated is False


def test_envelope_entry_keeps_partition_key() -> None:
    item = Malformed("1", MalformedReason.NOT_JSON, b"\xff", "card-7", ARRIVAL)
    letter = build_envelope(item, STREAM, SHARD)
    assert letter.entry.partition_key == "card-7"
    assert letter.entry.arrival == ARRIVAL.timestamp()


def test_user_record_envelope_has_sub_sequence() -> None:
    item = Malformed("5", MalformedReason.MISSING_FIELD, b"{}", "user-key", ARRIVAL, 3)
    envelope, _, _ = envelope_of(item)
    assert envelope["subSequenceNumber"] == 3
    assert envelope["partitionKey"] == "user-key"


def test_corrupt_aggregate_envelope_has_detail() -> None:
    item = Malformed("5", MalformedReason.CORRUPT_AGGREGATE, b"\xf3\x89\x9a\xc2junk", "k", ARRIVAL, None, "MD5 digest")
    envelope, _, _ = envelope_of(item)
    assert envelope["reason"] == "corrupt_aggregate"
    assert envelope["detail"] == "MD5 digest"
    assert base64.b64decode(envelope["data"]) == b"\xf3\x89\x9a\xc2junk"


def test_arrival_time_is_utc_with_milliseconds() -> None:
    assert format_arrival(ARRIVAL) == "2026-01-31T12:00:00.123Z"
    assert format_arrival(None) is None


@pytest.mark.parametrize("partition_key", ["k", "p" * 256, "ключ-" * 51])
def test_record_near_1_mib_is_cut(partition_key: str) -> None:
    # The largest input record Kinesis accepts: data plus partition key make 1 MiB.
    data = bytes(range(256)) * ((MAX_RECORD_BYTES - len(partition_key.encode())) // 256)
    item = Malformed("7", MalformedReason.NOT_JSON, data, partition_key, ARRIVAL)
    envelope, truncated, size = envelope_of(item)

    assert truncated is True
    assert envelope["dataTruncated"] is True
    assert size <= MAX_RECORD_BYTES
    assert envelope["dataLength"] == len(data)
    assert envelope["dataSha256"] == hashlib.sha256(data).hexdigest()
    kept = base64.b64decode(envelope["data"])
    assert data.startswith(kept)
    # The cut keeps all but what the envelope's other fields and base64 take up.
    assert len(kept) > len(data) * 3 // 4 - 4096


def test_cut_begins_at_the_limit() -> None:
    """Find the largest record that fits whole; one byte more must be cut, and both stay within 1 MiB."""
    low, high = 0, MAX_RECORD_BYTES
    while low < high:
        middle = (low + high + 1) // 2
        if not build_envelope(
            Malformed("7", MalformedReason.NOT_JSON, b"x" * middle, "k", ARRIVAL), STREAM, SHARD
        ).truncated:
            low = middle
        else:
            high = middle - 1
    whole, truncated, size = envelope_of(Malformed("7", MalformedReason.NOT_JSON, b"x" * low, "k", ARRIVAL))
    assert truncated is False
    assert size <= MAX_RECORD_BYTES
    assert base64.b64decode(whole["data"]) == b"x" * low
    cut, truncated, size = envelope_of(Malformed("7", MalformedReason.NOT_JSON, b"x" * (low + 1), "k", ARRIVAL))
    assert truncated is True
    assert size <= MAX_RECORD_BYTES
    assert cut["dataLength"] == low + 1


def run_one_batch(
    records: list[dict[str, Any]], anomalies: FlakyKinesis, dead_letters: FlakyKinesis, journal: list[str]
) -> tuple[RecordingCheckpoints, OneBatchReader]:
    stop = threading.Event()
    reader = OneBatchReader(records, stop, journal)
    checkpoints = RecordingCheckpoints(journal)
    consumer = ShardConsumer(
        shard_id=SHARD,
        stream=STREAM,
        reader=reader,  # type: ignore[arg-type]
        forwarder=Forwarder(anomalies, "anomaly-default-payments", SHARD, sleep=lambda _: None),
        checkpoints=checkpoints,  # type: ignore[arg-type]
        decoder=EventDecoder(("transaction_amount",)),
        detectors=FixedDetectors(RuleDetector(parse_rule_set(None))),
        stop=stop,
        start_checkpoint=None,
        dead_letters=Forwarder(dead_letters, "dead-default-payments", SHARD, sleep=lambda _: None, latency=None),
    )
    consumer.run()
    return checkpoints, reader


def test_failed_dead_letter_write_holds_checkpoint() -> None:
    journal: list[str] = []
    records = [
        kinesis_record(1, b'{"transaction_amount": 150}'),
        kinesis_record(2, b"not json"),
        kinesis_record(3, b'{"transaction_amount": null}'),
    ]
    anomalies = FlakyKinesis(journal, "anomalies")
    dead_letters = FlakyKinesis(journal, "dead letters", throttled_calls=2, fail_one_entry=True)

    checkpoints, reader = run_one_batch(records, anomalies, dead_letters, journal)

    assert journal == [
        "anomalies accepted 1",
        "dead letters throttled",
        "dead letters throttled",
        "dead letters accepted 1",
        "dead letters accepted 1",
        "checkpoint",
    ]
    assert [json.loads(e["Data"])["reason"] for e in dead_letters.accepted] == ["missing_field", "not_json"]
    assert all(e["StreamName"] == "dead-default-payments" for e in dead_letters.accepted)
    assert checkpoints.written == [Checkpoint(records[-1]["SequenceNumber"], 0)]
    assert reader.confirmed == [records[-1]["SequenceNumber"]]


def test_no_dead_letter_stream_only_counts() -> None:
    journal: list[str] = []
    stop = threading.Event()
    records = [kinesis_record(1, b"[]"), kinesis_record(2, b'{"transaction_amount": 101}')]
    anomalies = FlakyKinesis(journal, "anomalies")
    consumer = ShardConsumer(
        shard_id=SHARD,
        stream=STREAM,
        reader=OneBatchReader(records, stop, journal),  # type: ignore[arg-type]
        forwarder=Forwarder(anomalies, "anomaly-default-payments", SHARD, sleep=lambda _: None),
        checkpoints=RecordingCheckpoints(journal),  # type: ignore[arg-type]
        decoder=EventDecoder(("transaction_amount",)),
        detectors=FixedDetectors(RuleDetector(parse_rule_set(None))),
        stop=stop,
        start_checkpoint=None,
    )
    progress = consumer.run()
    assert journal == ["anomalies accepted 1", "checkpoint"]
    assert progress.malformed == 1
    assert [e["Data"] for e in anomalies.accepted] == [b'{"transaction_amount": 101}']
