"""The operator's settings: one typed object, read from ``ANOMALY_OPERATOR_*`` environment variables.

The operator chart sets these variables from its ``settings`` values. Each field's comment
gives its unit, default and reason. ``OperatorSettings.from_env`` raises ``SettingsError``
naming the variable, the value and the fix, so a misconfigured operator stops at startup
instead of failing on the first pipeline. Checking a pipeline against these settings
(allowed prefixes, role path, boundary) happens in ``policy``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from anomaly_pipeline import spec

ENV_OIDC_ISSUER: Final = "ANOMALY_OPERATOR_OIDC_ISSUER"
ENV_ACCOUNT_ID: Final = "ANOMALY_OPERATOR_ACCOUNT_ID"
ENV_REGION: Final = "ANOMALY_OPERATOR_REGION"
ENV_ALLOWED_PREFIXES: Final = "ANOMALY_OPERATOR_ALLOWED_PREFIXES"
ENV_ROLE_PATH: Final = "ANOMALY_OPERATOR_ROLE_PATH"
ENV_PERMISSIONS_BOUNDARY_ARN: Final = "ANOMALY_OPERATOR_PERMISSIONS_BOUNDARY_ARN"
ENV_PROCESSOR_IMAGE: Final = "ANOMALY_OPERATOR_PROCESSOR_IMAGE"
ENV_HELM: Final = "ANOMALY_OPERATOR_HELM"
ENV_PROCESSOR_CHART: Final = "ANOMALY_OPERATOR_PROCESSOR_CHART"
ENV_VERIFY_INTERVAL_SECONDS: Final = "ANOMALY_OPERATOR_VERIFY_INTERVAL_SECONDS"
ENV_LOG_LEVEL: Final = "ANOMALY_OPERATOR_LOG_LEVEL"

DEFAULT_ALLOWED_PREFIXES: Final = (
    spec.DEFAULTS["input"]["streamNamePrefix"],
    spec.DEFAULTS["output"]["streamNamePrefix"],
    spec.DEFAULTS["checkpoints"]["tableNamePrefix"],
)
DEFAULT_PROCESSOR_IMAGE: Final = "anomaly-processor"
DEFAULT_HELM: Final = "helm"
# The chart in this repository, which is where a source checkout or an editable install finds it.
DEFAULT_PROCESSOR_CHART: Final = Path(__file__).resolve().parents[2] / "charts" / "anomaly-processor"
DEFAULT_VERIFY_INTERVAL_SECONDS: Final = 300.0
MIN_VERIFY_INTERVAL_SECONDS: Final = 1.0
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

ACCOUNT_ID_PATTERN: Final = r"^\d{12}$"
ISSUER_PATTERN: Final = r"^https://[A-Za-z0-9.-]+(:\d+)?(/[\x21-\x7E]*)?$"


class SettingsError(ValueError):
    """An environment variable that the operator cannot use. The message names it and the fix."""

    def __init__(self, variable: str, value: object, reason: str) -> None:
        super().__init__(f"{variable}: invalid value {value!r}: {reason}")
        self.variable = variable


@dataclass(frozen=True)
class ImageReference:
    """A container image split the way the anomaly-processor chart's ``image`` values take it."""

    repository: str
    tag: str = ""
    digest: str = ""

    @classmethod
    def parse(cls, reference: str) -> ImageReference:
        """Split ``repository[:tag][@digest]``, where a ':' before the last '/' belongs to a registry port."""
        name, _, digest = reference.partition("@")
        last_slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > last_slash:
            return cls(repository=name[:colon], tag=name[colon + 1 :], digest=digest)
        return cls(repository=name, digest=digest)

    def as_values(self) -> dict[str, str]:
        """Return the chart's ``image`` values: repository, tag and digest."""
        return {"repository": self.repository, "tag": self.tag, "digest": self.digest}


