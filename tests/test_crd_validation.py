"""Ferry's CRDs on the real API server: accepted (structural, rules compiled, within the CEL cost budget), and
admission of ObsDumpTasks by the server's own schema validation, defaulting, pruning and CEL rules.

The per-kind bad-manifest tables are next to each model (test_obsdump_crd, test_dataaccess_model,
test_topicsync_model); here are the server behaviours our CRDs rely on, shown on the ObsDumpTask CRD, whose
``spec.state`` is its only mutable field.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ferry.api.crd import crd_for
from ferry.api.kinds import KindDef
from ferry.registry import KINDS
from kubernetes import client

from tests.support.admission import BLOCKED, Admission, admission
from tests.support.cluster import CRDS, KubeEnv

TASK_NAME = "taskName must be 4-64 characters of letters, digits, '-' and '_'"
TOPIC_REGEX = "topicRegex must not match every topic: list topics or narrow the pattern"
ONE_OF = "set exactly one of topics and topicRegex"
# Every pattern the topicRegex rule names.
MATCH_EVERYTHING = [".*", "^.*", ".*$", "^.*$", ".+", "^.+", ".+$", "^.+$", "(.*)", "^(.*)$"]


def immutable(field: str) -> str:
    return (
        f"spec: Invalid value: spec.{field} cannot change after creation; only spec.state can. "
        "Create a new ObsDumpTask to change it."
    )


@pytest.fixture(scope="module")
def server(kube: KubeEnv) -> Iterator[Admission]:
    with admission(kube.control_plane.api_client()) as answers:
        yield answers


def task(**spec: Any) -> dict[str, Any]:
    """An ObsDumpTask; spec values of None are left out."""
    body: dict[str, Any] = {
        "source": {"bootstrapServers": "kafka:9092"},
        "taskName": "orders-dump",
        "topics": ["orders"],
        "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
    }
    body.update(spec)
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {"name": "orders"},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


def target(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = task()["spec"]["target"]
    return {**body, **fields}


# --------------------------------------------------------------------------- the CRDs themselves


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_the_served_crds_are_the_generated_ones(kube: KubeEnv, kind: KindDef) -> None:
    """The server accepted the CRDs (so they are structural and their rules compile) and serves them as
    `ferry crds` generates them from the models."""
    api = client.ApiextensionsV1Api(kube.control_plane.api_client())
    served = api.api_client.sanitize_for_serialization(api.read_custom_resource_definition(kind.crd_name))
    conditions = {c["type"]: c["status"] for c in served["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert "NonStructuralSchema" not in conditions
    generated = crd_for(kind)
    assert served["spec"]["versions"] == generated["spec"]["versions"]
    assert served["spec"]["names"] == generated["spec"]["names"] | {"listKind": f"{kind.kind}List"}


@pytest.mark.parametrize("path", CRDS, ids=lambda p: p.name)
def test_the_crds_pass_the_servers_cel_cost_budget(kube: KubeEnv, path: Path) -> None:
    """The server refuses a CRD whose rules' estimated cost exceeds its budget (see the next test): each CRD,
    re-applied, and created afresh under another group (a create is validated in full), is accepted."""
    applied = kube.kubectl("apply", "--server-side", "--field-manager=ferry-tests", "--dry-run=server", "-f", str(path))
    assert applied.stdout.strip().endswith("serverside-applied (server dry run)"), applied.stdout
    created = kube.kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(_in_new_group(path)))
    assert created.stdout.strip().endswith("created (server dry run)"), created.stdout


def test_a_rule_over_the_cost_budget_is_refused(kube: KubeEnv) -> None:
    """The control for the test above: an unbounded rule added to a CRD makes the server refuse it."""
    crd = _in_new_group(CRDS[0])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rule = {"rule": "self.all(x, self.all(y, x.matches(y)))"}
    spec["properties"]["patterns"] = {"type": "array", "items": {"type": "string"}, "x-kubernetes-validations": [rule]}
    refused = kube.kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(crd), check=False)
    assert refused.returncode != 0
    assert (
        "spec.validation.openAPIV3Schema.properties[spec].properties[patterns].x-kubernetes-validations[0].rule: "
        "Forbidden: estimated rule cost exceeds budget" in refused.stderr
    ), refused.stderr


def _in_new_group(path: Path) -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(path.read_text())
    group = f"g{uuid.uuid4().hex[:8]}.{crd['spec']['group']}"
    crd["spec"]["group"] = group
    crd["metadata"] = {"name": f"{crd['spec']['names']['plural']}.{group}"}
    return crd


# --------------------------------------------------------------------------- creation


def test_valid_create_is_admitted_with_defaults(server: Admission) -> None:
    answer = server.create(task())
    assert answer.errors == [] and answer.warnings == []
    spec = answer.object["spec"]
    assert (spec["state"], spec["dumpPeriodSeconds"], spec["startFrom"]) == ("Running", 300, "latest")
    assert spec["source"]["securityProtocol"] == "PLAINTEXT"
    assert spec["target"]["credentialsSecretRef"] == {
        "name": "obs",
        "accessKeyKey": "accessKey",
        "secretKeyKey": "secretKey",
    }


def test_explicit_values_are_not_overwritten_by_defaults(server: Admission) -> None:
    spec = server.create(task(state="Paused", dumpPeriodSeconds=60, topics=None, topicRegex="^orders-.*$")).object[
        "spec"
    ]
    assert (spec["state"], spec["dumpPeriodSeconds"], spec["topicRegex"]) == ("Paused", 60, "^orders-.*$")


def test_nested_defaults_apply_only_under_a_present_parent(server: Admission) -> None:
    source = server.create(task()).object["spec"]["source"]
    assert "credentialsSecretRef" not in source
    sasl: dict[str, Any] = {"bootstrapServers": "kafka:9093", "securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN"}
    sasl["credentialsSecretRef"] = {"name": "kafka-user"}
    source = server.create(task(source=sasl)).object["spec"]["source"]
    assert source["credentialsSecretRef"] == {
        "name": "kafka-user",
        "usernameKey": "username",
        "passwordKey": "password",
    }


def test_a_null_is_replaced_by_the_default_and_otherwise_dropped(server: Admission) -> None:
    body = task()
    body["spec"].update(state=None, topicRegex=None)
    answer = server.create(body)
    assert answer.errors == []
    assert answer.object["spec"]["state"] == "Running"
    assert "topicRegex" not in answer.object["spec"]


def test_unknown_fields_are_pruned_with_a_warning(server: Admission) -> None:
    body = task(typo="x")
    body["spec"]["target"]["regoin"] = "eu"
    body["extra"] = True
    answer = server.create(body, field_validation="Warn")
    assert answer.errors == []
    assert "typo" not in answer.object["spec"] and "regoin" not in answer.object["spec"]["target"]
    assert "extra" not in answer.object
    assert sorted(answer.warnings) == [
        'unknown field "extra"',
        'unknown field "spec.target.regoin"',
        'unknown field "spec.typo"',
    ]


def test_strict_field_validation_rejects_unknown_fields(server: Admission) -> None:
    assert server.errors(task(typo="x")) == [
        'ObsDumpTask in version "v1alpha1" cannot be handled as a ObsDumpTask: '
        'strict decoding error: unknown field "spec.typo"'
    ]


def test_status_is_dropped_on_create_when_the_status_subresource_is_enabled(server: Admission) -> None:
    answer = server.create(task() | {"status": {"state": "Paused"}})
    assert answer.errors == []
    assert "status" not in answer.object


# --------------------------------------------------------------------------- CEL rules on create


@pytest.mark.parametrize("name", ["abc", "has space", "orders.dump", "naïve-task", "a" * 65])
def test_task_name_rule(server: Admission, name: str) -> None:
    errors = server.errors(task(taskName=name))
    if len(name) > 64:  # maxLength refuses it first; the rule is not run
        assert errors == ["spec.taskName: Too long: may not be more than 64 bytes", BLOCKED]
    else:
        assert errors == [f'spec.taskName: Invalid value: "{name}": {TASK_NAME}']


@pytest.mark.parametrize("regex", MATCH_EVERYTHING)
def test_topic_regex_may_not_match_everything(server: Admission, regex: str) -> None:
    errors = server.errors(task(topics=None, topicRegex=regex))
    assert errors == [f'spec.topicRegex: Invalid value: "{regex}": {TOPIC_REGEX}']


def test_a_narrow_topic_regex_is_admitted(server: Admission) -> None:
    assert server.errors(task(topics=None, topicRegex="^orders\\..+$")) == []


@pytest.mark.parametrize("spec", [{"topics": None}, {"topicRegex": "^orders$"}], ids=["neither", "both"])
def test_exactly_one_of_topics_and_topic_regex(server: Admission, spec: dict[str, Any]) -> None:
    assert server.errors(task(**spec)) == [f"spec: Invalid value: {ONE_OF}"]


def test_transition_rules_do_not_run_on_create(server: Admission) -> None:
    # Every optional immutable field set: their rules (has(self.x) == has(oldSelf.x) ...) need an old object.
    body = task(topics=None, topicRegex="^orders$", resources={"requests": {"cpu": "100m"}}, podTemplate={})
    assert server.errors(body) == []


# --------------------------------------------------------------------------- schema validation


def test_enum_violation(server: Admission) -> None:
    assert server.errors(task(state="Stopped")) == [
        'spec.state: Unsupported value: "Stopped": supported values: "Running", "Paused"',
        BLOCKED,
    ]


def test_too_many_topics(server: Admission) -> None:
    assert server.errors(task(topics=[f"t{i}" for i in range(21)])) == [
        "spec.topics: Too many: 21: must have at most 20 items",
        BLOCKED,
    ]


def test_negative_period_is_invalid_but_not_blocking(server: Admission) -> None:
    assert sorted(server.errors(task(dumpPeriodSeconds=-5, topics=None))) == [
        "spec.dumpPeriodSeconds: Invalid value: -5: "
        "spec.dumpPeriodSeconds in body should be greater than or equal to 1",
        f"spec: Invalid value: {ONE_OF}",
    ]


def test_wrong_types(server: Admission) -> None:
    # several schema errors come in no fixed order
    assert sorted(server.errors(task(dumpPeriodSeconds="300", target="dumps"))) == [
        BLOCKED,
        'spec.dumpPeriodSeconds: Invalid value: "string": '
        'spec.dumpPeriodSeconds in body must be of type integer: "string"',
        'spec.target: Invalid value: "string": spec.target in body must be of type object: "string"',
    ]


def test_integral_float_is_an_integer(server: Admission) -> None:
    answer = server.create(task(dumpPeriodSeconds=60.0))
    assert answer.errors == []
    assert answer.object["spec"]["dumpPeriodSeconds"] == 60


def test_required_fields(server: Admission) -> None:
    body = task(target={"endpoint": "http://s3:8333"})
    del body["spec"]["source"]
    assert sorted(server.errors(body)) == [
        BLOCKED,
        "spec.source: Required value",
        "spec.target.bucket: Required value",
        "spec.target.credentialsSecretRef: Required value",
    ]
    assert server.errors({"apiVersion": "ferry.dev/v1alpha1", "kind": "ObsDumpTask", "metadata": {"name": "x"}}) == [
        "spec: Required value",
        BLOCKED,
    ]


def test_duplicate_in_a_set(server: Admission) -> None:
    assert server.errors(task(topics=["a", "b", "a", "a"])) == ['spec.topics[2]: Duplicate value: "a"']


# --------------------------------------------------------------------------- updates (transition rules)


def test_changing_only_the_state_is_admitted(server: Admission) -> None:
    answer = server.update(task(), task(state="Paused"))
    assert answer.errors == []
    assert answer.object["spec"]["state"] == "Paused"


IMMUTABLE_CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("target", {"target": target(bucket="other")}),
    ("target", {"target": target(directory="dumps")}),
    ("taskName", {"taskName": "renamed-task"}),
    ("dumpPeriodSeconds", {"dumpPeriodSeconds": 60}),
    ("topics", {"topics": ["orders", "payments"]}),
    ("source", {"source": {"bootstrapServers": "other:9092"}}),
    ("startFrom", {"startFrom": "earliest"}),
    ("replicas", {"replicas": 2}),
    ("resumeWindow", {"resumeWindow": "1h"}),
    ("resources", {"resources": {"requests": {"cpu": "100m"}}}),
    ("podTemplate", {"podTemplate": {"labels": {"team": "a"}}}),
]


@pytest.mark.parametrize(("field", "change"), IMMUTABLE_CHANGES, ids=[field for field, _ in IMMUTABLE_CHANGES])
def test_immutable_fields(server: Admission, field: str, change: dict[str, Any]) -> None:
    assert server.update(task(), task(**change)).errors == [immutable(field)]


def test_switching_from_topics_to_topic_regex_is_rejected(server: Admission) -> None:
    assert server.update(task(), task(topics=None, topicRegex="^orders$")).errors == [
        immutable("topics"),
        immutable("topicRegex"),
    ]


def test_removing_an_optional_field_is_rejected(server: Admission) -> None:
    errors = server.update(task(target=target(directory="dumps")), task()).errors
    assert errors == [immutable("target")]
    assert server.update(task(), task(taskName=None)).errors == [immutable("taskName")]


def test_defaults_make_an_omitted_field_unchanged(server: Admission) -> None:
    assert server.update(task(dumpPeriodSeconds=300, startFrom="latest"), task()).errors == []


def test_status_updates_go_through_the_status_subresource(server: Admission) -> None:
    status = {"status": {"state": "Paused"}}
    main = server.update(task(), task() | status)
    assert main.errors == [] and "status" not in main.object
    answer = server.update(task(), task(taskName="ignored-name") | status, subresource="status")
    assert answer.errors == []
    assert answer.object["status"] == {"state": "Paused"}
    assert answer.object["spec"]["taskName"] == "orders-dump"


def test_an_update_is_validated_like_a_create(server: Admission) -> None:
    old = task()
    new = copy.deepcopy(old)
    new["spec"]["state"] = "Stopped"
    assert server.update(old, new).errors == [
        'spec.state: Unsupported value: "Stopped": supported values: "Running", "Paused"',
        BLOCKED,
    ]
