"""`spec.taskName`, the consoles' task names: each kind's rule (model, and the CRD on the real API server), unique per
namespace and kind (the operator's decision), and the name in the printer column, Events and metrics."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from ferry.api.crd import crd_for
from ferry.control.accepted import ACCEPTED_SPEC_ANNOTATION
from ferry.control.reconcile import Observed, Outcome, decide
from ferry.control.render import deployed_spec
from ferry.metrics import TaskStateMetrics, WorkerMetrics
from ferry.registry import KINDS, PLUGINS
from ferry.settings import OperatorSettings
from prometheus_client import generate_latest
from pydantic import ValidationError

from tests.support.admission import BLOCKED, Admission, admission
from tests.support.cluster import KubeEnv

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(heartbeat_timeout=60)
SECRETS: dict[str, set[str] | None] = {"obs": {"accessKey", "secretKey"}, "dts": {"username", "password"}}
CONSOLE_RULE = "taskName must be 4-64 characters of letters, digits, '-' and '_'"
DATAHUB_RULE = "taskName must be 1-64 characters of letters, digits, '_', '-' and '.'"
RULES = {"ObsDumpTask": CONSOLE_RULE, "TopicSync": CONSOLE_RULE, "DataAccessTask": DATAHUB_RULE}
PLURALS = {kind.kind: kind.plural for kind in KINDS}


def spec_of(kind: str, name: str) -> dict[str, Any]:
    """A valid spec of the kind; each task reads its own consumer group, so only the name can collide."""
    if kind == "ObsDumpTask":
        return {
            "source": {"bootstrapServers": "kafka:9092"},
            "topics": ["orders"],
            "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
        }
    if kind == "TopicSync":
        return {"source": {"bootstrapServers": "a:9092"}, "target": {"bootstrapServers": "b:9092"}, "topics": ["o"]}
    if kind == "ObsRestoreTask":
        source = {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}}
        return {"source": source, "topics": ["orders"], "target": {"bootstrapServers": "kafka:9092"}}
    dts = {
        "bootstrapServers": "dts:9092",
        "topic": "subs",
        "consumerGroup": f"grp-{name}",
        "credentialsSecretRef": {"name": "dts"},
    }
    return {"source": {"type": "DTS", "dts": dts}, "target": {"bootstrapServers": "kafka:9092", "topic": "orders"}}


def body(
    kind: str,
    name: str,
    task_name: str | None = None,
    created: str = "2026-11-21T10:00:00Z",
    namespace: str = "team-a",
) -> dict[str, Any]:
    spec = spec_of(kind, name)
    if task_name is not None:
        spec["taskName"] = task_name
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "generation": 1,
            "creationTimestamp": created,
            "annotations": {},
        },
        "spec": spec,
        "status": {},
    }


def run(task: dict[str, Any], *peers: dict[str, Any]) -> Outcome:
    plugin = PLUGINS[task["kind"]]
    observed = Observed(now=NOW, secrets=SECRETS, peers=[copy.deepcopy(p) for p in (task, *peers)])
    return decide(plugin, task, observed, SETTINGS)


# --------------------------------------------------------------------------- each kind's rule, in the model


VALID = {
    "ObsDumpTask": ["orders_dump", "abcd", "A-1_b", "x" * 64],
    "TopicSync": ["orders-to-dr", "sync_01", "x" * 64],
    "DataAccessTask": ["a", "orders.cdc", "DTS-sub_1.v2", "x" * 64],
}
INVALID = {
    "ObsDumpTask": ["abc", "orders.dump", "has space", "naïve-task", "x" * 65],
    "TopicSync": ["ab", "orders.to.dr", "a/b", "x" * 65],
    "DataAccessTask": ["", "has space", "orders/cdc", "订单", "x" * 65],
}


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in VALID.items() for n in names])
def test_the_model_admits_the_consoles_names(kind: str, name: str) -> None:
    spec = PLUGINS[kind].definition.spec_model.model_validate({**spec_of(kind, "t"), "taskName": name})
    assert spec.task_name == name


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in INVALID.items() for n in names])
def test_the_model_refuses_other_names_in_the_rules_words(kind: str, name: str) -> None:
    with pytest.raises(ValidationError) as raised:
        PLUGINS[kind].definition.spec_model.model_validate({**spec_of(kind, "t"), "taskName": name})
    [error] = raised.value.errors()
    assert error["loc"] == ("taskName",)
    if len(name) > 64:
        assert error["msg"] == "String should have at most 64 characters"
    else:
        assert error["msg"] == f"Value error, {RULES[kind]}"


def test_a_task_without_a_name_has_none() -> None:
    for kind in PLUGINS:
        assert PLUGINS[kind].definition.spec_model.model_validate(spec_of(kind, "t")).task_name is None


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_kind_shows_the_name_first_in_kubectl_get(kind: Any) -> None:
    [version] = crd_for(kind)["spec"]["versions"]
    first = version["additionalPrinterColumns"][0]
    assert first == {
        "name": "Task Name",
        "type": "string",
        "jsonPath": ".spec.taskName",
        "description": "The task's display name (spec.taskName).",
    }


# --------------------------------------------------------------------------- each kind's rule, in the CRD


@pytest.fixture(scope="module")
def server(kube: KubeEnv) -> Iterator[Admission]:
    with admission(kube.control_plane.api_client()) as answers:
        yield answers


def manifest(kind: str, name: str) -> dict[str, Any]:
    task = body(kind, "t", name)
    return {"apiVersion": task["apiVersion"], "kind": kind, "metadata": {"name": "t"}, "spec": task["spec"]}


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in VALID.items() for n in names])
def test_the_api_server_admits_the_consoles_names(server: Admission, kind: str, name: str) -> None:
    answer = server.create(manifest(kind, name))
    assert answer.errors == [] and answer.object["spec"]["taskName"] == name


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in INVALID.items() for n in names])
def test_the_api_server_refuses_other_names_saying_what_is_allowed(server: Admission, kind: str, name: str) -> None:
    errors = server.errors(manifest(kind, name))
    if len(name) > 64:  # maxLength refuses it first; the rule is not run
        assert errors == ["spec.taskName: Too long: may not be more than 64 bytes", BLOCKED]
    else:
        assert errors == [f'spec.taskName: Invalid value: "{name}": {RULES[kind]}']


def test_the_name_may_change_on_the_kinds_whose_spec_may(server: Admission) -> None:
    """TopicSync and DataAccessTask specs are mutable, the name too (the webhook keeps it unique); an
    ObsDumpTask's spec, its name included, is fixed at creation."""
    for kind in ("TopicSync", "DataAccessTask"):
        assert server.update(manifest(kind, "first-name"), manifest(kind, "second-name")).errors == []
    assert server.update(manifest("ObsDumpTask", "first-name"), manifest("ObsDumpTask", "second-name")).errors == [
        "spec: Invalid value: spec.taskName cannot change after creation; only spec.state can. "
        "Create a new ObsDumpTask to change it."
    ]


