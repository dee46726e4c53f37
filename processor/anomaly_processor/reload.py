"""Hot reload of the detectors from the processor settings file that the ConfigMap mounts.

The rules and the shadow detector live in the processor settings file (``processor.yaml``
in the processor's ConfigMap, which the operator rewrites on every spec change), so one
file stays the single source of the processor's settings. The kubelet updates a mounted
ConfigMap by writing a new directory and swapping the ``..data`` symlink that the file's
path goes through. The file is replaced rather than written in place, so an inotify watch
on it would miss the change. ``RulesReloader`` therefore polls: every interval it reads
the file and compares the SHA-256 of its content with the last content it read.

Changed content is validated as a whole settings document. When it is valid, new
``Detectors`` are built and assigned to ``current`` in one reference assignment, so the
consumer, which reads ``current`` once per record, switches between two records and
never judges a record with a mix of two rule sets. The change is logged with the old and
the new rules. Only the rules and the shadow detector are applied: a change to any other
setting is logged once and waits for a restart.

A broken file (unreadable, not YAML, or invalid settings) leaves the detectors in force
unchanged. The error is logged once per distinct content, counted in
``anomaly_processor_rules_reloads{result="failed"}``, the gauge
``anomaly_processor_rules_file_valid`` drops to 0, and ``rules_health()`` reports it for
the health endpoint, until a valid file arrives.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import yaml

from anomaly_processor import metrics
from anomaly_processor.config import ConfigError, ProcessorConfig, from_document
from anomaly_processor.detector import Detectors, RuleDetector

log = logging.getLogger(__name__)

# Keys that the reloader applies; a change to any other key of the settings file needs a restart.
RELOADED_KEYS: Final = frozenset({"rules", "detectors", "reloadIntervalSeconds"})


def build_detectors(config: ProcessorConfig) -> Detectors:
    """Return the active rule detector and the optional shadow detector that the settings define."""
    shadow = config.shadow_detector.build() if config.shadow_detector else None
    return Detectors(RuleDetector(config.rules), shadow)


def _describe(detectors: Detectors) -> dict[str, Any]:
    """Return the detectors as log fields: the active rules as text and the shadow detector's name."""
    active = detectors.active
    rules = active.rules.describe() if isinstance(active, RuleDetector) else active.name
    shadow = detectors.shadow
    return {"rules": rules, "shadow_detector": shadow.name if shadow else None}


def _definition(detectors: Detectors) -> dict[str, Any]:
    """Return what the detectors were built from, to tell whether a new file changes them."""
    active, shadow = detectors.active, detectors.shadow
    shadow_definition: Any = shadow.name if shadow else None
    if isinstance(shadow, RuleDetector):
        shadow_definition = {"name": shadow.name, "rules": shadow.rules.as_dict()}
    return {
        "rules": active.rules.as_dict() if isinstance(active, RuleDetector) else active.name,
        "shadow": shadow_definition,
    }


def _restart_settings(config: ProcessorConfig) -> dict[str, Any]:
    return {key: value for key, value in config.as_document().items() if key not in RELOADED_KEYS}


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ReloadStatus:
    """The reloader's state, as the health endpoint shows it."""

    file: str
    valid: bool
    applied_sha256: str | None
    applied_at: float | None
    checked_at: float | None
    error: str | None
    detectors: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.valid,
            "file": self.file,
            "appliedSha256": self.applied_sha256,
            "appliedAt": _timestamp(self.applied_at),
            "checkedAt": _timestamp(self.checked_at),
            "error": self.error,
            "rules": self.detectors["rules"],
            "shadowDetector": self.detectors["shadow_detector"],
        }


