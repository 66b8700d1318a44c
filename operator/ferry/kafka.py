"""librdkafka configuration for a Kafka endpoint, and the admin look-ups every kind needs."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from ferry.api.base import KafkaEndpoint, PartitionProgress, StartFrom
from ferry.credentials import SecretRef, Sensitive
from ferry.errors import TaskError
from ferry.metrics import WorkerMetrics
from ferry.settings import WorkerSettings

log = logging.getLogger(__name__)


def endpoint_secret_refs(endpoint: KafkaEndpoint, role: str) -> dict[str, SecretRef]:
    """The Secret keys an endpoint needs, named `<ROLE>_SASL_USERNAME` and so on."""
    refs = {}
    if endpoint.credentials_secret_ref is not None:
        creds = endpoint.credentials_secret_ref
        if creds.username is None:
            refs[f"{role}_SASL_USERNAME"] = SecretRef(creds.name, creds.username_key)
        refs[f"{role}_SASL_PASSWORD"] = SecretRef(creds.name, creds.password_key)
    if endpoint.tls is not None and endpoint.tls.ca_secret_ref is not None:
        refs[f"{role}_TLS_CA"] = SecretRef(endpoint.tls.ca_secret_ref.name, endpoint.tls.ca_secret_ref.key)
    if endpoint.tls is not None and endpoint.tls.client_certificate_secret_ref is not None:
        client = endpoint.tls.client_certificate_secret_ref
        refs[f"{role}_TLS_CERT"] = SecretRef(client.name, client.certificate_key)
        refs[f"{role}_TLS_KEY"] = SecretRef(client.name, client.key_key)
    return refs


@dataclass(frozen=True)
class Explanation:
    """Why connections to a broker fail, in librdkafka's words (which hold no credentials)."""

    reason: str
    text: str

    def error(self, bootstrap: str) -> TaskError:
        advice = {
            "KafkaAuthenticationFailed": "check securityProtocol, saslMechanism and the credentials Secret",
            "KafkaSecurityProtocolMismatch": "the listener behind bootstrapServers speaks another security "
            "protocol: point bootstrapServers at the listener for securityProtocol, or fix securityProtocol",
            "KafkaTLSFailed": "check tls.caSecretRef (the CA that signed the brokers' certificates), the client "
            "certificate, and that the listener uses TLS",
            # closed as soon as connected: not proof of a mismatch (a broker shutting down does it too)
            "KafkaUnreachable": "a listener that expects SASL or TLS closes a client that speaks neither at once: "
            "check securityProtocol and that bootstrapServers names the listener for it",
        }[self.reason]
        return TaskError(self.reason, f"the Kafka brokers at {bootstrap}: {self.text}: {advice}")


# librdkafka's words for a client and a listener that do not speak the same protocol, checked first
_MISMATCH = re.compile(r"connecting to a (PLAINTEXT|SSL|SASL)[^?]*listener\?|incorrect security\.protocol", re.I)
_TLS = re.compile(r"SSL handshake failed|certificate verify failed", re.I)
_CLOSED_AT_ONCE = re.compile(r"closed by peer.*\(after (\d+)ms in state (UP|APIVERSION_QUERY)\)")
_HOST_PORT = re.compile(r"([A-Za-z0-9_.-]+|\[[0-9a-fA-F:]+\]):(\d+)/")  # a broker name: host:port/id


def explain(code: int | None, text: str) -> Explanation | None:
    """What an error callback's error or a log line says about why connections fail, if anything specific."""
    if _MISMATCH.search(text):
        return Explanation("KafkaSecurityProtocolMismatch", text)
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED) or "SASL" in text:
        return Explanation("KafkaAuthenticationFailed", text)
    if code == KafkaError._SSL or _TLS.search(text):
        return Explanation("KafkaTLSFailed", text)
    closed = _CLOSED_AT_ONCE.search(text)
    if closed is not None and int(closed[1]) < 1000:
        return Explanation("KafkaUnreachable", text)
    return None


