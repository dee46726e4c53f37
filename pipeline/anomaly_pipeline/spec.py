"""The AnomalyPipeline resource: parsing, validation, defaults and resource names.

This module is the single source of the spec's defaults and limits. The CLI parses
files with it, the operator parses custom resources with it, and the CRD schema is
tested against ``DEFAULTS`` and the limits below. A spec that cannot be accepted raises
``SpecError``, whose message names the field, the value and the reason.

It does not talk to AWS: see ``provisioning``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from anomaly_processor.config import ProcessorConfig
from anomaly_processor.detector import DetectorDefinition, DetectorError, parse_detector
from anomaly_processor.rules import RuleError, RuleSet, parse_rule_set

API_GROUP: Final = "anomaly.dev"
API_VERSION: Final = f"{API_GROUP}/v1alpha1"
KIND: Final = "AnomalyPipeline"

DEFAULT_REGION: Final = "eu-west-1"
MIN_SHARDS: Final = 1
# The default provisioned-mode shard quota per stream in most regions.
MAX_SHARDS: Final = 500
MIN_RETENTION_HOURS: Final = 24
MAX_RETENTION_HOURS: Final = 8760
MIN_SESSION_SECONDS: Final = 900
MAX_SESSION_SECONDS: Final = 43200
MIN_POLL_INTERVAL_MILLIS: Final = 200  # GetRecords allows 5 calls per second per shard.
MAX_POLL_INTERVAL_MILLIS: Final = 10_000
MAX_REPLICAS: Final = 100
STARTING_POSITIONS: Final = ("TRIM_HORIZON", "LATEST")
DELETION_POLICIES: Final = ("Retain", "Delete")

KINESIS_NAME_MAX: Final = 128
DYNAMODB_NAME_MAX: Final = 255
IAM_ROLE_NAME_MAX: Final = 64
# The longest prefix leaves room for the shortest namespace and name ("a-b").
PREFIX_MAX: Final = 32
PREFIX_PATTERN: Final = r"^[a-zA-Z0-9_.-]{1,32}$"
ROLE_NAME_PREFIX_PATTERN: Final = r"^[a-zA-Z0-9+=,.@_-]{1,24}$"
ROLE_PATH_PATTERN: Final = r"^/([\x21-\x7E]{1,510}/)?$"
REGION_PATTERN: Final = r"^[a-z]{2}(-[a-z]+)+-\d+$"
BOUNDARY_ARN_PATTERN: Final = r"^arn:aws[a-z-]*:iam::\d{12}:policy/[\x21-\x7E]+$"
PRINCIPAL_PATTERN: Final = r"^(\d{12}|arn:aws[a-z-]*:(iam|sts)::\d{12}:[\x21-\x7E]+)$"
FIELD_PATH_PATTERN: Final = r"^[A-Za-z0-9_$@-]+(\.[A-Za-z0-9_$@-]+)*$"
K8S_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# Kubernetes limits a custom resource's name to 253 characters and a namespace to 63.
K8S_NAME_MAX: Final = 253
K8S_NAMESPACE_MAX: Final = 63
# The processor's Service is named "<name>-anomaly-processor", and Service names are DNS-1035
# labels. A name longer than 63 characters is still valid, because the operator cuts the Helm
# release name to 53 characters (ending in a hash) and the chart cuts object names to 63.
PIPELINE_NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

OWNER_TAG: Final = f"{API_GROUP}/pipeline"
MANAGED_BY_TAG: Final = f"{API_GROUP}/managed-by"
MANAGED_BY: Final = "anomaly-pipeline"

# Every default of the spec, in the spec's own shape. The CRD's defaults are tested equal.
DEFAULTS: Final[Mapping[str, Any]] = {
    "region": DEFAULT_REGION,
    "input": {
        "streamNamePrefix": "ingest-",
        "shardCount": 2,
        "retentionHours": 24,
        "startingPosition": "TRIM_HORIZON",
    },
    "output": {"streamNamePrefix": "anomaly-", "shardCount": 1},
    "checkpoints": {"tableNamePrefix": "anomaly-checkpoints-"},
    "events": {"requiredNumericFields": ["transaction_amount"]},
    # A shadow detector judges every event beside the rules, and its verdicts are only counted.
    "detectors": {"shadow": None},
    # Without a prefix there is no dead-letter stream: malformed records are counted and logged.
    "deadLetter": {"streamNamePrefix": None, "shardCount": 1},
    "tester": {"sessionDurationSeconds": 3600},
    "iam": {"rolePath": "/anomaly-pipeline/", "roleNamePrefix": "anomaly-", "permissionsBoundaryArn": None},
    "processor": {"maxReplicas": 4, "pollIntervalMillis": 200},
    "deletionPolicy": "Retain",
}


class SpecError(ValueError):
    """An AnomalyPipeline that cannot be accepted."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"{field}: invalid value {value!r}: {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class PipelineFileError(SpecError):
    """A pipeline file that is not valid YAML or contains no AnomalyPipeline."""

    def __init__(self, path: str, reason: str) -> None:
        ValueError.__init__(self, f"{path}: {reason}")
        self.field = path
        self.value = None
        self.reason = reason


@dataclass(frozen=True)
class StreamSpec:
    name: str
    shard_count: int


@dataclass(frozen=True)
class InputSpec(StreamSpec):
    retention_hours: int
    starting_position: str


@dataclass(frozen=True)
class Pipeline:
    """A validated AnomalyPipeline with every default applied and every name derived."""

    name: str
    namespace: str
    region: str
    input: InputSpec
    output: StreamSpec
    checkpoint_table: str
    rules: RuleSet
    required_numeric_fields: tuple[str, ...]
    tester_principals: tuple[str, ...]
    tester_session_seconds: int
    role_path: str
    permissions_boundary_arn: str | None
    processor_role_name: str
    tester_role_name: str
    max_replicas: int
    poll_interval_millis: int
    deletion_policy: str
    shadow_detector: DetectorDefinition | None = None
    dead_letter: StreamSpec | None = None

    @property
    def key(self) -> str:
        """Return ``namespace/name``, the value of the owner tag on every resource."""
        return f"{self.namespace}/{self.name}"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def derive_name(prefix: str, namespace: str, name: str, suffix: str, max_length: int) -> str:
    """Return ``<prefix><namespace>-<name><suffix>``, cut to ``max_length`` when needed.

    A cut name ends with a hash of the whole name, so it stays deterministic and unique.
    """
    full = f"{prefix}{namespace}-{name}{suffix}"
    if len(full) <= max_length:
        return full
    tail = f"-{_hash(full)}{suffix}"
    return full[: max_length - len(tail)].rstrip("-.") + tail


@cache
def known_regions() -> frozenset[str]:
    """Return every region for which the installed botocore has a Kinesis endpoint."""
    import boto3

    session = boto3.session.Session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("kinesis", partition_name=partition))
    return frozenset(regions)


