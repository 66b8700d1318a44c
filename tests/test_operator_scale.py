"""The operator at scale (issue 10): peers from watch-fed indexes give the same answers as a list of every task,
a steady-state reconcile sends nothing to the API server, an unchanged status is not patched, and what the operator
keeps per task is kept small."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
from ferry import malloc, operator
from ferry.control.peers import component, key_of, slim, status_changes, tokens
from ferry.control.reconcile import Observed, decide, owner_of
from ferry.obsdump.worker import PLUGIN as DUMP
from ferry.settings import OperatorSettings
from ferry.tasks import KindPlugin
from ferry.topicsync.worker import PLUGIN as SYNC
from kubernetes import client, config

from tests.support.cluster import KubeEnv
from tests.support.controlplane import wait_for_default_service_account
from tests.support.servers import stop_process

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
FIELDS = operator.CLUSTER_ID_FIELDS


def dump(i: int, bootstrap: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "ObsDumpTask",
        "metadata": {
            "name": f"dump-{i:03d}",
            "namespace": f"ns-{i % 3}",
            "uid": f"uid-{i}",
            "generation": 1,
            "creationTimestamp": f"2026-11-21T10:{i // 60:02d}:{i % 60:02d}Z",
        },
        "spec": {
            "source": {"bootstrapServers": bootstrap},
            "topics": ["orders"],
            "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
            **spec,
        },
        "status": status or {},
    }


def sync(name: str, source: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "TopicSync",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "source": {"bootstrapServers": f"{source}:9092"},
            "target": {"bootstrapServers": f"{target}:9092"},
            "topics": ["orders"],
        },
        "status": {},
    }


def indexed_peers(plugin: KindPlugin, bodies: list[dict[str, Any]], me: dict[str, Any]) -> list[dict[str, Any]]:
    """The peers the operator passes to decide(), from indexes built as its Kopf index handlers build them."""
    entries = {key_of(b): {"body": slim(b, FIELDS), "tokens": tokens(plugin, b, FIELDS)} for b in bodies}
    holders: dict[str, list[tuple[str, str]]] = {}
    for key, entry in entries.items():
        for token in entry["tokens"]:
            holders.setdefault(token, []).append(key)
    found = component(tokens(plugin, me, FIELDS), lambda t: holders.get(t, []), lambda k: entries[k]["tokens"])
    return [entries[k]["body"] for k in sorted(found)]


def verdict(plugin: KindPlugin, me: dict[str, Any], peers: list[dict[str, Any]]) -> tuple[Any, ...]:
    secrets: dict[str, set[str] | None] = {"obs": {"accessKey", "secretKey"}}
    outcome = decide(plugin, me, Observed(peers=peers, secrets=secrets, now=NOW), OperatorSettings())
    conditions = tuple((c["type"], c["status"], c["message"]) for c in outcome.status["conditions"])
    return outcome.status["state"], outcome.status["reason"], outcome.status["message"], conditions


def test_limits_and_names_from_the_indexes_match_a_list_of_every_task() -> None:
    tasks = [dump(i, f"kafka-{i % 3}:9092") for i in range(60)]  # 20 per spelling: 2 over the limit each
    # Another spelling of kafka-0's cluster: one with the same host, one joined by the cluster id its worker saw.
    tasks += [dump(60, "KAFKA-0", {"sourceClusterId": "c0"}), dump(61, "alias-of-0:9092", {"sourceClusterId": "c0"})]
    tasks += [dump(62, "kafka-9:9092", taskName="orders"), dump(63, "kafka-8:9092", taskName="orders")]
    tasks[63]["metadata"]["namespace"] = tasks[62]["metadata"]["namespace"]
    tasks += [dump(64, "kafka-7:9092")]
    tasks[64]["spec"]["source"]["instanceId"] = "kafka-1:9092"  # an instanceId naming kafka-1's spelling
    refused = 0
    for me in tasks:
        peers = indexed_peers(DUMP, tasks, me)
        assert len(peers) < len(tasks) / 2
        expected = verdict(DUMP, me, tasks)
        assert verdict(DUMP, me, peers) == expected
        refused += expected[1] in ("TaskLimitExceeded", "TaskNameInUse")
    # 18 on each instance: kafka-0 has 22 tasks (4 refused), kafka-1 21 (3), kafka-2 20 (2), and one name taken.
    assert refused == 10


def test_a_replication_loop_from_the_indexes_matches_a_list_of_every_task() -> None:
    syncs = [sync("ab", "a", "b"), sync("bc", "b", "c"), sync("ca", "c", "a"), sync("xy", "x", "y")]
    for me in syncs:
        assert verdict(SYNC, me, indexed_peers(SYNC, syncs, me)) == verdict(SYNC, me, syncs)
    assert len(indexed_peers(SYNC, syncs, syncs[0])) == 3


def test_status_changes_leave_out_what_would_not_change() -> None:
    current = {"state": "Running", "workers": {"w1": {"lag": 1}}, "lag": None, "conditions": [{"type": "Ready"}]}
    same = {"state": "Running", "workers": {"w2": None}, "lag": None, "conditions": [{"type": "Ready"}], "gone": None}
    assert status_changes(current, same) == {}
    changed = {"state": "Failed", "workers": {"w1": None}, "lag": 3, "conditions": []}
    assert status_changes(current, changed) == changed


# Memory at scale: what is kept per task.


def parsed(body: dict[str, Any]) -> dict[str, Any]:
    """As a watch event brings it: its own copy of every string."""
    return json.loads(json.dumps(body))


def test_a_watched_task_is_kept_without_its_managed_fields_and_with_shared_strings() -> None:
    managed = [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {"f:topics": {}}}}]
    bodies = []
    for i in (1, 2):
        task = dump(i, "kafka:9092", status={"state": "Running", "reason": "Running"})
        task["metadata"]["managedFields"] = managed
        body = kopf.Body(parsed(task))
        spec = body.spec  # a view, as Kopf's handlers hold them: it sees the new source
        operator._shrink(body)
        del task["metadata"]["managedFields"]
        assert dict(body) == task and spec == task["spec"]
        bodies.append(body)
    one, two = (b["status"]["reason"] for b in bodies)
    assert one == two and one is two  # one string for both tasks
    assert next(iter(bodies[0]["spec"]["target"])) is next(iter(bodies[1]["spec"]["target"]))


def test_index_entries_share_their_strings() -> None:
    env = [{"name": "FERRY_TASK", "value": json.dumps({"spec": {"topics": ["orders"]}})}, {"name": "X", "value": "1"}]
    deployment = {
        "metadata": {"name": "w", "namespace": "ns", "resourceVersion": "7", "managedFields": [{"manager": "k"}]},
        "spec": {"replicas": 1, "template": {"metadata": {}, "spec": {"containers": [{"name": "w", "env": env}]}}},
        "status": {"replicas": 1, "conditions": [{"type": "Available", "status": "True"}]},
    }
    pod = {"metadata": {"name": "w-1", "namespace": "ns"}, "spec": {"containers": [{"name": "w", "env": env}]}}
    entry = asyncio.run(operator._index_deployment("ns", "w", kopf.Body(parsed(deployment))))[("ns", "w")]
    assert entry == operator._slim_workload(deployment) and "managedFields" not in entry["metadata"]
    labels = {"ferry.dev/kind": "obsdumptask", "ferry.dev/task": "t"}
    (pod_entry,) = asyncio.run(operator._index_pod("ns", labels, kopf.Body(parsed(pod)))).values()
    assert pod_entry == operator._slim_workload(pod)
    mine = entry["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
    assert mine is pod_entry["spec"]["containers"][0]["env"][0]["value"]  # the pod's FERRY_TASK is the Deployment's


def test_the_allocator_is_trimmed_in_one_thread() -> None:
    trim = malloc.trimmer()
    if trim is None:  # a C library without malloc_trim (musl): nothing to start, and nothing runs
        assert malloc.start_trimming(3600) is None
        return
    assert trim(0) in (0, 1)
    assert malloc.start_trimming(0) is None
    thread = malloc.start_trimming(3600)
    assert thread is not None and thread.daemon and thread.is_alive()
    assert malloc.start_trimming(3600) is thread


# ---------------------------------------------------------------------------------------------------------
# Against the real API server: one task's reconciles, with indexes as the watches fill them.


@pytest.fixture
def api(kube: KubeEnv) -> Iterator[client.ApiClient]:
    config.load_kube_config(str(kube.kubeconfig))
    operator._Client.api = None
    api = operator._Client.get()
    yield api
    operator._Client.api = None


def indexes_from_api(api: client.ApiClient, namespace: str, task: dict[str, Any]) -> dict[str, Any]:
    deployments = client.AppsV1Api(api).list_namespaced_deployment(namespace).items
    plural = DUMP.definition.plural
    tasks = client.CustomObjectsApi(api).list_namespaced_custom_object("ferry.dev", "v1alpha1", namespace, plural)
    holders: dict[str, list[tuple[str, str]]] = {}
    for body in tasks["items"]:
        for token in tokens(DUMP, body, FIELDS):
            holders.setdefault(token, []).append(key_of(body))
    return {
        operator.DEPLOYMENTS_INDEX: {
            (namespace, d.metadata.name): [api.sanitize_for_serialization(d)] for d in deployments
        },
        operator.PODS_INDEX: {},
        f"ferry_{plural}_tasks": {
            key_of(b): [{"body": slim(b, FIELDS), "tokens": tokens(DUMP, b, FIELDS)}] for b in tasks["items"]
        },
        f"ferry_{plural}_tokens": holders,
    }


def new_dump(api: client.ApiClient, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[Any]]:
    """A new namespace with the Secret and an ObsDumpTask `dump` that names it; the Events reconciles post, kept."""
    namespace = f"scale-{uuid.uuid4().hex[:8]}"
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "obs"}, "stringData": {"accessKey": "a", "secretKey": "s"}}
    )
    body = dump(1, "kafka:9092")
    body["metadata"] = {"name": "dump", "namespace": namespace}
    custom.create_namespaced_custom_object("ferry.dev", "v1alpha1", namespace, "obsdumptasks", body)
    posted: list[Any] = []
    monkeypatch.setattr(operator, "_post_events", lambda body, events: posted.extend(events))
    return namespace, posted


def test_a_steady_state_reconcile_sends_nothing(api: client.ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace, posted = new_dump(api, monkeypatch)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    calls: list[str] = []
    real = api.call_api

    def counted(path: str, method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(f"{method} {path}")
        return real(path, method, *args, **kwargs)

    monkeypatch.setattr(api, "call_api", counted)

    def reconcile(trigger: str) -> kopf.Patch:
        task = custom.get_namespaced_custom_object("ferry.dev", "v1alpha1", namespace, "obsdumptasks", "dump")
        indexes = indexes_from_api(api, namespace, task)
        calls.clear()
        patch = kopf.Patch()
        operator.reconcile(DUMP, kopf.Body(task), patch, indexes, trigger)
        if patch.get("status"):  # as Kopf applies the patch
            custom.patch_namespaced_custom_object_status(
                "ferry.dev", "v1alpha1", namespace, "obsdumptasks", "dump", {"status": dict(patch["status"])}
            )
        if patch.get("metadata"):
            custom.patch_namespaced_custom_object(
                "ferry.dev", "v1alpha1", namespace, "obsdumptasks", "dump", {"metadata": dict(patch["metadata"])}
            )
        return patch

    created = reconcile("change")
    assert created["status"]["state"] == "Unassigned"
    # Created: the Secret read, the access objects read (absent) and applied, the Deployment applied; no list.
    assert not [c for c in calls if c.startswith("GET") and c.rstrip("/").endswith(("obsdumptasks", "pods"))]
    assert any(c.startswith("PATCH") and "deployments" in c for c in calls)
    time.sleep(1.1)  # a new second: a status patch carrying a timestamp would differ now
    steady = reconcile("timer")
    assert calls == [] and not steady.get("status") and not steady.get("metadata")
    fingerprint, _ = operator._QUIET[("ObsDumpTask", namespace, "dump")]
    assert isinstance(fingerprint, bytes) and len(fingerprint) == 16  # a digest of the versions, kept per task
    assert [e.reason for e in posted] == ["WaitingForWorker"]  # from the first reconcile only
    # The next periodic run stops at comparing versions, in the event loop; a change of the task ends that.
    task = custom.get_namespaced_custom_object("ferry.dev", "v1alpha1", namespace, "obsdumptasks", "dump")
    assert operator._unchanged(DUMP, task, indexes_from_api(api, namespace, task))
    task["metadata"]["resourceVersion"] += "0"
    assert not operator._unchanged(DUMP, task, indexes_from_api(api, namespace, task))
    # A change of the task reads its Secret and access objects again (a fix to one is seen at once), no list.
    changed = reconcile("change")
    assert sorted(c.rsplit("/", 2)[-2] for c in calls) == ["rolebindings", "roles", "secrets", "serviceaccounts"]
    assert all(c.startswith("GET") for c in calls) and not changed.get("status")
    core.delete_namespace(namespace)


def test_a_periodic_reconcile_of_an_outdated_version_of_a_task_patches_nothing(
    api: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep decides from the task index, which lags the API while Kopf has the task's events queued. Its
    patch carries the version it decided from: the API server refuses it for a newer version, so a status decided
    from an old one cannot overwrite a newer report, and the sweep tries again later."""
    namespace, posted = new_dump(api, monkeypatch)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    target = ("ferry.dev", "v1alpha1", namespace, "obsdumptasks", "dump")
    key = ("ObsDumpTask", namespace, "dump")
    created = custom.get_namespaced_custom_object(*target)
    # A new task (no status, no accepted spec): its annotations are patched first, then the status.
    custom.patch_namespaced_custom_object_status(*target, {"status": {"message": "newer"}})
    assert operator._periodic(DUMP, created, indexes_from_api(api, namespace, created)) is False
    now = custom.get_namespaced_custom_object(*target)
    assert now["status"] == {"message": "newer"} and "annotations" not in now["metadata"]
    assert posted == []  # the Events of a refused reconcile are not posted
    assert key not in operator.RECONCILED.at  # not counted as reconciled: due again soon

    # Decided from the version the API has, the same reconcile is applied, its Events posted once.
    assert operator._periodic(DUMP, now, indexes_from_api(api, namespace, now)) is True
    reconciled = custom.get_namespaced_custom_object(*target)
    assert reconciled["status"]["state"] == "Unassigned" and reconciled["metadata"]["annotations"]
    assert [e.reason for e in posted] == ["WaitingForWorker"]
    assert key in operator.RECONCILED.at

    # The index saw a version whose status the operator would set right; a newer one is in the API already.
    custom.patch_namespaced_custom_object_status(*target, {"status": {"message": "seen by the index"}})
    seen = custom.get_namespaced_custom_object(*target)
    custom.patch_namespaced_custom_object_status(*target, {"status": {"message": "newer"}})
    newer = custom.get_namespaced_custom_object(*target)
    assert operator._periodic(DUMP, seen, indexes_from_api(api, namespace, seen)) is False
    now = custom.get_namespaced_custom_object(*target)
    assert now["metadata"]["resourceVersion"] == newer["metadata"]["resourceVersion"]
    assert now["status"]["message"] == "newer"
    assert operator._periodic(DUMP, now, indexes_from_api(api, namespace, now)) is True
    assert custom.get_namespaced_custom_object(*target)["status"]["message"] == reconciled["status"]["message"]
    operator._forget(owner_of(newer))
    core.delete_namespace(namespace)


