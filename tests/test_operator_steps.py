"""Operator reconcile steps and handler logic against in-process moto and an in-memory object store."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import kopf
import pytest
import yaml
from anomaly_operator import conditions, errors, handlers, processor, reconcile
from anomaly_operator.errors import KubernetesApiError
from anomaly_operator.handlers import Runtime
from anomaly_operator.kube import merge_patch
from anomaly_operator.reconcile import StepNotReadyError
from anomaly_operator.settings import ImageReference, OperatorSettings, SettingsError
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.provisioning import OwnershipError
from anomaly_pipeline.spec import OWNER_TAG, SpecError
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from tests.tools.paths import helm_binary

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipeline.yaml"
REGION = "eu-west-1"
ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789"
ACCOUNT = "123456789012"


class MemoryKube:
    """An in-memory stand-in for ``KubeClient``: objects keyed by (apiVersion, kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.calls: list[str] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"GET {kind}/{name}")
        found = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(found) if found else None

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        key = (
            manifest["apiVersion"],
            manifest["kind"],
            manifest["metadata"]["namespace"],
            manifest["metadata"]["name"],
        )
        self.calls.append(f"POST {key[1]}/{key[3]}")
        assert key not in self.objects
        self.objects[key] = copy.deepcopy(dict(manifest))
        return self.objects[key]

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(f"PATCH {kind}/{name}")
        key = (api_version, kind, namespace, name)
        self.objects[key] = merge_patch(self.objects[key], patch)
        return self.objects[key]

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self.calls.append(f"DELETE {kind}/{name}")
        return self.objects.pop((api_version, kind, namespace, name), None) is not None

    def find(self, kind: str) -> list[dict[str, Any]]:
        return [o for (_, k, _, _), o in self.objects.items() if k == kind]


@pytest.fixture
def aws() -> Iterator[Aws]:
    with mock_aws():
        yield Aws(region=REGION)


@pytest.fixture
def settings() -> OperatorSettings:
    return OperatorSettings(oidc_issuer=ISSUER, account_id=ACCOUNT, region=REGION, helm=str(helm_binary()))


@pytest.fixture
def body() -> dict[str, Any]:
    """Return the example AnomalyPipeline as the API server would serve it."""
    document = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    document["metadata"].update(
        {"uid": "0d1c6a52-5f0e-4a5e-9a43-6c1e2b7b9f10", "generation": 1, "resourceVersion": "1"}
    )
    return dict(document)


def reconcile_all(aws: Aws, kube: MemoryKube, body: Mapping[str, Any], settings: OperatorSettings) -> dict[str, Any]:
    """Run the three steps in order and return the status they produce."""
    pipeline = reconcile.parse(body, settings)
    status: dict[str, Any] = {}
    status.update(reconcile.streams_step(aws, pipeline).status)
    status.update(reconcile.iam_step(aws, pipeline, settings, status).status)
    status.update(reconcile.processor_step(kube, pipeline, settings, body, status).status)
    return status


def with_spec(body: Mapping[str, Any], section: str | None, key: str, value: object) -> dict[str, Any]:
    changed = copy.deepcopy(dict(body))
    target = changed["spec"] if section is None else changed["spec"].setdefault(section, {})
    target[key] = value
    return changed


# Streams step


