"""The Helm charts: lint, render, validate against Kubernetes schemas, and keep their contracts.

Each chart is rendered over every ``ci/*-values.yaml`` scenario with the pinned Helm
(``make tools``). Built-in objects are validated offline by ``kubernetes-validate`` in
strict mode, so a misspelled field fails. ServiceMonitor and PrometheusRule have no
schema there, so their required fields are checked here and their PromQL is parsed.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
import yaml
from anomaly_processor import metrics
from anomaly_processor.config import DEFAULT_CONFIG_FILE, DEFAULT_METRICS_PORT, from_document
from anomaly_processor.rules import RULE_SET_SCHEMA
from prometheus_client.metrics import MetricWrapperBase

from tests.tools.helm import CHARTS_DIR, KUBE_VERSION, HelmError, find, lint, only, render
from tests.tools.paths import REPO_ROOT

PROCESSOR = CHARTS_DIR / "anomaly-processor"
OPERATOR = CHARTS_DIR / "anomaly-operator"
CHARTS = (PROCESSOR, OPERATOR)
CRD_FILE = "anomalypipelines.anomaly.dev.yaml"
CRD_SOURCE = REPO_ROOT / "crds" / CRD_FILE
CRD_CHART_COPY = OPERATOR / "crds" / CRD_FILE

# Kinds without a schema in kubernetes-validate; their required fields are checked below.
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
SELECTOR_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance"}
STANDARD_LABELS = SELECTOR_LABELS | {
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}
DNS_LABEL_MAX = 63
# Helm accepts release names up to 53 characters; with the chart name added that exceeds 63.
LONG_RELEASE = "a-release-name-of-fifty-three-characters-for-the-test"


def scenarios() -> Iterator[Any]:
    for chart in CHARTS:
        for values in sorted((chart / "ci").glob("*-values.yaml")):
            yield pytest.param(chart, values, id=f"{chart.name}:{values.stem}")


SCENARIOS = list(scenarios())


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every chart rendered with every ci values file, keyed by (chart, values file stem)."""
    return {(chart.name, values.stem): render(chart, [values]) for chart, values in (p.values for p in SCENARIOS)}


def objects_for(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: Path, values: Path
) -> list[dict[str, Any]]:
    return rendered[(chart.name, values.stem)]


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in find(objects, "Deployment")]


# --- Scenarios and Kubernetes validation ------------------------------------------------


def test_each_chart_has_the_four_ci_scenarios() -> None:
    for chart in CHARTS:
        stems = {path.stem for path in (chart / "ci").glob("*-values.yaml")}
        assert stems == {"default-values", "irsa-values", "monitoring-values", "resources-values"}, chart.name


@pytest.mark.parametrize(("chart", "values"), SCENARIOS)
def test_helm_lint_strict_passes(chart: Path, values: Path) -> None:
    output = lint(chart, [values])
    assert "0 chart(s) failed" in output


@pytest.mark.parametrize(("chart", "values"), SCENARIOS)
def test_rendered_objects_pass_strict_kubernetes_schema(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: Path, values: Path
) -> None:
    objects = objects_for(rendered, chart, values)
    assert objects
    for obj in objects:
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} from {chart.name} with {values.name}: {error.message} at {list(error.path)}")


def test_strict_validation_rejects_misspelled_field() -> None:
    """The validator used above does fail on an unknown field, so its passes mean something."""
    objects = render(PROCESSOR)
    deployment = only(objects, "Deployment")
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(("chart", "values"), SCENARIOS)
def test_every_object_has_standard_labels(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: Path, values: Path
) -> None:
    for obj in objects_for(rendered, chart, values):
        labels = obj["metadata"].get("labels", {})
        missing = STANDARD_LABELS - set(labels)
        assert not missing, f"{obj['kind']} lacks {sorted(missing)}"
        assert labels["app.kubernetes.io/name"] == chart.name
        assert labels["app.kubernetes.io/instance"] == "payments"
        assert labels["app.kubernetes.io/part-of"] == "anomaly-pipeline"