class _Reader:
    """Reads typed values from nested mappings, naming the full field path in errors."""

    def __init__(self, raw: Mapping[str, Any], path: str) -> None:
        self.raw = raw
        self.path = path

    def section(self, key: str, allowed: set[str]) -> _Reader:
        value = self.raw.get(key)
        path = f"{self.path}.{key}"
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise SpecError(path, value, "expected a mapping")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise SpecError(
                f"{path}.{unknown[0]}", value[unknown[0]], f"unknown field; expected {', '.join(sorted(allowed))}"
            )
        return _Reader(value, path)

    def default(self, key: str) -> Any:
        node: Any = DEFAULTS
        for part in self.path.split(".")[1:]:
            node = node[part]
        return node[key]

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.raw.get(key, self.default(key))
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{self.path}.{key}", value, "expected an integer")
        if not low <= value <= high:
            raise SpecError(f"{self.path}.{key}", value, f"out of range; expected {low} to {high}")
        return value

    def string(self, key: str, pattern: str | None = None, choices: tuple[str, ...] = (), hint: str = "") -> str:
        value = self.raw.get(key, self.default(key))
        path = f"{self.path}.{key}"
        if not isinstance(value, str):
            raise SpecError(path, value, "expected a string")
        if choices and value not in choices:
            raise SpecError(path, value, f"expected one of {', '.join(choices)}")
        if pattern and not re.fullmatch(pattern, value):
            raise SpecError(path, value, hint or f"does not match {pattern}")
        return value


def parse_pipeline(document: Mapping[str, Any]) -> Pipeline:
    """Validate an AnomalyPipeline document (as YAML or the Kubernetes API gives it)."""
    if not isinstance(document, Mapping):
        raise SpecError("", document, "expected an AnomalyPipeline mapping")
    if document.get("kind", KIND) != KIND:
        raise SpecError("kind", document.get("kind"), f"expected {KIND}")
    api_version = document.get("apiVersion", API_VERSION)
    if api_version != API_VERSION:
        raise SpecError("apiVersion", api_version, f"expected {API_VERSION}")
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise SpecError("metadata", metadata, "expected a mapping")
    name = metadata.get("name")
    namespace = metadata.get("namespace") or "default"
    for field, value, limit in (
        ("metadata.name", name, K8S_NAME_MAX),
        ("metadata.namespace", namespace, K8S_NAMESPACE_MAX),
    ):
        if not isinstance(value, str) or len(value) > limit or not re.fullmatch(K8S_NAME_PATTERN, value):
            raise SpecError(
                field,
                value,
                f"expected a Kubernetes name: lowercase letters, digits, '-' and '.', at most {limit} characters",
            )
    if "." in namespace:
        raise SpecError("metadata.namespace", namespace, "a namespace cannot contain '.'")
    assert isinstance(name, str)
    if not re.fullmatch(PIPELINE_NAME_PATTERN, name):
        raise SpecError(
            "metadata.name",
            name,
            "must start with a lowercase letter and contain only lowercase letters, digits and '-', "
            "because it names the processor's Service, and Service names are DNS-1035 labels",
        )

    raw_spec = document.get("spec")
    if raw_spec is None:
        raw_spec = {}
    if not isinstance(raw_spec, Mapping):
        raise SpecError("spec", raw_spec, "expected a mapping")
    return _parse_spec(name, namespace, raw_spec)