def test_a_refused_periodic_reconcile_still_says_what_it_did_to_the_workers(
    api: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused patch leaves the status as it was, but not the Deployment the reconcile applied before it: the
    next reconcile finds the restart (or rollout) made and would not say it, so the refused one posts that Event.
    Its other Events, decided from the old status, are the next reconcile's to decide again."""
    namespace, posted = new_dump(api, monkeypatch)
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
    target = ("ferry.dev", "v1alpha1", namespace, "obsdumptasks", "dump")
    first = custom.get_namespaced_custom_object(*target)
    assert operator._periodic(DUMP, first, indexes_from_api(api, namespace, first)) is True
    assert [e.reason for e in posted] == ["WaitingForWorker"]
    posted.clear()
    custom.patch_namespaced_custom_object(*target, {"metadata": {"annotations": {"ferry.dev/restart": "r1"}}})
    seen = custom.get_namespaced_custom_object(*target)  # what the index has; a worker reports meanwhile
    custom.patch_namespaced_custom_object_status(*target, {"status": {"message": "a newer report"}})

    assert operator._periodic(DUMP, seen, indexes_from_api(api, namespace, seen)) is False
    deployment = apps.read_namespaced_deployment("dump-obsdumptask", namespace).spec.template.metadata.annotations
    assert deployment["ferry.dev/restart"] == "r1"  # applied before the patch was refused
    assert custom.get_namespaced_custom_object(*target)["status"].get("restartedFor") is None
    assert [(e.reason, e.applied) for e in posted] == [("Restarted", True)]
    posted.clear()
    now = custom.get_namespaced_custom_object(*target)
    assert operator._periodic(DUMP, now, indexes_from_api(api, namespace, now)) is True
    assert custom.get_namespaced_custom_object(*target)["status"]["restartedFor"] == "r1"
    assert "Restarted" not in [e.reason for e in posted]  # said once, by the refused reconcile
    operator._forget(owner_of(now))
    client.CoreV1Api(api).delete_namespace(namespace)


def test_the_api_server_sends_only_ferrys_deployments_and_worker_pods(
    api: client.ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kopf's `labels=` filters act on its side, after it has parsed an event and given the object a memory: the
    operator asks the API server for its own Deployments and pods only, with the same labels as the indexes'."""
    monkeypatch.setattr(config, "load_incluster_config", lambda: (_ for _ in ()).throw(config.ConfigException()))
    monkeypatch.setattr(config, "load_kube_config", lambda: None)  # the fixture loaded the real one
    monkeypatch.setattr(operator, "SETTINGS", dataclasses.replace(operator.SETTINGS, metrics_port=-1))
    settings = kopf.OperatorSettings()
    operator.configure(settings=settings)
    operator._Client.api = api

    def selector(group: str, plural: str, kind: str) -> str:
        resource = kopf.Resource(group, "v1", plural, kind=kind, namespaced=True, verbs=["list", "watch"])
        return ",".join(settings.watching.label_selectors.collect(resource))

    # Every handler of those kinds asks for the labels the API server filters by, and the tasks are not filtered.
    handlers = [h for r in (kopf.get_default_registry()._indexing,) for h in r.get_all_handlers()]
    by_plural = {h.selector.any_name: h.labels for h in handlers if h.selector.any_name in ("deployments", "pods")}
    assert by_plural == {"deployments": operator.MANAGED, "pods": operator.WORKER_PODS}
    assert selector("apps", "deployments", "Deployment") == "app.kubernetes.io/managed-by=ferry-operator"
    assert selector("", "pods", "Pod") == "app.kubernetes.io/name=ferry-worker"
    assert selector("ferry.dev", "obsdumptasks", "ObsDumpTask") == ""

    # And the real API server, given it, sends the worker pod and not the other one.
    namespace = f"scale-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for_default_service_account(api, namespace)
    for name, labels in (("worker", operator.WORKER_PODS), ("other", {"app.kubernetes.io/name": "nginx"})):
        pod = {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
        core.create_namespaced_pod(namespace, pod)
    listed = core.list_namespaced_pod(namespace, label_selector=selector("", "pods", "Pod")).items
    assert [p.metadata.name for p in listed] == ["worker"]
    core.delete_namespace(namespace)


@pytest.mark.parametrize(
    "extra_fields",
    [[], [("metadata", "annotations", operator.RESTART_ANNOTATION)], ["status.state"], [("status", "workers")]],
)
def test_the_diff_base_is_kopfs_without_copying_what_it_drops(extra_fields: list[Any]) -> None:
    body = dump(7, "kafka:9092", status={"state": "Running", "workers": {"pod-a": {"phase": "Running"}}})
    body["metadata"].update(
        labels={"team": "data"},
        annotations={
            "ferry.dev/last-handled-configuration": '{"spec":{}}\n',
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            operator.RESTART_ANNOTATION: "2026-11-27T10:00:00Z",
            "note": "kept",
        },
        ownerReferences=[{"kind": "Application", "name": "app", "uid": "u", "apiVersion": "argoproj.io/v1alpha1"}],
        managedFields=[{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
    )
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="ferry.dev").build(body=kopf.Body(body), extra_fields=extra_fields)
    ours = operator.DiffBase(prefix="ferry.dev").build(body=kopf.Body(body), extra_fields=extra_fields)
    assert ours == kopfs
    assert "spec" in ours and "managedFields" not in json.dumps(ours)
    assert ("status" in ours) == any("status" in str(f) for f in extra_fields)
    assert body["metadata"]["managedFields"] and body["status"]["workers"]  # the body itself is left as it was


def test_the_secret_names_are_parsed_once_per_version_of_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = operator.secret_names

    def counted(plugin: KindPlugin, raw: dict[str, Any]) -> set[str]:
        parsed.append(raw["metadata"]["resourceVersion"])
        return real(plugin, raw)

    monkeypatch.setattr(operator, "secret_names", counted)
    body = dump(8, "kafka:9092")
    body["metadata"]["resourceVersion"] = "100"
    owner = operator.owner_of(body)
    assert operator._secret_names(DUMP, owner, body) == {"obs"}
    assert operator._secret_names(DUMP, owner, body) == {"obs"}
    assert parsed == ["100"]
    body["spec"]["target"]["credentialsSecretRef"] = {"name": "obs-2"}
    body["metadata"]["resourceVersion"] = "101"
    assert operator._secret_names(DUMP, owner, body) == {"obs-2"}
    assert parsed == ["100", "101"]
    operator._forget(owner)
    assert operator._secret_names(DUMP, owner, body) == {"obs-2"} and parsed == ["100", "101", "101"]


def test_an_operator_started_with_more_tasks_than_kopfs_worker_places_handles_them_all(
    kube: KubeEnv, api: client.ApiClient, tmp_path: Path
) -> None:
    """An operator started (or restarted) on a cluster that already has tasks lists them first. Kopf lets no
    handler run until every listed object is indexed, and with a `worker_limit` below the number of listed
    objects, the workers holding the places wait for the objects that cannot get one (nolar/kopf#1243): with 64
    places and 80 tasks of one kind, no task was ever handled."""
    namespace = f"scale-{uuid.uuid4().hex[:8]}"
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": namespace}})
    names = [f"dump-{i:03d}" for i in range(80)]
    for i, name in enumerate(names):  # their Secret does not exist: each is handled to Failed, no worker starts
        body = dump(0, f"kafka-{i}:9092")  # one Kafka instance each: under the dump tasks' limit per instance
        body["metadata"] = {"name": name, "namespace": namespace}
        custom.create_namespaced_custom_object("ferry.dev", "v1alpha1", namespace, "obsdumptasks", body)
    env = {
        **os.environ,
        "KUBECONFIG": str(kube.kubeconfig),
        "PYTHONPATH": str(Path(operator.__file__).resolve().parents[1]),
        "FERRY_OPERATOR_METRICS_PORT": "-1",
    }
    with (tmp_path / "operator.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ferry", "operator", "--namespace", namespace], env=env, stdout=log, stderr=log
        )
    try:

        def handled() -> list[str]:
            items = custom.list_namespaced_custom_object("ferry.dev", "v1alpha1", namespace, "obsdumptasks")["items"]
            return [t["metadata"]["name"] for t in items if (t.get("status") or {}).get("state")]

        deadline = time.monotonic() + 90
        while len(handled()) < len(names) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(1)
        assert sorted(handled()) == names, (tmp_path / "operator.log").read_text()[-3000:]
        items = custom.list_namespaced_custom_object("ferry.dev", "v1alpha1", namespace, "obsdumptasks")["items"]
        assert {(t["status"]["state"], t["status"].get("reason")) for t in items} == {("Failed", "SecretNotFound")}
    finally:
        stop_process(process)
        core.delete_namespace(namespace)


def test_kopfs_worker_places_are_never_fewer_than_the_objects_listed_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = iter([3, 0, 700, 0, 900, 12])  # tasks of each kind, worker Deployments, worker pods
    monkeypatch.setattr(operator, "_count", lambda *args, **kwargs: next(counts))
    monkeypatch.setattr(operator, "PLUGINS", dict(list(operator.PLUGINS.items())[:4]))
    assert operator._worker_limit() == 1800
    monkeypatch.setattr(operator, "_count", lambda *args, **kwargs: 5)
    assert operator._worker_limit() == 4 * operator.MAX_WORKERS  # a few objects: the places a burst needs

    def forbidden(*args: Any, **kwargs: Any) -> int:
        raise client.ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(operator, "_count", forbidden)
    assert operator._worker_limit() is None  # no limit rather than a possible deadlock
