"""Command line of the benchmark: ``python -m bench`` (``make bench`` runs it with the defaults).

It needs kinesalite under ``.tools/`` (``make tools``) and the ``bench`` extra
(matplotlib). Everything it starts listens on 127.0.0.1 and is stopped before it
exits. Exit status: 0 when every scenario ran, 1 when one failed (the others still
report), 2 for invalid options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.run import RESULTS_DIRECTORY, Run, Settings, write_outputs


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected an integer >= 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected a number > 0")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: expected a fraction from 0 to 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the anomaly processor against an async-kinesis peer on kinesalite and moto (127.0.0.1).",
    )
    parser.add_argument(
        "--filter-events",
        type=_positive_int,
        default=defaults.filter_events,
        help=f"events through the in-process filter path (default: {defaults.filter_events:,})",
    )
    parser.add_argument(
        "--filter-rounds",
        type=_positive_int,
        default=defaults.filter_rounds,
        help=f"timed rounds of each filter loop; the median counts (default: {defaults.filter_rounds})",
    )
    parser.add_argument(
        "--filter-batch-size",
        type=_positive_int,
        default=defaults.filter_batch_size,
        help=f"records per GetRecords-shaped batch in the filter path (default: {defaults.filter_batch_size:,})",
    )
    parser.add_argument(
        "--shards",
        type=_positive_int,
        default=defaults.shards,
        help=f"input stream shards (default: {defaults.shards})",
    )
    parser.add_argument(
        "--rate-per-shard",
        type=_positive_float,
        default=defaults.rate_per_shard,
        help=f"steady-state events per second per shard (default: {defaults.rate_per_shard:,.0f})",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=defaults.duration_seconds,
        help=f"steady-state seconds of load (default: {defaults.duration_seconds:.0f})",
    )
    parser.add_argument(
        "--anomaly-fraction",
        type=_fraction,
        default=defaults.anomaly_fraction,
        help=f"share of events that are anomalies (default: {defaults.anomaly_fraction})",
    )
    parser.add_argument(
        "--backlog",
        type=_positive_int,
        default=defaults.backlog_events,
        help=f"events in the stream before the drain starts (default: {defaults.backlog_events:,})",
    )
    parser.add_argument(
        "--drain-repeats",
        type=_positive_int,
        default=defaults.drain_repeats,
        help=f"backlog drains per consumer, in alternating order; the fastest counts (default: {defaults.drain_repeats})",
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="skip the async-kinesis peer and its virtual environment"
    )
    parser.add_argument(
        "--peer-checkpointer",
        choices=("dynamodb", "memory"),
        default=defaults.peer_checkpointer,
        help=f"where the peer keeps checkpoints (default: {defaults.peer_checkpointer}, as the processor)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw latest.png (no matplotlib needed)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIRECTORY,
        help=f"directory for latest.json, latest.md, latest.png and logs/ (default: {RESULTS_DIRECTORY})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings(
        filter_events=args.filter_events,
        filter_rounds=args.filter_rounds,
        filter_batch_size=args.filter_batch_size,
        shards=args.shards,
        rate_per_shard=args.rate_per_shard,
        duration_seconds=args.duration,
        anomaly_fraction=args.anomaly_fraction,
        backlog_events=args.backlog,
        drain_repeats=args.drain_repeats,
        peer=not args.no_peer,
        peer_checkpointer=args.peer_checkpointer,
        plot=not args.no_plot,
        progress=not args.no_progress,
        results_directory=args.results.resolve(),
    )
    results = Run(settings).execute()
    print(write_outputs(results, settings), flush=True)
    print(f"\nresults: {settings.results_directory / 'latest.json'}", flush=True)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
