"""Kopf handlers, registered in one place. They read, call the pure `decide`, and apply: nothing more."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import Container, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
import prometheus_client
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from ferry import malloc
from ferry.api import GROUP, VERSION
from ferry.api.base import SOURCE_CLUSTER_ID, TARGET_CLUSTER_ID, Phase
from ferry.control.accepted import running_body, secret_names
from ferry.control.names import task_name_of
from ferry.control.operations import RESET_ANNOTATION, RESTART_ANNOTATION
from ferry.control.peers import Key, component, key_of, slim, status_changes, tokens
from ferry.control.preflight import PASSED
from ferry.control.reconcile import Observed, decide, named, owner_of
from ferry.control.render import SPEC_HASH_ANNOTATION, Owner, label_selector, selector, selector_labels, worker_name
from ferry.control.sweep import Schedule
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
# One reconcile at a time per task (kind, namespace, name), whichever handler or the sweep triggers it.
# Re-entrant: the sweep holds it while it reads the task from the index, then reconciles under it.
_locks: dict[tuple[str, str, str], threading.RLock] = {}


def _task_lock(task: tuple[str, str, str]) -> threading.RLock:
    """The task's reconcile lock, made on first use (the sweep drops those of tasks gone: _forget_locks)."""
    return _locks.setdefault(task, threading.RLock())


# Sync handlers run in Kopf's thread pool: enough threads that API round trips of some tasks do not hold up the
# others (the steady state makes none).
MAX_WORKERS = 16
CLUSTER_ID_FIELDS = (SOURCE_CLUSTER_ID, TARGET_CLUSTER_ID)
# Kopf indexes, fed by watch events (https://kopf.readthedocs.io/en/stable/indexing/): the worker Deployments
# and pods by task, and per kind every task (slim) and the tasks by token (ferry.control.peers).
DEPLOYMENTS_INDEX = "ferry_deployments"
PODS_INDEX = "ferry_worker_pods"
MANAGED = {"app.kubernetes.io/managed-by": "ferry-operator"}
WORKER_PODS = {"app.kubernetes.io/name": "ferry-worker"}
DEPLOYMENT_RESOURCE: tuple[str, str, str] = ("apps", "v1", "deployments")
POD_RESOURCE: tuple[str, str] = ("v1", "pods")
# What the operator watches of them: the same labels as the indexes' filters, sent to the API server (configure).
WATCH_SELECTORS: dict[tuple[str, str, str] | tuple[str, str], dict[str, str]] = {
    DEPLOYMENT_RESOURCE: MANAGED,
    POD_RESOURCE: WORKER_PODS,
}
# False with `ferry operator --namespace`: the indexes see only the served namespaces, and the cross-task checks
# need every task of a kind, so they read a cluster-wide list (at most once per reconcile interval).
CLUSTERWIDE = True
NAMESPACES: list[str] = []  # the served namespaces with `ferry operator --namespace` (else every namespace)
# The Deployment the operator's own apply returned stands in for the watch's until the watch brings that version
# (then only the watch counts, so a Deployment deleted behind the operator's back is applied again), or at most
# this long.
APPLIED_TRUST = 300.0
_TIMER_POOL = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="ferry-timer")


class _Client:
    """One API client for the process, its connection pool sized for the handler threads."""

    api: client.ApiClient | None = None

    @classmethod
    def get(cls) -> client.ApiClient:
        if cls.api is None:
            configuration = client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = 2 * MAX_WORKERS + 4  # Kopf's handler threads and the timers'
            cls.api = client.ApiClient(configuration)
        return cls.api


def _apps() -> client.AppsV1Api:
    return client.AppsV1Api(_Client.get())


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(_Client.get())


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(_Client.get())


def _rbac() -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(_Client.get())


def _serialize(obj: Any) -> Any:
    return _Client.get().sanitize_for_serialization(obj)


