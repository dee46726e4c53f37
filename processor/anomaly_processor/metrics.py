"""Prometheus metrics of the processor, served on ``/metrics`` by health.py.

Counters are incremented once per batch, not per record, so the per-record path makes
no metric calls. Only the latency histogram is observed per forwarded anomaly.
"""

from __future__ import annotations

import contextlib
from typing import Final

from prometheus_client import Counter, Gauge, Histogram

RECORDS_READ: Final = Counter(
    "anomaly_processor_records_read", "Records read from the input stream.", ["stream", "shard"]
)
ANOMALIES_FORWARDED: Final = Counter(
    "anomaly_processor_anomalies_forwarded", "Anomalous records accepted by the anomaly stream.", ["stream"]
)
MALFORMED_RECORDS: Final = Counter(
    "anomaly_processor_malformed_records", "Records that could not be judged, by reason.", ["stream", "reason"]
)
PUT_RETRIES: Final = Counter(
    "anomaly_processor_put_retries", "PutRecords entries resent after a failure or throttling.", ["stream"]
)
GET_RETRIES: Final = Counter(
    "anomaly_processor_get_retries", "GetRecords calls retried after throttling or an error.", ["stream", "reason"]
)
LEASES_HELD: Final = Gauge("anomaly_processor_leases_held", "Shard leases this worker holds.")
LEASES_TAKEN: Final = Counter(
    "anomaly_processor_leases_taken",
    "Shard leases this worker took, by the lease's state before: free, expired, or assigned to this worker id.",
    ["reason"],
)
LEASES_LOST: Final = Counter(
    "anomaly_processor_leases_lost", "Shard leases this worker found taken by another worker before it released them."
)
SHARDS_EXPIRED_UNREAD: Final = Counter(
    "anomaly_processor_shards_expired_unread",
    "Shards that left the stream's retention before they were read to their end; their unread records are lost.",
    ["stream"],
)
MILLIS_BEHIND_LATEST: Final = Gauge(
    "anomaly_processor_millis_behind_latest",
    "MillisBehindLatest of the last GetRecords, per shard this worker holds.",
    ["stream", "shard"],
)
FORWARD_LATENCY: Final = Histogram(
    "anomaly_processor_forward_latency_seconds",
    "Time from the input record's arrival to the anomaly stream accepting it (PutRecords response).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)


def forget_shard(stream: str, shard: str) -> None:
    """Drop the per-shard gauge of a shard this worker no longer holds, so no stale lag is reported."""
    # KeyError: the shard was never read here.
    with contextlib.suppress(KeyError):
        MILLIS_BEHIND_LATEST.remove(stream, shard)


USER_RECORDS_DEAGGREGATED: Final = Counter(
    "anomaly_processor_user_records_deaggregated",
    "User records taken out of KPL-aggregated records, each judged on its own.",
    ["stream", "shard"],
)
SHADOW_VERDICTS: Final = Counter(
    "anomaly_processor_shadow_verdicts",
    "Events judged by the shadow detector, by whether its verdict agreed with the active detector's "
    "(result: agreement or disagreement) and by its own verdict (shadow_verdict: anomalous or normal).",
    ["stream", "detector", "result", "shadow_verdict"],
)
SHADOW_ERRORS: Final = Counter(
    "anomaly_processor_shadow_errors",
    "Events the shadow detector raised an exception on; the active detector's verdict stood.",
    ["stream", "detector"],
)
DEAD_LETTERS_WRITTEN: Final = Counter(
    "anomaly_processor_dead_letters_written",
    "Dead-letter envelopes accepted by the dead-letter stream.",
    ["stream"],
)
DEAD_LETTERS_TRUNCATED: Final = Counter(
    "anomaly_processor_dead_letters_truncated",
    "Dead-letter envelopes whose original bytes were cut to fit Kinesis's 1 MiB record limit, by input stream.",
    ["stream"],
)
RULES_RELOADS: Final = Counter(
    "anomaly_processor_rules_reloads",
    "Changes of the processor settings file read by the rules reloader, by result: applied or failed.",
    ["result"],
)
RULES_FILE_VALID: Final = Gauge(
    "anomaly_processor_rules_file_valid",
    "1 when the detectors in force come from the settings file's current content, "
    "0 when its last change could not be applied and the previous detectors stay in force.",
)
