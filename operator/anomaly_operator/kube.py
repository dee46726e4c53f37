"""Create, read, merge-patch and delete the processor's namespaced objects through the Kubernetes API.

The operator applies what ``helm template`` rendered, so it needs a client for a handful of
kinds, not a generic one: ``RESOURCES`` maps each kind the processor chart can render to its
API path. Objects are created when missing and merge-patched (RFC 7386) when the rendered
fields differ from the live ones. Live fields that the chart does not set are left alone.

Credentials come from the pod's service account in a cluster, else from the kubeconfig
(``KUBECONFIG``, read when ``load_configuration`` runs, or ``~/.kube/config``). The same
configuration gives kopf its login, so both talk to the same API server.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import kopf

from anomaly_operator.errors import KubernetesApiError

MERGE_PATCH: Final = "application/merge-patch+json"


@dataclass(frozen=True)
class ResourcePath:
    """The API location of a kind: ``/api/v1`` or ``/apis/<group>/<version>``, and its plural."""

    api_version: str
    plural: str

    def collection(self, namespace: str) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


# Every kind the anomaly-processor chart renders. The operator's ClusterRole must grant each.
RESOURCES: Final[Mapping[tuple[str, str], ResourcePath]] = {
    ("v1", "ServiceAccount"): ResourcePath("v1", "serviceaccounts"),
    ("v1", "ConfigMap"): ResourcePath("v1", "configmaps"),
    ("v1", "Service"): ResourcePath("v1", "services"),
    ("apps/v1", "Deployment"): ResourcePath("apps/v1", "deployments"),
    ("policy/v1", "PodDisruptionBudget"): ResourcePath("policy/v1", "poddisruptionbudgets"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ResourcePath("monitoring.coreos.com/v1", "servicemonitors"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ResourcePath("monitoring.coreos.com/v1", "prometheusrules"),
}


def resource_path(api_version: str, kind: str) -> ResourcePath:
    """Return the API path of a kind, raising KubernetesApiError for a kind the operator cannot manage."""
    try:
        return RESOURCES[(api_version, kind)]
    except KeyError:
        known = ", ".join(f"{v}/{k}" for v, k in RESOURCES)
        raise KubernetesApiError(
            0, f"the processor chart rendered {api_version}/{kind}, which the operator does not manage; known: {known}"
        ) from None


def load_configuration() -> Any:
    """Return a ``kubernetes.client.Configuration``: in-cluster when possible, else from the kubeconfig."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    return configuration


def connection_info(configuration: Any) -> kopf.ConnectionInfo:
    """Return kopf's login credentials for the same API server and identity as ``configuration``."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    scheme, token = None, None
    if header:
        parts = header.split(" ", 1)
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386) to a copy of ``target`` and return it."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class ObjectApi(Protocol):
    """The calls the operator makes on namespaced objects, which ``KubeClient`` implements."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool: ...


class KubeClient:
    """A small synchronous client for namespaced objects, built on ``kubernetes.client.ApiClient``."""

    def __init__(self, configuration: Any) -> None:
        import kubernetes

        self._api = kubernetes.client.ApiClient(configuration)
        self._api_exception = kubernetes.client.exceptions.ApiException

    def close(self) -> None:
        self._api.close()

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        try:
            return self._api.call_api(
                path,
                method,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                response_type="object",
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=True,
            )
        except self._api_exception as error:
            raise KubernetesApiError(int(error.status or 0), _describe(method, path, error)) from error

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Return the live object, or None when it does not exist."""
        try:
            found = self._call("GET", resource_path(api_version, kind).item(namespace, name))
        except KubernetesApiError as error:
            if error.status == 404:
                return None
            raise
        return dict(found)

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        path = resource_path(manifest["apiVersion"], manifest["kind"]).collection(manifest["metadata"]["namespace"])
        return dict(self._call("POST", path, body=manifest))

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        path = resource_path(api_version, kind).item(namespace, name)
        return dict(self._call("PATCH", path, body=patch, content_type=MERGE_PATCH))

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete the object with background propagation, and return False when it was already gone."""
        path = resource_path(api_version, kind).item(namespace, name)
        try:
            self._call("DELETE", path, body={"propagationPolicy": "Background"})
        except KubernetesApiError as error:
            if error.status == 404:
                return False
            raise
        return True


def _describe(method: str, path: str, error: Any) -> str:
    reason = error.reason
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        reason = json.loads(error.body).get("message") or reason
    return f"{method} {path} failed with HTTP {error.status}: {reason}"
