"""Temporary credentials for the tester: AssumeRole on the pipeline's tester role."""

from __future__ import annotations

import getpass
import re
from typing import Any

from anomaly_pipeline.aws import Aws
from anomaly_pipeline.spec import Pipeline


def role_arn(aws: Aws, role_name: str) -> str:
    return str(aws.client("iam").get_role(RoleName=role_name)["Role"]["Arn"])


def session_name() -> str:
    """Return a role session name that says who assumed the role (2-64 characters IAM accepts)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return ("anomaly-tester-" + re.sub(r"[^\w+=,.@-]", "-", user))[:64]


def assume_role(aws: Aws, arn: str, duration_seconds: int) -> dict[str, Any]:
    """Return the AssumeRole response (Credentials, AssumedRoleUser), as ``aws sts assume-role`` prints it."""
    response = aws.client("sts").assume_role(
        RoleArn=arn, RoleSessionName=session_name(), DurationSeconds=duration_seconds
    )
    credentials = dict(response["Credentials"])
    credentials["Expiration"] = credentials["Expiration"].isoformat()
    return {"Credentials": credentials, "AssumedRoleUser": dict(response["AssumedRoleUser"])}


def tester_credentials(aws: Aws, pipeline: Pipeline, arn: str | None = None) -> dict[str, Any]:
    """Assume the pipeline's tester role; return assume-role output plus streams and region."""
    result = assume_role(aws, arn or role_arn(aws, pipeline.tester_role_name), pipeline.tester_session_seconds)
    result.update(inputStream=pipeline.input.name, outputStream=pipeline.output.name, region=pipeline.region)
    return result


def export_lines(credentials: dict[str, Any], region: str, endpoint_url: str | None) -> list[str]:
    """Return shell ``export`` lines for the assumed role's credentials."""
    values = credentials["Credentials"]
    lines = [
        f"export AWS_ACCESS_KEY_ID={values['AccessKeyId']}",
        f"export AWS_SECRET_ACCESS_KEY={values['SecretAccessKey']}",
        f"export AWS_SESSION_TOKEN={values['SessionToken']}",
        f"export AWS_REGION={region}",
        # AWS CLI v1 and boto3 before 1.35 read only AWS_DEFAULT_REGION.
        f"export AWS_DEFAULT_REGION={region}",
    ]
    if endpoint_url:
        lines.append(f"export AWS_ENDPOINT_URL={endpoint_url}")
    return lines
