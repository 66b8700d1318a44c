"""Which spec a task's workers run: the current one once the operator can honour it, else the last one it accepted.

"Failed, but the old configuration keeps running": a change the operator can tell cannot be honoured is held back.
The cases are a Secret or key the new spec names that does not exist, a value the CRD and the webhook let
through that the model refuses (`InvalidSpec`), and, for kinds with immutable specs, a change to a field that may
not change (`SpecImmutable`). The workers keep running the last accepted spec, and the task is Failed with the
reason and what to fix. Once fixed (the Secret created, the value corrected), the new spec is accepted and rolls
out as any change does.

The accepted spec is recorded in the task's `ferry.dev/accepted-spec` annotation (the spec without `state`), each
time the operator accepts a spec. Pausing and scaling (`spec.state`, `spec.replicas`) never wait for a fix: they
apply to the accepted spec at once (for kinds with immutable specs, only the fields they allow to change).

A task that never had a spec accepted has nothing to keep running: it is Failed as before (no worker for a
missing Secret, no Deployment change for an invalid spec). What only the brokers can tell (a target topic that
does not exist, refused credentials) is checked by a Job before a change rolls out (ferry.control.preflight, which
holds the change back the same way, with `hold_back`).

Other tasks of the kind (per-instance limits, one task per consumer group, replication loops, unique task names)
see a task as its workers run it (`running_body`): a change held back does not claim what the new spec names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ferry.api.base import TaskSpec
from ferry.errors import TaskError
from ferry.tasks import KindPlugin, Task, parse_task

ACCEPTED_SPEC_ANNOTATION = "ferry.dev/accepted-spec"
# Spec fields a held-back change still applies at once: pausing and scaling never wait for a fix.
LIVE_FIELDS = frozenset({"state", "replicas"})

Secrets = Mapping[str, set[str] | None]


def recorded(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the annotation records of an accepted spec: all of it but `state`."""
    return {k: v for k, v in spec.items() if k != "state"}


