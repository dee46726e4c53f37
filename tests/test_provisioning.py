"""Provisioning against in-process moto: idempotent apply, ownership, deletion policies."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml
from anomaly_pipeline import policies
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.provisioning import (
    KINESIS_MANAGED_KEY,
    OwnershipError,
    ShardCountChangeError,
    deprovision,
    owner_tags,
    provision,
    reconcile_shard_count,
)
from anomaly_pipeline.spec import OWNER_TAG, Pipeline, parse_pipeline
from moto import mock_aws

BOUNDARY = "arn:aws:iam::123456789012:policy/anomaly-boundary"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pipeline.yaml"


@pytest.fixture
def aws() -> Iterator[Aws]:
    with mock_aws():
        yield Aws("eu-west-1")


def policy_document(value: str | dict[str, Any]) -> dict[str, Any]:
    """Return a policy document as a dict, whether IAM returned it URL-encoded or decoded."""
    return dict(json.loads(unquote(value))) if isinstance(value, str) else dict(value)


def example_as(namespace: str, name: str, deletion_policy: str) -> Pipeline:
    """Parse the example pipeline under another namespace and name, as a second AnomalyPipeline would arrive."""
    document = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    document["metadata"] = {"namespace": namespace, "name": name}
    document["spec"]["deletionPolicy"] = deletion_policy
    return parse_pipeline(document)


def stream_tags(aws: Aws, name: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in aws.client("kinesis").list_tags_for_stream(StreamName=name)["Tags"]}


def role_tags(aws: Aws, name: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in aws.client("iam").list_role_tags(RoleName=name)["Tags"]}


def table_tags(aws: Aws, name: str) -> dict[str, str]:
    dynamodb = aws.client("dynamodb")
    arn = dynamodb.describe_table(TableName=name)["Table"]["TableArn"]
    return {t["Key"]: t["Value"] for t in dynamodb.list_tags_of_resource(ResourceArn=arn)["Tags"]}


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


# Ownership at deletion


def test_delete_skips_role_of_another_pipeline(aws: Aws) -> None:
    owner = example_as("team-a", "fraud", "Retain")
    intruder = example_as("team", "a-fraud", "Retain")
    assert intruder.processor_role_name == owner.processor_role_name, "team-a/fraud and team/a-fraud share names"
    provision(aws, owner)
    with pytest.raises(OwnershipError, match="belongs to pipeline team-a/fraud"):
        provision(aws, intruder)

    changes = deprovision(aws, intruder)

    expected = [
        "kept role anomaly-team-a-fraud-processor: it belongs to pipeline team-a/fraud",
        "kept role anomaly-team-a-fraud-tester: it belongs to pipeline team-a/fraud",
    ]
    assert changes == expected
    for role in (owner.processor_role_name, owner.tester_role_name):
        assert role_tags(aws, role)[OWNER_TAG] == "team-a/fraud"
        assert aws.client("iam").list_role_policies(RoleName=role)["PolicyNames"], "the role keeps its policy"


def test_delete_skips_streams_of_another_pipeline(aws: Aws) -> None:
    owner = example_as("team-a", "fraud", "Delete")
    intruder = example_as("team", "a-fraud", "Delete")
    assert intruder.input.name == owner.input.name, "team-a/fraud and team/a-fraud share names"
    provision(aws, owner)
    with pytest.raises(OwnershipError):
        provision(aws, intruder)

    changes = deprovision(aws, intruder)

    assert changes[2:] == [
        "kept stream ingest-team-a-fraud: it belongs to pipeline team-a/fraud",
        "kept stream anomaly-team-a-fraud: it belongs to pipeline team-a/fraud",
        "kept checkpoint table anomaly-checkpoints-team-a-fraud: it belongs to pipeline team-a/fraud",
    ]
    assert stream_tags(aws, "ingest-team-a-fraud")[OWNER_TAG] == "team-a/fraud"
    assert stream_tags(aws, "anomaly-team-a-fraud")[OWNER_TAG] == "team-a/fraud"
    assert table_tags(aws, "anomaly-checkpoints-team-a-fraud")[OWNER_TAG] == "team-a/fraud"

    assert "deleted stream ingest-team-a-fraud" in deprovision(aws, owner), "the owner still deletes its own"
    assert aws.client("kinesis").list_streams()["StreamNames"] == []


def test_delete_keeps_untagged_stream(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = dataclasses.replace(example_pipeline, deletion_policy="Delete")
    provision(aws, pipeline)
    kinesis = aws.client("kinesis")
    kinesis.remove_tags_from_stream(StreamName="ingest-default-payments", TagKeys=[OWNER_TAG])

    changes = deprovision(aws, pipeline)

    kept = (
        "kept stream ingest-default-payments: it has no anomaly.dev/pipeline tag, so this pipeline may not have "
        "made it; delete it by hand if nothing uses it"
    )
    assert kept in changes
    assert "deleted stream anomaly-default-payments" in changes
    assert kinesis.list_streams()["StreamNames"] == ["ingest-default-payments"]


def test_delete_keeps_untagged_table(aws: Aws, example_pipeline: Pipeline) -> None:
    pipeline = dataclasses.replace(example_pipeline, deletion_policy="Delete")
    provision(aws, pipeline)
    dynamodb = aws.client("dynamodb")
    arn = dynamodb.describe_table(TableName=pipeline.checkpoint_table)["Table"]["TableArn"]
    dynamodb.untag_resource(ResourceArn=arn, TagKeys=[OWNER_TAG])

    changes = deprovision(aws, pipeline)

    assert changes[-1].startswith("kept checkpoint table anomaly-checkpoints-default-payments: it has no ")
    assert dynamodb.list_tables()["TableNames"] == ["anomaly-checkpoints-default-payments"]
    assert aws.client("kinesis").list_streams()["StreamNames"] == []


def test_delete_keeps_untagged_role(aws: Aws, example_pipeline: Pipeline) -> None:
    provision(aws, example_pipeline)
    iam = aws.client("iam")
    iam.untag_role(RoleName=example_pipeline.tester_role_name, TagKeys=[OWNER_TAG])

    changes = deprovision(aws, example_pipeline)

    assert changes[0] == "deleted role anomaly-default-payments-processor"
    assert changes[1].startswith("kept role anomaly-default-payments-tester: it has no anomaly.dev/pipeline tag")
    roles = [r["RoleName"] for r in iam.list_roles(PathPrefix="/anomaly-pipeline/")["Roles"]]
    assert roles == ["anomaly-default-payments-tester"]


# Ownership at creation


def test_adopted_role_gets_owner_tag(aws: Aws, example_pipeline: Pipeline) -> None:
    iam = aws.client("iam")
    iam.create_role(
        RoleName=example_pipeline.tester_role_name,
        Path=example_pipeline.role_path,
        AssumeRolePolicyDocument=json.dumps(policies.account_trust_policy(("arn:aws:iam::123456789012:root",))),
    )

    first = provision(aws, example_pipeline)
    second = provision(aws, example_pipeline)

    assert "adopted role anomaly-default-payments-tester" in first.changes
    assert role_tags(aws, example_pipeline.tester_role_name) == owner_tags(example_pipeline)
    assert second.changes == []
    # Pipeline stores its derived names, so this one differs from the adopter only in its owner tag.
    other = dataclasses.replace(example_pipeline, name="other")
    assert (
        deprovision(aws, other)[1]
        == "kept role anomaly-default-payments-tester: it belongs to pipeline default/payments"
    )


def test_created_stream_is_tagged_at_creation(aws: Aws, example_pipeline: Pipeline) -> None:
    requests: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        requests.append(dict(params))

    # moto 5.2 drops the Tags of CreateStream, so the request itself is what shows the tags are sent.
    aws.session.events.register("provide-client-params.kinesis.CreateStream", record)

    result = provision(aws, example_pipeline)

    assert [r["StreamName"] for r in requests] == ["ingest-default-payments", "anomaly-default-payments"]
    for request in requests:
        assert request["Tags"] == owner_tags(example_pipeline)
    assert stream_tags(aws, "ingest-default-payments")[OWNER_TAG] == "default/payments"
    assert not [c for c in result.changes if c.startswith("adopted stream")], "a created stream is not adopted"
