"""The AnomalyPipeline parser: accepted specs, defaults, names and rejected specs."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from anomaly_pipeline.spec import (
    DEFAULTS,
    DYNAMODB_NAME_MAX,
    IAM_ROLE_NAME_MAX,
    KINESIS_NAME_MAX,
    SpecError,
    parse_pipeline,
    processor_config,
)
from anomaly_processor.config import from_document

from tests.conftest import EXAMPLE


def example_document() -> dict[str, Any]:
    return dict(yaml.safe_load(EXAMPLE.read_text()))


def with_spec(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(example_document())
    node = document
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return document


def test_example_names_resources_from_prefixes() -> None:
    pipeline = parse_pipeline(example_document())

    assert pipeline.input.name == "ingest-default-payments"
    assert pipeline.output.name == "anomaly-default-payments"
    assert pipeline.checkpoint_table == "anomaly-checkpoints-default-payments"
    assert pipeline.processor_role_name == "anomaly-default-payments-processor"
    assert pipeline.tester_role_name == "anomaly-default-payments-tester"
    assert pipeline.role_path == "/anomaly-pipeline/"
    assert pipeline.input.shard_count == 2
    assert pipeline.output.shard_count == 1
    assert pipeline.key == "default/payments"


def test_minimal_spec_gets_every_default() -> None:
    document = {
        "apiVersion": "anomaly.dev/v1alpha1",
        "kind": "AnomalyPipeline",
        "metadata": {"name": "p"},
        "spec": {"tester": {"principals": ["123456789012"]}},
    }
    pipeline = parse_pipeline(document)

    assert pipeline.namespace == "default"
    assert pipeline.region == DEFAULTS["region"] == "eu-west-1"
    assert pipeline.input.shard_count == DEFAULTS["input"]["shardCount"]
    assert pipeline.input.retention_hours == DEFAULTS["input"]["retentionHours"]
    assert pipeline.input.starting_position == DEFAULTS["input"]["startingPosition"]
    assert pipeline.tester_session_seconds == DEFAULTS["tester"]["sessionDurationSeconds"]
    assert pipeline.deletion_policy == "Retain"
    assert pipeline.permissions_boundary_arn is None
    assert pipeline.rules.as_dict() == {
        "match": "any",
        "conditions": [{"field": "transaction_amount", "op": "gt", "value": 100}],
    }


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        ("spec.input.streamNamePrefix", "ingest/", "spec.input.streamNamePrefix", "Kinesis accepts"),
        ("spec.output.streamNamePrefix", "anomaly stream-", "spec.output.streamNamePrefix", "Kinesis accepts"),
        ("spec.input.streamNamePrefix", "x" * 33, "spec.input.streamNamePrefix", "1 to 32"),
        ("spec.region", "eu-moon-1", "spec.region", "unknown region"),
        ("spec.region", "Europe", "spec.region", "region name"),
        ("spec.input.shardCount", 0, "spec.input.shardCount", "out of range"),
        ("spec.input.shardCount", 501, "spec.input.shardCount", "out of range"),
        ("spec.input.shardCount", "2", "spec.input.shardCount", "expected an integer"),
        ("spec.output.shardCount", True, "spec.output.shardCount", "expected an integer"),
        ("spec.input.retentionHours", 23, "spec.input.retentionHours", "out of range"),
        ("spec.input.startingPosition", "AT_TIMESTAMP", "spec.input.startingPosition", "TRIM_HORIZON, LATEST"),
        (
            "spec.rules.conditions",
            [{"field": "transaction_amount", "op": "between", "value": 1}],
            "spec.rules.conditions[0].op",
            "unknown operator",
        ),
        (
            "spec.rules.conditions",
            [{"field": "transaction_amount", "op": "gt", "value": "lots"}],
            "spec.rules.conditions[0].value",
            "number",
        ),
        ("spec.rules.match", "some", "spec.rules.match", "any or all"),
        ("spec.tester.principals", [], "spec.tester.principals", "non-empty"),
        ("spec.tester.principals", ["arn:aws:iam::123456789012:*"], "spec.tester.principals[0]", "wildcards"),
        ("spec.tester.principals", ["everyone"], "spec.tester.principals[0]", "account id"),
        ("spec.tester.sessionDurationSeconds", 60, "spec.tester.sessionDurationSeconds", "out of range"),
        ("spec.iam.rolePath", "anomaly", "spec.iam.rolePath", "starts and ends with '/'"),
        ("spec.iam.permissionsBoundaryArn", "boundary", "spec.iam.permissionsBoundaryArn", "policy ARN"),
        ("spec.deletionPolicy", "Keep", "spec.deletionPolicy", "Retain, Delete"),
        ("spec.input.shards", 2, "spec.input.shards", "unknown field"),
        ("spec.colour", "blue", "spec.colour", "unknown field"),
        ("spec.processor.pollIntervalMillis", 50, "spec.processor.pollIntervalMillis", "out of range"),
        ("metadata.name", "Payments", "metadata.name", "Kubernetes name"),
        ("metadata.name", "a" * 254, "metadata.name", "at most 253 characters"),
        ("metadata.name", "1payments", "metadata.name", "must start with a lowercase letter"),
        ("metadata.name", "pay.ments", "metadata.name", "only lowercase letters, digits and '-'"),
        ("metadata.name", "payments.eu", "metadata.name", "names the processor's Service"),
        ("metadata.namespace", "team.eu", "metadata.namespace", "cannot contain '.'"),
    ],
)
def test_invalid_spec_names_field_value_and_reason(path: str, value: Any, field: str, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_pipeline(with_spec(path, value))

    assert caught.value.field == field
    assert caught.value.value == value or field.endswith("]") or field.endswith(".op") or field.endswith(".value")
    message = str(caught.value)
    assert message.startswith(f"{field}: invalid value ")
    assert reason in message


@pytest.mark.parametrize("name", ["payments-eu-1", "p", "p1", "a" * 253])
def test_dns_1035_pipeline_name_is_accepted(name: str) -> None:
    pipeline = parse_pipeline(with_spec("metadata.name", name))

    assert pipeline.name == name
    assert pipeline.key == f"default/{name}"


def test_same_prefix_for_both_streams_is_rejected() -> None:
    with pytest.raises(SpecError, match=r"spec\.output\.streamNamePrefix.*must differ"):
        parse_pipeline(with_spec("spec.output.streamNamePrefix", "ingest-"))


def test_long_names_are_cut_deterministic_and_unique() -> None:
    namespace = "n" * 63
    first = with_spec("metadata", {"name": "a" * 200, "namespace": namespace})
    second = with_spec("metadata", {"name": "a" * 199 + "b", "namespace": namespace})

    one, again, other = parse_pipeline(first), parse_pipeline(first), parse_pipeline(second)

    assert one == again
    for pipeline in (one, other):
        assert len(pipeline.input.name) <= KINESIS_NAME_MAX
        assert len(pipeline.checkpoint_table) <= DYNAMODB_NAME_MAX
        assert len(pipeline.processor_role_name) <= IAM_ROLE_NAME_MAX
        assert len(pipeline.tester_role_name) <= IAM_ROLE_NAME_MAX
        assert pipeline.input.name.startswith("ingest-")
        assert pipeline.processor_role_name.endswith("-processor")
        assert pipeline.tester_role_name.endswith("-tester")
        assert re.fullmatch(r"[a-zA-Z0-9_.-]+", pipeline.input.name)
    assert one.input.name != other.input.name
    assert one.processor_role_name != other.processor_role_name
    assert one.tester_role_name != other.tester_role_name


def test_processor_settings_round_trip_through_their_file_form() -> None:
    pipeline = parse_pipeline(example_document())
    config = processor_config(pipeline, worker_id="w1")

    again = from_document(config.as_document(), worker_id="w1")

    assert again.as_document() == config.as_document()
    assert again.input_stream == "ingest-default-payments"
    assert again.output_stream == "anomaly-default-payments"
    assert again.checkpoint_table == "anomaly-checkpoints-default-payments"
