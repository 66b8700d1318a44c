"""What the CRD generator, the operator and `ferry run` need to know about a kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ferry.api import GROUP, VERSION
from ferry.api.base import TaskSpec, TaskStatus


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def wire(self) -> dict[str, Any]:
        column: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            column["description"] = self.description
        if self.priority:
            column["priority"] = self.priority
        return column


TASK_NAME_COLUMN = PrinterColumn("Task Name", ".spec.taskName", description="The task's display name (spec.taskName).")
STATE_COLUMN = PrinterColumn(
    "State", ".status.state", description="Unassigned, Running, Paused, Failed or Terminating."
)
READY_COLUMN = PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status')
LAG_COLUMN = PrinterColumn("Lag", ".status.lag", "integer", "Records not yet delivered.")
AGE_COLUMN = PrinterColumn("Age", ".metadata.creationTimestamp", "date")
REASON_COLUMN = PrinterColumn("Reason", ".status.reason", priority=1)
MESSAGE_COLUMN = PrinterColumn("Message", ".status.message", priority=1)


@dataclass(frozen=True)
class KindDef:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec_model: type[TaskSpec]
    status_model: type[TaskStatus]
    description: str
    printer_columns: tuple[PrinterColumn, ...]
    # Spec fields a user may change after creation; None means every field may change.
    mutable_fields: frozenset[str] | None = None
    categories: tuple[str, ...] = field(default=("ferry",))
    # A scale subresource (spec.replicas, status.replicas, status.labelSelector): `kubectl scale`, autoscalers.
    scalable: bool = False

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def version(self) -> str:
        return VERSION
