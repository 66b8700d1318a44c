"""TopicSync's model, and its generated CRD as the real API server applies it (schema + CEL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ferry.topicsync.model import TopicSyncSpec
from ferry.topicsync.topics import planned_replication
from pydantic import ValidationError

from tests.support.admission import Admission, admission
from tests.support.cluster import KubeEnv


@pytest.fixture(scope="module")
def server(kube: KubeEnv) -> Iterator[Admission]:
    with admission(kube.control_plane.api_client()) as answers:
        yield answers


def manifest(**spec: Any) -> dict[str, Any]:
    body = {"source": {"bootstrapServers": "a:9092"}, "target": {"bootstrapServers": "b:9092"}, "topics": ["orders"]}
    body.update(spec)
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": "s"},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


def test_the_crd_is_structural_and_its_rules_compile(server: Admission) -> None:
    """The server took the CRD (so it is structural and its rules compile, within the cost budget: see
    test_crd_validation) and admits a plain TopicSync."""
    assert server.errors(manifest()) == []


ONE_OF = "spec: Invalid value: set exactly one of topics and topicPattern"
REFUSALS = [
    (
        "same instance, identity naming",
        manifest(target={"bootstrapServers": "a:9092"}),
        "spec: Invalid value: source and target are the same Kafka instance and targetTopicName is the identity: "
        "records would be copied onto themselves; use a targetTopicName such as '{source}.{topic}'",
    ),
    ("both topics and pattern", manifest(topicPattern="o.*"), ONE_OF),
    ("neither", manifest(topics=None), ONE_OF),
    ("exclude without pattern", manifest(excludePattern="x"), "spec: Invalid value: excludePattern needs topicPattern"),
    (
        "name without {topic}",
        manifest(targetTopicName="fixed"),
        'spec.targetTopicName: Invalid value: "fixed": '
        "spec.targetTopicName in body should match '^[A-Za-z0-9._{}-]*\\{topic\\}[A-Za-z0-9._{}-]*$'",
    ),
    (
        "empty topic list",
        manifest(topics=[]),
        "spec.topics: Invalid value: 0: spec.topics in body should have at least 1 items",
    ),
]


@pytest.mark.parametrize(("case", "body", "message"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_bad_manifests_are_refused(server: Admission, case: str, body: dict[str, Any], message: str) -> None:
    assert server.errors(body) == [message], case


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"target": {"bootstrapServers": "A"}},
            "copied onto themselves",
        ),  # the same instance (a:9092), spelt otherwise
        ({"topics": None, "topicPattern": "orders-(["}, "not a valid regular expression"),
    ],
)
def test_the_model_refuses_what_cel_cannot_see(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TopicSyncSpec.model_validate(manifest(**spec)["spec"])


def test_target_names_and_selection() -> None:
    spec = TopicSyncSpec.model_validate(
        {
            "source": {"bootstrapServers": "a:9092", "instanceId": "eu-1"},
            "target": {"bootstrapServers": "b"},
            "topicPattern": "orders.*",
            "excludePattern": "orders-tmp.*",
            "targetTopicName": "{source}.{topic}",
        }
    )
    assert spec.target_topic("orders") == "eu-1.orders"
    assert spec.selects("orders-a") and not spec.selects("orders-tmp-1") and not spec.selects("__consumer_offsets")
    assert not spec.selects("payments")


def test_replication_factor_is_capped_at_the_target_broker_count_and_says_so() -> None:
    assert planned_replication(3, 5) == (3, None)
    factor, note = planned_replication(3, 1)
    assert factor == 1 and note is not None and "capped at 1" in note