class BrokerErrors:
    """What librdkafka last said about why connections to a broker fail, per bootstrap list and `host:port`.

    A client whose connections fail the SASL or TLS handshake, or reach a listener of another security protocol,
    only ever returns timeouts to its caller (librdkafka retries the connection); the cause is in its error
    callback and its log lines. Kept here so that the timeout is reported as what it is (refused credentials,
    an unsupported mechanism, a TLS failure, the wrong listener), not as an unreachable broker.
    """

    def __init__(self, memory_seconds: float = 120.0) -> None:
        self.memory_seconds = memory_seconds
        self._last: dict[str, tuple[float, Explanation]] = {}
        self._lock = threading.Lock()

    def _note(self, key: str, explanation: Explanation) -> None:
        with self._lock:
            self._last[key] = (time.monotonic(), explanation)

    def callback(self, bootstrap: str) -> Callable[[KafkaError], None]:
        def record(err: KafkaError) -> None:
            explanation = explain(err.code(), err.str())
            if explanation is not None:
                self._note(bootstrap, explanation)

        return record

    def hear(self, line: str) -> None:
        """A librdkafka log line: noted under the broker's `host:port` it names, if it explains anything."""
        explanation = explain(None, line)
        found = _HOST_PORT.search(line)
        if explanation is not None and found is not None:
            self._note(f"{found[1].lower()}:{found[2]}", explanation)

    @staticmethod
    def _keys(bootstrap: str) -> list[str]:
        return [bootstrap, *(h.strip().lower() for h in bootstrap.split(",") if h.strip())]

    def explanation(self, bootstrap: str) -> Explanation | None:
        """The latest recent explanation for the bootstrap list or one of its `host:port`s."""
        now = time.monotonic()
        with self._lock:
            seen = [self._last[k] for k in self._keys(bootstrap) if k in self._last]
        recent = [s for s in seen if now - s[0] <= self.memory_seconds]
        return max(recent, key=lambda s: s[0])[1] if recent else None

    def forget(self, bootstrap: str) -> None:
        with self._lock:
            for key in self._keys(bootstrap):
                self._last.pop(key, None)


BROKER_ERRORS = BrokerErrors()


class BrokerLiveness:
    """Whether a client has a working connection to any broker, from librdkafka's statistics.

    A consumer whose brokers refuse connections or stop answering returns no error to its caller, only
    empty batches: without this a worker would go on reporting Running with lag 0 through an outage.
    The brokers count as working when a connection is UP and, if any request awaits an answer, some connection
    received one since the previous statistics. A broker that accepts connections and then answers nothing (a
    hung process, a black-holed route) keeps its connections UP for librdkafka's whole socket timeout, but its
    responses stop; a connection that owes nothing at the moment (the group coordinator between heartbeats)
    proves nothing either way.
    """

    def __init__(self) -> None:
        self._down_since: float | None = None
        self._last_up = time.monotonic()  # the latest statistics that showed a working broker
        self._responses: dict[str, int] = {}
        self._lock = threading.Lock()

    def on_stats(self, payload: str) -> None:
        try:
            brokers = json.loads(payload).get("brokers") or {}
        except ValueError:
            return
        with self._lock:
            connected = {name: broker for name, broker in brokers.items() if broker.get("state") == "UP"}
            answered = any(int(b.get("rx") or 0) > self._responses.get(name, -1) for name, b in connected.items())
            owed = any(b.get("waitresp_cnt") for b in connected.values())
            up = bool(connected) and (answered or not owed)
            self._responses = {name: int(broker.get("rx") or 0) for name, broker in brokers.items()}
            if up:
                self._down_since, self._last_up = None, time.monotonic()
            elif self._down_since is None:  # down since it was last seen up, not since it was first seen down
                self._down_since = self._last_up

    def down_for(self) -> float:
        """Seconds since the client last had a live broker connection (0 while it has one)."""
        with self._lock:
            return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def reachable(self, settings: WorkerSettings) -> bool:
        """Not yet out of reach for long enough to be reported: its lag is still known."""
        return self.down_for() <= unreachable_after(settings)

    def outage(self, bootstrap: str, settings: WorkerSettings) -> TaskError | None:
        """KafkaUnreachable once the client has had no live connection for longer than unreachable_after."""
        down = self.down_for()
        return unreachable(bootstrap, down) if down > unreachable_after(settings) else None


