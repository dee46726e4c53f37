"""Where the test suite's external tools live once ``python -m tests.tools.install`` has run.

Tests import these functions instead of searching ``PATH``, so the suite always runs the
pinned versions that ``make tools`` installed into ``.tools/`` (gitignored). Nothing here
installs anything: a missing tool raises ``FileNotFoundError`` naming the command to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
TOOLS_DIR: Final = REPO_ROOT / ".tools"
BIN_DIR: Final = TOOLS_DIR / "bin"
NODE_PREFIX: Final = TOOLS_DIR / "node"
KINESALITE_MODULE: Final = NODE_PREFIX / "node_modules" / "kinesalite"
KINESALITE_LAUNCHER: Final = Path(__file__).resolve().parent / "kinesalite.js"

INSTALL_HINT: Final = "run `make tools` (python -m tests.tools.install) first"


def _installed(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: {INSTALL_HINT}")
    return path


def helm_binary() -> Path:
    """Return the path of the pinned Helm binary."""
    return _installed(BIN_DIR / "helm", "helm")


def kubectl_binary() -> Path:
    """Return the path of the kubectl binary shipped beside Helm."""
    return _installed(BIN_DIR / "kubectl", "kubectl")


def kinesalite_command(port: int) -> list[str]:
    """Return the command that starts kinesalite on 127.0.0.1:``port`` (0 picks a free port).

    The launcher prints ``kinesalite listening on http://127.0.0.1:PORT`` once it accepts
    connections.
    """
    _installed(KINESALITE_MODULE / "package.json", "kinesalite")
    return ["node", str(KINESALITE_LAUNCHER), str(port)]
