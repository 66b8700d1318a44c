"""Kopf handlers of the one-shot kinds (ObsRestoreTask): read, call the pure `decide_restore`, apply the Job and the
status. Registered by ferry.operator, next to the worker-Deployment handlers of the other kinds, whose helpers
(server-side apply, worker access, Events, the state metric) they share."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ferry.api import GROUP, VERSION
from ferry.control.accepted import secret_names
from ferry.control.names import task_name_of
from ferry.control.reconcile import named, owner_of
from ferry.control.render import Owner, worker_name
from ferry.obsrestore.control import RestoreObserved, decide_restore
from ferry.obsrestore.model import RestorePhase
from ferry.operator import (
    SETTINGS,
    TASK_STATES,
    _ensure,
    _secret_keys,
    _server_side_apply,
    _worker_pods,
)
from ferry.registry import PLUGINS
from ferry.tasks import KindPlugin

log = logging.getLogger(__name__)
_locks: dict[str, threading.Lock] = {}


def _read_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = client.BatchV1Api().read_namespaced_job(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    result: dict[str, Any] = client.ApiClient().sanitize_for_serialization(found)
    return result


def _delete_job(owner: Owner) -> None:
    """The Job and, in the background, its pod (SIGTERM: the worker saves its resume point and stops)."""
    try:
        client.BatchV1Api().delete_namespaced_job(worker_name(owner), owner.namespace, propagation_policy="Background")
    except ApiException as err:
        if err.status != 404:
            raise
        return
    log.info("deleted Job %s/%s", owner.namespace, worker_name(owner))


def _observe(plugin: KindPlugin, body: dict[str, Any]) -> RestoreObserved:
    owner = owner_of(body)
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    serialize = client.ApiClient().sanitize_for_serialization
    return RestoreObserved(
        job=_read_job(owner.namespace, worker_name(owner)),
        pods=[serialize(p) for p in _worker_pods(owner)],
        secrets={name: _secret_keys(core, owner.namespace, name) for name in secret_names(plugin, body)},
        peers=custom.list_cluster_custom_object(GROUP, VERSION, plugin.definition.plural)["items"],
    )


def reconcile(plugin: KindPlugin, body: kopf.Body, patch: kopf.Patch) -> None:
    raw = dict(body)
    if raw["metadata"].get("deletionTimestamp"):
        return
    key = f"{raw['metadata'].get('namespace')}/{raw['metadata']['name']}/{plugin.definition.kind}"
    with _locks.setdefault(key, threading.Lock()):
        observed = _observe(plugin, raw)
        outcome = decide_restore(plugin, raw, observed, SETTINGS)
        owner = owner_of(raw)
        for obj in outcome.access:  # before the Job, so its pod starts with its identity
            _ensure(obj)
        if outcome.job is not None and observed.job is None:
            _server_side_apply(client.BatchV1Api().patch_namespaced_job, outcome.job)
            log.info("created Job %s/%s", owner.namespace, outcome.job["metadata"]["name"])
        if outcome.delete_job and observed.job is not None:
            _delete_job(owner)
        for event in outcome.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        patch.status.update(outcome.status)
        TASK_STATES.set(owner.kind, owner.namespace, owner.name, outcome.status["state"], task_name_of(raw) or "")
        for name, value in outcome.annotations.items():
            patch.metadata.annotations[name] = value


def finalize(plugin: KindPlugin, body: kopf.Body) -> None:
    """Deletion: Terminating, delete the Job so that its worker saves its resume point and stops, then let go."""
    raw = dict(body)
    owner = owner_of(raw)
    if (raw.get("status") or {}).get("state") != RestorePhase.TERMINATING.value:
        status = {
            "state": RestorePhase.TERMINATING.value,
            "reason": "Deleting",
            "message": "deletion requested: the worker is stopping",
        }
        client.CustomObjectsApi().patch_namespaced_custom_object_status(
            GROUP, VERSION, owner.namespace, plugin.definition.plural, owner.name, {"status": status}
        )
        kopf.event(body, type="Normal", reason="Terminating", message=named(status["message"], task_name_of(raw)))
    TASK_STATES.set(owner.kind, owner.namespace, owner.name, RestorePhase.TERMINATING.value, task_name_of(raw) or "")
    _delete_job(owner)
    deadline = time.monotonic() + SETTINGS.flush_timeout
    while _worker_pods(owner):  # until its pod is gone: a terminating worker is still producing what it read
        if time.monotonic() > deadline:
            log.warning(
                "%s/%s: the worker did not stop within %ss", owner.namespace, owner.name, SETTINGS.flush_timeout
            )
            break
        time.sleep(1)
    log.info("%s %s/%s: worker stopped, finalizer released", plugin.definition.kind, owner.namespace, owner.name)


def _register(plugin: KindPlugin) -> None:
    resource = (GROUP, VERSION, plugin.definition.plural)

    def on_change(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconcile(plugin, body, patch)

    def on_delete(body: kopf.Body, **_: Any) -> None:
        finalize(plugin, body)
        owner = owner_of(dict(body))
        TASK_STATES.forget(owner.kind, owner.namespace, owner.name)

    kopf.on.resume(*resource, id="reconcile")(on_change)
    kopf.on.create(*resource, id="reconcile")(on_change)
    kopf.on.update(*resource, id="reconcile")(on_change)
    kopf.timer(*resource, id="reconcile-timer", interval=SETTINGS.reconcile_interval, sharp=False)(on_change)
    kopf.on.delete(*resource, id="flush-worker", timeout=SETTINGS.flush_timeout + 60)(on_delete)


for _plugin in PLUGINS.values():
    if _plugin.one_shot:
        _register(_plugin)
