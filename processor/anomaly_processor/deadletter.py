"""Dead-letter envelopes: a malformed record wrapped in JSON that records why and where it was read.

The consumer builds one envelope per malformed record (or user record of an aggregate)
and writes them with a ``Forwarder`` to the dead-letter stream before it checkpoints,
so a failed write is retried and the checkpoint waits, as for anomalies. The envelope
is one JSON object in UTF-8 (see docs/detection.md for the reader's side):

``version``            1, raised when a field changes meaning
``reason``             the malformed reason, such as ``not_json`` or ``corrupt_aggregate``
``sourceStream``       input stream name
``shardId``            input shard
``sequenceNumber``     the input record's sequence number
``subSequenceNumber``  position inside a KPL aggregate, or null for a plain record
``partitionKey``       the record's (or user record's) partition key
``arrivalTime``        the input record's ApproximateArrivalTimestamp, ISO 8601 UTC, milliseconds
``detail``             what exactly was wrong (JSON error, field and value, aggregate error), or null
``dataLength``         length of the original bytes
``dataSha256``         SHA-256 of the original bytes, hex
``dataTruncated``      true when ``data`` holds only a prefix of the original bytes
``data``               the original bytes (or their prefix), base64

The envelope is written with the original partition key, and Kinesis limits a record's
data plus partition key to 1 MiB. When the whole envelope would pass that, ``data`` is
cut to the longest prefix that fits and ``dataTruncated`` is true; ``dataLength`` and
``dataSha256`` always describe the full original bytes.

It does not write anything itself and does not log: see ``consumer``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from anomaly_processor.events import Malformed
from anomaly_processor.forwarder import Entry

ENVELOPE_VERSION: Final = 1
# Kinesis's limit on one record: data blob plus partition key, in bytes.
MAX_RECORD_BYTES: Final = 1024 * 1024
# Kinesis requires a partition key of 1 to 256 characters; an input record always has one.
FALLBACK_PARTITION_KEY: Final = "dead-letter"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An envelope ready to write, and whether its data had to be cut."""

    entry: Entry
    truncated: bool


def format_arrival(arrival: datetime | None) -> str | None:
    """Return an arrival timestamp as ISO 8601 UTC with milliseconds, such as 2026-01-31T12:00:00.123Z."""
    if arrival is None:
        return None
    if arrival.tzinfo is None:
        arrival = arrival.replace(tzinfo=UTC)
    return arrival.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dump(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode("utf-8")


def build_envelope(item: Malformed, stream: str, shard_id: str) -> DeadLetter:
    """Wrap one malformed record in an envelope that fits Kinesis's 1 MiB record limit."""
    data = item.data
    partition_key = item.partition_key or FALLBACK_PARTITION_KEY
    fields: dict[str, Any] = {
        "version": ENVELOPE_VERSION,
        "reason": item.reason.value,
        "sourceStream": stream,
        "shardId": shard_id,
        "sequenceNumber": item.sequence_number,
        "subSequenceNumber": item.sub_sequence_number,
        "partitionKey": item.partition_key,
        "arrivalTime": format_arrival(item.arrival),
        "detail": item.detail or None,
        "dataLength": len(data),
        "dataSha256": hashlib.sha256(data).hexdigest(),
        "dataTruncated": False,
        "data": base64.b64encode(data).decode("ascii"),
    }
    arrival = item.arrival.timestamp() if item.arrival else 0.0
    budget = MAX_RECORD_BYTES - len(partition_key.encode("utf-8"))
    body = _dump(fields)
    if len(body) <= budget:
        return DeadLetter(Entry(body, partition_key, arrival), truncated=False)

    # Measure the envelope without data, then keep as many whole base64 quanta (4
    # characters for 3 bytes) as the rest of the budget holds.
    fields["dataTruncated"] = True
    fields["data"] = ""
    room = budget - len(_dump(fields))
    kept = max(0, room // 4 * 3)
    fields["data"] = base64.b64encode(data[:kept]).decode("ascii")
    body = _dump(fields)
    assert len(body) <= budget, f"dead-letter envelope of {len(body)} bytes passes the budget of {budget}"
    return DeadLetter(Entry(body, partition_key, arrival), truncated=True)


def build_envelopes(malformed: Sequence[Malformed], stream: str, shard_id: str) -> tuple[list[Entry], int]:
    """Return the envelopes of a batch's malformed records, in order, and how many were cut."""
    entries: list[Entry] = []
    truncated = 0
    for item in malformed:
        letter = build_envelope(item, stream, shard_id)
        entries.append(letter.entry)
        truncated += letter.truncated
    return entries, truncated
