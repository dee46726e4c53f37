"""The two stream benchmarks, run once per consumer: steady-state latency and backlog drain.

Steady state: the consumer starts on empty streams and, once it reads every shard,
events are written at a fixed rate for a fixed time. Its CPU time is counted from the
first event until the anomaly stream contains every expected anomaly, and divided by the
events written. Latency is measured per anomaly from the endpoint's arrival stamps.

Backlog drain: every event is in the input stream before the consumer starts. The
drain time runs from starting the consumer's process to the arrival of the last
anomaly, so it includes the process's start-up (reported on its own as well).

Both also report how busy the stand-ins and the load generator (this process) were,
because on a small machine they share the cores with the consumer under test.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import boto3
from anomaly_pipeline.demo import read_whole_stream
from tqdm import tqdm

from bench.consumers import Consumer, Streams, delete_streams
from bench.events import Event
from bench.load import (
    StreamCounter,
    compare_delivery,
    latency_curve,
    latency_figures,
    send_at_rate,
)
from bench.probe import EndpointProbe
from bench.processes import ConsumerProcess, MachineCpu, cpu_seconds
from bench.stand_ins import StandIns

READY_TIMEOUT_SECONDS: Final = 90.0
# How long the steady-state run waits for the last anomalies once the last event is written.
STEADY_COMPLETION_TIMEOUT_SECONDS: Final = 60.0
# A drain that has not finished after this many seconds per 1,000 events (or 2 minutes) is cut off.
DRAIN_TIMEOUT_SECONDS_PER_1000: Final = 1.5
MIN_DRAIN_TIMEOUT_SECONDS: Final = 120.0
# A rate within this share of the target counts as sustained.
SUSTAINED_SHARE: Final = 0.97
# Memory is reported in megabytes of 10**6 bytes, the unit of the 80 MB target.
MEGABYTE: Final = 1_000_000


@dataclass(frozen=True)
class Snapshot:
    """CPU counters of every process involved, read at one moment."""

    wall: float
    consumer_cpu: float
    kinesalite_cpu: float | None
    moto_cpu: float
    load_generator_cpu: float
    machine: MachineCpu

    @classmethod
    def take(cls, consumer: ConsumerProcess, stand_ins: StandIns) -> Snapshot:
        kinesalite = cpu_seconds(stand_ins.kinesalite_pid) if stand_ins.kinesalite_pid else None
        return cls(
            wall=time.monotonic(),
            consumer_cpu=consumer.cpu_seconds(),
            kinesalite_cpu=kinesalite,
            moto_cpu=cpu_seconds(stand_ins.moto_pid),
            load_generator_cpu=time.process_time(),
            machine=MachineCpu.read(),
        )


def cores_used(before: Snapshot, after: Snapshot) -> dict[str, float | None]:
    """Return the cores each process kept busy on average between two snapshots.

    ``other_processes`` is what the machine was busy with beyond the processes listed,
    such as other jobs on a shared machine.
    """
    wall = after.wall - before.wall or 1e-9
    kinesalite = (
        (after.kinesalite_cpu - before.kinesalite_cpu) / wall
        if after.kinesalite_cpu is not None and before.kinesalite_cpu is not None
        else None
    )
    used: dict[str, float | None] = {
        "consumer": (after.consumer_cpu - before.consumer_cpu) / wall,
        "kinesalite": kinesalite,
        "moto": (after.moto_cpu - before.moto_cpu) / wall,
        "load_generator": (after.load_generator_cpu - before.load_generator_cpu) / wall,
    }
    busy_share = after.machine.busy_fraction_since(before.machine)
    known = sum(value for value in used.values() if value is not None)
    # /proc/stat counts every core of the machine, whatever this process may run on.
    used["other_processes"] = max(0.0, busy_share * (os.cpu_count() or 1) - known)
    used["machine_busy_share"] = busy_share
    return used


def progress_bar(total: int, description: str, show: bool, unit: str = "ev") -> tqdm[Any]:
    """Return a progress bar on stderr that redraws every 0.1 s on a terminal, every 10 s into a file."""
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        disable=not show,
        leave=False,
        dynamic_ncols=True,
        mininterval=interval,
    )


def run_steady_state(
    consumer: Consumer,
    stand_ins: StandIns,
    events: Sequence[Event],
    shards: int,
    target_rate: float,
    probe: EndpointProbe,
    show_progress: bool,
) -> dict[str, Any]:
    """Run one consumer through the steady-state load and return its figures."""
    kinesis = boto3.client("kinesis")
    expected = sum(1 for e in events if e.anomalous)
    streams = consumer.prepare("steady", shards)
    try:
        process = consumer.start(streams, "steady")
        try:
            text, count = consumer.ready_lines(shards)
            startup = process.wait_for_log(text, count, READY_TIMEOUT_SECONDS)
            counter = StreamCounter(kinesis, streams.output)
            probe.reset()
            before = Snapshot.take(process, stand_ins)
            with progress_bar(len(events), f"steady state, {consumer.name}: events written", show_progress) as bar:
                sent = send_at_rate(kinesis, streams.input, events, target_rate, bar.update)
            with progress_bar(expected, f"steady state, {consumer.name}: anomalies arrived", show_progress) as bar:
                complete = counter.wait_for(expected, STEADY_COMPLETION_TIMEOUT_SECONDS, bar.update)
            after = Snapshot.take(process, stand_ins)
            stand_in_response = probe.figures()
            peak_rss = process.peak_rss_bytes()
        finally:
            exit_status = process.stop()
        delivery = compare_delivery(
            events, read_whole_stream(kinesis, streams.output), read_whole_stream(kinesis, streams.input)
        )
    finally:
        # Deleted even after a failure, so the next run finds free shards.
        delete_streams(kinesis, streams.input, streams.output)

    consumer_cpu = after.consumer_cpu - before.consumer_cpu
    return {
        "consumer": consumer.name,
        "streams": _streams(streams),
        "target_rate_per_s": target_rate,
        "offered_rate_per_s": sent.rate,
        "rate_sustained": sent.rate >= SUSTAINED_SHARE * target_rate,
        "send_seconds": sent.seconds,
        "events": len(events),
        "complete": complete,
        "delivery": delivery.as_dict(),
        "latency_ms": latency_figures(delivery.latencies_ms),
        "latency_percentiles_ms": latency_curve(delivery.latencies_ms),
        "startup_seconds": startup,
        "cpu_seconds": consumer_cpu,
        "cpu_seconds_per_1000_records": consumer_cpu / len(events) * 1000 if events else None,
        "peak_rss_mb": peak_rss / MEGABYTE,
        "cores_used": cores_used(before, after),
        "stand_in_response": stand_in_response,
        "exit_status": exit_status,
        "log": str(process.log_path),
    }


def run_backlog_drain(
    consumer: Consumer,
    stand_ins: StandIns,
    streams: Streams,
    events: Sequence[Event],
    shards: int,
    probe: EndpointProbe,
    show_progress: bool,
    repeat: int = 1,
) -> dict[str, Any]:
    """Start one consumer on a stream that already contains ``events``; return its drain figures."""
    kinesis = boto3.client("kinesis")
    expected = sum(1 for e in events if e.anomalous)
    counter = StreamCounter(kinesis, streams.output)
    timeout = max(MIN_DRAIN_TIMEOUT_SECONDS, len(events) / 1000 * DRAIN_TIMEOUT_SECONDS_PER_1000)
    probe.reset()
    try:
        process = consumer.start(streams, f"drain-{repeat}")
        try:
            before = Snapshot.take(process, stand_ins)
            text, count = consumer.ready_lines(shards)
            startup = process.wait_for_log(text, count, READY_TIMEOUT_SECONDS)
            with progress_bar(
                expected, f"backlog drain, {consumer.name}, run {repeat}: anomalies arrived", show_progress
            ) as bar:
                complete = counter.wait_for(expected, timeout, bar.update)
            after = Snapshot.take(process, stand_ins)
            stand_in_response = probe.figures()
            total_cpu = process.cpu_seconds()
            peak_rss = process.peak_rss_bytes()
        finally:
            exit_status = process.stop()
        delivery = compare_delivery(events, read_whole_stream(kinesis, streams.output), [])
    finally:
        # The input stream is shared by every drain; only this run's anomaly stream goes.
        delete_streams(kinesis, streams.output)
    seconds = delivery.last_arrival - process.started_at if delivery.last_arrival is not None else None
    return {
        "consumer": consumer.name,
        "repeat": repeat,
        "streams": _streams(streams),
        "events": len(events),
        "complete": complete,
        "delivery": delivery.as_dict(),
        "seconds": seconds,
        "records_per_s": len(events) / seconds if complete and seconds else None,
        "startup_seconds": startup,
        "cpu_seconds": total_cpu,
        "cpu_seconds_per_1000_records": total_cpu / len(events) * 1000 if events else None,
        "peak_rss_mb": peak_rss / MEGABYTE,
        "cores_used": cores_used(before, after),
        "stand_in_response": stand_in_response,
        "exit_status": exit_status,
        "log": str(process.log_path),
    }


def _streams(streams: Streams) -> dict[str, str]:
    return {"input": streams.input, "output": streams.output, "checkpoint_table": streams.table}


def core_count() -> dict[str, int | None]:
    """Return the machine's logical cores and the cores this process may run on."""
    return {"logical": os.cpu_count(), "usable": len(os.sched_getaffinity(0))}