def accepted_doc(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The last accepted spec as recorded (None if none was, or the annotation is not a JSON object)."""
    saved = ((body.get("metadata") or {}).get("annotations") or {}).get(ACCEPTED_SPEC_ANNOTATION)
    try:
        loaded = json.loads(saved) if saved else None
    except ValueError:
        return None
    return loaded if isinstance(loaded, dict) else None


def live_fields(plugin: KindPlugin) -> frozenset[str]:
    mutable = plugin.definition.mutable_fields
    return LIVE_FIELDS if mutable is None else LIVE_FIELDS & (mutable | {"state"})


def running_doc(plugin: KindPlugin, accepted: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The accepted spec with the current spec's live fields (state, replicas)."""
    return {**accepted, **{k: current[k] for k in live_fields(plugin) if k in current}}


def running_body(plugin: KindPlugin, body: dict[str, Any]) -> dict[str, Any]:
    """A task as its workers run it: with the accepted spec when one is recorded (a held-back change claims
    nothing yet), else as written."""
    accepted = accepted_doc(body)
    if accepted is None:
        return body
    return {**body, "spec": running_doc(plugin, accepted, body.get("spec") or {})}


def _immutable_part(spec: Mapping[str, Any], mutable: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in mutable}


def accepted_spec(plugin: KindPlugin, body: dict[str, Any]) -> tuple[dict[str, Any], TaskError | None]:
    """For kinds with immutable specs: the spec to run, the accepted one if a field that may not change did (with
    the current mutable fields), and the error naming those fields; else the current spec and None."""
    spec = dict(body.get("spec") or {})
    mutable = plugin.definition.mutable_fields
    saved = accepted_doc(body)
    if mutable is None or saved is None:
        return spec, None
    accepted, current = _immutable_part(saved, mutable), _immutable_part(spec, mutable)
    if current == accepted:
        return spec, None
    changed = sorted(k for k in set(accepted) | set(current) if accepted.get(k) != current.get(k))
    fields = ", ".join(f"spec.{k}" for k in changed)
    error = TaskError(
        "SpecImmutable",
        f"{fields} changed after creation, but only spec.state may change: revert the change, or create a "
        f"new {plugin.definition.kind}",
    )
    return {**accepted, **{k: spec[k] for k in mutable if k in spec}}, error


def check_secrets(plugin: KindPlugin, spec: TaskSpec, secrets: Secrets) -> TaskError | None:
    """The first Secret, or key of one, the spec names that does not exist (by the keys the operator read)."""
    for role, ref in sorted(plugin.secret_refs(spec).items()):
        keys = secrets.get(ref.secret)
        if keys is None:
            return TaskError(
                "SecretNotFound",
                f"Secret {ref.secret!r} (for {role.lower()}) does not exist in this namespace: create it",
            )
        if ref.key not in keys:
            return TaskError(
                "SecretKeyNotFound",
                f"Secret {ref.secret!r} has no key {ref.key!r} (for {role.lower()}): add it, or name the key the "
                "Secret has",
            )
    return None


@dataclass(frozen=True)
class Choice:
    """The spec to run, decided before anything else."""

    task: Task | None  # what the workers run; None when nothing parses
    # Why the current spec is not what runs (the workers run the accepted one), or why nothing parses.
    held: TaskError | None = None
    record: dict[str, Any] | None = None  # the annotation to write: the current spec was just accepted


def _parse(plugin: KindPlugin, body: dict[str, Any], spec: dict[str, Any]) -> Task:
    return parse_task({**body, "spec": spec}, {plugin.definition.kind: plugin})


def choose(plugin: KindPlugin, body: dict[str, Any], secrets: Secrets) -> Choice:
    """The current spec if it parses, may change, and its Secrets exist (then recorded as accepted); else the
    last accepted spec, with the reason the current one is held back; else (nothing accepted yet) the current
    spec, whose missing Secrets the caller reports, or no task at all when it does not parse."""
    current = dict(body.get("spec") or {})
    accepted = accepted_doc(body)
    _, problem = accepted_spec(plugin, body)
    candidate: Task | None = None
    if problem is None:
        try:
            candidate = _parse(plugin, body, current)
        except TaskError as err:
            problem = err
        else:
            problem = check_secrets(plugin, candidate.spec, secrets)
            if problem is None:
                record = recorded(current)
                return Choice(candidate, record=None if record == accepted else record)
    kept = hold_back(plugin, body, problem) if problem is not None else None
    if kept is not None:
        return kept
    if candidate is not None:  # never accepted: its missing Secrets are reported as they always were
        return Choice(candidate)
    return Choice(None, held=problem)


def hold_back(plugin: KindPlugin, body: dict[str, Any], problem: TaskError) -> Choice | None:
    """The last accepted spec to run instead of the current one, which `problem` holds back; None when no spec was
    accepted, the current one is the accepted one, or the accepted one parses no more."""
    current = dict(body.get("spec") or {})
    accepted = accepted_doc(body)
    if accepted is None or accepted == recorded(current):
        return None
    for doc in (running_doc(plugin, accepted, current), {**accepted, "state": current.get("state")}):
        try:
            return Choice(_parse(plugin, body, {k: v for k, v in doc.items() if v is not None}), held=problem)
        except TaskError:
            continue
    return None


def secret_names(plugin: KindPlugin, body: dict[str, Any]) -> set[str]:
    """The Secrets the operator must look at: those of the current spec and of the accepted one."""
    names: set[str] = set()
    current = dict(body.get("spec") or {})
    accepted = accepted_doc(body)
    docs = [current] + ([running_doc(plugin, accepted, current)] if accepted is not None else [])
    for doc in docs:
        try:
            spec = plugin.definition.spec_model.model_validate(doc)
        except ValueError:
            continue
        names |= {ref.secret for ref in plugin.secret_refs(spec).values()}
    return names
