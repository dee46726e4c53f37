"""Detectors: the place where an event is judged anomalous or not.

A detector takes one decoded event and returns a verdict. The rule set is one detector;
a machine-learning model is meant to be another behind the same interface, so the
stream plumbing never changes when the verdict's source does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from anomaly_processor.rules import RuleSet


@dataclass(frozen=True, slots=True)
class Verdict:
    anomalous: bool
    reason: str


class Detector(Protocol):
    """Judges one event. ``is_anomaly`` is the per-record fast path; ``judge`` explains."""

    name: str

    def is_anomaly(self, event: Mapping[str, Any]) -> bool: ...

    def judge(self, event: Mapping[str, Any]) -> Verdict: ...


class RuleDetector:
    """A detector backed by a compiled rule set."""

    def __init__(self, rules: RuleSet, name: str = "rules") -> None:
        self.name = name
        self.rules = rules
        self.is_anomaly = rules.matches

    def judge(self, event: Mapping[str, Any]) -> Verdict:
        anomalous = self.rules.matches(event)
        verb = "matches" if anomalous else "does not match"
        return Verdict(anomalous, f"{verb} {self.rules.describe()}")