def watched(config: dict[str, Any], liveness: BrokerLiveness, interval_seconds: float) -> dict[str, Any]:
    """config with librdkafka's statistics twice per report interval feeding liveness (at least 0.5 s apart: a
    consumer's fetches are answered at least every fetch.wait.max.ms, 0.5 s)."""
    return {
        **config,
        "statistics.interval.ms": max(500, int(interval_seconds * 500)),
        "stats_cb": liveness.on_stats,
    }


def unreachable_after(settings: WorkerSettings) -> float:
    """How long without a working broker connection (or blocked in a call) makes a worker say so: one and a half
    report intervals, so that with the heartbeat's check every half interval it is said within two; at least 3 s
    so that a broker restart is not an outage."""
    return max(3.0, 1.5 * settings.report_interval)


def unreachable(bootstrap: str, seconds: float) -> TaskError:
    explained = BROKER_ERRORS.explanation(bootstrap)
    if explained is not None:  # connections fail for a reason librdkafka gave: that reason
        return explained.error(bootstrap)
    return TaskError(
        "KafkaUnreachable",
        f"no working connection to the Kafka brokers at {bootstrap} for {seconds:.0f}s (refused, or no answer): "
        "check that they run and that "
        "bootstrapServers, DNS and network policies let the worker reach them; lag is unknown meanwhile",
    )


def unanswered(bootstrap: str, seconds: float, doing: str) -> TaskError:
    """A call to the brokers that has been waiting for longer than a worker lets pass without saying so."""
    return TaskError(
        "KafkaUnreachable",
        f"the Kafka brokers at {bootstrap} have not answered for {seconds:.0f}s ({doing}): check that they run "
        "and that the network lets the worker reach them; the records wait in Kafka meanwhile",
    )


class RepeatedLines(logging.Filter):
    """librdkafka repeats a failing connection's lines several times a second: each line passes once per window,
    with the count of the ones held back since. Numbers of milliseconds do not make a line different."""

    VARYING = re.compile(r"\d+ms|\(\d+ identical error\(s\) suppressed\)")

    def __init__(self, window_seconds: float = 30.0) -> None:
        super().__init__()
        self.window = window_seconds
        self._seen: dict[str, list[float]] = {}  # line -> [when it last passed, lines held back since]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        line = record.getMessage()
        key, now = self.VARYING.sub("", line), time.monotonic()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return False
            if len(self._seen) > 1000:  # many distinct lines: forget them rather than grow
                self._seen.clear()
            self._seen[key] = [now, 0]
        held = int(seen[1]) if seen is not None else 0
        if held:
            record.msg, record.args = f"{line} ({held} more like it held back)", ()
        return True


# librdkafka's own log lines, through Python logging (served when a client is polled), rate-limited.
LIBRDKAFKA_LOG = logging.getLogger("ferry.librdkafka")
LIBRDKAFKA_LOG.addFilter(RepeatedLines())


class LibrdkafkaLog:
    """What librdkafka's `logger` setting is given: every line, whatever the log level, is heard by BROKER_ERRORS
    (some causes of failing connections are only ever logged), then logged to LIBRDKAFKA_LOG."""

    def log(self, level: int, message: str, *args: object) -> None:
        line = message % args if args else message
        BROKER_ERRORS.hear(line)
        LIBRDKAFKA_LOG.log(level, "%s", line)


LIBRDKAFKA_LOGGER = LibrdkafkaLog()


def with_error_callback(config: dict[str, Any]) -> dict[str, Any]:
    """config with an error callback that feeds BROKER_ERRORS (kept if the caller set one)."""
    if "error_cb" in config:
        return config
    return {**config, "error_cb": BROKER_ERRORS.callback(str(config.get("bootstrap.servers")))}


def client_config(endpoint: KafkaEndpoint, role: str, secrets: Mapping[str, Sensitive]) -> dict[str, Any]:
    """librdkafka settings for the endpoint; secrets come from `secrets` by the roles above."""
    bootstrap = endpoint.bootstrap_servers.replace(" ", "")
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": endpoint.security_protocol.value,
        "error_cb": BROKER_ERRORS.callback(bootstrap),
        "logger": LIBRDKAFKA_LOGGER,
    }
    mechanism = endpoint.effective_sasl_mechanism
    if mechanism is not None:
        config["sasl.mechanism"] = mechanism.value
        creds = endpoint.credentials_secret_ref
        named = creds.username if creds is not None else None
        config["sasl.username"] = named if named is not None else secrets[f"{role}_SASL_USERNAME"].reveal()
        config["sasl.password"] = secrets[f"{role}_SASL_PASSWORD"].reveal()
    for name, setting in (("TLS_CA", "ssl.ca.pem"), ("TLS_CERT", "ssl.certificate.pem"), ("TLS_KEY", "ssl.key.pem")):
        if f"{role}_{name}" in secrets:
            config[setting] = secrets[f"{role}_{name}"].reveal()
    return config


