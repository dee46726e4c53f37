"""IAM documents: the tester may do exactly the writer's and the reader's actions, nothing else."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import botocore.session
from anomaly_pipeline import policies

PROCESSOR_PACKAGE = Path(__file__).resolve().parents[1] / "processor" / "anomaly_processor"

INPUT = "arn:aws:kinesis:eu-west-1:123456789012:stream/ingest-default-payments"
OUTPUT = "arn:aws:kinesis:eu-west-1:123456789012:stream/anomaly-default-payments"
TABLE = "arn:aws:dynamodb:eu-west-1:123456789012:table/anomaly-checkpoints-default-payments"


def action_table(document: dict[str, Any]) -> set[tuple[str, str, str]]:
    rows = set()
    for statement in document["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            for resource in resources:
                rows.add((statement["Effect"], action, resource))
    return rows


def test_tester_policy_is_exactly_writer_and_reader_actions() -> None:
    document = policies.tester_policy(INPUT, OUTPUT)

    assert action_table(document) == {
        ("Allow", "kinesis:PutRecord", INPUT),
        ("Allow", "kinesis:PutRecords", INPUT),
        ("Allow", "kinesis:DescribeStream", INPUT),
        ("Allow", "kinesis:DescribeStreamSummary", INPUT),
        ("Allow", "kinesis:ListShards", INPUT),
        ("Allow", "kinesis:GetRecords", OUTPUT),
        ("Allow", "kinesis:GetShardIterator", OUTPUT),
        ("Allow", "kinesis:DescribeStream", OUTPUT),
        ("Allow", "kinesis:DescribeStreamSummary", OUTPUT),
        ("Allow", "kinesis:ListShards", OUTPUT),
    }
    for statement in document["Statement"]:
        assert isinstance(statement["Resource"], str), "each statement names exactly one stream ARN"
        assert "Condition" not in statement
        assert "NotAction" not in statement


def test_processor_policy_reads_input_writes_anomalies_uses_table() -> None:
    rows = action_table(policies.processor_policy(INPUT, OUTPUT, TABLE))

    assert {resource for _, _, resource in rows} == {INPUT, OUTPUT, TABLE}
    assert all(effect == "Allow" for effect, _, _ in rows)
    assert ("Allow", "kinesis:GetRecords", INPUT) in rows
    assert ("Allow", "kinesis:PutRecords", OUTPUT) in rows
    assert ("Allow", "dynamodb:UpdateItem", TABLE) in rows
    assert not any(action.startswith("kinesis:Put") for _, action, resource in rows if resource == INPUT)
    assert not any(action.startswith("kinesis:Get") for _, action, resource in rows if resource == OUTPUT)
    assert not any("*" in action or "*" in resource for _, action, resource in rows)


def processor_calls() -> set[str]:
    """Return the IAM action of every Kinesis and DynamoDB client call in the processor's source."""
    session = botocore.session.get_session()
    actions: set[str] = set()
    for service in ("kinesis", "dynamodb"):
        client = session.create_client(
            service, region_name="eu-west-1", aws_access_key_id="unused", aws_secret_access_key="unused"
        )
        mapping = client.meta.method_to_api_mapping
        for source in sorted(PROCESSOR_PACKAGE.glob("*.py")):
            for method in re.findall(rf"\b_?{service}\.([a-z_]+)\(", source.read_text(encoding="utf-8")):
                if method in mapping:
                    actions.add(f"{service}:{mapping[method]}")
    return actions


def test_processor_policy_grants_exactly_processor_calls() -> None:
    rows = action_table(policies.processor_policy(INPUT, OUTPUT, TABLE, dead_letter_stream_arn=INPUT + "-dlq"))
    called = processor_calls()

    assert "kinesis:GetRecords" in called
    assert "dynamodb:UpdateItem" in called
    assert {action for _, action, _ in rows} == called


def test_tester_trust_names_each_principal() -> None:
    document = policies.account_trust_policy(("123456789012", "arn:aws:iam::210987654321:role/qa"))

    statement = document["Statement"][0]
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Principal"] == {"AWS": ["arn:aws:iam::123456789012:root", "arn:aws:iam::210987654321:role/qa"]}


def test_irsa_trust_pins_service_account_and_audience() -> None:
    provider = "arn:aws:iam::123456789012:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC"
    document = policies.irsa_trust_policy(
        provider, "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC", "payments", "anomaly-processor"
    )

    statement = document["Statement"][0]
    assert statement["Principal"] == {"Federated": provider}
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"] == {
        "StringEquals": {
            "oidc.eks.eu-west-1.amazonaws.com/id/ABC:sub": "system:serviceaccount:payments:anomaly-processor",
            "oidc.eks.eu-west-1.amazonaws.com/id/ABC:aud": "sts.amazonaws.com",
        }
    }
    assert "*" not in str(statement)
