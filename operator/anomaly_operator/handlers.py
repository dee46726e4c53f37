"""The kopf handlers of the anomaly operator: reconcile steps, the drift timer and deletion.

``register`` adds every handler to a kopf registry: the package's ``__init__`` registers them
in kopf's default registry for ``kopf run -m anomaly_operator``, and tests register them in
their own registry with their own settings. Each reconcile step (``streams``, ``iam``,
``processor``) is a separate handler with an explicit id for create, update and resume.
kopf records each finished step, so an operator restarted in the middle of a creation
resumes at the first unfinished step. Steps write their condition into status whether they
succeed or fail; failures become ``kopf.TemporaryError`` or ``kopf.PermanentError`` as
``errors.classify`` decides. The processor step finishes once its objects are applied. The
``rollout`` timer then keeps ProcessorReady in step with the Deployment's pods, so a rollout
that never completes does not hold back later spec changes.

Deletion never raises ``kopf.PermanentError``: kopf removes the finalizer after a permanent
failure, and the resource must not disappear while roles or objects it owns are left.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

import kopf
from anomaly_pipeline.aws import Aws
from anomaly_pipeline.cluster import PLURAL, VERSION
from anomaly_pipeline.spec import API_GROUP, Pipeline, SpecError

from anomaly_operator import conditions, reconcile
from anomaly_operator.conditions import IAM_READY, PROCESSOR_READY, READY, STREAMS_READY, Condition
from anomaly_operator.errors import classify
from anomaly_operator.kube import KubeClient, ObjectApi, connection_info, load_configuration
from anomaly_operator.reconcile import StepNotReadyError, StepOutcome
from anomaly_operator.settings import OperatorSettings, SettingsError, verify_interval_from_env

FINALIZER: Final = f"{API_GROUP}/finalizer"
STEP_NOT_READY_DELAY_SECONDS: Final = 5.0
DELETE_RETRY_DELAY_SECONDS: Final = 30.0
# Seconds between reads of each processor Deployment's rollout; pods usually start within a minute (an estimate).
ROLLOUT_CHECK_SECONDS: Final = 10.0
RESOURCE: Final = (API_GROUP, VERSION, PLURAL)

log = logging.getLogger(__name__)

AwsFactory = Callable[[str], Aws]


class Runtime:
    """State shared by every handler of one operator: settings, the Kubernetes client and AWS clients.

    Settings given to the constructor are used as they are. Without them, the startup handler
    reads them from the environment, so a misconfigured operator stops before it watches anything.
    """

    def __init__(self, settings: OperatorSettings | None = None, aws_factory: AwsFactory | None = None) -> None:
        self._settings = settings
        self._aws_factory: AwsFactory = aws_factory or (lambda region: Aws(region=region))
        self._kube_configuration: Any = None
        self._kube: KubeClient | None = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> OperatorSettings:
        if self._settings is None:
            self._settings = OperatorSettings.from_env(os.environ)
        return self._settings

    @property
    def kube_configuration(self) -> Any:
        with self._lock:
            if self._kube_configuration is None:
                self._kube_configuration = load_configuration()
            return self._kube_configuration

    @property
    def kube(self) -> KubeClient:
        configuration = self.kube_configuration
        with self._lock:
            if self._kube is None:
                self._kube = KubeClient(configuration)
            return self._kube

    def aws(self, region: str) -> Aws:
        return self._aws_factory(region)

    def close(self) -> None:
        with self._lock:
            if self._kube is not None:
                self._kube.close()
                self._kube = None


# Writing status


def report(
    patch: kopf.Patch,
    status: Mapping[str, Any],
    generation: int | None,
    updates: list[Condition],
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Put changed status fields, the merged conditions and observedGeneration into ``patch``."""
    for key, value in (fields or {}).items():
        if status.get(key) != value:
            patch.status[key] = value
    current = list(status.get("conditions") or [])
    merged = conditions.merge(current, updates, generation)
    if merged != current:
        patch.status["conditions"] = merged
    if (
        generation is not None
        and conditions.all_observed(merged, generation)
        and status.get("observedGeneration") != generation
    ):
        patch.status["observedGeneration"] = generation


def _failure(condition_type: str, error: Exception) -> tuple[Condition, kopf.TemporaryError | kopf.PermanentError]:
    if isinstance(error, StepNotReadyError):
        condition = Condition(condition_type, conditions.UNKNOWN, "Waiting", str(error))
        return condition, kopf.TemporaryError(str(error), delay=STEP_NOT_READY_DELAY_SECONDS)
    classified = classify(error)
    return Condition.false(condition_type, classified.reason, classified.message), classified.error