def test_streams_step_creates_then_no_changes(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    pipeline = reconcile.parse(body, settings)

    first = reconcile.streams_step(aws, pipeline)
    second = reconcile.streams_step(aws, pipeline)

    assert "created stream ingest-default-payments with 2 shards" in first.changes
    assert "created stream anomaly-default-payments with 1 shards" in first.changes
    assert "created checkpoint table anomaly-checkpoints-default-payments" in first.changes
    assert second.changes == []
    assert first.condition.status == conditions.TRUE
    assert first.status["input"]["arn"].endswith(":stream/ingest-default-payments")
    assert first.status["output"]["arn"].endswith(":stream/anomaly-default-payments")
    assert first.status["checkpointTable"]["arn"].endswith(":table/anomaly-checkpoints-default-payments")
    assert first.status["shardCount"] == 2


def test_streams_step_updates_shard_count(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    reconcile.streams_step(aws, reconcile.parse(body, settings))

    outcome = reconcile.streams_step(aws, reconcile.parse(with_spec(body, "input", "shardCount", 3), settings))

    assert "changed stream ingest-default-payments from 2 to 3 open shards" in outcome.changes
    assert outcome.status["shardCount"] == 3
    assert outcome.condition.status == conditions.TRUE


def test_impossible_shard_count_is_condition(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    reconcile.streams_step(aws, reconcile.parse(body, settings))

    outcome = reconcile.streams_step(aws, reconcile.parse(with_spec(body, "input", "shardCount", 8), settings))

    assert outcome.condition.status == conditions.FALSE
    assert outcome.condition.reason == "ShardCountChangeRejected"
    assert "spec.input.shardCount" in outcome.condition.message
    assert "1 to 4" in outcome.condition.message
    assert outcome.status["shardCount"] == 2


def test_stream_of_other_pipeline_rejected(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName="ingest-default-payments", ShardCount=1)
    kinesis.add_tags_to_stream(StreamName="ingest-default-payments", Tags={OWNER_TAG: "other/pipeline"})

    with pytest.raises(OwnershipError) as raised:
        reconcile.streams_step(aws, reconcile.parse(body, settings))

    classified = errors.classify(raised.value)
    assert classified.reason == "OwnedByAnotherPipeline"
    assert isinstance(classified.error, kopf.PermanentError)
    assert "other/pipeline" in classified.message


# IAM step


def test_iam_step_waits_for_stream_arns(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    with pytest.raises(StepNotReadyError):
        reconcile.iam_step(aws, reconcile.parse(body, settings), settings, {})


def test_iam_step_writes_irsa_trust(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    pipeline = reconcile.parse(body, settings)
    status = reconcile.streams_step(aws, pipeline).status

    outcome = reconcile.iam_step(aws, pipeline, settings, status)
    again = reconcile.iam_step(aws, pipeline, settings, status)

    iam = aws.client("iam")
    role = iam.get_role(RoleName=pipeline.processor_role_name)["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    statement = trust["Statement"][0]
    host = "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789"
    assert statement["Principal"] == {"Federated": f"arn:aws:iam::{ACCOUNT}:oidc-provider/{host}"}
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Condition"] == {
        "StringEquals": {
            f"{host}:sub": "system:serviceaccount:default:payments-processor",
            f"{host}:aud": "sts.amazonaws.com",
        }
    }
    assert "*" not in json.dumps(trust)
    assert "https://" not in json.dumps(trust)
    assert role["Path"] == "/anomaly-pipeline/"
    assert outcome.status["processorRoleArn"] == role["Arn"]
    assert outcome.status["testerRoleArn"].endswith("/anomaly-default-payments-tester")
    assert again.changes == []


# Processor step


def test_processor_step_applies_owned_objects(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kube = MemoryKube()

    status = reconcile_all(aws, kube, body, settings)

    kinds = sorted(k for (_, k, _, _) in kube.objects)
    assert {"ConfigMap", "Deployment", "ServiceAccount"} <= set(kinds)
    for manifest in kube.objects.values():
        assert manifest["metadata"]["namespace"] == "default"
        assert manifest["metadata"]["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
        assert manifest["metadata"]["ownerReferences"][0]["kind"] == "AnomalyPipeline"
        assert manifest["metadata"]["ownerReferences"][0]["controller"] is True
    account = kube.find("ServiceAccount")[0]
    assert account["metadata"]["name"] == "payments-processor"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == status["processorRoleArn"]
    settings_document = yaml.safe_load(kube.find("ConfigMap")[0]["data"]["processor.yaml"])
    assert settings_document["inputStream"] == "ingest-default-payments"
    assert settings_document["rules"] == {
        "match": "any",
        "conditions": [{"field": "transaction_amount", "op": "gt", "value": 100}],
    }
    assert kube.find("Deployment")[0]["spec"]["replicas"] == 2
    assert status["processor"]["serviceAccount"] == "payments-processor"
    assert len(status["processor"]["objects"]) == len(kube.objects)


def test_processor_step_second_run_writes_nothing(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kube = MemoryKube()
    status = reconcile_all(aws, kube, body, settings)
    kube.calls.clear()

    outcome = reconcile.processor_step(kube, reconcile.parse(body, settings), settings, body, status)

    assert outcome.changes == []
    assert all(call.startswith("GET ") for call in kube.calls)


def test_rules_change_rewrites_configmap(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kube = MemoryKube()
    status = reconcile_all(aws, kube, body, settings)
    rules = {"match": "all", "conditions": [{"field": "transaction_amount", "op": "gte", "value": 250.5}]}
    changed = with_spec(body, None, "rules", rules)
    streams_before = aws.client("kinesis").describe_stream_summary(StreamName="ingest-default-payments")[
        "StreamDescriptionSummary"
    ]

    outcome = reconcile.processor_step(kube, reconcile.parse(changed, settings), settings, changed, status)

    configmap = kube.find("ConfigMap")[0]
    assert outcome.changes == [f"updated ConfigMap default/{configmap['metadata']['name']}"]
    assert yaml.safe_load(configmap["data"]["processor.yaml"])["rules"] == rules
    streams_after = aws.client("kinesis").describe_stream_summary(StreamName="ingest-default-payments")[
        "StreamDescriptionSummary"
    ]
    assert streams_after == streams_before


def deployment(**status: int) -> dict[str, Any]:
    """Return a Deployment at generation 2 with 2 desired replicas and ``status``."""
    return {"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status}


@pytest.mark.parametrize(
    ("live", "complete", "message"),
    [
        (deployment(observedGeneration=1), False, "the Deployment controller has not seen the current spec yet"),
        (deployment(observedGeneration=2, updatedReplicas=1, replicas=2), False, "1 of 2 replicas run the current"),
        (
            deployment(observedGeneration=2, updatedReplicas=2, replicas=3),
            False,
            "1 old replicas are still terminating",
        ),
        (
            deployment(observedGeneration=2, updatedReplicas=2, replicas=2, availableReplicas=1),
            False,
            "1 of 2 replicas",
        ),
        (deployment(observedGeneration=2, updatedReplicas=2, replicas=2, availableReplicas=2), True, "2 of 2 replicas"),
        ({"metadata": {"generation": 1}, "spec": {"replicas": 1}}, False, "the Deployment controller has not seen"),
        ({"metadata": {}, "spec": {"replicas": 1}}, False, "0 of 1 replicas run the current pod template"),
    ],
)
def test_rollout_progress_follows_kubectl_rollout_status(live: dict[str, Any], complete: bool, message: str) -> None:
    done, progress = processor.rollout_progress(live)

    assert done is complete
    assert progress.startswith(message)


def test_processor_step_ready_only_when_pods_available(
    aws: Aws, body: dict[str, Any], settings: OperatorSettings
) -> None:
    kube = MemoryKube()
    status = reconcile_all(aws, kube, body, settings)
    pipeline = reconcile.parse(body, settings)

    waiting = reconcile.processor_step(kube, pipeline, settings, body, status)
    live = kube.find("Deployment")[0]
    live["status"] = {"observedGeneration": 0, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
    ready = reconcile.processor_step(kube, pipeline, settings, body, status)

    assert waiting.condition.status == conditions.FALSE
    assert waiting.condition.reason == "RolloutInProgress"
    assert ready.condition.status == conditions.TRUE
    assert ready.condition.reason == "Available"


def test_rollout_timer_follows_pods_after_step(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kube = MemoryKube()
    status = reconcile_all(aws, kube, body, settings)
    outcome = reconcile.processor_step(kube, reconcile.parse(body, settings), settings, body, status)
    status["conditions"] = conditions.merge([], [outcome.condition], 1)
    handled = copy.deepcopy(body)
    handled["metadata"]["annotations"] = {reconcile.LAST_HANDLED_ANNOTATION: json.dumps({"spec": body["spec"]})}
    live = kube.find("Deployment")[0]
    live["status"] = {"observedGeneration": 0, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}

    patch = kopf.Patch()
    handlers.follow_rollout(kube, handled, status, patch, _logger())

    written = conditions.find(patch["status"]["conditions"], conditions.PROCESSOR_READY)
    assert written is not None
    assert written["status"] == conditions.TRUE
    assert written["message"] == "Deployment default/payments-anomaly-processor: 2 of 2 replicas are available"


def test_rollout_timer_waits_for_handlers(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kube = MemoryKube()
    status = reconcile_all(aws, kube, body, settings)
    kube.calls.clear()

    patch = kopf.Patch()
    handlers.follow_rollout(kube, body, status, patch, _logger())

    assert kube.calls == [], "nothing is read while kopf still handles the spec"
    assert "status" not in patch


def test_processor_step_waits_for_role(body: dict[str, Any], settings: OperatorSettings) -> None:
    with pytest.raises(StepNotReadyError):
        reconcile.processor_step(MemoryKube(), reconcile.parse(body, settings), settings, body, {})


def test_unknown_rendered_kind_rejected(settings: OperatorSettings) -> None:
    with pytest.raises(KubernetesApiError, match="does not manage"):
        processor.apply(
            MemoryKube(), [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "namespace": "n"}}]
        )


def test_processor_step_leaves_foreign_object_alone(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kube = MemoryKube()
    status = reconcile_all(aws, MemoryKube(), body, settings)
    # Another application in the namespace already runs under a ServiceAccount of that name.
    theirs = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "payments-processor",
            "namespace": "default",
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/their-app"},
        },
    }
    kube.create(theirs)

    with pytest.raises(errors.ForeignObjectError, match="ServiceAccount default/payments-processor exists") as raised:
        reconcile.processor_step(kube, reconcile.parse(body, settings), settings, body, status)

    assert kube.find("ServiceAccount") == [theirs], "the other application's ServiceAccount is unchanged"
    assert errors.classify(raised.value).reason == "ObjectNameTaken"


def test_delete_step_keeps_foreign_object(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kube = MemoryKube()
    status = reconcile_all(aws, kube, body, settings)
    account = kube.find("ServiceAccount")[0]
    account["metadata"]["ownerReferences"] = [{"kind": "Deployment", "name": "their-app", "uid": "someone-else"}]

    changes = reconcile.delete_step(aws, kube, reconcile.parse(body, settings), settings, body, status)

    assert kube.find("ServiceAccount") == [account]
    assert "kept ServiceAccount default/payments-processor: the pipeline does not own it" in changes
    assert kube.find("Deployment") == [], "the pipeline's own objects are deleted"


def test_replicas_follow_open_shards() -> None:
    assert processor.processor_replicas(open_shards=8, max_replicas=4) == 4
    assert processor.processor_replicas(open_shards=2, max_replicas=4) == 2
    assert processor.processor_replicas(open_shards=1, max_replicas=4) == 1
    assert processor.processor_replicas(open_shards=0, max_replicas=4) == 1


def test_dead_letter_stream_only_processor_writes(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    document = with_spec(body, "deadLetter", "streamNamePrefix", "anomaly-dlq-")
    kube = MemoryKube()

    status = reconcile_all(aws, kube, document, settings)

    assert status["deadLetter"]["name"] == "anomaly-dlq-default-payments"
    assert status["deadLetter"]["arn"].endswith(":stream/anomaly-dlq-default-payments")
    iam = aws.client("iam")
    processor_policy = iam.get_role_policy(
        RoleName="anomaly-default-payments-processor", PolicyName="anomaly-processor"
    )
    tester_policy = iam.get_role_policy(RoleName="anomaly-default-payments-tester", PolicyName="anomaly-tester")
    assert status["deadLetter"]["arn"] in json.dumps(processor_policy["PolicyDocument"])
    assert status["deadLetter"]["arn"] not in json.dumps(tester_policy["PolicyDocument"])
    settings_document = yaml.safe_load(kube.find("ConfigMap")[0]["data"]["processor.yaml"])
    assert settings_document["deadLetterStream"] == "anomaly-dlq-default-payments"


def test_dead_letter_prefix_must_be_allowed(body: dict[str, Any], settings: OperatorSettings) -> None:
    with pytest.raises(SpecError) as raised:
        reconcile.parse(with_spec(body, "deadLetter", "streamNamePrefix", "dlq-"), settings)

    assert raised.value.field == "spec.deadLetter.streamNamePrefix"


# Deletion


def test_delete_retain_keeps_streams(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kube = MemoryKube()
    status = reconcile_all(aws, kube, body, settings)
    pipeline = reconcile.parse(body, settings)

    changes = reconcile.delete_step(aws, kube, pipeline, settings, body, status)

    assert kube.objects == {}
    assert f"deleted role {pipeline.processor_role_name}" in changes
    assert f"deleted role {pipeline.tester_role_name}" in changes
    roles = [r["RoleName"] for r in aws.client("iam").list_roles()["Roles"]]
    assert pipeline.processor_role_name not in roles
    assert pipeline.tester_role_name not in roles
    streams = aws.client("kinesis").list_streams()["StreamNames"]
    assert sorted(streams) == ["anomaly-default-payments", "ingest-default-payments"]
    assert aws.client("dynamodb").list_tables()["TableNames"] == ["anomaly-checkpoints-default-payments"]


def test_delete_without_helm_uses_recorded_objects(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    kube = MemoryKube()
    status = reconcile_all(aws, kube, body, settings)
    no_helm = OperatorSettings(oidc_issuer=ISSUER, account_id=ACCOUNT, helm="/nonexistent/helm")

    changes = reconcile.delete_step(aws, kube, reconcile.parse(body, no_helm), no_helm, body, status)

    assert kube.objects == {}
    assert "deleted role anomaly-default-payments-processor" in changes


def test_delete_policy_delete_after_hand_removal(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    doomed = with_spec(body, None, "deletionPolicy", "Delete")
    kube = MemoryKube()
    status = reconcile_all(aws, kube, doomed, settings)
    aws.client("kinesis").delete_stream(StreamName="ingest-default-payments")
    aws.client("iam").delete_role_policy(RoleName="anomaly-default-payments-tester", PolicyName="anomaly-tester")
    aws.client("iam").delete_role(RoleName="anomaly-default-payments-tester")

    changes = reconcile.delete_step(aws, kube, reconcile.parse(doomed, settings), settings, doomed, status)

    assert "deleted stream anomaly-default-payments" in changes
    assert "deleted stream ingest-default-payments" not in changes
    assert "deleted checkpoint table anomaly-checkpoints-default-payments" in changes
    assert aws.client("iam").list_roles()["Roles"] == []


# Handler logic: conditions and kopf errors


class StubbedAws(Aws):
    """Clients whose first call returns a stubbed AWS error."""

    def __init__(self, code: str) -> None:
        super().__init__(region=REGION)
        self.code = code

    def client(self, service: str, config: Any = None) -> Any:
        client = boto3.session.Session().client(service, region_name=REGION)  # type: ignore[call-overload]
        stubber = Stubber(client)
        stubber.add_client_error("describe_stream_summary", service_error_code=self.code, http_status_code=400)
        stubber.activate()
        return client


def test_invalid_spec_is_permanent_with_field(body: dict[str, Any], settings: OperatorSettings) -> None:
    runtime = Runtime(settings, aws_factory=lambda region: pytest.fail("AWS must not be called for an invalid spec"))
    patch = kopf.Patch()
    invalid = with_spec(body, "input", "shardCount", 0)

    with pytest.raises(kopf.PermanentError, match=r"spec\.input\.shardCount"):
        handlers.run_step(runtime, conditions.STREAMS_READY, handlers._streams, invalid, {}, patch, _logger())

    written = conditions.find(patch["status"]["conditions"], conditions.STREAMS_READY)
    assert written is not None
    assert written["status"] == "False"
    assert written["reason"] == "InvalidSpec"
    assert "spec.input.shardCount" in written["message"]
    ready = conditions.find(patch["status"]["conditions"], conditions.READY)
    assert ready is not None
    assert ready["status"] == "False"


@pytest.mark.parametrize(
    ("code", "reason", "delay"),
    [
        ("ThrottlingException", "Throttled", errors.THROTTLED_DELAY_SECONDS),
        ("LimitExceededException", "Throttled", errors.THROTTLED_DELAY_SECONDS),
        ("AccessDeniedException", "AccessDenied", errors.ACCESS_DENIED_DELAY_SECONDS),
        ("InternalFailure", "AWSUnavailable", errors.TRANSIENT_DELAY_SECONDS),
    ],
)
def test_aws_errors_are_temporary(
    body: dict[str, Any], settings: OperatorSettings, code: str, reason: str, delay: float
) -> None:
    runtime = Runtime(settings, aws_factory=lambda region: StubbedAws(code))
    patch = kopf.Patch()

    with pytest.raises(kopf.TemporaryError) as raised:
        handlers.run_step(runtime, conditions.STREAMS_READY, handlers._streams, body, {}, patch, _logger())

    assert raised.value.delay == delay
    assert isinstance(raised.value.__cause__, ClientError)
    written = conditions.find(patch["status"]["conditions"], conditions.STREAMS_READY)
    assert written is not None
    assert written["reason"] == reason


def test_run_step_reports_status_and_generation(aws: Aws, body: dict[str, Any], settings: OperatorSettings) -> None:
    runtime = Runtime(settings, aws_factory=lambda region: aws)
    status: dict[str, Any] = {}
    for _, condition_type, work in handlers.STEPS[:2]:
        patch = kopf.Patch()
        handlers.run_step(runtime, condition_type, work, body, status, patch, _logger())
        status = merge_patch(status, patch["status"])

    assert status["testerRoleArn"].endswith("-tester")
    assert "observedGeneration" not in status
    ready = conditions.find(status["conditions"], conditions.READY)
    assert ready is not None
    assert ready["status"] == "Unknown"


def test_conditions_keep_transition_time() -> None:
    first = conditions.merge([], [conditions.Condition.true("StreamsReady", "A", "a")], 1, now="2026-01-01T00:00:00Z")
    second = conditions.merge(
        first, [conditions.Condition.true("StreamsReady", "B", "b")], 2, now="2026-01-02T00:00:00Z"
    )
    third = conditions.merge(
        second, [conditions.Condition.false("StreamsReady", "C", "c")], 2, now="2026-01-03T00:00:00Z"
    )

    assert conditions.find(second, "StreamsReady")["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # type: ignore[index]
    assert conditions.find(second, "StreamsReady")["observedGeneration"] == 2  # type: ignore[index]
    assert conditions.find(third, "StreamsReady")["lastTransitionTime"] == "2026-01-03T00:00:00Z"  # type: ignore[index]
    assert [c["type"] for c in third] == ["StreamsReady", "Ready"]


def test_ready_needs_every_step() -> None:
    steps = [conditions.Condition.true(t, "Ok", "ok") for t in conditions.STEP_CONDITIONS]
    merged = conditions.merge([], steps, 3)

    ready = conditions.find(merged, conditions.READY)
    assert ready is not None
    assert ready["status"] == "True"
    assert conditions.all_observed(merged, 3)
    assert not conditions.all_observed(merged, 4)


def _logger() -> Any:
    import logging

    return logging.getLogger("tests.operator")


# Settings


def test_settings_from_env_reads_every_variable(tmp_path: Path) -> None:
    environ = {
        "ANOMALY_OPERATOR_OIDC_ISSUER": ISSUER,
        "ANOMALY_OPERATOR_ACCOUNT_ID": ACCOUNT,
        "ANOMALY_OPERATOR_REGION": "cn-north-1",
        "ANOMALY_OPERATOR_ALLOWED_PREFIXES": "team-a-, team-b-",
        "ANOMALY_OPERATOR_ROLE_PATH": "/teams/",
        "ANOMALY_OPERATOR_PERMISSIONS_BOUNDARY_ARN": "arn:aws:iam::123456789012:policy/boundary",
        "ANOMALY_OPERATOR_PROCESSOR_IMAGE": "registry.local:5000/anomaly-processor:1.2.3",
        "ANOMALY_OPERATOR_HELM": "/usr/local/bin/helm",
        "ANOMALY_OPERATOR_PROCESSOR_CHART": str(tmp_path),
        "ANOMALY_OPERATOR_VERIFY_INTERVAL_SECONDS": "45",
        "ANOMALY_OPERATOR_LOG_LEVEL": "debug",
    }

    loaded = OperatorSettings.from_env(environ)

    assert loaded.allowed_prefixes == ("team-a-", "team-b-")
    assert loaded.role_path == "/teams/"
    assert loaded.permissions_boundary_arn == "arn:aws:iam::123456789012:policy/boundary"
    assert loaded.image == ImageReference("registry.local:5000/anomaly-processor", "1.2.3", "")
    assert loaded.processor_chart == tmp_path
    assert loaded.verify_interval_seconds == 45.0
    assert loaded.log_level == "DEBUG"
    assert (
        loaded.oidc_provider_arn
        == f"arn:aws-cn:iam::{ACCOUNT}:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ANOMALY_OPERATOR_OIDC_ISSUER", ""),
        ("ANOMALY_OPERATOR_OIDC_ISSUER", "http://oidc.example.com/id/1"),
        ("ANOMALY_OPERATOR_ACCOUNT_ID", "1234"),
        ("ANOMALY_OPERATOR_REGION", "Europe"),
        ("ANOMALY_OPERATOR_ALLOWED_PREFIXES", "bad prefix"),
        ("ANOMALY_OPERATOR_ROLE_PATH", "no-slashes"),
        ("ANOMALY_OPERATOR_PERMISSIONS_BOUNDARY_ARN", "boundary"),
        ("ANOMALY_OPERATOR_VERIFY_INTERVAL_SECONDS", "soon"),
        ("ANOMALY_OPERATOR_LOG_LEVEL", "LOUD"),
    ],
)
def test_settings_reject_invalid_variable(variable: str, value: str) -> None:
    environ = {"ANOMALY_OPERATOR_OIDC_ISSUER": ISSUER, "ANOMALY_OPERATOR_ACCOUNT_ID": ACCOUNT, variable: value}

    with pytest.raises(SettingsError) as raised:
        OperatorSettings.from_env(environ)

    assert raised.value.variable == variable


def test_image_reference_forms() -> None:
    assert ImageReference.parse("anomaly-processor") == ImageReference("anomaly-processor")
    assert ImageReference.parse("repo/anomaly-processor:0.1") == ImageReference("repo/anomaly-processor", "0.1")
    assert ImageReference.parse("host:5000/p@sha256:abc") == ImageReference("host:5000/p", "", "sha256:abc")


def test_settings_restrict_pipeline(body: dict[str, Any]) -> None:
    narrow = OperatorSettings(oidc_issuer=ISSUER, account_id=ACCOUNT, allowed_prefixes=("team-",))
    boundary = "arn:aws:iam::123456789012:policy/boundary"
    bounded = OperatorSettings(oidc_issuer=ISSUER, account_id=ACCOUNT, permissions_boundary_arn=boundary)
    other_path = OperatorSettings(oidc_issuer=ISSUER, account_id=ACCOUNT, role_path="/other/")

    with pytest.raises(SpecError) as raised:
        reconcile.parse(body, narrow)
    assert raised.value.field == "spec.input.streamNamePrefix"
    with pytest.raises(SpecError) as raised:
        reconcile.parse(body, other_path)
    assert raised.value.field == "spec.iam.rolePath"
    assert reconcile.parse(body, bounded).permissions_boundary_arn == boundary
    with pytest.raises(SpecError) as raised:
        reconcile.parse(
            with_spec(body, "iam", "permissionsBoundaryArn", "arn:aws:iam::123456789012:policy/other"), bounded
        )
    assert raised.value.field == "spec.iam.permissionsBoundaryArn"


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_passes_default_settings(path: Path) -> None:
    settings = OperatorSettings(oidc_issuer=ISSUER, account_id=ACCOUNT)
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if isinstance(document, dict) and document.get("kind") == "AnomalyPipeline":
            document["metadata"]["uid"] = "example"
            reconcile.parse(document, settings)


def test_full_example_configmap_has_shadow(aws: Aws, settings: OperatorSettings) -> None:
    allowed = OperatorSettings(
        oidc_issuer=ISSUER,
        account_id=ACCOUNT,
        helm=settings.helm,
    )
    document = yaml.safe_load((ROOT / "examples" / "pipeline-full.yaml").read_text(encoding="utf-8"))
    document["metadata"].update({"uid": "5b0a8f3e-8a3c-4a5e-8a43-0c1e2b7b9f11", "generation": 1})
    kube = MemoryKube()

    status = reconcile_all(aws, kube, document, allowed)

    settings_document = yaml.safe_load(kube.find("ConfigMap")[0]["data"]["processor.yaml"])
    assert settings_document["deadLetterStream"] == "anomaly-dead-letter-default-payments-full"
    assert settings_document["detectors"]["shadow"]["name"] == "stricter-rules"
    assert settings_document["rules"]["conditions"][1]["value"] == "12.500000000000000001"
    assert status["deadLetter"]["name"] == "anomaly-dead-letter-default-payments-full"


def test_delete_step_keeps_other_pipelines_resources(
    aws: Aws, body: dict[str, Any], settings: OperatorSettings
) -> None:
    owner = with_spec(body, None, "deletionPolicy", "Delete")
    owner["metadata"].update({"namespace": "team-a", "name": "fraud"})
    intruder = copy.deepcopy(owner)
    intruder["metadata"].update({"namespace": "team", "name": "a-fraud", "uid": "intruder"})
    reconcile_all(aws, MemoryKube(), owner, settings)
    with pytest.raises(OwnershipError):
        reconcile.streams_step(aws, reconcile.parse(intruder, settings))

    changes = reconcile.delete_step(aws, MemoryKube(), reconcile.parse(intruder, settings), settings, intruder, {})

    assert "kept stream ingest-team-a-fraud: it belongs to pipeline team-a/fraud" in changes
    assert "kept role anomaly-team-a-fraud-tester: it belongs to pipeline team-a/fraud" in changes
    assert sorted(aws.client("kinesis").list_streams()["StreamNames"]) == [
        "anomaly-team-a-fraud",
        "ingest-team-a-fraud",
    ]
    assert aws.client("dynamodb").list_tables()["TableNames"] == ["anomaly-checkpoints-team-a-fraud"]
    assert len(aws.client("iam").list_roles(PathPrefix="/anomaly-pipeline/")["Roles"]) == 2
