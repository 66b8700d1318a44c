"""The Apache Kafka broker the tests start (tests/support/kafka.py) serves every listener and mechanism it offers."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import NewPartitions, NewTopic  # type: ignore[attr-defined]  # not re-exported in its stubs

from tests.support import servers
from tests.support.kafka import KAFKA_VERSION, KafkaCluster, start_kafka

TIMEOUT = 30.0


@pytest.fixture
def broker(kafka: KafkaCluster) -> KafkaCluster:
    """The session's cluster (conftest), which shows the first run's fetch progress."""
    return kafka


def _topic(broker: KafkaCluster, partitions: int = 1) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    admin = broker.admin()  # must outlive the future
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(TIMEOUT)
    return name


def _produce(config: dict[str, Any], topic: str, values: list[bytes]) -> None:
    failures: list[KafkaError] = []
    producer = Producer(config)
    for value in values:
        producer.produce(topic, value=value, on_delivery=lambda err, _msg: failures.append(err) if err else None)
    assert producer.flush(TIMEOUT) == 0
    assert failures == []


def _consume(config: dict[str, Any], topic: str, until: bytes) -> list[bytes]:
    """Values of partition 0 from the start, up to and including the first equal to until."""
    consumer = Consumer({**config, "group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])  # no group join: no rebalance wait
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while until not in got and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(msg.value() or b"")
    finally:
        consumer.close()
    assert until in got, f"{until!r} not consumed within {TIMEOUT}s; got {got}"
    return got


@pytest.mark.parametrize(
    ("listener", "mechanism"),
    [
        ("PLAINTEXT", None),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SSL", None),
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_SSL", "SCRAM-SHA-256"),
        ("SASL_SSL", "PLAIN"),
    ],
)
def test_produce_and_consume_on_each_listener(broker: KafkaCluster, listener: str, mechanism: str | None) -> None:
    topic = _topic(broker)
    config = broker.client_config(listener, mechanism)
    value = f"{listener}/{mechanism}".encode()

    _produce(config, topic, [value])

    assert _consume(config, topic, until=value) == [value]


def test_wrong_scram_password_is_an_authentication_error(broker: KafkaCluster) -> None:
    config = broker.client_config("SASL_PLAINTEXT", "SCRAM-SHA-512") | {"sasl.password": "not-the-password"}
    errors: list[KafkaError] = []
    producer = Producer({**config, "error_cb": errors.append})
    deadline = time.monotonic() + TIMEOUT
    while not errors and time.monotonic() < deadline:
        producer.poll(0.1)

    assert errors, "no error reported"
    assert errors[0].code() == KafkaError._AUTHENTICATION
    assert "Authentication failed" in errors[0].str()
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in errors[0].str()


def test_tls_listener_presents_a_certificate_of_the_given_ca(broker: KafkaCluster) -> None:
    # librdkafka checks the certificate against ssl.ca.location and 127.0.0.1 against its names.
    assert broker.ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert broker.ca_path.read_text() == broker.ca_pem
    metadata = broker.admin(broker.client_config("SSL")).list_topics(timeout=TIMEOUT)
    assert [b.port for b in metadata.brokers.values()] == [int(broker.ssl_bootstrap.rsplit(":", 1)[1])]


def test_cluster_id_is_the_one_the_log_directory_was_formatted_with(broker: KafkaCluster) -> None:
    admin = broker.admin()
    described = admin.describe_cluster(request_timeout=TIMEOUT).result(TIMEOUT)

    assert described.cluster_id == broker.cluster_id
    assert broker.version == KAFKA_VERSION


def test_create_partitions_adds_partitions(broker: KafkaCluster) -> None:
    topic = _topic(broker)
    admin = broker.admin()

    admin.create_partitions([NewPartitions(topic, 3)])[topic].result(TIMEOUT)

    deadline = time.monotonic() + TIMEOUT
    while len(partitions := admin.list_topics(topic, timeout=TIMEOUT).topics[topic].partitions) < 3:
        assert time.monotonic() < deadline, f"still {len(partitions)} partitions"
        time.sleep(0.1)
    assert sorted(partitions) == [0, 1, 2]


def test_read_committed_hides_aborted_transactions(broker: KafkaCluster) -> None:
    topic = _topic(broker)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"})
    producer.init_transactions(TIMEOUT)
    producer.begin_transaction()
    producer.produce(topic, value=b"aborted")
    producer.flush(TIMEOUT)
    producer.abort_transaction(TIMEOUT)
    producer.begin_transaction()
    producer.produce(topic, value=b"committed")
    producer.commit_transaction(TIMEOUT)

    plain = {"bootstrap.servers": broker.bootstrap}
    assert _consume({**plain, "isolation.level": "read_committed"}, topic, until=b"committed") == [b"committed"]
    assert _consume({**plain, "isolation.level": "read_uncommitted"}, topic, until=b"committed") == [
        b"aborted",
        b"committed",
    ]


def test_client_config_rejects_mismatched_listener_and_mechanism(broker: KafkaCluster) -> None:
    with pytest.raises(ValueError, match="needs a mechanism"):
        broker.client_config("SASL_SSL")
    with pytest.raises(ValueError, match="takes no SASL mechanism"):
        broker.client_config("SSL", "PLAIN")
    with pytest.raises(ValueError, match="unknown listener"):
        broker.client_config("SASL_GSSAPI", "GSSAPI")


def test_stop_ends_the_jvm_and_frees_its_ports(tmp_path_factory: pytest.TempPathFactory) -> None:
    cluster = start_kafka(tmp_path_factory.mktemp("kafka-stop"), "test-kafka-stop")
    assert cluster.running() and servers._is_program(cluster.pid, "java")
    assert cluster.rss_bytes() > 0

    cluster.stop()

    assert not cluster.running()
    assert not servers._alive(cluster.pid)
    assert cluster.pid not in servers._LIVE
    ports = [int(b.rsplit(":", 1)[1]) for b in (cluster.bootstrap, cluster.ssl_bootstrap, cluster.sasl_ssl_bootstrap)]
    assert all(servers._bindable(port) for port in ports)