def _merged_status(status: Mapping[str, Any], outcome: StepOutcome) -> dict[str, Any]:
    return {**status, **outcome.status}


# Steps

StepWork = Callable[[Runtime, Pipeline, Mapping[str, Any], Mapping[str, Any]], StepOutcome]


def _streams(runtime: Runtime, pipeline: Pipeline, body: Mapping[str, Any], status: Mapping[str, Any]) -> StepOutcome:
    return reconcile.streams_step(runtime.aws(pipeline.region), pipeline)


def _iam(runtime: Runtime, pipeline: Pipeline, body: Mapping[str, Any], status: Mapping[str, Any]) -> StepOutcome:
    return reconcile.iam_step(runtime.aws(pipeline.region), pipeline, runtime.settings, status)


def _processor(runtime: Runtime, pipeline: Pipeline, body: Mapping[str, Any], status: Mapping[str, Any]) -> StepOutcome:
    return reconcile.processor_step(runtime.kube, pipeline, runtime.settings, body, status)


STEPS: Final[tuple[tuple[str, str, StepWork], ...]] = (
    ("streams", STREAMS_READY, _streams),
    ("iam", IAM_READY, _iam),
    ("processor", PROCESSOR_READY, _processor),
)


def run_step(
    runtime: Runtime,
    condition_type: str,
    work: StepWork,
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> StepOutcome:
    """Parse the pipeline, run one step, log its changes and report its condition, raising a kopf error on failure."""
    generation = body.get("metadata", {}).get("generation")
    try:
        pipeline = reconcile.parse(body, runtime.settings)
        outcome = work(runtime, pipeline, body, status)
    except Exception as error:
        condition, kopf_error = _failure(condition_type, error)
        report(patch, status, generation, [condition])
        raise kopf_error from error
    for change in outcome.changes:
        logger.info(change)
    report(patch, status, generation, [outcome.condition], outcome.status)
    return outcome


def _step_handler(runtime: Runtime, condition_type: str, work: StepWork) -> Callable[..., None]:
    def handler(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        run_step(runtime, condition_type, work, body, status, patch, logger)

    handler.__name__ = f"reconcile_{condition_type}"
    return handler


# Timers


def _settled(body: Mapping[str, Any]) -> bool:
    """Tell whether timers may act: the pipeline is not being deleted and kopf has finished its spec."""
    return not body.get("metadata", {}).get("deletionTimestamp") and reconcile.spec_is_handled(body)


def verify(
    runtime: Runtime,
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> list[str]:
    """Re-run every step on a pipeline that the handlers have finished, and report recreated resources.

    A resource the steps create again was deleted outside the operator, so each one gets a
    Warning event with reason ``Recreated``. While kopf is still handling the current spec
    (a creation or update in progress or in retry), this does nothing. Returns every change made.
    """
    if not _settled(body):
        return []
    metadata = body.get("metadata", {})
    try:
        pipeline = reconcile.parse(body, runtime.settings)
    except SpecError:
        return []  # the step handlers report an invalid spec

    generation = metadata.get("generation")
    merged_status: dict[str, Any] = dict(status)
    updates: list[Condition] = []
    fields: dict[str, Any] = {}
    changes: list[str] = []
    for _, condition_type, work in STEPS:
        try:
            outcome = work(runtime, pipeline, body, merged_status)
        except Exception as error:
            condition, _ = _failure(condition_type, error)
            updates.append(condition)
            logger.warning("re-verification of %s failed: %s", condition_type, condition.message)
            break
        updates.append(outcome.condition)
        fields.update(outcome.status)
        merged_status = _merged_status(merged_status, outcome)
        changes += outcome.changes

    for change in changes:
        if change.startswith("created "):
            kopf.warn(
                cast(kopf.Body, body), reason="Recreated", message=f"{change}: it was missing, so it was made again"
            )
        else:
            logger.info(change)
    report(patch, status, generation, updates, fields)
    return changes


def follow_rollout(
    kube: ObjectApi,
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    patch: kopf.Patch,
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Report ProcessorReady from the processor's live Deployment, once the handlers have finished the spec."""
    if not _settled(body):
        return
    metadata = body.get("metadata", {})
    refs = (status.get("processor") or {}).get("objects") or []
    try:
        condition = reconcile.rollout_condition(kube, metadata.get("namespace", ""), refs)
    except Exception as error:
        logger.warning("reading the processor's Deployment failed: %s", error)
        return
    if condition is not None:
        report(patch, status, metadata.get("generation"), [condition])


# Deletion


def _records_anything(status: Mapping[str, Any]) -> bool:
    processor_objects = (status.get("processor") or {}).get("objects")
    return bool(
        status.get("processorRoleArn") or status.get("testerRoleArn") or status.get("input") or processor_objects
    )


def delete(
    runtime: Runtime,
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> list[str]:
    """Delete what the pipeline owns, or post a Warning event and raise kopf.TemporaryError on failure."""
    try:
        pipeline = reconcile.parse(body, runtime.settings)
    except SpecError as spec_error:
        last = reconcile.last_handled_pipeline(body, runtime.settings)
        if last is None and not _records_anything(status):
            logger.info("nothing to delete: the spec was never valid (%s)", spec_error)
            return []
        if last is None:
            message = (
                f"cannot delete: the spec is invalid ({spec_error}) and no earlier valid spec is recorded; fix the spec"
            )
            kopf.warn(cast(kopf.Body, body), reason="DeletionFailed", message=message)
            raise kopf.TemporaryError(message, delay=DELETE_RETRY_DELAY_SECONDS) from spec_error
        pipeline = last

    try:
        changes = reconcile.delete_step(
            runtime.aws(pipeline.region), runtime.kube, pipeline, runtime.settings, body, status
        )
    except Exception as error:
        message = f"deletion failed, the finalizer stays until it succeeds: {error}"
        kopf.warn(cast(kopf.Body, body), reason="DeletionFailed", message=message)
        classified = classify(error).error
        delay = DELETE_RETRY_DELAY_SECONDS
        if isinstance(classified, kopf.TemporaryError) and classified.delay:
            delay = classified.delay
        raise kopf.TemporaryError(message, delay=delay) from error
    for change in changes:
        logger.info(change)
    if pipeline.deletion_policy == "Retain":
        logger.info(
            "kept streams %s, %s and table %s (deletionPolicy: Retain)",
            pipeline.input.name,
            pipeline.output.name,
            pipeline.checkpoint_table,
        )
    return changes


# Registration


def register(
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings | None = None,
    aws_factory: AwsFactory | None = None,
) -> Runtime:
    """Add every handler of the operator to ``registry`` and return the runtime they share."""
    runtime = Runtime(settings, aws_factory)
    interval = settings.verify_interval_seconds if settings is not None else verify_interval_from_env(os.environ)

    @kopf.on.startup(id="configure", registry=registry)
    def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
        try:
            operator_settings = runtime.settings
        except SettingsError as error:
            raise kopf.PermanentError(f"the operator's settings are invalid: {error}") from error
        logging.getLogger("anomaly_operator").setLevel(operator_settings.log_level)
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.INFO
        logger.info(
            "operator settings: region %s, allowed prefixes %s",
            operator_settings.region,
            ", ".join(operator_settings.allowed_prefixes),
        )

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(runtime.kube_configuration)

    @kopf.on.cleanup(id="close", registry=registry)
    def close(**_: Any) -> None:
        runtime.close()

    for step_id, condition_type, work in STEPS:
        handler = _step_handler(runtime, condition_type, work)
        kopf.on.create(*RESOURCE, id=step_id, registry=registry)(handler)
        kopf.on.update(*RESOURCE, id=step_id, registry=registry)(handler)
        kopf.on.resume(*RESOURCE, id=step_id, registry=registry)(handler)

    @kopf.on.delete(*RESOURCE, id="delete", registry=registry)
    def on_delete(body: kopf.Body, status: kopf.Status, logger: kopf.Logger, **_: Any) -> None:
        delete(runtime, body, status, logger)

    @kopf.timer(*RESOURCE, id="verify", interval=interval, initial_delay=interval, registry=registry)
    def on_timer(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        verify(runtime, body, status, patch, logger)

    @kopf.timer(*RESOURCE, id="rollout", interval=ROLLOUT_CHECK_SECONDS, registry=registry)
    def on_rollout(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        follow_rollout(runtime.kube, body, status, patch, logger)

    return runtime


__all__ = ["READY", "Runtime", "delete", "follow_rollout", "register", "report", "run_step", "verify"]
