"""Shared fixtures: real Apache Kafka clusters, a SeaweedFS store and a Kubernetes control plane, started only
when a test asks for them (the first run ever fetches and builds them: its progress is shown, not captured)."""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]  # not re-exported in its stubs

from tests.support.cluster import KubeEnv, kube_env
from tests.support.controlplane import start_control_plane
from tests.support.kafka import KafkaCluster, start_kafka
from tests.support.servers import LOOPBACK, ObjectStore, free_port, start_seaweedfs
from tests.support.toxiproxy import Proxy, Toxiproxy, start_toxiproxy

TopicFactory = Callable[..., str]
BucketFactory = Callable[..., str]


def uncaptured(pytestconfig: pytest.Config) -> contextlib.AbstractContextManager[Any]:
    """Let a fixture's first-run messages (downloads, builds) reach the terminal."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    return contextlib.nullcontext() if capture is None else capture.global_and_fixture_disabled()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[KafkaCluster]:
    """A real Apache Kafka cluster (KRaft, one node) with PLAINTEXT, SASL_PLAINTEXT, SSL and SASL_SSL listeners."""
    with uncaptured(pytestconfig):
        broker = start_kafka(tmp_path_factory.mktemp("kafka"), "ferry-test-1")
    with broker:
        yield broker


@pytest.fixture(scope="session")
def kafka2(tmp_path_factory: pytest.TempPathFactory, kafka: KafkaCluster) -> Iterator[KafkaCluster]:
    """A second, independent cluster (e.g. the target of a topic sync); asks for `kafka` so the jars exist."""
    with start_kafka(tmp_path_factory.mktemp("kafka2"), "ferry-test-2") as broker:
        yield broker


@pytest.fixture(scope="session")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Toxiproxy]:
    """Shopify Toxiproxy, to put a proxy that refuses, hangs or slows between a worker and a server."""
    with uncaptured(pytestconfig):  # the first run builds toxiproxy-server: show it
        server = start_toxiproxy(tmp_path_factory.mktemp("toxiproxy"))
    with server:
        yield server
    assert not server.running()


@pytest.fixture(scope="session")
def proxied_kafka(
    tmp_path_factory: pytest.TempPathFactory, kafka: KafkaCluster, toxiproxy: Toxiproxy
) -> Iterator[tuple[KafkaCluster, Proxy]]:
    """A cluster whose PLAINTEXT listener is advertised at a proxy's address, and that proxy (clients reach the
    broker only through it; `listeners["INTERNAL"]` is direct). Asks for `kafka` so the jars exist."""
    listen = f"{LOOPBACK}:{free_port()}"  # fixed before the broker, which advertises it
    broker = start_kafka(
        tmp_path_factory.mktemp("kafka-proxied"), "ferry-test-proxied", advertise={"PLAINTEXT": listen}
    )
    with broker:
        proxy = toxiproxy.proxy("kafka", upstream=broker.listeners["PLAINTEXT"], listen=listen)
        yield broker, proxy


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[KubeEnv]:
    """A real control plane (etcd, kube-apiserver, kube-controller-manager), the process kubelet as its node,
    helm, and Ferry's CRDs applied server-side. Each test module installs the chart on it (running_cluster)."""
    workdir = tmp_path_factory.mktemp("kube")
    with uncaptured(pytestconfig):
        control_plane = start_control_plane(workdir / "control-plane")
    with control_plane, kube_env(control_plane, workdir) as env:
        yield env


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    access_key = "FERRY" + secrets.token_hex(8).upper()
    secret_key = secrets.token_hex(20)
    with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), access_key, secret_key) as store:
        yield store


@pytest.fixture
def topic_factory(request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    """make(partitions=1, broker=None, prefix="t", config=None, name=None) -> name of a new (by default unique) topic.

    broker defaults to the `kafka` fixture; topics are deleted after the test.
    """
    created: list[tuple[KafkaCluster, str]] = []

    def make(
        partitions: int = 1,
        broker: KafkaCluster | None = None,
        prefix: str = "t",
        config: dict[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        target: KafkaCluster = broker or request.getfixturevalue("kafka")
        name = name or f"{prefix}-{uuid.uuid4().hex[:12]}"
        topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        admin = target.admin()  # must outlive the future: a collected client cancels it
        admin.create_topics([topic])[name].result(timeout=15)
        created.append((target, name))
        return name

    yield make
    for broker, name in created:
        _delete_topic(broker, name)


def _delete_topic(broker: KafkaCluster, name: str) -> None:
    try:
        admin = broker.admin()
        admin.delete_topics([name])[name].result(timeout=15)
    except Exception as err:  # cleanup only: a failed delete must not fail the test
        print(f"could not delete topic {name}: {err}")


@pytest.fixture
def bucket_factory(object_store: ObjectStore) -> Iterator[BucketFactory]:
    """make(prefix="b") -> name of a new, unique, empty bucket; buckets are deleted after the test."""
    client: Any = object_store.client()
    created: list[str] = []

    def make(prefix: str = "b") -> str:
        name = f"{prefix.lower()}-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=name)
        created.append(name)
        return name

    yield make
    for name in created:
        _empty_and_delete_bucket(client, name)


def _empty_and_delete_bucket(client: Any, name: str) -> None:
    try:
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=name)
    except Exception as err:  # cleanup only
        print(f"could not delete bucket {name}: {err}")