@pytest.mark.parametrize(("chart", "values"), SCENARIOS)
def test_selectors_use_only_name_and_instance(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: Path, values: Path
) -> None:
    objects = objects_for(rendered, chart, values)
    for deployment in find(objects, "Deployment"):
        assert set(deployment["spec"]["selector"]["matchLabels"]) == SELECTOR_LABELS
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        for key, value in deployment["spec"]["selector"]["matchLabels"].items():
            assert pod_labels[key] == value
    for service in find(objects, "Service"):
        assert set(service["spec"]["selector"]) == SELECTOR_LABELS
    for budget in find(objects, "PodDisruptionBudget"):
        assert set(budget["spec"]["selector"]["matchLabels"]) == SELECTOR_LABELS
    for monitor in find(objects, "ServiceMonitor"):
        assert set(monitor["spec"]["selector"]["matchLabels"]) == SELECTOR_LABELS


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_selector_stays_same_across_upgrades(chart: Path) -> None:
    before = only(render(chart), "Deployment")
    after = only(render(chart, set_values={"image.tag": "9.9.9", "podLabels.team": "fraud"}), "Deployment")
    assert before["spec"]["selector"] == after["spec"]["selector"]
    assert after["metadata"]["labels"]["app.kubernetes.io/version"] == "9.9.9"


