"""Read an AnomalyPipeline and its status from a Kubernetes cluster, for ``credentials --from-cluster``.

The anomaly operator writes the tester role's ARN into ``status.testerRoleArn``. This module
reads it with the spec, which gives the region, the stream names and the session length. It
uses the ``kubernetes`` client with the usual kubeconfig (``KUBECONFIG`` or ``~/.kube/config``),
or the pod's service account inside a cluster. The client is imported only here, so the rest of
the command line works without the ``operator`` extra. It never writes to the cluster.
"""

from __future__ import annotations

import json
import os
from typing import Any, Final

from anomaly_pipeline.spec import API_GROUP, API_VERSION, Pipeline, parse_pipeline

# The AnomalyPipeline resource in the Kubernetes API; the CRD and the operator use these too.
PLURAL: Final = "anomalypipelines"
VERSION: Final = API_VERSION.rsplit("/", 1)[1]


class ClusterError(OSError):
    """The AnomalyPipeline could not be read from the cluster, or it has no tester role yet."""


def _api_client(context: str | None) -> Any:
    try:
        import kubernetes
    except ImportError as error:
        raise ClusterError(
            "reading from a cluster needs the kubernetes client: run .venv/bin/pip install -e '.[operator]' in the checkout"
        ) from error

    configuration = kubernetes.client.Configuration()
    try:
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG"), context=context, client_configuration=configuration
            )
    except kubernetes.config.ConfigException as error:
        raise ClusterError(
            f"no usable Kubernetes configuration ({str(error).rstrip('.')}). Set KUBECONFIG or run inside a cluster"
        ) from error
    return kubernetes.client.ApiClient(configuration)


def read_pipeline_document(name: str, namespace: str = "default", context: str | None = None) -> dict[str, Any]:
    """Return the AnomalyPipeline ``namespace/name`` as the API server stores it, status included."""
    client = _api_client(context)  # raises ClusterError when the kubernetes package is missing
    import kubernetes

    with client as api_client:
        api = kubernetes.client.CustomObjectsApi(api_client)
        try:
            document = api.get_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, name)
        except kubernetes.client.exceptions.ApiException as error:
            if error.status == 404:
                raise ClusterError(
                    f"AnomalyPipeline {namespace}/{name} not found: check the name and namespace (kubectl get ap -A)"
                ) from error
            raise ClusterError(
                f"reading AnomalyPipeline {namespace}/{name} failed with HTTP {error.status}: {_reason(error)}"
            ) from error
        except (OSError, kubernetes.client.exceptions.OpenApiException) as error:
            raise ClusterError(f"reading AnomalyPipeline {namespace}/{name} failed: {error}") from error
    return dict(document)


def read_pipeline_from_cluster(
    name: str, namespace: str = "default", context: str | None = None
) -> tuple[Pipeline, str]:
    """Return the pipeline's parsed spec and its tester role ARN from ``status.testerRoleArn``.

    Raises ClusterError when the resource cannot be read or the operator has not written the
    tester role yet, and SpecError when its spec is invalid.
    """
    document = read_pipeline_document(name, namespace, context)
    pipeline = parse_pipeline(document)
    status = document.get("status") or {}
    role_arn = status.get("testerRoleArn")
    if not role_arn:
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        state = (
            f"Ready is {ready.get('status')} ({ready.get('reason')}: {ready.get('message')})"
            if ready
            else "it has no conditions yet"
        )
        raise ClusterError(
            f"AnomalyPipeline {namespace}/{name} has no status.testerRoleArn yet, {state}; "
            f"wait for Ready or run kubectl describe ap {name} -n {namespace}"
        )
    return pipeline, str(role_arn)


def _reason(error: Any) -> str:
    try:
        return str(json.loads(error.body).get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)
