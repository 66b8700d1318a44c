"""Fault injection with Toxiproxy (tests/support/toxiproxy.py) does what its docstrings say, against real servers:
a Kafka cluster advertised through a proxy, a TCP echo server and an HTTP server.

One toxiproxy-server and one Kafka cluster for the module; every proxy is healed after each test."""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from tests.support.kafka import KafkaCluster
from tests.support.servers import LOOPBACK
from tests.support.toxiproxy import Proxy, Toxiproxy

TIMEOUT = 30.0
REFUSED_METADATA_TIMEOUT = 3.0


@pytest.fixture(autouse=True)
def _healed(toxiproxy: Toxiproxy) -> Iterator[None]:
    yield
    toxiproxy.reset()


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(4096):
                self.request.sendall(data)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[str]:
    """host:port of a TCP echo server (port picked by the kernel: it runs in this process)."""
    server = socketserver.ThreadingTCPServer((LOOPBACK, 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def echo_proxy(toxiproxy: Toxiproxy, echo_server: str) -> Iterator[Proxy]:
    proxy = toxiproxy.proxy(f"echo-{uuid.uuid4().hex[:8]}", upstream=echo_server)
    yield proxy
    proxy.delete()


def _connect(proxy: Proxy) -> socket.socket:
    return socket.create_connection((LOOPBACK, proxy.port), timeout=2)


def _echoes(conn: socket.socket, payload: bytes = b"ping") -> bool:
    conn.sendall(payload)
    return conn.recv(len(payload)) == payload


def _closed_by_peer(conn: socket.socket) -> bool:
    try:
        return conn.recv(16) == b""
    except ConnectionResetError:
        return True


def _silent(conn: socket.socket, seconds: float = 1.0) -> bool:
    """Whether nothing arrives within seconds after sending (and the connection stays open)."""
    conn.sendall(b"anyone?")
    conn.settimeout(seconds)
    try:
        conn.recv(16)
    except TimeoutError:
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Kafka through a proxy


def _list_topics(bootstrap: str, timeout: float) -> set[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # a new client: no reconnect back-off from before
    return set(admin.list_topics(timeout=timeout).topics)


def test_kafka_clients_go_through_the_proxy_and_fail_while_it_refuses(
    proxied_kafka: tuple[KafkaCluster, Proxy],
) -> None:
    broker, proxy = proxied_kafka
    assert broker.bootstrap == proxy.listen != broker.listeners["PLAINTEXT"]
    admin = broker.admin()
    metadata = admin.list_topics(timeout=TIMEOUT)
    assert [f"{b.host}:{b.port}" for b in metadata.brokers.values()] == [proxy.listen]  # what clients dial
    topic = f"t-{uuid.uuid4().hex[:12]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(TIMEOUT)

    producer = Producer(broker.client_config())
    for i in range(3):
        producer.produce(topic, value=b"v%d" % i)
    assert producer.flush(TIMEOUT) == 0
    assert _consume(broker, topic, 3) == [b"v0", b"v1", b"v2"]

    proxy.refuse()
    with pytest.raises(KafkaException):
        _list_topics(broker.bootstrap, REFUSED_METADATA_TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy)
    # The broker itself is fine: its INTERNAL (inter-broker) listener is advertised directly.
    assert topic in _list_topics(broker.listeners["INTERNAL"], TIMEOUT)

    proxy.heal()
    assert topic in _list_topics(broker.bootstrap, TIMEOUT)
    assert _consume(broker, topic, 3) == [b"v0", b"v1", b"v2"]


def _consume(broker: KafkaCluster, topic: str, count: int) -> list[bytes]:
    consumer = Consumer({**broker.client_config(), "group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got.append(msg.value() or b"")
    finally:
        consumer.close()
    return got


def test_a_hung_proxy_accepts_connections_but_kafka_requests_time_out(
    proxied_kafka: tuple[KafkaCluster, Proxy],
) -> None:
    broker, proxy = proxied_kafka
    proxy.hang()
    with _connect(proxy):  # TCP connects still succeed
        pass
    started = time.monotonic()
    with pytest.raises(KafkaException):
        _list_topics(broker.bootstrap, REFUSED_METADATA_TIMEOUT)
    assert time.monotonic() - started >= REFUSED_METADATA_TIMEOUT - 0.5  # waited: nothing refused or closed

    proxy.heal()
    assert _list_topics(broker.bootstrap, TIMEOUT)


# ---------------------------------------------------------------------------------------------
# The toxics' semantics, on a TCP echo server


def test_refuse_closes_open_connections_and_refuses_new_ones_until_healed(echo_proxy: Proxy) -> None:
    with _connect(echo_proxy) as conn:
        assert _echoes(conn)
        echo_proxy.refuse()
        assert not echo_proxy.enabled()
        assert _closed_by_peer(conn)
    with pytest.raises(ConnectionRefusedError):
        _connect(echo_proxy)
    echo_proxy.heal()
    with _connect(echo_proxy) as conn:
        assert _echoes(conn)


def test_hang_keeps_connections_open_and_silent_and_heal_closes_them(echo_proxy: Proxy) -> None:
    with _connect(echo_proxy) as before:
        assert _echoes(before)
        echo_proxy.hang()
        assert {t["stream"]: t["attributes"] for t in echo_proxy.toxics()} == {
            "upstream": {"timeout": 0},
            "downstream": {"timeout": 0},
        }
        with _connect(echo_proxy) as during:  # accepted
            assert _silent(before)
            assert _silent(during)
            echo_proxy.heal()
            before.settimeout(2)
            during.settimeout(2)
            assert _closed_by_peer(before)
            assert _closed_by_peer(during)
    with _connect(echo_proxy) as after:
        assert _echoes(after)


# ---------------------------------------------------------------------------------------------
# Latency and bandwidth, on an HTTP server

_BODY = b"x" * 3000


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(_BODY)))
        self.end_headers()
        self.wfile.write(_BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _timed_get(url: str) -> float:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP proxy from the environment
    started = time.monotonic()
    with opener.open(url, timeout=TIMEOUT) as response:
        assert response.read() == _BODY
    return time.monotonic() - started


def test_slow_delays_responses_by_the_latency_and_throttles_to_the_bandwidth(
    toxiproxy: Toxiproxy, http_server: str
) -> None:
    proxy = toxiproxy.proxy(f"http-{uuid.uuid4().hex[:8]}", upstream=http_server)
    try:
        url = f"http://{proxy.listen}/"
        assert _timed_get(url) < 0.5
        proxy.slow(latency_ms=500)
        assert _timed_get(url) >= 0.5
        proxy.slow(latency_ms=0, bandwidth_kbps=2)  # replaces the latency: 3000 bytes at 2000 bytes/s
        assert [t["type"] for t in proxy.toxics()] == ["bandwidth", "bandwidth"]
        assert _timed_get(url) >= 1.0
        proxy.heal()
        assert proxy.toxics() == []
        assert _timed_get(url) < 0.5
    finally:
        proxy.delete()
