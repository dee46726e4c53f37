"""De-aggregation of records that the Kinesis Producer Library (KPL) packed together.

The KPL aggregated format is a 4-byte magic prefix, a protobuf ``AggregatedRecord``
(partition key table, explicit hash key table, user records) and the MD5 digest of the
protobuf bytes. The message class and the constants come from ``aws-kinesis-agg``.

The package's own ``iter_deaggregate_records`` (aws-kinesis-agg 1.2.3) is not used on the
per-record path. It base64-encodes every user record's bytes, which the processor would
decode again. It passes a record with a bad digest through as if it were not aggregated.
An out-of-range key index stops its iteration after printing to stderr, which drops the
remaining user records without a trace. ``deaggregate`` instead raises
``CorruptAggregateError`` for every such case, so the consumer can dead-letter the whole
record. A test checks that both give the same user records for sound aggregates.

Records that do not start with the magic prefix are not touched: a JSON text never
starts with those bytes, because they are not valid UTF-8.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import aws_kinesis_agg

# The deaggregator module puts the package's folder on sys.path, which its generated
# messages_pb2 needs to import config_pb2; importing it first makes messages_pb2 load.
from aws_kinesis_agg import deaggregator as _deaggregator
from google.protobuf.message import DecodeError

_AggregatedRecord = _deaggregator.messages_pb2.AggregatedRecord

MAGIC: Final[bytes] = aws_kinesis_agg.MAGIC
DIGEST_SIZE: Final[int] = aws_kinesis_agg.DIGEST_SIZE
# PutRecords' maximum partition key length, in characters; the minimum is 1 (botocore's
# Kinesis service model). Kinesis rejects a forward with a longer key on every retry.
# NOTE: len() counts code points. Whether Kinesis counts a character outside the Basic
# Multilingual Plane as one character or as two UTF-16 code units is not checked.
MAX_PARTITION_KEY_LENGTH: Final = 256


class CorruptAggregateError(ValueError):
    """A record with the KPL magic prefix whose digest, protobuf body, key index or partition key is invalid."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One record that a producer put, taken out of an aggregate."""

    data: bytes
    partition_key: str
    sub_sequence_number: int


def is_aggregated(data: bytes) -> bool:
    """Tell whether a record's bytes start with the KPL magic prefix."""
    return data.startswith(MAGIC)


def deaggregate(data: bytes) -> list[UserRecord]:
    """Return the user records of an aggregated record, in order, numbered from 0.

    Raises CorruptAggregateError when the digest does not match, the protobuf body
    cannot be parsed, or a user record names a partition key or explicit hash key that
    the table lacks. It also raises when a user record's partition key is one that
    PutRecords rejects. Each anomalous user record is forwarded with its own partition
    key, so one invalid key would make the forward fail on every retry and block the shard.
    """
    if not is_aggregated(data):
        raise CorruptAggregateError("record does not start with the KPL magic prefix")
    body_end = len(data) - DIGEST_SIZE
    if body_end < len(MAGIC):
        raise CorruptAggregateError(f"aggregate of {len(data)} bytes is too short to hold an MD5 digest")
    body = data[len(MAGIC) : body_end]
    if hashlib.md5(body).digest() != data[body_end:]:  # noqa: S324 - the KPL format's checksum, not security
        raise CorruptAggregateError("MD5 digest of the aggregate does not match its body")

    aggregate = _AggregatedRecord()
    try:
        aggregate.ParseFromString(body)
    except DecodeError as error:
        raise CorruptAggregateError(f"aggregate body is not an AggregatedRecord: {error}") from error
    # protobuf 7's Python runtime parses a message that lacks a required field without an error.
    if not aggregate.IsInitialized():
        missing = ", ".join(aggregate.FindInitializationErrors())
        raise CorruptAggregateError(f"aggregate body is not an AggregatedRecord: missing required {missing}")

    keys = aggregate.partition_key_table
    hash_key_count = len(aggregate.explicit_hash_key_table)
    records: list[UserRecord] = []
    for number, record in enumerate(aggregate.records):
        index = record.partition_key_index
        if index >= len(keys):
            raise CorruptAggregateError(
                f"user record {number} names partition key {index}, but the table has {len(keys)} keys"
            )
        key: str | bytes = keys[index]
        if not isinstance(key, str) or not 0 < len(key) <= MAX_PARTITION_KEY_LENGTH:
            raise CorruptAggregateError(f"user record {number} has {_describe_invalid_partition_key(key)}")
        # The processor does not use explicit hash keys, but an index outside the table
        # means that the producer wrote the aggregate wrongly.
        if record.HasField("explicit_hash_key_index") and record.explicit_hash_key_index >= hash_key_count:
            raise CorruptAggregateError(
                f"user record {number} names explicit hash key {record.explicit_hash_key_index}, "
                f"but the table has {hash_key_count} keys"
            )
        records.append(UserRecord(record.data, key, number))
    return records


def _describe_invalid_partition_key(key: str | bytes) -> str:
    """Describe why PutRecords would reject ``key``.

    protobuf 7.36 with the upb runtime returns a string field as ``bytes`` when its bytes
    are not valid UTF-8.
    """
    if isinstance(key, bytes):
        return f"a partition key of {len(key)} bytes that is not valid UTF-8"
    if not key:
        return "an empty partition key"
    return f"a partition key of {len(key)} characters, but Kinesis allows at most {MAX_PARTITION_KEY_LENGTH}"
