"""Prometheus metrics of the processor, served on ``/metrics`` by health.py.

Counters are incremented once per batch, not per record, to keep the per-record path
free of metric calls; only the latency histogram is observed per forwarded anomaly.
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
    "Shard leases this worker took, by the lease's state before: free, expired, or restart (held by this worker id before).",
    ["reason"],
)
LEASES_LOST: Final = Counter(
    "anomaly_processor_leases_lost", "Shard leases this worker found taken by another worker before it released them."
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