def _parse_spec(name: str, namespace: str, raw: Mapping[str, Any]) -> Pipeline:
    allowed = set(DEFAULTS) | {"rules"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpecError(f"spec.{unknown[0]}", raw[unknown[0]], f"unknown field; expected {', '.join(sorted(allowed))}")
    spec = _Reader(raw, "spec")

    region = spec.string("region", REGION_PATTERN, hint="expected a region name such as eu-west-1")
    if region not in known_regions():
        raise SpecError("spec.region", region, "unknown region; Kinesis has no endpoint there")

    prefix_hint = (
        "a prefix is 1 to 32 characters of letters, digits, '_', '.' and '-', which Kinesis accepts in stream names"
    )
    source = spec.section("input", set(DEFAULTS["input"]))
    input_prefix = source.string("streamNamePrefix", PREFIX_PATTERN, hint=prefix_hint)
    input_spec = InputSpec(
        name=derive_name(input_prefix, namespace, name, "", KINESIS_NAME_MAX),
        shard_count=source.integer("shardCount", MIN_SHARDS, MAX_SHARDS),
        retention_hours=source.integer("retentionHours", MIN_RETENTION_HOURS, MAX_RETENTION_HOURS),
        starting_position=source.string("startingPosition", choices=STARTING_POSITIONS),
    )
    sink = spec.section("output", set(DEFAULTS["output"]))
    output_prefix = sink.string("streamNamePrefix", PREFIX_PATTERN, hint=prefix_hint)
    output_spec = StreamSpec(
        name=derive_name(output_prefix, namespace, name, "", KINESIS_NAME_MAX),
        shard_count=sink.integer("shardCount", MIN_SHARDS, MAX_SHARDS),
    )
    if output_spec.name == input_spec.name:
        raise SpecError("spec.output.streamNamePrefix", output_prefix, "must differ from spec.input.streamNamePrefix")

    checkpoints = spec.section("checkpoints", set(DEFAULTS["checkpoints"]))
    table_prefix = checkpoints.string(
        "tableNamePrefix", PREFIX_PATTERN, hint=prefix_hint.replace("Kinesis", "DynamoDB").replace("stream", "table")
    )

    try:
        rules = parse_rule_set(raw.get("rules"), "spec.rules")
    except RuleError as error:
        raise SpecError(error.field, error.value, error.reason) from error

    events = spec.section("events", set(DEFAULTS["events"]))
    required = events.raw.get("requiredNumericFields", DEFAULTS["events"]["requiredNumericFields"])
    if not isinstance(required, list) or not all(
        isinstance(f, str) and re.fullmatch(FIELD_PATH_PATTERN, f) and "." not in f for f in required
    ):
        raise SpecError("spec.events.requiredNumericFields", required, "expected a list of top-level field names")

    tester = spec.section("tester", {"principals", "sessionDurationSeconds"})
    principals = tester.raw.get("principals")
    if not isinstance(principals, list) or not principals:
        raise SpecError(
            "spec.tester.principals",
            principals,
            "expected a non-empty list of AWS account ids or IAM ARNs allowed to assume the tester role",
        )
    for i, principal in enumerate(principals):
        if not isinstance(principal, str) or not re.fullmatch(PRINCIPAL_PATTERN, principal):
            raise SpecError(f"spec.tester.principals[{i}]", principal, "expected a 12-digit account id or an IAM ARN")
        if "*" in principal:
            raise SpecError(f"spec.tester.principals[{i}]", principal, "wildcards are not allowed: name the principal")
    session_seconds = tester.integer("sessionDurationSeconds", MIN_SESSION_SECONDS, MAX_SESSION_SECONDS)

    iam = spec.section("iam", set(DEFAULTS["iam"]))
    role_path = iam.string(
        "rolePath", ROLE_PATH_PATTERN, hint="expected a path that starts and ends with '/', such as /anomaly-pipeline/"
    )
    role_prefix = iam.string(
        "roleNamePrefix", ROLE_NAME_PREFIX_PATTERN, hint="expected 1 to 24 characters that IAM accepts in role names"
    )
    boundary = iam.raw.get("permissionsBoundaryArn")
    if boundary is not None and (not isinstance(boundary, str) or not re.fullmatch(BOUNDARY_ARN_PATTERN, boundary)):
        raise SpecError(
            "spec.iam.permissionsBoundaryArn",
            boundary,
            "expected null or a managed policy ARN such as arn:aws:iam::123456789012:policy/boundary",
        )

    shadow_detector = _parse_shadow_detector(spec.section("detectors", set(DEFAULTS["detectors"])))
    dead_letter = _parse_dead_letter(
        spec.section("deadLetter", set(DEFAULTS["deadLetter"])), namespace, name, (input_spec, output_spec)
    )

    processor = spec.section("processor", set(DEFAULTS["processor"]))
    return Pipeline(
        name=name,
        namespace=namespace,
        region=region,
        input=input_spec,
        output=output_spec,
        checkpoint_table=derive_name(table_prefix, namespace, name, "", DYNAMODB_NAME_MAX),
        rules=rules,
        required_numeric_fields=tuple(required),
        tester_principals=tuple(principals),
        tester_session_seconds=session_seconds,
        role_path=role_path,
        permissions_boundary_arn=boundary,
        processor_role_name=derive_name(role_prefix, namespace, name, "-processor", IAM_ROLE_NAME_MAX),
        tester_role_name=derive_name(role_prefix, namespace, name, "-tester", IAM_ROLE_NAME_MAX),
        max_replicas=processor.integer("maxReplicas", 1, MAX_REPLICAS),
        poll_interval_millis=processor.integer(
            "pollIntervalMillis", MIN_POLL_INTERVAL_MILLIS, MAX_POLL_INTERVAL_MILLIS
        ),
        deletion_policy=spec.string("deletionPolicy", choices=DELETION_POLICIES),
        shadow_detector=shadow_detector,
        dead_letter=dead_letter,
    )


def _parse_shadow_detector(detectors: _Reader) -> DetectorDefinition | None:
    raw = detectors.raw.get("shadow")
    if raw is None:
        return None
    try:
        return parse_detector(raw, f"{detectors.path}.shadow")
    except DetectorError as error:
        raise SpecError(error.field, error.value, error.reason) from error


def _parse_dead_letter(
    dead_letter: _Reader, namespace: str, name: str, others: tuple[StreamSpec, ...]
) -> StreamSpec | None:
    shard_count = dead_letter.integer("shardCount", MIN_SHARDS, MAX_SHARDS)
    if dead_letter.raw.get("streamNamePrefix") is None:
        return None
    prefix = dead_letter.string(
        "streamNamePrefix",
        PREFIX_PATTERN,
        hint="a prefix is 1 to 32 characters of letters, digits, '_', '.' and '-', which Kinesis accepts in stream names",
    )
    stream = StreamSpec(derive_name(prefix, namespace, name, "", KINESIS_NAME_MAX), shard_count)
    if any(stream.name == other.name for other in others):
        raise SpecError(
            f"{dead_letter.path}.streamNamePrefix",
            prefix,
            "must differ from spec.input.streamNamePrefix and spec.output.streamNamePrefix",
        )
    return stream


def load_pipeline_file(path: str) -> Pipeline:
    """Read and validate the first AnomalyPipeline in a YAML file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            documents = [d for d in yaml.safe_load_all(handle) if d is not None]
    except OSError as error:
        raise PipelineFileError(
            path, f"cannot be read: {error.strerror or error}; check the path given with -f"
        ) from error
    except yaml.YAMLError as error:
        raise PipelineFileError(path, f"not valid YAML: {error}") from error
    pipelines = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == KIND]
    if not pipelines:
        raise PipelineFileError(path, f"contains no {KIND} document")
    return parse_pipeline(pipelines[0])


def processor_config(pipeline: Pipeline, worker_id: str | None = None) -> ProcessorConfig:
    """Return the processor settings for a pipeline, as its ConfigMap carries them."""
    extra: dict[str, Any] = {"worker_id": worker_id} if worker_id else {}
    return ProcessorConfig(
        pipeline=pipeline.key,
        region=pipeline.region,
        input_stream=pipeline.input.name,
        output_stream=pipeline.output.name,
        checkpoint_table=pipeline.checkpoint_table,
        rules=pipeline.rules,
        starting_position=pipeline.input.starting_position,
        poll_interval_millis=pipeline.poll_interval_millis,
        required_numeric_fields=pipeline.required_numeric_fields,
        shadow_detector=pipeline.shadow_detector,
        dead_letter_stream=pipeline.dead_letter.name if pipeline.dead_letter else None,
        **extra,
    )
