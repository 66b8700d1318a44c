"""TopicSync's model and its generated CRD (schema + CEL, as the API server would apply them)."""

from __future__ import annotations

from typing import Any

import pytest
from ferry.api.crd import crd_for
from ferry.topicsync.model import TOPIC_SYNC, TopicSyncSpec
from ferry.topicsync.topics import planned_replication
from pydantic import ValidationError

from tests.support.crdcheck import cost_check, structural_check, validate

CRD = crd_for(TOPIC_SYNC)


def manifest(**spec: Any) -> dict[str, Any]:
    body = {"source": {"bootstrapServers": "a:9092"}, "target": {"bootstrapServers": "b:9092"}, "topics": ["orders"]}
    body.update(spec)
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": "s"},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


def test_the_crd_is_structural_and_its_rules_compile() -> None:
    assert structural_check(CRD) == []
    assert cost_check(CRD) == []
    assert validate(CRD, manifest()) == []


REFUSALS = [
    ("same instance, identity naming", manifest(target={"bootstrapServers": "a:9092"}), "copied onto themselves"),
    ("both topics and pattern", manifest(topicPattern="o.*"), "exactly one of topics and topicPattern"),
    ("neither", manifest(topics=None), "exactly one of topics and topicPattern"),
    ("exclude without pattern", manifest(excludePattern="x"), "excludePattern needs topicPattern"),
    ("name without {topic}", manifest(targetTopicName="fixed"), "should match"),
    ("empty topic list", manifest(topics=[]), "should have at least 1 items"),
]


@pytest.mark.parametrize(("case", "body", "message"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_bad_manifests_are_refused(case: str, body: dict[str, Any], message: str) -> None:
    assert any(message in e for e in validate(CRD, body)), validate(CRD, body)


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
