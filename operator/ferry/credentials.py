"""Secret values a worker needs, by role, and where they come from.

The operator maps each role to a `secretKeyRef` env var in the worker Deployment; `ferry run` reads the
same references from Secret manifests given on the command line. Values are wrapped so that a stray
`repr` or log line can never print them.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ferry.errors import TaskError

ENV_PREFIX = "FERRY_SECRET_"


@dataclass(frozen=True)
class SecretRef:
    """One key of one Secret in the task's namespace."""

    secret: str
    key: str


class Sensitive:
    """A secret value; only `reveal()` gives it out."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Sensitive(****)"

    __str__ = __repr__


def env_name(role: str) -> str:
    return ENV_PREFIX + role


def from_environment(roles: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, Sensitive]:
    """In a worker pod: the kubelet resolved each role's secretKeyRef into an env var."""
    environ = os.environ if environ is None else environ
    found = {}
    for role in roles:
        value = environ.get(env_name(role))
        if value is None:
            raise TaskError("SecretNotFound", f"the worker has no value for {role}: env {env_name(role)} is unset")
        found[role] = Sensitive(value)
    return found


def _decoded(secret: str, key: str, value: object) -> str:
    try:
        return base64.b64decode(str(value), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise TaskError(
            "InvalidSecret",
            f"Secret {secret!r} key {key!r}: values under data must be base64; put plain text under stringData",
        ) from None


def from_secret_manifests(
    refs: Mapping[str, SecretRef], manifests: Iterable[Mapping[str, Any]]
) -> dict[str, Sensitive]:
    """For `ferry run`: resolve references against Secret objects read from YAML (data or stringData)."""
    secrets: dict[str, dict[str, str]] = {}
    for doc in manifests:
        if doc.get("kind") != "Secret":
            continue
        name = (doc.get("metadata") or {}).get("name")
        if not name:
            raise TaskError("InvalidSecret", "a Secret among the manifests has no metadata.name")
        values = {k: _decoded(name, k, v) for k, v in (doc.get("data") or {}).items()}
        values.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
        secrets[name] = values
    found = {}
    for role, ref in refs.items():
        if ref.secret not in secrets:
            raise TaskError(
                "SecretNotFound",
                f"Secret {ref.secret!r} is not among the manifests given: add it with another -f FILE",
            )
        if ref.key not in secrets[ref.secret]:
            raise TaskError("SecretKeyNotFound", f"Secret {ref.secret!r} has no key {ref.key!r}")
        found[role] = Sensitive(secrets[ref.secret][ref.key])
    return found
