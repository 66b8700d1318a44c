"""The generated ObsDumpTask CRD refuses bad manifests the way the API server would (schema + CEL)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from ferry.api.crd import crd_for
from ferry.obsdump.model import OBS_DUMP_TASK

from tests.support.crdcheck import admit, cost_check, structural_check, validate

CRD = crd_for(OBS_DUMP_TASK)


def manifest(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"bootstrapServers": "kafka:9092"},
        "topics": ["orders"],
        "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
    }
    body.update(spec)
    return {"apiVersion": "ferry.dev/v1alpha1", "kind": "ObsDumpTask", "metadata": {"name": "t"}, "spec": body}


def without(field: str) -> dict[str, Any]:
    body = manifest()
    del body["spec"][field]
    return body


def test_the_crd_is_structural_and_its_rules_compile_within_cost_bounds() -> None:
    assert structural_check(CRD) == []
    assert cost_check(CRD) == []


def test_a_valid_manifest_is_admitted_with_defaults() -> None:
    result = admit(CRD, manifest())
    assert result.errors == []
    spec = result.object["spec"]
    assert spec["state"] == "Running" and spec["dumpPeriodSeconds"] == 300 and spec["startFrom"] == "latest"
    assert spec["target"]["recordSeparator"] == "\n" and spec["target"]["timeDirectoryFormat"] == "yyyy/MM/dd/HH"


CREATE_REFUSALS = [
    ("short taskName", manifest(taskName="abc"), "taskName must be 4-64 characters"),
    ("taskName with a dot", manifest(taskName="orders.dump"), "taskName must be 4-64 characters"),
    ("taskName too long", manifest(taskName="x" * 65), "Too long"),
    ("21 topics", manifest(topics=[f"t{i}" for i in range(21)]), "must have at most 20 items"),
    ("topicRegex .*", manifest(topics=None, topicRegex=".*"), "topicRegex must not match every topic"),
    ("topicRegex ^.*$", manifest(topics=None, topicRegex="^.*$"), "topicRegex must not match every topic"),
    ("both topics and regex", manifest(topicRegex="orders-.*"), "set exactly one of topics and topicRegex"),
    ("neither topics nor regex", without("topics"), "set exactly one of topics and topicRegex"),
    ("negative period", manifest(dumpPeriodSeconds=-5), "should be greater than or equal to 1"),
    ("period over a day", manifest(dumpPeriodSeconds=90000), "should be less than or equal to 86400"),
    ("unknown startFrom", manifest(startFrom="middle"), 'Unsupported value: "middle"'),
    ("unknown state", manifest(state="Stopped"), 'Unsupported value: "Stopped"'),
    ("duplicate topics", manifest(topics=["a", "a"]), "Duplicate value"),
    ("bad topic name", manifest(topics=["has space"]), "should match"),
    ("upper-case bucket", manifest(target={**manifest()["spec"]["target"], "bucket": "Dumps"}), "should match"),
    (
        "leading slash in directory",
        manifest(target={**manifest()["spec"]["target"], "directory": "/x"}),
        "should match",
    ),
    (
        "storeKeys with a comma separator",
        manifest(target={**manifest()["spec"]["target"], "storeKeys": True, "recordSeparator": ","}),
        "recordSeparator must be made of control characters",
    ),
    (
        "SASL without credentials",
        manifest(source={"bootstrapServers": "k:9092", "securityProtocol": "SASL_SSL"}),
        "need saslMechanism",
    ),
    (
        "mechanism without SASL",
        manifest(source={"bootstrapServers": "k:9092", "saslMechanism": "PLAIN"}),
        "only used with securityProtocol",
    ),
    ("no target", without("target"), "Required value"),
    ("no credentials Secret", manifest(target={"endpoint": "http://s3", "bucket": "dumps"}), "Required value"),
    ("resume window not a duration", manifest(resumeWindow="1 day"), "should match"),
]


@pytest.mark.parametrize(("case", "body", "message"), CREATE_REFUSALS, ids=[c[0] for c in CREATE_REFUSALS])
def test_bad_manifests_are_refused_at_admission_with_a_clear_message(
    case: str, body: dict[str, Any], message: str
) -> None:
    spec = body["spec"]
    for key in [k for k, v in spec.items() if v is None]:
        del spec[key]
    errors = validate(CRD, body)
    assert errors, f"{case}: admitted"
    assert any(message in e for e in errors), errors


def changed(path: list[str], value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    old = manifest()
    new = copy.deepcopy(old)
    node = new["spec"]
    for part in path[:-1]:
        node = node[part]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return old, new


UPDATE_REFUSALS = [
    ("bucket changed", changed(["target", "bucket"], "elsewhere"), "spec.target cannot change after creation"),
    ("topics changed", changed(["topics"], ["orders", "payments"]), "spec.topics cannot change after creation"),
    ("period changed", changed(["dumpPeriodSeconds"], 60), "spec.dumpPeriodSeconds cannot change"),
    ("source changed", changed(["source", "bootstrapServers"], "other:9092"), "spec.source cannot change"),
    ("taskName added", changed(["taskName"], "added_later"), "spec.taskName cannot change"),
    ("storeKeys switched", changed(["target", "storeKeys"], True), "spec.target cannot change"),
]


@pytest.mark.parametrize(("case", "pair", "message"), UPDATE_REFUSALS, ids=[c[0] for c in UPDATE_REFUSALS])
def test_spec_changes_after_creation_are_refused(
    case: str, pair: tuple[dict[str, Any], dict[str, Any]], message: str
) -> None:
    old, new = pair
    errors = validate(CRD, new, old)
    assert any(message in e for e in errors), errors


def test_removing_an_optional_field_is_refused_too() -> None:
    old = manifest(taskName="named_task")
    new = copy.deepcopy(old)
    del new["spec"]["taskName"]
    assert any("spec.taskName cannot change" in e for e in validate(CRD, new, old))


def test_only_state_may_change() -> None:
    old = manifest()
    new = copy.deepcopy(old)
    new["spec"]["state"] = "Paused"
    assert validate(CRD, new, old) == []
