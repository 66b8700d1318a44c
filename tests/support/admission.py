"""Admission of Ferry's custom resources by the real API server (the ``kube`` fixture's kube-apiserver).

Every check goes through the server's own structural-schema validation, defaulting, pruning and CEL
(``x-kubernetes-validations``), with the CRDs in crds/ as the ``kube`` fixture applied them::

    with admission(kube.control_plane.api_client()) as server:   # a namespace of its own, deleted after
        server.create(manifest)              # dry-run create: Answer(errors, object, warnings)
        server.update(old, new)              # old created for real, then new as a dry-run update of it
        server.update(old, new, subresource="status")

Errors are the server's causes as kubectl prints them, ``<field>: <message>`` (for instance
``spec.taskName: Invalid value: "abc": taskName must be 4-64 characters of letters, digits, '-' and '_'``),
or the server's message alone when it gives no causes (a strict-decoding refusal of an unknown field).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ferry.registry import KINDS
from kubernetes import client

__all__ = ["BLOCKED", "Admission", "Answer", "admission"]

FieldValidation = Literal["Strict", "Warn", "Ignore"]
PLURALS = {kind.kind: kind.plural for kind in KINDS}
# What the server adds when schema errors kept it from running the CEL rules.
BLOCKED = (
    "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)
_WARNING = re.compile(r'\d{3} \S+ "((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Answer:
    """The server's answer to one request: its refusals, or the object it would store and its warnings."""

    errors: list[str]
    object: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def admitted(self) -> bool:
        return not self.errors


class Admission:
    """Requests to the API server for custom resources in one namespace."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api_client)

    def create(
        self, body: dict[str, Any], *, dry_run: bool = True, field_validation: FieldValidation = "Strict"
    ) -> Answer:
        """Create body in this namespace (by default a dry run: nothing is stored). Strict is kubectl's default."""
        group, version, plural = _resource(body)
        kwargs: dict[str, Any] = {"field_validation": field_validation}
        if dry_run:
            kwargs["dry_run"] = "All"
        return _answer(
            lambda: self.custom.create_namespaced_custom_object_with_http_info(
                group, version, self.namespace, plural, body, **kwargs
            )
        )

    def errors(self, body: dict[str, Any], *, field_validation: FieldValidation = "Strict") -> list[str]:
        """The server's refusals of a dry-run create of body; [] if it would be stored."""
        return self.create(body, field_validation=field_validation).errors

    def update(
        self,
        old: dict[str, Any],
        new: dict[str, Any],
        *,
        subresource: Literal["status"] | None = None,
        field_validation: FieldValidation = "Strict",
    ) -> Answer:
        """Create old for real (under a fresh name), then send new as a dry-run update (PUT) of that object.

        Transition rules (``oldSelf``) run only on updates of a stored object, hence the real create."""
        name = f"{old['metadata']['name']}-{uuid.uuid4().hex[:6]}"
        created = self.create(_named(old, name), dry_run=False)
        if not created.admitted:
            raise AssertionError(f"the old object was refused: {created.errors}")
        body = _named(new, name)
        body["metadata"]["resourceVersion"] = created.object["metadata"]["resourceVersion"]
        group, version, plural = _resource(body)
        replace = (
            self.custom.replace_namespaced_custom_object_status_with_http_info
            if subresource == "status"
            else self.custom.replace_namespaced_custom_object_with_http_info
        )
        return _answer(
            lambda: replace(
                group, version, self.namespace, plural, name, body, dry_run="All", field_validation=field_validation
            )
        )


def _resource(body: dict[str, Any]) -> tuple[str, str, str]:
    group, version = body["apiVersion"].split("/")
    return group, version, PLURALS[body["kind"]]


def _named(body: dict[str, Any], name: str) -> dict[str, Any]:
    renamed = copy.deepcopy(body)
    renamed["metadata"] = {**renamed.get("metadata", {}), "name": name}
    return renamed


def _answer(call: Callable[[], tuple[Any, int, Any]]) -> Answer:
    try:
        data, _, headers = call()
    except client.ApiException as err:
        return Answer(errors=_refusals(err))
    return Answer(errors=[], object=data, warnings=_warnings(headers.get("Warning", "")))


def _refusals(err: client.ApiException) -> list[str]:
    if err.status not in (400, 422):  # not a refusal of the object: a broken test or server
        raise err
    status = json.loads(err.body)
    causes = (status.get("details") or {}).get("causes") or []
    if not causes:
        return [str(status["message"])]
    return [f"{cause.get('field', '<nil>')}: {cause['message']}" for cause in causes]


def _warnings(header: str) -> list[str]:
    return [re.sub(r"\\(.)", r"\1", text) for text in _WARNING.findall(header)]


@contextlib.contextmanager
def admission(api_client: client.ApiClient) -> Iterator[Admission]:
    """An :class:`Admission` in a new namespace, deleted (with what was created in it) afterwards."""
    namespace = f"crd-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        yield Admission(api_client, namespace)
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(namespace)
