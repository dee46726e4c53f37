"""Reading one shard with GetRecords polling.

A ``ShardReader`` keeps the shard iterator and never calls GetRecords more than once
per poll interval (at least 200 ms, so at most 5 calls per second, the Kinesis limit
per shard). It survives what Kinesis does to long-running readers:
``ProvisionedThroughputExceededException`` and endpoint errors back off with jitter,
and ``ExpiredIteratorException`` gets a new iterator after the last position the caller
confirmed, so nothing is read twice or skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from anomaly_processor import metrics
from anomaly_processor.forwarder import backoff_seconds

log = logging.getLogger(__name__)

# Kinesis allows 10,000 per call, but a shard takes at most 1,000 records per second from
# writers, so 1,000 per call at 5 calls per second still drains a backlog at five times the
# write rate. The smaller batches keep a four-shard drain under 80 MB of memory.
MAX_RECORDS_PER_CALL: Final = 1_000


@dataclass(frozen=True, slots=True)
class Batch:
    """Result of one GetRecords call."""

    records: list[dict[str, Any]]
    millis_behind_latest: int
    shard_ended: bool


class ShardReader:
    """Reads one shard from a starting position, one batch at a time."""

    def __init__(
        self,
        kinesis: Any,
        stream: str,
        shard_id: str,
        after_sequence_number: str | None,
        starting_position: str,
        poll_interval: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        *,
        include_start_record: bool = False,
        starting_timestamp: float | None = None,
    ) -> None:
        self._kinesis = kinesis
        self._stream = stream
        self.shard_id = shard_id
        # The last sequence number handed out and confirmed; a new iterator starts after it.
        self.position = after_sequence_number
        # Start at the checkpoint's record rather than after it, until the first confirm: a
        # checkpoint may fall inside a KPL aggregate, and the consumer skips what was done.
        self._include_position = include_start_record and after_sequence_number is not None
        self._starting_position = starting_position
        # Seconds since the epoch, for the AT_TIMESTAMP starting position.
        self._starting_timestamp = starting_timestamp
        self._poll_interval = poll_interval
        self._sleep = sleep
        self._clock = clock
        self._iterator: str | None = None
        self._last_call = float("-inf")
        self._failures = 0
        self._behind = metrics.MILLIS_BEHIND_LATEST.labels(stream=stream, shard=shard_id)

    def _new_iterator(self) -> str:
        kwargs: dict[str, Any] = {"StreamName": self._stream, "ShardId": self.shard_id}
        if self.position is not None:
            kind = "AT_SEQUENCE_NUMBER" if self._include_position else "AFTER_SEQUENCE_NUMBER"
            kwargs.update(ShardIteratorType=kind, StartingSequenceNumber=self.position)
        else:
            kwargs["ShardIteratorType"] = self._starting_position
            if self._starting_position == "AT_TIMESTAMP":
                if self._starting_timestamp is None:
                    raise ValueError(f"shard {self.shard_id}: AT_TIMESTAMP needs a starting timestamp")
                kwargs["Timestamp"] = datetime.fromtimestamp(self._starting_timestamp, UTC)
        return str(self._kinesis.get_shard_iterator(**kwargs)["ShardIterator"])

    def confirm(self, sequence_number: str) -> None:
        """Record that everything up to ``sequence_number`` was handled."""
        self.position = sequence_number
        self._include_position = False

    def read(self) -> Batch | None:
        """Wait for the poll interval, then call GetRecords once.

        Returns None when the call failed and will be retried (the failure is counted
        and logged), so the caller can check for shutdown between attempts.
        """
        wait = self._last_call + self._poll_interval - self._clock()
        if self._failures:
            wait = max(wait, backoff_seconds(self._failures))
        if wait > 0:
            self._sleep(wait)
        self._last_call = self._clock()
        try:
            if self._iterator is None:
                self._iterator = self._new_iterator()
            response = self._kinesis.get_records(ShardIterator=self._iterator, Limit=MAX_RECORDS_PER_CALL)
        except ClientError as error:
            self._on_error(error.response.get("Error", {}).get("Code", "ClientError"), error)
            return None
        except BotoCoreError as error:
            self._on_error(type(error).__name__, error)
            return None
        self._failures = 0
        self._iterator = response.get("NextShardIterator")
        behind = int(response.get("MillisBehindLatest", 0))
        self._behind.set(behind)
        return Batch(response["Records"], behind, self._iterator is None)

    def _on_error(self, code: str, error: Exception) -> None:
        self._failures += 1
        metrics.GET_RETRIES.labels(stream=self._stream, reason=code).inc()
        if code == "ExpiredIteratorException":
            # Resume after the last confirmed record; records since were not confirmed.
            self._iterator = None
            self._failures = 0
            log.info(
                "shard iterator expired; resuming after sequence number %s",
                self.position,
                extra={"stream": self._stream, "shard": self.shard_id},
            )
            return
        if code in ("ResourceNotFoundException", "InvalidArgumentException"):
            self._iterator = None
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning(
                "GetRecords failed (%s); backing off",
                code,
                extra={"stream": self._stream, "shard": self.shard_id, "attempt": self._failures, "error": str(error)},
            )
