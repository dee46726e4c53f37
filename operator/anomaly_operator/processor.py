"""The processor's Kubernetes objects: rendered with ``helm template``, applied with owner references.

The anomaly-processor chart is the one description of those objects, so the operator does not
build manifests itself. It writes the chart's values (the processor settings document,
replicas, ServiceAccount and image) and runs ``helm template``. Then it sets the namespace and
an owner reference to the AnomalyPipeline on every object and applies each through ``kube``.
No Helm release is installed, so nothing is stored in the cluster besides the objects.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import yaml
from anomaly_pipeline.spec import Pipeline, processor_config

from anomaly_operator.errors import ForeignObjectError, RenderError
from anomaly_operator.kube import ObjectApi, merge_patch, resource_path
from anomaly_operator.settings import OperatorSettings

# Helm rejects release names longer than 53 characters. Kubernetes object names may have 63.
HELM_RELEASE_NAME_MAX: Final = 53
SERVICE_ACCOUNT_NAME_MAX: Final = 63
HELM_TIMEOUT_SECONDS: Final = 60


def _cut(name: str, limit: int) -> str:
    """Return ``name``, or its first characters and a hash of the whole when it is longer than ``limit``."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - len(digest) - 1].rstrip('-.')}-{digest}"


def release_name(pipeline: Pipeline) -> str:
    return _cut(pipeline.name, HELM_RELEASE_NAME_MAX)


def service_account_name(pipeline: Pipeline) -> str:
    """Return the processor's ServiceAccount name, which the processor role's IRSA trust names too."""
    return _cut(f"{pipeline.name}-processor", SERVICE_ACCOUNT_NAME_MAX)


def processor_replicas(open_shards: int, max_replicas: int) -> int:
    """Return the Deployment's replicas: one pod per open shard at most, and at most ``max_replicas``.

    Pods share the shards through leases in the checkpoint table, so a pod beyond the open
    shard count would hold no lease and stay idle.
    """
    return max(1, min(open_shards, max_replicas))


def processor_settings(pipeline: Pipeline) -> dict[str, Any]:
    """Return the processor settings document, the ``processor.yaml`` of the ConfigMap."""
    return processor_config(pipeline).as_document()


def chart_values(
    pipeline: Pipeline, settings: OperatorSettings, processor_role_arn: str, open_shards: int
) -> dict[str, Any]:
    """Return the anomaly-processor chart's values for this pipeline."""
    return {
        "pipeline": processor_settings(pipeline),
        "replicaCount": processor_replicas(open_shards, pipeline.max_replicas),
        "image": settings.image.as_values(),
        "serviceAccount": {"create": True, "name": service_account_name(pipeline), "roleArn": processor_role_arn},
    }


