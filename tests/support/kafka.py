"""A real Apache Kafka broker for tests, ``make demo`` and benchmarks.

One JVM runs a KRaft broker and controller (``process.roles=broker,controller``, node 1) on free
loopback ports, with four client listeners, all advertised on 127.0.0.1:

    PLAINTEXT        no authentication (also the inter-broker listener)
    SASL_PLAINTEXT   SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN
    SSL              server certificate from a throwaway CA (trustme), PEM files, no client auth
    SASL_SSL         TLS as above plus the same SASL mechanisms

``start_kafka(..., advertise={"PLAINTEXT": "127.0.0.1:P"})`` advertises a listener at another address, e.g.
a Toxiproxy proxy (tests/support/toxiproxy.py) forwarding to the listener's real port (``listeners``):
clients find the broker through the proxy, since they connect to the advertised addresses the metadata
names, not to the bootstrap address. Such a broker also gets an INTERNAL listener (PLAINTEXT, advertised
as it is) for its inter-broker traffic, so only clients go through the proxy.

The jars come from Maven Central once (``kafka_classpath``, driven by tests/testbed/kafka/pom.xml)
and are cached per user; Java 17+ runs them and Maven (``mvn``) fetches them. The broker runs in its
own process group, is stopped by PID, and is stopped at interpreter exit if still running (see
tests.support.servers).

    with start_kafka(tmp_path, "my-test") as kafka:
        Producer(kafka.client_config("SASL_SSL", "SCRAM-SHA-512"))
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import trustme
from confluent_kafka.admin import AdminClient
from cryptography.hazmat.primitives import serialization

from tests.support.servers import (
    LOOPBACK,
    ServerStartError,
    _accepts,
    _kafka_not_ready,
    _log_tail,
    _retry_port_clash,
    _Server,
    _start,
    free_port,
)
from tests.support.tools import cache_root, file_lock

__all__ = [
    "BENCHMARK_JVM_FLAGS",
    "KAFKA_VERSION",
    "LISTENERS",
    "SASL_MECHANISMS",
    "KafkaCluster",
    "KafkaSetupError",
    "kafka_cache_dir",
    "kafka_classpath",
    "start_kafka",
]

TESTBED = Path(__file__).resolve().parents[1] / "testbed" / "kafka"
POM = TESTBED / "pom.xml"
LOG4J2_CONFIG = TESTBED / "log4j2.properties"

LISTENERS = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
_SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
_CONTROLLER = "CONTROLLER"
_INTERNAL = "INTERNAL"  # the inter-broker listener when a client listener is advertised elsewhere

# A JVM on 2 busy cores can take well over the 30 s the other servers get.
KAFKA_STARTUP_TIMEOUT = 90.0
# Told to the user before the first fetch; `du -sh` of the libs directory for 4.3.1.
_FETCH_SIZE_HINT_MB = 56

# Fast start over peak throughput (measured in start_kafka's docstring): C1 only starts the broker
# much sooner than C1+C2; the serial collector with a small initial heap keeps the resident set small.
JVM_FLAGS = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# Benchmarks measure the broker at full speed: both JIT tiers (slower to start, faster once warm).
BENCHMARK_JVM_FLAGS = tuple(flag for flag in JVM_FLAGS if not flag.startswith("-XX:TieredStopAtLevel"))
_TOOL_JVM_FLAGS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData")


class KafkaSetupError(RuntimeError):
    """Java, Maven or the Kafka jars are missing, or the log directory could not be formatted."""


# ---------------------------------------------------------------------------------------------
# The jars


def _pom_version(pom: Path) -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(pom).getroot().findtext("m:properties/m:kafka.version", namespaces=ns)
    if not version:
        raise KafkaSetupError(f"{pom} has no <properties><kafka.version>")
    return version.strip()


KAFKA_VERSION = _pom_version(POM)


def kafka_cache_dir() -> Path:
    """Where this Kafka version's jars live: cache_root()/kafka-<version>."""
    return cache_root() / f"kafka-{KAFKA_VERSION}"


def kafka_classpath() -> Path:
    """The directory holding every jar of the Kafka runtime (use it as ``-cp 'DIR/*'``).

    The first call fetches them with Maven into the cache (under a file lock, so concurrent test
    processes fetch once, and renamed into place, so no one sees half a directory); later calls
    return at once. Editing pom.xml makes the next call fetch again.
    """
    base = kafka_cache_dir()
    libs = base / "libs"
    stamp = _pom_digest()
    if _stamp_of(libs) == stamp:
        return libs
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / ".lock"):
        if _stamp_of(libs) != stamp:  # another process may have fetched while we waited
            _fetch_into(base, libs, stamp)
    return libs


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


