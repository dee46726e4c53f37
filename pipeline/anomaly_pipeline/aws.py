"""AWS clients for one region and endpoint.

Endpoint precedence: an explicit ``endpoint_url`` argument, then botocore's own
``AWS_ENDPOINT_URL_<SERVICE>`` and ``AWS_ENDPOINT_URL`` variables, then real AWS.
Passing no endpoint lets botocore apply the per-service variables, which the tests use
to point Kinesis at kinesalite while the rest stays on moto.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
)


@dataclass
class Aws:
    """A boto3 session with an optional endpoint override, creating clients on demand."""

    region: str
    endpoint_url: str | None = None
    session: boto3.session.Session = field(default_factory=boto3.session.Session)

    def client(self, service: str, config: Config | None = None) -> Any:
        kwargs: dict[str, Any] = {"region_name": self.region, "config": config or CLIENT_CONFIG}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        return self.session.client(service, **kwargs)  # type: ignore[call-overload]

    def endpoint_for(self, service: str) -> str | None:
        """Return the endpoint a client of ``service`` will use, or None for real AWS."""
        if self.endpoint_url:
            return self.endpoint_url
        variable = f"AWS_ENDPOINT_URL_{service.upper().replace('-', '_')}"
        return os.environ.get(variable) or os.environ.get("AWS_ENDPOINT_URL")

    @classmethod
    def with_credentials(cls, region: str, credentials: dict[str, str], endpoint_url: str | None = None) -> Aws:
        """Return clients that use temporary credentials, such as an assumed role's."""
        session = boto3.session.Session(
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
        )
        return cls(region=region, endpoint_url=endpoint_url, session=session)
