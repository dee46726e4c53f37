"""One definition of the rule and detector shapes: the CRD embeds it, and schema and parser agree.

The CRD's structural schema cannot say which value type an operator takes, so a few
rule sets pass the schema and are rejected by the parser when the operator reconciles;
``PARSER_ONLY`` lists them, and every other case must get the same answer from both.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
import yaml
from anomaly_operator import crd
from anomaly_pipeline import spec
from anomaly_pipeline.spec import SpecError, parse_pipeline
from anomaly_processor.config import ConfigError, from_document
from anomaly_processor.detector import DETECTOR_SCHEMA
from anomaly_processor.rules import MAX_CONDITIONS, MAX_FIELD_PATH_LENGTH, RULE_SET_SCHEMA


def crd_spec_properties() -> dict[str, Any]:
    document = yaml.safe_load(crd.CRD_PATH.read_text(encoding="utf-8"))
    properties = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert isinstance(properties, dict)
    return properties


def pipeline_with(**spec_fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": spec.API_VERSION,
        "kind": spec.KIND,
        "metadata": {"name": "payments", "namespace": "default"},
        "spec": {"tester": {"principals": ["123456789012"]}, **spec_fields},
    }


def schema_accepts(document: dict[str, Any]) -> bool:
    return not list(jsonschema.Draft7Validator(crd.validation_schema()).iter_errors(document))


def parser_accepts(document: dict[str, Any]) -> bool:
    try:
        parse_pipeline(document)
    except SpecError:
        return False
    return True


def condition(**fields: Any) -> dict[str, Any]:
    return {"conditions": [fields]}


# Rule sets both must accept.
ACCEPTED: list[dict[str, Any]] = [
    {},
    {"match": "all"},
    condition(field="amount", op="gt", value=100),
    condition(field="payment.amount", op="lte", value="100.00000000000000000001"),
    condition(field="a.b-c.$d.@e_f", op="exists"),
    condition(field="a", op="exists", value=False),
    condition(field="x" * MAX_FIELD_PATH_LENGTH, op="eq", value="x"),
    condition(field="code", op="in", value=[1, "a", True]),
    condition(field="flag", op="ne", value=True),
    {"conditions": [{"field": "a", "op": "exists"}] * MAX_CONDITIONS},
]

# Rule sets both must reject.
REJECTED: list[dict[str, Any]] = [
    {"match": "some"},
    {"conditions": []},
    {"conditions": [{"field": "a", "op": "exists"}] * (MAX_CONDITIONS + 1)},
    {"when": "always"},
    condition(field="a..b", op="exists"),
    condition(field=".a", op="exists"),
    condition(field="a b", op="exists"),
    condition(field="a[0]", op="exists"),
    condition(field="", op="exists"),
    condition(field="x" * (MAX_FIELD_PATH_LENGTH + 1), op="exists"),
    condition(field="a", op="between", value=1),
    condition(field="a", op="gt", value=1, note="x"),
    condition(op="gt", value=1),
    condition(field="a"),
]

# Rule sets the schema accepts and the parser rejects: the value's type depends on the operator.
PARSER_ONLY: list[dict[str, Any]] = [
    condition(field="a", op="gt", value="many"),
    condition(field="a", op="gt", value=True),
    condition(field="a", op="gt"),
    condition(field="a", op="in", value=[]),
    condition(field="a", op="in", value=5),
    condition(field="a", op="exists", value="yes"),
    condition(field="a", op="eq", value={"nested": 1}),
]


@pytest.mark.parametrize("rules", ACCEPTED)
def test_schema_and_parser_accept(rules: dict[str, Any]) -> None:
    document = pipeline_with(rules=rules)
    assert schema_accepts(document)
    assert parser_accepts(document)


@pytest.mark.parametrize("rules", REJECTED)
def test_schema_and_parser_reject(rules: dict[str, Any]) -> None:
    document = pipeline_with(rules=rules)
    assert not schema_accepts(document)
    assert not parser_accepts(document)


@pytest.mark.parametrize("rules", PARSER_ONLY)
def test_parser_rejects_what_schema_cannot(rules: dict[str, Any]) -> None:
    document = pipeline_with(rules=rules)
    assert schema_accepts(document)
    assert not parser_accepts(document)


@pytest.mark.parametrize("rules", ACCEPTED + REJECTED + PARSER_ONLY)
def test_shadow_rules_judged_like_rules(rules: dict[str, Any]) -> None:
    as_rules = pipeline_with(rules=rules)
    as_shadow = pipeline_with(detectors={"shadow": {"name": "trial", "rules": rules}})
    assert schema_accepts(as_shadow) == schema_accepts(as_rules)
    assert parser_accepts(as_shadow) == parser_accepts(as_rules)


@pytest.mark.parametrize("rules", ACCEPTED + REJECTED + PARSER_ONLY)
def test_processor_settings_judge_rules_like_parser(rules: dict[str, Any]) -> None:
    document = {
        "pipeline": "default/payments",
        "region": "eu-west-1",
        "inputStream": "ingest-default-payments",
        "outputStream": "anomaly-default-payments",
        "checkpointTable": "anomaly-checkpoints-default-payments",
        "rules": rules,
    }
    try:
        from_document(document)
        processor_accepts = True
    except ConfigError:
        processor_accepts = False
    assert processor_accepts == parser_accepts(pipeline_with(rules=rules))


def test_crd_embeds_rule_set_schema() -> None:
    rules = copy.deepcopy(crd_spec_properties()["rules"])
    assert rules.pop("default") == {}
    assert rules == RULE_SET_SCHEMA


def test_crd_embeds_detector_schema() -> None:
    shadow = copy.deepcopy(crd_spec_properties()["detectors"]["properties"]["shadow"])
    assert shadow.pop("nullable") is True
    assert shadow.pop("description")
    assert shadow == {key: value for key, value in DETECTOR_SCHEMA.items() if key != "description"}


@pytest.mark.parametrize(
    ("shadow", "accepted"),
    [
        (None, True),
        ({"name": "stricter-rules", "rules": {}}, True),
        ({"name": "stricter-rules", "rules": {"conditions": [{"field": "a", "op": "exists"}]}}, True),
        ({"name": "a" * 63, "rules": {}}, True),
        ({"name": "a" * 64, "rules": {}}, False),
        ({"name": "Stricter", "rules": {}}, False),
        ({"name": "stricter-", "rules": {}}, False),
        ({"rules": {}}, False),
        ({"name": "stricter"}, False),
        ({"name": "stricter", "rules": None}, False),
        ({"name": "stricter", "rules": {}, "model": "x"}, False),
        ("stricter", False),
    ],
)
def test_shadow_schema_and_parser_agree(shadow: object, accepted: bool) -> None:
    document = pipeline_with(detectors={"shadow": shadow})
    assert schema_accepts(document) is accepted
    assert parser_accepts(document) is accepted


def test_detectors_unknown_key_rejected() -> None:
    document = pipeline_with(detectors={"primary": {"name": "x", "rules": {}}})
    assert not schema_accepts(document)
    with pytest.raises(SpecError, match=r"spec\.detectors\.primary"):
        parse_pipeline(document)


def test_shadow_detector_reaches_processor_settings() -> None:
    conditions = [{"field": "transaction_amount", "op": "gt", "value": 50}]
    shadow = {"name": "stricter-rules", "rules": {"conditions": conditions}}
    pipeline = parse_pipeline(pipeline_with(detectors={"shadow": shadow}))
    assert pipeline.shadow_detector is not None
    config = spec.processor_config(pipeline)
    document = yaml.safe_load(yaml.safe_dump(config.as_document()))
    assert document["detectors"]["shadow"] == {
        "name": "stricter-rules",
        "rules": {"match": "any", "conditions": conditions},
    }
    assert from_document(document).shadow_detector == pipeline.shadow_detector


def test_no_shadow_by_default() -> None:
    pipeline = parse_pipeline(pipeline_with())
    assert pipeline.shadow_detector is None
    assert spec.processor_config(pipeline).as_document()["detectors"] == {"shadow": None}