@pytest.mark.parametrize(("chart", "values"), SCENARIOS)
def test_pods_meet_restricted_pod_security(
    rendered: dict[tuple[str, str], list[dict[str, Any]]], chart: Path, values: Path
) -> None:
    for pod in pod_specs(objects_for(rendered, chart, values)):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["runAsNonRoot"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert "privileged" not in context
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_names_cut_to_63_characters(chart: Path) -> None:
    first = render(chart, release=LONG_RELEASE)
    second = render(chart, release=LONG_RELEASE)
    names = [obj["metadata"]["name"] for obj in first]
    assert names == [obj["metadata"]["name"] for obj in second]
    for name in names:
        assert len(name) <= DNS_LABEL_MAX, name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        assert name.startswith(LONG_RELEASE[:40])
    for obj in first:
        for key, value in obj["metadata"]["labels"].items():
            assert len(value) <= DNS_LABEL_MAX, f"{obj['kind']} label {key}={value}"


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_name_is_release_and_chart_name(chart: Path) -> None:
    for obj in render(chart, release="payments"):
        if obj["kind"] != "ClusterRole" and obj["kind"] != "ClusterRoleBinding":
            assert obj["metadata"]["namespace"] == "default"
        assert obj["metadata"]["name"] == f"payments-{chart.name}"


# --- values.yaml and values.schema.json --------------------------------------------------


def load_values(chart: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8")))


def load_schema(chart: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((chart / "values.schema.json").read_text(encoding="utf-8")))


def schema_key_mismatches(schema: dict[str, Any], values: Any, path: str) -> list[str]:
    """List keys that values.yaml and the schema do not both name, under every object with properties."""
    if "properties" not in schema:
        return []
    if values is None and "null" in schema.get("type", []):
        return []
    if not isinstance(values, dict):
        return [f"{path or '(root)'}: schema has properties but values.yaml has {values!r}"]
    problems = [
        f"{path}.{key}: in values.yaml, not in the schema" for key in sorted(set(values) - set(schema["properties"]))
    ]
    problems += [
        f"{path}.{key}: in the schema, not in values.yaml" for key in sorted(set(schema["properties"]) - set(values))
    ]
    for key in sorted(set(values) & set(schema["properties"])):
        problems += schema_key_mismatches(schema["properties"][key], values[key], f"{path}.{key}")
    return problems


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_schema_names_same_keys_as_values(chart: Path) -> None:
    assert schema_key_mismatches(load_schema(chart), load_values(chart), "") == []


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_schema_rejects_unknown_keys_in_every_section(chart: Path) -> None:
    def closed_objects(schema: dict[str, Any], path: str) -> Iterator[str]:
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, f"{path or '(root)'} accepts unknown keys"
            yield path
            for key, child in schema["properties"].items():
                yield from closed_objects(child, f"{path}.{key}")

    sections = list(closed_objects(load_schema(chart), ""))
    assert "" in sections


# Mappings documented by one comment as a whole, because their keys are one value's shape.
WHOLE_VALUES = {"pipeline.rules", "pipeline.detectors"}


def commented_keys(chart: Path) -> tuple[dict[str, bool], dict[str, int]]:
    """Map each key path of values.yaml to whether the line above it is a comment."""
    documented: dict[str, bool] = {}
    lines: dict[str, int] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for number, line in enumerate((chart / "values.yaml").read_text(encoding="utf-8").splitlines(), 1):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([name for _, name in stack] + [match.group(2)])
            stack.append((indent, match.group(2)))
            documented.setdefault(path, previous.lstrip().startswith("#"))
            lines.setdefault(path, number)
        if line.strip():
            previous = line
    return documented, lines


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_every_value_has_a_comment(chart: Path) -> None:
    """Every leaf value needs a comment line right above it; a section's own comment does not count for its keys."""
    documented, lines = commented_keys(chart)

    def undocumented(schema: dict[str, Any], path: str) -> list[str]:
        if "properties" in schema and path not in WHOLE_VALUES:
            return [
                miss
                for key, child in schema["properties"].items()
                for miss in undocumented(child, f"{path}.{key}".lstrip("."))
            ]
        if documented.get(path):
            return []
        return [f"{path} (line {lines.get(path)})"]

    assert undocumented(load_schema(chart), "") == []


@pytest.mark.parametrize(
    ("chart", "key", "value", "expected"),
    [
        (PROCESSOR, "replicas", "2", "Additional property replicas is not allowed"),
        (PROCESSOR, "pipeline.regoin", "eu-west-1", "Additional property regoin is not allowed"),
        (PROCESSOR, "serviceAccount.rolearn", "x", "Additional property rolearn is not allowed"),
        (PROCESSOR, "replicaCount", "two", "replicaCount"),
        (PROCESSOR, "pipeline.startingPosition", "EARLIEST", "startingPosition"),
        (PROCESSOR, "pipeline.pollIntervalMillis", "50", "pollIntervalMillis"),
        (OPERATOR, "setings.accountId", "123456789012", "Additional property setings is not allowed"),
        (OPERATOR, "settings.accountid", "123456789012", "Additional property accountid is not allowed"),
        (OPERATOR, "settings.accountId", "12345", "accountId"),
        (OPERATOR, "rbac.create", "yes", "rbac.create"),
    ],
    ids=lambda value: value.name if isinstance(value, Path) else None,
)
def test_schema_rejects_misspelled_or_mistyped_value(chart: Path, key: str, value: str, expected: str) -> None:
    with pytest.raises(HelmError) as raised:
        render(chart, set_values={key: value})
    assert "don't meet the specifications of the schema" in raised.value.stderr
    assert expected in raised.value.stderr


@pytest.mark.parametrize("chart", CHARTS, ids=lambda c: c.name)
def test_schema_rejects_misspelled_key_in_values_file(chart: Path, tmp_path: Path) -> None:
    typo = tmp_path / "typo-values.yaml"
    typo.write_text("serviceAcount:\n  create: true\n", encoding="utf-8")
    with pytest.raises(HelmError) as raised:
        render(chart, [typo])
    assert "Additional property serviceAcount is not allowed" in raised.value.stderr
    with pytest.raises(HelmError):
        lint(chart, [typo])


def test_processor_rules_schema_is_rule_set_schema_closed() -> None:
    """The rules schema is the CRD's rule set schema, plus rejecting unknown keys as the rule parser does."""
    rules = load_schema(PROCESSOR)["properties"]["pipeline"]["properties"]["rules"]
    assert rules.pop("additionalProperties") is False
    assert rules["properties"]["conditions"]["items"].pop("additionalProperties") is False
    assert rules == RULE_SET_SCHEMA


# --- anomaly-processor: the contract with the processor and the operator ----------------


def test_processor_configmap_is_a_valid_processor_config() -> None:
    values = PROCESSOR / "ci" / "resources-values.yaml"
    configmap = only(render(PROCESSOR, [values]), "ConfigMap")
    document = yaml.safe_load(configmap["data"]["processor.yaml"])
    expected = yaml.safe_load(values.read_text(encoding="utf-8"))["pipeline"]
    assert document == expected

    config = from_document(document, worker_id="test-worker")
    assert config.pipeline == "fraud/cards-eu"
    assert config.input_stream == "ingest-fraud-cards-eu"
    assert config.output_stream == "anomaly-fraud-cards-eu"
    assert config.checkpoint_table == "anomaly-checkpoints-fraud-cards-eu"
    assert config.starting_position == "LATEST"
    assert config.poll_interval_millis == 500
    assert config.required_numeric_fields == ("transaction_amount", "risk_score")
    assert config.as_document() == document
    assert config.rules.conditions[0].value == Decimal("100.0000000001")
    assert config.shadow_detector is not None
    assert config.shadow_detector.name == "stricter-rules"
    assert config.dead_letter_stream == "dead-letter-fraud-cards-eu"
    assert config.reload_interval_seconds == 10


def test_processor_defaults_match_the_example_pipeline() -> None:
    from anomaly_pipeline.spec import load_pipeline_file

    pipeline = load_pipeline_file(str(REPO_ROOT / "examples" / "pipeline.yaml"))
    document = yaml.safe_load(only(render(PROCESSOR), "ConfigMap")["data"]["processor.yaml"])
    assert document["pipeline"] == pipeline.key
    assert document["region"] == pipeline.region
    assert document["inputStream"] == pipeline.input.name
    assert document["outputStream"] == pipeline.output.name
    assert document["checkpointTable"] == pipeline.checkpoint_table
    assert document["rules"] == pipeline.rules.as_dict()
    assert from_document(document, worker_id="test-worker").as_document() == document


def test_processor_container_runs_the_config_file() -> None:
    objects = render(PROCESSOR)
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["anomaly-processor", "--config", DEFAULT_CONFIG_FILE]

    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == str(Path(DEFAULT_CONFIG_FILE).parent)
    assert "subPath" not in mount
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == only(objects, "ConfigMap")["metadata"]["name"]


def test_processor_env_sets_region_worker_and_port() -> None:
    container = only(render(PROCESSOR), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["AWS_REGION"]["value"] == "eu-west-1"
    assert env["ANOMALY_PROCESSOR_WORKER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["ANOMALY_PROCESSOR_METRICS_PORT"]["value"] == str(DEFAULT_METRICS_PORT)


def test_processor_probes_and_metrics_port() -> None:
    objects = render(PROCESSOR)
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["ports"] == [{"name": "metrics", "containerPort": DEFAULT_METRICS_PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] == 30

    service = only(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]


def test_processor_pods_have_no_config_checksum(tmp_path: Path) -> None:
    """Rules reload from the mounted file, so a rules change must not restart the pods."""
    rules = tmp_path / "rules-values.yaml"
    rules.write_text(
        "pipeline:\n  rules:\n    match: all\n    conditions:\n"
        "      - {field: transaction_amount, op: gt, value: 500}\n",
        encoding="utf-8",
    )
    default_objects = render(PROCESSOR)
    changed_objects = render(PROCESSOR, [rules])
    assert only(default_objects, "ConfigMap")["data"] != only(changed_objects, "ConfigMap")["data"]
    default = only(default_objects, "Deployment")
    changed = only(changed_objects, "Deployment")
    assert default["spec"]["template"] == changed["spec"]["template"]
    assert "annotations" not in default["spec"]["template"]["metadata"]


def test_processor_replicas_and_resources_from_values() -> None:
    objects = render(PROCESSOR, [PROCESSOR / "ci" / "resources-values.yaml"])
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "512Mi"}
    assert container["image"].endswith("/anomaly-processor@sha256:" + "0" * 64)
    assert container["env"][-1] == {"name": "LOG_LEVEL", "value": "debug"}
    assert deployment["spec"]["template"]["spec"]["tolerations"][0]["key"] == "dedicated"


def test_processor_irsa_annotations() -> None:
    objects = render(PROCESSOR, [PROCESSOR / "ci" / "irsa-values.yaml"])
    account = only(objects, "ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/anomaly-pipeline/anomaly-default-payments-processor",
        "eks.amazonaws.com/sts-regional-endpoints": "true",
    }
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_processor_without_role_arn_has_no_annotation() -> None:
    account = only(render(PROCESSOR), "ServiceAccount")
    assert "annotations" not in account["metadata"]


def test_processor_existing_service_account_needs_name() -> None:
    with pytest.raises(HelmError) as raised:
        render(PROCESSOR, set_values={"serviceAccount.create": "false"})
    assert "serviceAccount.name must name an existing ServiceAccount" in raised.value.stderr
    objects = render(PROCESSOR, set_values={"serviceAccount.create": "false", "serviceAccount.name": "shared"})
    assert find(objects, "ServiceAccount") == []
    assert only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "shared"


def test_processor_monitoring_objects_only_when_enabled() -> None:
    default = render(PROCESSOR)
    assert find(default, "ServiceMonitor") == []
    assert find(default, "PrometheusRule") == []
    enabled = render(PROCESSOR, [PROCESSOR / "ci" / "monitoring-values.yaml"])
    assert len(find(enabled, "ServiceMonitor")) == 1
    assert len(find(enabled, "PrometheusRule")) == 1


def test_service_monitor_has_required_fields() -> None:
    objects = render(PROCESSOR, [PROCESSOR / "ci" / "monitoring-values.yaml"])
    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"] == only(objects, "Service")["spec"]["selector"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    assert endpoint["scrapeTimeout"] == "5s"


def alert_rules() -> list[dict[str, Any]]:
    rule = only(render(PROCESSOR, [PROCESSOR / "ci" / "monitoring-values.yaml"]), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    [group] = rule["spec"]["groups"]
    assert group["name"]
    return list(group["rules"])


def test_prometheus_rule_has_required_fields() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == {
        "AnomalyProcessorIteratorAgeHigh",
        "AnomalyProcessorForwardErrors",
        "AnomalyProcessorMalformedRecords",
    }
    for rule in rules:
        assert rule["expr"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] == "warning"
        assert rule["labels"]["pipeline"] == "default/payments"
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_prometheus_rule_expressions_parse() -> None:
    for rule in alert_rules():
        try:
            promql_parser.parse(rule["expr"])
        except ValueError as error:
            pytest.fail(f"{rule['alert']}: invalid PromQL {rule['expr']!r}: {error}")


def test_prometheus_rule_selects_this_release() -> None:
    for rule in alert_rules():
        assert 'namespace="default"' in rule["expr"], rule["alert"]
        assert 'service="payments-anomaly-processor"' in rule["expr"], rule["alert"]
    by_name = {r["alert"]: r for r in alert_rules()}
    assert by_name["AnomalyProcessorIteratorAgeHigh"]["expr"].endswith("> 30000")


def exported_metric_names() -> set[str]:
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                suffix = "_total" if family.type == "counter" else ""
                names.add(family.name + suffix)
    return names


def test_alerts_use_metrics_the_processor_exports() -> None:
    exported = exported_metric_names()
    assert "anomaly_processor_millis_behind_latest" in exported
    for rule in alert_rules():
        used = set(re.findall(r"anomaly_processor_[a-z_]+", rule["expr"]))
        assert used, rule["alert"]
        assert used & exported, f"{rule['alert']} selects none of the exported metrics: {sorted(used)}"
        for name in used - exported:
            pytest.fail(f"{rule['alert']} selects {name}, which anomaly_processor.metrics does not export")


def test_processor_disruption_budget_allows_drain() -> None:
    budget = only(render(PROCESSOR), "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert find(render(PROCESSOR, set_values={"podDisruptionBudget.enabled": "false"}), "PodDisruptionBudget") == []


# --- anomaly-operator --------------------------------------------------------------------


def operator_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    container = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value", "") for item in container["env"]}


def test_operator_runs_one_replica_with_recreate() -> None:
    deployment = only(render(OPERATOR, [OPERATOR / "ci" / "resources-values.yaml"]), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["kopf", "run"]
    assert "--standalone" in container["command"]
    assert "--all-namespaces" in container["command"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_operator_settings_become_environment() -> None:
    env = operator_env(render(OPERATOR, [OPERATOR / "ci" / "resources-values.yaml"]))
    assert (
        env["ANOMALY_OPERATOR_OIDC_ISSUER"]
        == "https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
    )
    assert env["ANOMALY_OPERATOR_ACCOUNT_ID"] == "210987654321"
    assert env["ANOMALY_OPERATOR_REGION"] == "eu-west-1"
    assert env["ANOMALY_OPERATOR_ALLOWED_PREFIXES"] == "ingest-,anomaly-,anomaly-checkpoints-"
    assert env["ANOMALY_OPERATOR_ROLE_PATH"] == "/anomaly-pipeline/"
    assert (
        env["ANOMALY_OPERATOR_PERMISSIONS_BOUNDARY_ARN"] == "arn:aws:iam::210987654321:policy/anomaly-pipeline-boundary"
    )
    assert (
        env["ANOMALY_OPERATOR_PROCESSOR_IMAGE"]
        == "210987654321.dkr.ecr.eu-west-1.amazonaws.com/anomaly-processor:0.1.0"
    )


def test_operator_env_is_read_by_operator_settings() -> None:
    from anomaly_operator import settings

    for values in sorted((OPERATOR / "ci").glob("*-values.yaml")):
        env = operator_env(render(OPERATOR, [values]))
        names = {name for name in env if name.startswith("ANOMALY_OPERATOR_")}
        declared = {value for key, value in vars(settings).items() if key.startswith("ENV_")}
        assert names - declared == set(), f"{values.name}: the operator reads no such variable"
        # The image, not the chart, sets the helm binary and the chart directory.
        assert declared - names == {settings.ENV_HELM, settings.ENV_PROCESSOR_CHART}

        parsed = settings.OperatorSettings.from_env(env)
        assert parsed.account_id == env["ANOMALY_OPERATOR_ACCOUNT_ID"]
        assert parsed.allowed_prefixes == ("ingest-", "anomaly-", "anomaly-checkpoints-")
        assert parsed.processor_image == env["ANOMALY_OPERATOR_PROCESSOR_IMAGE"]
        assert parsed.verify_interval_seconds == 300


def test_operator_derives_processor_image_from_own() -> None:
    env = operator_env(
        render(
            OPERATOR, set_values={"image.repository": "registry.example/team/anomaly-operator", "image.tag": "1.2.3"}
        )
    )
    assert env["ANOMALY_OPERATOR_PROCESSOR_IMAGE"] == "registry.example/team/anomaly-processor:1.2.3"


def test_operator_irsa_annotations() -> None:
    objects = render(OPERATOR, [OPERATOR / "ci" / "irsa-values.yaml"])
    assert only(objects, "ServiceAccount")["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/anomaly-operator",
        "eks.amazonaws.com/sts-regional-endpoints": "true",
    }


def test_operator_binding_names_the_eksctl_service_account() -> None:
    objects = render(OPERATOR, [OPERATOR / "ci" / "resources-values.yaml"])
    assert find(objects, "ServiceAccount") == []
    binding = only(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "anomaly-operator", "namespace": "default"}]
    assert binding["roleRef"]["name"] == only(objects, "ClusterRole")["metadata"]["name"]
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "anomaly-operator"


EXPECTED_RULES = {
    ("anomaly.dev", "anomalypipelines"): {"list", "watch", "patch"},
    ("anomaly.dev", "anomalypipelines/status"): {"patch"},
    ("anomaly.dev", "anomalypipelines/finalizers"): {"update"},
    ("", "events"): {"create"},
    ("", "configmaps"): {"get", "create", "patch", "delete"},
    ("", "serviceaccounts"): {"get", "create", "patch", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"get", "create", "patch", "delete"},
    ("", "namespaces"): {"list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
MONITORING_RULES = {
    ("monitoring.coreos.com", "servicemonitors"): {"get", "create", "patch", "delete"},
    ("monitoring.coreos.com", "prometheusrules"): {"get", "create", "patch", "delete"},
}


def granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"]
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource)
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_operator_cluster_role_is_exactly_what_it_needs() -> None:
    assert granted(only(render(OPERATOR), "ClusterRole")) == EXPECTED_RULES
    with_monitoring = only(render(OPERATOR, [OPERATOR / "ci" / "monitoring-values.yaml"]), "ClusterRole")
    assert granted(with_monitoring) == EXPECTED_RULES | MONITORING_RULES


def test_operator_cluster_role_rules_each_have_a_comment() -> None:
    lines = (OPERATOR / "templates" / "clusterrole.yaml").read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(starts) >= len({group for group, _ in EXPECTED_RULES})
    for index in starts:
        above = lines[index - 1].strip()
        assert above.startswith("#"), f"rule at line {index + 1} has no comment above it"


def test_operator_rbac_can_be_turned_off() -> None:
    objects = render(OPERATOR, set_values={"rbac.create": "false"})
    assert find(objects, "ClusterRole") == []
    assert find(objects, "ClusterRoleBinding") == []


def test_operator_crd_copy_equals_source() -> None:
    if not CRD_SOURCE.exists():
        pytest.skip(f"{CRD_SOURCE.relative_to(REPO_ROOT)} does not exist yet, so there is nothing to copy")
    assert CRD_CHART_COPY.exists(), (
        f"copy it: cp {CRD_SOURCE.relative_to(REPO_ROOT)} {CRD_CHART_COPY.relative_to(REPO_ROOT)}"
    )
    assert CRD_CHART_COPY.read_bytes() == CRD_SOURCE.read_bytes(), (
        f"{CRD_CHART_COPY.relative_to(REPO_ROOT)} differs from {CRD_SOURCE.relative_to(REPO_ROOT)}: copy it again"
    )


def test_operator_crd_renders_and_validates() -> None:
    if not CRD_CHART_COPY.exists():
        pytest.skip(f"{CRD_CHART_COPY.relative_to(REPO_ROOT)} does not exist yet")
    crd = only(render(OPERATOR, include_crds=True), "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "anomalypipelines.anomaly.dev"
    kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)


# --- NOTES.txt ---------------------------------------------------------------------------


def render_notes(
    chart: Path,
    tmp_path: Path,
    set_values: dict[str, str] | None = None,
    set_string_values: dict[str, str] | None = None,
) -> str:
    """Render NOTES.txt, which helm template skips, by wrapping it in a ConfigMap of a chart copy."""
    copy = tmp_path / chart.name
    shutil.copytree(chart, copy)
    notes = (copy / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (copy / "templates" / "_notes_check.tpl").write_text(
        '{{- define "notes-check" -}}\n' + notes + "\n{{- end }}\n", encoding="utf-8"
    )
    (copy / "templates" / "notes-check.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-check\ndata:\n  notes: {{ include "notes-check" . | quote }}\n',
        encoding="utf-8",
    )
    objects = render(copy, set_values=set_values, set_string_values=set_string_values)
    return str(next(o for o in find(objects, "ConfigMap") if o["metadata"]["name"] == "notes-check")["data"]["notes"])


def test_processor_notes_name_real_port_and_objects(tmp_path: Path) -> None:
    notes = render_notes(PROCESSOR, tmp_path)
    assert "port-forward service/payments-anomaly-processor 8080:8080" in notes
    assert "curl http://127.0.0.1:8080/metrics" in notes
    assert "curl http://127.0.0.1:8080/readyz" in notes
    assert "deployment/payments-anomaly-processor" in notes
    assert "ingest-default-payments" in notes
    assert "anomaly-default-payments" in notes
    assert "No serviceAccount.roleArn is set" in notes


def test_processor_notes_follow_service_port(tmp_path: Path) -> None:
    notes = render_notes(
        PROCESSOR, tmp_path, {"service.port": "9090", "serviceAccount.roleArn": "arn:aws:iam::123456789012:role/p"}
    )
    assert "port-forward service/payments-anomaly-processor 8080:9090" in notes
    assert "No serviceAccount.roleArn is set" not in notes


def test_operator_notes_warn_about_example_account(tmp_path: Path) -> None:
    notes = render_notes(OPERATOR, tmp_path)
    assert "settings.accountId is still the example" in notes
    assert "deployment/payments-anomaly-operator" in notes
    assert "kubectl get ap" in notes
    real = render_notes(OPERATOR, tmp_path / "real", set_string_values={"settings.accountId": "210987654321"})
    assert "still the example" not in real