# --------------------------------------------------------------------------- unique per namespace and kind


# The kinds with worker Deployments; ObsRestoreTask's Job: tests/test_obsrestore_operator.py.
@pytest.mark.parametrize("kind", [kind for kind, plugin in PLUGINS.items() if not plugin.one_shot])
def test_the_later_task_with_a_name_in_use_is_failed_with_no_worker(kind: str) -> None:
    first = body(kind, "first", "orders_sync", created="2026-11-21T10:00:00Z")
    later = body(kind, "later", "orders_sync", created="2026-11-21T11:00:00Z")
    held = run(later, first)
    assert (held.status["state"], held.status["reason"]) == ("Failed", "TaskNameInUse")
    assert held.status["message"] == (
        f"{kind} first in this namespace already has taskName orders_sync (task names are unique per namespace "
        f"and kind; the earliest created keeps it): give this {kind} another spec.taskName, or delete first; "
        "this task starts by itself once the name is its own"
    )
    assert held.deployment is not None and held.deployment["spec"]["replicas"] == 0
    kept = run(first, later)
    assert kept.status["state"] == "Unassigned"
    assert kept.deployment is not None and kept.deployment["spec"]["replicas"] == 1


def test_a_tie_on_creation_time_goes_to_the_first_name_whichever_is_decided_first() -> None:
    b = body("ObsDumpTask", "b-task", "shared_name")
    a = body("ObsDumpTask", "a-task", "shared_name")
    assert run(b, a).status["reason"] == "TaskNameInUse"
    assert run(a, b).status["reason"] == "WaitingForWorker"


