"""Status conditions of an AnomalyPipeline: StreamsReady, IAMReady, ProcessorReady and Ready.

Each reconcile step reports one condition. ``Ready`` is derived from the three step
conditions and is True only when all three are True for the current generation. The
functions here are pure. They take the current ``status.conditions`` list and return the new
one, and keep ``lastTransitionTime`` when a condition's status does not change, as the
Kubernetes API conventions ask.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

STREAMS_READY: Final = "StreamsReady"
IAM_READY: Final = "IAMReady"
PROCESSOR_READY: Final = "ProcessorReady"
READY: Final = "Ready"
STEP_CONDITIONS: Final = (STREAMS_READY, IAM_READY, PROCESSOR_READY)
ORDER: Final = (*STEP_CONDITIONS, READY)

TRUE: Final = "True"
FALSE: Final = "False"
UNKNOWN: Final = "Unknown"


@dataclass(frozen=True)
class Condition:
    """One condition as a step reports it, before timestamps and generation are added."""

    type: str
    status: str
    reason: str
    message: str

    @classmethod
    def true(cls, type_: str, reason: str, message: str) -> Condition:
        return cls(type_, TRUE, reason, message)

    @classmethod
    def false(cls, type_: str, reason: str, message: str) -> Condition:
        return cls(type_, FALSE, reason, message)


def now_rfc3339() -> str:
    """Return the current UTC time as Kubernetes writes timestamps (seconds, trailing Z)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: Iterable[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    """Return the condition of ``type_``, or None when there is none."""
    for condition in conditions:
        if condition.get("type") == type_:
            return condition
    return None


def merge(
    current: Sequence[Mapping[str, Any]],
    updates: Iterable[Condition],
    generation: int | None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return ``current`` with ``updates`` applied and ``Ready`` recomputed, in a stable order."""
    timestamp = now or now_rfc3339()
    by_type = {str(c.get("type")): dict(c) for c in current if c.get("type")}
    for update in updates:
        by_type[update.type] = _stamped(by_type.get(update.type), update, generation, timestamp)
    ready = derive_ready(by_type, generation)
    by_type[READY] = _stamped(by_type.get(READY), ready, generation, timestamp)
    known = [by_type[t] for t in ORDER if t in by_type]
    others = [c for t, c in by_type.items() if t not in ORDER]
    return known + others


def derive_ready(conditions: Mapping[str, Mapping[str, Any]], generation: int | None) -> Condition:
    """Return Ready: True when every step condition is True (for ``generation`` when it is known)."""
    for type_ in STEP_CONDITIONS:
        condition = conditions.get(type_)
        if condition is None:
            return Condition(READY, UNKNOWN, "Reconciling", f"{type_} is not reported yet")
        if condition.get("status") != TRUE:
            return Condition(
                READY, FALSE, str(condition.get("reason") or "NotReady"), f"{type_}: {condition.get('message', '')}"
            )
        observed = condition.get("observedGeneration")
        if generation is not None and observed is not None and observed != generation:
            return Condition(
                READY, UNKNOWN, "Reconciling", f"{type_} describes generation {observed}, not {generation}"
            )
    return Condition(READY, TRUE, "Reconciled", "streams, IAM roles and processor are in place")


def all_observed(conditions: Sequence[Mapping[str, Any]], generation: int | None) -> bool:
    """Tell whether every step has reported on ``generation``, so it counts as observed."""
    if generation is None:
        return all(find(conditions, t) is not None for t in STEP_CONDITIONS)
    for type_ in STEP_CONDITIONS:
        condition = find(conditions, type_)
        if condition is None or condition.get("observedGeneration") != generation:
            return False
    return True


def _stamped(previous: Mapping[str, Any] | None, update: Condition, generation: int | None, now: str) -> dict[str, Any]:
    changed = previous is None or previous.get("status") != update.status
    stamped: dict[str, Any] = {
        "type": update.type,
        "status": update.status,
        "reason": update.reason,
        "message": update.message,
        "lastTransitionTime": now if changed or previous is None else previous.get("lastTransitionTime", now),
    }
    if generation is not None:
        stamped["observedGeneration"] = generation
    return stamped
