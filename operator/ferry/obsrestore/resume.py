"""Where an ObsRestoreTask keeps its resume point (ferry.reporting.ResumeStore): the task's `status.resumePoint`
under the operator, a JSON file under `ferry run`, memory in tests.

A save is a JSON merge patch (RFC 7386) of the point: the totals and the entries of the partitions that moved, so
a status patch stays small however many partitions the restore has. The store applies it to what it holds.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ferry.errors import TaskError
from ferry.reporting import API_TIMEOUT


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` applied to `base` as a JSON merge patch: nested objects merged, None removes a field."""
    result = dict(base)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class MemoryResume:
    """Tests: the point lives as long as the object."""

    def __init__(self, point: dict[str, Any] | None = None) -> None:
        self.point = point
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.point)

    def save(self, patch: dict[str, Any]) -> None:
        self.point = merge(self.point or {}, patch)
        self.saves += 1


class FileResume:
    """`ferry run`: the point in a JSON file, replaced atomically (written beside it, synced, renamed), so a
    process killed while saving leaves the previous point or the new one, never half of one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.point: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            self.point = None
            return None
        except OSError as err:
            raise TaskError("StatusUnavailable", f"cannot read the state file {self.path}: {err.strerror}") from None
        try:
            loaded = json.loads(text)
        except ValueError:
            raise TaskError(
                "StatusUnavailable",
                f"the state file {self.path} is not JSON: remove it to restore from the start, or fix it",
            ) from None
        self.point = loaded.get("resumePoint") if isinstance(loaded, dict) else None
        return copy.deepcopy(self.point)

    def save(self, patch: dict[str, Any]) -> None:
        point = merge(self.point or {}, patch)
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump({"resumePoint": point}, out, indent=1, sort_keys=True)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            raise TaskError("StatusUnavailable", f"cannot write the state file {self.path}: {err.strerror}") from None
        self.point = point


class StatusResume:
    """Under the operator: the task's `status.resumePoint`, read and merge-patched through the status subresource
    (the worker's Role allows get and patch on its own task's status, nothing else)."""

    def __init__(self, api: Any, plural: str, namespace: str, name: str) -> None:
        self.api = api  # kubernetes.client.CustomObjectsApi
        self.plural = plural
        self.namespace = namespace
        self.name = name

    def load(self) -> dict[str, Any] | None:
        from ferry.api import GROUP, VERSION

        try:
            body = self.api.get_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, self.plural, self.name, _request_timeout=API_TIMEOUT
            )
        except Exception as err:
            raise TaskError(
                "StatusUnavailable",
                f"cannot read the task's status for its resume point ({type(err).__name__}): check the worker's "
                "ServiceAccount and the API server",
            ) from None
        point = (body.get("status") or {}).get("resumePoint")
        return point if isinstance(point, dict) else None

    def save(self, patch: dict[str, Any]) -> None:
        from ferry.api import GROUP, VERSION

        body = {"status": {"resumePoint": patch}}
        try:
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, self.plural, self.name, body, _request_timeout=API_TIMEOUT
            )
        except Exception as err:
            raise TaskError(
                "StatusUnavailable",
                f"cannot save the resume point in the task's status ({type(err).__name__}): check the worker's "
                "ServiceAccount and the API server",
            ) from None