def test_the_name_is_free_in_another_namespace_or_once_its_holder_is_being_deleted() -> None:
    later = body("ObsDumpTask", "later", "orders_dump", created="2026-11-21T11:00:00Z")
    elsewhere = body("ObsDumpTask", "first", "orders_dump", namespace="team-b")
    assert run(later, elsewhere).status["reason"] == "WaitingForWorker"
    leaving = body("ObsDumpTask", "first", "orders_dump")
    leaving["metadata"]["deletionTimestamp"] = "2026-11-21T11:30:00Z"
    started = run(later, leaving)
    assert started.status["reason"] == "WaitingForWorker"
    assert started.deployment is not None and started.deployment["spec"]["replicas"] == 1


def test_tasks_without_a_name_never_collide() -> None:
    first, later = body("ObsDumpTask", "first"), body("ObsDumpTask", "later", created="2026-11-21T11:00:00Z")
    assert run(later, first).status["reason"] == "WaitingForWorker"
    named = body("ObsDumpTask", "named", "first")  # a taskName equal to another task's metadata.name
    assert run(named, first).status["reason"] == "WaitingForWorker"


def test_a_paused_task_whose_name_is_in_use_is_still_reported_failed() -> None:
    first = body("ObsDumpTask", "first", "orders_dump")
    later = body("ObsDumpTask", "later", "orders_dump", created="2026-11-21T11:00:00Z")
    later["spec"]["state"] = "Paused"
    assert run(later, first).status["reason"] == "TaskNameInUse"


@pytest.mark.parametrize("kind", ["TopicSync", "DataAccessTask"])
def test_a_rename_to_a_name_in_use_is_held_back_even_for_an_earlier_task(kind: str) -> None:
    """Without the webhook, an older task renamed to a newer running task's name does not take it from that task
    (which would stop it): the rename is held back, the older task keeps running under its accepted spec."""
    early = body(kind, "early", "own_name", created="2026-11-21T09:00:00Z")
    holder = body(kind, "holder", "orders_sync", created="2026-11-21T10:00:00Z")
    first = run(early, holder)
    assert first.status["reason"] == "WaitingForWorker" and ACCEPTED_SPEC_ANNOTATION in first.annotations
    early["metadata"]["annotations"].update(first.annotations)
    early["spec"]["taskName"] = "orders_sync"
    renamed = run(early, holder)
    assert (renamed.status["state"], renamed.status["reason"]) == ("Failed", "TaskNameInUse")
    assert renamed.status["message"] == (
        f"{kind} holder in this namespace already has taskName orders_sync (task names are unique per namespace and "
        f"kind, and a rename does not take a name in use): give this {kind} another spec.taskName, or revert it to "
        "own_name; until then the workers keep running the last accepted spec (not applied: spec.taskName: "
        "own_name -> orders_sync)"
    )
    assert renamed.deployment is not None and renamed.deployment["spec"]["replicas"] == 1
    assert deployed_spec(renamed.deployment)["taskName"] == "own_name"  # type: ignore[index]
    assert ACCEPTED_SPEC_ANNOTATION not in renamed.annotations
    [event] = [e for e in renamed.events if e.reason == "TaskNameInUse"]
    assert event.message.startswith(f"[own_name] Failed: {kind} holder in this namespace already has taskName")
    # The holder keeps its name and its workers, whichever was created first.
    kept = run(holder, early)
    assert kept.status["reason"] == "WaitingForWorker"
    assert kept.deployment is not None and kept.deployment["spec"]["replicas"] == 1
    # A task that never had a name is held back the same way.
    unnamed = body(kind, "unnamed", created="2026-11-21T08:00:00Z")
    unnamed["metadata"]["annotations"].update(run(unnamed, holder).annotations)
    unnamed["spec"]["taskName"] = "orders_sync"
    assert (
        run(unnamed, holder)
        .status["message"]
        .endswith(
            "or remove it; until then the workers keep running the last accepted spec (not applied: spec.taskName: "
            "(unset) -> orders_sync)"
        )
    )
    # The name free (its holder deleted), the rename goes through.
    freed = run(early)
    assert freed.status["reason"] == "WaitingForWorker"
    assert json.loads(freed.annotations[ACCEPTED_SPEC_ANNOTATION])["taskName"] == "orders_sync"
    assert deployed_spec(freed.deployment)["taskName"] == "orders_sync"  # type: ignore[index]


