"""Decoding events: which bytes are malformed, and the detail that explains why."""

from __future__ import annotations

import pytest
from anomaly_processor.events import EventDecoder, MalformedReason

DECODER = EventDecoder(("transaction_amount", "fee"))


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (b'{"transaction_amount": 120', MalformedReason.NOT_JSON, "not JSON: Expecting ',' delimiter"),
        (b"\xff\xfe", MalformedReason.NOT_JSON, "not UTF-8: invalid start byte at byte 0"),
        (b'{"transaction_amount": NaN, "fee": 1}', MalformedReason.NOT_JSON, "not JSON: NaN is not a JSON number"),
        (b"[1, 2]", MalformedReason.NOT_AN_OBJECT, "the event is a JSON list, not an object"),
        (b'{"fee": 1}', MalformedReason.MISSING_FIELD, "transaction_amount is missing or null"),
        (b'{"transaction_amount": null, "fee": 1}', MalformedReason.MISSING_FIELD, "transaction_amount is missing"),
        (b'{"transaction_amount": 120}', MalformedReason.MISSING_FIELD, "fee is missing or null"),
        (b'{"transaction_amount": 120, "fee": "2"}', MalformedReason.NOT_A_NUMBER, 'fee is "2", not a number'),
        (b'{"transaction_amount": true, "fee": 2}', MalformedReason.NOT_A_NUMBER, "transaction_amount is true, not"),
    ],
)
def test_malformed_event_detail_names_the_problem(data: bytes, reason: MalformedReason, detail: str) -> None:
    event, found = DECODER.decode(data)

    assert event is None
    assert found is reason
    assert DECODER.explain(data).startswith(detail)


def test_malformed_value_shown_cut_to_40_characters() -> None:
    data = b'{"transaction_amount": "' + b"9" * 100 + b'", "fee": 1}'

    assert DECODER.explain(data) == 'transaction_amount is "' + "9" * 39 + "..., not a number"


def test_well_formed_event_has_no_detail() -> None:
    data = b'{"transaction_amount": 120.50, "fee": 1}'

    assert DECODER.decode(data)[1] is None
    assert DECODER.explain(data) == ""
