"""In-memory stand-ins for a shard consumer's reader, checkpoint store and Kinesis client.

They record the order of what the consumer did, so a test can check that the checkpoint
waited for every write it depends on.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from anomaly_processor.checkpoint import Checkpoint
from anomaly_processor.reader import Batch
from botocore.exceptions import ClientError

ARRIVAL = datetime(2026, 1, 31, 12, 0, 0, 123000, tzinfo=UTC)


def kinesis_record(sequence_number: int, data: bytes, partition_key: str = "") -> dict[str, Any]:
    """Return a record shaped as boto3's GetRecords returns it."""
    return {
        "SequenceNumber": f"{49_600_000_000_000_000_000_000_000_000_000_000_000_000_000 + sequence_number}",
        "ApproximateArrivalTimestamp": ARRIVAL,
        "Data": data,
        "PartitionKey": partition_key or f"key-{sequence_number}",
    }


class OneBatchReader:
    """Returns one batch, then sets the stop event so the consumer's loop ends."""

    def __init__(self, records: list[dict[str, Any]], stop: threading.Event, journal: list[str]) -> None:
        self._records = records
        self._stop = stop
        self._journal = journal
        self.confirmed: list[str] = []

    def read(self) -> Batch | None:
        self._stop.set()
        return Batch(self._records, 0, False)

    def confirm(self, sequence_number: str) -> None:
        self.confirmed.append(sequence_number)


class RecordingCheckpoints:
    def __init__(self, journal: list[str]) -> None:
        self._journal = journal
        self.written: list[Checkpoint] = []

    def write(self, shard_id: str, checkpoint: Checkpoint, previous: Checkpoint | None) -> None:
        self._journal.append("checkpoint")
        self.written.append(checkpoint)


class FlakyKinesis:
    """PutRecords that throttles the first ``throttled_calls`` calls, then fails one entry once, then accepts."""

    def __init__(self, journal: list[str], label: str, throttled_calls: int = 0, fail_one_entry: bool = False) -> None:
        self._journal = journal
        self._label = label
        self._throttled = throttled_calls
        self._fail_one = fail_one_entry
        self.calls: list[list[dict[str, Any]]] = []
        self.accepted: list[dict[str, Any]] = []

    def put_records(self, *, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's names
        self.calls.append(list(Records))
        if self._throttled:
            self._throttled -= 1
            self._journal.append(f"{self._label} throttled")
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "PutRecords"
            )
        results: list[dict[str, Any]] = []
        for index, entry in enumerate(Records):
            if self._fail_one and index == 0:
                self._fail_one = False
                results.append({"ErrorCode": "InternalFailure", "ErrorMessage": "try again"})
                continue
            self.accepted.append({**entry, "StreamName": StreamName})
            results.append({"SequenceNumber": "1", "ShardId": "shardId-000000000000"})
        failed = sum(1 for r in results if "ErrorCode" in r)
        self._journal.append(f"{self._label} accepted {len(Records) - failed}")
        return {"FailedRecordCount": failed, "Records": results}
