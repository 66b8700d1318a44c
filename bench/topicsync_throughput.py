"""Throughput and CPU cost of the TopicSync and DataAccessTask workers next to MirrorMaker 2, a
`kcat -C | kcat -P` pipe and a raw consumer, copying the same records between the same two Kafka clusters in
one run.

    python -m bench.topicsync_throughput [--records-100b N] [--records-1k N] [--runs N] [--cprofile]
                                         [--copiers kcat,mm2,mm2-tuned,ferry,access]
                                         [--mm2-config KEY=VALUE ...] [--exactly-once] [--skip-kcat]

Starts two local Apache Kafka clusters (tests/support/kafka.py, full JIT). For 1 KB and 100 B records (each with
a key and one 16-byte header) in a 3-partition source topic it measures:

  consume  a plain confluent_kafka Consumer reading the whole topic (from its assignment to the last record);
  kcat     `kcat -C -e | kcat -P` from the source topic to a target topic, the tool a user would reach for
           (values only: no keys, headers, timestamps or partitions kept), timed from start to exit;
  mm2      MirrorMaker 2 from the same Apache Kafka release as the brokers, as a dedicated MirrorMaker process
           (org.apache.kafka.connect.mirror.MirrorMaker with an mm2.properties: one flow source->target, that
           one topic, everything at replication factor 1, ACL sync off, tasks.max 1, the JVM options of
           connect-mirror-maker.sh, plugin.discovery service_load as it advises at start). It keeps keys,
           headers, timestamps and partitions;
  mm2-tuned  the same with a 1 MB producer batch, linger.ms 10 and 5,000 records a poll (Connect's source
           task otherwise sends 16 KB batches, linger.ms 0, one request in flight, 500 records a poll);
  ferry    the real SyncPipeline (TopicSync: keys, headers, timestamps and partitions kept, ferry.origin and
           ferry.offset added, source offsets committed after the target's acknowledgement);
  access   the real AccessPipeline (DataAccessTask) on the same records into a pre-created 3-partition topic.

Every copy is counted on the target; MirrorMaker 2's and both Ferry workers' are read back whole and compared
with the source record by record (partition, key, value, timestamp, the source's headers).

Why a dedicated MirrorMaker and not a Connect worker running MirrorSourceConnector: the dedicated process is
what KIP-382 recommends and what a user replacing Ferry would deploy (it also runs the checkpoint and heartbeat
connectors, which cost next to nothing here: no consumer groups to translate, one heartbeat a second), and it
needs no REST calls to configure.

Timing and CPU. Each copier runs in a process of its own, started fresh for each case and run:

  copy     the copy window. MirrorMaker 2 from the first record on the target to the last (the bench polls the
           target's end offsets every 20 ms); Ferry's workers from their first consumed batch to the last record
           committed (a little longer than the records' own span: it starts before the first write and ends after
           the last acknowledgement and commit). kcat has no such window: its row is start to exit. A JVM
           compiles (C1, C2) during a short copy: a second MirrorMaker 2 row leaves its compiler threads' CPU
           (/proc/<pid>/task/*/stat) out, the figure a long-running MirrorMaker 2 tends to.
  e2e      from the process's start (JVM or Python interpreter) to the last record on the target / committed:
           start-up, topic set-up and the group join included.

CPU is the copier process's own (all its threads: the JVM's GC and compiler, librdkafka's broker threads):
utime+stime from /proc/<pid>/stat, read by the bench at those instants for MirrorMaker 2 and by the Ferry worker
process itself (getrusage(RUSAGE_SELF)) at its own instants; kcat's is both processes' (getrusage(
RUSAGE_CHILDREN) around the pipe). The brokers' CPU is no copier's and is left out. From it: records per
CPU-second and CPU-seconds per GB (keys and values), and the ratio of Ferry's records per CPU-second to
MirrorMaker 2's. The Ferry worker reports at the production interval (10 s), not faster, so that its reporting
costs what it costs in a deployment.

With --runs N each copier runs N times per case (in a rotating order: a run on a warmer broker is faster), each
into a target topic of its own, and the tables give the medians. --copiers picks which run. --cprofile profiles
each Ferry worker's loop thread (cProfile, top 25 by own time). --mm2-config adds lines to mm2.properties (e.g.
`target.producer.compression.type = lz4`).

With --exactly-once each worker also runs --repeat times (default 3) with each delivery, atLeastOnce and
`spec.delivery: exactlyOnce` (a transaction per batch, the positions in a target-side group: ferry.transactional),
alternating which goes first, on the same records into topics of their own; a second table gives the medians
and their ratio. --skip-kcat leaves the kcat pipe out (kcat not installed).

kcat must be installed (Debian: `apt-get install kcat`). Debian links it to librdkafka 2.0.2; it is run
against the librdkafka 2.16 inside the confluent-kafka wheel, the one Ferry uses, for a like-for-like pipe.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import resource
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from ferry.api.base import Delivery
from ferry.dataaccess.model import DataAccessTaskSpec
from ferry.dataaccess.pipeline import AccessPipeline
from ferry.kafka import message_headers
from ferry.metrics import WorkerMetrics
from ferry.reporting import Progress
from ferry.settings import WorkerSettings
from ferry.topicsync.model import TopicSyncSpec
from ferry.topicsync.pipeline import SyncPipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.kafka import (  # noqa: E402
    BENCHMARK_JVM_FLAGS,
    LOG4J2_CONFIG,
    KafkaCluster,
    _java,
    kafka_classpath,
    start_kafka,
)

PARTITIONS = 3
HEADER = "trace-id"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
# What bin/connect-mirror-maker.sh runs MirrorMaker 2 with (KAFKA_HEAP_OPTS and KAFKA_JVM_PERFORMANCE_OPTS).
MM2_JVM_FLAGS = (
    "-Xms256M",
    "-Xmx2G",
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
)
TOOLS = ("kcat", "mm2", "mm2-tuned", "ferry", "access")
# MirrorMaker 2 tuned for throughput, as a user moving bulk would: Connect's source-task producer defaults to
# linger.ms 0 and 16 KB batches with one request in flight, its consumer to 500 records a poll.
MM2_TUNED = ("target.producer.batch.size = 1048576", "target.producer.linger.ms = 10")
MM2_TUNED_SOURCE = ("consumer.max.poll.records = 5000",)  # prefixed with the source cluster's alias


@dataclass
class Copy:
    """One copier's run: records and payload bytes copied, the copy window and the whole run (seconds, and the
    copier process's CPU-seconds in each)."""

    records: int
    payload: int
    copy_s: float
    copy_cpu: float
    e2e_s: float
    e2e_cpu: float
    jit_cpu: float = 0.0  # MirrorMaker 2: of copy_cpu, its JIT compiler threads'

    @property
    def rate(self) -> float:
        return self.records / self.copy_s

    @property
    def mb_s(self) -> float:
        return self.payload / self.copy_s / 1e6

    @property
    def per_cpu(self) -> float:
        return self.records / max(self.copy_cpu, 1e-3)

    @property
    def cpu_per_gb(self) -> float:
        return self.copy_cpu / (self.payload / 1e9)

    @property
    def per_cpu_without_jit(self) -> float:
        return self.records / max(self.copy_cpu - self.jit_cpu, 1e-3)

    @property
    def e2e_per_cpu(self) -> float:
        return self.records / max(self.e2e_cpu, 1e-3)