_STAMP = ".pom-sha256"  # written into libs last; `-cp 'libs/*'` ignores files not ending in .jar


def _stamp_of(libs: Path) -> str | None:
    try:
        return (libs / _STAMP).read_text().strip()
    except OSError:
        return None


def _fetch_into(base: Path, libs: Path, stamp: str) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaSetupError(f"Maven (`mvn`) is needed once to fetch the Apache Kafka {KAFKA_VERSION} jars")
    print(
        f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central (first run only, ~{_FETCH_SIZE_HINT_MB} MB)...",
        file=sys.stderr,
        flush=True,
    )
    started = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=".libs-", dir=base))
    staging.chmod(0o755)  # mkdtemp makes it private; it becomes the ordinary libs directory
    try:
        argv = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={staging}"]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise KafkaSetupError(f"mvn failed with code {done.returncode} fetching the Kafka jars:\n{tail}")
        if not (staging / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            raise KafkaSetupError(f"mvn did not copy kafka_2.13-{KAFKA_VERSION}.jar into {staging}")
        (staging / _STAMP).write_text(stamp + "\n")
        _replace_dir(staging, libs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    jars = list(libs.glob("*.jar"))
    size = sum(jar.stat().st_size for jar in jars)
    print(
        f"fetched {len(jars)} jars ({size / 1e6:.0f} MB) into {libs} in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
        flush=True,
    )


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        new.rename(target)
        return
    # A stale copy (pom.xml or the JDK changed): swap it out first, since rename() cannot replace a non-empty dir.
    old = Path(tempfile.mkdtemp(prefix=".old-", dir=target.parent))
    target.rename(old / target.name)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home, "bin", "java"), os.X_OK):
        return str(Path(java_home, "bin", "java"))
    found = shutil.which("java")
    if found is None:
        raise KafkaSetupError("`java` (17 or newer) is needed to run Kafka: set JAVA_HOME or put it on PATH")
    return found


# ---------------------------------------------------------------------------------------------
# The broker