@dataclass(frozen=True)
class OperatorSettings:
    """Everything the operator needs besides the AnomalyPipeline itself."""

    # The cluster's OIDC issuer URL (https://oidc.eks.<region>.amazonaws.com/id/<id>). Every
    # processor role trusts it as federated principal (IRSA). Required: there is no default.
    oidc_issuer: str
    # The 12-digit AWS account that owns the cluster's OIDC provider and every role. Required.
    account_id: str
    # The cluster's AWS region. It picks the partition of the OIDC provider ARN and the region
    # of IAM calls. Default: spec.DEFAULT_REGION.
    region: str = spec.DEFAULT_REGION
    # Every stream, table and role name the operator creates must start with one of these, so
    # the operator's own IAM policy can be scoped to them. Default: the spec's default prefixes.
    allowed_prefixes: tuple[str, ...] = DEFAULT_ALLOWED_PREFIXES
    # Every role's path must start with this path, which the operator's IAM policy also names.
    role_path: str = spec.DEFAULTS["iam"]["rolePath"]
    # Permissions boundary set on every role. None: only a pipeline's own boundary, if any.
    permissions_boundary_arn: str | None = None
    # Image of the processor pods, as repository[:tag][@digest]. Without a tag the chart's appVersion is used.
    processor_image: str = DEFAULT_PROCESSOR_IMAGE
    # The helm binary that renders the processor chart: a path, or a name looked up in PATH.
    helm: str = DEFAULT_HELM
    # Directory of the anomaly-processor chart.
    processor_chart: Path = DEFAULT_PROCESSOR_CHART
    # Seconds between re-verifications of each pipeline's AWS resources (the drift timer).
    verify_interval_seconds: float = DEFAULT_VERIFY_INTERVAL_SECONDS
    # Level of the operator's own loggers: DEBUG, INFO, WARNING or ERROR.
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _check(
            ENV_OIDC_ISSUER,
            self.oidc_issuer,
            ISSUER_PATTERN,
            "expected https://<host>/<path>, the cluster's OIDC issuer URL",
        )
        _check(ENV_ACCOUNT_ID, self.account_id, ACCOUNT_ID_PATTERN, "expected the 12-digit AWS account id")
        _check(ENV_REGION, self.region, spec.REGION_PATTERN, "expected a region name such as eu-west-1")
        if not self.allowed_prefixes:
            raise SettingsError(ENV_ALLOWED_PREFIXES, "", "expected at least one name prefix, comma-separated")
        for prefix in self.allowed_prefixes:
            _check(
                ENV_ALLOWED_PREFIXES,
                prefix,
                spec.PREFIX_PATTERN,
                "each prefix is 1 to 32 letters, digits, '_', '.' or '-'",
            )
        _check(ENV_ROLE_PATH, self.role_path, spec.ROLE_PATH_PATTERN, "expected a path that starts and ends with '/'")
        if self.permissions_boundary_arn is not None:
            _check(
                ENV_PERMISSIONS_BOUNDARY_ARN,
                self.permissions_boundary_arn,
                spec.BOUNDARY_ARN_PATTERN,
                "expected a managed policy ARN such as arn:aws:iam::123456789012:policy/boundary, or empty",
            )
        if not self.processor_image or any(c.isspace() for c in self.processor_image):
            raise SettingsError(
                ENV_PROCESSOR_IMAGE, self.processor_image, "expected an image such as registry/anomaly-processor:0.1.0"
            )
        if self.verify_interval_seconds < MIN_VERIFY_INTERVAL_SECONDS:
            raise SettingsError(
                ENV_VERIFY_INTERVAL_SECONDS,
                self.verify_interval_seconds,
                f"expected at least {MIN_VERIFY_INTERVAL_SECONDS} seconds",
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(ENV_LOG_LEVEL, self.log_level, f"expected one of {', '.join(LOG_LEVELS)}")

    @property
    def partition(self) -> str:
        """Return the AWS partition of the region: aws, aws-cn or aws-us-gov."""
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    @property
    def oidc_provider_arn(self) -> str:
        """Return the IAM OIDC provider ARN of the issuer, the federated principal of processor roles."""
        host_and_path = self.oidc_issuer.removeprefix("https://").rstrip("/")
        return f"arn:{self.partition}:iam::{self.account_id}:oidc-provider/{host_and_path}"

    @property
    def image(self) -> ImageReference:
        return ImageReference.parse(self.processor_image)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSettings:
        """Read the settings from ``ANOMALY_OPERATOR_*`` variables, where unset or empty ones take the default."""

        def value(name: str) -> str | None:
            text = environ.get(name, "").strip()
            return text or None

        issuer = value(ENV_OIDC_ISSUER)
        if issuer is None:
            raise SettingsError(ENV_OIDC_ISSUER, None, "missing: set it to the cluster's OIDC issuer URL")
        account = value(ENV_ACCOUNT_ID)
        if account is None:
            raise SettingsError(ENV_ACCOUNT_ID, None, "missing: set it to the 12-digit AWS account id")

        optional: dict[str, object] = {}
        if (region := value(ENV_REGION)) is not None:
            optional["region"] = region
        if (prefixes := value(ENV_ALLOWED_PREFIXES)) is not None:
            optional["allowed_prefixes"] = tuple(p.strip() for p in prefixes.split(",") if p.strip())
        if (role_path := value(ENV_ROLE_PATH)) is not None:
            optional["role_path"] = role_path
        if (boundary := value(ENV_PERMISSIONS_BOUNDARY_ARN)) is not None:
            optional["permissions_boundary_arn"] = boundary
        if (image := value(ENV_PROCESSOR_IMAGE)) is not None:
            optional["processor_image"] = image
        if (helm := value(ENV_HELM)) is not None:
            optional["helm"] = helm
        if (chart := value(ENV_PROCESSOR_CHART)) is not None:
            optional["processor_chart"] = Path(chart)
        if (interval := value(ENV_VERIFY_INTERVAL_SECONDS)) is not None:
            optional["verify_interval_seconds"] = _seconds(interval)
        if (level := value(ENV_LOG_LEVEL)) is not None:
            optional["log_level"] = level.upper()
        return cls(oidc_issuer=issuer, account_id=account, **optional)  # type: ignore[arg-type]


def verify_interval_from_env(environ: Mapping[str, str]) -> float:
    """Return the drift timer's interval alone, which kopf needs before the startup handler runs."""
    text = environ.get(ENV_VERIFY_INTERVAL_SECONDS, "").strip()
    if not text:
        return DEFAULT_VERIFY_INTERVAL_SECONDS
    return max(_seconds(text), MIN_VERIFY_INTERVAL_SECONDS)


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError as error:
        raise SettingsError(ENV_VERIFY_INTERVAL_SECONDS, text, "expected a number of seconds") from error


def _check(variable: str, value: str, pattern: str, reason: str) -> None:
    if not re.fullmatch(pattern, value):
        raise SettingsError(variable, value, reason)