def librdkafka_dir(workdir: Path) -> Path:
    """A folder with librdkafka.so.1 pointing at the wheel's library, for LD_LIBRARY_PATH."""
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    library = next(libs.glob("librdkafka-*.so.1"))
    folder = workdir / "librdkafka"
    folder.mkdir(exist_ok=True)
    link = folder / "librdkafka.so.1"
    if not link.exists():
        link.symlink_to(library)
    return folder


def create_topic(broker: KafkaCluster, topic: str) -> None:
    admin = broker.admin()  # kept referenced until the future resolves: a collected client cancels it
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(15)


def produce(broker: KafkaCluster, topic: str, count: int, size: int) -> int:
    """`count` records of `size` bytes, each with a key and one header, round robin over the partitions; their
    keys' and values' bytes."""
    create_topic(broker, topic)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20, "batch.size": 1_000_000})
    payloads = ["".join(random.choices(string.ascii_letters, k=size)).encode() for _ in range(64)]
    payload = 0
    for i in range(count):
        key = str(i).encode()
        payload += len(key) + size
        headers: list[tuple[str, str | bytes | None]] = [(HEADER, uuid.UUID(int=i).bytes)]
        while True:
            try:
                producer.produce(topic, payloads[i % 64], key, partition=i % PARTITIONS, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    return payload


def reader(broker: KafkaCluster, prefix: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"{prefix}-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "fetch.queue.backoff.ms": 10,
            "enable.auto.commit": False,
        }
    )


