"""Errors a user can act on: each carries the CamelCase reason that lands in status and Events."""

from __future__ import annotations


class TaskError(Exception):
    """The task cannot make progress until something outside Ferry changes (or a retry succeeds)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
