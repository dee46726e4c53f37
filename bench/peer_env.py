"""The peer's virtual environment, ``bench/.peer-venv``, made on first use.

async-kinesis 3.0.1 reaches botocore through aiobotocore, which pins an older botocore
than the processor's boto3 needs, so the two cannot share ``.venv``. The environment is
made with the running interpreter's ``venv`` module and pip from the package index, and
is reused while its marker file names the same requirement.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

PEER_VENV: Final = Path(__file__).resolve().parent / ".peer-venv"
# The [dynamodb] extra brings aioboto3 for the DynamoDB checkpointer.
PEER_REQUIREMENT: Final = "async-kinesis[dynamodb]==3.0.1"
MARKER_NAME: Final = ".installed"
INSTALL_TIMEOUT_SECONDS: Final = 600


class PeerEnvironmentError(RuntimeError):
    """The peer's virtual environment could not be made."""


def peer_python(venv: Path = PEER_VENV) -> Path:
    return venv / "bin" / "python"


def ensure_peer_environment(venv: Path = PEER_VENV) -> Path:
    """Make the peer's virtual environment unless it contains the pinned requirement; return its python."""
    marker = venv / MARKER_NAME
    python = peer_python(venv)
    if python.exists() and marker.exists() and marker.read_text().strip() == PEER_REQUIREMENT:
        return python
    commands = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PEER_REQUIREMENT],
    ]
    for command in commands:
        try:
            # Output is kept for the error message only: pip's warnings would break the progress bars.
            subprocess.run(command, check=True, timeout=INSTALL_TIMEOUT_SECONDS, capture_output=True, text=True)  # noqa: S603 - fixed commands
        except subprocess.CalledProcessError as error:
            raise PeerEnvironmentError(
                f"{' '.join(command)} failed with exit status {error.returncode}: {error.stderr.strip()[-2000:]}; "
                f"delete {venv} and run again, or pass --no-peer"
            ) from error
        except subprocess.TimeoutExpired as error:
            raise PeerEnvironmentError(
                f"{' '.join(command)} timed out after {INSTALL_TIMEOUT_SECONDS} s; pass --no-peer to skip the peer"
            ) from error
    marker.write_text(PEER_REQUIREMENT + "\n")
    return python