def raw_consume(broker: KafkaCluster, topic: str, count: int) -> float:
    consumer = reader(broker, "raw")
    assigned: list[float] = []
    consumer.subscribe([topic], on_assign=lambda _c, _p: assigned.append(time.monotonic()))
    seen = 0
    while seen < count:
        seen += sum(1 for m in consumer.consume(10000, timeout=0.5) if m.error() is None)
    started = assigned[0]
    elapsed = time.monotonic() - started
    consumer.close()
    return count / elapsed


Fingerprint = tuple[int, bytes | None, bytes | None, int, tuple[tuple[str, bytes | None], ...]]


def read_topic(broker: KafkaCluster, topic: str, expected: int, timeout: float = 60) -> list[Message]:
    consumer = reader(broker, "count")
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(messages) < expected and time.monotonic() < deadline:
        messages += [m for m in consumer.consume(10000, timeout=0.5) if m.error() is None]
    consumer.close()
    return messages


def fingerprints(messages: list[Message]) -> list[Fingerprint]:
    """What a faithful copy keeps, sorted: partition, key, value, timestamp, and headers other than Ferry's own."""
    found = []
    for m in messages:
        headers = tuple((n, v) for n, v in message_headers(m) if not n.startswith("ferry."))
        found.append((m.partition() or 0, m.key(), m.value(), m.timestamp()[1], headers))
    return sorted(found, key=lambda f: (f[0], f[1] or b""))


def check_copy(target: KafkaCluster, topic: str, count: int, source: list[Fingerprint] | None, who: str) -> None:
    """Every record on the target; with `source`, each kept as it was (partition, key, value, timestamp, headers)."""
    copied = read_topic(target, topic, count)
    if len(copied) != count:
        raise SystemExit(f"{who} copied {len(copied)} of {count} records")
    if source is not None and fingerprints(copied) != source:
        raise SystemExit(f"{who}'s copy differs from the source (partition, key, value, timestamp or headers)")


def cpu_of(path: str) -> float:
    """CPU-seconds so far, user and system, of a process (all its threads) or a thread: /proc/<pid>[/task/<tid>]."""
    fields = Path(path, "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def jvm_cpu(pid: int) -> tuple[float, float]:
    """A JVM's CPU-seconds so far: all of it, and its JIT compiler threads' (C1, C2) alone. Threads that ended are
    in the first figure only; compiler threads live as long as the JVM."""
    compiling = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if "CompilerThre" in (task / "comm").read_text():
                compiling += cpu_of(str(task))
        except OSError:  # ended meanwhile
            continue
    return cpu_of(f"/proc/{pid}"), compiling


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def kcat_pipe(source: KafkaCluster, target: KafkaCluster, topic: str, count: int, payload: int, lib: Path) -> Copy:
    kcat = shutil.which("kcat")
    if kcat is None:
        raise SystemExit("kcat is not installed: apt-get install kcat")
    env = {**os.environ, "LD_LIBRARY_PATH": str(lib)}
    target_topic = f"{topic}-kcat-{uuid.uuid4().hex[:4]}"
    create_topic(target, target_topic)
    cpu = children_cpu()
    started = time.monotonic()
    consume = subprocess.Popen(
        [kcat, "-C", "-b", source.bootstrap, "-t", topic, "-o", "beginning", "-e", "-q"],
        stdout=subprocess.PIPE,
        env=env,
    )
    subprocess.run([kcat, "-P", "-b", target.bootstrap, "-t", target_topic], stdin=consume.stdout, env=env, check=True)
    consume.wait()
    elapsed, used = time.monotonic() - started, children_cpu() - cpu
    check_copy(target, target_topic, count, None, "kcat")
    return Copy(count, payload, elapsed, used, elapsed, used)


def end_offsets(consumer: Consumer, topic: str) -> int:
    total = 0
    for partition in range(PARTITIONS):
        try:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=2, cached=False)
        except KafkaException:  # not created yet
            return 0
        total += max(high, 0)
    return total


