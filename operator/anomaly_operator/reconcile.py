"""The reconcile steps of an AnomalyPipeline, free of kopf: streams, IAM, processor, deletion.

Each step is idempotent: it reads what exists, changes only what differs and returns its
condition, the status fields it owns and the changes it made, so a second run returns no
changes. A step that needs an earlier step's output (ARNs) reads it from ``status`` and
raises ``StepNotReadyError`` when it is not there yet. ``handlers`` runs the steps for kopf and
maps their exceptions through ``errors.classify``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from anomaly_pipeline import policies, provisioning
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.provisioning import NamedArn, ShardCountChangeError
from anomaly_pipeline.spec import Pipeline, SpecError, parse_pipeline

from anomaly_operator import processor
from anomaly_operator.conditions import IAM_READY, PROCESSOR_READY, STREAMS_READY, Condition
from anomaly_operator.errors import RenderError
from anomaly_operator.kube import ObjectApi
from anomaly_operator.settings import OperatorSettings

# kopf's annotation holding the last spec it handled successfully.
LAST_HANDLED_ANNOTATION: Final = "kopf.zalando.org/last-handled-configuration"


class StepNotReadyError(RuntimeError):
    """A step whose input (an earlier step's status) is not there yet; it is retried shortly."""


@dataclass
class StepOutcome:
    """A step's report: its condition, the status fields it owns and the changes it made."""

    condition: Condition
    status: dict[str, Any] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)


def parse(body: Mapping[str, Any], settings: OperatorSettings) -> Pipeline:
    """Validate an AnomalyPipeline and check it against the operator's settings."""
    document = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": body["metadata"].get("name"), "namespace": body["metadata"].get("namespace")},
        "spec": body.get("spec"),
    }
    return enforce_settings(parse_pipeline(document), settings)


def enforce_settings(pipeline: Pipeline, settings: OperatorSettings) -> Pipeline:
    """Reject names outside the allowed prefixes and role paths outside the operator's, and apply its boundary."""
    allowed = tuple(settings.allowed_prefixes)
    names = (
        ("spec.input.streamNamePrefix", pipeline.input.name),
        ("spec.output.streamNamePrefix", pipeline.output.name),
        *((("spec.deadLetter.streamNamePrefix", pipeline.dead_letter.name),) if pipeline.dead_letter else ()),
        ("spec.checkpoints.tableNamePrefix", pipeline.checkpoint_table),
        ("spec.iam.roleNamePrefix", pipeline.processor_role_name),
        ("spec.iam.roleNamePrefix", pipeline.tester_role_name),
    )
    for field_path, name in names:
        if not name.startswith(allowed):
            raise SpecError(
                field_path,
                name,
                f"this operator only manages names that start with {', '.join(allowed)}; use one of those prefixes",
            )
    if not pipeline.role_path.startswith(settings.role_path):
        raise SpecError(
            "spec.iam.rolePath", pipeline.role_path, f"this operator only creates roles under {settings.role_path}"
        )
    boundary = settings.permissions_boundary_arn
    if boundary is None:
        return pipeline
    if pipeline.permissions_boundary_arn not in (None, boundary):
        raise SpecError(
            "spec.iam.permissionsBoundaryArn",
            pipeline.permissions_boundary_arn,
            f"this operator sets the boundary {boundary} on every role; remove the field or set it to that ARN",
        )
    return dataclasses.replace(pipeline, permissions_boundary_arn=boundary)


def last_handled_pipeline(body: Mapping[str, Any], settings: OperatorSettings) -> Pipeline | None:
    """Return the pipeline as kopf last handled it successfully, or None when there is none."""
    annotation = body.get("metadata", {}).get("annotations", {}).get(LAST_HANDLED_ANNOTATION)
    if not annotation:
        return None
    try:
        last = json.loads(annotation)
        return parse({**body, "spec": last.get("spec")}, settings)
    except (ValueError, AttributeError, SpecError):
        return None


