"""The AnomalyPipeline CRD: generated file, parser agreement, structure, immutable fields and the examples."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from anomaly_operator import crd
from anomaly_pipeline import spec
from anomaly_pipeline.spec import SpecError, parse_pipeline
from anomaly_processor.rules import RULE_SET_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
KUBERNETES_VERSIONS = ("1.29.0", "1.31.0")


def load_crd_file() -> dict[str, Any]:
    document = yaml.safe_load(crd.CRD_PATH.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def open_api_schema() -> dict[str, Any]:
    schema = load_crd_file()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def example_pipelines() -> list[dict[str, Any]]:
    documents = []
    for path in EXAMPLES:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict) and document.get("kind") == spec.KIND:
                documents.append(document)
    return documents


def minimal_pipeline() -> dict[str, Any]:
    return {
        "apiVersion": spec.API_VERSION,
        "kind": spec.KIND,
        "metadata": {"name": "payments", "namespace": "default"},
        "spec": {"tester": {"principals": ["123456789012"]}},
    }


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(crd.validation_schema())
    return [".".join(str(p) for p in error.absolute_path) or error.message for error in validator.iter_errors(document)]


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield every subschema with its dotted path."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def defaults_of(schema: dict[str, Any]) -> dict[str, Any]:
    """Collect the defaults that the API server would fill into an empty object of this schema."""
    result: dict[str, Any] = {}
    required = set(schema.get("required", []))
    for name, child in schema.get("properties", {}).items():
        always_present = child.get("default") == {} or name in required
        if child.get("type") == "object" and always_present and "properties" in child:
            result[name] = defaults_of(child)
        elif "default" in child:
            result[name] = child["default"]
        elif child.get("nullable"):
            result[name] = None
    return result


# Generated file


def test_crd_file_matches_generator() -> None:
    assert crd.CRD_PATH.name == "anomalypipelines.anomaly.dev.yaml"
    assert crd.CRD_PATH.read_text(encoding="utf-8") == crd.crd_yaml(), "run `python -m anomaly_operator.crd --write`"


def test_crd_names_scope_and_short_name() -> None:
    document = load_crd_file()
    names = document["spec"]["names"]
    assert document["metadata"]["name"] == "anomalypipelines.anomaly.dev"
    assert document["spec"]["group"] == spec.API_GROUP
    assert document["spec"]["scope"] == "Namespaced"
    assert names["kind"] == spec.KIND
    assert names["shortNames"] == ["ap"]
    versions = document["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    assert f"{spec.API_GROUP}/{versions[0]['name']}" == spec.API_VERSION


def test_crd_status_subresource_keeps_bookkeeping() -> None:
    version = load_crd_file()["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert version["subresources"] == {"status": {}}
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert status["properties"]["processor"]["x-kubernetes-preserve-unknown-fields"] is True
    for field in (
        "observedGeneration",
        "conditions",
        "input",
        "output",
        "processorRoleArn",
        "testerRoleArn",
        "shardCount",
    ):
        assert field in status["properties"], field


def test_crd_printer_columns() -> None:
    columns = {c["name"]: c for c in load_crd_file()["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Input"]["jsonPath"] == ".status.input.name"
    assert columns["Anomalies"]["jsonPath"] == ".status.output.name"
    assert columns["Shards"]["jsonPath"] == ".status.shardCount"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert columns["Age"]["type"] == "date"


# Agreement with the spec parser


def test_crd_defaults_equal_spec_defaults() -> None:
    spec_schema = open_api_schema()["properties"]["spec"]
    defaults = defaults_of(spec_schema)
    rules = defaults.pop("rules")
    assert defaults == spec.DEFAULTS
    assert rules == {
        "match": RULE_SET_SCHEMA["properties"]["match"]["default"],
        "conditions": RULE_SET_SCHEMA["properties"]["conditions"]["default"],
    }


def test_crd_rules_schema_is_rule_set_schema() -> None:
    rules = copy.deepcopy(open_api_schema()["properties"]["spec"]["properties"]["rules"])
    assert rules.pop("default") == {}
    assert rules == RULE_SET_SCHEMA


def test_crd_patterns_are_the_parser_patterns() -> None:
    properties = open_api_schema()["properties"]["spec"]["properties"]
    assert properties["region"]["pattern"] == spec.REGION_PATTERN
    for section, field in (
        ("input", "streamNamePrefix"),
        ("output", "streamNamePrefix"),
        ("checkpoints", "tableNamePrefix"),
    ):
        assert properties[section]["properties"][field]["pattern"] == spec.PREFIX_PATTERN
        assert properties[section]["properties"][field]["maxLength"] == spec.PREFIX_MAX
    iam = properties["iam"]["properties"]
    assert iam["rolePath"]["pattern"] == spec.ROLE_PATH_PATTERN
    assert iam["roleNamePrefix"]["pattern"] == spec.ROLE_NAME_PREFIX_PATTERN
    assert iam["permissionsBoundaryArn"]["pattern"] == spec.BOUNDARY_ARN_PATTERN


def with_field(path: str, value: object) -> dict[str, Any]:
    """Return the minimal pipeline with ``spec.<path>`` set to ``value``."""
    document = minimal_pipeline()
    node = document["spec"]
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return document


# (field under spec, accepted values, rejected values): the parser and the schema must agree on each.
FIELD_CASES: list[tuple[str, list[object], list[object]]] = [
    ("input.shardCount", [spec.MIN_SHARDS, spec.MAX_SHARDS], [spec.MIN_SHARDS - 1, spec.MAX_SHARDS + 1, "2", 1.5]),
    ("output.shardCount", [spec.MIN_SHARDS, spec.MAX_SHARDS], [spec.MIN_SHARDS - 1, spec.MAX_SHARDS + 1]),
    (
        "input.retentionHours",
        [spec.MIN_RETENTION_HOURS, spec.MAX_RETENTION_HOURS],
        [spec.MIN_RETENTION_HOURS - 1, spec.MAX_RETENTION_HOURS + 1],
    ),
    ("input.startingPosition", list(spec.STARTING_POSITIONS), ["AT_TIMESTAMP", "latest"]),
    (
        "input.streamNamePrefix",
        ["a", "x" * spec.PREFIX_MAX, "in.put_1-"],
        ["", "x" * (spec.PREFIX_MAX + 1), "in put", "in/put"],
    ),
    ("checkpoints.tableNamePrefix", ["cp-"], ["cp:"]),
    ("region", ["eu-west-1", "us-gov-west-1"], ["EU-WEST-1", "eu-west", "euwest1"]),
    (
        "tester.sessionDurationSeconds",
        [spec.MIN_SESSION_SECONDS, spec.MAX_SESSION_SECONDS],
        [spec.MIN_SESSION_SECONDS - 1, spec.MAX_SESSION_SECONDS + 1],
    ),
    (
        "tester.principals",
        [["123456789012"], ["arn:aws:iam::123456789012:role/tester", "arn:aws:sts::123456789012:assumed-role/a/b"]],
        [[], ["12345678901"], ["arn:aws:iam::123456789012:*"], ["arn:aws:iam::123456789012:role/*"], "123456789012"],
    ),
    ("iam.rolePath", ["/", "/anomaly-pipeline/", "/a/b/"], ["anomaly", "/anomaly", "/a b/"]),
    ("iam.roleNamePrefix", ["a", "x" * 24, "a+=,.@_-"], ["", "x" * 25, "a/b"]),
    (
        "iam.permissionsBoundaryArn",
        [None, "arn:aws:iam::123456789012:policy/boundary"],
        ["boundary", "arn:aws:iam::1234:policy/b"],
    ),
    ("processor.maxReplicas", [1, spec.MAX_REPLICAS], [0, spec.MAX_REPLICAS + 1]),
    (
        "processor.pollIntervalMillis",
        [spec.MIN_POLL_INTERVAL_MILLIS, spec.MAX_POLL_INTERVAL_MILLIS],
        [spec.MIN_POLL_INTERVAL_MILLIS - 1, spec.MAX_POLL_INTERVAL_MILLIS + 1],
    ),
    ("deletionPolicy", list(spec.DELETION_POLICIES), ["retain", "Orphan"]),
    ("events.requiredNumericFields", [[], ["amount", "$fee"]], [["payment.amount"], [""], "amount"]),
    ("rules.match", ["any", "all"], ["some"]),
    (
        "rules.conditions",
        [[{"field": "a.b", "op": "in", "value": [1, "x"]}], [{"field": "a", "op": "exists"}]],
        [
            [],
            [{"field": "a", "op": "like", "value": 1}],
            [{"op": "gt", "value": 1}],
            [{"field": "a", "op": "gt", "value": 1, "x": 1}],
        ],
    ),
    ("unknownField", [], [1]),
    ("input.shards", [], [2]),
]


@pytest.mark.parametrize(("field", "accepted", "rejected"), FIELD_CASES, ids=[case[0] for case in FIELD_CASES])
def test_schema_and_parser_agree(field: str, accepted: list[object], rejected: list[object]) -> None:
    for value in accepted:
        document = with_field(field, value)
        assert schema_errors(document) == [], f"schema rejected spec.{field}={value!r}"
        parse_pipeline(document)
    for value in rejected:
        document = with_field(field, value)
        assert schema_errors(document), f"schema accepted spec.{field}={value!r}"
        with pytest.raises(SpecError):
            parse_pipeline(document)


def test_schema_requires_tester_principals() -> None:
    document = minimal_pipeline()
    del document["spec"]["tester"]
    assert schema_errors(document)
    document["spec"]["tester"] = {"sessionDurationSeconds": 3600}
    assert schema_errors(document)
    no_spec = minimal_pipeline()
    del no_spec["spec"]
    assert schema_errors(no_spec)


# Structure


def test_every_field_has_a_description() -> None:
    missing = [
        path for path, node in walk(open_api_schema()) if path not in ("", ".metadata") and not node.get("description")
    ]
    assert missing == []


def test_schema_is_structural() -> None:
    for path, node in walk(open_api_schema()):
        preserves = node.get("x-kubernetes-preserve-unknown-fields") is True
        assert "type" in node or preserves, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), (
            f"{path} mixes properties and additionalProperties"
        )
        if "default" in node:
            jsonschema.Draft7Validator(crd._as_json_schema(node)).validate(node["default"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_validates_as_kubernetes_object(version: str) -> None:
    kubernetes_validate.validate(load_crd_file(), version, strict=True)


def test_crd_misspelled_field_rejected() -> None:
    broken = load_crd_file()
    broken["spec"]["versions"][0]["subresource"] = {"status": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# Immutable fields

# Each of these fields names AWS resources, so a change would make the operator create new ones
# and leave the old ones behind. The API server evaluates the rules, so these tests check the
# rules as written, not CEL's verdict on an update.
IMMUTABLE_FIELDS = {
    "region": "spec.region is immutable: create a new AnomalyPipeline to use another region",
    "input.streamNamePrefix": (
        "spec.input.streamNamePrefix is immutable: create a new AnomalyPipeline to use another input stream"
    ),
    "output.streamNamePrefix": (
        "spec.output.streamNamePrefix is immutable: create a new AnomalyPipeline to use another anomaly stream"
    ),
    "checkpoints.tableNamePrefix": (
        "spec.checkpoints.tableNamePrefix is immutable: create a new AnomalyPipeline to use another checkpoint table"
    ),
    "iam.roleNamePrefix": "spec.iam.roleNamePrefix is immutable: create a new AnomalyPipeline to use other role names",
}
DEAD_LETTER_MESSAGE = (
    "spec.deadLetter.streamNamePrefix cannot be changed or removed once set: create a new AnomalyPipeline "
    "to use another dead-letter stream or none"
)
DEAD_LETTER_RULE = (
    "!has(oldSelf.streamNamePrefix) || "
    "(has(self.streamNamePrefix) && self.streamNamePrefix == oldSelf.streamNamePrefix)"
)


def spec_field(path: str) -> dict[str, Any]:
    """Return the schema of ``spec.<path>`` in the CRD file."""
    node = open_api_schema()["properties"]["spec"]
    for part in path.split("."):
        node = node["properties"][part]
    return node


@pytest.mark.parametrize(("field", "message"), IMMUTABLE_FIELDS.items(), ids=list(IMMUTABLE_FIELDS))
def test_immutable_field_has_transition_rule(field: str, message: str) -> None:
    node = spec_field(field)

    assert node["x-kubernetes-validations"] == [{"rule": "self == oldSelf", "message": message}]
    # A rule on oldSelf is skipped when the field is absent, so only a defaulted field is covered.
    assert "default" in node
    assert not node.get("nullable")
    assert node["description"].endswith(" Immutable: create a new AnomalyPipeline to change it.")


def test_dead_letter_prefix_is_immutable_once_set() -> None:
    section = spec_field("deadLetter")
    prefix = spec_field("deadLetter.streamNamePrefix")

    assert section["x-kubernetes-validations"] == [{"rule": DEAD_LETTER_RULE, "message": DEAD_LETTER_MESSAGE}]
    # The section must always exist for the rule to run, and the prefix stays optional.
    assert section["default"] == {}
    assert "x-kubernetes-validations" not in prefix
    assert "default" not in prefix
    assert prefix["nullable"] is True
    assert "Once set, it is immutable: create a new AnomalyPipeline to change or remove it." in prefix["description"]


def test_only_resource_names_carry_rules() -> None:
    with_rules = sorted(path for path, node in walk(open_api_schema()) if "x-kubernetes-validations" in node)

    expected = sorted([f".spec.{field}" for field in IMMUTABLE_FIELDS] + [".spec.deadLetter"])
    assert with_rules == expected


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_rule_without_expression_rejected(version: str) -> None:
    broken = load_crd_file()
    region = broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["region"]
    region["x-kubernetes-validations"] = [{"rules": "self == oldSelf", "message": "spec.region is immutable"}]

    with pytest.raises(kubernetes_validate.ValidationError, match="'rule' is a required property"):
        kubernetes_validate.validate(broken, version, strict=True)


# Examples


def test_examples_exist() -> None:
    assert example_pipelines(), "examples/ holds no AnomalyPipeline"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_against_crd(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if isinstance(document, dict) and document.get("kind") == spec.KIND:
            assert schema_errors(document) == []
            parse_pipeline(document)


def test_invalid_example_variants_are_rejected() -> None:
    example = example_pipelines()[0]
    variants = {
        "spec.input.shardCount": ("input", "shardCount", 0),
        "spec.output.streamNamePrefix": ("output", "streamNamePrefix", "bad prefix"),
        "spec.tester.principals": ("tester", "principals", ["*"]),
        "spec.deletionPolicy": (None, "deletionPolicy", "Destroy"),
        "spec.rules.conditions": ("rules", "conditions", [{"field": "amount", "op": "between", "value": 1}]),
    }
    for name, (section, key, value) in variants.items():
        document = copy.deepcopy(example)
        target = document["spec"] if section is None else document["spec"][section]
        target[key] = value
        assert schema_errors(document), f"{name}={value!r} was accepted"
