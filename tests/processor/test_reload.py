"""Hot reload of the detectors from the settings file, as the kubelet updates a ConfigMap volume."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from anomaly_processor.config import from_document
from anomaly_processor.detector import RuleDetector
from anomaly_processor.events import EventDecoder
from anomaly_processor.health import HealthServer
from anomaly_processor.reload import RulesReloader, rules_health
from anomaly_processor.rules import RuleSet
from anomaly_processor.selection import BatchTally, select_anomalies
from prometheus_client import REGISTRY

ARRIVAL = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def settings(threshold: object = 100, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "pipeline": "default/payments",
        "region": "eu-west-1",
        "inputStream": "ingest-default-payments",
        "outputStream": "anomaly-default-payments",
        "checkpointTable": "anomaly-checkpoints-default-payments",
        "rules": {"match": "any", "conditions": [{"field": "transaction_amount", "op": "gt", "value": threshold}]},
    }
    document.update(extra)
    return document


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a ConfigMap volume, updated by swapping ``..data``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "processor.yaml"
        self.version = 0

    def write(self, text: str) -> None:
        self.version += 1
        target = self.root / f"..2026_01_31_12_00_00.{self.version:06d}"
        target.mkdir()
        (target / "processor.yaml").write_text(text, encoding="utf-8")
        link = self.root / "..data_tmp"
        link.symlink_to(target.name)
        os.replace(link, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/processor.yaml")

    def write_settings(self, document: dict[str, Any]) -> None:
        self.write(yaml.safe_dump(document))


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    mounted = ConfigMapVolume(tmp_path)
    mounted.write_settings(settings(100))
    return mounted


@pytest.fixture
def reloader(volume: ConfigMapVolume) -> RulesReloader:
    config = from_document(yaml.safe_load(volume.path.read_text(encoding="utf-8")))
    return RulesReloader(str(volume.path), config)


def record(sequence: int, amount: str) -> dict[str, Any]:
    return {
        "SequenceNumber": str(sequence),
        "PartitionKey": f"k{sequence}",
        "ApproximateArrivalTimestamp": ARRIVAL,
        "Data": f'{{"transaction_amount": {amount}}}'.encode(),
    }


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def active_rules(reloader: RulesReloader) -> RuleSet:
    active = reloader.current.active
    assert isinstance(active, RuleDetector)
    return active.rules


def test_unchanged_file_changes_nothing(reloader: RulesReloader) -> None:
    before = reloader.current
    assert reloader.check() is False
    assert reloader.check() is False
    assert reloader.current is before


def test_swapped_symlink_applies_new_rules(volume: ConfigMapVolume, reloader: RulesReloader) -> None:
    reloader.check()
    volume.write_settings(settings(200))
    assert reloader.check() is True
    assert active_rules(reloader).conditions[0].value == 200
    assert reloader.check() is False, "the same content applies once"


def test_reload_between_two_records_of_batch(volume: ConfigMapVolume, reloader: RulesReloader) -> None:
    reloader.check()
    decode = EventDecoder(("transaction_amount",)).decode
    decoded = 0

    def decode_then_reload(data: bytes) -> Any:
        # The new file is applied after the first record was judged, while the second is decoded.
        nonlocal decoded
        result = decode(data)
        decoded += 1
        if decoded == 2:
            volume.write_settings(settings(200))
            assert reloader.check() is True
        return result

    batch = [record(1, "150"), record(2, "150"), record(3, "250")]
    entries, malformed = select_anomalies(batch, decode_then_reload, reloader, BatchTally())
    assert malformed == []
    # Record 1 was judged by "> 100", records 2 and 3 by "> 200".
    assert [e.partition_key for e in entries] == ["k1", "k3"]


def test_change_is_logged_with_both_rule_sets(
    volume: ConfigMapVolume, reloader: RulesReloader, caplog: pytest.LogCaptureFixture
) -> None:
    reloader.check()
    volume.write_settings(settings(200))
    with caplog.at_level(logging.INFO, logger="anomaly_processor.reload"):
        reloader.check()
    lines = [r for r in caplog.records if r.getMessage() == "rules reloaded"]
    assert len(lines) == 1
    assert lines[0].__dict__["rules"] == "transaction_amount gt 200"
    assert lines[0].__dict__["previous_rules"] == "transaction_amount gt 100"
    assert lines[0].__dict__["file"] == str(volume.path)


@pytest.mark.parametrize(
    ("content", "error_part"),
    [
        ("rules: [unclosed", "not valid YAML"),
        (yaml.safe_dump(settings("a lot")), "rules.conditions[0].value"),
        (
            yaml.safe_dump(
                {**settings(100), "rules": {"conditions": [{"field": "transaction_amount", "op": "gtt", "value": 1}]}}
            ),
            "rules.conditions[0].op",
        ),
        (yaml.safe_dump({**settings(100), "detectors": {"shadow": {"name": "Bad Name", "rules": {}}}}), "shadow.name"),
        ("just a string", "expected a mapping"),
    ],
)
def test_broken_file_keeps_rules_and_reports(
    volume: ConfigMapVolume,
    reloader: RulesReloader,
    caplog: pytest.LogCaptureFixture,
    content: str,
    error_part: str,
) -> None:
    reloader.check()
    before = reloader.current
    failures_before = sample("anomaly_processor_rules_reloads_total", result="failed")

    volume.write(content)
    with caplog.at_level(logging.ERROR, logger="anomaly_processor.reload"):
        assert reloader.check() is False
        assert reloader.check() is False

    assert reloader.current is before, "the rules in force stay"
    errors = [
        r for r in caplog.records if r.getMessage() == "settings file change not applied; the detectors in force stay"
    ]
    assert len(errors) == 1, "one log line per broken content"
    assert error_part in errors[0].__dict__["error"]
    assert sample("anomaly_processor_rules_reloads_total", result="failed") == failures_before + 1
    assert sample("anomaly_processor_rules_file_valid") == 0
    health = reloader.status().as_dict()
    assert health["ok"] is False
    assert error_part in health["error"]
    assert health["rules"] == "transaction_amount gt 100"


def test_valid_file_after_broken_recovers(volume: ConfigMapVolume, reloader: RulesReloader) -> None:
    reloader.check()
    volume.write("rules: [unclosed")
    reloader.check()
    volume.write_settings(settings(300))
    assert reloader.check() is True
    assert active_rules(reloader).conditions[0].value == 300
    assert sample("anomaly_processor_rules_file_valid") == 1
    assert reloader.status().as_dict()["ok"] is True
    assert reloader.status().as_dict()["error"] is None


def test_missing_file_keeps_rules(volume: ConfigMapVolume, reloader: RulesReloader) -> None:
    reloader.check()
    before = reloader.current
    (volume.root / "..data").unlink()
    assert reloader.check() is False
    assert reloader.current is before
    assert "cannot read" in (reloader.status().error or "")


def test_shadow_detector_reloads(volume: ConfigMapVolume, reloader: RulesReloader) -> None:
    reloader.check()
    shadow = {"name": "stricter", "rules": {"conditions": [{"field": "transaction_amount", "op": "gt", "value": 50}]}}
    volume.write_settings(settings(100, detectors={"shadow": shadow}))
    assert reloader.check() is True
    assert reloader.current.shadow is not None
    assert reloader.current.shadow.name == "stricter"
    assert reloader.status().as_dict()["shadowDetector"] == "stricter"
    volume.write_settings(settings(100, detectors={"shadow": None}))
    assert reloader.check() is True
    assert reloader.current.shadow is None


def test_other_settings_wait_for_restart(
    volume: ConfigMapVolume, reloader: RulesReloader, caplog: pytest.LogCaptureFixture
) -> None:
    reloader.check()
    with caplog.at_level(logging.WARNING, logger="anomaly_processor.reload"):
        volume.write_settings(settings(150, outputStream="anomaly-elsewhere"))
        assert reloader.check() is True
    assert active_rules(reloader).conditions[0].value == 150
    assert any("take effect after a restart" in r.getMessage() for r in caplog.records)


def test_polling_thread_follows_file(volume: ConfigMapVolume) -> None:
    config = from_document(settings(100, reloadIntervalSeconds=0.05))
    reloader = RulesReloader(str(volume.path), config)
    stop = threading.Event()
    thread = reloader.start(stop)
    assert thread is not None
    try:
        volume.write_settings(settings(400, reloadIntervalSeconds=0.05))
        deadline = time.monotonic() + 10
        while active_rules(reloader).conditions[0].value != 400 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert active_rules(reloader).conditions[0].value == 400
        assert rules_health()["file"] == str(volume.path)
        assert rules_health()["hotReload"] is True
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_interval_zero_turns_polling_off(volume: ConfigMapVolume) -> None:
    config = from_document(settings(100, reloadIntervalSeconds=0))
    reloader = RulesReloader(str(volume.path), config)
    assert reloader.start(threading.Event()) is None
    assert rules_health()["hotReload"] is False


def test_health_endpoint_reports_broken_rules_file(volume: ConfigMapVolume, reloader: RulesReloader) -> None:
    stop = threading.Event()
    reloader.interval = 0
    reloader.start(stop)
    worker = SimpleNamespace(ready=threading.Event(), last_pass_at=time.monotonic(), stopping=False)
    server = HealthServer(worker, "127.0.0.1", 0).start()
    try:
        volume.write("rules: [unclosed")
        reloader.check()

        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
            status, detail = response.status, json.loads(response.read())
    finally:
        server.stop()
        stop.set()

    assert status == 200, "the old rules keep running, so liveness holds"
    assert detail["status"] == "ok"
    assert detail["rules"]["ok"] is False
    assert "not valid YAML" in detail["rules"]["error"]