def describe_kafka_error(err: KafkaError | KafkaException | BaseException, bootstrap: str) -> TaskError:
    """Translate a client error into a reason and a message that says what to check."""
    kerr = err.args[0] if isinstance(err, KafkaException) and err.args else err
    code = kerr.code() if isinstance(kerr, KafkaError) else None
    out_of_reach = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE)
    explained = BROKER_ERRORS.explanation(bootstrap)
    if code in out_of_reach and explained is not None:
        return explained.error(bootstrap)
    if code in out_of_reach:
        return TaskError(
            "KafkaUnreachable",
            f"cannot reach the Kafka brokers at {bootstrap}: check bootstrapServers, DNS and network policies",
        )
    if code in (
        KafkaError._AUTHENTICATION,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    ):
        return TaskError(
            "KafkaAuthenticationFailed",
            f"the Kafka brokers at {bootstrap} refused the credentials or ACLs: check the credentials Secret "
            "and the user's ACLs",
        )
    text = kerr.str() if isinstance(kerr, KafkaError) else str(kerr)
    if code == KafkaError._INVALID_ARG:  # librdkafka refused the settings (e.g. a PEM that does not parse)
        return TaskError(
            "KafkaClientConfigInvalid",
            f"the Kafka client for {bootstrap} cannot be set up: {text}: check the TLS and SASL settings and the "
            "Secrets they name",
        )
    return TaskError("KafkaError", f"Kafka at {bootstrap}: {text}")


# A commit the group coordinator refuses because the group has moved on without this member: a rebalance, not
# a failure. The partitions' new owner reads from the last committed offset.
_GROUP_MOVED_ON = (
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._ASSIGNMENT_LOST,
)


def group_moved_on(err: BaseException) -> bool:
    kerr = err.args[0] if isinstance(err, KafkaException) and err.args else None
    return isinstance(kerr, KafkaError) and kerr.code() in _GROUP_MOVED_ON


def admin_client(config: dict[str, Any]) -> AdminClient:
    """An admin client; settings librdkafka refuses (a CA or client certificate Secret that is not PEM, say)
    are a TaskError the worker reports and waits on, not an exception that kills it."""
    try:
        return AdminClient(with_error_callback(config))
    except KafkaException as err:
        raise describe_kafka_error(err, str(config.get("bootstrap.servers"))) from None


@dataclass(frozen=True)
class ClusterView:
    """What one metadata request tells: which cluster answered, and its topics with their partition counts."""

    cluster_id: str  # the identity of a Kafka cluster however its bootstrap list is spelled
    topics: dict[str, int]  # without internal topics


def look_up(admin: AdminClient, bootstrap: str, timeout: float = 10.0) -> ClusterView:
    """One metadata request; unreachable brokers (or refused credentials) raise a TaskError."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as err:
        admin.poll(0)  # serve the error callback: it may say why (refused credentials)
        raise describe_kafka_error(err, bootstrap) from None
    BROKER_ERRORS.forget(bootstrap)  # it answered: an old handshake failure no longer explains anything
    topics = {
        name: len(topic.partitions)
        for name, topic in metadata.topics.items()
        if topic.error is None and not name.startswith("__")
    }
    return ClusterView(str(metadata.cluster_id or bootstrap), topics)  # no cluster id: fall back to the spelling


# How long a worker waits for the offsets it compares when it is given partitions (inside the rebalance).
OFFSETS_TIMEOUT = 10.0


def earliest_offsets(config: dict[str, Any], partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Each partition's earliest offset (its log start: what retention and deleted records left), in one request
    per leader; a partition whose look-up failed is left out."""
    wanted = {TopicPartition(topic, partition): OffsetSpec.earliest() for topic, partition in partitions}  # type: ignore[no-untyped-call]
    if not wanted:
        return {}
    admin = admin_client(config)  # must outlive the futures: a collected client never resolves them
    listed = admin.list_offsets(wanted, request_timeout=OFFSETS_TIMEOUT)
    found = {}
    for tp, future in listed.items():
        try:
            found[(tp.topic, tp.partition)] = int(future.result(timeout=OFFSETS_TIMEOUT + 5).offset)
        except (KafkaException, TimeoutError) as err:
            log.warning("earliest offset of %s[%d] not found: %s", tp.topic, tp.partition, err)
    return found


