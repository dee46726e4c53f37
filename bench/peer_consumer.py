"""The peer: a minimal filter-and-forward consumer built on async-kinesis, as a baseline only.

It runs in its own virtual environment (``bench/.peer-venv``, made by ``bench.peer_env``)
because async-kinesis pins an older botocore than the processor's boto3, so it imports
nothing from this repository. It applies the processor's default rule the same way:
the event is decoded with decimal floats, an event whose ``transaction_amount`` is
missing or not a JSON number is skipped, and ``transaction_amount > 100`` is forwarded
as its original bytes. async-kinesis hands a consumer only the record's data, so the
partition key of a forwarded record is read from the event (``card_id``, the key the
benchmark writes with).

The async-kinesis 3.0.1 settings match the processor's budget, and each is a documented
constructor argument. ``shard_fetch_rate=5`` is the Kinesis limit of 5 GetRecords calls
per second per shard (the library's default is 1). ``record_limit=10000`` is the
Kinesis maximum (the processor requests 1,000 to bound its memory). ``sleep_time_no_records`` is the processor's 200 ms poll interval
(default 2 s). A producer ``buffer_time`` of 50 ms (default 500 ms) keeps forwarding from
waiting half a second. Checkpoints go to DynamoDB by default, as the processor's do.

Usage: python peer_consumer.py --input STREAM --output STREAM --table TABLE
Endpoints and region come from AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL and AWS_REGION.
It prints "peer consumer ready" once every shard has an iterator, and a JSON summary
line when SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from decimal import Decimal
from typing import Any

from kinesis import Consumer, Producer
from kinesis.aggregators import SimpleAggregator
from kinesis.checkpointers import MemoryCheckPointer
from kinesis.processors import Processor
from kinesis.serializers import Serializer

READY_LINE = "peer consumer ready"
RULE_FIELD = "transaction_amount"
THRESHOLD = Decimal(100)


class BytesSerializer(Serializer):
    """Passes record data through unchanged, so the peer forwards the bytes it read."""

    def serialize(self, item: bytes) -> bytes:
        return item

    def deserialize(self, data: bytes) -> bytes:
        return data


class BytesProcessor(Processor, SimpleAggregator, BytesSerializer):
    """One record per item, data as bytes: async-kinesis's extension point for payload formats."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_decode_json = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant).decode


def judge(data: bytes) -> dict[str, Any] | None:
    """Return the event when it is an anomaly, else None (malformed events are never anomalies)."""
    try:
        event = _decode_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if type(event) is not dict:
        return None
    amount = event.get(RULE_FIELD)
    if type(amount) is not int and type(amount) is not Decimal:
        return None
    return event if amount > THRESHOLD else None


def make_checkpointer(kind: str, table: str, region: str) -> Any:
    if kind == "memory":
        return MemoryCheckPointer(name=table)
    from kinesis.dynamodb import DynamoDBCheckPointer

    return DynamoDBCheckPointer(
        name=table,
        table_name=table,
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_DYNAMODB") or os.environ.get("AWS_ENDPOINT_URL"),
        region_name=region,
        create_table=True,
    )


async def consume(consumer: Any, producer: Any, key_field: str, counts: dict[str, int]) -> None:
    """Forward every anomaly; the consumer's iteration ends when it is idle, so it is restarted."""
    while True:
        async for data in consumer:
            counts["records"] += 1
            event = judge(data)
            if event is None:
                continue
            key = event.get(key_field)
            await producer.put(data, partition_key=key if isinstance(key, str) and key else None)
            counts["anomalies"] += 1


async def run(args: argparse.Namespace) -> dict[str, int]:
    region = os.environ.get("AWS_REGION", "eu-west-1")
    kinesis_url = os.environ.get("AWS_ENDPOINT_URL_KINESIS") or os.environ.get("AWS_ENDPOINT_URL")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    counts = {"records": 0, "anomalies": 0}
    producer = Producer(
        stream_name=args.output,
        endpoint_url=kinesis_url,
        region_name=region,
        buffer_time=args.buffer_time,
        processor=BytesProcessor(),
    )
    consumer = Consumer(
        stream_name=args.input,
        endpoint_url=kinesis_url,
        region_name=region,
        iterator_type="TRIM_HORIZON",
        record_limit=10_000,
        shard_fetch_rate=args.fetch_rate,
        sleep_time_no_records=args.poll_interval,
        checkpointer=make_checkpointer(args.checkpointer, args.table, region),
        processor=BytesProcessor(),
    )
    async with producer, consumer:
        await consumer.wait_ready(timeout=60)
        print(READY_LINE, flush=True)
        task = asyncio.create_task(consume(consumer, producer, args.key_field, counts))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # re-raises what ended the consumer loop
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--input", required=True, help="stream to read")
    parser.add_argument("--output", required=True, help="stream to write anomalies to")
    parser.add_argument("--table", required=True, help="DynamoDB table (or name) for checkpoints")
    parser.add_argument("--checkpointer", choices=("dynamodb", "memory"), default="dynamodb", help="checkpoint store")
    parser.add_argument("--key-field", default="card_id", help="event field used as the forwarded partition key")
    parser.add_argument("--fetch-rate", type=int, default=5, help="GetRecords calls per second per shard")
    parser.add_argument("--poll-interval", type=float, default=0.2, help="seconds to wait when a shard has no records")
    parser.add_argument("--buffer-time", type=float, default=0.05, help="seconds the producer buffers before a put")
    args = parser.parse_args(argv)
    counts = asyncio.run(run(args))
    print(json.dumps({"peer_summary": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
