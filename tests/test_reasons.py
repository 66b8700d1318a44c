"""Every reason the code can emit (in status and in Events) is in docs/reasons.md, and its tables list no reason
the code lost."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def emitted_reasons() -> set[str]:
    """String literals used as a reason: the first argument of TaskError and Explanation, _Verdict's and the
    operator's Event's second, a "reason" dict key or keyword argument (kopf.event's)."""
    reasons: set[str] = set()
    for path in (ROOT / "operator" / "ferry").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            candidates: list[ast.expr] = []
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if name in ("TaskError", "Explanation") and node.args:
                    candidates.append(node.args[0])
                elif name in ("_Verdict", "Event") and len(node.args) > 1:
                    candidates.append(node.args[1])
                candidates += [k.value for k in node.keywords if k.arg == "reason"]
            elif isinstance(node, ast.Dict):
                candidates += [
                    value
                    for key, value in zip(node.keys, node.values, strict=True)
                    if isinstance(key, ast.Constant) and key.value == "reason"
                ]
            reasons |= {c.value for c in candidates if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return reasons


def documented_reasons() -> set[str]:
    rows = [line for line in (ROOT / "docs" / "reasons.md").read_text().splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Za-z]+)`", row.split("|")[1])}


def test_every_reason_the_code_emits_is_documented() -> None:
    emitted = emitted_reasons()
    assert len(emitted) > 20  # the collector still finds them
    assert sorted(emitted - documented_reasons()) == []


def test_the_table_lists_no_reason_the_code_no_longer_emits() -> None:
    assert sorted(documented_reasons() - emitted_reasons()) == []
