"""Detectors: verdicts, a shadow detector that disagrees, and the shape of a detector definition."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest
from anomaly_processor.consumer import ShardConsumer
from anomaly_processor.detector import (
    DetectorError,
    FixedDetectors,
    RuleDetector,
    Verdict,
    parse_detector,
)
from anomaly_processor.events import EventDecoder
from anomaly_processor.forwarder import Forwarder
from anomaly_processor.rules import parse_rule_set
from anomaly_processor.selection import BatchTally, select_anomalies
from prometheus_client import REGISTRY

from tests.processor.consumer_fakes import FlakyKinesis, OneBatchReader, RecordingCheckpoints, kinesis_record

DECODE = EventDecoder(("transaction_amount",)).decode


def threshold(value: int, name: str = "rules") -> RuleDetector:
    rules = parse_rule_set({"conditions": [{"field": "transaction_amount", "op": "gt", "value": value}]})
    return RuleDetector(rules, name)


def amounts(*values: str) -> list[dict[str, Any]]:
    return [kinesis_record(i, f'{{"transaction_amount": {v}}}'.encode()) for i, v in enumerate(values)]


class FailingDetector:
    """A detector that raises on every event whose amount is 13, as a buggy model might."""

    name = "unlucky"

    def is_anomaly(self, event: Mapping[str, Any]) -> bool:
        if event["transaction_amount"] == 13:
            raise RuntimeError("model not loaded")
        return True

    def judge(self, event: Mapping[str, Any]) -> Verdict:
        return Verdict(self.is_anomaly(event), "always")


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_rule_detector_explains_verdict() -> None:
    detector = threshold(100)
    assert detector.judge({"transaction_amount": 150}) == Verdict(True, "matches transaction_amount gt 100")
    assert detector.judge({"transaction_amount": 100}) == Verdict(False, "does not match transaction_amount gt 100")
    assert detector.is_anomaly({"transaction_amount": 150}) is True


def test_shadow_disagreement_is_tallied_not_forwarded() -> None:
    detectors = FixedDetectors(threshold(100), threshold(50, "stricter"))
    tally = BatchTally()
    entries, malformed = select_anomalies(amounts("150", "75", "20", "60", "101"), DECODE, detectors, tally)

    assert [e.data for e in entries] == [b'{"transaction_amount": 150}', b'{"transaction_amount": 101}']
    assert malformed == []
    assert len(tally.shadows) == 1
    shadow = tally.shadows[0]
    assert shadow.detector.name == "stricter"
    # both normal, only active anomalous, only shadow anomalous, both anomalous
    assert shadow.outcomes == [1, 0, 2, 2]
    assert shadow.agreements == 3
    assert shadow.disagreements == 2


def test_shadow_that_fails_never_changes_forwarding() -> None:
    detectors = FixedDetectors(threshold(100), FailingDetector())
    tally = BatchTally()
    entries, _ = select_anomalies(amounts("13", "150", "13", "5"), DECODE, detectors, tally)
    assert [e.data for e in entries] == [b'{"transaction_amount": 150}']
    assert tally.shadows[0].errors == 2
    assert "model not loaded" in tally.shadows[0].last_error
    assert tally.shadows[0].outcomes == [0, 0, 1, 1]


def test_consumer_counts_shadow_verdicts_as_metrics() -> None:
    stream = "ingest-shadow-metrics"
    journal: list[str] = []
    stop = threading.Event()
    anomalies = FlakyKinesis(journal, "anomalies")
    consumer = ShardConsumer(
        shard_id="shardId-000000000000",
        stream=stream,
        reader=OneBatchReader(amounts("150", "75", "20", "60", "13"), stop, journal),  # type: ignore[arg-type]
        forwarder=Forwarder(anomalies, "anomaly-shadow-metrics", sleep=lambda _: None),
        checkpoints=RecordingCheckpoints(journal),  # type: ignore[arg-type]
        decoder=EventDecoder(("transaction_amount",)),
        detectors=FixedDetectors(threshold(100), threshold(50, "stricter")),
        stop=stop,
        start_checkpoint=None,
    )
    consumer.run()

    name = "anomaly_processor_shadow_verdicts_total"
    labels = {"stream": stream, "detector": "stricter"}
    assert sample(name, **labels, result="agreement", shadow_verdict="anomalous") == 1
    assert sample(name, **labels, result="agreement", shadow_verdict="normal") == 2
    assert sample(name, **labels, result="disagreement", shadow_verdict="anomalous") == 2
    assert sample(name, **labels, result="disagreement", shadow_verdict="normal") == 0
    assert [e["Data"] for e in anomalies.accepted] == [b'{"transaction_amount": 150}']


def test_consumer_counts_shadow_errors() -> None:
    stream = "ingest-shadow-errors"
    journal: list[str] = []
    stop = threading.Event()
    consumer = ShardConsumer(
        shard_id="shardId-000000000000",
        stream=stream,
        reader=OneBatchReader(amounts("13", "13", "150"), stop, journal),  # type: ignore[arg-type]
        forwarder=Forwarder(FlakyKinesis(journal, "anomalies"), "anomaly-shadow-errors", sleep=lambda _: None),
        checkpoints=RecordingCheckpoints(journal),  # type: ignore[arg-type]
        decoder=EventDecoder(("transaction_amount",)),
        detectors=FixedDetectors(threshold(100), FailingDetector()),
        stop=stop,
        start_checkpoint=None,
    )
    progress = consumer.run()
    assert sample("anomaly_processor_shadow_errors_total", stream=stream, detector="unlucky") == 2
    assert progress.anomalies == 1
    assert journal[-1] == "checkpoint"


def test_detector_definition_builds_rule_detector() -> None:
    definition = parse_detector(
        {"name": "stricter-rules", "rules": {"conditions": [{"field": "amount", "op": "gte", "value": 50}]}},
        "spec.detectors.shadow",
    )
    detector = definition.build()
    assert detector.name == "stricter-rules"
    assert detector.is_anomaly({"amount": 50}) is True
    assert parse_detector(definition.as_dict(), "detectors.shadow") == definition


@pytest.mark.parametrize(
    ("raw", "field", "message_part"),
    [
        ("stricter", "spec.detectors.shadow", "mapping"),
        ({"name": "Stricter", "rules": {}}, "spec.detectors.shadow.name", "lowercase"),
        ({"name": "-x", "rules": {}}, "spec.detectors.shadow.name", "lowercase"),
        ({"name": "x" * 64, "rules": {}}, "spec.detectors.shadow.name", "63"),
        ({"rules": {}}, "spec.detectors.shadow.name", "lowercase"),
        ({"name": "model"}, "spec.detectors.shadow.rules", "needs a rule set"),
        ({"name": "model", "rules": None}, "spec.detectors.shadow.rules", "needs a rule set"),
        ({"name": "model", "rules": {}, "model": "s3://x"}, "spec.detectors.shadow.model", "unknown key"),
        (
            {"name": "model", "rules": {"conditions": [{"field": "a", "op": "near", "value": 1}]}},
            "spec.detectors.shadow.rules.conditions[0].op",
            "near",
        ),
    ],
)
def test_invalid_detector_named(raw: object, field: str, message_part: str) -> None:
    with pytest.raises(DetectorError) as caught:
        parse_detector(raw, "spec.detectors.shadow")
    assert caught.value.field == field
    assert message_part in str(caught.value)