# --------------------------------------------------------------------------- Events and metrics


def test_the_operators_events_lead_with_the_task_name() -> None:
    failed = run(body("ObsDumpTask", "later", "orders_dump", created="2026-11-21T11:00:00Z"), body("ObsDumpTask", "a"))
    [event] = failed.events
    assert (event.type, event.reason) == ("Normal", "WaitingForWorker")
    assert event.message == "[orders_dump] Unassigned: no worker has reported yet"
    held = run(
        body("ObsDumpTask", "later", "orders_dump", created="2026-11-21T11:00:00Z"),
        body("ObsDumpTask", "first", "orders_dump"),
    )
    [event] = held.events
    assert (event.type, event.reason) == ("Warning", "TaskNameInUse")
    assert event.message.startswith("[orders_dump] Failed: ObsDumpTask first in this namespace already has")
    [unnamed] = run(body("ObsDumpTask", "plain")).events
    assert unnamed.message == "Unassigned: no worker has reported yet"


def test_the_operators_task_state_carries_the_name_and_follows_a_rename() -> None:
    states = TaskStateMetrics()
    states.set("TopicSync", "team-a", "mirror", "Running", "orders_sync")
    states.set("ObsDumpTask", "team-a", "dump", "Running")

    def value(kind: str, task: str, task_name: str, state: str) -> float | None:
        labels = {"kind": kind, "namespace": "team-a", "task": f"team-a/{task}", "task_name": task_name}
        return states.registry.get_sample_value("ferry_task_state", {**labels, "state": state})

    assert value("TopicSync", "mirror", "orders_sync", "Running") == 1
    assert value("ObsDumpTask", "dump", "", "Running") == 1
    states.set("TopicSync", "team-a", "mirror", "Running", "orders_mirror")
    assert value("TopicSync", "mirror", "orders_sync", "Running") is None  # no stale series under the old name
    assert value("TopicSync", "mirror", "orders_mirror", "Running") == 1
    states.forget("TopicSync", "team-a", "mirror")
    assert value("TopicSync", "mirror", "orders_mirror", "Running") is None


def test_every_worker_metric_carries_the_name() -> None:
    metrics = WorkerMetrics("ObsDumpTask", "team-a/dump", "orders_dump")
    metrics.partition(metrics.records, "orders", 0).inc()
    metrics.error("KafkaError")
    metrics.up.labels(**metrics.labels).set(1)
    samples = [s for family in metrics.registry.collect() for s in family.samples]
    assert samples and all(s.labels["task_name"] == "orders_dump" for s in samples if "task" in s.labels)
    plain = WorkerMetrics("TopicSync", "team-a/mirror")
    plain.up.labels(**plain.labels).set(1)
    assert (
        'ferry_worker_healthy{kind="TopicSync",task="team-a/mirror",task_name=""} 1.0'
        in generate_latest(plain.registry).decode()
    )
