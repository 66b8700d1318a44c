"""Kopf handlers, registered in one place. They read, call the pure `decide`, and apply: nothing more."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf
import prometheus_client
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ferry.api import GROUP, VERSION
from ferry.api.base import Phase
from ferry.control.accepted import secret_names
from ferry.control.names import task_name_of
from ferry.control.operations import RESET_ANNOTATION, RESTART_ANNOTATION
from ferry.control.reconcile import Observed, Outcome, decide, named, owner_of
from ferry.control.render import SPEC_HASH_ANNOTATION, Owner, selector_labels, worker_name
from ferry.metrics import TaskStateMetrics
from ferry.registry import PLUGINS
from ferry.settings import OperatorSettings
from ferry.tasks import KindPlugin

log = logging.getLogger(__name__)
SETTINGS = OperatorSettings.from_env()
FINALIZER = "ferry.dev/flush-worker"
FIELD_MANAGER = "ferry-operator"  # the server-side apply field manager of every child Ferry renders
TASK_STATES = TaskStateMetrics()
OPERATION_ANNOTATIONS = (RESTART_ANNOTATION, RESET_ANNOTATION)
# One reconcile at a time per task, whichever handler (change, timer) triggers it.
_locks: dict[str, threading.Lock] = {}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as err:  # retrying cannot help: stop with the reason
            raise kopf.PermanentError(
                f"no Kubernetes configuration ({err}): run in a pod with a ServiceAccount, or set KUBECONFIG"
            ) from None
    # Keep Kopf's bookkeeping out of the status that users and Argo CD read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ferry.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="ferry.dev")
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    if SETTINGS.metrics_port >= 0:
        prometheus_client.start_http_server(SETTINGS.metrics_port, registry=TASK_STATES.registry)
        log.info("operator metrics on port %d", SETTINGS.metrics_port)


def _worker_pods(owner: Owner) -> list[Any]:
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(owner).items())
    return list(client.CoreV1Api().list_namespaced_pod(owner.namespace, label_selector=selector).items)


def _observe(plugin: KindPlugin, body: dict[str, Any]) -> Observed:
    owner = owner_of(body)
    apps, core, custom = client.AppsV1Api(), client.CoreV1Api(), client.CustomObjectsApi()
    deployment = _read_deployment(apps, owner.namespace, worker_name(owner))
    pods = _worker_pods(owner)
    # The Secrets of the current spec and of the accepted one (which runs while a change is held back).
    secrets = {name: _secret_keys(core, owner.namespace, name) for name in secret_names(plugin, body)}
    # Every task of the kind: for unique task names, and the kind's limits and conditions.
    peers = custom.list_cluster_custom_object(GROUP, VERSION, plugin.definition.plural)["items"]
    serialize = client.ApiClient().sanitize_for_serialization  # the API's camelCase, as decide() reads it
    return Observed(deployment=deployment, pods=[serialize(p) for p in pods], secrets=secrets, peers=peers)


def _read_deployment(apps: client.AppsV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = client.ApiClient().sanitize_for_serialization(
            apps.read_namespaced_deployment(name, namespace)
        )
        return result
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def _secret_keys(core: client.CoreV1Api, namespace: str, name: str) -> set[str] | None:
    """Which keys a Secret has; the values are read by the API client but never kept or logged."""
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return set((secret.data or {}).keys()) | set((secret.string_data or {}).keys())


def _server_side_apply(patch: Any, desired: dict[str, Any]) -> None:
    """Apply desired with server-side apply: fields Ferry set before and no longer renders are removed."""
    meta = desired["metadata"]
    patch(
        meta["name"],
        meta["namespace"],
        desired,
        field_manager=FIELD_MANAGER,
        force=True,  # Ferry owns its children: take back fields someone else changed
        _content_type="application/apply-patch+yaml",
    )


def _apply_deployment(desired: dict[str, Any], current: dict[str, Any] | None) -> None:
    meta = desired["metadata"]
    have = ((current or {}).get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if current is not None and have == meta["annotations"][SPEC_HASH_ANNOTATION]:
        return
    _server_side_apply(client.AppsV1Api().patch_namespaced_deployment, desired)
    verb = "created" if current is None else "updated"
    log.info("%s Deployment %s/%s (replicas %s)", verb, meta["namespace"], meta["name"], desired["spec"]["replicas"])


def _ensure(desired: dict[str, Any]) -> None:
    """Create a worker access object, or bring its rules and subjects back to the desired ones."""
    meta = desired["metadata"]
    kind, name, namespace = desired["kind"], meta["name"], meta["namespace"]
    core, rbac = client.CoreV1Api(), client.RbacAuthorizationV1Api()
    calls = {
        "ServiceAccount": (core.read_namespaced_service_account, core.patch_namespaced_service_account),
        "Role": (rbac.read_namespaced_role, rbac.patch_namespaced_role),
        "RoleBinding": (rbac.read_namespaced_role_binding, rbac.patch_namespaced_role_binding),
    }
    read, patch = calls[kind]
    try:
        current = client.ApiClient().sanitize_for_serialization(read(name, namespace))
    except ApiException as err:
        if err.status != 404:
            raise
        current = None
    fields = [f for f in ("rules", "subjects", "roleRef") if f in desired and (current or {}).get(f) != desired[f]]
    if current is not None and not fields:
        return
    _server_side_apply(patch, desired)
    if current is None:
        log.info("created %s %s/%s", kind, namespace, name)
    else:
        log.info("updated %s %s/%s (%s)", kind, namespace, name, ", ".join(fields))


def _post_events(body: kopf.Body, outcome: Outcome) -> None:
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def reconcile(plugin: KindPlugin, body: kopf.Body, patch: kopf.Patch) -> None:
    """Read what is there, decide, apply children, and leave the status and annotations in `patch`."""
    raw = dict(body)
    if raw["metadata"].get("deletionTimestamp"):
        return
    key = f"{raw['metadata'].get('namespace')}/{raw['metadata']['name']}/{plugin.definition.kind}"
    with _locks.setdefault(key, threading.Lock()):
        observed = _observe(plugin, raw)
        outcome = decide(plugin, raw, observed, SETTINGS)
        for obj in outcome.access:  # before the Deployment, so its pods start with their identity
            _ensure(obj)
        if outcome.deployment is not None:
            _apply_deployment(outcome.deployment, observed.deployment)
        _post_events(body, outcome)
        patch.status.update(outcome.status)
        owner = owner_of(raw)
        TASK_STATES.set(owner.kind, owner.namespace, owner.name, outcome.status["state"], task_name_of(raw) or "")
        for name, value in outcome.annotations.items():
            patch.metadata.annotations[name] = value


def finalize(plugin: KindPlugin, body: kopf.Body) -> None:
    """Deletion: Terminating, scale the workers to zero so they flush and commit, then let go."""
    raw = dict(body)
    owner = owner_of(raw)
    custom, apps = client.CustomObjectsApi(), client.AppsV1Api()
    if (raw.get("status") or {}).get("state") != Phase.TERMINATING.value:
        status = {
            "state": Phase.TERMINATING.value,
            "reason": "Deleting",
            "message": "deletion requested: workers are flushing what they read",
        }
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, owner.namespace, plugin.definition.plural, owner.name, {"status": status}
        )
        message = named(status["message"], task_name_of(raw))
        kopf.event(body, type="Normal", reason="Terminating", message=message)
    TASK_STATES.set(owner.kind, owner.namespace, owner.name, Phase.TERMINATING.value, task_name_of(raw) or "")
    name = worker_name(owner)
    deployment = _read_deployment(apps, owner.namespace, name)
    if deployment is None:
        return
    if deployment["spec"].get("replicas"):
        apps.patch_namespaced_deployment(name, owner.namespace, {"spec": {"replicas": 0}})
    deadline = time.monotonic() + SETTINGS.flush_timeout
    # Until every pod is gone, not just until status.replicas is 0: terminating pods are still flushing.
    while _worker_pods(owner):
        if time.monotonic() > deadline:
            log.warning("%s/%s: workers did not stop within %ss", owner.namespace, owner.name, SETTINGS.flush_timeout)
            break
        time.sleep(1)
    # The ownerReference would collect it too; deleting now frees the name for a re-created task.
    try:
        apps.delete_namespaced_deployment(name, owner.namespace)
    except ApiException as err:
        if err.status != 404:
            raise
    log.info("%s %s/%s: workers stopped, finalizer released", plugin.definition.kind, owner.namespace, owner.name)


def _noticed(**_: Any) -> None:
    """The reconcile handler acts on the change (see _register)."""


def _register(plugin: KindPlugin) -> None:
    resource = (GROUP, VERSION, plugin.definition.plural)

    def on_change(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconcile(plugin, body, patch)

    def on_timer(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        reconcile(plugin, body, patch)

    def on_delete(body: kopf.Body, **_: Any) -> None:
        finalize(plugin, body)
        owner = owner_of(dict(body))
        TASK_STATES.forget(owner.kind, owner.namespace, owner.name)

    kopf.on.resume(*resource, id="reconcile")(on_change)
    kopf.on.create(*resource, id="reconcile")(on_change)
    kopf.on.update(*resource, id="reconcile")(on_change)
    # Kopf leaves the annotations of its own storage prefix (ferry.dev/) out of the changes it compares, so that
    # `kubectl annotate` of these would wait for the timer: a handler watching each field puts it back in, and a
    # change of it then wakes the reconcile handler above (this one has nothing to do itself).
    for name in OPERATION_ANNOTATIONS:
        kopf.on.update(*resource, id=f"noticed-{name.rsplit('/', 1)[-1]}", field=("metadata", "annotations", name))(
            _noticed
        )
    kopf.timer(*resource, id="reconcile-timer", interval=SETTINGS.reconcile_interval, sharp=False)(on_timer)
    kopf.on.delete(*resource, id="flush-worker", timeout=SETTINGS.flush_timeout + 60)(on_delete)


for _plugin in PLUGINS.values():
    if not _plugin.one_shot:  # those run as Jobs: ferry.obsrestore.handlers
        _register(_plugin)

import ferry.obsrestore.handlers  # noqa: E402  (registers the one-shot kinds' handlers: their Jobs)
import ferry.webhook  # noqa: E402,F401  (registers the admission webhook when FERRY_OPERATOR_WEBHOOK_PORT is set)
