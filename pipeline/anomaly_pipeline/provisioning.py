"""Create-or-adopt and removal of a pipeline's AWS resources.

The CLI's ``apply`` and ``delete`` and the operator's reconcile steps call these
functions. Each one is idempotent: it reads the current state, changes only what
differs and returns what it changed, so a second run returns no changes. Resources
carry the owner tag ``anomaly.dev/pipeline = <namespace>/<name>``; a resource owned by
another pipeline is never adopted, changed or deleted. Creation raises OwnershipError for
such a resource, but deletion keeps it, and keeps an untagged one too, so that a pipeline
whose derived names collide with another's can still be deleted.

It does not decide when to run (the operator does) and does not log above debug: the
caller reports the returned changes, kept resources included.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from botocore.exceptions import ClientError

from anomaly_pipeline import policies
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.spec import MANAGED_BY, MANAGED_BY_TAG, OWNER_TAG, Pipeline, StreamSpec

log = logging.getLogger(__name__)

KINESIS_MANAGED_KEY: Final = "alias/aws/kinesis"
TABLE_KEY: Final = "leaseKey"
PROCESSOR_POLICY_NAME: Final = "anomaly-processor"
TESTER_POLICY_NAME: Final = "anomaly-tester"
WAIT_TIMEOUT_SECONDS: Final = 300.0


class ProvisioningError(RuntimeError):
    """A resource that cannot be created or adopted. The message names the fix."""


class OwnershipError(ProvisioningError):
    """A resource with the pipeline's name that another pipeline owns."""


class ShardCountChangeError(ProvisioningError):
    """A shard count change that UpdateShardCount cannot make in one call."""


@dataclass(frozen=True)
class NamedArn:
    name: str
    arn: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "arn": self.arn}


@dataclass
class Provisioned:
    """Resources that ``provision`` made or found, and the changes it made."""

    input: NamedArn
    output: NamedArn
    checkpoint_table: NamedArn
    processor_role_arn: str
    tester_role_arn: str
    input_shard_count: int
    changes: list[str] = field(default_factory=list)
    dead_letter: NamedArn | None = None

    def as_dict(self) -> dict[str, Any]:
        result = {
            "input": self.input.as_dict(),
            "output": self.output.as_dict(),
            "checkpointTable": self.checkpoint_table.as_dict(),
            "processorRoleArn": self.processor_role_arn,
            "testerRoleArn": self.tester_role_arn,
        }
        if self.dead_letter is not None:
            result["deadLetter"] = self.dead_letter.as_dict()
        return result


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _wait(describe: Callable[[], str | None], wanted: str, what: str) -> None:
    """Poll ``describe`` until it returns ``wanted``; a None result means not there yet."""
    deadline = time.monotonic() + WAIT_TIMEOUT_SECONDS
    delay = 0.1
    status = None
    while time.monotonic() < deadline:
        status = describe()
        if status == wanted:
            return
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    raise ProvisioningError(f"{what} is still {status} after {WAIT_TIMEOUT_SECONDS:.0f} s; check it in the AWS console")


def owner_tags(pipeline: Pipeline) -> dict[str, str]:
    return {OWNER_TAG: pipeline.key, MANAGED_BY_TAG: MANAGED_BY}


def _owner_tag_list(pipeline: Pipeline) -> list[dict[str, str]]:
    """Return the owner tags in the ``[{"Key": ..., "Value": ...}]`` form of DynamoDB and IAM."""
    return [{"Key": k, "Value": v} for k, v in owner_tags(pipeline).items()]


def _check_owner(kind: str, name: str, tags: dict[str, str], pipeline: Pipeline) -> bool:
    """Return True when the resource is untagged (adoptable), False when it is ours."""
    owner = tags.get(OWNER_TAG)
    if owner is None:
        return True
    if owner != pipeline.key:
        raise OwnershipError(
            f"{kind} {name} belongs to pipeline {owner}, not {pipeline.key}; "
            f"choose another name prefix or delete the other pipeline"
        )
    return False


def _keep_unowned(kind: str, name: str, tags: dict[str, str], pipeline: Pipeline) -> str | None:
    """Return a ``kept ...`` change line unless the pipeline owns the resource.

    Returns None for a resource the pipeline owns. The delete functions never raise
    OwnershipError, because a pipeline that creation rejected for another pipeline's names
    must still lose its finalizer when the user deletes it.
    """
    owner = tags.get(OWNER_TAG)
    if owner == pipeline.key:
        return None
    if owner is None:
        kept_change = (
            f"kept {kind} {name}: it has no {OWNER_TAG} tag, so this pipeline may not have made it; "
            f"delete it by hand if nothing uses it"
        )
    else:
        kept_change = f"kept {kind} {name}: it belongs to pipeline {owner}"
    return kept_change


