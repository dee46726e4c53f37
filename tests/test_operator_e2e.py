"""The operator running for real under kopf's KopfRunner, against a Kubernetes API on 127.0.0.1.

The Kubernetes API is kmock's emulator in its own thread and event loop, extended with the
bookkeeping kopf relies on (resourceVersion, uid, generation, 422 on a failed JSON-patch test).
AWS is moto's server on 127.0.0.1. The operator logs in through a kubeconfig that points at
the emulator, as it would on any cluster. kmock validates nothing, so ``apply_pipeline``
validates each AnomalyPipeline against the CRD schema first, as an API server with the CRD
installed would. kmock runs no controllers, so there is no garbage collection, and the emulator
below writes each Deployment's rollout status itself.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import jsonpatch
import jsonschema
import kmock
import kopf
import pytest
import yaml
from anomaly_operator import crd, errors
from anomaly_operator.handlers import register
from anomaly_operator.settings import OperatorSettings
from anomaly_pipeline import credentials
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.cluster import ClusterError, read_pipeline_from_cluster
from botocore.exceptions import ClientError
from kmock._internal import enums, rendering
from kopf.testing import KopfRunner

from tests.tools.paths import helm_binary

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipeline.yaml"
REGION = "eu-west-1"
PIPELINES = "/apis/anomaly.dev/v1alpha1/namespaces/default/anomalypipelines"
TIMEOUT_SECONDS = 30.0
MERGE_PATCH = "application/merge-patch+json"
VERIFY_INTERVAL_SECONDS = 2.0
PROCESSOR_RESOURCES = {
    "v1/serviceaccounts": "ServiceAccount",
    "v1/configmaps": "ConfigMap",
    "v1/services": "Service",
    "apps/v1/deployments": "Deployment",
    "policy/v1/poddisruptionbudgets": "PodDisruptionBudget",
}


class ApiServer(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator plus the object bookkeeping of a real API server.

    On create it sets uid, creationTimestamp, generation 1 and a new resourceVersion. Each
    patch gets a new resourceVersion, and generation + 1 when it changes the spec. A JSON patch whose
    ``test`` operation fails gets HTTP 422, as from kube-apiserver. Every request is logged.

    It also emulates the Deployment controller: after each change to a Deployment it
    writes the status of a finished rollout, or, while ``pods_start`` is False, the status of
    a rollout whose pods never become available (as with a crash-looping image).
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.versions = itertools.count(1000)
        self.latest_version = 999
        self.log: list[tuple[str, str]] = []
        self.pods_start = True

    def _next_version(self) -> str:
        self.latest_version = next(self.versions)
        return str(self.latest_version)

    async def _handle(self, request: rendering.Request) -> Any:
        self.log.append((str(request.method.value), request.url.path))
        if request.resource is not None and request.action == enums.action.CREATE and isinstance(request.data, dict):
            metadata = request.data.setdefault("metadata", {})
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            metadata["generation"] = 1
            metadata["resourceVersion"] = self._next_version()
        elif request.resource is not None and request.action == enums.action.UPDATE:
            self._stamp_update(request)
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as error:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from error
        if (
            request.resource is not None
            and request.resource.plural == "deployments"
            and request.action in (enums.action.CREATE, enums.action.UPDATE)
            and request.subresource != "status"
        ):
            await self._roll_out(request)
        return response

    async def _roll_out(self, request: rendering.Request) -> None:
        assert request.resource is not None
        name = request.name or (request.data or {}).get("metadata", {}).get("name")
        async with self._lock:
            deployment = self._objects[request.resource, request.namespace, name]
            replicas = int(deployment.get("spec", {}).get("replicas", 1))
            status = {
                "observedGeneration": int(deployment.get("metadata", {}).get("generation", 1)),
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas if self.pods_start else 0,
                "availableReplicas": replicas if self.pods_start else 0,
            }
            deployment.patch({"metadata": {"resourceVersion": self._next_version()}, "status": status})
            await self._buses[request.resource].put({"type": "MODIFIED", "object": deployment.raw})

    async def _serve_list(self, request: rendering.Request) -> Any:
        listed: dict[str, Any] = await super()._serve_list(request)  # type: ignore[assignment]
        listed["metadata"]["resourceVersion"] = str(self.latest_version)
        return listed

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        """Stream the objects changed since the requested resourceVersion, then every later event.

        kmock's own watch replays every object whatever resourceVersion the client gives, and
        takes that snapshot and joins the event bus in two steps, so a change made in between is
        lost. Here both happen under the emulator's lock, and only objects newer than the
        requested version are replayed (as their latest state, not each intermediate event).
        """
        yield b""
        since = request.params.get("resourceVersion", "")
        newer_than = int(since) if since.isdigit() else -1
        assert request.resource is not None
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            snapshot = [
                obj.raw
                for (resource, namespace, _), obj in self._objects.items()
                if resource == request.resource and not obj.deleted
                if request.namespace is None or namespace == request.namespace
                if int(obj.raw.get("metadata", {}).get("resourceVersion", 0)) > newer_than
            ]
        try:
            for raw in snapshot:
                yield {"type": "ADDED" if newer_than < 0 else "MODIFIED", "object": raw}
            async for event in bus.stream(since=marker):
                namespace = event.get("object", {}).get("metadata", {}).get("namespace")
                if request.namespace is None or namespace == request.namespace:
                    yield event
        finally:
            await bus.unmark(marker)

    def _stamp_update(self, request: rendering.Request) -> None:
        version = self._next_version()
        if isinstance(request.data, list):
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            return
        if not isinstance(request.data, dict):
            return
        metadata = request.data.setdefault("metadata", {})
        metadata["resourceVersion"] = version
        if "spec" in request.data and request.subresource != "status" and request.resource and request.name:
            try:
                current = self.objects[request.resource, request.namespace, request.name]
                metadata["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
            except (KeyError, ValueError):
                pass


class Cluster:
    """The API server in a background thread with its own event loop, and a JSON client for it."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="kube-api", daemon=True)
        self.url = ""
        self.server: ApiServer

    def __enter__(self) -> Cluster:
        self._thread.start()
        assert self._ready.wait(10), "the Kubernetes API emulator did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with ApiServer() as server, kmock.Server(server, host="127.0.0.1") as http:
            self.server = server
            self.url = str(http.url).rstrip("/")
            info = kmock.ResourceInfo
            namespaced = {"get", "list", "watch", "create", "patch", "delete"}
            server.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False, verbs={"get", "list", "watch"})
            server.resources["v1/events"] = info(kind="Event", namespaced=True, verbs={"create", "list", "get"})
            server.resources["anomaly.dev/v1alpha1/anomalypipelines"] = info(
                kind="AnomalyPipeline", namespaced=True, verbs=namespaced, subresources={"status"}, shortnames={"ap"}
            )
            for resource, kind in PROCESSOR_RESOURCES.items():
                server.resources[resource] = info(kind=kind, namespaced=True, verbs=namespaced)
            self._ready.set()
            await self._stop.wait()

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        message = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(message, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            found = self.request("GET", path)
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise
        return dict(found)

    def items(self, path: str) -> list[dict[str, Any]]:
        return list(self.request("GET", path)["items"])

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig.yaml"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
            "current-context": "emulator",
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path


def wait_for(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT_SECONDS) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def example() -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    return dict(document)


def apply_pipeline(cluster: Cluster, document: dict[str, Any]) -> dict[str, Any]:
    """Create an AnomalyPipeline the way an API server with the CRD would: schema first."""
    jsonschema.Draft7Validator(crd.validation_schema()).validate(document)
    return dict(cluster.request("POST", PIPELINES, document))


def pipeline(cluster: Cluster, name: str = "payments") -> dict[str, Any] | None:
    return cluster.get(f"{PIPELINES}/{name}")


def condition(document: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for entry in ((document or {}).get("status") or {}).get("conditions") or []:
        if entry.get("type") == type_:
            return dict(entry)
    return {}


def is_ready(cluster: Cluster, name: str = "payments") -> dict[str, Any] | None:
    document = pipeline(cluster, name)
    return document if condition(document, "Ready").get("status") == "True" else None


def events(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.items("/api/v1/namespaces/default/events") if e.get("reason") == reason]


@pytest.fixture
def aws_endpoint(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with Cluster() as running:
        monkeypatch.setenv("KUBECONFIG", str(running.kubeconfig(tmp_path)))
        yield running


def operator_settings(verify_interval: float = VERIFY_INTERVAL_SECONDS) -> OperatorSettings:
    return OperatorSettings(
        oidc_issuer="https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789",
        account_id="123456789012",
        region=REGION,
        helm=str(helm_binary()),
        processor_image="registry.example/anomaly-processor:0.1.0",
        verify_interval_seconds=verify_interval,
    )


def running_operator(verify_interval: float = VERIFY_INTERVAL_SECONDS) -> KopfRunner:
    """Return a KopfRunner for a fresh registry holding the operator's handlers."""
    registry = kopf.OperatorRegistry()
    register(registry, operator_settings(verify_interval))
    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.5
    return KopfRunner(
        ["run", "--all-namespaces", "--standalone", "--verbose"], registry=registry, settings=settings, timeout=30
    )


def aws_client(endpoint: str, service: str) -> Any:
    return boto3.session.Session().client(service, region_name=REGION, endpoint_url=endpoint)  # type: ignore[call-overload]


def collection_path(resource: str) -> str:
    """Return the namespaced list path of ``group/version/plural`` (or ``v1/plural``) in ``default``."""
    api_version, plural = resource.rsplit("/", 1)
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{prefix}/namespaces/default/{plural}"


def processor_objects(cluster: Cluster) -> dict[str, list[dict[str, Any]]]:
    return {resource: cluster.items(collection_path(resource)) for resource in PROCESSOR_RESOURCES}


def test_example_becomes_ready(cluster: Cluster, aws_endpoint: str) -> None:
    with running_operator() as runner:
        apply_pipeline(cluster, example())
        ready = wait_for(lambda: is_ready(cluster), "Ready=True")
        objects = processor_objects(cluster)

    status = ready["status"]
    assert status["input"]["arn"] == f"arn:aws:kinesis:{REGION}:123456789012:stream/ingest-default-payments"
    assert status["output"]["arn"] == f"arn:aws:kinesis:{REGION}:123456789012:stream/anomaly-default-payments"
    assert status["checkpointTable"]["arn"].endswith(":table/anomaly-checkpoints-default-payments")
    assert (
        status["processorRoleArn"]
        == "arn:aws:iam::123456789012:role/anomaly-pipeline/anomaly-default-payments-processor"
    )
    assert status["testerRoleArn"] == "arn:aws:iam::123456789012:role/anomaly-pipeline/anomaly-default-payments-tester"
    assert status["shardCount"] == 2
    assert status["observedGeneration"] == ready["metadata"]["generation"]
    for type_ in ("StreamsReady", "IAMReady", "ProcessorReady"):
        assert condition(ready, type_)["status"] == "True", type_
    assert ready["metadata"]["finalizers"] == ["anomaly.dev/finalizer"]

    accounts = objects["v1/serviceaccounts"]
    assert [a["metadata"]["name"] for a in accounts] == ["payments-processor"]
    assert accounts[0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == status["processorRoleArn"]
    assert len(objects["v1/configmaps"]) == 1
    assert len(objects["apps/v1/deployments"]) == 1
    deployment = objects["apps/v1/deployments"][0]
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/anomaly-processor:0.1.0"
    )
    assert deployment["spec"]["replicas"] == 2
    for resource, found in objects.items():
        for manifest in found:
            owner = manifest["metadata"]["ownerReferences"][0]
            assert owner["uid"] == ready["metadata"]["uid"], resource
            assert owner["kind"] == "AnomalyPipeline", resource
    kinesis = aws_client(aws_endpoint, "kinesis")
    assert sorted(kinesis.list_streams()["StreamNames"]) == ["anomaly-default-payments", "ingest-default-payments"]
    assert runner.exit_code == 0
    assert "created stream ingest-default-payments with 2 shards" in runner.output


def test_unavailable_pods_keep_pipeline_unready(cluster: Cluster, aws_endpoint: str) -> None:
    cluster.server.pods_start = False
    deployment_path = collection_path("apps/v1/deployments") + "/payments-anomaly-processor"
    # The drift timer re-runs every step, so it is kept out of the way: only the rollout timer may report the pods.
    with running_operator(verify_interval=600.0) as runner:
        apply_pipeline(cluster, example())
        waiting = wait_for(
            lambda: (
                (found := pipeline(cluster)) and condition(found, "ProcessorReady").get("status") == "False" and found
            ),
            "ProcessorReady=False",
        )
        processor_ready = condition(waiting, "ProcessorReady")
        assert processor_ready["reason"] == "RolloutInProgress"
        assert "0 of 2 replicas are available" in processor_ready["message"]
        assert "kubectl describe deployment payments-anomaly-processor -n default" in processor_ready["message"]
        assert condition(waiting, "Ready")["status"] == "False"
        assert condition(waiting, "StreamsReady")["status"] == "True"

        # The pods start: the Deployment controller reports them available at the next change.
        cluster.server.pods_start = True
        cluster.request("PATCH", deployment_path, {"metadata": {"labels": {"pods": "started"}}}, MERGE_PATCH)
        ready = wait_for(lambda: is_ready(cluster), "Ready=True once the pods are available")

    assert condition(ready, "ProcessorReady")["reason"] == "Available"
    assert (
        condition(ready, "ProcessorReady")["message"]
        == "Deployment default/payments-anomaly-processor: 2 of 2 replicas are available"
    )
    assert runner.exit_code == 0


def test_spec_change_applies_while_pods_unavailable(cluster: Cluster, aws_endpoint: str) -> None:
    cluster.server.pods_start = False
    with running_operator():
        apply_pipeline(cluster, example())
        wait_for(lambda: condition(pipeline(cluster), "ProcessorReady").get("reason") == "RolloutInProgress", "rollout")
        cluster.request("PATCH", f"{PIPELINES}/payments", {"spec": {"input": {"shardCount": 3}}}, MERGE_PATCH)
        resized = wait_for(
            lambda: (
                (found := pipeline(cluster))
                and found["status"].get("shardCount") == 3
                and found["status"].get("observedGeneration") == found["metadata"]["generation"]
                and found
            ),
            "every step to handle the new generation while the pods never start",
        )

    assert condition(resized, "StreamsReady")["status"] == "True"
    assert condition(resized, "ProcessorReady")["reason"] == "RolloutInProgress"
    assert condition(resized, "Ready")["status"] == "False"


def test_restart_recreates_nothing(cluster: Cluster, aws_endpoint: str) -> None:
    with running_operator():
        apply_pipeline(cluster, example())
        first = wait_for(lambda: is_ready(cluster), "Ready=True")
    iam = aws_client(aws_endpoint, "iam")
    kinesis = aws_client(aws_endpoint, "kinesis")
    role_created = iam.get_role(RoleName="anomaly-default-payments-processor")["Role"]["CreateDate"]
    stream_created = kinesis.describe_stream_summary(StreamName="ingest-default-payments")["StreamDescriptionSummary"][
        "StreamCreationTimestamp"
    ]
    configmap = processor_objects(cluster)["v1/configmaps"][0]["metadata"]["name"]
    mark = len(cluster.server.log)

    with running_operator() as second:
        # The resumed processor step reads the ConfigMap once it has run.
        wait_for(
            lambda: any(path.endswith(f"/configmaps/{configmap}") for _, path in cluster.server.log[mark:]),
            "the resume handlers",
        )
        time.sleep(1.0)
        after = pipeline(cluster)

    writes = [
        (method, path)
        for method, path in cluster.server.log[mark:]
        if method != "GET" and "/anomalypipelines/" not in path and "/events" not in path
    ]
    assert writes == []
    assert iam.get_role(RoleName="anomaly-default-payments-processor")["Role"]["CreateDate"] == role_created
    assert (
        kinesis.describe_stream_summary(StreamName="ingest-default-payments")["StreamDescriptionSummary"][
            "StreamCreationTimestamp"
        ]
        == stream_created
    )
    assert after is not None
    assert after["status"]["conditions"] == first["status"]["conditions"]
    assert "created " not in second.output


def test_rules_change_rewrites_configmap(cluster: Cluster, aws_endpoint: str) -> None:
    rules = {
        "match": "all",
        "conditions": [
            {"field": "transaction_amount", "op": "gte", "value": 500},
            {"field": "country", "op": "in", "value": ["XX", "YY"]},
        ],
    }
    kinesis = aws_client(aws_endpoint, "kinesis")
    with running_operator():
        apply_pipeline(cluster, example())
        wait_for(lambda: is_ready(cluster), "Ready=True")
        streams_before = kinesis.describe_stream_summary(StreamName="ingest-default-payments")[
            "StreamDescriptionSummary"
        ]
        name = processor_objects(cluster)["v1/configmaps"][0]["metadata"]["name"]
        cluster.request("PATCH", f"{PIPELINES}/payments", {"spec": {"rules": rules}}, "application/merge-patch+json")

        def rewritten() -> dict[str, Any] | None:
            configmap = cluster.get(f"/api/v1/namespaces/default/configmaps/{name}")
            settings = yaml.safe_load(configmap["data"]["processor.yaml"]) if configmap else {}
            return settings if settings.get("rules") == rules else None

        processor_settings = wait_for(rewritten, "the ConfigMap with the new rules")
        observed = wait_for(
            lambda: (p := pipeline(cluster)) and p["status"].get("observedGeneration") == 2 and p,
            "observedGeneration 2",
        )

    assert processor_settings["inputStream"] == "ingest-default-payments"
    assert (
        kinesis.describe_stream_summary(StreamName="ingest-default-payments")["StreamDescriptionSummary"]
        == streams_before
    )
    assert condition(observed, "Ready")["status"] == "True"


def test_delete_retain_keeps_streams_and_records(cluster: Cluster, aws_endpoint: str) -> None:
    kinesis = aws_client(aws_endpoint, "kinesis")
    iam = aws_client(aws_endpoint, "iam")
    with running_operator():
        apply_pipeline(cluster, example())
        wait_for(lambda: is_ready(cluster), "Ready=True")
        kinesis.put_record(
            StreamName="ingest-default-payments", Data=b'{"transaction_amount": 150}', PartitionKey="order-1"
        )
        cluster.request("DELETE", f"{PIPELINES}/payments")
        wait_for(lambda: pipeline(cluster) is None, "the AnomalyPipeline to be deleted")
        objects = processor_objects(cluster)

    assert all(found == [] for found in objects.values()), objects
    roles = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    assert "anomaly-default-payments-processor" not in roles
    assert "anomaly-default-payments-tester" not in roles
    assert sorted(kinesis.list_streams()["StreamNames"]) == ["anomaly-default-payments", "ingest-default-payments"]
    shard = kinesis.list_shards(StreamName="ingest-default-payments")["Shards"]
    data = []
    for entry in shard:
        iterator = kinesis.get_shard_iterator(
            StreamName="ingest-default-payments", ShardId=entry["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        data += [r["Data"] for r in kinesis.get_records(ShardIterator=iterator)["Records"]]
    assert data == [b'{"transaction_amount": 150}']
    assert aws_client(aws_endpoint, "dynamodb").list_tables()["TableNames"] == ["anomaly-checkpoints-default-payments"]


def test_delete_after_stream_removed_by_hand(cluster: Cluster, aws_endpoint: str) -> None:
    document = example()
    document["spec"]["deletionPolicy"] = "Delete"
    kinesis = aws_client(aws_endpoint, "kinesis")
    with running_operator():
        apply_pipeline(cluster, document)
        wait_for(lambda: is_ready(cluster), "Ready=True")
        kinesis.delete_stream(StreamName="ingest-default-payments")
        cluster.request("DELETE", f"{PIPELINES}/payments")
        wait_for(lambda: pipeline(cluster) is None, "the AnomalyPipeline to be deleted")

    assert kinesis.list_streams()["StreamNames"] == []
    assert aws_client(aws_endpoint, "iam").list_roles()["Roles"] == []
    assert aws_client(aws_endpoint, "dynamodb").list_tables()["TableNames"] == []


def test_timer_recreates_deleted_stream(cluster: Cluster, aws_endpoint: str) -> None:
    kinesis = aws_client(aws_endpoint, "kinesis")
    with running_operator():
        apply_pipeline(cluster, example())
        wait_for(lambda: is_ready(cluster), "Ready=True")
        kinesis.delete_stream(StreamName="anomaly-default-payments")
        wait_for(
            lambda: "anomaly-default-payments" in kinesis.list_streams()["StreamNames"], "the stream to be recreated"
        )
        recreated = wait_for(lambda: events(cluster, "Recreated"), "a Recreated event")

    assert recreated[0]["type"] == "Warning"
    assert "created stream anomaly-default-payments" in recreated[0]["message"]
    assert recreated[0]["involvedObject"]["name"] == "payments"


def test_invalid_spec_condition_names_field(cluster: Cluster, aws_endpoint: str) -> None:
    document = copy.deepcopy(example())
    # The pattern accepts this region, so only the parser can reject it.
    document["spec"]["region"] = "xx-nowhere-1"
    with running_operator() as runner:
        apply_pipeline(cluster, document)
        failed = wait_for(
            lambda: condition(pipeline(cluster), "StreamsReady").get("reason") == "InvalidSpec" and pipeline(cluster),
            "InvalidSpec",
        )

    streams = condition(failed, "StreamsReady")
    assert streams["status"] == "False"
    assert "spec.region" in streams["message"]
    assert condition(failed, "Ready")["status"] == "False"
    assert aws_client(aws_endpoint, "kinesis").list_streams()["StreamNames"] == []
    assert runner.exit_code == 0


def test_impossible_shard_change_is_condition(cluster: Cluster, aws_endpoint: str) -> None:
    with running_operator():
        apply_pipeline(cluster, example())
        wait_for(lambda: is_ready(cluster), "Ready=True")
        cluster.request(
            "PATCH", f"{PIPELINES}/payments", {"spec": {"input": {"shardCount": 8}}}, "application/merge-patch+json"
        )
        rejected = wait_for(
            lambda: (
                condition(pipeline(cluster), "StreamsReady").get("reason") == "ShardCountChangeRejected"
                and pipeline(cluster)
            ),
            "ShardCountChangeRejected",
        )
        cluster.request(
            "PATCH", f"{PIPELINES}/payments", {"spec": {"input": {"shardCount": 3}}}, "application/merge-patch+json"
        )
        resized = wait_for(lambda: (p := is_ready(cluster)) and p["status"]["shardCount"] == 3 and p, "3 open shards")

    assert condition(rejected, "Ready")["status"] == "False"
    assert "spec.input.shardCount" in condition(rejected, "StreamsReady")["message"]
    assert condition(resized, "StreamsReady")["status"] == "True"


def test_schema_rejects_invalid_pipeline(cluster: Cluster) -> None:
    document = example()
    document["spec"]["input"]["shardCount"] = 0
    with pytest.raises(jsonschema.ValidationError):
        apply_pipeline(cluster, document)
    assert pipeline(cluster) is None


def test_credentials_from_cluster_status(cluster: Cluster, aws_endpoint: str) -> None:
    with running_operator():
        apply_pipeline(cluster, example())
        ready = wait_for(lambda: is_ready(cluster), "Ready=True")

    found, role_arn = read_pipeline_from_cluster("payments", "default")
    result = credentials.tester_credentials(Aws(region=found.region), found, role_arn)

    assert role_arn == ready["status"]["testerRoleArn"]
    assert found.input.name == "ingest-default-payments"
    assert result["AssumedRoleUser"]["Arn"].startswith(
        "arn:aws:sts::123456789012:assumed-role/anomaly-default-payments-tester/"
    )
    assert result["Credentials"]["AccessKeyId"]
    assert result["outputStream"] == "anomaly-default-payments"


def test_credentials_from_cluster_not_ready(cluster: Cluster) -> None:
    document = example()
    document["metadata"]["name"] = "pending"
    document["status"] = {
        "conditions": [{"type": "Ready", "status": "False", "reason": "Throttled", "message": "retrying"}]
    }
    cluster.request("POST", PIPELINES, document)

    with pytest.raises(ClusterError, match=r"no status\.testerRoleArn yet, Ready is False \(Throttled: retrying\)"):
        read_pipeline_from_cluster("pending", "default")
    with pytest.raises(ClusterError, match="AnomalyPipeline default/missing not found"):
        read_pipeline_from_cluster("missing", "default")


class ThrottledIam:
    """An IAM client whose every call fails with ThrottlingException, as a throttled account's would."""

    def __getattr__(self, operation: str) -> Callable[..., Any]:
        def throttled(**_: Any) -> Any:
            error = {
                "Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
                "ResponseMetadata": {"HTTPStatusCode": 400},
            }
            raise ClientError(error, operation)  # type: ignore[arg-type]

        return throttled


class IamThrottledAws(Aws):
    def client(self, service: str, config: Any = None) -> Any:
        return ThrottledIam() if service == "iam" else super().client(service, config)


@pytest.fixture
def short_throttling_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry throttled steps after 2 s instead of 15 s; what the tests check does not depend on the delay."""
    monkeypatch.setattr(errors, "THROTTLED_DELAY_SECONDS", 2.0)


@pytest.mark.usefixtures("short_throttling_delay")
def test_restart_skips_finished_steps(cluster: Cluster, aws_endpoint: str) -> None:
    registry = kopf.OperatorRegistry()
    register(registry, operator_settings(), aws_factory=lambda region: IamThrottledAws(region=region))
    throttled = KopfRunner(["run", "--all-namespaces", "--standalone", "--verbose"], registry=registry, timeout=30)
    with throttled:
        apply_pipeline(cluster, example())
        stuck = wait_for(
            lambda: condition(pipeline(cluster), "IAMReady").get("reason") == "Throttled" and pipeline(cluster),
            "IAMReady=Throttled",
        )

    with running_operator() as resumed:
        ready = wait_for(lambda: is_ready(cluster), "Ready=True")

    assert condition(stuck, "StreamsReady")["status"] == "True"
    assert condition(stuck, "IAMReady")["status"] == "False"
    assert "Handler 'streams' succeeded" in throttled.output
    assert "Handler 'iam' failed temporarily" in throttled.output
    assert "Handler 'streams'" not in resumed.output
    assert "Handler 'iam' succeeded" in resumed.output
    assert "Handler 'processor' succeeded" in resumed.output
    assert ready["status"]["testerRoleArn"].endswith("/anomaly-default-payments-tester")


def test_kopf_run_module_reads_env(cluster: Cluster, aws_endpoint: str, tmp_path: Path) -> None:
    environment = dict(
        os.environ,
        ANOMALY_OPERATOR_OIDC_ISSUER="https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789",
        ANOMALY_OPERATOR_ACCOUNT_ID="123456789012",
        ANOMALY_OPERATOR_HELM=str(helm_binary()),
        ANOMALY_OPERATOR_PROCESSOR_IMAGE="registry.example/anomaly-processor:0.2.0",
    )
    command = [
        str(Path(sys.executable).parent / "kopf"),
        "run",
        "--standalone",
        "--all-namespaces",
        "-m",
        "anomaly_operator",
    ]
    with (tmp_path / "operator.log").open("w") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            apply_pipeline(cluster, example())
            ready = wait_for(lambda: is_ready(cluster), "Ready=True from kopf run -m anomaly_operator")
            deployment = processor_objects(cluster)["apps/v1/deployments"][0]
        finally:
            process.terminate()
            process.wait(timeout=30)

    assert ready["status"]["testerRoleArn"].endswith("/anomaly-default-payments-tester")
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/anomaly-processor:0.2.0"
    )
    assert "Activity 'configure' succeeded" in (tmp_path / "operator.log").read_text(encoding="utf-8")


@pytest.mark.usefixtures("short_throttling_delay")
def test_failed_deletion_keeps_finalizer(cluster: Cluster, aws_endpoint: str) -> None:
    iam = aws_client(aws_endpoint, "iam")
    with running_operator():
        apply_pipeline(cluster, example())
        wait_for(lambda: is_ready(cluster), "Ready=True")

    registry = kopf.OperatorRegistry()
    register(registry, operator_settings(), aws_factory=lambda region: IamThrottledAws(region=region))
    with KopfRunner(["run", "--all-namespaces", "--standalone", "--verbose"], registry=registry, timeout=30):
        cluster.request("DELETE", f"{PIPELINES}/payments")
        failed = wait_for(lambda: events(cluster, "DeletionFailed"), "a DeletionFailed event")
        kept = pipeline(cluster)
        roles_while_throttled = [r["RoleName"] for r in iam.list_roles()["Roles"]]

    with running_operator():
        wait_for(lambda: pipeline(cluster) is None, "the AnomalyPipeline to be deleted after the retry")

    assert failed[0]["type"] == "Warning"
    assert "ThrottlingException" in failed[0]["message"]
    assert kept is not None
    assert kept["metadata"]["deletionTimestamp"]
    assert kept["metadata"]["finalizers"] == ["anomaly.dev/finalizer"]
    assert "anomaly-default-payments-tester" in roles_while_throttled
    assert iam.list_roles()["Roles"] == []