class RulesReloader:
    """A detector source that follows the settings file; ``current`` is always a valid set."""

    def __init__(self, path: str, config: ProcessorConfig, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.interval = config.reload_interval_seconds
        self.current = build_detectors(config)
        self._startup_settings = _restart_settings(config)
        self._clock = clock
        self._seen_sha256: str | None = None
        self._applied_sha256: str | None = None
        self._applied_at: float | None = clock()
        self._checked_at: float | None = None
        self._error: str | None = None
        self._restart_warned_sha256: str | None = None
        self._lock = threading.Lock()
        metrics.RULES_FILE_VALID.set(1)

    def check(self) -> bool:
        """Read the file once; apply its detectors if its content changed and is valid.

        Returns True when new detectors took effect. A broken file returns False after it
        was logged and counted.
        """
        with self._lock:
            self._checked_at = self._clock()
            try:
                with open(self.path, "rb") as handle:
                    content = handle.read()
            except OSError as error:
                self._fail(None, f"cannot read {self.path}: {error.strerror}")
                return False
            sha256 = hashlib.sha256(content).hexdigest()
            if sha256 == self._seen_sha256:
                return False
            self._seen_sha256 = sha256
            try:
                config = self._parse(content)
            except ConfigError as error:
                self._fail(sha256, str(error))
                return False
            return self._apply(sha256, config)

    def _parse(self, content: bytes) -> ProcessorConfig:
        try:
            document = yaml.safe_load(content)
        except yaml.YAMLError as error:
            raise ConfigError(f"processor configuration {self.path} is not valid YAML: {error}") from error
        return from_document(document)

    def _apply(self, sha256: str, config: ProcessorConfig) -> bool:
        previous = self.current
        detectors = build_detectors(config)
        was_failing = self._error is not None
        self._error = None
        self._applied_sha256 = sha256
        metrics.RULES_FILE_VALID.set(1)

        if _restart_settings(config) != self._startup_settings and self._restart_warned_sha256 != sha256:
            self._restart_warned_sha256 = sha256
            log.warning(
                "settings other than rules and detectors changed; they take effect after a restart",
                extra={"file": self.path, "sha256": sha256},
            )

        if _definition(detectors) == _definition(previous):
            if was_failing:
                log.info("settings file is valid again; the detectors are unchanged", extra={"file": self.path})
            return False

        self.current = detectors  # one reference assignment: the switch between two records
        self._applied_at = self._clock()
        metrics.RULES_RELOADS.labels(result="applied").inc()
        log.info(
            "rules reloaded",
            extra={
                "file": self.path,
                "sha256": sha256,
                **_describe(detectors),
                "previous_rules": _describe(previous)["rules"],
                "previous_shadow_detector": _describe(previous)["shadow_detector"],
            },
        )
        return True

    def _fail(self, sha256: str | None, error: str) -> None:
        repeated = error == self._error
        self._error = error
        metrics.RULES_FILE_VALID.set(0)
        if repeated:
            return
        metrics.RULES_RELOADS.labels(result="failed").inc()
        log.error(
            "settings file change not applied; the detectors in force stay",
            extra={"file": self.path, "sha256": sha256, "error": error, **_describe(self.current)},
        )

    def status(self) -> ReloadStatus:
        with self._lock:
            return ReloadStatus(
                file=self.path,
                valid=self._error is None,
                applied_sha256=self._applied_sha256,
                applied_at=self._applied_at,
                checked_at=self._checked_at,
                error=self._error,
                detectors=_describe(self.current),
            )

    def run(self, stop: threading.Event) -> None:
        """Check the file every interval until ``stop`` is set."""
        log.info("watching settings file for rule changes", extra={"file": self.path, "interval": self.interval})
        while not stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watch must outlive any surprise; the detectors in force stay
                log.exception("checking the settings file failed", extra={"file": self.path})

    def start(self, stop: threading.Event) -> threading.Thread | None:
        """Check once now, then poll in a daemon thread; return None when hot reload is off (interval 0)."""
        global _registered
        _registered = self
        self.check()
        if self.interval <= 0:
            return None
        thread = threading.Thread(target=self.run, args=(stop,), name="rules-reloader", daemon=True)
        thread.start()
        return thread


_registered: RulesReloader | None = None


def rules_health() -> dict[str, Any]:
    """Return the rules part of the health endpoint's detail: ``ok`` is False while the file is broken.

    A broken rules file does not stop the processor, which keeps the previous rules, so
    the caller should report it in the detail without failing liveness.
    """
    reloader = _registered
    if reloader is None:
        return {"ok": True, "hotReload": False}
    return {"hotReload": reloader.interval > 0, **reloader.status().as_dict()}
