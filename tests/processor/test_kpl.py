"""KPL de-aggregation: sound aggregates as the library reads them, and every kind of corruption."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from anomaly_processor.kpl import DIGEST_SIZE, MAGIC, CorruptAggregateError, UserRecord, deaggregate, is_aggregated
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import iter_deaggregate_records, messages_pb2


def aggregate(*user_records: tuple[str, bytes]) -> bytes:
    """Pack (partition key, data) pairs with the library's aggregator, as the KPL does."""
    aggregator = RecordAggregator()
    for key, data in user_records:
        assert aggregator.add_user_record(key, data) is None, "the test aggregate outgrew one record"
    packed = aggregator.clear_and_get()
    assert packed is not None
    _, _, data = packed.get_contents()
    return bytes(data)


def framed(body: bytes) -> bytes:
    """Frame protobuf bytes with the magic prefix and a correct digest."""
    return MAGIC + body + hashlib.md5(body).digest()


def test_user_records_keep_own_keys() -> None:
    data = aggregate(("card-1", b'{"a":150}'), ("card-2", b'{"a":50}'), ("card-1", b'{"a":300}'))
    assert is_aggregated(data)
    assert deaggregate(data) == [
        UserRecord(b'{"a":150}', "card-1", 0),
        UserRecord(b'{"a":50}', "card-2", 1),
        UserRecord(b'{"a":300}', "card-1", 2),
    ]


def test_same_records_as_library() -> None:
    pairs = [(f"key-{i % 7}", b'{"n":%d}' % i) for i in range(200)]
    data = aggregate(*pairs)
    record = {
        "Data": data,
        "PartitionKey": "outer",
        "SequenceNumber": "49600000000000000000000000000000000000000000000000000000",
        "ApproximateArrivalTimestamp": datetime.now(tz=UTC),
    }
    import base64

    expected = [
        UserRecord(
            base64.b64decode(r["kinesis"]["data"]), r["kinesis"]["partitionKey"], r["kinesis"]["subSequenceNumber"]
        )
        for r in iter_deaggregate_records([record], data_format="Boto3")
    ]
    assert len(expected) == 200
    assert deaggregate(data) == expected


def test_plain_json_is_not_aggregated() -> None:
    assert not is_aggregated(b'{"transaction_amount": 150}')
    assert not is_aggregated(b"")
    assert not is_aggregated(MAGIC[:3])


def test_empty_aggregate_has_no_records() -> None:
    assert deaggregate(framed(b"")) == []


def test_bad_digest_is_corrupt() -> None:
    data = bytearray(aggregate(("k", b'{"a":1}')))
    data[-1] ^= 0xFF
    with pytest.raises(CorruptAggregateError, match="digest"):
        deaggregate(bytes(data))


def test_changed_body_is_corrupt() -> None:
    data = bytearray(aggregate(("k", b'{"a":150}')))
    data[len(MAGIC) + 5] ^= 0x01
    with pytest.raises(CorruptAggregateError, match="digest"):
        deaggregate(bytes(data))


def test_too_short_is_corrupt() -> None:
    with pytest.raises(CorruptAggregateError, match="too short"):
        deaggregate(MAGIC + b"\x00" * (DIGEST_SIZE - 1))


def test_unparsable_body_is_corrupt() -> None:
    with pytest.raises(CorruptAggregateError, match="AggregatedRecord"):
        deaggregate(framed(b"\xff\xff\xff\xff"))


def test_missing_required_field_is_corrupt() -> None:
    # A user record without its data field: proto2 marks data as required.
    partial = messages_pb2.AggregatedRecord()
    partial.partition_key_table.append("k")
    record = partial.records.add()
    record.partition_key_index = 0
    body = partial.SerializePartialToString()
    with pytest.raises(CorruptAggregateError, match="AggregatedRecord"):
        deaggregate(framed(body))


def test_key_index_out_of_range_is_corrupt() -> None:
    message = messages_pb2.AggregatedRecord()
    message.partition_key_table.append("k")
    first = message.records.add()
    first.partition_key_index = 0
    first.data = b'{"a":1}'
    second = message.records.add()
    second.partition_key_index = 3
    second.data = b'{"a":2}'
    with pytest.raises(CorruptAggregateError, match="partition key 3"):
        deaggregate(framed(message.SerializeToString()))
