"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager on loopback.

The binaries are built from Go modules, not downloaded: ``tests/testbed/kubernetes`` is a tiny Go module
that requires ``k8s.io/kubernetes`` (its ``tool`` directives name the two Kubernetes commands) and
``go.etcd.io/etcd/server/v3`` at the version Kubernetes pins (``cmd/etcd`` is etcd's own main); its
``go.sum`` makes the build reproducible. :func:`kubernetes_binaries` builds all three in one ``go build``
(shared packages compile once) into::

    ${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/ferry}/kubernetes-<version>-<hash>/bin/

keyed by the Kubernetes version and a hash of the module files and the build flags. The first run needs
Go (``go`` on PATH, the version in go.mod or newer) and the Go module proxy, and takes several minutes; a
file lock serialises concurrent first runs and the finished directory is renamed into place atomically.

:func:`start_control_plane` makes a CA, serving and client certificates and a service-account key pair
(all in Python), then starts etcd, kube-apiserver and kube-controller-manager on free loopback ports, each
in its own process group and stopped by PID (see :mod:`tests.support.servers`)::

    with start_control_plane(tmp_path) as cp:
        api = kubernetes.client.CoreV1Api(cp.api_client())       # system:masters client certificate
        cp.kubeconfig                                              # admin kubeconfig (for kubectl, Kopf)
        cp.kubeconfig_for_token(token, tmp_path / "sa.kubeconfig")  # e.g. from a TokenRequest

There is no scheduler and no kubelet: pods stay Pending. Everything else a controller needs is real:
RBAC and Node authorization, admission (PodSecurity, webhooks, ServiceAccount, ...), service-account
tokens (TokenRequest), and the controller manager's default controllers (deployment, replicaset, garbage
collector, namespace, serviceaccount, root CA publisher, ...).

    python -m tests.support.controlplane build            # build (or find) the binaries, print their paths
    python -m tests.support.controlplane run --dir DIR    # run a control plane in the foreground
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

import kubernetes.client
import kubernetes.config
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.servers import (
    LOOPBACK,
    STOP_TIMEOUT,
    ServerStartError,
    _retry_port_clash,
    _Server,
    _start,
    free_port,
)
from tests.support.tools import cache_root, file_lock

__all__ = [
    "SERVICE_ACCOUNT_ISSUER",
    "SERVICE_CIDR",
    "BuildError",
    "ControlPlane",
    "Etcd",
    "KubeApiServer",
    "KubeControllerManager",
    "ServerStartError",
    "etcd_version",
    "kubernetes_binaries",
    "kubernetes_version",
    "main",
    "start_control_plane",
    "wait_for_default_service_account",
]

TESTBED = Path(__file__).resolve().parents[1] / "testbed" / "kubernetes"
# Program name -> Go package, relative to the testbed module.
PACKAGES = {
    "etcd": "./cmd/etcd",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
}
BUILD_TIMEOUT = 3600.0
# ClusterIPs on loopback: the process kubelet's ServiceProxy listens on them (as kube-proxy would route them),
# so the API server reaches webhook Services, and no test traffic goes to an address outside this machine.
SERVICE_CIDR = "127.96.0.0/16"
SERVICE_IP = "127.96.0.1"  # the `kubernetes` Service: first address of SERVICE_CIDR
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ETCD_QUOTA_BYTES = 256 * 1024 * 1024
ETCD_TIMEOUT = 30.0
APISERVER_TIMEOUT = 120.0
CONTROLLER_MANAGER_TIMEOUT = 60.0
CERT_VALIDITY = timedelta(days=30)


class BuildError(RuntimeError):
    """The control-plane binaries could not be built; the message says why and how to retry."""


# ---------------------------------------------------------------------------------------------
# Building the binaries


@functools.cache
def kubernetes_version() -> str:
    """The k8s.io/kubernetes version the testbed module requires (e.g. ``v1.37.2``)."""
    return _required_version("k8s.io/kubernetes")


@functools.cache
def etcd_version() -> str:
    """The etcd server version the testbed module requires (the one Kubernetes pins)."""
    return _required_version("go.etcd.io/etcd/server/v3")


def _required_version(module: str) -> str:
    for line in (TESTBED / "go.mod").read_text().splitlines():
        words = line.split()
        if words[:1] == ["require"]:
            words = words[1:]
        if len(words) >= 2 and words[0] == module and words[1].startswith("v"):
            return words[1]
    raise BuildError(f"{TESTBED / 'go.mod'} does not require {module}")


