"""Each rule operator on the edge values producers really send, and rule errors by name.

Events go through ``EventDecoder`` as the processor decodes them, so numbers arrive as
``int`` or ``Decimal`` exactly as on the per-record path.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from anomaly_processor.events import EventDecoder
from anomaly_processor.rules import MAX_CONDITIONS, RuleError, parse_rule_set

DECODE = EventDecoder(()).decode


def matches(condition: dict[str, Any], event_json: str) -> bool:
    rules = parse_rule_set({"match": "any", "conditions": [condition]})
    event, reason = DECODE(event_json.encode())
    assert reason is None, f"test event {event_json} did not decode: {reason}"
    assert event is not None
    return rules.matches(event)


# (condition, event JSON, expected match)
OPERATOR_CASES: list[tuple[dict[str, Any], str, bool]] = [
    # gt: equal values in every spelling are not greater.
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 100}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 100.0}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 100.000}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 1e2}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 1.0E+2}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 100.0000000001}', True),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 100.00000000000000000000000000001}', True),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 99.99999999999999999999999999999}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 101}', True),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": -5.5}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": 0}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": "150"}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": true}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"amount": null}', False),
    ({"field": "amount", "op": "gt", "value": 100}, '{"other": 150}', False),
    ({"field": "amount", "op": "gt", "value": 0.1}, '{"amount": 0.1}', False),
    ({"field": "amount", "op": "gt", "value": 0.1}, '{"amount": 0.10000000000000000001}', True),
    # A rule value written as a decimal string keeps digits that a float would lose.
    (
        {"field": "amount", "op": "gt", "value": "100.00000000000000000001"},
        '{"amount": 100.00000000000000000001}',
        False,
    ),
    (
        {"field": "amount", "op": "gt", "value": "100.00000000000000000001"},
        '{"amount": 100.00000000000000000002}',
        True,
    ),
    ({"field": "amount", "op": "gt", "value": -1}, '{"amount": -0.99999999999999999999}', True),
    ({"field": "amount", "op": "gt", "value": -1}, '{"amount": -1}', False),
    # gte
    ({"field": "amount", "op": "gte", "value": 100}, '{"amount": 100}', True),
    ({"field": "amount", "op": "gte", "value": 100}, '{"amount": 100.00}', True),
    ({"field": "amount", "op": "gte", "value": 100}, '{"amount": 99.999999999999999999999}', False),
    ({"field": "amount", "op": "gte", "value": 0}, '{"amount": -0}', True),
    ({"field": "amount", "op": "gte", "value": 0}, '{"amount": -0.0000000000000000000001}', False),
    ({"field": "amount", "op": "gte", "value": 100}, '{"amount": "100"}', False),
    ({"field": "amount", "op": "gte", "value": 100}, "{}", False),
    # lt
    ({"field": "amount", "op": "lt", "value": 0}, '{"amount": -0.000000000000000000001}', True),
    ({"field": "amount", "op": "lt", "value": 0}, '{"amount": 0}', False),
    ({"field": "amount", "op": "lt", "value": 0}, '{"amount": -0}', False),
    ({"field": "amount", "op": "lt", "value": 0}, '{"amount": -0.0}', False),
    ({"field": "amount", "op": "lt", "value": 0}, '{"amount": "-1"}', False),
    ({"field": "amount", "op": "lt", "value": 0}, '{"amount": false}', False),
    ({"field": "amount", "op": "lt", "value": 0}, "{}", False),
    # lte
    ({"field": "amount", "op": "lte", "value": -5.5}, '{"amount": -5.5}', True),
    ({"field": "amount", "op": "lte", "value": -5.5}, '{"amount": -5.50000}', True),
    ({"field": "amount", "op": "lte", "value": -5.5}, '{"amount": -5.49999999999999999999}', False),
    ({"field": "amount", "op": "lte", "value": -5.5}, '{"amount": -6}', True),
    ({"field": "amount", "op": "lte", "value": -5.5}, '{"amount": "-6"}', False),
    # eq: numbers compare by value, strings and booleans by type and value.
    ({"field": "amount", "op": "eq", "value": 100}, '{"amount": 100}', True),
    ({"field": "amount", "op": "eq", "value": 100}, '{"amount": 100.00}', True),
    ({"field": "amount", "op": "eq", "value": 100}, '{"amount": 1e2}', True),
    ({"field": "amount", "op": "eq", "value": 100}, '{"amount": 100.0000000000000000001}', False),
    ({"field": "amount", "op": "eq", "value": 100}, '{"amount": "100"}', False),
    ({"field": "amount", "op": "eq", "value": 100}, "{}", False),
    ({"field": "amount", "op": "eq", "value": 0}, '{"amount": -0.0}', True),
    ({"field": "amount", "op": "eq", "value": 0}, '{"amount": false}', False),
    ({"field": "amount", "op": "eq", "value": 1}, '{"amount": true}', False),
    ({"field": "amount", "op": "eq", "value": 0.1}, '{"amount": 0.1}', True),
    ({"field": "amount", "op": "eq", "value": 12345678901234567}, '{"amount": 12345678901234567}', True),
    ({"field": "amount", "op": "eq", "value": 12345678901234567}, '{"amount": 12345678901234568}', False),
    ({"field": "amount", "op": "eq", "value": "100"}, '{"amount": "100"}', True),
    ({"field": "amount", "op": "eq", "value": "100"}, '{"amount": 100}', False),
    ({"field": "flagged", "op": "eq", "value": True}, '{"flagged": true}', True),
    ({"field": "flagged", "op": "eq", "value": True}, '{"flagged": 1}', False),
    ({"field": "flagged", "op": "eq", "value": False}, '{"flagged": 0}', False),
    # ne: a missing field neither equals nor differs.
    ({"field": "amount", "op": "ne", "value": 100}, '{"amount": 101}', True),
    ({"field": "amount", "op": "ne", "value": 100}, '{"amount": 100.0}', False),
    ({"field": "amount", "op": "ne", "value": 100}, '{"amount": "100"}', True),
    ({"field": "amount", "op": "ne", "value": 100}, '{"amount": null}', True),
    ({"field": "amount", "op": "ne", "value": 100}, "{}", False),
    ({"field": "currency", "op": "ne", "value": "EUR"}, '{"currency": "eur"}', True),
    ({"field": "currency", "op": "ne", "value": "EUR"}, '{"currency": "EUR"}', False),
    # in
    ({"field": "code", "op": "in", "value": [1, "a", True]}, '{"code": 1.0}', True),
    ({"field": "code", "op": "in", "value": [1, "a", True]}, '{"code": "a"}', True),
    ({"field": "code", "op": "in", "value": [1, "a", True]}, '{"code": true}', True),
    ({"field": "code", "op": "in", "value": [1, "a", True]}, '{"code": "1"}', False),
    ({"field": "code", "op": "in", "value": [1, "a", True]}, '{"code": 2}', False),
    ({"field": "code", "op": "in", "value": [1, "a", True]}, '{"code": false}', False),
    ({"field": "code", "op": "in", "value": [1, "a", True]}, "{}", False),
    ({"field": "code", "op": "in", "value": [-0.5, 0]}, '{"code": -0.50}', True),
    ({"field": "code", "op": "in", "value": [-0.5, 0]}, '{"code": 0.0}', True),
    # exists: JSON null is present; false inverts.
    ({"field": "card", "op": "exists"}, '{"card": "x"}', True),
    ({"field": "card", "op": "exists"}, '{"card": null}', True),
    ({"field": "card", "op": "exists"}, "{}", False),
    ({"field": "card", "op": "exists", "value": False}, "{}", True),
    ({"field": "card", "op": "exists", "value": False}, '{"card": 0}', False),
    # Dotted paths reach into nested objects and nowhere else.
    ({"field": "payment.amount", "op": "gt", "value": 100}, '{"payment": {"amount": 150}}', True),
    ({"field": "payment.amount", "op": "gt", "value": 100}, '{"payment": {"amount": 100}}', False),
    ({"field": "payment.amount", "op": "gt", "value": 100}, '{"payment": 150}', False),
    ({"field": "payment.amount", "op": "gt", "value": 100}, '{"payment": [{"amount": 150}]}', False),
    ({"field": "payment.amount", "op": "gt", "value": 100}, '{"payment": null}', False),
    ({"field": "payment.amount", "op": "gt", "value": 100}, '{"payment.amount": 150}', False),
    ({"field": "a.b.c.d", "op": "eq", "value": "deep"}, '{"a": {"b": {"c": {"d": "deep"}}}}', True),
    ({"field": "a.b.c.d", "op": "eq", "value": "deep"}, '{"a": {"b": {"c": "deep"}}}', False),
    ({"field": "a.b", "op": "exists"}, '{"a": {"b": null}}', True),
    ({"field": "a.b", "op": "exists"}, '{"a": {"c": 1}}', False),
    ({"field": "a.b", "op": "exists", "value": False}, '{"a": "b"}', True),
    ({"field": "a.b", "op": "ne", "value": 1}, '{"a": {}}', False),
]


@pytest.mark.parametrize(("condition", "event_json", "expected"), OPERATOR_CASES)
def test_operator_edge_value(condition: dict[str, Any], event_json: str, expected: bool) -> None:
    assert matches(condition, event_json) is expected


def test_every_operator_has_cases() -> None:
    from anomaly_processor.rules import OPERATORS

    covered = {condition["op"] for condition, _, _ in OPERATOR_CASES}
    assert covered == set(OPERATORS)


@pytest.mark.parametrize(
    ("match", "event_json", "expected"),
    [
        ("any", '{"amount": 150, "country": "FR"}', True),
        ("any", '{"amount": 50, "country": "XX"}', True),
        ("any", '{"amount": 50, "country": "FR"}', False),
        ("all", '{"amount": 150, "country": "XX"}', True),
        ("all", '{"amount": 150, "country": "FR"}', False),
        ("all", '{"amount": 150}', False),
    ],
)
def test_match_mode_combines_conditions(match: str, event_json: str, expected: bool) -> None:
    rules = parse_rule_set(
        {
            "match": match,
            "conditions": [
                {"field": "amount", "op": "gt", "value": 100},
                {"field": "country", "op": "in", "value": ["XX", "YY"]},
            ],
        }
    )
    event, _ = DECODE(event_json.encode())
    assert event is not None
    assert rules.matches(event) is expected


@pytest.mark.parametrize(
    ("rules", "field", "message_part"),
    [
        ({"conditions": [{"field": "amount", "op": "gtt", "value": 1}]}, "spec.rules.conditions[0].op", "gtt"),
        ({"conditions": [{"field": "amount", "op": "gt", "value": "abc"}]}, "spec.rules.conditions[0].value", "number"),
        ({"conditions": [{"field": "amount", "op": "gt", "value": True}]}, "spec.rules.conditions[0].value", "number"),
        ({"conditions": [{"field": "amount", "op": "gt", "value": "NaN"}]}, "spec.rules.conditions[0].value", "finite"),
        (
            {"conditions": [{"field": "amount", "op": "gt", "value": "Infinity"}]},
            "spec.rules.conditions[0].value",
            "finite",
        ),
        ({"conditions": [{"field": "amount", "op": "gt"}]}, "spec.rules.conditions[0].value", "needs a value"),
        ({"conditions": [{"field": "amount", "op": "in", "value": []}]}, "spec.rules.conditions[0].value", "non-empty"),
        ({"conditions": [{"field": "amount", "op": "in", "value": 5}]}, "spec.rules.conditions[0].value", "list"),
        (
            {"conditions": [{"field": "amount", "op": "in", "value": [1, None]}]},
            "spec.rules.conditions[0].value[1]",
            "None",
        ),
        (
            {"conditions": [{"field": "amount", "op": "eq", "value": {"a": 1}}]},
            "spec.rules.conditions[0].value",
            "string",
        ),
        (
            {"conditions": [{"field": "amount", "op": "exists", "value": "yes"}]},
            "spec.rules.conditions[0].value",
            "true or false",
        ),
        ({"conditions": [{"field": "a..b", "op": "exists"}]}, "spec.rules.conditions[0].field", "a..b"),
        ({"conditions": [{"field": "amount ", "op": "exists"}]}, "spec.rules.conditions[0].field", "dotted"),
        ({"conditions": [{"field": "x" * 257, "op": "exists"}]}, "spec.rules.conditions[0].field", "256"),
        ({"conditions": [{"field": "", "op": "exists"}]}, "spec.rules.conditions[0].field", "dotted"),
        ({"conditions": [{"field": "a", "op": "exists", "extra": 1}]}, "spec.rules.conditions[0].extra", "unknown key"),
        ({"conditions": ["amount > 100"]}, "spec.rules.conditions[0]", "mapping"),
        (
            {"conditions": [{"field": "a", "op": "exists"}, {"field": "b", "op": "lt", "value": []}]},
            "spec.rules.conditions[1].value",
            "number",
        ),
        ({"match": "some"}, "spec.rules.match", "any or all"),
        ({"conditions": []}, "spec.rules.conditions", "non-empty"),
        ({"conditions": [{"field": "a", "op": "exists"}] * (MAX_CONDITIONS + 1)}, "spec.rules.conditions", "at most"),
        ({"when": "always"}, "spec.rules.when", "unknown key"),
        (["amount"], "spec.rules", "mapping"),
    ],
)
def test_invalid_rule_named(rules: Any, field: str, message_part: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule_set(rules, "spec.rules")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: invalid value")
    assert message_part in str(caught.value)


def test_missing_rules_mean_default() -> None:
    rules = parse_rule_set(None)
    assert rules.as_dict() == {
        "match": "any",
        "conditions": [{"field": "transaction_amount", "op": "gt", "value": 100}],
    }


@pytest.mark.parametrize(
    "condition",
    [
        {"field": "amount", "op": "gt", "value": "100.00000000000000000001"},
        {"field": "amount", "op": "gte", "value": 0.1},
        {"field": "amount", "op": "lt", "value": -12345678901234567890},
        {"field": "amount", "op": "eq", "value": 12345678901234567},
        {"field": "amount", "op": "eq", "value": 1.5},
        {"field": "amount", "op": "ne", "value": "EUR"},
        {"field": "amount", "op": "in", "value": [1, 2.25, "x", False]},
        {"field": "a.b", "op": "exists", "value": False},
    ],
)
def test_spec_form_reads_back_equal(condition: dict[str, Any]) -> None:
    first = parse_rule_set({"match": "all", "conditions": [condition]})
    second = parse_rule_set(first.as_dict())
    assert second.conditions == first.conditions
    assert second.match == "all"


def test_exact_value_kept_as_decimal() -> None:
    rules = parse_rule_set({"conditions": [{"field": "amount", "op": "gt", "value": 0.1}]})
    assert rules.conditions[0].value == Decimal("0.1")
