"""The benchmark suite with tiny sizes: every scenario runs and every output is written.

This checks that ``make bench`` works, not how fast anything is: no figure is compared
with a target here. It starts kinesalite and moto's server on 127.0.0.1 and, unless
``bench/.peer-venv`` exists already, makes the peer's virtual environment from the
package index (about 15 s).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bench.events import THRESHOLD, generate_events
from bench.report import evaluate_targets, markdown_table

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_TIMEOUT_SECONDS = 240
SMOKE_OPTIONS = [
    "--filter-events=2000",
    "--filter-rounds=1",
    "--shards=2",
    "--rate-per-shard=100",
    "--duration=3",
    "--backlog=2000",
    "--drain-repeats=2",
    "--no-progress",
]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, bool]:
    results = tmp_path_factory.mktemp("bench-results")
    plot = importlib.util.find_spec("matplotlib") is not None
    command = [sys.executable, "-m", "bench", *SMOKE_OPTIONS, f"--results={results}"]
    if not plot:
        command.append("--no-plot")
    finished = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=SMOKE_TIMEOUT_SECONDS, check=False
    )
    return finished, results, plot


def _load(results: Path) -> dict[str, Any]:
    return dict(json.loads((results / "latest.json").read_text()))


@pytest.mark.e2e
def test_smoke_run_exits_zero_and_prints_table(smoke_run: tuple[subprocess.CompletedProcess[str], Path, bool]) -> None:
    finished, _, _ = smoke_run
    assert finished.returncode == 0, f"stdout:\n{finished.stdout}\nstderr:\n{finished.stderr[-4000:]}"
    assert "| benchmark | figure | ours | peer | ours / peer | target | met |" in finished.stdout
    assert "backlog drain, 2,000 events" in finished.stdout


@pytest.mark.e2e
def test_smoke_run_writes_every_section(smoke_run: tuple[subprocess.CompletedProcess[str], Path, bool]) -> None:
    _, results_directory, _ = smoke_run
    results = _load(results_directory)
    assert results["errors"] == []
    assert results["machine"]["cores"]["usable"] >= 1
    assert results["settings"]["shards"] == 2
    assert results["filter_path"]["events"] == 2000
    assert results["filter_path"]["ratio"] > 0
    assert results["backlog_drain"]["backlog_write"]["events"] == 2000
    drains = [(run["consumer"], run["repeat"]) for run in results["backlog_drain"]["runs"]]
    assert drains == [("ours", 1), ("peer", 1), ("peer", 2), ("ours", 2)]
    assert [t["figure"] for t in results["targets"]] == [
        "filter path / bare parse",
        "steady-state latency p99 (ms)",
        "steady-state latency max (ms)",
        "backlog drain rate, ours / peer",
        "peak RSS, steady state (MB)",
        "peak RSS, backlog drain (MB)",
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("consumer", ["ours", "peer"])
@pytest.mark.parametrize("section", ["steady_state", "backlog_drain"])
def test_smoke_run_consumer_forwards_every_anomaly(
    smoke_run: tuple[subprocess.CompletedProcess[str], Path, bool], section: str, consumer: str
) -> None:
    _, results_directory, _ = smoke_run
    run = _load(results_directory)[section][consumer]
    assert run is not None, f"{section} of {consumer} did not run"
    assert run["complete"] is True
    assert run["delivery"]["expected"] > 0
    assert run["delivery"]["missing"] == 0
    assert run["delivery"]["unexpected"] == 0
    assert run["peak_rss_mb"] > 0
    assert run["cpu_seconds"] > 0
    assert run["exit_status"] == 0


@pytest.mark.e2e
def test_smoke_run_reports_latency_and_drain_rate(
    smoke_run: tuple[subprocess.CompletedProcess[str], Path, bool],
) -> None:
    _, results_directory, _ = smoke_run
    results = _load(results_directory)
    steady = results["steady_state"]["ours"]
    assert 0 <= steady["latency_ms"]["p50"] <= steady["latency_ms"]["p99"] <= steady["latency_ms"]["max"]
    assert len(steady["latency_percentiles_ms"]) == 101
    assert results["backlog_drain"]["ours"]["records_per_s"] > 0
    assert results["backlog_drain"]["ours_over_peer"]["records_per_s"] > 0


@pytest.mark.e2e
def test_smoke_run_writes_table_and_plot_files(smoke_run: tuple[subprocess.CompletedProcess[str], Path, bool]) -> None:
    _, results_directory, plot = smoke_run
    assert "| filter path, 2,000 events |" in (results_directory / "latest.md").read_text()
    if not plot:
        pytest.skip("matplotlib is not installed (the bench extra); latest.png was not drawn")
    assert (results_directory / "latest.png").read_bytes().startswith(b"\x89PNG")


def test_events_anomaly_flag_follows_amount_text() -> None:
    events = generate_events(5000, anomaly_fraction=0.1, seed=3)
    for event in events:
        amount = Decimal(json.loads(event.data, parse_float=str, parse_int=str)["transaction_amount"])
        assert event.anomalous == (amount > THRESHOLD), event.data
    share = sum(e.anomalous for e in events) / len(events)
    assert 0.08 < share < 0.12


def test_targets_without_figures_are_not_judged() -> None:
    results: dict[str, Any] = {"settings": {}, "filter_path": None, "steady_state": None, "backlog_drain": None}
    targets = evaluate_targets(results)
    assert [t["met"] for t in targets] == [None] * len(targets)
    assert markdown_table({**results, "targets": targets}).count("\n") == 1