def mirror_maker(
    source: KafkaCluster,
    target: KafkaCluster,
    topic: str,
    count: int,
    payload: int,
    workdir: Path,
    extra: list[str],
    expected: list[Fingerprint],
    tuned: bool = False,
) -> Copy:
    """MirrorMaker 2, dedicated, for this one topic; a new source alias each run, so that each run starts afresh
    (its internal topics and the target topic are named after it) and copies into a topic of its own."""
    alias = f"src{uuid.uuid4().hex[:6]}"
    folder = workdir / alias
    folder.mkdir()
    properties = folder / "mm2.properties"
    properties.write_text(
        "\n".join(
            [
                f"clusters = {alias}, target",
                f"{alias}.bootstrap.servers = {source.bootstrap}",
                f"target.bootstrap.servers = {target.bootstrap}",
                f"{alias}->target.enabled = true",
                f"{alias}->target.topics = {topic}",
                f"target->{alias}.enabled = false",
                "tasks.max = 1",  # one Ferry worker: one task
                "replication.factor = 1",
                "offset-syncs.topic.replication.factor = 1",
                "checkpoints.topic.replication.factor = 1",
                "heartbeats.topic.replication.factor = 1",
                "config.storage.replication.factor = 1",
                "offset.storage.replication.factor = 1",
                "status.storage.replication.factor = 1",
                "sync.topic.acls.enabled = false",
                # Its own advice at start: without it, Connect scans every jar on the class path for plugins
                # (a minute of CPU here), as with the distribution's libs/.
                "plugin.discovery = service_load",
                *(MM2_TUNED if tuned else ()),
                *(f"{alias}.{line}" for line in (MM2_TUNED_SOURCE if tuned else ())),
                *extra,
            ]
        )
        + "\n"
    )
    target_topic = f"{alias}.{topic}"  # DefaultReplicationPolicy
    libs = kafka_classpath()
    argv = [_java(), *MM2_JVM_FLAGS, f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}", "-cp", str(libs / "*")]
    argv += ["org.apache.kafka.connect.mirror.MirrorMaker", str(properties), "--clusters", "target"]
    watcher = reader(target, "watch")
    log = (folder / "mm2.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    first: tuple[float, float, float] | None = None
    try:
        deadline = started + 600
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"MirrorMaker 2 exited with {proc.returncode}: see {folder / 'mm2.log'}")
            if time.monotonic() > deadline:
                raise SystemExit("MirrorMaker 2 did not copy every record within 10 minutes")
            copied = end_offsets(watcher, target_topic)
            now, (cpu, jit) = time.monotonic(), jvm_cpu(proc.pid)
            if copied and first is None:
                first = (now, cpu, jit)
            if copied >= count:
                break
            time.sleep(0.02)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        watcher.close()
    assert first is not None
    check_copy(target, target_topic, count, expected, "MirrorMaker 2")
    return Copy(count, payload, now - first[0], cpu - first[1], now - started, cpu, jit - first[2])


# -- the Ferry workers, each in a process of its own ---------------------------------------------------------