class _Reconciled:
    """When each task was last reconciled, for ferry_operator_oldest_reconcile_age_seconds."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str, str], float] = {}

    def oldest_age(self) -> float:
        now = time.monotonic()
        return max((now - t for t in list(self.at.values())), default=0.0)


RECONCILED = _Reconciled()
_oldest = prometheus_client.Gauge(
    "ferry_operator_oldest_reconcile_age_seconds",
    "Seconds since the task reconciled longest ago was last reconciled (at most about the reconcile interval).",
    registry=TASK_STATES.registry,
)
_oldest.set_function(RECONCILED.oldest_age)
_reconciles = prometheus_client.Counter(
    "ferry_operator_reconciles",
    "Reconciles of worker-Deployment tasks, by what woke them (create, change, timer: the periodic sweep) and"
    " whether they sent anything to the API (yes, no; for the sweep also unchanged: versions compared only, and"
    " stale: the task had changed since the index saw it, nothing patched; counted besides its yes or no).",
    ["trigger", "wrote"],
    registry=TASK_STATES.registry,
)


class _Remembered:
    """What the operator applied or read lately, so that a reconcile finding nothing changed sends nothing.

    Entries are checked against the API again after `recheck` seconds (someone may have edited or deleted the
    object behind the operator's back), or at once when the reconcile is woken by a change of the task.
    """

    def __init__(self) -> None:
        self.entries: dict[Any, tuple[Any, float]] = {}
        self.lock = threading.Lock()

    def fresh(self, key: Any, value: Any, recheck: float) -> bool:
        with self.lock:
            entry = self.entries.get(key)
        return entry is not None and entry[0] == value and time.monotonic() - entry[1] < recheck

    def get(self, key: Any, recheck: float) -> tuple[bool, Any]:
        with self.lock:
            entry = self.entries.get(key)
        if entry is None or time.monotonic() - entry[1] >= recheck:
            return False, None
        return True, entry[0]

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.entries[key] = (value, time.monotonic())

    def drop(self, key: Any) -> None:
        with self.lock:
            self.entries.pop(key, None)

    def forget(self, match: Any) -> None:
        with self.lock:
            for key in [k for k in self.entries if match(k)]:
                del self.entries[key]


ACCESS = _Remembered()  # (kind, namespace, name) -> digest of the desired object applied
SECRETS = _Remembered()  # (namespace, name) -> key names (never values), or None when it does not exist
DEPLOYMENTS = _Remembered()  # (namespace, name) -> the Deployment as the operator's own apply returned it
PEER_LIST: dict[str, tuple[list[dict[str, Any]], float]] = {}  # plural -> cluster-wide list (namespaced mode)


def _recheck() -> float:
    """How long what the operator remembers of access objects and Secrets is trusted without reading them."""
    return SETTINGS.recheck_interval or 20 * SETTINGS.reconcile_interval


def _worker_limit() -> int | None:
    """Kopf's worker places per watched kind: 64, or more when the operator starts with more objects of one kind.

    Objects processed at once (each a few requests): a thousand tasks created together would otherwise send a
    thousand finalizer patches at once, and while they wait their events are taken together, so a burst costs
    fewer reconciles (1,000 tasks at once: 72 s to all Deployments and 13 requests a task with 64 places, 114 s
    and 21 without a limit). But Kopf runs no handler until every object its first listing found is indexed, and
    with fewer places than listed objects of one kind the workers holding the places wait forever for those
    without one (nolar/kopf#1243): an operator restarted with more tasks, worker Deployments or worker pods than
    places handled nothing. So the places are never fewer than twice the largest of those counts (objects
    created between this count and Kopf's own listing need a place too); None (no limit) if they cannot be
    counted."""
    try:
        listed = max(
            [
                _count(_custom().list_cluster_custom_object, GROUP, VERSION, p.definition.plural)
                for p in PLUGINS.values()
            ]
            + [_count_served(_apps().list_namespaced_deployment, _apps().list_deployment_for_all_namespaces, MANAGED)]
            + [_count_served(_core().list_namespaced_pod, _core().list_pod_for_all_namespaces, WORKER_PODS)]
        )
    except ApiException as err:  # e.g. no cluster-wide list allowed: no limit rather than a possible deadlock
        log.warning("could not count the objects to watch (%s): no limit on Kopf's workers", err.reason)
        return None
    return max(4 * MAX_WORKERS, 2 * listed)


def _count(list_call: Any, *args: Any, **kwargs: Any) -> int:
    """How many objects a list call returns, read a page of 500 at a time and not kept."""
    found, token = 0, None
    while True:
        response = list_call(*args, limit=500, _continue=token, _preload_content=False, **kwargs)
        page = json.loads(response.data)
        found += len(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return found


def _count_served(namespaced: Any, everywhere: Any, labels: Mapping[str, str]) -> int:
    """Ferry's objects with these labels in the served namespaces (all, or those of `--namespace`)."""
    if not NAMESPACES:
        return _count(everywhere, label_selector=selector(labels))
    return sum(_count(namespaced, namespace, label_selector=selector(labels)) for namespace in NAMESPACES)


class DiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf's diff base (what it compares to detect a change of the spec), built without first deep-copying
    what it throws away.

    On every watch event of a task Kopf deep-copies the whole body, status and managedFields included, and then
    keeps only the spec, the labels, the annotations and the fields its handlers watch: at 10,000 tasks that
    copy was a sixth of the operator's CPU. Given the body without what it drops, it builds the same essence,
    so the diff bases stored on the tasks compare as before."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        raw, fields = dict(body), list(extra_fields or ())
        watched = {(f.split(".") if isinstance(f, str) else list(f))[0] for f in fields if f}
        trimmed = {k: v for k, v in raw.items() if k != "status" or "status" in watched}
        meta = raw.get("metadata")
        if isinstance(meta, dict) and "managedFields" in meta:
            trimmed["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
        return super().build(body=kopf.Body(cast(kopf.RawBody, trimmed)), extra_fields=fields)


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
    _Client.api = None  # built on first use, from the configuration loaded above
    # Keep Kopf's bookkeeping out of the status that users and Argo CD read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="ferry.dev")
    settings.persistence.diffbase_storage = DiffBase(prefix="ferry.dev")
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.execution.max_workers = MAX_WORKERS
    settings.queueing.worker_limit = _worker_limit()
    # A worker exits after this long idle (Kopf's default is 5 s; it stays at least until Kopf sees the version
    # its own patch made, consistency_timeout): fewer idle workers hold places through a burst.
    settings.queueing.idle_timeout = 0.5
    # The API server sends only Ferry's own Deployments and worker pods. The indexes' `labels=` filters are
    # Kopf's, applied after it has parsed each event and given the object a memory: without these the operator
    # watched, parsed and remembered every Deployment and pod of the cluster.
    for resource, labels in WATCH_SELECTORS.items():
        settings.watching.label_selectors[resource] = selector(labels)
    if SETTINGS.metrics_port >= 0:
        prometheus_client.start_http_server(SETTINGS.metrics_port, registry=TASK_STATES.registry)
        log.info("operator metrics on port %d", SETTINGS.metrics_port)
    malloc.start_trimming()


def _worker_pods(owner: Owner) -> list[Any]:
    return list(_core().list_namespaced_pod(owner.namespace, label_selector=label_selector(owner)).items)


_WORKLOAD_META = ("name", "namespace", "uid", "resourceVersion", "generation", "deletionTimestamp", "annotations")


def _pod_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Of a pod spec, what decide() reads: each container's name and FERRY_TASK (the spec it runs)."""
    containers = [
        {"name": c.get("name"), "env": [e for e in c.get("env") or [] if e.get("name") == "FERRY_TASK"]}
        for c in spec.get("containers") or []
    ]
    return {"containers": containers}


def _slim_workload(body: Mapping[str, Any]) -> dict[str, Any]:
    """What decide() reads of a worker Deployment or pod (kept for every task, so only that): identity, version,
    annotations, replicas, the pod template's annotations and FERRY_TASK, and the status."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    slim: dict[str, Any] = {
        "metadata": {k: meta[k] for k in _WORKLOAD_META if k in meta},
        "status": body.get("status") or {},
    }
    if "template" in spec:  # a Deployment
        template = spec.get("template") or {}
        slim["spec"] = {
            "replicas": spec.get("replicas"),
            "template": {
                "metadata": {"annotations": (template.get("metadata") or {}).get("annotations") or {}},
                "spec": _pod_spec(template.get("spec") or {}),
            },
        }
    else:
        slim["spec"] = _pod_spec(spec)
    return slim


def _compact(obj: Any) -> Any:
    """An equal copy of parsed JSON whose dict keys and strings are shared with every other copy (sys.intern).

    Each watch event parses into its own strings, so a thousand tasks' entries repeat the same keys ("metadata",
    "lastTransitionTime", ...) and values (names, reasons, a Deployment's FERRY_TASK in each of its pods) a
    thousand times: shared, an index entry takes about half the memory. An interned string is freed as any
    other when nothing holds it any more."""
    if isinstance(obj, dict):
        return {sys.intern(k) if type(k) is str else k: _compact(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_compact(v) for v in obj]
    if type(obj) is str:
        return sys.intern(obj)
    return obj


def _shrink(body: kopf.Body) -> dict[str, Any]:
    """Make a watched task's body small, and return it: the task index keeps it for the periodic sweep, and the
    handlers of the same event get it too. As parsed from the watch it takes ~20 kB, half of it
    metadata.managedFields, which neither Kopf nor Ferry reads; without them and compacted (_compact), ~5 kB."""
    raw = dict(body)
    meta = {k: v for k, v in (raw.get("metadata") or {}).items() if k != "managedFields"}
    shrunk: dict[str, Any] = _compact({**raw, "metadata": meta})
    body._replace_with(cast(kopf.RawBody, shrunk))
    return shrunk


async def _index_deployment(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    key, slim_body = (namespace or "default", name), _compact(_slim_workload(body))
    applied = DEPLOYMENTS.get(key, APPLIED_TRUST)[1]
    if applied is not None and _newest(slim_body, applied) is slim_body:
        DEPLOYMENTS.drop(key)  # the watch has caught up: a deletion from now on is seen as one
    return {key: slim_body}


async def _index_pod(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Any, dict[str, Any]]:
    key = (namespace or "default", labels.get("ferry.dev/kind"), labels.get("ferry.dev/task"))
    return {key: _compact(_slim_workload(body))}


def _newest(*bodies: dict[str, Any] | None) -> dict[str, Any] | None:
    """The most recent of these versions of one object (by resourceVersion, which etcd gives in order)."""

    def version(body: dict[str, Any]) -> int:
        try:
            return int((body.get("metadata") or {}).get("resourceVersion") or 0)
        except ValueError:
            return 0

    found = [b for b in bodies if b is not None]
    return max(found, key=version) if found else None


def _component(plugin: KindPlugin, raw: dict[str, Any], indexes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The slim bodies of the tasks of the task's component (ferry.control.peers), in a stable order."""
    plural = plugin.definition.plural
    bodies, holders = indexes[f"ferry_{plural}_tasks"], indexes[f"ferry_{plural}_tokens"]

    def tokens_of(key: Key) -> Iterable[str]:
        entry: dict[str, Any] = next(iter(bodies.get(key, ())), {})
        found: Iterable[str] = entry.get("tokens", ())
        return found

    # Its own tokens, with the cluster ids its live workers report (decide() may learn them now).
    reports = ((raw.get("status") or {}).get("workers") or {}).values()
    learned = {f"key:{r[f]}" for r in reports if isinstance(r, dict) for f in CLUSTER_ID_FIELDS if r.get(f)}
    mine = tokens(plugin, raw, CLUSTER_ID_FIELDS) | learned
    found = component(mine, lambda token: holders.get(token, ()), tokens_of)
    return [next(iter(bodies[key]))["body"] for key in sorted(found) if key in bodies]


def _deployment(indexes: Mapping[str, Any], namespace: str, name: str) -> dict[str, Any] | None:
    """The worker Deployment as the watch has it, or as the operator's apply returned it if the watch lags."""
    indexed = next(iter(indexes[DEPLOYMENTS_INDEX].get((namespace, name), ())), None)
    _, applied = DEPLOYMENTS.get((namespace, name), APPLIED_TRUST)
    if applied is None:
        return indexed
    newest = _newest(indexed, applied)
    if newest is indexed:  # the watch has caught up
        DEPLOYMENTS.drop((namespace, name))
    return newest


def _peers(plugin: KindPlugin, raw: dict[str, Any], indexes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tasks of the kind that the cross-task checks compare this one with."""
    if not CLUSTERWIDE:
        return _listed_peers(plugin, raw, indexes[f"ferry_{plugin.definition.plural}_tasks"])
    return _component(plugin, raw, indexes)


def _listed_peers(plugin: KindPlugin, raw: dict[str, Any], bodies: Mapping[Key, Any]) -> list[dict[str, Any]]:
    """Namespaced mode: every task of the kind, from a list shared by the reconciles of one interval, with
    the served namespaces' tasks as the watch has them."""
    plural = plugin.definition.plural
    listed, at = PEER_LIST.get(plural, ([], 0.0))
    if time.monotonic() - at >= SETTINGS.reconcile_interval:
        items = _custom().list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        listed = [slim(p, CLUSTER_ID_FIELDS) for p in items]
        PEER_LIST[plural] = (listed, time.monotonic())
    watched = {key: next(iter(store))["body"] for key, store in bodies.items()}
    return [p for p in listed if key_of(p) not in watched] + list(watched.values())


def _secrets(plugin: KindPlugin, raw: dict[str, Any], reread: bool) -> dict[str, set[str] | None]:
    """The key names of the Secrets the task names: read when the task changed, when one was missing or lacked
    a key last time (so a fix is seen at the next reconcile), or after the recheck interval."""
    namespace = owner_of(raw).namespace
    found: dict[str, set[str] | None] = {}
    for name in secret_names(plugin, raw):
        known, keys = SECRETS.get((namespace, name), _recheck())
        if reread or not known or keys is None:
            keys = _secret_keys(_core(), namespace, name)
            SECRETS.put((namespace, name), keys)
        found[name] = keys
    return found


def _observe(
    plugin: KindPlugin, body: dict[str, Any], indexes: Mapping[str, Any] | None = None, changed: bool = True
) -> Observed:
    """What decide() needs, from the watch-fed indexes (no API call), or read from the API without them."""
    owner = owner_of(body)
    name = worker_name(owner)
    if indexes is None:  # not from a Kopf handler (tests, tools): read it all
        peers = _custom().list_cluster_custom_object(GROUP, VERSION, plugin.definition.plural)["items"]
        return Observed(
            deployment=_read_deployment(_apps(), owner.namespace, name),
            pods=[_serialize(p) for p in _worker_pods(owner)],
            secrets={n: _secret_keys(_core(), owner.namespace, n) for n in secret_names(plugin, body)},
            peers=peers,
        )
    deployment = _deployment(indexes, owner.namespace, name)
    labels = selector_labels(owner)
    pods = list(indexes[PODS_INDEX].get((owner.namespace, labels["ferry.dev/kind"], labels["ferry.dev/task"]), ()))
    return Observed(
        deployment=deployment,
        pods=pods,
        secrets=_secrets(plugin, body, changed),
        peers=_peers(plugin, body, indexes),
    )


def _read_deployment(apps: client.AppsV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = _serialize(apps.read_namespaced_deployment(name, namespace))
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


def _server_side_apply(patch: Any, desired: dict[str, Any]) -> dict[str, Any]:
    """Apply desired with server-side apply: fields Ferry set before and no longer renders are removed.

    Returns the object as the API server sent it, as JSON: the client's model classes (and turning them back
    into JSON) cost more CPU than the request itself when a thousand tasks are created at once."""
    meta = desired["metadata"]
    response = patch(
        meta["name"],
        meta["namespace"],
        desired,
        field_manager=FIELD_MANAGER,
        force=True,  # Ferry owns its children: take back fields someone else changed
        _content_type="application/apply-patch+yaml",
        _preload_content=False,
    )
    applied: dict[str, Any] = json.loads(response.data)
    return applied


def _apply_deployment(desired: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Apply the worker Deployment unless the one there has the desired spec hash and replicas (a `kubectl scale
    deployment` behind the operator's back is undone; the task's own scale is `kubectl scale <kind>`); True when
    it was sent."""
    meta = desired["metadata"]
    wanted = (meta["annotations"][SPEC_HASH_ANNOTATION], desired["spec"]["replicas"])
    if current is not None:
        have = (current["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if (have, current["spec"].get("replicas")) == wanted:
            return False
    applied = _server_side_apply(_apps().patch_namespaced_deployment, desired)
    # Until the watch brings it, the next reconcile compares with what the API returned.
    DEPLOYMENTS.put((meta["namespace"], meta["name"]), _slim_workload(applied))
    verb = "created" if current is None else "updated"
    log.info("%s Deployment %s/%s (replicas %s)", verb, meta["namespace"], meta["name"], desired["spec"]["replicas"])
    return True


def _digest(desired: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()


def _ensure(desired: dict[str, Any], remembered: bool = False, new: bool = False) -> bool:
    """Create a worker access object, or bring its rules and subjects back to the desired ones; True when a
    request was sent. With `remembered`, one applied lately as desired now is not read again before the
    recheck interval; for a `new` task it is applied without reading it first (server-side apply is the same
    request whether it exists or not)."""
    meta = desired["metadata"]
    kind, name, namespace = desired["kind"], meta["name"], meta["namespace"]
    digest = _digest(desired)
    if remembered and ACCESS.fresh((kind, namespace, name), digest, _recheck()):
        return False
    if new:
        patch = {"ServiceAccount": _core().patch_namespaced_service_account}.get(kind)
        rbac = _rbac()
        patch = patch or {"Role": rbac.patch_namespaced_role, "RoleBinding": rbac.patch_namespaced_role_binding}[kind]
        _server_side_apply(patch, desired)
        log.info("created %s %s/%s", kind, namespace, name)
        ACCESS.put((kind, namespace, name), digest)
        return True
    core, rbac = _core(), _rbac()
    calls = {
        "ServiceAccount": (core.read_namespaced_service_account, core.patch_namespaced_service_account),
        "Role": (rbac.read_namespaced_role, rbac.patch_namespaced_role),
        "RoleBinding": (rbac.read_namespaced_role_binding, rbac.patch_namespaced_role_binding),
    }
    read, patch = calls[kind]
    try:
        current = _serialize(read(name, namespace))
    except ApiException as err:
        if err.status != 404:
            raise
        current = None
    fields = [f for f in ("rules", "subjects", "roleRef") if f in desired and (current or {}).get(f) != desired[f]]
    if current is None or fields:
        _server_side_apply(patch, desired)
        if current is None:
            log.info("created %s %s/%s", kind, namespace, name)
        else:
            log.info("updated %s %s/%s (%s)", kind, namespace, name, ", ".join(fields))
    ACCESS.put((kind, namespace, name), digest)
    return True


def _create_check_job(job: dict[str, Any]) -> bool:
    """A check of a spec change (ferry.control.preflight): one Job per attempt, never changed once created."""
    meta = job["metadata"]
    try:
        client.BatchV1Api(_Client.get()).create_namespaced_job(meta["namespace"], job)
    except ApiException as err:
        if err.status != 409:  # 409: this attempt's Job exists already
            raise
        return False
    log.info("created check Job %s/%s", meta["namespace"], meta["name"])
    return True


def _post_events(body: kopf.Body, events: Iterable[Any]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def reconcile(
    plugin: KindPlugin,
    body: kopf.Body,
    patch: kopf.Patch,
    indexes: Mapping[str, Any] | None = None,
    trigger: str = "change",
    events: list[Any] | None = None,
) -> None:
    """Read what is there, decide, apply children, and leave the status and annotations in `patch`.

    With the Kopf indexes (`indexes`), what is there comes from the watches: a reconcile that finds nothing
    changed sends nothing, not even a status patch. The Events are posted, or left in `events` when given (the
    sweep posts them once its patch is applied)."""
    raw = dict(body)
    if raw["metadata"].get("deletionTimestamp"):
        return
    owner = owner_of(raw)
    task = (owner.kind, owner.namespace, owner.name)
    with _task_lock(task):
        observed = _observe(plugin, raw, indexes, changed=trigger != "timer")
        outcome = decide(plugin, raw, observed, SETTINGS)
        wrote = False
        for obj in outcome.access:  # before the Deployment, so its pods start with their identity
            remembered = indexes is not None and trigger == "timer"
            wrote = _ensure(obj, remembered, new=trigger == "create" and observed.deployment is None) or wrote
        if outcome.deployment is not None:
            wrote = _apply_deployment(outcome.deployment, observed.deployment) or wrote
        for job in outcome.jobs:
            wrote = _create_check_job(job) or wrote
        if events is None:
            _post_events(body, outcome.events)
        else:
            events.extend(outcome.events)
        changes = status_changes(raw.get("status") or {}, outcome.status)
        patch.status.update(changes)
        # The name the workers run with (a rename held back keeps the old one), as the Events and worker metrics say.
        running_name = task_name_of(running_body(plugin, raw)) or ""
        TASK_STATES.set(owner.kind, owner.namespace, owner.name, outcome.status["state"], running_name)
        annotations = raw["metadata"].get("annotations") or {}
        for name, value in outcome.annotations.items():
            if annotations.get(name) != value or (value is None and name in annotations):
                patch.metadata.annotations[name] = value
        RECONCILED.at[task] = time.monotonic()
        sent = wrote or bool(changes) or bool(outcome.events) or bool(patch)
        _reconciles.labels(trigger, "yes" if sent else "no").inc()
        if sent or indexes is None:
            _QUIET.pop(task, None)
        else:  # quiet since when (its recheck interval runs from the first of a row of identical ones)
            fingerprint, previous, now = _fingerprint(plugin, raw, indexes), _QUIET.get(task), time.monotonic()
            if previous is None or previous[0] != fingerprint or now - previous[1] >= _recheck():
                _QUIET[task] = (fingerprint, now)


# Per task: what its last reconcile that sent nothing saw, and when (see _unchanged).
_QUIET: dict[tuple[str, str, str], tuple[Any, float]] = {}


def _version(body: Mapping[str, Any] | None) -> str | None:
    return None if body is None else (body.get("metadata") or {}).get("resourceVersion")


def _fingerprint(plugin: KindPlugin, raw: dict[str, Any], indexes: Mapping[str, Any]) -> Any:
    """The versions of everything decide() reads for the task (None when something must be read again)."""
    owner = owner_of(raw)
    name = worker_name(owner)
    secrets = []
    for secret in sorted(_secret_names(plugin, owner, raw)):
        known, keys = SECRETS.get((owner.namespace, secret), _recheck())
        if not known or keys is None:
            return None
        secrets.append((secret, tuple(sorted(keys))))
    deployment = _deployment(indexes, owner.namespace, name)
    labels = selector_labels(owner)
    pods = indexes[PODS_INDEX].get((owner.namespace, labels["ferry.dev/kind"], labels["ferry.dev/task"]), ())
    peers = _component(plugin, raw, indexes) if CLUSTERWIDE else None
    if peers is None:
        return None
    versions = (
        _version(raw),
        _version(deployment),
        tuple(sorted(_version(p) or "" for p in pods)),
        tuple(secrets),
        tuple((key_of(p), _version(p)) for p in peers),
    )
    # Kept per task in _QUIET: a digest (49 bytes) instead of the tuple (~2.5 kB with 15 connected tasks).
    return hashlib.blake2b(repr(versions).encode(), digest_size=16).digest()


# Per task: the Secrets its version names (secret_names parses the spec; the timer asks on every tick).
_SECRET_NAMES: dict[tuple[str, str, str], tuple[str, frozenset[str]]] = {}


def _secret_names(plugin: KindPlugin, owner: Owner, raw: dict[str, Any]) -> frozenset[str]:
    key, version = (owner.kind, owner.namespace, owner.name), _version(raw)
    known = _SECRET_NAMES.get(key)
    if known is not None and known[0] == version:
        return known[1]
    names = frozenset(secret_names(plugin, raw))
    if version is not None:
        _SECRET_NAMES[key] = (version, names)
    return names


def _unchanged(plugin: KindPlugin, raw: dict[str, Any], indexes: Mapping[str, Any]) -> bool:
    """Whether a periodic reconcile can stop at comparing versions: nothing decide() reads has changed since
    a reconcile that found nothing to do, no worker reports (their heartbeats age with the clock), and that
    reconcile is more recent than the recheck interval (then access objects and Secrets are read again)."""
    status = raw.get("status") or {}
    if raw["metadata"].get("deletionTimestamp") or status.get("workers"):
        return False
    if (status.get("specCheck") or {}).get("result") not in (None, PASSED):  # a check to wait for or to retry
        return False
    owner = owner_of(raw)
    last = _QUIET.get((owner.kind, owner.namespace, owner.name))
    if last is None or time.monotonic() - last[1] >= _recheck():
        return False
    return last[0] is not None and last[0] == _fingerprint(plugin, raw, indexes)


def _forget(owner: Owner) -> None:
    _QUIET.pop((owner.kind, owner.namespace, owner.name), None)
    _SECRET_NAMES.pop((owner.kind, owner.namespace, owner.name), None)
    RECONCILED.at.pop((owner.kind, owner.namespace, owner.name), None)
    name = worker_name(owner)
    ACCESS.forget(lambda k: k[1:] == (owner.namespace, name))
    DEPLOYMENTS.drop((owner.namespace, name))


def finalize(plugin: KindPlugin, body: kopf.Body) -> None:
    """Deletion: Terminating, scale the workers to zero so they flush and commit, then let go."""
    raw = dict(body)
    owner = owner_of(raw)
    custom, apps = _custom(), _apps()
    _forget(owner)
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


def _patch_task(plugin: KindPlugin, raw: dict[str, Any], patch: kopf.Patch) -> None:
    """Apply a periodic reconcile's patch as Kopf applies a handler's (annotations, then the status subresource),
    on the condition that the task is still the version it was decided from: a newer one (Kopf has its events
    queued) is answered 409 Conflict, and a status decided from an old one cannot overwrite a newer report."""
    meta = raw["metadata"]
    version = meta.get("resourceVersion")
    target = (GROUP, VERSION, meta.get("namespace") or "default", plugin.definition.plural, meta["name"])
    custom = _custom()
    if patch.get("metadata"):
        changed = {"metadata": {**dict(patch["metadata"]), "resourceVersion": version}}
        version = custom.patch_namespaced_custom_object(*target, changed)["metadata"]["resourceVersion"]
    if patch.get("status"):
        changed = {"status": dict(patch["status"]), "metadata": {"resourceVersion": version}}
        custom.patch_namespaced_custom_object_status(*target, changed)


def _periodic(plugin: KindPlugin, raw: dict[str, Any], indexes: Mapping[str, Any]) -> bool:
    """The sweep's full reconcile of one task, in a thread. False when the task had changed since the index saw
    it, so its status and annotations were not patched: Kopf's handlers take the new version, and the sweep tries
    again soon. The Events of what it did to the workers all the same (a rollout, a restart) are posted: no later
    reconcile, which finds the Deployment changed already, would say it."""
    owner = owner_of(raw)
    key = (owner.kind, owner.namespace, owner.name)
    before = RECONCILED.at.get(key)
    body, patch = kopf.Body(cast(kopf.RawBody, raw)), kopf.Patch()
    events: list[Any] = []
    reconcile(plugin, body, patch, indexes, "timer", events)
    try:
        _patch_task(plugin, raw, patch)
    except ApiException as err:
        if err.status not in (404, 409):
            raise
        if before is None:
            RECONCILED.at.pop(key, None)
        else:
            RECONCILED.at[key] = before  # (a reconcile that had a patch to send left no _QUIET entry)
        _reconciles.labels("timer", "stale").inc()
        _post_events(body, [event for event in events if event.applied])
        return False
    _post_events(body, events)
    return True


def _swept(plugin: KindPlugin, key: tuple[str, str, str], indexes: Mapping[str, Any]) -> bool:
    """_periodic on the task as the index has it when a thread is free for it (it may have waited in the queue),
    read under the task's lock: a handler that held it has reconciled a newer version, which the index has by
    then, and a version read before would apply the Deployment of the older spec over the newer one."""
    _, namespace, name = key
    with _task_lock(key):
        entry = next(iter(indexes[f"ferry_{plugin.definition.plural}_tasks"].get((namespace, name), ())), None)
        if entry is None or entry["raw"]["metadata"].get("deletionTimestamp"):
            return True  # gone, or being deleted: Kopf's deletion handler has it
        return _periodic(plugin, entry["raw"], indexes)


def _busy(key: tuple[str, str, str]) -> bool:
    """Whether a reconcile of the task holds its lock now (an RLock has no locked() before Python 3.14)."""
    lock = _locks.get(key)
    if lock is None or not lock.acquire(blocking=False):
        return lock is not None
    lock.release()
    return False


def _forget_locks(present: Container[tuple[str, str, str]]) -> None:
    """Drop the reconcile locks of tasks gone from the index that no reconcile holds (a handler of a task takes
    its lock only once Kopf has indexed it, and the index cannot change while the sweep, in the event loop,
    calls this). Otherwise every task ever deleted would keep one."""
    for key in [k for k in list(_locks) if k not in present]:  # (a copy: handler threads add to it meanwhile)
        lock = _locks.get(key)
        if lock is not None and lock.acquire(blocking=False):
            del _locks[key]
            lock.release()


SWEPT: list[KindPlugin] = []  # the kinds the sweep reconciles (those with worker Deployments)


class _Sweep:
    """The periodic safety net: one loop over every task in the indexes, every tick, reconciling each task not
    reconciled within the interval (ferry.control.sweep) instead of a Kopf timer per task.

    A task whose versions are unchanged since a reconcile that found nothing to do is checked in the event loop
    (_unchanged); the others are queued for the sweep's MAX_WORKERS threads, the longest waiting first, each
    once until its reconcile ends, and reconciled as the index has it when a thread takes it. A task its
    handler reconciles now, or that is being deleted, is left to Kopf. It starts from the first handler: Kopf
    runs handlers once its indexes hold every object it listed, and the handler's context is the one kopf.event
    posts through."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.started = False
        self.lock = threading.Lock()

    def start(self, kwargs: Mapping[str, Any]) -> None:
        with self.lock:
            if self.started or self.loop is None:
                return
            self.started = True
        indexes = {name: value for name, value in kwargs.items() if isinstance(value, kopf.Index)}
        asyncio.run_coroutine_threadsafe(self.run(indexes), self.loop)  # in this handler's context

    async def run(self, indexes: Mapping[str, Any]) -> None:
        self.task = asyncio.current_task()
        interval = SETTINGS.reconcile_interval
        schedule: Schedule[tuple[str, str, str]] = Schedule(interval, min(1.0, interval / 10))
        while True:
            await asyncio.sleep(schedule.tick)
            try:
                self.sweep(schedule, indexes)
            except Exception:  # a bug here must not end the safety net: log it, sweep again next tick
                log.exception("periodic sweep failed")

    def sweep(self, schedule: Schedule[tuple[str, str, str]], indexes: Mapping[str, Any]) -> None:
        now = time.monotonic()
        tasks: dict[tuple[str, str, str], tuple[KindPlugin, dict[str, Any]]] = {}
        for plugin in SWEPT:
            kind = plugin.definition.kind
            for (namespace, name), store in indexes[f"ferry_{plugin.definition.plural}_tasks"].items():
                for entry in store:
                    tasks[(kind, namespace, name)] = (plugin, entry["raw"])
        loop = asyncio.get_running_loop()
        for key in schedule.due(now, tasks, RECONCILED.at):
            plugin, raw = tasks[key]
            if raw["metadata"].get("deletionTimestamp") or _busy(key):
                continue
            if _unchanged(plugin, raw, indexes):
                RECONCILED.at[key] = now
                _reconciles.labels("timer", "unchanged").inc()
            else:
                schedule.running.add(key)
                context = contextvars.copy_context()
                future = loop.run_in_executor(_TIMER_POOL, context.run, _swept, plugin, key, indexes)
                future.add_done_callback(functools.partial(self.done, schedule, key))
        schedule.forget_absent(tasks, RECONCILED.at, now)
        _forget_locks(tasks)

    def done(self, schedule: Schedule[tuple[str, str, str]], key: tuple[str, str, str], future: Any) -> None:
        schedule.running.discard(key)
        error = future.exception()
        if error is None and future.result():
            return
        retry = min(5.0, schedule.interval / 3)
        schedule.retry(key, time.monotonic(), retry)
        if error is not None:
            kind, namespace, name = key
            log.error("%s %s/%s: periodic reconcile failed, again in %ss", kind, namespace, name, retry, exc_info=error)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


SWEEP = _Sweep()


@kopf.on.startup()
async def _sweep_loop(**_: Any) -> None:
    SWEEP.loop = asyncio.get_running_loop()


@kopf.on.cleanup()
async def _stop_sweep(**_: Any) -> None:
    SWEEP.stop()


def _noticed(**_: Any) -> None:
    """The reconcile handler acts on the change (see _register)."""


def _register(plugin: KindPlugin) -> None:
    resource = (GROUP, VERSION, plugin.definition.plural)

    # The index handlers are coroutines: Kopf runs them in the event loop, not in its thread pool.
    async def index_task(body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
        raw = _shrink(body)  # the whole body, for the sweep (slim shares its spec and strings)
        entry = {"body": slim(raw, CLUSTER_ID_FIELDS), "tokens": tokens(plugin, raw, CLUSTER_ID_FIELDS), "raw": raw}
        return {key_of(raw): entry}

    async def index_tokens(body: kopf.Body, **_: Any) -> dict[str, Key]:
        raw = dict(body)
        return {token: key_of(raw) for token in tokens(plugin, raw, CLUSTER_ID_FIELDS)}

    def on_change(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        SWEEP.start(kwargs)
        reconcile(plugin, body, patch, kwargs, "change")

    def on_create(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        SWEEP.start(kwargs)
        reconcile(plugin, body, patch, kwargs, "create")

    def on_delete(body: kopf.Body, **_: Any) -> None:
        finalize(plugin, body)
        owner = owner_of(dict(body))
        TASK_STATES.forget(owner.kind, owner.namespace, owner.name)

    kopf.index(*resource, id=f"ferry_{plugin.definition.plural}_tasks")(index_task)
    kopf.index(*resource, id=f"ferry_{plugin.definition.plural}_tokens")(index_tokens)
    kopf.on.resume(*resource, id="reconcile")(on_change)
    kopf.on.create(*resource, id="reconcile")(on_create)
    kopf.on.update(*resource, id="reconcile")(on_change)
    # Kopf leaves the annotations of its own storage prefix (ferry.dev/) out of the changes it compares, so that
    # `kubectl annotate` of these would wait for the timer: a handler watching each field puts it back in, and a
    # change of it then wakes the reconcile handler above (this one has nothing to do itself).
    for name in OPERATION_ANNOTATIONS:
        kopf.on.update(*resource, id=f"noticed-{name.rsplit('/', 1)[-1]}", field=("metadata", "annotations", name))(
            _noticed
        )
    SWEPT.append(plugin)  # reconciled periodically by the sweep, not a Kopf timer per task
    kopf.on.delete(*resource, id="flush-worker", timeout=SETTINGS.flush_timeout + 60)(on_delete)


kopf.index(*DEPLOYMENT_RESOURCE, id=DEPLOYMENTS_INDEX, labels=MANAGED)(_index_deployment)
kopf.index(*POD_RESOURCE, id=PODS_INDEX, labels=WORKER_PODS)(_index_pod)
for _plugin in PLUGINS.values():
    if not _plugin.one_shot:  # those run as Jobs: ferry.obsrestore.handlers
        _register(_plugin)

import ferry.obsrestore.handlers  # noqa: E402  (registers the one-shot kinds' handlers: their Jobs)
import ferry.webhook  # noqa: E402,F401  (registers the admission webhook when FERRY_OPERATOR_WEBHOOK_PORT is set)
