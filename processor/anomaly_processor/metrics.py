"""Prometheus metrics of the processor.

Counters are incremented once per batch, not per record, to keep the per-record path
free of metric calls; only the latency histogram is observed per forwarded anomaly.
"""

from __future__ import annotations

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
MILLIS_BEHIND_LATEST: Final = Gauge(
    "anomaly_processor_millis_behind_latest",
    "MillisBehindLatest of the last GetRecords, per shard.",
    ["stream", "shard"],
)
FORWARD_LATENCY: Final = Histogram(
    "anomaly_processor_forward_latency_seconds",
    "Time from the input record's arrival to the anomaly stream accepting it (PutRecords response).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