# Streams


def _stream_summary(kinesis: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"])
    except ClientError as error:
        if _error_code(error) == "ResourceNotFoundException":
            return None
        raise


def _wait_stream_active(kinesis: Any, name: str) -> dict[str, Any]:
    def status() -> str | None:
        summary = _stream_summary(kinesis, name)
        return summary["StreamStatus"] if summary else None

    _wait(status, "ACTIVE", f"stream {name}")
    summary = _stream_summary(kinesis, name)
    assert summary is not None
    return summary


def count_open_shards(kinesis: Any, name: str) -> int:
    """Count shards without an ending sequence number, paging through ListShards."""
    count = 0
    kwargs: dict[str, Any] = {"StreamName": name}
    while True:
        page = kinesis.list_shards(**kwargs)
        count += sum(1 for s in page["Shards"] if "EndingSequenceNumber" not in s["SequenceNumberRange"])
        token = page.get("NextToken")
        if not token:
            return count
        kwargs = {"NextToken": token}


def ensure_stream(
    aws: Aws, stream: StreamSpec, pipeline: Pipeline, retention_hours: int | None = None
) -> tuple[NamedArn, list[str]]:
    """Create the stream, or adopt and align an existing one; return its ARN and the changes."""
    kinesis = aws.client("kinesis")
    changes: list[str] = []
    summary = _stream_summary(kinesis, stream.name)
    if summary is None:
        try:
            # CreateStream takes the tags in the same request (botocore 1.44's CreateStream docs; the call
            # then also needs kinesis:AddTagsToStream), so no separate step leaves the stream untagged.
            # moto 5.2.5 and kinesalite 3.3.3 drop them, and the tag check below then tags it in a second call.
            kinesis.create_stream(StreamName=stream.name, ShardCount=stream.shard_count, Tags=owner_tags(pipeline))
            changes.append(f"created stream {stream.name} with {stream.shard_count} shards")
        except ClientError as error:
            if _error_code(error) != "ResourceInUseException":
                raise
    summary = _wait_stream_active(kinesis, stream.name)
    arn = summary["StreamARN"]

    tags = {t["Key"]: t["Value"] for t in kinesis.list_tags_for_stream(StreamName=stream.name).get("Tags", [])}
    if _check_owner("stream", stream.name, tags, pipeline):
        kinesis.add_tags_to_stream(StreamName=stream.name, Tags=owner_tags(pipeline))
        if not changes:
            changes.append(f"adopted stream {stream.name}")

    if retention_hours is not None and summary.get("RetentionPeriodHours") != retention_hours:
        current = int(summary.get("RetentionPeriodHours", 24))
        if retention_hours > current:
            kinesis.increase_stream_retention_period(StreamName=stream.name, RetentionPeriodHours=retention_hours)
        else:
            kinesis.decrease_stream_retention_period(StreamName=stream.name, RetentionPeriodHours=retention_hours)
        changes.append(f"set retention of stream {stream.name} to {retention_hours} hours")
        _wait_stream_active(kinesis, stream.name)

    changes.extend(_ensure_encryption(kinesis, stream.name, summary))
    return NamedArn(stream.name, arn), changes


def _ensure_encryption(kinesis: Any, name: str, summary: dict[str, Any]) -> list[str]:
    if summary.get("EncryptionType", "NONE") == "KMS":
        return []
    try:
        kinesis.start_stream_encryption(StreamName=name, EncryptionType="KMS", KeyId=KINESIS_MANAGED_KEY)
    except ClientError as error:
        # Endpoints without server-side encryption (kinesalite) reject the call; the stream works without it.
        if _error_code(error) in ("UnknownOperationException", "InvalidAction", "UnrecognizedClientException"):
            log.debug("endpoint does not support stream encryption; stream %s stays unencrypted", name)
            return []
        raise
    _wait_stream_active(kinesis, name)
    return [f"enabled encryption of stream {name} with {KINESIS_MANAGED_KEY}"]


def reconcile_shard_count(aws: Aws, name: str, wanted: int) -> list[str]:
    """Call UpdateShardCount when the open shard count differs from ``wanted``.

    One call can at most double or halve the open shards; anything else raises
    ShardCountChangeError with the reachable range, and nothing is changed.
    """
    kinesis = aws.client("kinesis")
    current = count_open_shards(kinesis, name)
    if current == wanted:
        return []
    low, high = (current + 1) // 2, current * 2
    if not low <= wanted <= high:
        raise ShardCountChangeError(
            f"stream {name} has {current} open shards; UpdateShardCount can go to {low} to {high} in one step, "
            f"not {wanted}; change shardCount in steps"
        )
    kinesis.update_shard_count(StreamName=name, TargetShardCount=wanted, ScalingType="UNIFORM_SCALING")
    _wait_stream_active(kinesis, name)
    return [f"changed stream {name} from {current} to {wanted} open shards"]


# Checkpoint table


def _table_description(dynamodb: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(dynamodb.describe_table(TableName=name)["Table"])
    except ClientError as error:
        if _error_code(error) == "ResourceNotFoundException":
            return None
        raise


def ensure_table(aws: Aws, pipeline: Pipeline) -> tuple[NamedArn, list[str]]:
    """Create or adopt the checkpoint and lease table: one item per shard, keyed by shard id."""
    dynamodb = aws.client("dynamodb")
    name = pipeline.checkpoint_table
    changes: list[str] = []
    table = _table_description(dynamodb, name)
    if table is None:
        try:
            dynamodb.create_table(
                TableName=name,
                AttributeDefinitions=[{"AttributeName": TABLE_KEY, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": TABLE_KEY, "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
                SSESpecification={"Enabled": True},
                Tags=_owner_tag_list(pipeline),
            )
            changes.append(f"created checkpoint table {name}")
        except ClientError as error:
            if _error_code(error) != "ResourceInUseException":
                raise

    def status() -> str | None:
        description = _table_description(dynamodb, name)
        return description["TableStatus"] if description else None

    _wait(status, "ACTIVE", f"table {name}")
    table = _table_description(dynamodb, name)
    assert table is not None
    key = [k["AttributeName"] for k in table["KeySchema"] if k["KeyType"] == "HASH"]
    if key != [TABLE_KEY]:
        raise ProvisioningError(
            f"table {name} exists with hash key {key}, not {TABLE_KEY}; delete it or change tableNamePrefix"
        )
    arn = table["TableArn"]
    tags = {t["Key"]: t["Value"] for t in dynamodb.list_tags_of_resource(ResourceArn=arn).get("Tags", [])}
    if _check_owner("table", name, tags, pipeline):
        dynamodb.tag_resource(ResourceArn=arn, Tags=_owner_tag_list(pipeline))
        changes.append(f"adopted checkpoint table {name}")
    return NamedArn(name, arn), changes


# Roles


def _canonical(document: Any) -> str:
    if isinstance(document, str):
        from urllib.parse import unquote

        document = json.loads(unquote(document))
    return json.dumps(document, sort_keys=True)


def ensure_role(
    aws: Aws,
    pipeline: Pipeline,
    role_name: str,
    trust_policy: dict[str, Any],
    policy_name: str,
    policy: dict[str, Any],
    max_session_seconds: int = 3600,
) -> tuple[str, list[str]]:
    """Create or align a role so that it has exactly one inline policy and no other.

    The role is created under the pipeline's role path and with its permissions
    boundary. Returns the role ARN and the changes.
    """
    iam = aws.client("iam")
    changes: list[str] = []
    try:
        role = iam.get_role(RoleName=role_name)["Role"]
    except ClientError as error:
        if _error_code(error) != "NoSuchEntity":
            raise
        kwargs: dict[str, Any] = {
            "RoleName": role_name,
            "Path": pipeline.role_path,
            "AssumeRolePolicyDocument": json.dumps(trust_policy),
            "MaxSessionDuration": max_session_seconds,
            "Description": f"anomaly pipeline {pipeline.key}",
            "Tags": _owner_tag_list(pipeline),
        }
        if pipeline.permissions_boundary_arn:
            kwargs["PermissionsBoundary"] = pipeline.permissions_boundary_arn
        role = iam.create_role(**kwargs)["Role"]
        changes.append(f"created role {role_name}")
    else:
        tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role_name).get("Tags", [])}
        adoptable = _check_owner("role", role_name, tags, pipeline)
        if role.get("Path") != pipeline.role_path:
            raise ProvisioningError(
                f"role {role_name} exists under path {role.get('Path')}, not {pipeline.role_path}; "
                f"delete it or change spec.iam.rolePath"
            )
        if adoptable:
            # Tagged before its policies and trust change, so no other pipeline can adopt it as well.
            iam.tag_role(RoleName=role_name, Tags=_owner_tag_list(pipeline))
            changes.append(f"adopted role {role_name}")
        if _canonical(role["AssumeRolePolicyDocument"]) != _canonical(trust_policy):
            iam.update_assume_role_policy(RoleName=role_name, PolicyDocument=json.dumps(trust_policy))
            changes.append(f"updated trust policy of role {role_name}")
        if role.get("MaxSessionDuration", 3600) != max_session_seconds:
            iam.update_role(RoleName=role_name, MaxSessionDuration=max_session_seconds)
            changes.append(f"set maximum session of role {role_name} to {max_session_seconds} s")
        boundary = role.get("PermissionsBoundary", {}).get("PermissionsBoundaryArn")
        if pipeline.permissions_boundary_arn and boundary != pipeline.permissions_boundary_arn:
            iam.put_role_permissions_boundary(RoleName=role_name, PermissionsBoundary=pipeline.permissions_boundary_arn)
            changes.append(f"set permissions boundary of role {role_name}")

    changes.extend(_ensure_only_policy(iam, role_name, policy_name, policy))
    return str(role["Arn"]), changes


def _ensure_only_policy(iam: Any, role_name: str, policy_name: str, policy: dict[str, Any]) -> list[str]:
    changes: list[str] = []
    for attached in iam.list_attached_role_policies(RoleName=role_name).get("AttachedPolicies", []):
        iam.detach_role_policy(RoleName=role_name, PolicyArn=attached["PolicyArn"])
        changes.append(f"detached {attached['PolicyArn']} from role {role_name}")
    for name in iam.list_role_policies(RoleName=role_name).get("PolicyNames", []):
        if name != policy_name:
            iam.delete_role_policy(RoleName=role_name, PolicyName=name)
            changes.append(f"removed inline policy {name} from role {role_name}")
    try:
        current = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
    except ClientError as error:
        if _error_code(error) != "NoSuchEntity":
            raise
        current = None
    if current is None or _canonical(current) != _canonical(policy):
        iam.put_role_policy(RoleName=role_name, PolicyName=policy_name, PolicyDocument=json.dumps(policy))
        changes.append(f"wrote policy {policy_name} of role {role_name}")
    return changes


def delete_role(aws: Aws, pipeline: Pipeline, role_name: str) -> list[str]:
    """Delete a role this pipeline owns, with its policies; a role already gone counts as deleted.

    A role without the pipeline's owner tag is kept and reported in the returned changes.
    """
    iam = aws.client("iam")
    try:
        tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=role_name).get("Tags", [])}
        kept_change = _keep_unowned("role", role_name, tags, pipeline)
        if kept_change is not None:
            return [kept_change]
        for attached in iam.list_attached_role_policies(RoleName=role_name).get("AttachedPolicies", []):
            iam.detach_role_policy(RoleName=role_name, PolicyArn=attached["PolicyArn"])
        for name in iam.list_role_policies(RoleName=role_name).get("PolicyNames", []):
            iam.delete_role_policy(RoleName=role_name, PolicyName=name)
        iam.delete_role(RoleName=role_name)
    except ClientError as error:
        if _error_code(error) == "NoSuchEntity":
            return []
        raise
    return [f"deleted role {role_name}"]


