"""Checkpoints: where each shard's reading resumes, kept in the pipeline's DynamoDB table.

One item per shard, keyed by ``leaseKey`` = shard id. A checkpoint is a sequence number
plus a sub-sequence number (the position inside a KPL-aggregated record), or
``SHARD_END`` once a closed shard has been read to its end. The same item is the shard's
lease (leases.py). A checkpoint is written only after everything before it was
forwarded, and never moves backwards. The write is conditional on the value this worker
read or wrote last. When the store has an owner, it is also conditional on that worker
holding the lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import ClientError

SHARD_END: Final = "SHARD_END"
KEY: Final = "leaseKey"


class LeaseLostError(RuntimeError):
    """This worker no longer holds the shard's lease, so it must stop reading the shard."""


class CheckpointConflictError(LeaseLostError):
    """Another writer changed the shard's checkpoint or lease owner since this worker read it."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A position in a shard: after this record (and this user record inside it)."""

    sequence_number: str
    sub_sequence_number: int = 0

    @property
    def is_shard_end(self) -> bool:
        return self.sequence_number == SHARD_END

    def is_before(self, other: Checkpoint) -> bool:
        """Tell whether ``self`` is an earlier position than ``other`` in the same shard."""
        if other.is_shard_end:
            return not self.is_shard_end
        if self.is_shard_end:
            return False
        mine, theirs = int(self.sequence_number), int(other.sequence_number)
        return (mine, self.sub_sequence_number) < (theirs, other.sub_sequence_number)


class CheckpointStore:
    """Reads and writes checkpoint items of one table."""

    def __init__(self, dynamodb: Any, table: str, owner: str | None = None) -> None:
        self._dynamodb = dynamodb
        self._table = table
        # With an owner, every write also requires that this worker holds the shard's lease.
        self._owner = owner

    def read_item(self, shard_id: str) -> dict[str, Any] | None:
        response = self._dynamodb.get_item(TableName=self._table, Key={KEY: {"S": shard_id}}, ConsistentRead=True)
        item = response.get("Item")
        return dict(item) if item else None

    def read(self, shard_id: str) -> Checkpoint | None:
        return checkpoint_of(self.read_item(shard_id))

    def write(self, shard_id: str, checkpoint: Checkpoint, previous: Checkpoint | None) -> None:
        """Write ``checkpoint`` if the stored one is still ``previous``; never move backwards.

        Raises CheckpointConflictError when the stored checkpoint or the lease owner differs.
        """
        if previous is not None and checkpoint.is_before(previous):
            raise ValueError(f"checkpoint of shard {shard_id} would move back from {previous} to {checkpoint}")
        names = {"#checkpoint": "checkpoint", "#sub": "checkpointSubSequenceNumber"}
        values: dict[str, Any] = {
            ":checkpoint": {"S": checkpoint.sequence_number},
            ":sub": {"N": str(checkpoint.sub_sequence_number)},
        }
        if previous is None:
            condition = "attribute_not_exists(#checkpoint)"
        else:
            condition = "#checkpoint = :previous AND #sub = :previous_sub"
            values[":previous"] = {"S": previous.sequence_number}
            values[":previous_sub"] = {"N": str(previous.sub_sequence_number)}
        if self._owner is not None:
            condition = f"({condition}) AND #owner = :owner"
            names["#owner"] = "leaseOwner"
            values[":owner"] = {"S": self._owner}
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key={KEY: {"S": shard_id}},
                UpdateExpression="SET #checkpoint = :checkpoint, #sub = :sub",
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                holder = f", or worker {self._owner} no longer holds its lease" if self._owner else ""
                raise CheckpointConflictError(
                    f"checkpoint of shard {shard_id} in table {self._table} changed since it was read{holder}"
                ) from error
            raise

    def read_all(self) -> dict[str, dict[str, Any]]:
        """Return every item of the table by shard id, paging through Scan."""
        items: dict[str, dict[str, Any]] = {}
        kwargs: dict[str, Any] = {"TableName": self._table, "ConsistentRead": True}
        while True:
            page = self._dynamodb.scan(**kwargs)
            for item in page.get("Items", []):
                items[item[KEY]["S"]] = item
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def checkpoint_of(item: dict[str, Any] | None) -> Checkpoint | None:
    if not item or "checkpoint" not in item:
        return None
    sub = int(item.get("checkpointSubSequenceNumber", {"N": "0"})["N"])
    return Checkpoint(item["checkpoint"]["S"], sub)
