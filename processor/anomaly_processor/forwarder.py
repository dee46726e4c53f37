"""Forwarding of anomalous records to the anomaly stream with batched PutRecords.

``forward`` returns only when every entry was accepted, so the caller may checkpoint
after it. Calls carry at most 500 entries and 5 MiB; entries that a call reports as
failed are resent alone, and throttling or an unreachable endpoint backs off with
full jitter and retries without a limit. The order of entries in the anomaly stream is
best effort: a resent entry lands after entries that succeeded first.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter, Histogram

from anomaly_processor import metrics

log = logging.getLogger(__name__)

MAX_ENTRIES_PER_CALL: Final = 500
MAX_BYTES_PER_CALL: Final = 5 * 1024 * 1024
BACKOFF_BASE_SECONDS: Final = 0.05
BACKOFF_MAX_SECONDS: Final = 5.0


@dataclass(frozen=True, slots=True)
class Entry:
    """One record to write: its original bytes and partition key, and when it arrived."""

    data: bytes
    partition_key: str
    arrival: float  # input record's ApproximateArrivalTimestamp, seconds since the epoch

    @property
    def size(self) -> int:
        return len(self.data) + len(self.partition_key.encode())


def chunk_entries(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Split entries into PutRecords calls of at most 500 entries and 5 MiB, in order."""
    calls: list[list[Entry]] = []
    current: list[Entry] = []
    size = 0
    for entry in entries:
        if current and (len(current) == MAX_ENTRIES_PER_CALL or size + entry.size > MAX_BYTES_PER_CALL):
            calls.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.size
    if current:
        calls.append(current)
    return calls


def backoff_seconds(attempt: int) -> float:
    """Return a full-jitter delay for the given retry attempt (1, 2, ...)."""
    return random.uniform(0, min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))  # noqa: S311


class Forwarder:
    """Writes entries to one stream until all are accepted."""

    def __init__(
        self,
        kinesis: Any,
        stream: str,
        shard_label: str = "",
        sleep: Callable[[float], None] = time.sleep,
        *,
        accepted_counter: Counter | None = None,
        latency: Histogram | None = metrics.FORWARD_LATENCY,
    ) -> None:
        """Write to ``stream``; by default count accepted entries as anomalies and observe their latency.

        The dead-letter stream's forwarder passes its own ``accepted_counter`` and no
        ``latency``, so dead letters do not count as anomalies in the forward metrics.
        """
        self._kinesis = kinesis
        self._stream = stream
        self._sleep = sleep
        self._shard = shard_label
        self._retries = metrics.PUT_RETRIES.labels(stream=stream)
        if accepted_counter is None:
            accepted_counter = metrics.ANOMALIES_FORWARDED.labels(stream=stream)
        self._forwarded = accepted_counter
        self._latency = latency

    def forward(self, entries: Sequence[Entry]) -> int:
        """Write every entry; return the number of PutRecords calls made."""
        calls = 0
        for batch in chunk_entries(entries):
            calls += self._put_all(batch)
        return calls

    def _put_all(self, batch: list[Entry]) -> int:
        pending = batch
        attempt = 0
        calls = 0
        while pending:
            if attempt:
                self._retries.inc(len(pending))
                self._sleep(backoff_seconds(attempt))
            attempt += 1
            calls += 1
            try:
                response = self._kinesis.put_records(
                    StreamName=self._stream,
                    Records=[{"Data": e.data, "PartitionKey": e.partition_key} for e in pending],
                )
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                self._log_retry(attempt, len(pending), code, error)
                if code in ("ResourceNotFoundException", "AccessDeniedException") and attempt % 20 == 0:
                    log.error(
                        "stream %s cannot be written (%s); check that it exists and the role may write it",
                        self._stream,
                        code,
                    )
                continue
            except BotoCoreError as error:
                self._log_retry(attempt, len(pending), type(error).__name__, error)
                continue
            now = time.time()
            failed = response.get("FailedRecordCount", 0)
            results = response["Records"]
            accepted = [e for e, r in zip(pending, results, strict=True) if "ErrorCode" not in r] if failed else pending
            if self._latency is not None:
                for entry in accepted:
                    self._latency.observe(max(0.0, now - entry.arrival))
            self._forwarded.inc(len(accepted))
            if failed:
                pending = [e for e, r in zip(pending, results, strict=True) if "ErrorCode" in r]
                codes = sorted({r["ErrorCode"] for r in results if "ErrorCode" in r})
                self._log_retry(attempt, failed, ",".join(codes), None)
            else:
                pending = []
        return calls

    def _log_retry(self, attempt: int, count: int, code: str, error: Exception | None) -> None:
        # Throttling comes in bursts: log the first retry and then every tenth.
        if attempt == 1 or attempt % 10 == 0:
            log.warning(
                "PutRecords to %s failed for %d entries (%s); retrying",
                self._stream,
                count,
                code,
                extra={"stream": self._stream, "shard": self._shard, "attempt": attempt, "error": str(error or code)},
            )