def _ldflags(version: str) -> str:
    # -s -w: no symbol table or DWARF (about a third smaller). -X: what `kubectl version` and /version report
    # (the release build sets these from git; a module build would say v0.0.0-master).
    major, minor = version.removeprefix("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.gitVersion={version}", f"-X {package}.gitMajor={major}"]
        flags += [f"-X {package}.gitMinor={minor}"]
    return " ".join(flags)


def _build_argv(go: str, out_dir: Path, version: str) -> list[str]:
    # One invocation for all three: the packages they share (client-go, grpc, etcd client, ...) compile once.
    argv = [go, "build", "-mod=readonly", "-trimpath", "-buildvcs=false", f"-ldflags={_ldflags(version)}"]
    return [*argv, "-o", f"{out_dir}{os.sep}", *PACKAGES.values()]


# Part of the cache key: changing how the binaries are built must not reuse old ones.
_BUILD_ENV = {"CGO_ENABLED": "0", "GOWORK": "off"}


def _cache_key() -> str:
    digest = hashlib.sha256()
    sources = [p for p in TESTBED.rglob("*") if p.is_file() and (p.suffix == ".go" or p.name in ("go.mod", "go.sum"))]
    for path in sorted(sources):
        digest.update(path.relative_to(TESTBED).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    recipe = _build_argv("go", Path("out"), kubernetes_version())[1:] + sorted(_BUILD_ENV.items())
    digest.update(json.dumps(recipe).encode())
    return f"kubernetes-{kubernetes_version()}-{digest.hexdigest()[:12]}"


def kubernetes_binaries() -> dict[str, Path]:
    """Paths of etcd, kube-apiserver and kube-controller-manager, building them on first use.

    Prints to stderr what it builds and, when done, how long it took and how big the binaries are.
    Raises :class:`BuildError` with the tail of Go's output when the build fails.
    """
    key = _cache_key()
    root = cache_root()
    target = root / key
    if _complete(target):
        return _binaries(target)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{key}.lock"):
        if not _complete(target):  # another process may have finished while we waited
            _build(root, target)
    return _binaries(target)


def _binaries(target: Path) -> dict[str, Path]:
    return {name: target / "bin" / name for name in PACKAGES}


def _complete(target: Path) -> bool:
    return all(path.is_file() and os.access(path, os.X_OK) for path in _binaries(target).values())


def _build(root: Path, target: Path) -> None:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"`go` is not on PATH: Go (see the go directive in {TESTBED / 'go.mod'}) and access to the Go module"
            " proxy are needed once, to build the Kubernetes control plane for the tests"
        )
    version, etcd = kubernetes_version(), etcd_version()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; the renamed directory should not be
    try:
        log_path = tmp / "build.log"
        argv = _build_argv(go, tmp / "bin", version)
        _say(
            f"building kube-apiserver and kube-controller-manager {version} and etcd {etcd} from Go modules"
            f" (first run only, several minutes) into {target} ..."
        )
        started = time.monotonic()
        try:
            _run_build(argv, log_path)
        except BuildError as err:
            kept = root / f"{target.name}.failed.log"  # tmp goes, the log stays
            os.replace(log_path, kept)
            raise BuildError(f"{err}\n(whole log: {kept})") from None
        elapsed = time.monotonic() - started
        if not _complete(tmp):
            raise BuildError(f"`go build` left no binaries in {tmp / 'bin'}\n{_tail(log_path)}")
        sizes = {name: path.stat().st_size for name, path in _binaries(tmp).items()}
        info = {"kubernetes": version, "etcd": etcd, "go": _go_version(go), "seconds": round(elapsed), "argv": argv}
        (tmp / "build-info.json").write_text(json.dumps({**info, "bytes": sizes}, indent=2) + "\n")
        if target.exists():  # incomplete leftovers (a binary deleted by hand)
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: readers see no directory or the whole one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = ", ".join(f"{name} {size / 1e6:.0f} MB" for name, size in sizes.items())
    _say(f"built in {elapsed / 60:.1f} min: {summary}")


def _run_build(argv: list[str], log_path: Path) -> None:
    env = {**os.environ, **_BUILD_ENV}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=TESTBED, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        started = time.monotonic()
        try:
            while True:
                try:
                    proc.wait(timeout=60)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - started
                    if elapsed > BUILD_TIMEOUT:
                        raise BuildError(
                            f"`go build` did not finish within {BUILD_TIMEOUT:.0f}s\n{_tail(log_path)}"
                        ) from None
                    _say(f"... still building ({elapsed / 60:.0f} min)")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        raise BuildError(f"`{' '.join(argv)}` failed (exit {proc.returncode}) in {TESTBED}\n{_tail(log_path)}")


