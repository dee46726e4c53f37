"""IAM policy documents for a pipeline's roles.

Pure functions from ARNs to JSON-ready dicts, so tests can check each action and
resource exactly and ``parliament`` can lint what the code would send to IAM.
"""

from __future__ import annotations

from typing import Any, Final

POLICY_VERSION: Final = "2012-10-17"

# Tester actions: write events like the marketplace, read anomalies like a consumer.
TESTER_INPUT_ACTIONS: Final = (
    "kinesis:PutRecord",
    "kinesis:PutRecords",
    "kinesis:DescribeStream",
    "kinesis:DescribeStreamSummary",
    "kinesis:ListShards",
)
TESTER_OUTPUT_ACTIONS: Final = (
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:DescribeStream",
    "kinesis:DescribeStreamSummary",
    "kinesis:ListShards",
)
# Processor actions: exactly the calls processor/anomaly_processor makes (tests/test_policies.py checks it).
PROCESSOR_INPUT_ACTIONS: Final = (
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:ListShards",
)
PROCESSOR_OUTPUT_ACTIONS: Final = ("kinesis:PutRecords",)
# Malformed records go to the dead-letter stream; only the processor writes it, no one else here reads it.
PROCESSOR_DEAD_LETTER_ACTIONS: Final = ("kinesis:PutRecords",)
PROCESSOR_TABLE_ACTIONS: Final = (
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Scan",
)
# Streams encrypted with the AWS-managed key need no kms:* grant for callers in the same
# account: the key policy of alias/aws/kinesis allows use through Kinesis.


def _statement(sid: str, actions: tuple[str, ...], resource: str) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": resource}


def tester_policy(input_stream_arn: str, output_stream_arn: str) -> dict[str, Any]:
    """Return the tester role's only policy: write the input stream, read the anomaly stream."""
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            _statement("WriteInputStream", TESTER_INPUT_ACTIONS, input_stream_arn),
            _statement("ReadAnomalyStream", TESTER_OUTPUT_ACTIONS, output_stream_arn),
        ],
    }


def processor_policy(
    input_stream_arn: str, output_stream_arn: str, table_arn: str, dead_letter_stream_arn: str | None = None
) -> dict[str, Any]:
    """Return the processor role's only policy: read input, write anomalies and dead letters, use its table."""
    statements = [
        _statement("ReadInputStream", PROCESSOR_INPUT_ACTIONS, input_stream_arn),
        _statement("WriteAnomalyStream", PROCESSOR_OUTPUT_ACTIONS, output_stream_arn),
        _statement("UseCheckpointTable", PROCESSOR_TABLE_ACTIONS, table_arn),
    ]
    if dead_letter_stream_arn is not None:
        statements.append(_statement("WriteDeadLetterStream", PROCESSOR_DEAD_LETTER_ACTIONS, dead_letter_stream_arn))
    return {"Version": POLICY_VERSION, "Statement": statements}


def account_trust_policy(principals: tuple[str, ...]) -> dict[str, Any]:
    """Return a trust policy that lets the given accounts or IAM principals assume the role."""
    arns = [p if p.startswith("arn:") else f"arn:aws:iam::{p}:root" for p in principals]
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": arns if len(arns) > 1 else arns[0]},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def irsa_trust_policy(oidc_provider_arn: str, issuer: str, namespace: str, service_account: str) -> dict[str, Any]:
    """Return a trust policy for IAM Roles for Service Accounts (IRSA) on EKS.

    Only the named service account, with the STS audience, may assume the role. The
    issuer is written without ``https://``, as IAM condition keys expect it.
    """
    host = issuer.removeprefix("https://").rstrip("/")
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": oidc_provider_arn},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        f"{host}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                        f"{host}:aud": "sts.amazonaws.com",
                    }
                },
            }
        ],
    }
