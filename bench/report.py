"""The benchmark's outputs: targets, ``latest.json``, a markdown table and ``latest.png``.

Targets are printed beside the figures they judge and are never asserted: a missed
target is a finding, not a failed run. They apply to our processor; the peer is a
baseline. Every key of ``latest.json`` is described in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

TARGET_FILTER_SHARE: Final = 0.50
TARGET_P99_MS: Final = 300.0
TARGET_MAX_MS: Final = 1000.0
# The latency targets hold at 4 shards x 1,000 events/s; a run written at less is not judged.
TARGET_LATENCY_RATE: Final = 4000.0
LATENCY_RATE_SHARE: Final = 0.97
TARGET_DRAIN_OVER_PEER: Final = 2.0
TARGET_PEAK_RSS_MB: Final = 80.0
# Cores taken by other processes during a run from which the summary warns about them.
OTHER_LOAD_NOTE_CORES: Final = 0.25

# Figures divided ours / peer, by where they sit in a run's result.
RATIO_FIGURES: Final = {
    "steady_state": (
        ("latency_p50_ms", ("latency_ms", "p50")),
        ("latency_p95_ms", ("latency_ms", "p95")),
        ("latency_p99_ms", ("latency_ms", "p99")),
        ("latency_max_ms", ("latency_ms", "max")),
        ("cpu_seconds_per_1000_records", ("cpu_seconds_per_1000_records",)),
        ("peak_rss_mb", ("peak_rss_mb",)),
    ),
    "backlog_drain": (
        ("records_per_s", ("records_per_s",)),
        ("seconds", ("seconds",)),
        ("cpu_seconds_per_1000_records", ("cpu_seconds_per_1000_records",)),
        ("peak_rss_mb", ("peak_rss_mb",)),
    ),
}


def _get(run: dict[str, Any] | None, path: tuple[str, ...]) -> float | None:
    value: Any = run
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def ours_over_peer(section: str, ours: dict[str, Any] | None, peer: dict[str, Any] | None) -> dict[str, float | None]:
    """Return each figure of ``section`` as ours / peer, None where either is missing or the peer's is 0."""
    ratios: dict[str, float | None] = {}
    for name, path in RATIO_FIGURES[section]:
        mine, theirs = _get(ours, path), _get(peer, path)
        ratios[name] = mine / theirs if mine is not None and theirs else None
    return ratios