def require_topics(wanted: Iterable[str], existing: Mapping[str, int], bootstrap: str, reason: str) -> None:
    """A TaskError with `reason` naming the topics of `wanted` that do not exist."""
    missing = sorted(set(wanted) - set(existing))
    if missing:
        raise TaskError(
            reason, f"topics {', '.join(missing)} do not exist on {bootstrap}: create them or fix spec.topics"
        )


def as_bytes(data: str | bytes | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


def message_headers(message: Message) -> list[tuple[str, bytes | None]]:
    """A record's headers as (name, bytes) pairs, whatever form the client returned them in."""
    headers = message.headers() or []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(name, as_bytes(value)) for name, value in items]


def group_consumer_config(
    client: dict[str, Any],
    group: str,
    start_from: StartFrom,
    session_timeout_ms: int,
    client_id: str,
    metadata_refresh_seconds: float,
) -> dict[str, Any]:
    """A consumer that commits only what the worker says is delivered."""
    return {
        **client,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": start_from.value,
        "session.timeout.ms": session_timeout_ms,
        # librdkafka's default 1 s backoff when its queue is full leaves a fast worker idle for most of
        # that second once it has drained the queue (measured: +66% for 100 B records at 100 ms, bench/).
        "fetch.queue.backoff.ms": 100,
        # Partitions added to a subscribed topic are assigned at the next metadata refresh: librdkafka's
        # default is 5 minutes; a worker picks them up within its topic refresh interval instead.
        "topic.metadata.refresh.interval.ms": max(1000, int(metadata_refresh_seconds * 1000)),
        "client.id": client_id,
    }


def partition_progress(
    consumer: Consumer | None,
    delivered: dict[tuple[str, int], int | None],
    committed: dict[tuple[str, int], int | None],
    metrics: WorkerMetrics,
    reachable: bool = True,
) -> list[PartitionProgress]:
    """Per partition: committed offset, high watermark (as the last fetch response reported it: no request per
    report) and lag behind what is delivered; the lag and committed gauges are set on the way."""
    progress = []
    for (topic, partition), done in sorted(delivered.items()):
        high = None
        if consumer is not None and reachable:  # no watermark from a broker that cannot be reached
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                high = None
            high = high if high is not None and high >= 0 else None
        lag = max(high - done, 0) if high is not None and done is not None else None
        labels = {**metrics.labels, "topic": topic, "partition": str(partition)}
        if lag is not None:
            metrics.lag.labels(**labels).set(lag)
        offset = committed.get((topic, partition))
        if offset is not None:
            metrics.committed.labels(**labels).set(offset)
        progress.append(
            PartitionProgress(topic=topic, partition=partition, committed_offset=offset, end_offset=high, lag=lag)
        )
    return progress


CLOSE_TIMEOUT = 15.0  # seconds a stopping worker waits for a consumer to leave its group


def close_within(consumer: Consumer, what: str, seconds: float = CLOSE_TIMEOUT) -> bool:
    """Close `consumer`, waiting at most `seconds`: librdkafka's close waits for the commits it has sent, and with
    the group coordinator out of reach it retries finding one forever (confluentinc/librdkafka#3740), so a worker
    whose source went down would never stop. Past the wait the consumer is left to its thread (the worker's
    process exits soon after) and False is returned; its offsets were committed, or will be read again."""
    closing = threading.Thread(target=consumer.close, name=f"closing {what}", daemon=True)
    closing.start()
    closing.join(seconds)
    if closing.is_alive():
        log.warning("%s did not close within %.0fs (its brokers cannot be reached): left behind", what, seconds)
        return False
    return True
