"""Decoding of one event's bytes, and the definition of a malformed event.

An event is a JSON object encoded in UTF-8. It is malformed when its bytes are not
JSON, when the JSON is not an object, or when a required numeric field is missing or
is not a JSON number (a string such as "150", null and booleans are not numbers).
Floats are decoded as ``Decimal`` so that the rules compare them exactly. A record in
the KPL aggregated format that cannot be de-aggregated is malformed as a whole (see
``kpl``); the user records of a sound aggregate are decoded here one by one.

This is on the per-record path: no logging, no allocation beyond the decoded event.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final


class MalformedReason(StrEnum):
    """Reason an event was not judged. The value is the metric label and the log field."""

    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    NOT_A_NUMBER = "not_a_number"
    CORRUPT_AGGREGATE = "corrupt_aggregate"


@dataclass(frozen=True, slots=True)
class Malformed:
    """A record, or a user record of an aggregate, that was not judged, with what a dead letter needs."""

    sequence_number: str
    reason: MalformedReason
    data: bytes = b""
    partition_key: str = ""
    arrival: datetime | None = None
    # Position inside a KPL aggregate; None for a record that is not aggregated.
    sub_sequence_number: int | None = None
    # What exactly was wrong, where the reason alone does not say (a corrupt aggregate).
    detail: str = ""


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, although Python's decoder accepts them by default.
    raise ValueError(f"{name} is not a JSON number")


# A value quoted in a malformed record's detail is cut here, so that one log line stays short.
MAX_SHOWN_VALUE_LENGTH: Final = 40

_decode_json: Final = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant).decode


class EventDecoder:
    """Decodes event bytes and checks the fields that must hold numbers."""

    __slots__ = ("_required_numeric",)

    def __init__(self, required_numeric_fields: Sequence[str]) -> None:
        self._required_numeric = tuple(required_numeric_fields)

    def decode(self, data: bytes) -> tuple[dict[str, Any] | None, MalformedReason | None]:
        """Return ``(event, None)`` for a well-formed event, else ``(None, reason)``."""
        try:
            event = _decode_json(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None, MalformedReason.NOT_JSON
        if type(event) is not dict:
            return None, MalformedReason.NOT_AN_OBJECT
        for name in self._required_numeric:
            value = event.get(name)
            if value is None:
                # JSON null counts as missing: it carries no amount.
                return None, MalformedReason.MISSING_FIELD
            kind = type(value)
            if kind is not int and kind is not Decimal:
                return None, MalformedReason.NOT_A_NUMBER
        return event, None

    def explain(self, data: bytes) -> str:
        """Describe why ``decode`` rejects ``data``: the JSON error, or the field and its value.

        Only malformed records reach this, so the per-record path stays as it is.
        """
        try:
            event = _decode_json(data.decode("utf-8"))
        except UnicodeDecodeError as error:
            return f"not UTF-8: {error.reason} at byte {error.start}"
        except ValueError as error:
            return f"not JSON: {error}"
        if type(event) is not dict:
            return f"the event is a JSON {type(event).__name__}, not an object"
        for name in self._required_numeric:
            value = event.get(name)
            if value is None:
                return f"{name} is missing or null"
            if type(value) is not int and type(value) is not Decimal:
                quoted = json.dumps(value, default=str)
                quoted = quoted if len(quoted) <= MAX_SHOWN_VALUE_LENGTH else quoted[:MAX_SHOWN_VALUE_LENGTH] + "..."
                return f"{name} is {quoted}, not a number"
        return ""
