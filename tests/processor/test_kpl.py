"""KPL de-aggregation: sound aggregates as the library reads them, and every kind of corruption."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from anomaly_processor.detector import FixedDetectors, RuleDetector
from anomaly_processor.events import EventDecoder, Malformed, MalformedReason
from anomaly_processor.forwarder import Entry
from anomaly_processor.kpl import DIGEST_SIZE, MAGIC, CorruptAggregateError, UserRecord, deaggregate, is_aggregated
from anomaly_processor.rules import parse_rule_set
from anomaly_processor.selection import select_anomalies
from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import iter_deaggregate_records, messages_pb2

from tests.processor.consumer_fakes import ARRIVAL, kinesis_record

ANOMALY = b'{"transaction_amount": 150}'
DECODE = EventDecoder(("transaction_amount",)).decode
DETECTORS = FixedDetectors(
    RuleDetector(parse_rule_set({"conditions": [{"field": "transaction_amount", "op": "gt", "value": 100}]}), "rules")
)


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


def two_user_records(first_key: str, second_key: str) -> messages_pb2.AggregatedRecord:
    """Build an aggregate of two anomalous user records, each with its own partition key."""
    message = messages_pb2.AggregatedRecord()
    message.partition_key_table.extend([first_key, second_key])
    for index in range(2):
        record = message.records.add()
        record.partition_key_index = index
        record.data = ANOMALY
    return message


def judge(data: bytes) -> tuple[list[Entry], list[Malformed]]:
    """Run one input record with partition key "outer" through the per-record path."""
    return select_anomalies([kinesis_record(1, data, "outer")], DECODE, DETECTORS)


def corrupt_aggregate(data: bytes, detail: str) -> Malformed:
    """Return the malformed record that a corrupt aggregate read by ``judge`` must become."""
    return Malformed(
        kinesis_record(1, data)["SequenceNumber"],
        MalformedReason.CORRUPT_AGGREGATE,
        data,
        "outer",
        ARRIVAL,
        None,
        detail,
    )


def test_aggregate_with_non_utf8_partition_key_is_malformed() -> None:
    # protobuf's setters accept only valid UTF-8, so the key's bytes are swapped in after
    # serializing. The placeholder has the same length, so the field's length prefix stays right.
    body = two_user_records("card-1", "card-?").SerializeToString()
    assert body.count(b"card-?") == 1
    data = framed(body.replace(b"card-?", b"card-\xff"))

    entries, malformed = judge(data)

    assert entries == []
    assert malformed == [
        corrupt_aggregate(data, "user record 1 has a partition key of 6 bytes that is not valid UTF-8")
    ]


def test_aggregate_with_empty_partition_key_is_malformed() -> None:
    data = framed(two_user_records("card-1", "").SerializeToString())

    entries, malformed = judge(data)

    assert entries == []
    assert malformed == [corrupt_aggregate(data, "user record 1 has an empty partition key")]


def test_aggregate_with_257_character_partition_key_is_malformed() -> None:
    data = framed(two_user_records("card-1", "k" * 257).SerializeToString())

    entries, malformed = judge(data)

    assert entries == []
    expected = "user record 1 has a partition key of 257 characters, but Kinesis allows at most 256"
    assert malformed == [corrupt_aggregate(data, expected)]


def test_partition_key_of_256_characters_is_kept() -> None:
    # 256 characters of two UTF-8 bytes each: the limit counts characters, not bytes.
    key = "é" * 256
    data = framed(two_user_records("card-1", key).SerializeToString())

    entries, malformed = judge(data)

    assert malformed == []
    assert [entry.partition_key for entry in entries] == ["card-1", key]


@pytest.mark.parametrize(
    ("hash_keys", "index"), [(["170141183460469231731687303715884105728"], 1), ([], 0)], ids=["past-end", "no-table"]
)
def test_explicit_hash_key_outside_table_is_malformed(hash_keys: list[str], index: int) -> None:
    message = two_user_records("card-1", "card-2")
    message.explicit_hash_key_table.extend(hash_keys)
    if hash_keys:
        message.records[0].explicit_hash_key_index = 0
    message.records[1].explicit_hash_key_index = index
    data = framed(message.SerializeToString())

    entries, malformed = judge(data)

    assert entries == []
    expected = f"user record 1 names explicit hash key {index}, but the table has {len(hash_keys)} keys"
    assert malformed == [corrupt_aggregate(data, expected)]


def test_explicit_hash_keys_in_table_are_accepted() -> None:
    aggregator = RecordAggregator()
    assert aggregator.add_user_record("card-1", ANOMALY, explicit_hash_key="0") is None
    assert aggregator.add_user_record("card-2", ANOMALY) is None
    packed = aggregator.clear_and_get()
    assert packed is not None

    assert deaggregate(bytes(packed.get_contents()[2])) == [
        UserRecord(ANOMALY, "card-1", 0),
        UserRecord(ANOMALY, "card-2", 1),
    ]