def spec_is_handled(body: Mapping[str, Any]) -> bool:
    """Tell whether kopf has finished handling the current spec (successfully or not).

    kopf writes the spec into its last-handled-configuration annotation once every handler of
    a creation or update has finished, so the two differ while handlers still run or retry.
    """
    annotation = body.get("metadata", {}).get("annotations", {}).get(LAST_HANDLED_ANNOTATION)
    if not annotation:
        return False
    try:
        return bool(json.loads(annotation).get("spec") == body.get("spec"))
    except (ValueError, AttributeError):
        return False


# Streams and table


def streams_step(aws: Aws, pipeline: Pipeline) -> StepOutcome:
    """Create or adopt the streams and the checkpoint table, and move the input to its shard count."""
    changes: list[str] = []
    source, done = provisioning.ensure_stream(aws, pipeline.input, pipeline, pipeline.input.retention_hours)
    changes += done
    condition = Condition.true(STREAMS_READY, "StreamsActive", "both streams and the checkpoint table are active")
    try:
        changes += provisioning.reconcile_shard_count(aws, pipeline.input.name, pipeline.input.shard_count)
    except ShardCountChangeError as error:
        condition = Condition.false(STREAMS_READY, "ShardCountChangeRejected", f"spec.input.shardCount: {error}")
    sink, done = provisioning.ensure_stream(aws, pipeline.output, pipeline)
    changes += done
    status: dict[str, Any] = {"input": source.as_dict(), "output": sink.as_dict(), "deadLetter": None}
    if pipeline.dead_letter is not None:
        dead_letter, done = provisioning.ensure_stream(aws, pipeline.dead_letter, pipeline)
        changes += done
        status["deadLetter"] = dead_letter.as_dict()
    table, done = provisioning.ensure_table(aws, pipeline)
    changes += done
    status["checkpointTable"] = table.as_dict()
    status["shardCount"] = provisioning.count_open_shards(aws.client("kinesis"), pipeline.input.name)
    return StepOutcome(condition, status, changes)


# IAM roles


def _named_arn(status: Mapping[str, Any], key: str) -> NamedArn:
    entry = status.get(key) or {}
    if not entry.get("arn") or not entry.get("name"):
        raise StepNotReadyError(f"waiting for {STREAMS_READY}: status.{key} has no ARN yet")
    return NamedArn(entry["name"], entry["arn"])


def processor_trust_policy(pipeline: Pipeline, settings: OperatorSettings) -> dict[str, Any]:
    """Return the IRSA trust policy: only the processor's ServiceAccount, with the STS audience."""
    return policies.irsa_trust_policy(
        settings.oidc_provider_arn, settings.oidc_issuer, pipeline.namespace, processor.service_account_name(pipeline)
    )


def iam_step(aws: Aws, pipeline: Pipeline, settings: OperatorSettings, status: Mapping[str, Any]) -> StepOutcome:
    """Create or align the processor role (IRSA trust) and the tester role.

    Only the processor role may write the dead-letter stream.
    """
    source = _named_arn(status, "input")
    sink = _named_arn(status, "output")
    table = _named_arn(status, "checkpointTable")
    dead_letter = _named_arn(status, "deadLetter") if pipeline.dead_letter is not None else None
    processor_role_arn, tester_role_arn, changes = provisioning.ensure_roles(
        aws, pipeline, source, sink, table, processor_trust_policy(pipeline, settings), dead_letter
    )
    condition = Condition.true(IAM_READY, "RolesReady", "processor role (IRSA) and tester role are in place")
    return StepOutcome(condition, {"processorRoleArn": processor_role_arn, "testerRoleArn": tester_role_arn}, changes)


# Processor objects


def desired_processor_objects(
    pipeline: Pipeline, settings: OperatorSettings, owner: Mapping[str, Any], processor_role_arn: str, open_shards: int
) -> list[dict[str, Any]]:
    """Render the processor chart for this pipeline and return its objects, owned by ``owner``."""
    values = processor.chart_values(pipeline, settings, processor_role_arn, open_shards)
    rendered = processor.render(settings, pipeline, values)
    return processor.owned(rendered, pipeline.namespace, processor.owner_reference(owner))


