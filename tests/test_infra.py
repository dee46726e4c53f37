"""infra/: the eksctl cluster file and the IAM policies, checked without an AWS account.

eksctl is in none of the package registries the suite can reach, so ``eksctl.yaml`` is
checked for its structure and for the names the chart and the runbook rely on. Every IAM
policy in ``infra/`` and every policy the provisioning library generates is linted with
parliament. A finding is accepted only when ``ACCEPTED_FINDINGS`` gives the reason, and an
accepted finding that no longer occurs fails too, so the list cannot go stale. The
operator policy is also compared with the AWS calls the provisioning library makes.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any, Final

import boto3
import pytest
import yaml
from anomaly_pipeline import policies
from anomaly_pipeline.spec import load_pipeline_file
from parliament import analyze_policy_string

from tests.tools.helm import KUBE_VERSION
from tests.tools.paths import REPO_ROOT

INFRA: Final = REPO_ROOT / "infra"
EKSCTL: Final = INFRA / "eksctl.yaml"
OPERATOR_POLICY: Final = INFRA / "operator-policy.json"
BOUNDARY_POLICY: Final = INFRA / "permissions-boundary.json"
PROVISIONING: Final = REPO_ROOT / "pipeline" / "anomaly_pipeline" / "provisioning.py"
OPERATOR_PACKAGE: Final = REPO_ROOT / "operator" / "anomaly_operator"

ACCOUNT: Final = "123456789012"
REGION: Final = "eu-west-1"
BOUNDARY_ARN: Final = f"arn:aws:iam::{ACCOUNT}:policy/anomaly-pipeline-boundary"
ROLE_PATH: Final = "/anomaly-pipeline/"
OIDC_ISSUER: Final = "https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"

# (policy name, parliament issue, detail fragment) -> why the finding is accepted.
ACCEPTED_FINDINGS: Final = {
    ("operator-policy.json", "PERMISSIONS_MANAGEMENT_ACTIONS", ""): (
        "The operator creates and deletes the pipelines' IAM roles, so it needs IAM permissions "
        "management. CreateRole, PutRolePermissionsBoundary and PutRolePolicy require the "
        "permissions boundary, and every IAM action is limited to roles under /anomaly-pipeline/."
    ),
    ("operator-policy.json", "RESOURCE_MISMATCH", "kinesis:UpdateShardCount"): (
        "parliament 1.6.4's bundled action table lists no resource type for kinesis:UpdateShardCount "
        "and so expects Resource '*'. The operator only resizes its own streams, so the policy keeps "
        "the stream prefixes."
    ),
    ("operator-policy.json", "MISMATCHED_TYPE_BUT_USABLE", "StringEquals"): (
        "iam:PermissionsBoundary compared with StringEquals against the boundary ARN, the form AWS's "
        "IAM documentation uses for delegating role creation with a permissions boundary; parliament "
        "itself calls it usable."
    ),
    ("irsa-trust", "MALFORMED", "Resource"): (
        "A role trust policy names a Principal and has no Resource; parliament lints it as an identity policy."
    ),
    ("irsa-trust", "UNKNOWN_FEDERATION_SOURCE", "oidc-provider/oidc.eks."): (
        "The federated principal is the cluster's EKS OIDC provider, which parliament does not know."
    ),
    ("account-trust", "MALFORMED", "Resource"): (
        "A role trust policy names a Principal and has no Resource; parliament lints it as an identity policy."
    ),
}


def load_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def generated_policies() -> dict[str, dict[str, Any]]:
    """The policies the provisioning library writes for the example pipeline."""
    pipeline = load_pipeline_file(str(REPO_ROOT / "examples" / "pipeline.yaml"))
    input_arn = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{pipeline.input.name}"
    output_arn = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{pipeline.output.name}"
    table_arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{pipeline.checkpoint_table}"
    provider_arn = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{OIDC_ISSUER.removeprefix('https://')}"
    return {
        "processor-policy": policies.processor_policy(input_arn, output_arn, table_arn),
        # A dead-letter stream named under an allowed prefix, such as anomaly-dead-letter-.
        "processor-policy-dead-letter": policies.processor_policy(
            input_arn,
            output_arn,
            table_arn,
            f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/anomaly-dead-letter-default-payments",
        ),
        "tester-policy": policies.tester_policy(input_arn, output_arn),
        "irsa-trust": policies.irsa_trust_policy(provider_arn, OIDC_ISSUER, pipeline.namespace, "payments-processor"),
        "account-trust": policies.account_trust_policy(pipeline.tester_principals),
    }


def all_policies() -> dict[str, dict[str, Any]]:
    found = {path.name: load_json(path) for path in sorted(INFRA.glob("*.json"))}
    return found | generated_policies()


def findings_of(policy: dict[str, Any]) -> list[tuple[str, str]]:
    analysis = analyze_policy_string(json.dumps(policy), include_community_auditors=True)
    return [(finding.issue, json.dumps(finding.detail) + finding.title) for finding in analysis.findings]


def accepted_reason(name: str, issue: str, detail: str) -> str | None:
    for (policy, accepted_issue, fragment), reason in ACCEPTED_FINDINGS.items():
        if policy == name and accepted_issue == issue and fragment in detail:
            return reason
    return None


# --- parliament --------------------------------------------------------------------------


def test_infra_holds_operator_and_boundary_policies() -> None:
    assert {path.name for path in INFRA.glob("*.json")} == {"operator-policy.json", "permissions-boundary.json"}


@pytest.mark.parametrize("name", sorted(all_policies()))
def test_policy_has_no_unexplained_parliament_finding(name: str) -> None:
    policy = all_policies()[name]
    unexplained = [
        (issue, detail) for issue, detail in findings_of(policy) if accepted_reason(name, issue, detail) is None
    ]
    assert unexplained == []


def test_every_accepted_finding_still_occurs() -> None:
    policies_by_name = all_policies()
    findings = {name: findings_of(policy) for name, policy in policies_by_name.items()}
    for policy_name, issue, fragment in ACCEPTED_FINDINGS:
        occurs = any(found == issue and fragment in detail for found, detail in findings[policy_name])
        assert occurs, f"{policy_name}: {issue} ({fragment}) no longer occurs; remove it from ACCEPTED_FINDINGS"


def test_parliament_reports_a_wildcard_grant() -> None:
    """parliament does flag an over-broad policy, so a clean result above means something."""
    broad = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iam:*", "Resource": "*"}]}
    issues = {issue for issue, _ in findings_of(broad)}
    assert issues & {"PERMISSIONS_MANAGEMENT_ACTIONS", "RESOURCE_STAR", "PRIVILEGE_ESCALATION"}


# --- the operator policy -----------------------------------------------------------------


def statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    result = []
    for statement in policy["Statement"]:
        actions = statement["Action"]
        resources = statement["Resource"]
        result.append(
            {
                **statement,
                "Action": [actions] if isinstance(actions, str) else list(actions),
                "Resource": [resources] if isinstance(resources, str) else list(resources),
            }
        )
    return result


def called_actions() -> set[str]:
    """IAM actions of every Kinesis, DynamoDB and IAM client call in provisioning and the operator."""
    sources = [PROVISIONING, *sorted(OPERATOR_PACKAGE.glob("*.py"))]
    actions: set[str] = set()
    for service in ("kinesis", "dynamodb", "iam"):
        client = boto3.client(service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
        mapping = client.meta.method_to_api_mapping
        for source in sources:
            for method in re.findall(rf"\b{service}\.([a-z_]+)\(", source.read_text(encoding="utf-8")):
                if method in mapping:
                    actions.add(f"{service}:{mapping[method]}")
    return actions


# Actions the policy needs beyond the API calls themselves.
IMPLIED_ACTIONS: Final = {
    "iam:TagRole": "CreateRole with Tags also needs iam:TagRole.",
    "dynamodb:TagResource": "CreateTable with Tags also needs dynamodb:TagResource.",
}


def test_operator_policy_allows_every_call_it_makes() -> None:
    allowed = {action for s in statements(load_json(OPERATOR_POLICY)) for action in s["Action"]}
    called = called_actions()
    assert "kinesis:CreateStream" in called
    assert "iam:CreateRole" in called
    assert called - allowed == set()


def test_operator_policy_allows_nothing_it_does_not_call() -> None:
    allowed = {action for s in statements(load_json(OPERATOR_POLICY)) for action in s["Action"]}
    assert allowed - called_actions() - set(IMPLIED_ACTIONS) == set()


def test_operator_policy_has_no_wildcards_and_allows_only() -> None:
    for statement in statements(load_json(OPERATOR_POLICY)):
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            assert "*" not in action, action
        for resource in statement["Resource"]:
            assert resource != "*"
            assert resource.count("*") == 1, resource
            assert resource.endswith("*"), resource


EXPECTED_RESOURCES: Final = {
    "kinesis": {
        f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/ingest-*",
        f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/anomaly-*",
    },
    "dynamodb": {f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/anomaly-checkpoints-*"},
    "iam": {f"arn:aws:iam::{ACCOUNT}:role/anomaly-pipeline/*"},
}


def test_operator_policy_limits_resources_to_allowed_prefixes() -> None:
    for statement in statements(load_json(OPERATOR_POLICY)):
        services = {action.split(":")[0] for action in statement["Action"]}
        assert len(services) == 1, statement["Sid"]
        [service] = services
        resources = set(statement["Resource"])
        if statement["Sid"] == "LookUpPipelineRolesByName":
            # Reads only, on the role name prefix without the role path: see the next test.
            assert resources == {f"arn:aws:iam::{ACCOUNT}:role/anomaly-*"}
            continue
        if statement["Action"] == ["kinesis:StartStreamEncryption"]:
            # Encrypting with the AWS-managed key also authorizes against that KMS key.
            assert resources - EXPECTED_RESOURCES["kinesis"] == {f"arn:aws:kms:{REGION}:{ACCOUNT}:key/*"}
            continue
        assert resources == EXPECTED_RESOURCES[service], statement["Sid"]


def test_role_lookup_without_path_only_reads() -> None:
    # The operator looks a role up by name (GetRole, ListRoleTags) before it has checked that the role
    # exists. IAM may authorize a request for a missing role against an ARN without the role path,
    # so the path-scoped statement alone could turn NoSuchEntity into AccessDenied.
    [lookup] = [s for s in statements(load_json(OPERATOR_POLICY)) if s["Sid"] == "LookUpPipelineRolesByName"]
    assert sorted(lookup["Action"]) == ["iam:GetRole", "iam:ListRoleTags"]
    assert "Condition" not in lookup


def test_role_creation_requires_permissions_boundary() -> None:
    guarded = {"iam:CreateRole", "iam:PutRolePermissionsBoundary", "iam:PutRolePolicy"}
    seen: set[str] = set()
    for statement in statements(load_json(OPERATOR_POLICY)):
        actions = set(statement["Action"])
        if actions & guarded:
            assert actions <= guarded, f"{statement['Sid']} mixes guarded and unguarded actions"
            assert statement["Condition"] == {"StringEquals": {"iam:PermissionsBoundary": BOUNDARY_ARN}}
            seen |= actions
        else:
            assert "Condition" not in statement
    assert seen == guarded


def test_operator_policy_prefixes_match_chart_and_spec_defaults() -> None:
    from anomaly_operator.settings import DEFAULT_ALLOWED_PREFIXES

    values = yaml.safe_load((REPO_ROOT / "charts" / "anomaly-operator" / "values.yaml").read_text(encoding="utf-8"))
    assert tuple(values["settings"]["allowedPrefixes"]) == DEFAULT_ALLOWED_PREFIXES
    assert values["settings"]["rolePath"] == ROLE_PATH
    assert values["settings"]["permissionsBoundaryArn"] == BOUNDARY_ARN
    stream_patterns = EXPECTED_RESOURCES["kinesis"]
    for prefix in ("ingest-", "anomaly-"):
        assert f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{prefix}*" in stream_patterns


def test_example_pipeline_resources_fall_under_operator_policy() -> None:
    pipeline = load_pipeline_file(str(REPO_ROOT / "examples" / "pipeline.yaml"))
    names = {
        "kinesis": [
            f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{pipeline.input.name}",
            f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{pipeline.output.name}",
        ],
        "dynamodb": [f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{pipeline.checkpoint_table}"],
        "iam": [
            f"arn:aws:iam::{ACCOUNT}:role{pipeline.role_path}{pipeline.processor_role_name}",
            f"arn:aws:iam::{ACCOUNT}:role{pipeline.role_path}{pipeline.tester_role_name}",
        ],
    }
    # The operator accepts any role path under its own, such as /anomaly-pipeline/team-a/.
    names["iam"].append(f"arn:aws:iam::{ACCOUNT}:role/anomaly-pipeline/team-a/anomaly-team-a-payments-processor")
    for service, arns in names.items():
        for arn in arns:
            assert any(fnmatch.fnmatchcase(arn, pattern) for pattern in EXPECTED_RESOURCES[service]), arn

    outside = [
        f"arn:aws:iam::{ACCOUNT}:role/anomaly-default-payments-processor",
        f"arn:aws:iam::{ACCOUNT}:role/other/anomaly-default-payments-processor",
        f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/orders",
        f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/orders",
    ]
    for arn in outside:
        patterns = {pattern for group in EXPECTED_RESOURCES.values() for pattern in group}
        assert not any(fnmatch.fnmatchcase(arn, pattern) for pattern in patterns), arn


# --- the permissions boundary ------------------------------------------------------------


def boundary_allows(action: str, resource: str) -> bool:
    for statement in statements(load_json(BOUNDARY_POLICY)):
        if statement["Effect"] != "Allow" or action not in statement["Action"]:
            continue
        if any(fnmatch.fnmatchcase(resource, pattern) for pattern in statement["Resource"]):
            return True
    return False


@pytest.mark.parametrize("name", ["processor-policy", "processor-policy-dead-letter", "tester-policy"])
def test_boundary_permits_what_pipeline_roles_need(name: str) -> None:
    policy = generated_policies()[name]
    for statement in statements(policy):
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                assert boundary_allows(action, resource), f"the boundary would block {action} on {resource}"


def test_boundary_grants_no_management_actions() -> None:
    for statement in statements(load_json(BOUNDARY_POLICY)):
        for action in statement["Action"]:
            service, name = action.split(":")
            assert service in {"kinesis", "dynamodb"}, action
            assert not name.startswith(("Create", "Delete", "Update", "Tag", "Untag", "Put")) or name in {
                "PutRecord",
                "PutRecords",
                "PutItem",
                "UpdateItem",
                "DeleteItem",
            }, action
        for resource in statement["Resource"]:
            assert resource != "*"


# --- eksctl.yaml -------------------------------------------------------------------------

# The keys eksctl's ClusterConfig (eksctl.io/v1alpha5) accepts where this file uses them.
EKSCTL_KEYS: Final = {
    "": {"apiVersion", "kind", "metadata", "iam", "managedNodeGroups", "cloudWatch"},
    "metadata": {"name", "region", "version", "tags"},
    "iam": {"withOIDC", "serviceAccounts"},
    "serviceAccount": {"metadata", "roleName", "roleOnly", "attachPolicyARNs"},
    "managedNodeGroup": {
        "name",
        "instanceType",
        "amiFamily",
        "minSize",
        "desiredCapacity",
        "maxSize",
        "volumeSize",
        "privateNetworking",
        "labels",
        "disableIMDSv1",
        "disablePodIMDS",
    },
}


def eksctl() -> dict[str, Any]:
    return dict(yaml.safe_load(EKSCTL.read_text(encoding="utf-8")))


def test_eksctl_uses_only_known_keys() -> None:
    config = eksctl()
    assert set(config) <= EKSCTL_KEYS[""]
    assert set(config["metadata"]) <= EKSCTL_KEYS["metadata"]
    assert set(config["iam"]) <= EKSCTL_KEYS["iam"]
    for account in config["iam"]["serviceAccounts"]:
        assert set(account) <= EKSCTL_KEYS["serviceAccount"]
    for group in config["managedNodeGroups"]:
        assert set(group) <= EKSCTL_KEYS["managedNodeGroup"]


def test_eksctl_cluster_in_eu_west_1_with_oidc() -> None:
    config = eksctl()
    assert config["apiVersion"] == "eksctl.io/v1alpha5"
    assert config["kind"] == "ClusterConfig"
    assert config["metadata"]["region"] == REGION
    assert re.fullmatch(r"1\.\d+", config["metadata"]["version"])
    # The charts are validated against the same Kubernetes minor version.
    assert KUBE_VERSION.startswith(config["metadata"]["version"] + ".")
    assert config["iam"]["withOIDC"] is True


def test_eksctl_managed_node_group_is_amd64_and_sized() -> None:
    [group] = eksctl()["managedNodeGroups"]
    assert not re.match(r"^[a-z]\d+g", group["instanceType"]), "Graviton (arm64) cannot run the operator image's helm"
    assert 1 <= group["minSize"] <= group["desiredCapacity"] <= group["maxSize"]
    assert group["disableIMDSv1"] is True
    assert group["disablePodIMDS"] is True


def test_eksctl_operator_service_account_matches_chart() -> None:
    [account] = eksctl()["iam"]["serviceAccounts"]
    assert account["metadata"] == {
        "name": "anomaly-operator",
        "namespace": "anomaly-system",
        "labels": {"app.kubernetes.io/part-of": "anomaly-pipeline"},
    }
    assert account["attachPolicyARNs"] == [f"arn:aws:iam::{ACCOUNT}:policy/anomaly-pipeline-operator"]
    assert account["roleOnly"] is False

    scenario = yaml.safe_load(
        (REPO_ROOT / "charts" / "anomaly-operator" / "ci" / "resources-values.yaml").read_text(encoding="utf-8")
    )
    assert scenario["serviceAccount"] == {"create": False, "name": account["metadata"]["name"]}


def test_runbook_uses_infra_names() -> None:
    runbook = (REPO_ROOT / "docs" / "deploy-eks.md").read_text(encoding="utf-8")
    assert "infra/eksctl.yaml" in runbook
    assert "infra/operator-policy.json" in runbook
    assert "infra/permissions-boundary.json" in runbook
    assert "anomaly-pipeline-operator" in runbook
    assert "anomaly-pipeline-boundary" in runbook
    assert "--namespace anomaly-system" in runbook
