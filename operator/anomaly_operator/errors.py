"""Retry policy for failed reconcile steps: which AWS and Kubernetes errors are transient.

``classify`` turns an exception into a kopf error and a condition reason. Throttling,
server-side and connection errors are ``kopf.TemporaryError`` with a short delay. Access
errors are temporary too, with a longer delay, because an administrator can fix them without
touching the pipeline. An invalid spec and resources owned by another pipeline are
``kopf.PermanentError``, which kopf does not retry until the spec changes. Nothing here logs,
because the handler reports the condition and kopf logs the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import kopf
from anomaly_pipeline.provisioning import OwnershipError, ProvisioningError, ShardCountChangeError
from anomaly_pipeline.spec import SpecError
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, EndpointConnectionError, ReadTimeoutError

# Seconds before kopf retries a step after each kind of failure.
THROTTLED_DELAY_SECONDS: Final = 15.0
TRANSIENT_DELAY_SECONDS: Final = 30.0
ACCESS_DENIED_DELAY_SECONDS: Final = 120.0
OTHER_AWS_DELAY_SECONDS: Final = 60.0

THROTTLING_CODES: Final = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
    }
)
TRANSIENT_CODES: Final = frozenset(
    {
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "InternalServerException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "ServiceFailure",
        "RequestTimeout",
        "RequestTimeoutException",
        # A stream that is UPDATING rejects changes until it is ACTIVE again.
        "ResourceInUseException",
        "ConcurrentModification",
        "ConcurrentModificationException",
    }
)
ACCESS_CODES: Final = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "ExpiredToken", "ExpiredTokenException"}
)
# HTTP statuses of the Kubernetes API worth retrying soon: conflict, throttling, server errors.
TRANSIENT_KUBERNETES_STATUSES: Final = frozenset({409, 429, 500, 502, 503, 504})


class RenderError(RuntimeError):
    """``helm template`` of the processor chart failed, and the message contains helm's stderr."""


class ForeignObjectError(RuntimeError):
    """A processor object's name is taken by an object that this pipeline does not own."""


class KubernetesApiError(RuntimeError):
    """A Kubernetes API call on a processor object failed with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Classified:
    """A handler's response to a step's exception: the condition reason and the kopf error."""

    reason: str
    message: str
    error: kopf.TemporaryError | kopf.PermanentError


def aws_error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def classify(error: Exception) -> Classified:
    """Map a step's exception to a condition reason and a kopf error that keeps the cause's message."""
    message = str(error)
    if isinstance(error, SpecError):
        text = f"invalid {error.field}: {message}"
        return Classified("InvalidSpec", text, kopf.PermanentError(text))
    if isinstance(error, OwnershipError):
        return Classified("OwnedByAnotherPipeline", message, kopf.PermanentError(message))
    if isinstance(error, ShardCountChangeError):
        return Classified("ShardCountChangeRejected", message, kopf.PermanentError(message))
    if isinstance(error, ProvisioningError):
        return Classified("ProvisioningFailed", message, kopf.PermanentError(message))
    if isinstance(error, ClientError):
        return _classify_client_error(error)
    if isinstance(error, (EndpointConnectionError, ConnectionError, ReadTimeoutError)):
        return Classified("AWSUnreachable", message, kopf.TemporaryError(message, delay=TRANSIENT_DELAY_SECONDS))
    if isinstance(error, BotoCoreError):
        return Classified("AWSError", message, kopf.TemporaryError(message, delay=OTHER_AWS_DELAY_SECONDS))
    if isinstance(error, ForeignObjectError):
        # Retried, because the user may rename or remove the other object without touching the pipeline.
        return Classified("ObjectNameTaken", message, kopf.TemporaryError(message, delay=ACCESS_DENIED_DELAY_SECONDS))
    if isinstance(error, RenderError):
        return Classified("RenderFailed", message, kopf.TemporaryError(message, delay=OTHER_AWS_DELAY_SECONDS))
    if isinstance(error, KubernetesApiError):
        delay = TRANSIENT_DELAY_SECONDS if error.status in TRANSIENT_KUBERNETES_STATUSES else OTHER_AWS_DELAY_SECONDS
        return Classified("KubernetesApiError", message, kopf.TemporaryError(message, delay=delay))
    text = f"{type(error).__name__}: {message}"
    return Classified("UnexpectedError", text, kopf.TemporaryError(text, delay=OTHER_AWS_DELAY_SECONDS))


def _classify_client_error(error: ClientError) -> Classified:
    code = aws_error_code(error)
    message = str(error)
    if code in THROTTLING_CODES:
        return Classified("Throttled", message, kopf.TemporaryError(message, delay=THROTTLED_DELAY_SECONDS))
    if code in TRANSIENT_CODES:
        return Classified("AWSUnavailable", message, kopf.TemporaryError(message, delay=TRANSIENT_DELAY_SECONDS))
    if code in ACCESS_CODES:
        return Classified("AccessDenied", message, kopf.TemporaryError(message, delay=ACCESS_DENIED_DELAY_SECONDS))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if status >= 500:
        return Classified("AWSUnavailable", message, kopf.TemporaryError(message, delay=TRANSIENT_DELAY_SECONDS))
    return Classified("AWSError", message, kopf.TemporaryError(message, delay=OTHER_AWS_DELAY_SECONDS))
