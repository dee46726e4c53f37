"""One benchmark run: every scenario in order, then the JSON, the table and the plot.

Order: the peer's environment (first, so a failing install shows at once), the filter
path, then the stand-ins and the two stream benchmarks, each run for our processor first
and the peer second. A failure in one consumer's run is recorded in ``errors`` and the
others still run; the exit status is then 1.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from bench import report
from bench.consumers import Consumer, Ours, Peer, delete_streams
from bench.events import Event, generate_events, iter_events
from bench.filter_path import run_filter_path
from bench.load import write_backlog
from bench.peer_env import PEER_REQUIREMENT, PeerEnvironmentError, ensure_peer_environment
from bench.probe import EndpointProbe
from bench.scenarios import core_count, progress_bar, run_backlog_drain, run_steady_state
from bench.stand_ins import StandIns, running_stand_ins

RESULTS_DIRECTORY: Final = Path(__file__).resolve().parent / "results"
SCHEMA_VERSION: Final = 1
# Separate seeds keep the three loads from being the same events.
FILTER_SEED: Final = 11
STEADY_SEED: Final = 12
BACKLOG_SEED: Final = 13
# Exceptions of a failed consumer run: its own errors, AWS errors, and /proc reads of a process that exited.
RUN_ERRORS: Final = (RuntimeError, ClientError, BotoCoreError, OSError, LookupError)
# Events generated between two updates of the progress bar.
PROGRESS_STEP: Final = 10_000


@dataclass(frozen=True)
class Settings:
    """The sizes of one run; the defaults are the full benchmark."""

    filter_events: int = 1_000_000
    filter_rounds: int = 3
    filter_batch_size: int = 1_000
    shards: int = 4
    rate_per_shard: float = 1_000.0
    duration_seconds: float = 60.0
    anomaly_fraction: float = 0.10
    backlog_events: int = 200_000
    drain_repeats: int = 2
    peer: bool = True
    peer_checkpointer: str = "dynamodb"
    plot: bool = True
    progress: bool = True
    results_directory: Path = RESULTS_DIRECTORY

    def as_dict(self) -> dict[str, Any]:
        settings = asdict(self)
        settings["results_directory"] = str(self.results_directory)
        return settings


def _utc_now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _node_version() -> str | None:
    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=10, check=True)  # noqa: S607 - the node on PATH, which runs kinesalite
    except (OSError, subprocess.SubprocessError):
        return None
    return node.stdout.strip()


def describe_machine() -> dict[str, Any]:
    return {
        "cores": core_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def describe_versions() -> dict[str, Any]:
    from tests.tools.install import installed_kinesalite_version

    return {
        "anomaly-pipeline": _version("anomaly-pipeline"),
        "boto3": _version("boto3"),
        "moto": _version("moto"),
        "kinesalite": installed_kinesalite_version(),
        "node": _node_version(),
        "peer": PEER_REQUIREMENT,
    }


class Run:
    """Runs the scenarios of one benchmark and collects their results."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.errors: list[str] = []
        self.logs = settings.results_directory / "logs"
        self.results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "started_at": _utc_now(),
            "machine": describe_machine(),
            "versions": describe_versions(),
            "settings": settings.as_dict(),
        }

    def _say(self, line: str) -> None:
        tqdm.write(line) if self.settings.progress else print(line, flush=True)

    def execute(self) -> dict[str, Any]:
        started = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        peer_python = self._prepare_peer()
        self.results["filter_path"] = self._filter_path()
        with running_stand_ins(self.logs) as stand_ins, EndpointProbe() as probe:
            consumers: list[Consumer] = [Ours(stand_ins, self.logs)]
            if peer_python is not None:
                consumers.append(Peer(stand_ins, self.logs, peer_python, self.settings.peer_checkpointer))
            self.results["steady_state"] = self._steady_state(stand_ins, probe, consumers)
            self.results["backlog_drain"] = self._backlog_drain(stand_ins, probe, consumers)
        self.results["finished_at"] = _utc_now()
        self.results["duration_seconds"] = time.monotonic() - started
        self.results["targets"] = report.evaluate_targets(self.results)
        self.results["errors"] = self.errors
        return self.results

    def _prepare_peer(self) -> Path | None:
        if not self.settings.peer:
            return None
        self._say(f"peer: preparing its virtual environment ({PEER_REQUIREMENT})")
        try:
            return ensure_peer_environment()
        except PeerEnvironmentError as error:
            self.errors.append(f"peer skipped: {error}")
            return None

    def _filter_path(self) -> dict[str, Any]:
        settings = self.settings
        self._say(f"filter path: {settings.filter_events:,} events, {settings.filter_rounds} rounds of each loop")
        events: list[Event] = []
        with progress_bar(settings.filter_events, "filter path: generating events", settings.progress) as bar:
            for event in iter_events(settings.filter_events, settings.anomaly_fraction, FILTER_SEED):
                events.append(event)
                if len(events) % PROGRESS_STEP == 0:
                    bar.update(PROGRESS_STEP)
            bar.update(len(events) % PROGRESS_STEP)
        with progress_bar(2 * settings.filter_rounds, "filter path: timing rounds", settings.progress, "round") as bar:
            result = run_filter_path(events, settings.filter_batch_size, settings.filter_rounds, bar.update)
        return result.as_dict()

    def _steady_state(self, stand_ins: StandIns, probe: EndpointProbe, consumers: list[Consumer]) -> dict[str, Any]:
        settings = self.settings
        rate = settings.shards * settings.rate_per_shard
        count = round(rate * settings.duration_seconds)
        self._say(
            f"steady state: {settings.shards} shards x {settings.rate_per_shard:,.0f} ev/s for {settings.duration_seconds:.0f} s"
        )
        events = generate_events(count, settings.anomaly_fraction, STEADY_SEED)
        section: dict[str, Any] = {"ours": None, "peer": None}
        for consumer in consumers:
            try:
                section[consumer.name] = run_steady_state(
                    consumer, stand_ins, events, settings.shards, rate, probe, settings.progress
                )
            except RUN_ERRORS as error:
                self.errors.append(f"steady state, {consumer.name}: {error}")
        section["ours_over_peer"] = report.ours_over_peer("steady_state", section["ours"], section["peer"])
        return section

    def _backlog_drain(self, stand_ins: StandIns, probe: EndpointProbe, consumers: list[Consumer]) -> dict[str, Any]:
        settings = self.settings
        self._say(
            f"backlog drain: {settings.backlog_events:,} events written once, then drained "
            f"{settings.drain_repeats} times by each consumer; the fastest run counts"
        )
        events = generate_events(settings.backlog_events, settings.anomaly_fraction, BACKLOG_SEED)
        kinesis = boto3.client("kinesis")
        section: dict[str, Any] = {"ours": None, "peer": None}

        # The processor's pipeline owns the input stream; every drain, the peer's too, reads it.
        ours_streams = consumers[0].prepare("drain", settings.shards)
        with progress_bar(len(events), "backlog drain: writing the backlog", settings.progress) as bar:
            written = write_backlog(kinesis, ours_streams.input, events, bar.update)
        section["backlog_write"] = {"events": written.events, "seconds": written.seconds, "rate_per_s": written.rate}

        runs: list[dict[str, Any]] = []
        for repeat in range(settings.drain_repeats):
            # Alternate the order (ours, peer, peer, ours, ...) so a drift in the machine's load hits both.
            for consumer in consumers if repeat % 2 == 0 else consumers[::-1]:
                try:
                    streams = consumer.prepare("drain", settings.shards, ours_streams.input)
                    run = run_backlog_drain(
                        consumer, stand_ins, streams, events, settings.shards, probe, settings.progress, repeat + 1
                    )
                except RUN_ERRORS as error:
                    self.errors.append(f"backlog drain, {consumer.name}, run {repeat + 1}: {error}")
                    continue
                runs.append(run)
                best = section[consumer.name]
                if best is None or (run["records_per_s"] or 0) > (best["records_per_s"] or 0):
                    section[consumer.name] = run

        section["runs"] = runs
        delete_streams(kinesis, ours_streams.input)
        section["ours_over_peer"] = report.ours_over_peer("backlog_drain", section["ours"], section["peer"])
        return section


def write_outputs(results: dict[str, Any], settings: Settings) -> str:
    """Write latest.json, latest.md and (unless disabled) latest.png; return the printed text."""
    directory = settings.results_directory
    report.write_json(results, directory / "latest.json")
    text = "\n".join([*report.summary_lines(results), "", report.markdown_table(results)])
    (directory / "latest.md").write_text(text + "\n")
    if settings.plot:
        report.write_plot(results, directory / "latest.png")
    return text