def processor_step(
    kube: ObjectApi,
    pipeline: Pipeline,
    settings: OperatorSettings,
    owner: Mapping[str, Any],
    status: Mapping[str, Any],
) -> StepOutcome:
    """Render and apply the processor's objects, and delete objects that an earlier render had and this one lacks."""
    role_arn = status.get("processorRoleArn")
    if not role_arn:
        raise StepNotReadyError(f"waiting for {IAM_READY}: status.processorRoleArn is not set yet")
    open_shards = int(status.get("shardCount") or pipeline.input.shard_count)
    objects = desired_processor_objects(pipeline, settings, owner, role_arn, open_shards)
    changes = processor.apply(kube, objects)

    refs = [processor.object_ref(o) for o in objects]
    previous = (status.get("processor") or {}).get("objects") or []
    stale = [ref for ref in previous if ref not in refs]
    changes += processor.delete(kube, pipeline.namespace, stale, owner["metadata"]["uid"])

    replicas = processor.processor_replicas(open_shards, pipeline.max_replicas)
    processor_status = {
        "serviceAccount": processor.service_account_name(pipeline),
        "replicas": replicas,
        "objects": refs,
    }
    condition = rollout_condition(kube, pipeline.namespace, refs)
    if condition is None:
        raise RenderError(
            f"the processor chart rendered no Deployment for pipeline {pipeline.namespace}/{pipeline.name}"
        )
    return StepOutcome(condition, {"processor": processor_status}, changes)


def rollout_condition(kube: ObjectApi, namespace: str, refs: Sequence[Mapping[str, str]]) -> Condition | None:
    """Return ProcessorReady from the live Deployment among ``refs``, or None when ``refs`` has none.

    The rollout goes on after the processor step has finished, so the rollout timer calls
    this too, and the condition follows the pods without a spec change.
    """
    deployment = next((ref for ref in refs if ref.get("kind") == "Deployment"), None)
    if deployment is None:
        return None
    name = deployment["name"]
    live = kube.get(deployment["apiVersion"], "Deployment", namespace, name)
    if live is None:
        message = f"Deployment {namespace}/{name} was not found. The operator applies it again at the next reconcile"
        return Condition.false(PROCESSOR_READY, "DeploymentMissing", message)
    complete, progress = processor.rollout_progress(live)
    if complete:
        return Condition.true(PROCESSOR_READY, "Available", f"Deployment {namespace}/{name}: {progress}")
    message = (
        f"Deployment {namespace}/{name}: {progress}. If this lasts, "
        f"run kubectl describe deployment {name} -n {namespace} and read its pods' events"
    )
    return Condition.false(PROCESSOR_READY, "RolloutInProgress", message)


# Deletion


def delete_step(
    aws: Aws,
    kube: ObjectApi,
    pipeline: Pipeline,
    settings: OperatorSettings,
    owner: Mapping[str, Any],
    status: Mapping[str, Any],
) -> list[str]:
    """Delete the processor objects and both roles, and the streams and table under ``deletionPolicy: Delete``.

    The objects to delete are those recorded in status plus those the chart renders now, so
    an object applied before its status was written is deleted too. When the chart cannot be
    rendered, the recorded objects are deleted alone rather than blocking the deletion.
    """
    recorded = list((status.get("processor") or {}).get("objects") or [])
    try:
        rendered = [processor.object_ref(o) for o in desired_processor_objects(pipeline, settings, owner, "", 1)]
    except RenderError:
        rendered = []
    refs = recorded + [ref for ref in rendered if ref not in recorded]
    changes = processor.delete(kube, pipeline.namespace, refs, owner["metadata"]["uid"])
    changes += provisioning.deprovision(aws, pipeline)
    return changes