def _go_version(go: str) -> str:
    result = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _say(message: str) -> None:
    print(f"[controlplane] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Certificates and keys


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _subject(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _subject("ferry-test-ca")
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    hosts: Sequence[str] = (),
) -> tuple[bytes, bytes]:
    """A certificate (PEM) and its key (PEM): a serving certificate if hosts are given, else a client one."""
    ca_cert, ca_key = ca
    key = _new_key()
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if hosts else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(common_name, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
    return _cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: Path, data: bytes, *, secret: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if secret:  # private before the key is in it
        path.touch(mode=0o600)
        path.chmod(0o600)
    path.write_bytes(data)
    return path


def _write_pki(pki: Path) -> None:
    """workdir/pki: ca.{crt,key}, apiserver.*, admin.*, controller-manager.*, controller-manager-serving.*, sa.*"""
    ca = _new_ca()
    _write(pki / "ca.crt", _cert_pem(ca[0]))
    _write(pki / "ca.key", _key_pem(ca[1]), secret=True)
    apiserver_hosts = [LOOPBACK, SERVICE_IP, "localhost", "kubernetes", "kubernetes.default"]
    apiserver_hosts += ["kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
    pairs = {
        "apiserver": _issue(ca, "kube-apiserver", hosts=apiserver_hosts),
        "admin": _issue(ca, "ferry-test-admin", organizations=["system:masters"]),
        "controller-manager": _issue(ca, "system:kube-controller-manager"),
        "controller-manager-serving": _issue(ca, "kube-controller-manager", hosts=[LOOPBACK, "localhost"]),
    }
    for name, (cert, key) in pairs.items():
        _write(pki / f"{name}.crt", cert)
        _write(pki / f"{name}.key", key, secret=True)
    signing_key = _new_key()
    _write(pki / "sa.key", _key_pem(signing_key), secret=True)
    public = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(pki / "sa.pub", public)


def _write_kubeconfig(path: Path, server: str, ca_pem: bytes, user_name: str, user: dict[str, str]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ferry-test", "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}],
        "users": [{"name": user_name, "user": user}],
        "contexts": [{"name": user_name, "context": {"cluster": "ferry-test", "user": user_name}}],
        "current-context": user_name,
    }
    return _write(path, yaml.safe_dump(config, sort_keys=False).encode(), secret=True)


def _client_cert_user(pki: Path, name: str) -> dict[str, str]:
    return {
        "client-certificate-data": _b64((pki / f"{name}.crt").read_bytes()),
        "client-key-data": _b64((pki / f"{name}.key").read_bytes()),
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Etcd(_Server):
    """etcd, plain HTTP on loopback, data in workdir/etcd."""

    program: ClassVar[str] = "etcd"

    url: str


@dataclass
class KubeApiServer(_Server):
    """kube-apiserver; url is its secure port (client certificates signed by workdir/pki/ca.crt, or tokens)."""

    program: ClassVar[str] = "kube-apiserver"

    url: str


@dataclass
class KubeControllerManager(_Server):
    """kube-controller-manager; url is its secure port (/healthz, /metrics)."""

    program: ClassVar[str] = "kube-controller-manager"

    url: str


def _no_proxy_opener(context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _get_not_ready(opener: urllib.request.OpenerDirector, url: str, expected: str) -> str | None:
    """None if GET url answers 200 with a body containing expected, else why not."""
    try:
        with opener.open(url, timeout=3) as response:
            body = response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return f"GET {url}: HTTP {err.code}: {err.read().decode(errors='replace')[-1000:]}"
    except (OSError, ssl.SSLError) as err:
        return f"GET {url}: {err}"
    return None if expected in body else f"GET {url}: {body[-1000:]}"


def _tls_context(pki: Path, client: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client is not None:
        context.load_cert_chain(pki / f"{client}.crt", pki / f"{client}.key")
    return context


def _clean_env(*prefixes: str) -> dict[str, str]:
    # etcd reads every flag from ETCD_* variables; the Kubernetes commands must not pick up a KUBECONFIG.
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _start_etcd(binary: Path, workdir: Path) -> Etcd:
    data_dir = workdir / "etcd"
    log_path = workdir / "etcd.log"

    def attempt() -> Etcd:
        shutil.rmtree(data_dir, ignore_errors=True)  # a failed attempt bootstrapped other peer URLs
        client_url = f"http://{LOOPBACK}:{free_port()}"
        peer_url = f"http://{LOOPBACK}:{free_port()}"
        argv = [
            str(binary),
            "--name=ferry-test",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=ferry-test={peer_url}",
            "--initial-cluster-state=new",
            f"--quota-backend-bytes={ETCD_QUOTA_BYTES}",
            "--unsafe-no-fsync",  # test data: crash safety is not needed, speed is
            "--log-level=warn",
        ]
        probe = partial(_get_not_ready, _no_proxy_opener(None), f"{client_url}/health", '"health":"true"')
        proc = _start(argv, workdir, log_path, _clean_env("ETCD"), probe, timeout=ETCD_TIMEOUT)
        return Etcd(pid=proc.pid, log_path=log_path, url=client_url, _proc=proc)

    return _retry_port_clash(attempt)


def _start_apiserver(binary: Path, workdir: Path, etcd: Etcd) -> KubeApiServer:
    pki = workdir / "pki"
    log_path = workdir / "kube-apiserver.log"
    opener = _no_proxy_opener(_tls_context(pki, "admin"))

    def attempt() -> KubeApiServer:
        url = f"https://{LOOPBACK}:{free_port()}"
        argv = [
            str(binary),
            f"--etcd-servers={etcd.url}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={url.rsplit(':', 1)[1]}",
            f"--cert-dir={workdir / 'kube-apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # Already on by default in 1.37; named so a test relying on them does not depend on the defaults.
            "--enable-admission-plugins=NodeRestriction,PodSecurity,MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            # Let PodSecurity (not the API server's own validation) decide about privileged pods.
            "--allow-privileged=true",
            # The `kubernetes` Service's endpoints would be 127.0.0.1, which Endpoints validation refuses.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]
        probe = partial(_get_not_ready, opener, f"{url}/readyz", "ok")
        proc = _start(argv, workdir, log_path, _clean_env("KUBECONFIG"), probe, timeout=APISERVER_TIMEOUT)
        return KubeApiServer(pid=proc.pid, log_path=log_path, url=url, _proc=proc)

    return _retry_port_clash(attempt)


def _start_controller_manager(binary: Path, workdir: Path, kubeconfig: Path) -> KubeControllerManager:
    pki = workdir / "pki"
    log_path = workdir / "kube-controller-manager.log"
    opener = _no_proxy_opener(_tls_context(pki, None))

    def attempt() -> KubeControllerManager:
        url = f"https://{LOOPBACK}:{free_port()}"
        argv = [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # Take the client CA from the flag below, not from the API server's extension-apiserver-authentication
            # ConfigMap (without a front proxy it lacks the request-header CA: an error logged every few seconds).
            "--authentication-skip-lookup=true",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={url.rsplit(':', 1)[1]}",
            f"--cert-dir={workdir / 'kube-controller-manager'}",
            f"--tls-cert-file={pki / 'controller-manager-serving.crt'}",
            f"--tls-private-key-file={pki / 'controller-manager-serving.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true",  # each controller acts as its own service account
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--leader-elect=false",
            "--profiling=false",
            # Its default is under /usr/libexec, which it would create.
            f"--flex-volume-plugin-dir={workdir / 'kube-controller-manager' / 'flexvolume'}",
        ]
        probe = partial(_get_not_ready, opener, f"{url}/healthz", "ok")
        proc = _start(argv, workdir, log_path, _clean_env("KUBECONFIG"), probe, timeout=CONTROLLER_MANAGER_TIMEOUT)
        return KubeControllerManager(pid=proc.pid, log_path=log_path, url=url, _proc=proc)

    return _retry_port_clash(attempt)


# ---------------------------------------------------------------------------------------------
# The control plane


@dataclass
class ControlPlane:
    """A running etcd + kube-apiserver + kube-controller-manager; files live in workdir."""

    workdir: Path
    server: str  # https://127.0.0.1:PORT
    kubeconfig: Path  # admin (O=system:masters), certificate and CA embedded
    ca_path: Path
    etcd: Etcd
    apiserver: KubeApiServer
    controller_manager: KubeControllerManager
    startup_seconds: dict[str, float] = field(default_factory=dict)  # per component, to ready

    @property
    def servers(self) -> list[_Server]:
        """The three processes, in stopping order."""
        return [self.controller_manager, self.apiserver, self.etcd]

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new ``kubernetes`` client authenticated as the admin (system:masters)."""
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """Write a kubeconfig for this server that authenticates with a bearer token; returns path."""
        return _write_kubeconfig(path, self.server, self.ca_path.read_bytes(), "token", {"token": token})

    def api_client_for_token(self, token: str) -> kubernetes.client.ApiClient:
        """A new ``kubernetes`` client that authenticates with a bearer token (e.g. a service account's).

        Configured directly, without a kubeconfig file. (Tokens from a kubeconfig need ``kubernetes`` >= 36.0.2:
        36.0.0 silently sent no token, kubernetes-client/python#2582.)
        """
        configuration = kubernetes.client.Configuration(host=self.server, ssl_ca_cert=str(self.ca_path))
        configuration.api_key = {"BearerToken": token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return kubernetes.client.ApiClient(configuration)

    def running(self) -> bool:
        return all(server.running() for server in self.servers)

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each process (Linux /proc), by program name."""
        return {server.program: _rss(server.pid) for server in self.servers}

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop controller manager, API server and etcd in that order (SIGTERM, SIGKILL after timeout). Idempotent."""
        for server in self.servers:
            server.stop(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _rss(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_for_default_service_account(api: kubernetes.client.ApiClient, namespace: str, timeout: float = 30) -> None:
    """Wait until the serviceaccount controller made `default` in a new namespace: ServiceAccount admission
    refuses the namespace's pods until then."""
    core = kubernetes.client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while not core.list_namespaced_service_account(namespace, field_selector="metadata.name=default").items:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ServiceAccount {namespace}/default after {timeout:.0f}s")
        time.sleep(0.2)


def start_control_plane(workdir: Path) -> ControlPlane:
    """Build the binaries if needed, then start etcd, kube-apiserver and kube-controller-manager.

    Certificates and keys go to workdir/pki, etcd's data to workdir/etcd, logs to workdir/<program>.log,
    the admin kubeconfig to workdir/kubeconfig. Raises :class:`ServerStartError` (with the log tail) if a
    component does not become ready; whatever did start is stopped again.
    """
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    binaries = kubernetes_binaries()
    pki = workdir / "pki"
    _write_pki(pki)
    started: list[_Server] = []
    timings: dict[str, float] = {}

    def timed(name: str, start: float) -> None:
        timings[name] = round(time.monotonic() - start, 2)

    try:
        t0 = time.monotonic()
        etcd = _start_etcd(binaries["etcd"], workdir)
        started.append(etcd)
        timed("etcd", t0)
        t1 = time.monotonic()
        apiserver = _start_apiserver(binaries["kube-apiserver"], workdir, etcd)
        started.append(apiserver)
        timed("kube-apiserver", t1)
        ca_pem = (pki / "ca.crt").read_bytes()
        kubeconfig = _write_kubeconfig(
            workdir / "kubeconfig", apiserver.url, ca_pem, "admin", _client_cert_user(pki, "admin")
        )
        kcm_kubeconfig = _write_kubeconfig(
            workdir / "kube-controller-manager.kubeconfig",
            apiserver.url,
            ca_pem,
            "kube-controller-manager",
            _client_cert_user(pki, "controller-manager"),
        )
        t2 = time.monotonic()
        controller_manager = _start_controller_manager(binaries["kube-controller-manager"], workdir, kcm_kubeconfig)
        started.append(controller_manager)
        timed("kube-controller-manager", t2)
        timed("total", t0)
    except BaseException:
        for server in reversed(started):
            server.stop()
        raise
    return ControlPlane(
        workdir=workdir,
        server=apiserver.url,
        kubeconfig=kubeconfig,
        ca_path=pki / "ca.crt",
        etcd=etcd,
        apiserver=apiserver,
        controller_manager=controller_manager,
        startup_seconds=timings,
    )


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.controlplane", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the binaries (first run) and print their paths")
    run = sub.add_parser("run", help="run a control plane in the foreground until Ctrl-C or SIGTERM")
    run.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for name, path in kubernetes_binaries().items():
                print(f"{name}\t{path}")
            return 0
        with start_control_plane(args.dir) as cp:
            print(json.dumps({"server": cp.server, "kubeconfig": str(cp.kubeconfig), **cp.startup_seconds}))
            print(f"export KUBECONFIG={cp.kubeconfig}   # Ctrl-C stops the control plane", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            with contextlib.suppress(KeyboardInterrupt):
                while cp.running():
                    time.sleep(1)
    except (BuildError, ServerStartError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
