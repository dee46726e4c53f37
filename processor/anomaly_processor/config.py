"""The processor's settings: one typed object, read from its configuration file.

The file is what the operator writes into the processor's ConfigMap (key
``processor.yaml``) and what ``anomaly-pipeline process`` derives from a pipeline
file. Stream and table names in it are resolved names, so the processor chart can
also run against streams that exist already. Environment variables override the
file only for what differs per pod (see ``ENV_*``).
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from anomaly_processor.detector import DetectorDefinition, DetectorError, parse_detector
from anomaly_processor.rules import RuleError, RuleSet, parse_rule_set

ENV_CONFIG_FILE: Final = "ANOMALY_PROCESSOR_CONFIG"
ENV_WORKER_ID: Final = "ANOMALY_PROCESSOR_WORKER_ID"
ENV_METRICS_PORT: Final = "ANOMALY_PROCESSOR_METRICS_PORT"
DEFAULT_CONFIG_FILE: Final = "/etc/anomaly-processor/processor.yaml"
DEFAULT_METRICS_PORT: Final = 8080
MIN_POLL_INTERVAL_MILLIS: Final = 200  # GetRecords allows 5 calls per second per shard.
# How often the rules reloader reads the settings file. The kubelet brings a ConfigMap
# change into the pod only after its sync period (1 minute by default) plus its cache
# delay, so polling much faster gains little.
DEFAULT_RELOAD_INTERVAL_SECONDS: Final = 5.0
MAX_RELOAD_INTERVAL_SECONDS: Final = 300.0

_NAME: Final = re.compile(r"^[a-zA-Z0-9_.-]{1,255}$")


class ConfigError(ValueError):
    """A processor configuration that cannot be used; the message names the key."""


@dataclass(frozen=True)
class ProcessorConfig:
    """Everything one processor worker needs to know."""

    pipeline: str
    region: str
    input_stream: str
    output_stream: str
    checkpoint_table: str
    rules: RuleSet
    starting_position: str = "TRIM_HORIZON"
    poll_interval_millis: int = 200
    required_numeric_fields: tuple[str, ...] = ("transaction_amount",)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    metrics_port: int | None = None
    # Judges every event beside the rules; its verdicts are only counted (``detectors.shadow``).
    shadow_detector: DetectorDefinition | None = None
    # Where malformed records go in a JSON envelope; None counts and logs them only.
    dead_letter_stream: str | None = None
    # Seconds between reads of the settings file for changed rules; 0 turns hot reload off.
    reload_interval_seconds: float = DEFAULT_RELOAD_INTERVAL_SECONDS

    def as_document(self) -> dict[str, Any]:
        """Return the file form of these settings; ``from_document`` reads it back."""
        return {
            "pipeline": self.pipeline,
            "region": self.region,
            "inputStream": self.input_stream,
            "outputStream": self.output_stream,
            "checkpointTable": self.checkpoint_table,
            "startingPosition": self.starting_position,
            "pollIntervalMillis": self.poll_interval_millis,
            "requiredNumericFields": list(self.required_numeric_fields),
            "rules": self.rules.as_dict(),
            "detectors": {"shadow": self.shadow_detector.as_dict() if self.shadow_detector else None},
            "deadLetterStream": self.dead_letter_stream,
            "reloadIntervalSeconds": self.reload_interval_seconds,
        }


def _required_name(document: Mapping[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"{key}: invalid value {value!r}: expected a stream or table name")
    return value


def from_document(document: Mapping[str, Any], worker_id: str | None = None) -> ProcessorConfig:
    """Validate the file form of the settings (see ``as_document``)."""
    if not isinstance(document, Mapping):
        raise ConfigError(f"expected a mapping of settings, got {type(document).__name__}")
    pipeline = document.get("pipeline")
    region = document.get("region")
    if not isinstance(pipeline, str) or not pipeline:
        raise ConfigError(f"pipeline: invalid value {pipeline!r}: expected namespace/name")
    if not isinstance(region, str) or not region:
        raise ConfigError(f"region: invalid value {region!r}: expected a region such as eu-west-1")
    position = document.get("startingPosition", "TRIM_HORIZON")
    if position not in ("TRIM_HORIZON", "LATEST"):
        raise ConfigError(f"startingPosition: invalid value {position!r}: expected TRIM_HORIZON or LATEST")
    interval = document.get("pollIntervalMillis", 200)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < MIN_POLL_INTERVAL_MILLIS:
        raise ConfigError(
            f"pollIntervalMillis: invalid value {interval!r}: expected an integer >= {MIN_POLL_INTERVAL_MILLIS}"
        )
    required = document.get("requiredNumericFields", ["transaction_amount"])
    if not isinstance(required, list) or not all(isinstance(f, str) and f for f in required):
        raise ConfigError(f"requiredNumericFields: invalid value {required!r}: expected a list of field names")
    try:
        rules = parse_rule_set(document.get("rules"), "rules")
    except RuleError as error:
        raise ConfigError(str(error)) from error
    shadow = _shadow_detector(document.get("detectors"))
    dead_letter_stream = document.get("deadLetterStream")
    if dead_letter_stream is not None:
        dead_letter_stream = _required_name(document, "deadLetterStream")
        if dead_letter_stream in (document.get("inputStream"), document.get("outputStream")):
            raise ConfigError(
                f"deadLetterStream: invalid value {dead_letter_stream!r}: must differ from inputStream and outputStream"
            )
    reload_interval = document.get("reloadIntervalSeconds", DEFAULT_RELOAD_INTERVAL_SECONDS)
    if (
        isinstance(reload_interval, bool)
        or not isinstance(reload_interval, (int, float))
        or not 0 <= reload_interval <= MAX_RELOAD_INTERVAL_SECONDS
    ):
        raise ConfigError(
            f"reloadIntervalSeconds: invalid value {reload_interval!r}: "
            f"expected seconds from 0 (no hot reload) to {MAX_RELOAD_INTERVAL_SECONDS:.0f}"
        )

    extra = environment_settings(worker_id)
    return ProcessorConfig(
        pipeline=pipeline,
        region=region,
        input_stream=_required_name(document, "inputStream"),
        output_stream=_required_name(document, "outputStream"),
        checkpoint_table=_required_name(document, "checkpointTable"),
        rules=rules,
        starting_position=position,
        poll_interval_millis=interval,
        required_numeric_fields=tuple(required),
        shadow_detector=shadow,
        dead_letter_stream=dead_letter_stream,
        reload_interval_seconds=float(reload_interval),
        **extra,
    )


def _shadow_detector(detectors: object) -> DetectorDefinition | None:
    if detectors is None:
        return None
    if not isinstance(detectors, Mapping):
        raise ConfigError(f"detectors: invalid value {detectors!r}: expected a mapping with shadow")
    unknown = sorted(set(detectors) - {"shadow"})
    if unknown:
        raise ConfigError(
            f"detectors.{unknown[0]}: invalid value {detectors[unknown[0]]!r}: unknown key; expected shadow"
        )
    raw = detectors.get("shadow")
    if raw is None:
        return None
    try:
        return parse_detector(raw, "detectors.shadow")
    except DetectorError as error:
        raise ConfigError(str(error)) from error


def environment_settings(worker_id: str | None = None) -> dict[str, Any]:
    """Return the per-pod settings from the environment, as ``ProcessorConfig`` keyword arguments."""
    extra: dict[str, Any] = {}
    worker = worker_id or os.environ.get(ENV_WORKER_ID)
    if worker:
        extra["worker_id"] = worker
    port = os.environ.get(ENV_METRICS_PORT)
    if port:
        try:
            extra["metrics_port"] = int(port)
        except ValueError as error:
            raise ConfigError(f"{ENV_METRICS_PORT}: invalid value {port!r}: expected a port number") from error
    return extra


def load_config(path: str) -> ProcessorConfig:
    """Read and validate a processor configuration file (YAML or JSON)."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read processor configuration {path}: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"processor configuration {path} is not valid YAML: {error}") from error
    return from_document(document)