@dataclass
class KafkaCluster(_Server):
    """A one-node Apache Kafka (KRaft broker + controller in one JVM) listening on loopback."""

    program: ClassVar[str] = "java"

    bootstrap: str  # PLAINTEXT listener as clients reach it, host:port (advertised: see start_kafka's advertise)
    sasl_plaintext_bootstrap: str
    ssl_bootstrap: str
    sasl_ssl_bootstrap: str
    ca_pem: str  # the CA certificate that signed the broker's certificate, PEM text
    ca_path: Path  # the same, as a file (librdkafka's ssl.ca.location)
    scram_user: str  # has SCRAM-SHA-256 and SCRAM-SHA-512 credentials
    scram_password: str
    plain_user: str
    plain_password: str
    cluster_id: str  # the KRaft cluster id the log directory was formatted with
    name: str = ""
    version: str = KAFKA_VERSION
    startup_seconds: float = 0.0  # format + start until the PLAINTEXT listener answers Metadata
    # Listener name -> host:port the JVM listens on: differs from the *_bootstrap address of a listener
    # start_kafka was told to advertise elsewhere; INTERNAL is there if the broker has one.
    listeners: dict[str, str] = field(default_factory=dict)

    def admin(self, extra: Mapping[str, Any] | None = None) -> AdminClient:
        """A new AdminClient on PLAINTEXT (extra settings on top).

        Keep a reference while waiting on its futures: a collected client cancels them.
        """
        return AdminClient({"bootstrap.servers": self.bootstrap, **(extra or {})})

    def client_config(self, listener: str = "PLAINTEXT", mechanism: str | None = None) -> dict[str, str]:
        """librdkafka settings (bootstrap.servers included) to reach listener, authenticating with mechanism.

        listener is one of LISTENERS; mechanism one of SASL_MECHANISMS for the SASL_* listeners, None otherwise.
        """
        protocol = listener.upper()
        bootstraps = {
            "PLAINTEXT": self.bootstrap,
            "SASL_PLAINTEXT": self.sasl_plaintext_bootstrap,
            "SSL": self.ssl_bootstrap,
            "SASL_SSL": self.sasl_ssl_bootstrap,
        }
        if protocol not in bootstraps:
            raise ValueError(f"unknown listener {listener!r}; expected one of {', '.join(LISTENERS)}")
        config = {"bootstrap.servers": bootstraps[protocol], "security.protocol": protocol.lower()}
        if protocol.startswith("SASL_"):
            if mechanism is None or mechanism.upper() not in SASL_MECHANISMS:
                raise ValueError(
                    f"{protocol} needs a mechanism, one of {', '.join(SASL_MECHANISMS)}; got {mechanism!r}"
                )
            user, password = (
                (self.plain_user, self.plain_password)
                if mechanism.upper() == "PLAIN"
                else (self.scram_user, self.scram_password)
            )
            config.update({"sasl.mechanism": mechanism.upper(), "sasl.username": user, "sasl.password": password})
        elif mechanism is not None:
            raise ValueError(f"{protocol} takes no SASL mechanism; got {mechanism!r}")
        if protocol.endswith("SSL"):
            config["ssl.ca.location"] = str(self.ca_path)
        return config

    def rss_bytes(self) -> int:
        """Resident set size of the broker JVM (0 if it is gone)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def state(self) -> dict[str, Any]:
        """What `python -m tests.support.servers up` records in servers.json (see from_state)."""
        return {
            "bootstrap": self.bootstrap,
            "sasl_plaintext_bootstrap": self.sasl_plaintext_bootstrap,
            "ssl_bootstrap": self.ssl_bootstrap,
            "sasl_ssl_bootstrap": self.sasl_ssl_bootstrap,
            "kafka_ca_path": str(self.ca_path),
            "kafka_scram_user": self.scram_user,
            "kafka_scram_password": self.scram_password,
            "kafka_plain_user": self.plain_user,
            "kafka_plain_password": self.plain_password,
            "kafka_cluster_id": self.cluster_id,
            "kafka_version": self.version,
            "kafka_pid": self.pid,
            "kafka_log": str(self.log_path),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> KafkaCluster:
        """The broker a servers.json describes (not a child of this process: stop() goes by PID)."""
        ca_path = Path(state["kafka_ca_path"])
        try:
            ca_pem = ca_path.read_text()
        except OSError:
            ca_pem = ""
        return cls(
            pid=state["kafka_pid"],
            log_path=Path(state["kafka_log"]),
            bootstrap=state["bootstrap"],
            sasl_plaintext_bootstrap=state["sasl_plaintext_bootstrap"],
            ssl_bootstrap=state["ssl_bootstrap"],
            sasl_ssl_bootstrap=state["sasl_ssl_bootstrap"],
            ca_pem=ca_pem,
            ca_path=ca_path,
            scram_user=state["kafka_scram_user"],
            scram_password=state["kafka_scram_password"],
            plain_user=state["kafka_plain_user"],
            plain_password=state["kafka_plain_password"],
            cluster_id=state["kafka_cluster_id"],
            version=state.get("kafka_version", KAFKA_VERSION),
        )


@dataclass(frozen=True)
class _Secrets:
    scram_user: str
    scram_password: str
    plain_user: str
    plain_password: str


def start_kafka(
    workdir: Path,
    name: str,
    *,
    timeout: float = KAFKA_STARTUP_TIMEOUT,
    jvm_flags: Sequence[str] = JVM_FLAGS,
    advertise: Mapping[str, str] | None = None,
    properties: Mapping[str, str | int] | None = None,
) -> KafkaCluster:
    """Format a KRaft log directory under workdir and start a broker+controller JVM on free loopback ports.

    name labels the JVM (``-Dferry.kafka.name=<name>`` on its command line) and the cluster object.
    advertise maps listeners (of LISTENERS) to the host:port they are advertised at instead of their own
    (e.g. a proxy's, whose upstream is then ``cluster.listeners[listener]``); the cluster's *_bootstrap
    fields are those addresses. The broker is ready when its own listeners are, whether or not anything
    serves the advertised addresses yet; its inter-broker traffic goes to an INTERNAL listener.
    properties are broker settings written over the defaults of ``_server_properties`` (e.g. a
    ``transaction.state.log.replication.factor`` above the one broker, so transactions never work).
    The JVM's output goes to workdir/kafka.log, the format step's to workdir/kafka-format.log.
    The first call in a fresh cache fetches the jars (kafka_classpath) and records which classes the
    JVMs load at start (_class_data_archives); neither is counted in startup_seconds. Use the result
    as a context manager, or call stop().

    JVM_FLAGS favour start time over peak throughput. Measured on 2 cores (format + start to ready):
    C1 only (-XX:TieredStopAtLevel=1) ~40% faster than the default C1+C2; class-data archives another
    ~35%; a 64 MiB initial heap with the serial collector (and a 16 MiB log cleaner buffer) halves the
    resident set. A benchmark that wants the broker's peak throughput can pass its own jvm_flags.
    """
    unknown = sorted(set(advertise or {}) - set(LISTENERS))
    if unknown:
        raise ValueError(f"advertise: unknown listeners {unknown}; expected some of {', '.join(LISTENERS)}")
    libs = kafka_classpath()
    java = _java()
    archives = _class_data_archives(java, libs)
    return _launch(java, libs, workdir, name, timeout, jvm_flags, _use_archives(archives), advertise, properties)


def _launch(
    java: str,
    libs: Path,
    workdir: Path,
    name: str,
    timeout: float,
    jvm_flags: Sequence[str],
    cds_flags: Mapping[str, Sequence[str]],
    advertise: Mapping[str, str] | None = None,
    properties: Mapping[str, str | int] | None = None,
) -> KafkaCluster:
    advertise = dict(advertise or {})
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ca_pem, ca_path, keystore = _write_tls(workdir / "tls")
    creds = _Secrets(
        scram_user="ferry_scram",
        scram_password=secrets.token_hex(12),
        plain_user="ferry_plain",
        plain_password=secrets.token_hex(12),
    )
    cluster_id = _new_cluster_id()
    log_path = workdir / "kafka.log"
    config_path = workdir / "server.properties"
    data_dir = workdir / "data"

    def attempt() -> KafkaCluster:
        internal = (_INTERNAL,) if advertise else ()
        ports = {listener: free_port() for listener in (*LISTENERS, *internal, _CONTROLLER)}
        config_path.write_text(
            _server_properties(name, ports, data_dir, ca_path, keystore, creds, advertise, properties or {})
        )
        shutil.rmtree(data_dir, ignore_errors=True)  # formatting records the controller's port
        _format(java, libs, workdir, config_path, cluster_id, creds, cds_flags.get("format", ()))
        argv = [java, *jvm_flags, *cds_flags.get("broker", ()), *_common_props(name)]
        argv += ["-cp", str(libs / "*"), "kafka.Kafka", str(config_path)]
        bound = {listener: f"{LOOPBACK}:{port}" for listener, port in ports.items()}
        proc = _start(argv, workdir, log_path, _java_env(), lambda: _not_ready(bound), timeout=timeout)
        bootstraps = {**bound, **advertise}
        return KafkaCluster(
            pid=proc.pid,
            log_path=log_path,
            bootstrap=bootstraps["PLAINTEXT"],
            sasl_plaintext_bootstrap=bootstraps["SASL_PLAINTEXT"],
            ssl_bootstrap=bootstraps["SSL"],
            sasl_ssl_bootstrap=bootstraps["SASL_SSL"],
            ca_pem=ca_pem,
            ca_path=ca_path,
            scram_user=creds.scram_user,
            scram_password=creds.scram_password,
            plain_user=creds.plain_user,
            plain_password=creds.plain_password,
            cluster_id=cluster_id,
            name=name,
            listeners={listener: address for listener, address in bound.items() if listener != _CONTROLLER},
            _proc=proc,
        )

    cluster = _retry_port_clash(attempt)
    cluster.startup_seconds = time.monotonic() - started
    return cluster


# ---------------------------------------------------------------------------------------------
# Class-data sharing: most of a JVM's start is loading and verifying classes. A dynamic AppCDS
# archive (JDK 13+) holds them pre-parsed; one per JVM role, made once by a training run, stored
# next to the jars. A stale archive (other JDK, other jars) only costs a skipped speed-up: the JVM
# checks it and runs without. FERRY_KAFKA_CDS=0 turns this off.

_CDS_ROLES = ("format", "broker")
_CDS_FAILED: set[Path] = set()  # archive directories whose training failed in this process: not again
_CDS_QUIET = "-Xlog:cds*=error"  # an archive lists classes it cannot hold as warnings; not our concern


def _class_data_archives(java: str, libs: Path) -> dict[str, Path]:
    """The archive of each role in _CDS_ROLES, trained now if missing; {} if turned off or training failed."""
    if os.environ.get("FERRY_KAFKA_CDS", "1") == "0":
        return {}
    jvm = Path(java).resolve()
    key = hashlib.sha256(f"{_stamp_of(libs)} {jvm} {jvm.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    target = libs.parent / f"cds-{key}"
    archives = {role: target / f"{role}.jsa" for role in _CDS_ROLES}
    if all(path.is_file() for path in archives.values()):
        return archives
    if target in _CDS_FAILED:
        return {}
    with file_lock(libs.parent / ".lock"):
        if not all(path.is_file() for path in archives.values()):
            try:
                _train_archives(java, libs, archives)
            except (KafkaSetupError, ServerStartError) as err:
                _CDS_FAILED.add(target)
                print(f"warning: Kafka starts without class-data archives: {err}", file=sys.stderr, flush=True)
                return {}
            for stale in libs.parent.glob("cds-*"):  # made for other jars or another JDK
                if stale != target:
                    shutil.rmtree(stale, ignore_errors=True)
    return archives


def _use_archives(archives: Mapping[str, Path]) -> dict[str, list[str]]:
    return {role: [f"-XX:SharedArchiveFile={path}", _CDS_QUIET] for role, path in archives.items()}


def _train_archives(java: str, libs: Path, archives: Mapping[str, Path]) -> None:
    print(
        f"recording the classes Apache Kafka {KAFKA_VERSION} loads at start, for faster starts (first run only)...",
        file=sys.stderr,
        flush=True,
    )
    began = time.monotonic()
    target = next(iter(archives.values())).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cds-", dir=target.parent) as tmp:
        staged = Path(tmp) / "archives"
        staged.mkdir()
        dump = {role: [f"-XX:ArchiveClassesAtExit={staged / path.name}", _CDS_QUIET] for role, path in archives.items()}
        cluster = _launch(java, libs, Path(tmp) / "work", "cds-training", KAFKA_STARTUP_TIMEOUT, JVM_FLAGS, dump)
        proc = cluster._proc
        cluster.stop(timeout=120)  # the JVM writes its archive on the way out
        # Killed mid-write would leave an archive the JVM rejects at every start: keep only a clean exit's.
        code = None if proc is None else proc.returncode
        if code not in (0, 143) or not all((staged / path.name).is_file() for path in archives.values()):
            raise KafkaSetupError(f"the training broker exited with code {code} without writing its archives")
        _replace_dir(staged, target)
    print(f"recorded them in {target} in {time.monotonic() - began:.1f}s", file=sys.stderr, flush=True)


def _new_cluster_id() -> str:
    # What `kafka-storage random-uuid` prints: 16 random bytes, unpadded URL-safe base64, not starting with "-".
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _write_tls(tls_dir: Path) -> tuple[str, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost: (CA PEM, CA file, key + chain file)."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(LOOPBACK, "localhost")
    # Kafka's PEM key store reads PKCS#8 keys only; trustme writes the traditional OpenSSL form.
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ca_pem = ca.cert_pem.bytes().decode()
    ca_path = tls_dir / "ca.pem"
    ca_path.write_text(ca_pem)
    keystore = tls_dir / "server.pem"
    keystore.write_bytes(pkcs8 + b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    keystore.chmod(0o600)
    return ca_pem, ca_path, keystore


def _server_properties(
    name: str,
    ports: Mapping[str, int],
    data_dir: Path,
    ca_path: Path,
    keystore: Path,
    creds: _Secrets,
    advertise: Mapping[str, str],
    properties: Mapping[str, str | int] | None = None,
) -> str:
    """advertise: listener -> host:port to advertise instead of its own; then ports must have an INTERNAL one.
    properties: settings over the defaults below."""
    clients = [listener for listener in (*LISTENERS, _INTERNAL) if listener in ports]
    listeners = ",".join(f"{listener}://{LOOPBACK}:{port}" for listener, port in ports.items())
    advertised = ",".join(
        f"{listener}://{advertise.get(listener, f'{LOOPBACK}:{ports[listener]}')}" for listener in clients
    )
    protocol_of = {_CONTROLLER: "PLAINTEXT", _INTERNAL: "PLAINTEXT"}  # the others are named after theirs
    protocols = ",".join(f"{listener}:{protocol_of.get(listener, listener)}" for listener in ports)
    props: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": 1,
        "controller.quorum.bootstrap.servers": f"{LOOPBACK}:{ports[_CONTROLLER]}",
        "controller.listener.names": _CONTROLLER,
        "listeners": listeners,
        "advertised.listeners": advertised,
        "listener.security.protocol.map": protocols,
        # A listener advertised elsewhere (through a proxy) must not carry the broker's own traffic.
        "inter.broker.listener.name": _INTERNAL if _INTERNAL in ports else "PLAINTEXT",
        "log.dirs": str(data_dir),
        # TLS from PEM files: no keytool, no store passwords. Clients need not present certificates.
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca_path),
        "ssl.client.auth": "none",
        "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        # Fast, deterministic tests: one partition per internal topic (created on first use, instead
        # of 50), no wait for more members before the first rebalance, topics only when asked for.
        "offsets.topic.num.partitions": 1,
        "transaction.state.log.num.partitions": 1,
        "share.coordinator.state.topic.num.partitions": 1,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "false",
        "num.partitions": 1,
        "delete.topic.enable": "true",
        # The log cleaner (for compacted topics such as __consumer_offsets) would take 128 MiB of
        # heap at start for its dedupe buffer; 16 MiB is plenty for test data.
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        # No time-based retention during a test run: test records carry fixed timestamps of 2023
        # (tests.support.copies.produce_on), past the 7-day default, and the broker's periodic check (every
        # 5 min) deleted them between a copy and its read-back, at random. Tests that need records gone
        # delete them with DeleteRecords, or set retention.ms on their topic.
        "log.retention.check.interval.ms": 24 * 3600 * 1000,
        "log.initial.task.delay.ms": 24 * 3600 * 1000,  # the first check, 30 s after start by default
    }
    for listener in ("sasl_plaintext", "sasl_ssl"):
        for mechanism in _SCRAM_MECHANISMS:
            props[f"listener.name.{listener}.{mechanism.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        # PLAIN users are the user_<name>="<password>" options of the listener's login module.
        props[f"listener.name.{listener}.plain.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'user_{creds.plain_user}="{creds.plain_password}";'
        )
    props.update(properties or {})
    lines = [f"# Kafka {KAFKA_VERSION} broker+controller {name!r}, written by tests/support/kafka.py"]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def _common_props(name: str) -> list[str]:
    return [f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", f"-Dferry.kafka.name={name}"]


def _java_env() -> dict[str, str]:
    # kafka-run-class.sh reads these, the JVM does not; drop them so nobody expects them to apply.
    ignored = {"KAFKA_OPTS", "KAFKA_HEAP_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_LOG4J_OPTS"}
    return {k: v for k, v in os.environ.items() if k not in ignored}


def _format(
    java: str,
    libs: Path,
    workdir: Path,
    config_path: Path,
    cluster_id: str,
    creds: _Secrets,
    cds_flags: Sequence[str],
) -> None:
    """kafka-storage.sh format --standalone: this node is the whole controller quorum; SCRAM users preset."""
    argv = [java, *_TOOL_JVM_FLAGS, *cds_flags, *_common_props("format"), "-cp", str(libs / "*")]
    argv += ["kafka.tools.StorageTool", "format", "--config", str(config_path), "--cluster-id", cluster_id]
    argv += ["--standalone"]
    for mechanism in _SCRAM_MECHANISMS:
        argv += ["--add-scram", f"{mechanism}=[name={creds.scram_user},password={creds.scram_password}]"]
    log_path = workdir / "kafka-format.log"
    with log_path.open("wb") as log:
        try:
            done = subprocess.run(
                argv,
                cwd=workdir,
                env=_java_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=KAFKA_STARTUP_TIMEOUT,
            )
        except subprocess.TimeoutExpired as err:
            raise KafkaSetupError(f"formatting the KRaft log directory took over {err.timeout:.0f}s") from err
    if done.returncode != 0:
        raise KafkaSetupError(
            f"formatting the KRaft log directory failed (code {done.returncode})\n{_log_tail(log_path)}"
        )


def _not_ready(bootstraps: Mapping[str, str]) -> str | None:
    for listener, address in bootstraps.items():
        host, port = address.rsplit(":", 1)
        if not _accepts(host, int(port)):
            return f"{listener} listener {address} refuses connections"
    # INTERNAL, if there is one, is advertised as it is: Metadata through it needs nothing else to run.
    return _kafka_not_ready(bootstraps.get(_INTERNAL, bootstraps["PLAINTEXT"]))