def caller_account(aws: Aws) -> str:
    return str(aws.client("sts").get_caller_identity()["Account"])


# Whole pipeline


def provision(aws: Aws, pipeline: Pipeline, processor_trust_policy: dict[str, Any] | None = None) -> Provisioned:
    """Create or adopt every AWS resource of the pipeline; idempotent.

    The processor role trusts ``processor_trust_policy`` (the operator passes an IRSA
    trust policy) or, by default, the caller's own account.
    """
    changes: list[str] = []
    source, done = ensure_stream(aws, pipeline.input, pipeline, pipeline.input.retention_hours)
    changes += done
    changes += reconcile_shard_count(aws, pipeline.input.name, pipeline.input.shard_count)
    sink, done = ensure_stream(aws, pipeline.output, pipeline)
    changes += done
    dead_letter = None
    if pipeline.dead_letter is not None:
        dead_letter, done = ensure_stream(aws, pipeline.dead_letter, pipeline)
        changes += done
    table, done = ensure_table(aws, pipeline)
    changes += done
    processor_role_arn, tester_role_arn, done = ensure_roles(
        aws, pipeline, source, sink, table, processor_trust_policy, dead_letter
    )
    changes += done
    return Provisioned(
        input=source,
        output=sink,
        checkpoint_table=table,
        processor_role_arn=processor_role_arn,
        tester_role_arn=tester_role_arn,
        input_shard_count=pipeline.input.shard_count,
        changes=changes,
        dead_letter=dead_letter,
    )


