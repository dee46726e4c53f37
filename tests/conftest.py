"""Fixtures shared by the whole suite: AWS settings that never reach real AWS, and moto's server."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from anomaly_pipeline.emulator import running_emulator
from anomaly_pipeline.spec import Pipeline, load_pipeline_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pipeline.yaml"


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give every test dummy credentials and no endpoint, so nothing can reach real AWS by accident."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    # Keeps botocore from asking the instance metadata service for credentials or region.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_session_endpoint() -> Iterator[str]:
    with running_emulator() as endpoint_url:
        yield endpoint_url


@pytest.fixture
def moto_endpoint(moto_session_endpoint: str) -> str:
    """Return the URL of moto's server on 127.0.0.1, emptied of every resource."""
    request = urllib.request.Request(f"{moto_session_endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    return moto_session_endpoint


@pytest.fixture
def example_pipeline() -> Pipeline:
    return load_pipeline_file(str(EXAMPLE))
