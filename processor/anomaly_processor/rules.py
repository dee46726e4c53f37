"""The anomaly rule shape and its compiled, per-record form.

This module is the one definition of a rule set: the spec parser validates with
``parse_rule_set``, the CRD schema is generated from ``RULE_SET_SCHEMA`` (and tested
equal), and the processor evaluates the compiled ``RuleSet``. Numbers are compared as
exact decimals, so ``100.0000000001 > 100`` is true and ``1e2 > 100`` does not. Events
must be decoded with ``parse_float=Decimal`` for that to hold.

It does not decode bytes or decide what a malformed event is: see ``events``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from decimal import Decimal, InvalidOperation
from typing import Any, Final

OPERATORS: Final = ("gt", "gte", "lt", "lte", "eq", "ne", "in", "exists")
ORDERING_OPERATORS: Final = frozenset({"gt", "gte", "lt", "lte"})
MATCH_MODES: Final = ("any", "all")
FIELD_PATH_PATTERN: Final = r"^[A-Za-z0-9_$@-]+(\.[A-Za-z0-9_$@-]+)*$"
MAX_FIELD_PATH_LENGTH: Final = 256
MAX_CONDITIONS: Final = 64

DEFAULT_RULE_SET: Final[Mapping[str, Any]] = {
    "match": "any",
    "conditions": [{"field": "transaction_amount", "op": "gt", "value": 100}],
}

# JSON Schema of a rule set, written in the subset that a Kubernetes structural schema
# accepts, so the CRD embeds it as it is.
RULE_SET_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "Which events are anomalies. An event matching the rule set is forwarded.",
    "properties": {
        "match": {
            "type": "string",
            "enum": list(MATCH_MODES),
            "default": DEFAULT_RULE_SET["match"],
            "description": "any: one matching condition makes an anomaly; all: every condition must match.",
        },
        "conditions": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_CONDITIONS,
            "default": [dict(c) for c in DEFAULT_RULE_SET["conditions"]],
            "description": "The conditions, each on one field of the event.",
            "items": {
                "type": "object",
                "required": ["field", "op"],
                "description": "One condition: field, operator and the value to compare with.",
                "properties": {
                    "field": {
                        "type": "string",
                        "pattern": FIELD_PATH_PATTERN,
                        "maxLength": MAX_FIELD_PATH_LENGTH,
                        "description": "Dotted path of the field in the event, for example payment.amount.",
                    },
                    "op": {
                        "type": "string",
                        "enum": list(OPERATORS),
                        "description": (
                            "gt, gte, lt, lte compare numbers; eq, ne compare numbers, strings or booleans; "
                            "in tests membership in a list; exists tests presence."
                        ),
                    },
                    "value": {
                        "description": (
                            "The value to compare with: a number for gt, gte, lt and lte, a list for in, "
                            "a boolean for exists (true when omitted), a number, string or boolean otherwise."
                        ),
                        "x-kubernetes-preserve-unknown-fields": True,
                    },
                },
            },
        },
    },
}


class RuleError(ValueError):
    """A rule set that cannot be compiled; ``field`` is the path of the offending entry."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}: invalid value {value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


_FIELD_PATH: Final = re.compile(FIELD_PATH_PATTERN)

# Marks a missing field; distinct from JSON null.
MISSING: Final = object()

Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition as written in the spec, with the number already made exact."""

    field: str
    op: str
    value: Any

    def as_dict(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, Decimal):
            value = _decimal_to_json(value)
        elif isinstance(value, tuple):
            value = [_decimal_to_json(v) if isinstance(v, Decimal) else v for v in value]
        return {"field": self.field, "op": self.op, "value": value}


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated rule set and its compiled predicate."""

    match: str
    conditions: tuple[Condition, ...]
    matches: Predicate = dataclass_field(compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Return the rule set in its spec form, for the processor's configuration file."""
        return {"match": self.match, "conditions": [c.as_dict() for c in self.conditions]}

    def describe(self) -> str:
        joiner = " or " if self.match == "any" else " and "
        return joiner.join(f"{c.field} {c.op} {c.as_dict()['value']!r}" for c in self.conditions)


def _decimal_to_json(value: Decimal) -> int | float | str:
    # Python ints are exact at any size, so every whole number is written as one.
    if value == value.to_integral_value():
        return int(value)
    as_float = float(value)
    # Keep the exact text when a float would round it. Only the ordering operators read such
    # a string back as the same number, because eq, ne and in keep strings as strings.
    return as_float if Decimal(repr(as_float)) == value else str(value)


def is_number(value: object) -> bool:
    """Tell whether a decoded JSON value is a number; booleans are not numbers here."""
    return isinstance(value, (int, Decimal, float)) and not isinstance(value, bool)


def _exact_number(path: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise RuleError(path, value, "expected a number")
    try:
        number = Decimal(str(value))
    except InvalidOperation as error:
        raise RuleError(path, value, "expected a number") from error
    if not number.is_finite():
        raise RuleError(path, value, "expected a finite number")
    return number


def _scalar(path: str, value: object) -> Any:
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, Decimal)):
        return _exact_number(path, value)
    raise RuleError(path, value, "expected a number, a string or a boolean")


