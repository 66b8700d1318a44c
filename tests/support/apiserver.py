"""A Kubernetes API server emulator for Ferry's end-to-end tests.

There is no kube-apiserver in the test environments, so the operator, its
workers, ``kubectl`` and the ``kubernetes`` client talk to this emulator instead::

    python -m tests.support.apiserver --port 8080 --crd crds/a.yaml --crd crds/b.yaml

or, from tests, through :func:`start_apiserver`, which runs it as a subprocess
(own process group, stopped by PID) and writes a kubeconfig for it::

    with start_apiserver(tmp_path, [Path("crds/widgets.yaml")]) as server:
        api = kubernetes.client.CustomObjectsApi(server.api_client())
        subprocess.run(["kubectl", "--kubeconfig", str(server.kubeconfig),
                        "--cache-dir", str(tmp_path / "kube-cache"), "get", "widgets"])
        env = dict(os.environ, KUBECONFIG=str(server.kubeconfig))  # for kopf run / the operator

Give kubectl a per-test ``--cache-dir``: its discovery cache is keyed by
host:port, and ports are reused between runs with different CRDs. Kopf needs
no special settings (``kopf run --all-namespaces`` with or without
``--standalone``; its finalizers, JSON-patch ``test`` on resourceVersion,
``/status`` patches, events and bookmarks all work).

Design choice
-------------
``kmock.KubernetesEmulator`` (kmock 0.8) was the starting point, but nearly
every layer of it had to be replaced, so this is a small aiohttp application
that reuses only kmock's bundled discovery catalogue of built-in resources
(kinds, short names, verbs, scope, subresources: ``kmock.ResourcesArray``):

* kmock's path parser reads ``/api/v1/namespaces/NAME`` as a namespace prefix
  (``GET /api/v1/namespaces`` crashes and namespace objects cannot be
  addressed), and the parsing happens in ``RawHandler.__call__`` before any
  extension point;
* all state changes live in one monolithic ``KubernetesEmulator._handle``
  (create/patch/delete with merge-only semantics, no PUT, no json-patch), so
  server-set metadata, status isolation, preconditions, selectors, watch
  resource versions and garbage collection would each mean overriding it
  whole anyway.

Behaviour (each item is a step toward a real API server)
--------------------------------------------------------
* Resources: a fixed set of built-ins (:data:`BUILTIN_RESOURCES`) and custom
  resources registered from CRD objects: those passed with ``--crd`` and those
  created through the API later (``kubectl apply -f crd.yaml`` works; deleting
  a CRD removes its objects). Discovery: ``/api``, ``/apis``,
  ``/apis/GROUP[/VERSION]`` with status/scale subresources; ``/version``,
  ``/healthz``, ``/readyz``, ``/livez``. Multi-version CRDs are served under
  every served version without conversion (only ``apiVersion`` is rewritten).
* Server-set metadata: ``uid``, ``creationTimestamp`` (RFC 3339 UTC),
  ``resourceVersion`` (one global, monotonic counter, bumped by every write
  that changes the object; a no-op write changes nothing and emits no event,
  like a real server), ``generation`` (custom resources, CRDs, apps/* and
  batch/*: 1 on create, +1 when anything outside ``metadata`` and ``status``
  changes, or outside ``metadata`` alone if the resource has no status
  subresource, and when deletion starts), ``generateName``.
* Verbs: create (201 + object; 409 AlreadyExists), get, list, watch, PUT
  (replace; 409 Conflict on a stale ``metadata.resourceVersion``), PATCH with
  ``application/merge-patch+json`` (RFC 7386), ``application/json-patch+json``
  (RFC 6902; a failed ``test`` or a missing path answers 422 Invalid),
  ``application/strategic-merge-patch+json`` (built-ins only, 415 for custom
  resources like a real server; merge-patch plus list merging by a small table
  of merge keys, see :data:`MERGE_KEYS`), ``application/apply-patch+yaml``
  (server-side apply approximated as create-or-merge-patch, no field
  ownership), delete, deletecollection, ``dryRun=All``.
* Errors are ``Status`` objects with real reasons and messages: NotFound,
  AlreadyExists, Conflict, Invalid, BadRequest, Forbidden, MethodNotAllowed,
  UnsupportedMediaType, Expired.
* Status subresource isolation for resources that declare it: writes to the
  main resource keep the stored ``.status`` (and create drops it), writes to
  ``/status`` change only ``.status``. ``/scale`` for deployments,
  statefulsets, replicasets and CRDs declaring it (``autoscaling/v1`` Scale).
* Lists and watches: ``labelSelector`` (``=``, ``==``, ``!=``, ``in``,
  ``notin``, exists, ``!``), ``fieldSelector`` (``metadata.name``,
  ``metadata.namespace`` and a few per-resource fields, CRD
  ``selectableFields``; others answer 400 like a real server), ``limit`` and
  ``continue`` (continuation from the last key seen, not a snapshot).
* Watch: no ``resourceVersion`` or ``"0"`` starts with ADDED events for the
  current objects; a given ``resourceVersion`` replays every later event from
  the history (the last 20k events; older ones answer an ERROR event with
  410 Expired, which Kopf handles by listing again), then streams live events. Objects entering or
  leaving a selector arrive as ADDED/DELETED. ``timeoutSeconds``,
  ``allowWatchBookmarks`` (a BOOKMARK every ``--bookmark-interval`` seconds)
  and ``sendInitialEvents`` (closing BOOKMARK with
  ``k8s.io/initial-events-end``) are honoured.
* Deletion: an object with finalizers gets ``deletionTimestamp`` (202 +
  object) and disappears once a write empties ``finalizers``; new finalizers
  cannot be added while deleting (422). Delete preconditions (uid,
  resourceVersion) are checked. Garbage collection: removing an object deletes
  every object whose ``ownerReferences`` no longer name any existing uid,
  cascading; ``propagationPolicy=Orphan`` strips the references instead
  (``Foreground`` is treated as ``Background``).
* Namespaces: ``default``, ``kube-system``, ``kube-public`` and
  ``kube-node-lease`` exist at start (the first three cannot be deleted).
  Creating in a missing namespace answers 404, in a terminating one 403.
  Deleting a namespace marks it Terminating, deletes its contents and removes
  it once empty.
* Secrets: ``stringData`` is folded into base64 ``data`` on every write.

Not supported: schema, CEL and most field validation (tested elsewhere);
admission and defaulting of built-in types; controllers (no Deployment or Pod
ever becomes ready by itself: patch ``/status`` in tests); authentication and
RBAC enforcement (any token is accepted); protobuf, CBOR and Table output
(kubectl falls back to its own printing); OpenAPI schemas (``/openapi/v2`` is
an empty document so that kubectl's client-side validation passes,
``/openapi/v3`` lists no paths); managedFields; graceful pod deletion;
conversion webhooks; the legacy ``/api/v1/watch/...`` paths; exec, log and
proxy subresources; ``resourceVersion`` semantics on GET/LIST (always the
latest state).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import copy
import datetime
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp.web
import kmock
import yaml

if TYPE_CHECKING:
    import kubernetes.client

JsonDict = dict[str, Any]
ObjKey = tuple[str, str, str, str]  # group, plural, namespace ('' when cluster-scoped), name
StoreKey = tuple[str, str]  # group, plural

logger = logging.getLogger("ferry.tests.apiserver")

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ["get", "patch", "update"]
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
GENERATION_GROUPS = frozenset({"apps", "batch", "apiextensions.k8s.io"})
SERVER_METADATA = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)
CRD_KEY: StoreKey = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES_KEY: StoreKey = ("", "namespaces")
HISTORY_SIZE = 20_000  # watch events kept for resuming watches; older ones answer 410
EMPTY_OPENAPI_V2: JsonDict = {
    "swagger": "2.0",
    "info": {"title": "Kubernetes", "version": "v1.36.0"},
    "paths": {},
    "definitions": {},
}
SERVER_VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.0+ferry-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

# Built-in resources served, as "group/version/plural" ("v1/plural" for the core group).
BUILTIN_RESOURCES = (
    "v1/namespaces",
    "v1/secrets",
    "v1/configmaps",
    "v1/events",
    "v1/serviceaccounts",
    "v1/pods",
    "v1/services",
    "v1/endpoints",
    "v1/persistentvolumeclaims",
    "apps/v1/deployments",
    "apps/v1/statefulsets",
    "apps/v1/replicasets",
    "batch/v1/jobs",
    "batch/v1/cronjobs",
    "policy/v1/poddisruptionbudgets",
    "networking.k8s.io/v1/networkpolicies",
    "rbac.authorization.k8s.io/v1/roles",
    "rbac.authorization.k8s.io/v1/rolebindings",
    "rbac.authorization.k8s.io/v1/clusterroles",
    "rbac.authorization.k8s.io/v1/clusterrolebindings",
    "coordination.k8s.io/v1/leases",
    "apiextensions.k8s.io/v1/customresourcedefinitions",
)

# Field labels that real servers accept in fieldSelector, beyond metadata.name/namespace.
EXTRA_FIELD_LABELS: dict[StoreKey, tuple[str, ...]] = {
    ("", "events"): (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    ("", "pods"): (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
    ),
    ("", "secrets"): ("type",),
    ("", "namespaces"): ("status.phase",),
}

# Strategic merge patch: lists merged item by item, by field name (the first key an item has).
# An approximation of the per-type patchMergeKey tags of the real API types.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "ports": ("containerPort", "port"),
    "conditions": ("type",),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey",),
}
MERGE_PRIMITIVE_LISTS = frozenset({"finalizers"})


# --------------------------------------------------------------------------------------------------
# Errors: every failure is answered as a Kubernetes Status object.
# --------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A failure answered as a ``Status`` object, as a real API server does."""

    def __init__(self, code: int, reason: str, message: str, details: JsonDict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> JsonDict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _details(rtype: ResourceType, name: str) -> JsonDict:
    details: JsonDict = {"name": name, "kind": rtype.plural}
    if rtype.group:
        details["group"] = rtype.group
    return details


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rtype.qualified} "{name}" not found', _details(rtype, name))


