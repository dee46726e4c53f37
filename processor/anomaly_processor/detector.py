"""Detectors: the place where an event is judged anomalous or not.

A detector takes one decoded event and returns a verdict. The rule set is one detector;
a machine-learning model is meant to be another behind the same interface, so the
stream plumbing never changes when the verdict's source does.

The consumer judges with ``Detectors``: the active detector decides what is forwarded,
and an optional shadow detector sees the same events, but its verdicts are only counted
against the active one's (``spec.detectors.shadow``). A ``DetectorSource`` hands out the
``Detectors`` in force; the rules file reloader is one, and swaps them between records.

This module also holds the one definition of a shadow detector's shape
(``DETECTOR_SCHEMA`` and ``parse_detector``), used by the spec parser, the CRD and the
processor settings alike. The only kind of detector so far is a rule set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from anomaly_processor.rules import RULE_SET_SCHEMA, RuleError, RuleSet, parse_rule_set

ACTIVE_DETECTOR_NAME: Final = "rules"
# A detector's name is a metric label value and a log field: keep it a short DNS label.
DETECTOR_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_DETECTOR_NAME_LENGTH: Final = 63

_DETECTOR_NAME: Final = re.compile(DETECTOR_NAME_PATTERN)

DETECTOR_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "A detector, named for its metrics, and what it judges with: for now a rule set.",
    "required": ["name", "rules"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": DETECTOR_NAME_PATTERN,
            "maxLength": MAX_DETECTOR_NAME_LENGTH,
            "description": "Name in metrics and logs: lowercase letters, digits and '-', for example stricter-rules.",
        },
        "rules": RULE_SET_SCHEMA,
    },
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """A detector's judgement of one event: anomalous or not, and why."""

    anomalous: bool
    reason: str


class Detector(Protocol):
    """Judges one event. ``is_anomaly`` is the per-record fast path; ``judge`` explains."""

    name: str

    def is_anomaly(self, event: Mapping[str, Any]) -> bool: ...

    def judge(self, event: Mapping[str, Any]) -> Verdict: ...


class RuleDetector:
    """A detector backed by a compiled rule set."""

    def __init__(self, rules: RuleSet, name: str = ACTIVE_DETECTOR_NAME) -> None:
        self.name = name
        self.rules = rules
        self.is_anomaly = rules.matches

    def judge(self, event: Mapping[str, Any]) -> Verdict:
        anomalous = self.rules.matches(event)
        verb = "matches" if anomalous else "does not match"
        return Verdict(anomalous, f"{verb} {self.rules.describe()}")


@dataclass(frozen=True, slots=True)
class Detectors:
    """The detectors in force: the active one decides, the shadow one is only compared."""

    active: Detector
    shadow: Detector | None = None


class DetectorSource(Protocol):
    """Hands out the detectors in force; the consumer reads ``current`` once per record."""

    @property
    def current(self) -> Detectors: ...


class FixedDetectors:
    """A detector source that never changes."""

    __slots__ = ("current",)

    def __init__(self, active: Detector, shadow: Detector | None = None) -> None:
        self.current = Detectors(active, shadow)


@dataclass(frozen=True)
class DetectorDefinition:
    """A detector as written in a spec or settings file: its name and its rule set."""

    name: str
    rules: RuleSet

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rules": self.rules.as_dict()}

    def build(self) -> Detector:
        return RuleDetector(self.rules, self.name)


class DetectorError(ValueError):
    """A detector definition that cannot be used; ``field`` is the path of the offending entry."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}: invalid value {value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


def parse_detector(raw: object, path: str) -> DetectorDefinition:
    """Validate a detector mapping (``name`` and ``rules``) and compile its rule set.

    Raises DetectorError naming the offending entry, such as ``spec.detectors.shadow.name``;
    a rule error keeps the rule's own path under ``<path>.rules``.
    """
    if not isinstance(raw, Mapping):
        raise DetectorError(path, raw, "expected a mapping with name and rules")
    unknown = sorted(set(raw) - {"name", "rules"})
    if unknown:
        raise DetectorError(f"{path}.{unknown[0]}", raw[unknown[0]], "unknown key; expected name and rules")
    name = raw.get("name")
    if not isinstance(name, str) or len(name) > MAX_DETECTOR_NAME_LENGTH or not _DETECTOR_NAME.fullmatch(name):
        raise DetectorError(
            f"{path}.name",
            name,
            f"expected at most {MAX_DETECTOR_NAME_LENGTH} lowercase letters, digits and '-', such as stricter-rules",
        )
    if raw.get("rules") is None:
        raise DetectorError(f"{path}.rules", None, "a detector needs a rule set with match and conditions")
    try:
        rules = parse_rule_set(raw["rules"], f"{path}.rules")
    except RuleError as error:
        raise DetectorError(error.field, error.value, error.reason) from error
    return DetectorDefinition(name, rules)
