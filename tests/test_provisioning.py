"""Provisioning against in-process moto: idempotent apply, ownership, deletion policies."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from anomaly_pipeline import policies
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.provisioning import (
    KINESIS_MANAGED_KEY,
    OwnershipError,
    ShardCountChangeError,
    deprovision,
    provision,
    reconcile_shard_count,
)
from anomaly_pipeline.spec import OWNER_TAG, Pipeline
from moto import mock_aws

BOUNDARY = "arn:aws:iam::123456789012:policy/anomaly-boundary"


@pytest.fixture
def aws() -> Iterator[Aws]:
    with mock_aws():
        yield Aws("eu-west-1")


def policy_document(value: str | dict[str, Any]) -> dict[str, Any]:
    """Return a policy document as a dict, whether IAM returned it URL-encoded or decoded."""
    return dict(json.loads(unquote(value))) if isinstance(value, str) else dict(value)


def test_apply_creates_everything_then_changes_nothing(aws: Aws, example_pipeline: Pipeline) -> None:
    first = provision(aws, example_pipeline)
    second = provision(aws, example_pipeline)

    assert first.changes, "the first apply creates resources"
    assert second.changes == []
    assert second.as_dict() == first.as_dict()
    assert first.as_dict()["input"] == {
        "name": "ingest-default-payments",
        "arn": "arn:aws:kinesis:eu-west-1:123456789012:stream/ingest-default-payments",
    }


def test_streams_are_active_tagged_encrypted_and_sized(aws: Aws, example_pipeline: Pipeline) -> None:
    provision(aws, example_pipeline)
    kinesis = aws.client("kinesis")

    for name, shards in (("ingest-default-payments", 2), ("anomaly-default-payments", 1)):
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        tags = {t["Key"]: t["Value"] for t in kinesis.list_tags_for_stream(StreamName=name)["Tags"]}
        assert summary["StreamStatus"] == "ACTIVE"
        assert summary["OpenShardCount"] == shards
        assert summary["EncryptionType"] == "KMS"
        assert summary["KeyId"] == KINESIS_MANAGED_KEY
        assert tags[OWNER_TAG] == "default/payments"


def test_checkpoint_table_is_keyed_by_lease_key(aws: Aws, example_pipeline: Pipeline) -> None:
    provision(aws, example_pipeline)

    table = aws.client("dynamodb").describe_table(TableName="anomaly-checkpoints-default-payments")["Table"]

    assert table["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_roles_have_path_boundary_and_exactly_one_policy(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = dataclasses.replace(example_pipeline, permissions_boundary_arn=BOUNDARY)
    result = provision(aws, pipeline)
    iam = aws.client("iam")

    tester = iam.get_role(RoleName=pipeline.tester_role_name)["Role"]
    assert tester["Arn"] == result.tester_role_arn
    assert tester["Path"] == "/anomaly-pipeline/"
    assert tester["PermissionsBoundary"]["PermissionsBoundaryArn"] == BOUNDARY
    assert policy_document(tester["AssumeRolePolicyDocument"]) == policies.account_trust_policy(
        ("arn:aws:iam::123456789012:root",)
    )
    assert iam.list_role_policies(RoleName=pipeline.tester_role_name)["PolicyNames"] == ["anomaly-tester"]
    assert iam.list_attached_role_policies(RoleName=pipeline.tester_role_name)["AttachedPolicies"] == []
    written = iam.get_role_policy(RoleName=pipeline.tester_role_name, PolicyName="anomaly-tester")["PolicyDocument"]
    assert policy_document(written) == policies.tester_policy(result.input.arn, result.output.arn)

    processor = iam.get_role(RoleName=pipeline.processor_role_name)["Role"]
    assert processor["Path"] == "/anomaly-pipeline/"
    assert processor["PermissionsBoundary"]["PermissionsBoundaryArn"] == BOUNDARY
    assert iam.list_role_policies(RoleName=pipeline.processor_role_name)["PolicyNames"] == ["anomaly-processor"]


def test_apply_removes_policies_added_by_hand(aws: Aws, example_pipeline: Pipeline) -> None:
    provision(aws, example_pipeline)
    iam = aws.client("iam")
    iam.put_role_policy(
        RoleName=example_pipeline.tester_role_name,
        PolicyName="extra",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )

    result = provision(aws, example_pipeline)

    assert "removed inline policy extra from role anomaly-default-payments-tester" in result.changes
    assert iam.list_role_policies(RoleName=example_pipeline.tester_role_name)["PolicyNames"] == ["anomaly-tester"]


def test_stream_owned_by_other_pipeline_is_not_adopted(aws: Aws, example_pipeline: Pipeline) -> None:
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName="ingest-default-payments", ShardCount=1)
    kinesis.add_tags_to_stream(StreamName="ingest-default-payments", Tags={OWNER_TAG: "default/other"})

    with pytest.raises(OwnershipError, match="belongs to pipeline default/other"):
        provision(aws, example_pipeline)


def test_untagged_stream_is_adopted(aws: Aws, example_pipeline: Pipeline) -> None:
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName="ingest-default-payments", ShardCount=2)

    result = provision(aws, example_pipeline)

    assert "adopted stream ingest-default-payments" in result.changes
    tags = {t["Key"]: t["Value"] for t in kinesis.list_tags_for_stream(StreamName="ingest-default-payments")["Tags"]}
    assert tags[OWNER_TAG] == "default/payments"


def test_delete_with_retain_keeps_streams_and_table(aws: Aws, example_pipeline: Pipeline) -> None:
    provision(aws, example_pipeline)

    changes = deprovision(aws, example_pipeline)
    again = deprovision(aws, example_pipeline)

    assert changes == [
        "deleted role anomaly-default-payments-processor",
        "deleted role anomaly-default-payments-tester",
    ]
    assert again == []
    streams = aws.client("kinesis").list_streams()["StreamNames"]
    assert sorted(streams) == ["anomaly-default-payments", "ingest-default-payments"]
    assert aws.client("dynamodb").list_tables()["TableNames"] == ["anomaly-checkpoints-default-payments"]


def test_delete_with_delete_policy_removes_everything(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = dataclasses.replace(example_pipeline, deletion_policy="Delete")
    provision(aws, pipeline)

    changes = deprovision(aws, pipeline)

    assert "deleted stream ingest-default-payments" in changes
    assert "deleted checkpoint table anomaly-checkpoints-default-payments" in changes
    assert aws.client("kinesis").list_streams()["StreamNames"] == []
    assert aws.client("dynamodb").list_tables()["TableNames"] == []
    assert aws.client("iam").list_roles(PathPrefix="/anomaly-pipeline/")["Roles"] == []


def test_shard_count_change_calls_update_shard_count(aws: Aws, example_pipeline: Pipeline) -> None:
    provision(aws, example_pipeline)

    changes = reconcile_shard_count(aws, "ingest-default-payments", 4)

    assert changes == ["changed stream ingest-default-payments from 2 to 4 open shards"]
    summary = aws.client("kinesis").describe_stream_summary(StreamName="ingest-default-payments")
    assert summary["StreamDescriptionSummary"]["OpenShardCount"] == 4


def test_shard_count_change_beyond_double_is_rejected(aws: Aws, example_pipeline: Pipeline) -> None:
    provision(aws, example_pipeline)

    with pytest.raises(ShardCountChangeError, match="1 to 4 in one step, not 5"):
        reconcile_shard_count(aws, "ingest-default-payments", 5)