def render(settings: OperatorSettings, pipeline: Pipeline, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run ``helm template`` on the processor chart and return the rendered objects."""
    helm = shutil.which(settings.helm)
    if helm is None:
        raise RenderError(f"helm not found at {settings.helm!r}: set ANOMALY_OPERATOR_HELM to the helm binary")
    if not (settings.processor_chart / "Chart.yaml").is_file():
        raise RenderError(
            f"no chart at {settings.processor_chart}: set ANOMALY_OPERATOR_PROCESSOR_CHART to the anomaly-processor chart"
        )
    with tempfile.TemporaryDirectory(prefix="anomaly-operator-") as scratch:
        values_file = Path(scratch) / "values.json"
        values_file.write_text(json.dumps(values), encoding="utf-8")
        command = [
            helm,
            "template",
            release_name(pipeline),
            str(settings.processor_chart),
            "--namespace",
            pipeline.namespace,
            "--values",
            str(values_file),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=HELM_TIMEOUT_SECONDS, check=False)  # noqa: S603
        except subprocess.TimeoutExpired as error:
            raise RenderError(f"helm template timed out after {HELM_TIMEOUT_SECONDS} s") from error
    if result.returncode != 0:
        raise RenderError(f"helm template {settings.processor_chart} failed: {result.stderr.strip()}")
    return [dict(d) for d in yaml.safe_load_all(result.stdout) if isinstance(d, Mapping)]


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Return a controller owner reference to the AnomalyPipeline ``owner``."""
    metadata = owner["metadata"]
    if not metadata.get("uid"):
        raise RenderError(f"{metadata.get('namespace')}/{metadata.get('name')} has no metadata.uid to own objects by")
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned(objects: Iterable[Mapping[str, Any]], namespace: str, reference: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return copies of ``objects`` placed in ``namespace`` and owned through ``reference``."""
    result = []
    for manifest in objects:
        desired = json.loads(json.dumps(manifest))
        metadata = desired.setdefault("metadata", {})
        metadata["namespace"] = namespace
        metadata["ownerReferences"] = [dict(reference)]
        result.append(desired)
    return result


def object_ref(manifest: Mapping[str, Any]) -> dict[str, str]:
    return {"apiVersion": manifest["apiVersion"], "kind": manifest["kind"], "name": manifest["metadata"]["name"]}


def owned_by(live: Mapping[str, Any], uid: str) -> bool:
    """Tell whether ``live`` has an owner reference to the object with ``uid``."""
    references = (live.get("metadata") or {}).get("ownerReferences") or []
    return any(reference.get("uid") == uid for reference in references)


def apply(kube: ObjectApi, objects: Iterable[Mapping[str, Any]]) -> list[str]:
    """Create missing objects and merge-patch those whose rendered fields differ; return the changes.

    Every object's kind is checked first, so a kind the operator cannot manage changes nothing.
    An existing object without an owner reference to the pipeline is left alone and raises
    ForeignObjectError: patching it would hand, for example, another application's
    ServiceAccount the processor role, and deleting the pipeline would then delete it.
    """
    objects = list(objects)
    for desired in objects:
        resource_path(desired["apiVersion"], desired["kind"])
    changes: list[str] = []
    for desired in objects:
        ref = object_ref(desired)
        namespace = desired["metadata"]["namespace"]
        live = kube.get(ref["apiVersion"], ref["kind"], namespace, ref["name"])
        if live is None:
            kube.create(desired)
            changes.append(f"created {ref['kind']} {namespace}/{ref['name']}")
        elif not owned_by(live, desired["metadata"]["ownerReferences"][0]["uid"]):
            owner = desired["metadata"]["ownerReferences"][0]["name"]
            raise ForeignObjectError(
                f"{ref['kind']} {namespace}/{ref['name']} exists and is not owned by AnomalyPipeline {owner}, so it "
                "is left alone. Rename or remove that object, or give the pipeline another name"
            )
        elif merge_patch(live, desired) != live:
            kube.patch(ref["apiVersion"], ref["kind"], namespace, ref["name"], desired)
            changes.append(f"updated {ref['kind']} {namespace}/{ref['name']}")
    return changes


def delete(kube: ObjectApi, namespace: str, refs: Iterable[Mapping[str, str]], owner_uid: str) -> list[str]:
    """Delete each referenced object that the object with ``owner_uid`` owns, and skip one already gone."""
    changes: list[str] = []
    for ref in refs:
        live = kube.get(ref["apiVersion"], ref["kind"], namespace, ref["name"])
        if live is None:
            continue
        if not owned_by(live, owner_uid):
            changes.append(f"kept {ref['kind']} {namespace}/{ref['name']}: the pipeline does not own it")
        elif kube.delete(ref["apiVersion"], ref["kind"], namespace, ref["name"]):
            changes.append(f"deleted {ref['kind']} {namespace}/{ref['name']}")
    return changes


def rollout_progress(deployment: Mapping[str, Any]) -> tuple[bool, str]:
    """Return whether a Deployment's rollout is complete, and a message saying how far it got.

    The checks follow ``kubectl rollout status``: the Deployment controller has seen the
    current spec, every replica runs the current pod template, no old replica is left,
    and every replica is available.
    """
    metadata = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    desired = int((deployment.get("spec") or {}).get("replicas", 1))
    observed = int(status.get("observedGeneration", 0))
    updated = int(status.get("updatedReplicas", 0))
    total = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    if observed < int(metadata.get("generation", 0)):
        return False, "the Deployment controller has not seen the current spec yet"
    if updated < desired:
        return False, f"{updated} of {desired} replicas run the current pod template"
    if total > updated:
        return False, f"{total - updated} old replicas are still terminating"
    if available < updated:
        return False, f"{available} of {updated} replicas are available"
    return True, f"{available} of {desired} replicas are available"
