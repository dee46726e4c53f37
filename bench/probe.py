"""Response times of the stand-ins themselves while a benchmark loads them.

A thread sends two cheap requests every 100 ms: GetRecords on a shard with no records
(kinesalite) and ListTables (moto). Neither moves data, so their response time is the
time a request waits for the stand-in's process to serve it plus the HTTP round trip.
When a consumer's latency tail matches these, the stand-in, not the consumer, sets it.
The probe adds 10 requests per second to each stand-in.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from bench.consumers import create_stream, delete_streams
from bench.load import latency_figures

PROBE_STREAM: Final = "bench-probe"
PROBE_INTERVAL_SECONDS: Final = 0.1


class EndpointProbe:
    """Times one empty GetRecords and one ListTables per interval, in a thread of its own."""

    def __init__(self) -> None:
        self._kinesis = boto3.client("kinesis")
        self._dynamodb = boto3.client("dynamodb")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endpoint-probe", daemon=True)
        self.kinesalite_ms: list[float] = []
        self.moto_ms: list[float] = []
        self.errors = 0

    def __enter__(self) -> EndpointProbe:
        create_stream(self._kinesis, PROBE_STREAM, 1)
        shard = self._kinesis.list_shards(StreamName=PROBE_STREAM)["Shards"][0]["ShardId"]
        self._iterator = self._kinesis.get_shard_iterator(
            StreamName=PROBE_STREAM, ShardId=shard, ShardIteratorType="LATEST"
        )["ShardIterator"]
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        delete_streams(self._kinesis, PROBE_STREAM)

    def reset(self) -> None:
        """Forget the response times so far, so the figures cover only what follows."""
        self.kinesalite_ms.clear()
        self.moto_ms.clear()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_INTERVAL_SECONDS):
            try:
                started = time.perf_counter()
                response = self._kinesis.get_records(ShardIterator=self._iterator, Limit=1)
                self.kinesalite_ms.append((time.perf_counter() - started) * 1000)
                self._iterator = response["NextShardIterator"]
                started = time.perf_counter()
                self._dynamodb.list_tables(Limit=1)
                self.moto_ms.append((time.perf_counter() - started) * 1000)
            except (ClientError, BotoCoreError):
                self.errors += 1

    def figures(self) -> dict[str, Any]:
        return {
            "kinesalite_empty_get_records_ms": latency_figures(list(self.kinesalite_ms)),
            "moto_list_tables_ms": latency_figures(list(self.moto_ms)),
            "requests": len(self.kinesalite_ms),
            "errors": self.errors,
        }