def ensure_roles(
    aws: Aws,
    pipeline: Pipeline,
    source: NamedArn,
    sink: NamedArn,
    table: NamedArn,
    processor_trust_policy: dict[str, Any] | None = None,
    dead_letter: NamedArn | None = None,
) -> tuple[str, str, list[str]]:
    """Create or align the processor role and the tester role; return both ARNs and the changes.

    Only the processor role may write the dead-letter stream; the tester role gets no access to it.
    """
    if processor_trust_policy is None:
        processor_trust_policy = policies.account_trust_policy((caller_account(aws),))
    processor_role_arn, changes = ensure_role(
        aws,
        pipeline,
        pipeline.processor_role_name,
        processor_trust_policy,
        PROCESSOR_POLICY_NAME,
        policies.processor_policy(source.arn, sink.arn, table.arn, dead_letter.arn if dead_letter else None),
    )
    tester_role_arn, done = ensure_tester_role(aws, pipeline, source, sink)
    return processor_role_arn, tester_role_arn, changes + done


def ensure_tester_role(aws: Aws, pipeline: Pipeline, source: NamedArn, sink: NamedArn) -> tuple[str, list[str]]:
    return ensure_role(
        aws,
        pipeline,
        pipeline.tester_role_name,
        policies.account_trust_policy(pipeline.tester_principals),
        TESTER_POLICY_NAME,
        policies.tester_policy(source.arn, sink.arn),
        max_session_seconds=max(3600, pipeline.tester_session_seconds),
    )