class Clock:
    """Reporter noting when the worker first owned partitions and when every record was copied."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.assigned = 0.0
        self.done = 0.0
        self.event = threading.Event()

    def report(self, progress: Progress) -> None:
        if progress.partitions and not self.assigned:
            self.assigned = time.monotonic()
        if progress.totals.records >= self.count and not self.done:
            self.done = time.monotonic()
            self.event.set()


SETTINGS = WorkerSettings(session_timeout_ms=6000, topic_refresh_interval=3600)  # reports every 10 s, as deployed


def ferry_sync(
    source: str,
    target: str,
    topic: str,
    count: int,
    delivery: Delivery = Delivery.AT_LEAST_ONCE,
    suffix: str = "-ferry",
) -> SyncPipeline:
    spec = TopicSyncSpec.model_validate(
        {
            "source": {"bootstrapServers": source, "instanceId": "src"},
            "target": {"bootstrapServers": target, "instanceId": "dst"},
            "topics": [topic],
            "startFrom": "earliest",
            "targetTopicName": "{topic}" + suffix,
            "delivery": delivery.value,
        }
    )
    group = f"bench-{uuid.uuid4().hex[:8]}"
    return SyncPipeline(
        spec,
        {"bootstrap.servers": source},
        {"bootstrap.servers": target},
        group,
        Clock(count),
        WorkerMetrics("TopicSync", group),
        SETTINGS,
    )


def ferry_access(
    source: str,
    target: str,
    topic: str,
    count: int,
    delivery: Delivery = Delivery.AT_LEAST_ONCE,
    suffix: str = "-access",
) -> AccessPipeline:
    """The DataAccessTask worker on the same records: the source plays the DTS subscription (the target topic is
    made by the bench, as a DataAccessTask never creates its target)."""
    target_topic = f"{topic}{suffix}"
    group = f"bench-dts-{uuid.uuid4().hex[:8]}"
    spec = DataAccessTaskSpec.model_validate(
        {
            "source": {
                "type": "DTS",
                "dts": {
                    "bootstrapServers": source,
                    "securityProtocol": "PLAINTEXT",
                    "topic": topic,
                    "consumerGroup": group,
                },
            },
            "target": {"bootstrapServers": target, "topic": target_topic},
            "startFrom": "earliest",
            "delivery": delivery.value,
        }
    )
    return AccessPipeline(
        spec,
        {"bootstrap.servers": source},
        {"bootstrap.servers": target},
        group,
        Clock(count),
        WorkerMetrics("DataAccessTask", group),
        SETTINGS,
    )


def worker_main(args: argparse.Namespace) -> None:
    """In the worker process: run one pipeline until every record is committed, and print (one JSON line) when
    it started, consumed its first batch and was done, with this process's CPU-seconds at each."""
    make = ferry_sync if args.worker == "ferry" else ferry_access
    pipeline = make(args.source, args.target, args.topic, args.count, Delivery(args.delivery), args.suffix)
    marks: dict[str, tuple[float, float]] = {}
    done = threading.Event()
    copy, count = pipeline._copy, pipeline._count

    def first_copy(messages: list[Message]) -> None:
        marks.setdefault("first", (time.monotonic(), own_cpu()))
        copy(messages)

    def counted(batch: Any) -> None:
        count(batch)
        if pipeline.totals.records >= args.count and not done.is_set():
            marks["done"] = (time.monotonic(), own_cpu())
            done.set()

    pipeline._copy = first_copy  # type: ignore[method-assign]
    pipeline._count = counted  # type: ignore[method-assign]
    profiler = cProfile.Profile() if args.cprofile else None
    stop = threading.Event()

    def work() -> None:
        if profiler is not None:
            profiler.runcall(pipeline.run, stop)
        else:
            pipeline.run(stop)

    marks["start"] = (time.monotonic(), own_cpu())
    thread = threading.Thread(target=work, name="worker")
    thread.start()
    finished = done.wait(600)
    stop.set()
    thread.join(60)
    profile = ""
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        profile = out.getvalue()
    print(json.dumps({"finished": finished, "marks": marks, "profile": profile}), flush=True)


def ferry_process(
    kind: str,
    source: KafkaCluster,
    target: KafkaCluster,
    topic: str,
    count: int,
    payload: int,
    expected: list[Fingerprint] | None,
    delivery: Delivery = Delivery.AT_LEAST_ONCE,
    suffix: str | None = None,
    cprofile: bool = False,
) -> Copy:
    """A Ferry worker (`ferry`: TopicSync, `access`: DataAccessTask) in a process of its own."""
    suffix = suffix or f"-{kind}-{uuid.uuid4().hex[:4]}"
    target_topic = f"{topic}{suffix}"
    if kind == "access":
        create_topic(target, target_topic)
    argv = [sys.executable, "-m", "bench.topicsync_throughput", "--worker", kind, "--source", source.bootstrap]
    argv += ["--target", target.bootstrap, "--topic", topic, "--count", str(count), "--delivery", delivery.value]
    argv += [f"--suffix={suffix}", *(["--cprofile"] if cprofile else [])]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, check=True, timeout=700)
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if not result["finished"]:
        raise SystemExit(f"the {kind} worker did not copy every record within 10 minutes")
    if result["profile"]:
        print(f"  cProfile of the {kind} worker's loop thread (top 25 by own time):\n{result['profile']}", flush=True)
    marks = result["marks"]
    check_copy(target, target_topic, count, expected, kind)
    (first_t, first_cpu), (done_t, done_cpu) = marks["first"], marks["done"]
    return Copy(count, payload, done_t - first_t, done_cpu - first_cpu, done_t - started, done_cpu)