def _target(figure: str, value: float | None, target: str, met: Callable[[float], bool]) -> dict[str, Any]:
    return {"figure": figure, "value": value, "target": target, "met": None if value is None else met(value)}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Judge our figures against the targets.

    ``met`` is None where a figure was not measured, and for the latency targets when
    the steady state was written at less than 4,000 events/s.
    """
    steady = results.get("steady_state") or {}
    drain = results.get("backlog_drain") or {}
    filter_path = results.get("filter_path") or {}
    steady_ours = steady.get("ours")
    drain_ours = drain.get("ours")
    rate = _get(steady_ours, ("offered_rate_per_s",))
    at_target_load = rate is not None and rate >= LATENCY_RATE_SHARE * TARGET_LATENCY_RATE
    latency_condition = f" at {TARGET_LATENCY_RATE:,.0f} ev/s"
    return [
        _target(
            "filter path / bare parse",
            filter_path.get("ratio"),
            f">= {TARGET_FILTER_SHARE:.0%}",
            lambda v: v >= TARGET_FILTER_SHARE,
        ),
        _target(
            "steady-state latency p99 (ms)",
            _get(steady_ours, ("latency_ms", "p99")) if at_target_load else None,
            f"<= {TARGET_P99_MS:.0f}{latency_condition}",
            lambda v: v <= TARGET_P99_MS,
        ),
        _target(
            "steady-state latency max (ms)",
            _get(steady_ours, ("latency_ms", "max")) if at_target_load else None,
            f"<= {TARGET_MAX_MS:.0f}{latency_condition}",
            lambda v: v <= TARGET_MAX_MS,
        ),
        _target(
            "backlog drain rate, ours / peer",
            (drain.get("ours_over_peer") or {}).get("records_per_s"),
            f">= {TARGET_DRAIN_OVER_PEER:.0f}x",
            lambda v: v >= TARGET_DRAIN_OVER_PEER,
        ),
        _target(
            "peak RSS, steady state (MB)",
            _get(steady_ours, ("peak_rss_mb",)),
            f"<= {TARGET_PEAK_RSS_MB:.0f}",
            lambda v: v <= TARGET_PEAK_RSS_MB,
        ),
        _target(
            "peak RSS, backlog drain (MB)",
            _get(drain_ours, ("peak_rss_mb",)),
            f"<= {TARGET_PEAK_RSS_MB:.0f}",
            lambda v: v <= TARGET_PEAK_RSS_MB,
        ),
    ]


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


# Markdown table


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _verdict(targets: list[dict[str, Any]], figure: str) -> tuple[str, str]:
    for target in targets:
        if target["figure"] == figure:
            met = target["met"]
            if met is None:
                return target["target"], "-"
            return target["target"], "yes" if met else "**no**"
    return "", ""


def _delivery(run: dict[str, Any] | None) -> str:
    if not run or "delivery" not in run:
        return "-"
    d = run["delivery"]
    return f"{d['missing']} / {d['unexpected']} / {d['duplicates']}"


def _machine(run: dict[str, Any] | None) -> str:
    cores = (run or {}).get("cores_used")
    if not cores:
        return "-"
    kinesalite = "-" if cores["kinesalite"] is None else f"{cores['kinesalite']:.2f}"
    return f"{kinesalite} / {cores['other_processes']:.2f} ({cores['machine_busy_share']:.0%})"


def _stand_in_rows(label: str, ours: dict[str, Any] | None, peer: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """Return the rows that show how loaded the machine and kinesalite were during each run."""
    path = ("stand_in_response", "kinesalite_empty_get_records_ms")
    return [
        (
            label,
            "kinesalite empty GetRecords p99 / max (ms)",
            f"{_number(_get(ours, (*path, 'p99')))} / {_number(_get(ours, (*path, 'max')))}",
            f"{_number(_get(peer, (*path, 'p99')))} / {_number(_get(peer, (*path, 'max')))}",
            "",
            "",
            "",
        ),
        (
            label,
            "cores used by kinesalite / by other processes (machine busy)",
            _machine(ours),
            _machine(peer),
            "",
            "",
            "",
        ),
    ]


def markdown_table(results: dict[str, Any]) -> str:
    """Return every figure as a markdown table: ours, peer, ours / peer, target and whether it was met."""
    targets = results.get("targets", [])
    rows: list[tuple[str, ...]] = []

    filter_path = results.get("filter_path")
    if filter_path:
        label = f"filter path, {filter_path['events']:,} events"
        target, met = _verdict(targets, "filter path / bare parse")
        rows += [
            (
                label,
                "per-record path (records/s)",
                _number(filter_path["per_record_path_records_per_s"]),
                "",
                "",
                "",
                "",
            ),
            (label, "bare json.loads (records/s)", _number(filter_path["bare_parse_records_per_s"]), "", "", "", ""),
            (label, "per-record path / bare parse", f"{filter_path['ratio']:.0%}", "", "", target, met),
        ]

    steady = results.get("steady_state")
    if steady:
        ours, peer, ratio = steady.get("ours"), steady.get("peer"), steady.get("ours_over_peer") or {}
        settings = results["settings"]
        label = f"steady state, {settings['shards']} x {settings['rate_per_shard']:,.0f} ev/s, {settings['duration_seconds']:.0f} s"
        rows.append(
            (
                label,
                "rate written (ev/s)",
                _number(_get(ours, ("offered_rate_per_s",))),
                _number(_get(peer, ("offered_rate_per_s",))),
                "",
                _number(settings["shards"] * settings["rate_per_shard"]),
                "",
            )
        )
        for key, name in (("p50", "latency p50 (ms)"), ("p95", "latency p95 (ms)")):
            rows.append(
                (
                    label,
                    name,
                    _number(_get(ours, ("latency_ms", key))),
                    _number(_get(peer, ("latency_ms", key))),
                    _ratio(ratio.get(f"latency_{key}_ms")),
                    "",
                    "",
                )
            )
        for key, name, figure in (
            ("p99", "latency p99 (ms)", "steady-state latency p99 (ms)"),
            ("max", "latency max (ms)", "steady-state latency max (ms)"),
        ):
            target, met = _verdict(targets, figure)
            rows.append(
                (
                    label,
                    name,
                    _number(_get(ours, ("latency_ms", key))),
                    _number(_get(peer, ("latency_ms", key))),
                    _ratio(ratio.get(f"latency_{key}_ms")),
                    target,
                    met,
                )
            )
        target, met = _verdict(targets, "peak RSS, steady state (MB)")
        rows += [
            (
                label,
                "CPU s per 1,000 records",
                _number(_get(ours, ("cpu_seconds_per_1000_records",)), 3),
                _number(_get(peer, ("cpu_seconds_per_1000_records",)), 3),
                _ratio(ratio.get("cpu_seconds_per_1000_records")),
                "",
                "",
            ),
            (
                label,
                "peak RSS (MB)",
                _number(_get(ours, ("peak_rss_mb",)), 1),
                _number(_get(peer, ("peak_rss_mb",)), 1),
                _ratio(ratio.get("peak_rss_mb")),
                target,
                met,
            ),
            (
                label,
                "anomalies missing / unexpected / duplicated",
                _delivery(ours),
                _delivery(peer),
                "",
                "0 / 0 / 0",
                "",
            ),
            *_stand_in_rows(label, ours, peer),
        ]

    drain = results.get("backlog_drain")
    if drain:
        ours, peer, ratio = drain.get("ours"), drain.get("peer"), drain.get("ours_over_peer") or {}
        label = f"backlog drain, {results['settings']['backlog_events']:,} events"
        target, met = _verdict(targets, "backlog drain rate, ours / peer")
        rss_target, rss_met = _verdict(targets, "peak RSS, backlog drain (MB)")
        rows += [
            (
                label,
                "drain rate (records/s)",
                _number(_get(ours, ("records_per_s",))),
                _number(_get(peer, ("records_per_s",))),
                _ratio(ratio.get("records_per_s")),
                target,
                met,
            ),
            (
                label,
                "drain time incl. start-up (s)",
                _number(_get(ours, ("seconds",)), 1),
                _number(_get(peer, ("seconds",)), 1),
                _ratio(ratio.get("seconds")),
                "",
                "",
            ),
            (
                label,
                "start-up (s)",
                _number(_get(ours, ("startup_seconds",)), 1),
                _number(_get(peer, ("startup_seconds",)), 1),
                "",
                "",
                "",
            ),
            (
                label,
                "CPU s per 1,000 records",
                _number(_get(ours, ("cpu_seconds_per_1000_records",)), 3),
                _number(_get(peer, ("cpu_seconds_per_1000_records",)), 3),
                _ratio(ratio.get("cpu_seconds_per_1000_records")),
                "",
                "",
            ),
            (
                label,
                "peak RSS (MB)",
                _number(_get(ours, ("peak_rss_mb",)), 1),
                _number(_get(peer, ("peak_rss_mb",)), 1),
                _ratio(ratio.get("peak_rss_mb")),
                rss_target,
                rss_met,
            ),
            (
                label,
                "anomalies missing / unexpected / duplicated",
                _delivery(ours),
                _delivery(peer),
                "",
                "0 / 0 / 0",
                "",
            ),
            *_stand_in_rows(label, ours, peer),
        ]

    header = ("benchmark", "figure", "ours", "peer", "ours / peer", "target", "met")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 3 + ["---"] * 2) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_lines(results: dict[str, Any]) -> list[str]:
    """Return the lines printed above the table: date, machine and what limited the run."""
    machine = results["machine"]
    lines = [
        f"anomaly pipeline benchmark, {results['started_at']}, {machine['cores']['usable']} usable cores "
        f"({machine['cpu_model']}), Python {machine['python']}",
    ]
    steady = (results.get("steady_state") or {}).get("ours")
    if steady and not steady["rate_sustained"]:
        lines.append(
            f"NOTE: this machine wrote {steady['offered_rate_per_s']:,.0f} ev/s, short of the "
            f"{steady['target_rate_per_s']:,.0f} ev/s asked for; the steady-state figures are at that rate."
        )
    busiest = max(
        (
            run["cores_used"]["other_processes"]
            for section in ("steady_state", "backlog_drain")
            for run in ((results.get(section) or {}).get(name) for name in ("ours", "peer"))
            if run and run.get("cores_used")
        ),
        default=0.0,
    )
    if busiest >= OTHER_LOAD_NOTE_CORES:
        lines.append(
            f"NOTE: processes outside the benchmark kept up to {busiest:.2f} cores busy during a run; "
            "latency and drain figures of such runs are slower than on an idle machine."
        )
    for error in results.get("errors", []):
        lines.append(f"ERROR: {error}")
    return lines


# Plot


def write_plot(results: dict[str, Any], path: Path) -> None:
    """Draw the latency distributions and the throughput and memory bars into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ours": "#1f77b4", "peer": "#ff7f0e", "bare": "#7f7f7f"}
    figure, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    figure.suptitle(
        f"anomaly processor vs async-kinesis peer, {results['started_at'][:10]}, "
        f"{results['machine']['cores']['usable']} cores, kinesalite + moto on 127.0.0.1"
    )

    latency_axis = axes[0][0]
    steady = results.get("steady_state") or {}
    for name in ("ours", "peer"):
        curve = (steady.get(name) or {}).get("latency_percentiles_ms") or []
        if curve:
            latency_axis.plot(curve, range(len(curve)), label=name, color=colours[name])
    latency_axis.axvline(TARGET_P99_MS, color="red", linestyle="--", linewidth=1, label="p99 target")
    latency_axis.axvline(TARGET_MAX_MS, color="darkred", linestyle=":", linewidth=1, label="max target")
    latency_axis.axhline(99, color="grey", linewidth=0.5)
    # A log axis keeps the body and the tail readable when they are orders of magnitude apart.
    latency_axis.set_xscale("log")
    latency_axis.set_xlabel("anomaly latency (ms, log scale), anomaly arrival - input arrival")
    latency_axis.set_ylabel("percentile")
    latency_axis.set_title("steady-state latency distribution")
    latency_axis.legend(loc="lower right")

    filter_axis = axes[0][1]
    filter_path = results.get("filter_path")
    if filter_path:
        values = [filter_path["per_record_path_records_per_s"], filter_path["bare_parse_records_per_s"]]
        filter_axis.bar(["per-record path", "bare json.loads"], values, color=[colours["ours"], colours["bare"]])
        filter_axis.axhline(
            TARGET_FILTER_SHARE * filter_path["bare_parse_records_per_s"],
            color="red",
            linestyle="--",
            linewidth=1,
            label="target: 50 % of bare parse",
        )
        filter_axis.legend(loc="lower right")
    filter_axis.set_ylabel("records/s")
    filter_axis.set_title("filter path, in process")

    drain_axis = axes[1][0]
    drain = results.get("backlog_drain") or {}
    names = [n for n in ("ours", "peer") if _get(drain.get(n), ("records_per_s",)) is not None]
    drain_axis.bar(
        names, [_get(drain.get(n), ("records_per_s",)) or 0.0 for n in names], color=[colours[n] for n in names]
    )
    drain_axis.set_ylabel("records/s")
    drain_axis.set_title("backlog drain, fastest run of each")

    memory_axis = axes[1][1]
    labels: list[str] = []
    heights: list[float] = []
    bar_colours: list[str] = []
    for section, title in (("steady_state", "steady"), ("backlog_drain", "drain")):
        for name in ("ours", "peer"):
            value = _get((results.get(section) or {}).get(name), ("peak_rss_mb",))
            if value is not None:
                labels.append(f"{title}\n{name}")
                heights.append(value)
                bar_colours.append(colours[name])
    memory_axis.bar(labels, heights, color=bar_colours)
    memory_axis.axhline(TARGET_PEAK_RSS_MB, color="red", linestyle="--", linewidth=1, label="target")
    memory_axis.set_ylabel("peak RSS (MB)")
    memory_axis.set_title("consumer peak resident memory")
    memory_axis.legend(loc="lower right")

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
