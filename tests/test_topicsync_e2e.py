"""TopicSync end to end: kubectl apply, the operator, the worker its Deployment describes, two Tansu brokers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import TopicFactory
from tests.support.cluster import Cluster, running_cluster
from tests.support.dumps import wait_for
from tests.support.servers import KafkaBroker
from tests.test_topicsync_worker import produce_on, read_all


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("sync-cluster")) as running:
        yield running


def test_apply_a_topic_sync_and_watch_it_copy(
    cluster: Cluster, kafka: KafkaBroker, kafka2: KafkaBroker, topic_factory: TopicFactory
) -> None:
    ns, topic = cluster.namespace(), topic_factory(partitions=2)
    produce_on(kafka.bootstrap, topic, 100, 2, "e2e")
    sync = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": "mirror", "namespace": ns},
        "spec": {
            "source": {"bootstrapServers": kafka.bootstrap, "instanceId": "a"},
            "target": {"bootstrapServers": kafka2.bootstrap, "instanceId": "b"},
            "topics": [topic],
            "startFrom": "earliest",
            "targetTopicName": "{source}.{topic}",
        },
    }
    cluster.apply(sync)

    def status() -> dict[str, object]:
        return cluster.status(ns, "mirror", plural="topicsyncs")

    wait_for(
        lambda: (
            status().get("state") == "Running"
            and status().get("lag") == 0
            and (status().get("totals") or {}).get("records") == 100
        ),
        timeout=90,
        what="Running, all copied",
    )
    assert status()["topicCount"] == 1
    assert len(read_all(kafka2.bootstrap, f"a.{topic}", 100)) == 100

    cluster.kubectl("delete", "topicsync", "mirror", "-n", ns)
    wait_for(lambda: cluster.task(ns, "mirror", plural="topicsyncs") is None, timeout=60, what="deleted")
    assert len(read_all(kafka2.bootstrap, f"a.{topic}", 100)) == 100  # the copied data stays
