"""Go programs the tests run, built once with ``go install`` from the Go module proxy into a cache keyed by
version: Toxiproxy (fault injection between a worker and its broker or store) and Prometheus's promtool (the
chart's alert rules checked and fed synthetic series).

Each build says what it builds and how long it took; it needs Go and the Go module proxy once. The binary
lands in ``<cache_root()>/<name>-<version>/<program>`` with a ``build-info.json`` beside it; a file lock makes
concurrent first runs build once, and the directory appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import _log_tail
from tests.support.tools import ToolError, cache_root, file_lock

BUILD_TIMEOUT = 1800.0
_BUILD_ENV = {"CGO_ENABLED": "0", "GOWORK": "off"}


@dataclass(frozen=True)
class GoTool:
    name: str  # the cache directory is <name>-<version>
    program: str  # the binary's name in it
    version: str  # the module version, e.g. v2.5.0
    package: str  # the main package's import path (without @version)
    purpose: str  # why the tests need it, for the message when Go is missing
    build_time: str  # what the first build takes on 2 cores, told before it starts
    ldflags: str = "-s -w"

    @property
    def directory(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    def binary(self) -> Path:
        """The path of the program, built with ``go install`` on first use; a failed build raises ToolError with
        the tail of Go's output."""
        target = self.directory
        binary = target / self.program
        if _is_executable(binary):
            return binary
        target.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(target.parent / f".{target.name}.lock"):
            if not _is_executable(binary):  # another process may have finished while we waited
                self._build(target)
        return binary

    def _build(self, target: Path) -> None:
        go = shutil.which("go")
        if go is None:
            raise ToolError(
                f"`go` is not on PATH: Go and access to the Go module proxy are needed once, to build"
                f" {self.program} {self.version} for {self.purpose}"
            )
        print(
            f"building {self.program} {self.version} from Go modules (first run only, {self.build_time})"
            f" into {target} ...",
            file=sys.stderr,
            flush=True,
        )
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the renamed directory should not be
        try:
            argv = [go, "install", "-trimpath", f"-ldflags={self.ldflags}", f"{self.package}@{self.version}"]
            log_path = tmp / "build.log"
            bin_dir = tmp / "bin"  # GOBIN: `go install` names the binary after its package directory
            env = {**os.environ, **_BUILD_ENV, "GOBIN": str(bin_dir)}
            with log_path.open("wb") as log:
                try:
                    done = subprocess.run(
                        argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=BUILD_TIMEOUT
                    )
                    failure = None if done.returncode == 0 else f"failed (exit {done.returncode})"
                except subprocess.TimeoutExpired:
                    failure = f"did not finish within {BUILD_TIMEOUT:.0f}s"
            built = bin_dir / self.package.rsplit("/", 1)[-1]
            if failure is None and not _is_executable(built):
                failure = f"left no binary at {built}"
            if failure is not None:
                kept = target.parent / f"{target.name}.failed.log"  # tmp goes, the log stays
                os.replace(log_path, kept)
                raise ToolError(f"`{' '.join(argv)}` {failure}\n{_log_tail(kept)}")
            os.replace(built, tmp / self.program)
            bin_dir.rmdir()
            elapsed = time.monotonic() - started
            info = {"version": self.version, "go": _go_version(go), "seconds": round(elapsed), "argv": argv}
            (tmp / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
            if target.exists():  # incomplete leftovers (the binary deleted by hand)
                shutil.rmtree(target)
            os.replace(tmp, target)  # atomic: readers see no directory or the whole one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        size = (target / self.program).stat().st_size
        print(f"built {self.program} in {elapsed:.0f}s ({size / 1e6:.0f} MB)", file=sys.stderr, flush=True)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _go_version(go: str) -> str:
    result = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


TOXIPROXY = GoTool(
    name="toxiproxy",
    program="toxiproxy-server",
    version="v2.5.0",
    package="github.com/Shopify/toxiproxy/v2/cmd/server",
    purpose="the fault-injection tests",
    build_time="about 40 s",
    # the version as the release builds set it (no "v"), so GET /version names what runs
    ldflags="-s -w -X github.com/Shopify/toxiproxy/v2.Version=2.5.0",
)

PROMTOOL = GoTool(
    name="promtool",
    program="promtool",
    version="v0.316.0",  # Prometheus 3.16's Go module version
    package="github.com/prometheus/prometheus/cmd/promtool",
    purpose="checking the chart's alert rules",
    build_time="a few minutes",
)
