"""Run the pinned Helm from tests: ``helm lint`` and ``helm template`` of the repository's charts.

Rendering needs no cluster: ``helm template`` runs offline with the Kubernetes version
given here. Failures raise ``HelmError`` with Helm's stderr, which names the template or
the schema rule that failed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from tests.tools.paths import REPO_ROOT, helm_binary

CHARTS_DIR: Final = REPO_ROOT / "charts"
# The Kubernetes version the charts are rendered for and validated against.
KUBE_VERSION: Final = "1.31.0"
HELM_TIMEOUT_SECONDS: Final = 60


class HelmError(RuntimeError):
    """helm exited non-zero; the message contains its stderr."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(command)} failed with exit code {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def run_helm(*arguments: str) -> str:
    """Run helm with ``arguments`` and return its stdout, raising HelmError on failure."""
    command = [str(helm_binary()), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HELM_TIMEOUT_SECONDS, check=False)
    if result.returncode != 0:
        raise HelmError(command, result.returncode, result.stderr)
    return result.stdout


def _value_arguments(
    values_files: Sequence[Path], set_values: Mapping[str, str], set_string_values: Mapping[str, str]
) -> list[str]:
    arguments: list[str] = []
    for path in values_files:
        arguments += ["--values", str(path)]
    for key, value in set_values.items():
        arguments += ["--set", f"{key}={value}"]
    # --set reads 123456789012 as a number; --set-string keeps it a string.
    for key, value in set_string_values.items():
        arguments += ["--set-string", f"{key}={value}"]
    return arguments


def lint(chart: Path, values_files: Sequence[Path] = (), set_values: Mapping[str, str] | None = None) -> str:
    """Run ``helm lint --strict`` on ``chart`` and return its output."""
    return run_helm("lint", "--strict", str(chart), *_value_arguments(values_files, set_values or {}, {}))


def render(
    chart: Path,
    values_files: Sequence[Path] = (),
    set_values: Mapping[str, str] | None = None,
    release: str = "payments",
    namespace: str = "default",
    include_crds: bool = False,
    set_string_values: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Render ``chart`` with ``helm template`` and return its objects, in Helm's order."""
    arguments = ["template", release, str(chart), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    if include_crds:
        arguments.append("--include-crds")
    output = run_helm(*arguments, *_value_arguments(values_files, set_values or {}, set_string_values or {}))
    return [document for document in yaml.safe_load_all(output) if document]


def find(objects: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Return the rendered objects of one kind."""
    return [obj for obj in objects if obj.get("kind") == kind]


def only(objects: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Return the one rendered object of ``kind``, failing when there are none or several."""
    matches = find(objects, kind)
    if len(matches) != 1:
        raise AssertionError(f"expected one {kind}, found {len(matches)}")
    return matches[0]