# -- the run -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records-100b", type=int, default=300_000)
    parser.add_argument("--records-1k", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1, help="runs of each copier per case (medians)")
    parser.add_argument("--cprofile", action="store_true", help="profile the Ferry workers' loop threads")
    parser.add_argument("--mm2-config", action="append", default=[], metavar="KEY=VALUE", help="for mm2.properties")
    parser.add_argument("--exactly-once", action="store_true", help="also measure delivery: exactlyOnce")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each delivery with --exactly-once")
    parser.add_argument("--skip-kcat", action="store_true", help="leave the kcat pipe out")
    parser.add_argument("--copiers", default=",".join(TOOLS), help=f"which to run, of {','.join(TOOLS)}")
    # The worker process (ferry_process), not for use by hand.
    parser.add_argument("--worker", choices=("ferry", "access"), help=argparse.SUPPRESS)
    for name in ("--source", "--target", "--topic", "--suffix", "--delivery"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    chosen = set(args.copiers.split(","))
    tools = [tool for tool in TOOLS if tool in chosen and not (tool == "kcat" and args.skip_kcat)]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-sync-") as work:
        workdir = Path(work)
        lib = librdkafka_dir(workdir)
        with (
            start_kafka(workdir / "a", "bench-a", jvm_flags=BENCHMARK_JVM_FLAGS) as source,
            start_kafka(workdir / "b", "bench-b", jvm_flags=BENCHMARK_JVM_FLAGS) as target,
        ):
            for label, size, count in (("1 KB", 1024, args.records_1k), ("100 B", 100, args.records_100b)):
                if not count:
                    continue
                topic = f"sync-{size}-{uuid.uuid4().hex[:6]}"
                payload = produce(source, topic, count, size)
                consume = raw_consume(source, topic, count)
                expected = fingerprints(read_topic(source, topic, count))
                runs: dict[str, list[Copy]] = {tool: [] for tool in tools}
                for run in range(args.runs):
                    for tool in tools[run % len(tools) :] + tools[: run % len(tools)]:
                        if tool == "kcat":
                            result = kcat_pipe(source, target, topic, count, payload, lib)
                        elif tool.startswith("mm2"):
                            result = mirror_maker(
                                source, target, topic, count, payload, workdir, args.mm2_config, expected, tool != "mm2"
                            )
                        else:
                            result = ferry_process(
                                tool, source, target, topic, count, payload, expected, cprofile=args.cprofile
                            )
                        runs[tool].append(result)
                        print(
                            f"{label} run {run + 1} {tool}: {result.rate:,.0f} rec/s, {result.per_cpu:,.0f} rec per "
                            f"CPU-s ({result.copy_cpu:.2f} CPU-s, {result.jit_cpu:.2f} of it JIT, in "
                            f"{result.copy_s:.2f} s; whole run {result.e2e_cpu:.2f} CPU-s in {result.e2e_s:.2f} s)",
                            flush=True,
                        )
                deliveries = compare(source, target, topic, count, payload, args.repeat) if args.exactly_once else {}
                rows.append({"case": label, "records": count, "consume": consume, "runs": runs, **deliveries})
    table(rows, tools, args.runs)
    if args.exactly_once:
        print()
        print(
            "| case | records | TopicSync atLeastOnce rec/s | TopicSync exactlyOnce rec/s | exactlyOnce / "
            "atLeastOnce | DataAccessTask atLeastOnce rec/s | DataAccessTask exactlyOnce rec/s | exactlyOnce / "
            "atLeastOnce |"
        )
        print("|:--|--:|--:|--:|--:|--:|--:|--:|")
        for r in rows:
            print(
                f"| {r['case']} | {r['records']:,} | {r['sync_alo']:,.0f} | {r['sync_eos']:,.0f} | "
                f"{ratio(r['sync_eos'], r['sync_alo'])} | {r['access_alo']:,.0f} | {r['access_eos']:,.0f} | "
                f"{ratio(r['access_eos'], r['access_alo'])} |"
            )


NAMES = {
    "kcat": "kcat pipe",
    "mm2": "MirrorMaker 2",
    "mm2-tuned": "MirrorMaker 2, tuned",
    "ferry": "Ferry TopicSync",
    "access": "Ferry DataAccessTask",
}


def table(rows: list[dict[str, Any]], tools: list[str], runs: int) -> None:
    """Per case and copier, the medians over the runs; records per CPU-second against each MirrorMaker 2's."""
    print()
    print(f"Medians of {runs} run{'s' if runs > 1 else ''} per copier; copy window (kcat: start to exit).")
    print()
    print(
        "| case | copier | rec/s | MB/s | CPU-s per GB | rec per CPU-s | / MM2 | / MM2 tuned | e2e rec/s | "
        "e2e rec per CPU-s |"
    )
    print("|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        base = {
            tool: statistics.median(c.per_cpu for c in r["runs"].get(tool) or [Copy(0, 0, 1, 1, 1, 1)])
            for tool in ("mm2", "mm2-tuned")
        }
        print(f"| {r['case']} | raw consumer | {r['consume']:,.0f} | | | | | | | |")
        for tool in tools:
            copies: list[Copy] = r["runs"][tool]
            per_cpu = statistics.median(c.per_cpu for c in copies)
            print(
                f"| {r['case']} | {NAMES[tool]} | {statistics.median(c.rate for c in copies):,.0f} | "
                f"{statistics.median(c.mb_s for c in copies):.1f} | "
                f"{statistics.median(c.cpu_per_gb for c in copies):.1f} | {per_cpu:,.0f} | "
                f"{ratio(per_cpu, base['mm2'])} | {ratio(per_cpu, base['mm2-tuned'])} | "
                f"{statistics.median(c.records / c.e2e_s for c in copies):,.0f} | "
                f"{statistics.median(c.e2e_per_cpu for c in copies):,.0f} |"
            )
            if tool.startswith("mm2"):
                warm = statistics.median(c.per_cpu_without_jit for c in copies)
                jitless = statistics.median((c.copy_cpu - c.jit_cpu) / (c.payload / 1e9) for c in copies)
                print(
                    f"| {r['case']} | {NAMES[tool]}, its JIT threads' CPU left out | | | {jitless:.1f} | {warm:,.0f} | "
                    f"{ratio(warm, base['mm2'])} | {ratio(warm, base['mm2-tuned'])} | | |"
                )


def compare(
    source: KafkaCluster, target: KafkaCluster, topic: str, count: int, payload: int, repeat: int
) -> dict[str, float]:
    """Median records/s of each worker with each delivery over `repeat` runs, alternating which delivery goes
    first (a run on a warmer broker is faster)."""
    rates: dict[str, list[float]] = {"sync_alo": [], "sync_eos": [], "access_alo": [], "access_eos": []}
    for run in range(repeat):
        order = [Delivery.AT_LEAST_ONCE, Delivery.EXACTLY_ONCE]
        for delivery in order if run % 2 == 0 else order[::-1]:
            tag = "alo" if delivery == Delivery.AT_LEAST_ONCE else "eos"
            for kind, name in (("ferry", "sync"), ("access", "access")):
                suffix = f"-{name}-{tag}{run}"
                copy = ferry_process(kind, source, target, topic, count, payload, None, delivery, suffix)
                rates[f"{name}_{tag}"].append(copy.rate)
            print(
                f"  run {run} {delivery.value}: TopicSync {rates[f'sync_{tag}'][-1]:,.0f} rec/s, "
                f"DataAccessTask {rates[f'access_{tag}'][-1]:,.0f} rec/s",
                flush=True,
            )
    return {name: statistics.median(values) for name, values in rates.items()}


def ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}"


if __name__ == "__main__":
    main()