def already_exists(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{rtype.qualified} "{name}" already exists', _details(rtype, name))


def conflict(rtype: ResourceType, name: str, why: str) -> ApiError:
    message = f'Operation cannot be fulfilled on {rtype.qualified} "{name}": {why}'
    return ApiError(409, "Conflict", message, _details(rtype, name))


def invalid(rtype: ResourceType, name: str, why: str) -> ApiError:
    message = f'{rtype.kind}.{rtype.group or "core"} "{name}" is invalid: {why}'
    return ApiError(422, "Invalid", message, _details(rtype, name))


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unknown_resource() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource")


# --------------------------------------------------------------------------------------------------
# Resource types: built-ins from kmock's bundled catalogue, custom ones from CRD objects.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSpec:
    spec_replicas: str = ".spec.replicas"
    status_replicas: str = ".status.replicas"
    label_selector: str | None = None  # None: derived from .spec.selector.matchLabels


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    status: bool = False
    scale: ScaleSpec | None = None
    generation: bool = False
    custom: bool = False
    field_labels: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_key(self) -> StoreKey:
        return (self.group, self.plural)

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def builtin_types() -> list[ResourceType]:
    catalogue = kmock.ResourcesArray()
    catalogue.load_bundled()
    types: list[ResourceType] = []
    for spec in BUILTIN_RESOURCES:
        resource = kmock.resource(spec)
        if resource not in catalogue:
            raise RuntimeError(f"kmock has no discovery data for {spec}")
        types.append(_builtin_type(resource, catalogue[resource]))
    return types


def _builtin_type(resource: kmock.resource, info: kmock.ResourceInfo) -> ResourceType:
    group, version, plural = resource.group or "", resource.version or "v1", resource.plural or ""
    return ResourceType(
        group=group,
        version=version,
        plural=plural,
        kind=info.kind or plural.capitalize(),
        singular=info.singular or plural,
        namespaced=bool(info.namespaced),
        short_names=tuple(sorted(info.shortnames)),
        categories=tuple(sorted(info.categories)),
        verbs=tuple(sorted(info.verbs)),
        status="status" in info.subresources,
        scale=ScaleSpec() if "scale" in info.subresources else None,
        generation=group in GENERATION_GROUPS,
        field_labels=EXTRA_FIELD_LABELS.get((group, plural), ()),
    )


def crd_types(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The resource types (one per served version) that a CRD object declares."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    kind, plural = names.get("kind", ""), names.get("plural", "")
    common: JsonDict = {
        "group": spec.get("group", ""),
        "plural": plural,
        "kind": kind,
        "singular": names.get("singular") or kind.lower(),
        "namespaced": spec.get("scope", "Namespaced") == "Namespaced",
        "short_names": tuple(names.get("shortNames") or ()),
        "categories": tuple(names.get("categories") or ()),
        "generation": True,
        "custom": True,
    }
    return [
        ResourceType(version=version["name"], **common, **_crd_version_traits(version))
        for version in spec.get("versions") or ()
        if version.get("served", True)
    ]


def _crd_version_traits(version: Mapping[str, Any]) -> JsonDict:
    subresources = version.get("subresources") or {}
    scale = subresources.get("scale")
    return {
        "status": "status" in subresources,
        "scale": ScaleSpec(
            spec_replicas=scale["specReplicasPath"],
            status_replicas=scale["statusReplicasPath"],
            label_selector=scale.get("labelSelectorPath"),
        )
        if scale
        else None,
        "field_labels": tuple(f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or ()),
    }


_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes' version ordering key: GA > beta > alpha, higher numbers first (sort ascending)."""
    match = _VERSION_RE.match(version)
    if match is None:
        return (4, 0, 0, version)
    major, stage, minor = match.groups()
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -int(major), -int(minor or 0), version)


# --------------------------------------------------------------------------------------------------
# Small pure helpers: time, paths, selectors.
# --------------------------------------------------------------------------------------------------


def rfc3339_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dig(obj: Any, path: str) -> Any:
    """The value at a dotted path (``.spec.replicas`` or ``spec.replicas``), or None."""
    for part in path.strip(".").split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def put(obj: JsonDict, path: str, value: Any) -> None:
    *parents, last = path.strip(".").split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    obj[last] = value


def being_deleted(obj: Mapping[str, Any]) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


LabelPredicate = Callable[[Mapping[str, str]], bool]

_SET_REQUIREMENT = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_REQUIREMENT = re.compile(r"^([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)$")
_EXISTS_REQUIREMENT = re.compile(r"^(!?)\s*([\w./-]+)$")


def split_selector(text: str) -> list[str]:
    """Split a selector on the commas that are not inside ``in (...)`` parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def parse_label_selector(text: str) -> LabelPredicate:
    """Parse a ``labelSelector`` query into a predicate over labels; ValueError if malformed."""
    requirements = [_label_requirement(part) for part in split_selector(text)]
    return lambda labels: all(requirement(labels) for requirement in requirements)


def _label_requirement(text: str) -> LabelPredicate:
    if match := _SET_REQUIREMENT.match(text):
        key, operator, raw_values = match.groups()
        values = {value.strip() for value in raw_values.split(",") if value.strip()}
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ_REQUIREMENT.match(text):
        key, operator, value = match.groups()
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS_REQUIREMENT.match(text):
        negated, key = match.groups()
        return lambda labels: (key in labels) != bool(negated)
    raise ValueError(f"unable to parse requirement: {text!r}")


FieldRequirement = tuple[str, bool, str]  # field label, equality wanted, value


def parse_field_selector(text: str, allowed: Iterable[str]) -> list[FieldRequirement]:
    """Parse a ``fieldSelector`` query; ValueError for bad syntax or unsupported field labels."""
    allowed_set = {"metadata.name", "metadata.namespace", *allowed}
    requirements: list[FieldRequirement] = []
    for part in split_selector(text):
        match = re.match(r"^([\w./-]+)\s*(==|=|!=)\s*(.*)$", part)
        if match is None:
            raise ValueError(f"invalid selector: {part!r}")
        label, operator, value = match.groups()
        if label not in allowed_set:
            raise ValueError(f"field label not supported: {label}")
        requirements.append((label, operator != "!=", value.strip()))
    return requirements


def field_value(obj: Mapping[str, Any], label: str) -> str:
    value = dig(obj, label)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@dataclass(frozen=True)
class ObjectFilter:
    """Which objects a list or watch request sees: namespace, name, labels and fields."""

    namespace: str | None = None
    labels: LabelPredicate | None = None
    fields: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.labels is not None and not self.labels(meta.get("labels") or {}):
            return False
        return all((field_value(obj, label) == value) == wanted for label, wanted, value in self.fields)


# --------------------------------------------------------------------------------------------------
# Patches: JSON merge patch (RFC 7386), strategic merge patch (approximate), JSON patch (RFC 6902).
# --------------------------------------------------------------------------------------------------


class PatchError(Exception):
    """A JSON patch that cannot be applied: answered as 422 Invalid."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Merge patch plus list merging by :data:`MERGE_KEYS` and the ``$patch``-style directives."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {key: copy.deepcopy(value) for key, value in patch.items() if key != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [item for item in result.get(name) or [] if item not in value]
        elif value is None:
            result.pop(key, None)
        elif not key.startswith("$"):
            result[key] = _strategic_merge_value(key, result.get(key), value)
    return result


def _strategic_merge_value(key: str, current: Any, value: Any) -> Any:
    if isinstance(value, list) and isinstance(current, list):
        if key in MERGE_PRIMITIVE_LISTS:
            return current + [item for item in value if item not in current]
        merge_key = _merge_key_for(key, value)
        if merge_key is not None:
            return _merge_list_by_key(current, value, merge_key)
    return strategic_merge_patch(current, value)


def _merge_key_for(key: str, items: list[Any]) -> str | None:
    for candidate in MERGE_KEYS.get(key, ()):
        if items and all(isinstance(item, dict) and candidate in item for item in items):
            return candidate
    return None


def _merge_list_by_key(current: list[Any], items: list[JsonDict], merge_key: str) -> list[Any]:
    result = list(current)
    for item in items:
        index = next(
            (i for i, old in enumerate(result) if isinstance(old, dict) and old.get(merge_key) == item[merge_key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def json_patch(document: Any, operations: Any) -> Any:
    """Apply RFC 6902 operations; PatchError when a path is missing or a ``test`` fails."""
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise bad_request("json patch must be a list of operations")
    for operation in operations:
        document = _apply_json_patch_operation(document, operation)
    return document


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"invalid JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _resolve(document: Any, parts: list[str]) -> Any:
    for part in parts:
        document = _child(document, part)
    return document


def _child(container: Any, part: str) -> Any:
    if isinstance(container, dict) and part in container:
        return container[part]
    if isinstance(container, list) and part.isdigit() and int(part) < len(container):
        return container[int(part)]
    raise PatchError(f"path not found: {part!r}")


def _add(document: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _resolve(document, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list) and last == "-":
        parent.append(value)
    elif isinstance(parent, list) and last.isdigit() and int(last) <= len(parent):
        parent.insert(int(last), value)
    else:
        raise PatchError(f"cannot add at {last!r}")
    return document


def _remove(document: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _resolve(document, parts[:-1])
    _child(parent, parts[-1])  # must exist
    if isinstance(parent, dict):
        del parent[parts[-1]]
    else:
        del parent[int(parts[-1])]
    return document


def _replace(document: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _resolve(document, parts[:-1])
    parent[int(parts[-1]) if isinstance(parent, list) else parts[-1]] = value
    return document


def _apply_json_patch_operation(document: Any, operation: JsonDict) -> Any:
    op, parts = operation.get("op"), _pointer(operation.get("path"))
    if op == "add":
        return _add(document, parts, copy.deepcopy(operation.get("value")))
    if op == "remove":
        return _remove(document, parts)
    if op == "replace":
        _resolve(document, parts)  # must exist
        return _replace(document, parts, copy.deepcopy(operation.get("value")))
    if op in ("move", "copy"):
        source = _pointer(operation.get("from"))
        value = copy.deepcopy(_resolve(document, source))
        document = _remove(document, source) if op == "move" else document
        return _add(document, parts, value)
    if op == "test":
        if _resolve(document, parts) != operation.get("value"):
            raise PatchError(f"testing value {operation.get('path')} failed")
        return document
    raise bad_request(f"unknown json patch operation: {op!r}")


# --------------------------------------------------------------------------------------------------
# The store: objects, the revision counter, the event history, watchers, and all the write rules.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchEvent:
    revision: int
    type: str  # ADDED, MODIFIED, DELETED
    store_key: StoreKey
    obj: JsonDict
    old: JsonDict | None = None


class Watcher:
    """One open watch request: the events it wants, queued for its stream (None ends it)."""

    def __init__(self, rtype: ResourceType, object_filter: ObjectFilter) -> None:
        self.rtype = rtype
        self.filter = object_filter
        self.queue: asyncio.Queue[tuple[str, JsonDict] | None] = asyncio.Queue()

    def translate(self, event: WatchEvent) -> tuple[str, JsonDict] | None:
        """The event as this watcher sees it: objects entering or leaving its selector too."""
        if event.store_key != self.rtype.store_key:
            return None
        now_matches = self.filter.matches(event.obj)
        if event.type != "MODIFIED":
            return (event.type, event.obj) if now_matches else None
        matched_before = event.old is not None and self.filter.matches(event.old)
        if now_matches:
            return ("MODIFIED" if matched_before else "ADDED", event.obj)
        return ("DELETED", event.obj) if matched_before else None

    def offer(self, event: WatchEvent) -> None:
        translated = self.translate(event)
        if translated is not None:
            self.queue.put_nowait(translated)


@dataclass
class DeleteOptions:
    propagation: str = "Background"
    uid: str | None = None
    resource_version: str | None = None
    dry_run: bool = False


class Store:
    """All objects in memory. Methods are synchronous, hence atomic within the event loop."""

    def __init__(self, history_size: int = HISTORY_SIZE) -> None:
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[ObjKey, JsonDict] = {}
        self.revision = 0
        self.compacted = 0  # the newest revision dropped from the history
        self.history: deque[WatchEvent] = deque(maxlen=history_size)
        self.watchers: set[Watcher] = set()
        for rtype in builtin_types():
            self.types[(rtype.group, rtype.version, rtype.plural)] = rtype
        namespaces = self.lookup("", "v1", "namespaces")
        for name in DEFAULT_NAMESPACES:
            self.create(namespaces, None, {"metadata": {"name": name}})

    # ---- resource types ----

    def lookup(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.types.get((group, version, plural))
        if rtype is None:
            raise unknown_resource()
        return rtype

    def type_of(self, store_key: StoreKey) -> ResourceType | None:
        candidates = [t for t in self.types.values() if t.store_key == store_key]
        return min(candidates, key=lambda t: version_priority(t.version)) if candidates else None

    def _register_crd(self, crd: JsonDict) -> None:
        for rtype in crd_types(crd):
            self.types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def _unregister_crd(self, crd: JsonDict, drop_objects: bool) -> None:
        types = crd_types(crd)
        if not types:
            return
        if drop_objects:
            for key, obj in list(self.objects.items()):
                if key[:2] == types[0].store_key and key in self.objects:
                    self._remove(types[0], obj)  # finalizers are not waited for
        for rtype in types:
            self.types.pop((rtype.group, rtype.version, rtype.plural), None)

    # ---- reading ----

    @staticmethod
    def key(rtype: ResourceType, namespace: str | None, name: str) -> ObjKey:
        return (rtype.group, rtype.plural, (namespace or "") if rtype.namespaced else "", name)

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> JsonDict:
        obj = self.objects.get(self.key(rtype, namespace, name))
        if obj is None:
            raise not_found(rtype, name)
        return obj

    def select(self, rtype: ResourceType, object_filter: ObjectFilter) -> list[JsonDict]:
        return [
            obj
            for key, obj in sorted(self.objects.items())
            if key[:2] == rtype.store_key and object_filter.matches(obj)
        ]

    # ---- writing: the single place where revisions, history and watchers are updated ----

    def _commit(self, rtype: ResourceType, obj: JsonDict, event_type: str, old: JsonDict | None) -> JsonDict:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        key = self.key(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if event_type == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        if len(self.history) == self.history.maxlen:
            self.compacted = self.history[0].revision
        event = WatchEvent(self.revision, event_type, rtype.store_key, obj, old)
        self.history.append(event)
        for watcher in list(self.watchers):
            watcher.offer(event)
        if rtype.store_key == CRD_KEY:
            self._on_crd_event(event)
        return obj

    def _on_crd_event(self, event: WatchEvent) -> None:
        if event.old is not None:
            self._unregister_crd(event.old, drop_objects=False)
        if event.type == "DELETED":
            self._unregister_crd(event.obj, drop_objects=True)
        else:
            self._register_crd(event.obj)

    # ---- create ----

    def create(self, rtype: ResourceType, namespace: str | None, body: Any, dry_run: bool = False) -> JsonDict:
        obj = self._new_object(rtype, namespace, body)
        meta = obj["metadata"]
        if self.key(rtype, meta.get("namespace"), meta["name"]) in self.objects:
            raise already_exists(rtype, meta["name"])
        self._check_namespace(rtype, meta.get("namespace"))
        if dry_run:
            return obj
        return self._commit(rtype, obj, "ADDED", None)

    def _new_object(self, rtype: ResourceType, namespace: str | None, body: Any) -> JsonDict:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be an object")
        obj = copy.deepcopy(body)
        _check_kind(rtype, obj)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta = obj["metadata"] = obj.get("metadata") or {}
        for name in (*SERVER_METADATA, "resourceVersion", "selfLink", "managedFields"):
            meta.pop(name, None)
        meta["name"] = self._pick_name(rtype, namespace, meta)
        _place_in_namespace(rtype, namespace, meta)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339_now()
        if rtype.generation:
            meta["generation"] = 1
        if rtype.status:
            obj.pop("status", None)
        _normalize(rtype, obj)
        _set_defaults(rtype, obj)
        return obj

    def _pick_name(self, rtype: ResourceType, namespace: str | None, meta: JsonDict) -> str:
        name, prefix = meta.get("name"), meta.get("generateName")
        if not name and prefix:
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            candidates = (prefix + "".join(secrets.choice(alphabet) for _ in range(5)) for _ in range(20))
            name = next(n for n in candidates if self.key(rtype, namespace, n) not in self.objects)
        if not name or not isinstance(name, str):
            raise invalid(rtype, "", "metadata.name: Required value: name or generateName is required")
        if not _valid_name(rtype, name):
            raise invalid(
                rtype,
                name,
                f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain '
                "must consist of lower case alphanumeric characters, '-' or '.'",
            )
        return name

    def _check_namespace(self, rtype: ResourceType, namespace: str | None) -> None:
        if not rtype.namespaced:
            return
        namespaces = self.lookup("", "v1", "namespaces")
        ns = self.objects.get(self.key(namespaces, None, namespace or ""))
        if ns is None:
            raise not_found(namespaces, namespace or "")
        if being_deleted(ns):
            raise ApiError(
                403,
                "Forbidden",
                f"{rtype.qualified} is forbidden: unable to create new content "
                f"in namespace {namespace} because it is being terminated",
            )

    # ---- update: PUT, PATCH, /status, /scale ----

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        change: Callable[[JsonDict], Any],
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> JsonDict:
        """Apply ``change`` to a copy of the object, enforce the server's rules, store if changed."""
        old = self.get(rtype, namespace, name)
        proposed = change(copy.deepcopy(old))
        new = self._reconcile(rtype, old, proposed, subresource)
        if new == old or dry_run:
            return new
        self._commit(rtype, new, "MODIFIED", old)
        self._finish_deletion_if_released(rtype, new)
        return new

    def _reconcile(self, rtype: ResourceType, old: JsonDict, proposed: Any, subresource: str | None) -> JsonDict:
        name = old["metadata"]["name"]
        if not isinstance(proposed, dict) or not isinstance(proposed.get("metadata", {}), dict):
            raise bad_request("the body of the request must be an object with object metadata")
        meta = proposed.setdefault("metadata", {})
        for immutable in ("name", "namespace"):
            if meta.get(immutable, old["metadata"].get(immutable)) != old["metadata"].get(immutable):
                raise invalid(rtype, name, f"metadata.{immutable}: Invalid value: field is immutable")
        wanted_version = meta.get("resourceVersion")
        if wanted_version and wanted_version != old["metadata"]["resourceVersion"]:
            raise conflict(
                rtype,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        new = self._isolate(rtype, old, proposed, subresource)
        _check_finalizers(rtype, old, new)
        if rtype.generation and _spec_part(rtype, old) != _spec_part(rtype, new):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        return new

    @staticmethod
    def _isolate(rtype: ResourceType, old: JsonDict, proposed: JsonDict, subresource: str | None) -> JsonDict:
        if subresource == "status":
            new = copy.deepcopy(old)
            _copy_key(proposed, new, "status")
            return new
        new = proposed
        if rtype.status:
            _copy_key(old, new, "status")
        for name in (*SERVER_METADATA, "name", "namespace"):
            _copy_key(old["metadata"], new["metadata"], name)
        for name in ("selfLink", "managedFields"):
            new["metadata"].pop(name, None)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        _normalize(rtype, new)
        return new

    # ---- delete and garbage collection ----

    def delete(
        self, rtype: ResourceType, namespace: str | None, name: str, options: DeleteOptions
    ) -> tuple[JsonDict, bool]:
        """Delete an object: returns its last state and whether it is gone already."""
        obj = self.get(rtype, namespace, name)
        meta = obj["metadata"]
        if rtype.store_key == NAMESPACES_KEY and name in PROTECTED_NAMESPACES:
            raise ApiError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be deleted')
        if options.uid and options.uid != meta["uid"]:
            raise conflict(
                rtype,
                name,
                f"Precondition failed: UID in precondition: {options.uid}, UID in object meta: {meta['uid']}",
            )
        if options.resource_version and options.resource_version != meta["resourceVersion"]:
            raise conflict(
                rtype,
                name,
                "the ResourceVersion in the precondition "
                f"({options.resource_version}) does not match the ResourceVersion "
                f"in record ({meta['resourceVersion']})",
            )
        if options.dry_run:
            return obj, not meta.get("finalizers")
        if options.propagation == "Orphan":
            self._orphan_dependents(meta["uid"])
        return self._delete_object(rtype, obj)

    def _delete_object(self, rtype: ResourceType, obj: JsonDict) -> tuple[JsonDict, bool]:
        if rtype.store_key == NAMESPACES_KEY:
            return self._terminate_namespace(rtype, obj)
        if obj["metadata"].get("finalizers"):
            return self._mark_deleting(rtype, obj), False
        return self._remove(rtype, obj), True

    def _mark_deleting(self, rtype: ResourceType, obj: JsonDict) -> JsonDict:
        if being_deleted(obj):
            return obj
        new = copy.deepcopy(obj)
        new["metadata"]["deletionTimestamp"] = rfc3339_now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        if new["metadata"].get("generation"):
            new["metadata"]["generation"] += 1
        return self._commit(rtype, new, "MODIFIED", obj)

    def _remove(self, rtype: ResourceType, obj: JsonDict) -> JsonDict:
        final = self._commit(rtype, copy.deepcopy(obj), "DELETED", obj)
        self._collect_dependents(final["metadata"]["uid"])
        if rtype.namespaced:
            self._finish_namespace_if_empty(final["metadata"]["namespace"])
        return final

    def _finish_deletion_if_released(self, rtype: ResourceType, obj: JsonDict) -> None:
        if not being_deleted(obj) or obj["metadata"].get("finalizers"):
            return
        if rtype.store_key == NAMESPACES_KEY:
            self._finish_namespace_if_empty(obj["metadata"]["name"])
        else:
            self._remove(rtype, obj)

    def _collect_dependents(self, owner_uid: str) -> None:
        """Delete the objects that were owned by ``owner_uid`` and have no other existing owner."""
        live_uids = {obj["metadata"]["uid"] for obj in self.objects.values()}
        for key, obj in list(self.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            if any(ref.get("uid") in live_uids for ref in refs):
                continue
            current, rtype = self.objects.get(key), self.type_of(key[:2])
            if current is not None and rtype is not None and not being_deleted(current):
                self._delete_object(rtype, current)

    def _orphan_dependents(self, owner_uid: str) -> None:
        for key, obj in list(self.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            rtype = self.type_of(key[:2])
            if rtype is None or not any(ref.get("uid") == owner_uid for ref in refs):
                continue
            new = copy.deepcopy(obj)
            new["metadata"]["ownerReferences"] = [ref for ref in refs if ref.get("uid") != owner_uid]
            if not new["metadata"]["ownerReferences"]:
                del new["metadata"]["ownerReferences"]
            self._commit(rtype, new, "MODIFIED", obj)

    def _terminate_namespace(self, rtype: ResourceType, ns: JsonDict) -> tuple[JsonDict, bool]:
        name = ns["metadata"]["name"]
        if not being_deleted(ns):
            new = copy.deepcopy(ns)
            new["metadata"]["deletionTimestamp"] = rfc3339_now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {"phase": "Terminating"}
            ns = self._commit(rtype, new, "MODIFIED", ns)
        for key in [key for key in self.objects if key[2] == name]:
            current, content_type = self.objects.get(key), self.type_of(key[:2])
            if current is not None and content_type is not None and not being_deleted(current):
                self._delete_object(content_type, current)
        removed = self._finish_namespace_if_empty(name)
        return (removed, True) if removed is not None else (self.objects.get(self.key(rtype, None, name), ns), False)

    def _finish_namespace_if_empty(self, namespace: str) -> JsonDict | None:
        rtype = self.lookup("", "v1", "namespaces")
        ns = self.objects.get(self.key(rtype, None, namespace))
        if ns is None or not being_deleted(ns) or ns["metadata"].get("finalizers"):
            return None
        if any(key[2] == namespace for key in self.objects):
            return None
        return self._remove(rtype, ns)

    # ---- watching ----

    def open_watch(
        self, rtype: ResourceType, object_filter: ObjectFilter, since: str | None, initial_state: bool = True
    ) -> tuple[Watcher, list[tuple[str, JsonDict]]]:
        """Register a watcher and return the events it must see first (atomically)."""
        watcher = Watcher(rtype, object_filter)
        if since in (None, "", "0"):
            initial = [("ADDED", obj) for obj in self.select(rtype, object_filter)] if initial_state else []
        else:
            initial = self._replay(watcher, _parse_revision(since))
        self.watchers.add(watcher)
        return watcher, initial

    def _replay(self, watcher: Watcher, since: int) -> list[tuple[str, JsonDict]]:
        if since < self.compacted:
            raise ApiError(410, "Expired", f"too old resource version: {since} ({self.compacted + 1})")
        events = (watcher.translate(event) for event in self.history if event.revision > since)
        return [event for event in events if event is not None]

    def close_watch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def close_all_watches(self) -> None:
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(None)


def _parse_revision(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ApiError(410, "Expired", f"invalid resource version: {text!r}") from None


def _check_kind(rtype: ResourceType, obj: JsonDict) -> None:
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if kind and kind != rtype.kind:
        raise bad_request(f"the kind of the object ({kind}) does not match the resource ({rtype.kind})")
    if api_version and api_version.rpartition("/")[0] != rtype.group:
        raise bad_request(f"the API version of the object ({api_version}) does not match {rtype.api_version}")


_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _valid_name(rtype: ResourceType, name: str) -> bool:
    if rtype.group == "rbac.authorization.k8s.io":  # path-segment names such as "system:reader"
        return name not in (".", "..") and "/" not in name and "%" not in name
    return len(name) <= 253 and bool(_SUBDOMAIN.match(name))


def _place_in_namespace(rtype: ResourceType, namespace: str | None, meta: JsonDict) -> None:
    if not rtype.namespaced:
        meta.pop("namespace", None)
        return
    if meta.get("namespace") and namespace and meta["namespace"] != namespace:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
    meta["namespace"] = namespace or meta.get("namespace")
    if not meta["namespace"]:
        raise bad_request("the namespace of the object is not set")


def _normalize(rtype: ResourceType, obj: JsonDict) -> None:
    """Conversions a real server applies on every write."""
    if rtype.store_key == ("", "secrets") and "stringData" in obj:
        data = obj.get("data") or {}
        for key, value in (obj.pop("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data


def _set_defaults(rtype: ResourceType, obj: JsonDict) -> None:
    """Server-side defaults on create, for the few kinds whose status matters to clients."""
    meta = obj["metadata"]
    if rtype.store_key == NAMESPACES_KEY:
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj["status"] = {"phase": "Active"}
    elif rtype.store_key == ("", "pods"):
        obj["status"] = {"phase": "Pending"}
    elif rtype.store_key == CRD_KEY:
        _validate_crd(rtype, obj)
        obj["status"] = _crd_status(obj)


def _validate_crd(rtype: ResourceType, crd: JsonDict) -> None:
    spec, name = crd.get("spec") or {}, crd["metadata"]["name"]
    names = spec.get("names") or {}
    if name != f"{names.get('plural')}.{spec.get('group')}":
        raise invalid(rtype, name, 'metadata.name: Invalid value: must be spec.names.plural+"."+spec.group')
    if not names.get("kind") or not spec.get("versions"):
        raise invalid(rtype, name, "spec: Required value: names.kind and versions are required")
    if spec.get("scope", "Namespaced") not in ("Namespaced", "Cluster"):
        raise invalid(rtype, name, "spec.scope: Unsupported value: must be Namespaced or Cluster")


def _crd_status(crd: JsonDict) -> JsonDict:
    now = rfc3339_now()
    spec = crd["spec"]
    stored = [v["name"] for v in spec["versions"] if v.get("storage")] or [spec["versions"][0]["name"]]
    return {
        "acceptedNames": copy.deepcopy(spec["names"]),
        "storedVersions": stored,
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": now,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": now,
            },
        ],
    }


def _copy_key(source: JsonDict, target: JsonDict, key: str) -> None:
    if key in source:
        target[key] = copy.deepcopy(source[key])
    else:
        target.pop(key, None)


def _spec_part(rtype: ResourceType, obj: JsonDict) -> JsonDict:
    """What generation tracks: everything but metadata (and status if it is a subresource)."""
    ignored = {"metadata", "status"} if rtype.status else {"metadata"}
    return {key: value for key, value in obj.items() if key not in ignored}


def _check_finalizers(rtype: ResourceType, old: JsonDict, new: JsonDict) -> None:
    if not being_deleted(old):
        return
    added = set(new["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
    if added:
        raise invalid(
            rtype,
            old["metadata"]["name"],
            "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
        )


# --------------------------------------------------------------------------------------------------
# Scale subresource (autoscaling/v1 Scale).
# --------------------------------------------------------------------------------------------------


def scale_view(rtype: ResourceType, obj: JsonDict) -> JsonDict:
    assert rtype.scale is not None
    meta = obj["metadata"]
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in meta
        },
        "spec": {"replicas": dig(obj, rtype.scale.spec_replicas) or 0},
        "status": {
            "replicas": dig(obj, rtype.scale.status_replicas) or 0,
            "selector": _scale_selector(rtype, obj),
        },
    }


def _scale_selector(rtype: ResourceType, obj: JsonDict) -> str:
    assert rtype.scale is not None
    if rtype.scale.label_selector is not None:
        return str(dig(obj, rtype.scale.label_selector) or "")
    labels = dig(obj, ".spec.selector.matchLabels") or {}
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def scale_change(rtype: ResourceType, change: Callable[[JsonDict], Any]) -> Callable[[JsonDict], JsonDict]:
    """Turn a change of the Scale view into a change of the object's replicas only."""
    assert rtype.scale is not None
    spec_path = rtype.scale.spec_replicas

    def apply(obj: JsonDict) -> JsonDict:
        scale = change(scale_view(rtype, obj))
        if not isinstance(scale, dict) or not isinstance(dig(scale, ".spec.replicas"), int):
            raise invalid(rtype, obj["metadata"]["name"], "spec.replicas: Required value")
        put(obj, spec_path, scale["spec"]["replicas"])
        obj["metadata"]["resourceVersion"] = (
            dig(scale, ".metadata.resourceVersion") or obj["metadata"]["resourceVersion"]
        )
        return obj

    return apply


# --------------------------------------------------------------------------------------------------
# HTTP: routing, discovery, verbs, watch streams.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _subpaths(parts: list[str]) -> tuple[str | None, list[str]]:
    """Split path segments after the group/version into (namespace, [plural, name, subresource])."""
    if parts[:1] == ["namespaces"] and len(parts) >= 3 and parts[2] not in ("status", "finalize"):
        return parts[1], parts[2:]
    return None, parts


def parse_target(store: Store, path: str) -> Target | None:
    """Resolve a resource URL; None for non-resource URLs (discovery and others)."""
    parts = [part for part in path.split("/") if part]
    if parts[:2] == ["api", "v1"] and len(parts) > 2:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) > 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace, rest = _subpaths(rest)
    if len(rest) > 3:
        raise unknown_resource()
    rtype = store.lookup(group, version, rest[0])
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else None
    if (namespace is not None and not rtype.namespaced) or (rtype.namespaced and namespace is None and name):
        raise unknown_resource()
    if subresource is not None and subresource not in _subresources(rtype):
        raise unknown_resource()
    return Target(rtype, namespace, name, subresource)


def _subresources(rtype: ResourceType) -> list[str]:
    return (["status"] if rtype.status else []) + (["scale"] if rtype.scale else [])


def resource_entries(rtype: ResourceType) -> list[JsonDict]:
    main: JsonDict = {
        "name": rtype.plural,
        "singularName": rtype.singular,
        "namespaced": rtype.namespaced,
        "kind": rtype.kind,
        "verbs": list(rtype.verbs),
    }
    if rtype.short_names:
        main["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        main["categories"] = list(rtype.categories)
    entries = [main]
    if rtype.status:
        entries.append(
            {
                "name": f"{rtype.plural}/status",
                "singularName": "",
                "namespaced": rtype.namespaced,
                "kind": rtype.kind,
                "verbs": SUBRESOURCE_VERBS,
            }
        )
    if rtype.scale:
        entries.append(
            {
                "name": f"{rtype.plural}/scale",
                "singularName": "",
                "namespaced": rtype.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": SUBRESOURCE_VERBS,
            }
        )
    return entries


def _group_versions(store: Store) -> dict[str, list[str]]:
    groups: dict[str, set[str]] = {}
    for group, version, _ in store.types:
        if group:
            groups.setdefault(group, set()).add(version)
    return {group: sorted(versions, key=version_priority) for group, versions in sorted(groups.items())}


def _api_group(group: str, versions: list[str]) -> JsonDict:
    entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def _openapi_v2(request: aiohttp.web.Request) -> aiohttp.web.Response:
    """An OpenAPI v2 document without definitions: kubectl's client-side validation then checks nothing.

    kubectl asks for (and always parses) protobuf; an empty message is a valid, empty document.
    """
    if "protobuf" in request.headers.get("Accept", ""):
        content_type = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"  # what real servers send
        return aiohttp.web.Response(body=b"", content_type=content_type)
    return _json(EMPTY_OPENAPI_V2)


def _json(body: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.json_response(body, status=status)


def _render(rtype: ResourceType, obj: JsonDict) -> JsonDict:
    """The object as served under the requested version (no conversion, apiVersion only)."""
    return obj if obj.get("apiVersion") == rtype.api_version else {**obj, "apiVersion": rtype.api_version}


def _success(rtype: ResourceType, obj: JsonDict) -> JsonDict:
    details = _details(rtype, obj["metadata"]["name"]) | {"uid": obj["metadata"]["uid"]}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def _is_true(value: str | None) -> bool:
    return value in ("true", "1", "True")


class ApiHandler:
    """The aiohttp request handler: one catch-all route, dispatched by URL shape and method."""

    def __init__(self, store: Store, bookmark_interval: float = 30.0) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval

    async def __call__(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        try:
            return await self._dispatch(request)
        except ApiError as e:
            return _json(e.status(), e.code)
        except Exception as e:
            logger.exception("Unexpected failure in %s %s", request.method, request.path_qs)
            return _json(ApiError(500, "InternalError", f"{type(e).__name__}: {e}").status(), 500)

    async def _dispatch(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        discovery = self._discovery(request)
        if discovery is not None:
            return discovery
        target = parse_target(self.store, request.path)
        if target is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        method, query = request.method, request.query
        if method == "GET" and _is_true(query.get("watch")):
            return await self._watch(request, target)
        if method == "GET":
            return self._list(target, query) if target.name is None else self._get(target)
        if method == "POST" and target.name is None:
            return await self._create(request, target)
        if method == "DELETE":
            return await (self._delete(request, target) if target.name else self._delete_collection(request, target))
        if method in ("PUT", "PATCH") and target.name is not None:
            return await self._update(request, target)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    # ---- discovery ----

    def _discovery(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse | None:
        parts = [part for part in request.path.split("/") if part]
        if request.method != "GET":
            return None
        if parts in (["healthz"], ["readyz"], ["livez"]):
            return aiohttp.web.Response(text="ok")
        if parts == ["openapi", "v2"]:
            return _openapi_v2(request)
        if parts == ["openapi", "v3"]:
            return _json({"paths": {}})
        if parts == ["version"]:
            return _json(SERVER_VERSION)
        if parts == ["api"]:
            return _json(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}],
                }
            )
        if parts == ["api", "v1"]:
            return _json(self._resource_list("", "v1"))
        if parts == ["apis"]:
            groups = [_api_group(g, v) for g, v in _group_versions(self.store).items()]
            return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if parts[:1] == ["apis"] and len(parts) == 2:
            versions = _group_versions(self.store).get(parts[1])
            if versions is None:
                raise unknown_resource()
            return _json({"kind": "APIGroup", "apiVersion": "v1", **_api_group(parts[1], versions)})
        if parts[:1] == ["apis"] and len(parts) == 3:
            return _json(self._resource_list(parts[1], parts[2]))
        return None

    def _resource_list(self, group: str, version: str) -> JsonDict:
        types = [t for (g, v, _), t in sorted(self.store.types.items()) if (g, v) == (group, version)]
        if not types:
            raise unknown_resource()
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": types[0].api_version,
            "resources": [entry for rtype in types for entry in resource_entries(rtype)],
        }

    # ---- reading ----

    def _filter(self, target: Target, query: Mapping[str, str]) -> ObjectFilter:
        try:
            labels = parse_label_selector(query["labelSelector"]) if query.get("labelSelector") else None
            fields = parse_field_selector(query.get("fieldSelector", ""), target.rtype.field_labels)
        except ValueError as e:
            raise bad_request(str(e)) from None
        if target.name is not None:
            fields.append(("metadata.name", True, target.name))
        return ObjectFilter(namespace=target.namespace, labels=labels, fields=tuple(fields))

    def _get(self, target: Target) -> aiohttp.web.Response:
        assert target.name is not None
        obj = self.store.get(target.rtype, target.namespace, target.name)
        if target.subresource == "scale":
            return _json(scale_view(target.rtype, obj))
        return _json(_render(target.rtype, obj))

    def _list(self, target: Target, query: Mapping[str, str]) -> aiohttp.web.Response:
        if target.subresource is not None:
            raise unknown_resource()
        items = self.store.select(target.rtype, self._filter(target, query))
        after = _decode_continue(query.get("continue"))
        if after is not None:
            items = [obj for obj in items if _sort_key(obj) > after]
        metadata: JsonDict = {"resourceVersion": str(self.store.revision)}
        limit = int(query.get("limit") or 0)
        if 0 < limit < len(items):
            metadata["continue"] = _encode_continue(items[limit - 1])
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return _json(
            {
                "kind": f"{target.rtype.kind}List",
                "apiVersion": target.rtype.api_version,
                "metadata": metadata,
                "items": [_render(target.rtype, obj) for obj in items],
            }
        )

    # ---- writing ----

    async def _body(self, request: aiohttp.web.Request) -> Any:
        raw = await request.read()
        if not raw.strip():
            return None
        try:
            if request.content_type == "application/apply-patch+yaml":
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as e:
            raise bad_request(f"the request body is not valid: {e}") from None

    async def _create(self, request: aiohttp.web.Request, target: Target) -> aiohttp.web.Response:
        body = await self._body(request)
        obj = self.store.create(target.rtype, target.namespace, body, dry_run=_dry_run(request.query))
        return _json(_render(target.rtype, obj), 201)

    async def _update(self, request: aiohttp.web.Request, target: Target) -> aiohttp.web.Response:
        assert target.name is not None
        body = await self._body(request)
        if request.method == "PATCH" and request.content_type == "application/apply-patch+yaml":
            return self._apply(target, body, _dry_run(request.query))
        change = _replacement(body) if request.method == "PUT" else _patcher(target.rtype, request.content_type, body)
        subresource = target.subresource
        if subresource == "scale":
            change, subresource = scale_change(target.rtype, change), None
        obj = self.store.update(
            target.rtype,
            target.namespace,
            target.name,
            change,
            subresource=subresource,
            dry_run=_dry_run(request.query),
        )
        if target.subresource == "scale":
            return _json(scale_view(target.rtype, obj))
        return _json(_render(target.rtype, obj))

    def _apply(self, target: Target, body: Any, dry_run: bool) -> aiohttp.web.Response:
        """Server-side apply, approximated: create if absent, else a merge patch (no field ownership)."""
        assert target.name is not None
        key = self.store.key(target.rtype, target.namespace, target.name)
        if key not in self.store.objects and target.subresource is None:
            obj = self.store.create(target.rtype, target.namespace, body, dry_run=dry_run)
            return _json(_render(target.rtype, obj), 201)
        obj = self.store.update(
            target.rtype,
            target.namespace,
            target.name,
            lambda o: merge_patch(o, body),
            subresource=target.subresource,
            dry_run=dry_run,
        )
        return _json(_render(target.rtype, obj))

    async def _delete(self, request: aiohttp.web.Request, target: Target) -> aiohttp.web.Response:
        assert target.name is not None
        if target.subresource is not None:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        options = _delete_options(request.query, await self._body(request))
        obj, gone = self.store.delete(target.rtype, target.namespace, target.name, options)
        if not gone:
            return _json(_render(target.rtype, obj), 202)
        if target.rtype.custom or target.rtype.store_key == ("", "pods"):
            return _json(_render(target.rtype, obj))
        return _json(_success(target.rtype, obj))

    async def _delete_collection(self, request: aiohttp.web.Request, target: Target) -> aiohttp.web.Response:
        options = _delete_options(request.query, await self._body(request))
        for obj in self.store.select(target.rtype, self._filter(target, request.query)):
            meta = obj["metadata"]
            if self.store.key(target.rtype, meta.get("namespace"), meta["name"]) in self.store.objects:
                self.store.delete(target.rtype, meta.get("namespace"), meta["name"], options)
        return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})

    # ---- watching ----

    async def _watch(self, request: aiohttp.web.Request, target: Target) -> aiohttp.web.StreamResponse:
        query = request.query
        object_filter = self._filter(target, query)
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        bookmarks = _is_true(query.get("allowWatchBookmarks"))
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            watcher, initial = self.store.open_watch(
                target.rtype,
                object_filter,
                query.get("resourceVersion"),
                initial_state=query.get("sendInitialEvents") != "false",
            )
        except ApiError as e:  # e.g. 410 Expired: a real server streams it as an ERROR event
            await response.prepare(request)
            await response.write(json.dumps({"type": "ERROR", "object": e.status()}).encode() + b"\n")
            return response
        try:
            await response.prepare(request)
            for event_type, obj in initial:
                await self._send(response, target.rtype, event_type, obj)
            if _is_true(query.get("sendInitialEvents")) and bookmarks:
                await self._send_bookmark(response, target.rtype, initial_events_end=True)
            await self._pump(response, watcher, timeout, bookmarks)
        except ConnectionError:
            pass  # the client went away
        finally:
            self.store.close_watch(watcher)
        return response

    async def _pump(
        self, response: aiohttp.web.StreamResponse, watcher: Watcher, timeout: float | None, bookmarks: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        while True:
            wait = self.bookmark_interval if bookmarks else None
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                wait = remaining if wait is None else min(wait, remaining)
            try:
                item = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if bookmarks and (deadline is None or loop.time() < deadline):
                    await self._send_bookmark(response, watcher.rtype)
                continue
            if item is None:
                return
            await self._send(response, watcher.rtype, *item)

    @staticmethod
    async def _send(response: aiohttp.web.StreamResponse, rtype: ResourceType, event_type: str, obj: JsonDict) -> None:
        line = json.dumps({"type": event_type, "object": _render(rtype, obj)})
        await response.write(line.encode() + b"\n")

    async def _send_bookmark(
        self, response: aiohttp.web.StreamResponse, rtype: ResourceType, initial_events_end: bool = False
    ) -> None:
        metadata: JsonDict = {"resourceVersion": str(self.store.revision)}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        bookmark = {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": metadata}
        await self._send(response, rtype, "BOOKMARK", bookmark)


def _sort_key(obj: JsonDict) -> tuple[str, str]:
    return (obj["metadata"].get("namespace") or "", obj["metadata"]["name"])


def _encode_continue(obj: JsonDict) -> str:
    return base64.urlsafe_b64encode(json.dumps(_sort_key(obj)).encode()).decode()


def _decode_continue(token: str | None) -> tuple[str, str] | None:
    if not token:
        return None
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise bad_request("invalid continue token") from None
    return (str(namespace), str(name))


def _dry_run(query: Mapping[str, str]) -> bool:
    return query.get("dryRun") == "All"


def _delete_options(query: Mapping[str, str], body: Any) -> DeleteOptions:
    body = body if isinstance(body, dict) else {}
    preconditions = body.get("preconditions") or {}
    dry_run = body.get("dryRun") or []
    return DeleteOptions(
        propagation=body.get("propagationPolicy") or query.get("propagationPolicy") or "Background",
        uid=preconditions.get("uid"),
        resource_version=preconditions.get("resourceVersion"),
        dry_run=_dry_run(query) or "All" in dry_run,
    )


def _replacement(body: Any) -> Callable[[JsonDict], Any]:
    return lambda _: copy.deepcopy(body)


def _patcher(rtype: ResourceType, content_type: str, body: Any) -> Callable[[JsonDict], Any]:
    if content_type == "application/merge-patch+json":
        return lambda obj: merge_patch(obj, body)
    if content_type == "application/strategic-merge-patch+json" and not rtype.custom:
        return lambda obj: strategic_merge_patch(obj, body)
    if content_type == "application/json-patch+json":

        def apply_json_patch(obj: JsonDict) -> Any:
            try:
                return json_patch(obj, body)
            except PatchError as e:
                raise ApiError(422, "Invalid", str(e)) from None

        return apply_json_patch
    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")


def build_app(store: Store, bookmark_interval: float = 30.0) -> aiohttp.web.Application:
    app = aiohttp.web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", ApiHandler(store, bookmark_interval))

    async def end_watches(_: aiohttp.web.Application) -> None:
        store.close_all_watches()

    app.on_shutdown.append(end_watches)
    return app


# --------------------------------------------------------------------------------------------------
# Command line: python -m tests.support.apiserver --port N --crd FILE ...
# --------------------------------------------------------------------------------------------------


def load_crds(store: Store, paths: Iterable[Path]) -> None:
    crd_type = store.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc.get("kind") != "CustomResourceDefinition":
                raise SystemExit(f"{path}: not a CustomResourceDefinition: {doc.get('kind')!r}")
            store.create(crd_type, None, doc)


async def serve(store: Store, host: str, port: int, bookmark_interval: float) -> None:
    runner = aiohttp.web.AppRunner(build_app(store, bookmark_interval), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, host, port, shutdown_timeout=1.0)
    await site.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    print(f"Kubernetes API emulator serving on http://{host}:{port}", flush=True)
    try:
        await stopping.wait()
    finally:
        store.close_all_watches()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.apiserver", description="A Kubernetes API server emulator for tests."
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--crd", type=Path, action="append", default=[], help="a CRD YAML file (repeatable)")
    parser.add_argument(
        "--bookmark-interval",
        type=float,
        default=30.0,
        help="seconds between BOOKMARK events on watches that allow them",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store()
    try:
        load_crds(store, args.crd)
    except ApiError as e:
        raise SystemExit(f"cannot load CRDs: {e.message}") from None
    asyncio.run(serve(store, args.host, args.port, args.bookmark_interval))


# --------------------------------------------------------------------------------------------------
# Test harness: start the emulator as a subprocess with a kubeconfig, stop it by PID.
# --------------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]
_RUNNING: set[ApiServer] = set()


@dataclass(eq=False)
class ApiServer:
    """A running emulator subprocess, with its URL and a kubeconfig file for clients."""

    url: str
    port: int
    kubeconfig: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client configured from this server's kubeconfig."""
        import kubernetes.config

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by PID, then SIGKILL if it does not exit in time. Idempotent."""
        _RUNNING.discard(self)
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop(timeout=2.0)


atexit.register(_stop_all)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(path: Path, url: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "emulator", "user": {"token": "emulator-dummy-token"}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "emulator", "namespace": "default"},
            }
        ],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once /readyz answers; False if the process exited first (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1.0) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise TimeoutError(f"the API emulator at {url} did not become ready in {timeout}s")


def start_apiserver(
    workdir: Path, crd_files: list[Path], *, timeout: float = 30.0, bookmark_interval: float = 30.0
) -> ApiServer:
    """Start the emulator on a free port in its own process group; wait until it is ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        server = _spawn(workdir, crd_files, bookmark_interval)
        try:
            if _wait_ready(server.url, server.process, timeout):
                write_kubeconfig(server.kubeconfig, server.url)
                return server
        except BaseException:
            server.stop()
            raise
        server.stop()
    raise RuntimeError(f"the API emulator did not start; see {server.log_path}")


def _spawn(workdir: Path, crd_files: list[Path], bookmark_interval: float) -> ApiServer:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "tests.support.apiserver",
        "--port",
        str(port),
        "--bookmark-interval",
        str(bookmark_interval),
    ]
    for crd in crd_files:
        command += ["--crd", str(Path(crd).resolve())]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    log_path = workdir / f"apiserver-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = ApiServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        kubeconfig=workdir / f"kubeconfig-{port}.yaml",
        log_path=log_path,
        process=process,
    )
    _RUNNING.add(server)
    return server


if __name__ == "__main__":
    main()