def parse_condition(path: str, raw: object) -> Condition:
    """Validate one condition mapping and return it with exact numbers."""
    if not isinstance(raw, Mapping):
        raise RuleError(path, raw, "expected a mapping with field, op and value")
    unknown = sorted(set(raw) - {"field", "op", "value"})
    if unknown:
        raise RuleError(f"{path}.{unknown[0]}", raw[unknown[0]], "unknown key; expected field, op and value")

    field = raw.get("field")
    if not isinstance(field, str) or len(field) > MAX_FIELD_PATH_LENGTH or not _FIELD_PATH.fullmatch(field):
        raise RuleError(
            f"{path}.field",
            field,
            f"expected a dotted field path such as payment.amount: at most {MAX_FIELD_PATH_LENGTH} characters, "
            "names of letters, digits, '_', '$', '@' and '-' joined by '.'",
        )
    op = raw.get("op")
    if op not in OPERATORS:
        raise RuleError(f"{path}.op", op, f"unknown operator; expected one of {', '.join(OPERATORS)}")

    value_path = f"{path}.value"
    if op == "exists":
        value = raw.get("value", True)
        if not isinstance(value, bool):
            raise RuleError(value_path, value, "exists takes true or false")
        return Condition(field, op, value)
    if "value" not in raw:
        raise RuleError(value_path, None, f"operator {op} needs a value")
    value = raw["value"]
    if op in ORDERING_OPERATORS:
        return Condition(field, op, _exact_number(value_path, value))
    if op == "in":
        if not isinstance(value, list) or not value:
            raise RuleError(value_path, value, "operator in needs a non-empty list")
        return Condition(field, op, tuple(_scalar(f"{value_path}[{i}]", v) for i, v in enumerate(value)))
    return Condition(field, op, _scalar(value_path, value))


def parse_rule_set(raw: object, path: str = "spec.rules") -> RuleSet:
    """Validate a rule set mapping (``match`` and ``conditions``) and compile it.

    Raises RuleError naming the offending entry, such as ``spec.rules.conditions[0].op``.
    """
    if raw is None:
        raw = DEFAULT_RULE_SET
    if not isinstance(raw, Mapping):
        raise RuleError(path, raw, "expected a mapping with match and conditions")
    unknown = sorted(set(raw) - {"match", "conditions"})
    if unknown:
        raise RuleError(f"{path}.{unknown[0]}", raw[unknown[0]], "unknown key; expected match and conditions")
    match = raw.get("match", DEFAULT_RULE_SET["match"])
    if match not in MATCH_MODES:
        raise RuleError(f"{path}.match", match, "expected any or all")
    raw_conditions = raw.get("conditions", DEFAULT_RULE_SET["conditions"])
    if not isinstance(raw_conditions, list) or not raw_conditions:
        raise RuleError(f"{path}.conditions", raw_conditions, "expected a non-empty list of conditions")
    if len(raw_conditions) > MAX_CONDITIONS:
        raise RuleError(f"{path}.conditions", len(raw_conditions), f"at most {MAX_CONDITIONS} conditions")
    conditions = tuple(parse_condition(f"{path}.conditions[{i}]", c) for i, c in enumerate(raw_conditions))
    return RuleSet(match, conditions, _compile(match, conditions))


def _getter(field: str) -> Callable[[Mapping[str, Any]], Any]:
    parts = field.split(".")
    if len(parts) == 1:
        key = parts[0]
        return lambda event: event.get(key, MISSING)

    def get_nested(event: Mapping[str, Any]) -> Any:
        value: Any = event
        for part in parts:
            if not isinstance(value, dict):
                return MISSING
            value = value.get(part, MISSING)
        return value

    return get_nested


def _same(left: Any, right: Any) -> bool:
    # True == 1 in Python; a boolean only equals a boolean here.
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if is_number(left) and isinstance(right, Decimal):
        return bool(left == right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return False


def _compile_condition(condition: Condition) -> Predicate:
    get = _getter(condition.field)
    op = condition.op
    expected = condition.value

    if op == "exists":
        present = bool(expected)
        return lambda event: (get(event) is not MISSING) is present
    if op == "eq":
        return lambda event: _same(get(event), expected)
    if op == "ne":
        # A missing field is not a value, so it neither equals nor differs.
        return lambda event: (value := get(event)) is not MISSING and not _same(value, expected)
    if op == "in":
        return lambda event: any(_same(get(event), option) for option in expected)

    compare: Callable[[Any], bool] = {
        "gt": lambda value: value > expected,
        "gte": lambda value: value >= expected,
        "lt": lambda value: value < expected,
        "lte": lambda value: value <= expected,
    }[op]

    def ordered(event: Mapping[str, Any]) -> bool:
        value = get(event)
        if type(value) is bool or not isinstance(value, (int, Decimal)):
            return False
        return compare(value)

    return ordered


def _compile(match: str, conditions: tuple[Condition, ...]) -> Predicate:
    predicates = tuple(_compile_condition(c) for c in conditions)
    if len(predicates) == 1:
        return predicates[0]
    if match == "all":
        return lambda event: all(p(event) for p in predicates)
    return lambda event: any(p(event) for p in predicates)