def delete_stream(aws: Aws, pipeline: Pipeline, name: str) -> list[str]:
    """Delete a stream this pipeline owns; a stream already gone counts as deleted.

    A stream without the pipeline's owner tag is kept and reported in the returned changes.
    """
    kinesis = aws.client("kinesis")
    try:
        tags = {t["Key"]: t["Value"] for t in kinesis.list_tags_for_stream(StreamName=name).get("Tags", [])}
        kept_change = _keep_unowned("stream", name, tags, pipeline)
        if kept_change is not None:
            return [kept_change]
        kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
    except ClientError as error:
        if _error_code(error) == "ResourceNotFoundException":
            return []
        raise
    return [f"deleted stream {name}"]


def delete_table(aws: Aws, pipeline: Pipeline) -> list[str]:
    """Delete the checkpoint table this pipeline owns; a table already gone counts as deleted.

    A table without the pipeline's owner tag is kept and reported in the returned changes.
    """
    dynamodb = aws.client("dynamodb")
    name = pipeline.checkpoint_table
    table = _table_description(dynamodb, name)
    if table is None:
        return []
    tags = {t["Key"]: t["Value"] for t in dynamodb.list_tags_of_resource(ResourceArn=table["TableArn"]).get("Tags", [])}
    kept_change = _keep_unowned("checkpoint table", name, tags, pipeline)
    if kept_change is not None:
        return [kept_change]
    try:
        dynamodb.delete_table(TableName=name)
    except ClientError as error:
        if _error_code(error) == "ResourceNotFoundException":
            return []
        raise
    return [f"deleted checkpoint table {name}"]


def deprovision(aws: Aws, pipeline: Pipeline) -> list[str]:
    """Delete both roles, and the streams and table only under ``deletionPolicy: Delete``."""
    changes = delete_role(aws, pipeline, pipeline.processor_role_name)
    changes += delete_role(aws, pipeline, pipeline.tester_role_name)
    if pipeline.deletion_policy == "Delete":
        changes += delete_stream(aws, pipeline, pipeline.input.name)
        changes += delete_stream(aws, pipeline, pipeline.output.name)
        if pipeline.dead_letter is not None:
            changes += delete_stream(aws, pipeline, pipeline.dead_letter.name)
        changes += delete_table(aws, pipeline)
    return changes
