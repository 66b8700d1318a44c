"""The Argo CD health check (charts/ferry/files/argocd/health.lua) run under real Lua 5.1, as Argo CD runs it.

Argo CD evaluates custom health checks with gopher-lua (Lua 5.1) and, unless `useOpenLibs` is set, opens only
the base library (plus table, package and a safe os): no `string` or `math` tables and no string methods. Each
sample runs in an environment that allows `obj` and a few base functions and nothing else, with the string
metatable removed, so a script that would fail in Argo CD fails here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from ferry.registry import PLUGINS
from lupa import lua51

from tests.support.argocd import (
    ARGOCD_CM,
    HEALTH_LUA,
    KINDS,
    REGENERATE,
    ROOT,
    health_key,
    health_lua,
    render_argocd_cm,
)

# Health statuses Argo CD accepts from a script (anything else becomes Unknown).
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
# Base-library functions present in both Lua 5.1 and gopher-lua's base library.
BASE_FUNCTIONS = ("assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber", "tostring", "type")

_RUNNER = """
function(source, obj, allowed)
  local chunk, err = loadstring(source, "=health.lua")
  if chunk == nil then
    error(err, 0)
  end
  local env = setmetatable({}, {
    __index = function(_, name)
      if name == "obj" then
        return obj
      end
      if allowed[name] then
        return _G[name]
      end
      error("reads the global '" .. tostring(name) .. "'", 2)
    end,
    __newindex = function(_, name)
      error("assigns the global '" .. tostring(name) .. "'", 2)
    end,
  })
  setfenv(chunk, env)
  return chunk()
end
"""


def _to_lua(lua: Any, value: Any) -> Any:
    """A JSON-like Python value as Argo CD hands it to Lua: objects and lists become tables (lists 1-based)."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def run_lua(source: str, obj: dict[str, Any]) -> Any:
    """Run `source` with the global `obj` in a fresh Lua 5.1 state restricted like Argo CD's; return its result."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.execute('debug.setmetatable("", nil)')  # no string methods, as without the string library
    allowed = lua.table_from(dict.fromkeys(BASE_FUNCTIONS, True))
    return lua.eval(_RUNNER)(source, _to_lua(lua, obj), allowed)


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) the chart's health.lua gives `obj`, checked to be what Argo CD accepts."""
    hs = run_lua(health_lua(), obj)
    result = dict(hs.items())
    assert set(result) == {"status", "message"}
    assert result["status"] in ARGO_STATUSES
    assert isinstance(result["message"], str)
    assert result["message"]
    return result["status"], result["message"]


def conditions(ready: str, *, paused: str = "False", reason: str = "WorkerRunning", message: str = "") -> list[Any]:
    """Conditions as the operator writes them (Ready, then Paused)."""
    return [
        {
            "type": "Ready",
            "status": ready,
            "reason": reason,
            "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 3,
        },
        {
            "type": "Paused",
            "status": paused,
            "reason": "Paused" if paused == "True" else "NotPaused",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 3,
        },
    ]


def task(status: Any = None, *, generation: Any = 3, kind: str = "TopicSync") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "orders", "namespace": "default", "generation": generation}
    obj: dict[str, Any] = {"apiVersion": "ferry.dev/v1alpha1", "kind": kind, "metadata": metadata}
    if status is not None:
        obj["status"] = status
    return obj


RUNNING = {
    "state": "Running",
    "reason": "WorkerRunning",
    "message": "2 of 2 workers reporting",
    "observedGeneration": 3,
    "conditions": conditions("True", message="2 of 2 workers reporting"),
}


# --- states ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_running_ready_and_current_is_healthy(kind: str) -> None:
    assert health(task(RUNNING, kind=kind)) == ("Healthy", "WorkerRunning: 2 of 2 workers reporting")


def test_running_without_reason_or_message_is_healthy() -> None:
    status = {"state": "Running", "observedGeneration": 3, "conditions": conditions("True")}
    assert health(task(status)) == ("Healthy", "running")


def test_running_finds_ready_among_other_conditions() -> None:
    other = {"type": "LoopDetected", "status": "False", "reason": "NoLoop", "lastTransitionTime": "x"}
    status = {**RUNNING, "conditions": [other, *conditions("True")]}
    assert health(task(status)) == ("Healthy", "WorkerRunning: 2 of 2 workers reporting")


def test_running_but_ready_false_is_progressing() -> None:
    status = {**RUNNING, "message": "1 of 2 workers reporting", "conditions": conditions("False")}
    assert health(task(status)) == ("Progressing", "Ready is False: WorkerRunning: 1 of 2 workers reporting")


def test_running_but_ready_unknown_explains_with_the_condition_when_status_says_nothing() -> None:
    status = {
        "state": "Running",
        "observedGeneration": 3,
        "conditions": conditions("Unknown", reason="NoHeartbeat", message="no report for 90s"),
    }
    assert health(task(status)) == ("Progressing", "Ready is Unknown: NoHeartbeat: no report for 90s")


@pytest.mark.parametrize("value", [None, [], "oops", ["not a condition"]], ids=["absent", "empty", "string", "junk"])
def test_running_without_a_ready_condition_is_progressing(value: Any) -> None:
    status = {"state": "Running", "observedGeneration": 3, "conditions": value}
    assert health(task(status)) == ("Progressing", "waiting for the Ready condition")


def test_running_with_a_stale_observed_generation_is_progressing() -> None:
    status = {**RUNNING, "observedGeneration": 2}
    assert health(task(status, generation=3)) == (
        "Progressing",
        "waiting for the operator to observe generation 3 (status is for generation 2)",
    )


def test_running_without_observed_generation_is_progressing() -> None:
    status = {**RUNNING, "observedGeneration": None}
    assert health(task(status, generation=3)) == ("Progressing", "waiting for the operator to observe generation 3")


def test_running_without_generation_in_metadata_is_healthy() -> None:
    assert health(task(RUNNING, generation=None)) == ("Healthy", "WorkerRunning: 2 of 2 workers reporting")


def test_unassigned_is_progressing() -> None:
    status = {
        "state": "Unassigned",
        "reason": "WaitingForWorker",
        "message": "no worker has reported yet",
        "observedGeneration": 3,
        "conditions": conditions("False", reason="WaitingForWorker", message="no worker has reported yet"),
    }
    assert health(task(status)) == ("Progressing", "WaitingForWorker: no worker has reported yet")


def test_unassigned_without_message_is_progressing() -> None:
    status = {"state": "Unassigned", "observedGeneration": 3}
    assert health(task(status)) == ("Progressing", "waiting for a worker")


def test_paused_is_suspended() -> None:
    status = {
        "state": "Paused",
        "reason": "Paused",
        "message": "paused by spec.state; offsets are saved",
        "observedGeneration": 3,
        "conditions": conditions("False", paused="True", reason="Paused"),
        "pausedAt": "2026-01-01T00:00:00Z",
    }
    assert health(task(status)) == ("Suspended", "Paused: paused by spec.state; offsets are saved")


def test_paused_without_conditions_or_message_is_suspended() -> None:
    assert health(task({"state": "Paused", "observedGeneration": 3})) == ("Suspended", "paused")


def test_failed_is_degraded_and_passes_reason_and_message_through() -> None:
    message = "Kafka instance eu already has 18 ObsDumpTasks, the most allowed: delete one of them"
    status = {
        "state": "Failed",
        "reason": "TaskLimitExceeded",
        "message": message,
        "observedGeneration": 3,
        "conditions": conditions("False", reason="TaskLimitExceeded", message=message),
    }
    assert health(task(status)) == ("Degraded", f"TaskLimitExceeded: {message}")


def test_failed_with_only_a_message_passes_it_through() -> None:
    status = {"state": "Failed", "message": "the Secret kafka-creds has no key password", "observedGeneration": 3}
    assert health(task(status)) == ("Degraded", "the Secret kafka-creds has no key password")


def test_failed_with_only_a_reason_shows_it() -> None:
    status = {"state": "Failed", "reason": "CrashLoop", "observedGeneration": 3}
    assert health(task(status)) == ("Degraded", "CrashLoop")


def test_failed_without_details_is_degraded() -> None:
    assert health(task({"state": "Failed", "reason": "", "observedGeneration": 3})) == ("Degraded", "failed")


@pytest.mark.parametrize("state", ["Failed", "Paused"])
def test_failed_or_paused_for_an_older_generation_is_progressing(state: str) -> None:
    status = {"state": state, "reason": "InvalidSpec", "message": "bad regex", "observedGeneration": 3}
    assert health(task(status, generation=4)) == (
        "Progressing",
        "waiting for the operator to observe generation 4 (status is for generation 3)",
    )


def test_a_succeeded_one_shot_task_is_healthy() -> None:
    """ObsRestoreTask ends Succeeded (Ready False: nothing runs any more), which is its healthy end."""
    status = {
        "state": "Succeeded",
        "reason": "RestoreComplete",
        "message": "restored 600 records from 12 objects into orders",
        "observedGeneration": 3,
        "conditions": conditions("False", reason="RestoreComplete"),
    }
    restore = task(status, kind="ObsRestoreTask")
    assert health(restore) == ("Healthy", "RestoreComplete: restored 600 records from 12 objects into orders")
    assert health(task({"state": "Succeeded", "observedGeneration": 3}, kind="ObsRestoreTask")) == (
        "Healthy",
        "succeeded",
    )


def test_terminating_is_progressing() -> None:
    status = {
        "state": "Terminating",
        "reason": "Flushing",
        "message": "workers are flushing before the finalizer is released",
        "observedGeneration": 3,
        "conditions": conditions("False", reason="Flushing"),
    }
    assert health(task(status)) == ("Progressing", "Flushing: workers are flushing before the finalizer is released")


def test_terminating_without_message_is_progressing() -> None:
    assert health(task({"state": "Terminating", "observedGeneration": 3})) == (
        "Progressing",
        "terminating: workers are flushing",
    )


def test_unknown_state_is_progressing() -> None:
    status = {"state": "Exploded", "reason": "Novel", "message": "from a newer operator", "observedGeneration": 3}
    assert health(task(status)) == ("Progressing", "unknown state Exploded: Novel: from a newer operator")


def test_unknown_state_without_details_is_progressing() -> None:
    assert health(task({"state": "Exploded", "observedGeneration": 3})) == ("Progressing", "unknown state Exploded")


# --- missing or odd status -----------------------------------------------------------------------------------


def test_no_status_is_progressing() -> None:
    assert health(task(None, generation=1)) == ("Progressing", "waiting for the operator to observe generation 1")


def test_no_status_and_no_generation_is_progressing() -> None:
    assert health(task(None, generation=None)) == ("Progressing", "waiting for the operator")


def test_empty_status_is_progressing() -> None:
    assert health(task({}, generation=1)) == ("Progressing", "waiting for the operator to observe generation 1")


def test_empty_status_and_no_generation_is_progressing() -> None:
    assert health(task({}, generation=None)) == ("Progressing", "waiting for the operator")


def test_status_with_only_a_message_is_progressing() -> None:
    status = {"message": "accepted", "observedGeneration": 3}
    assert health(task(status)) == ("Progressing", "accepted")


def test_status_that_is_not_an_object_is_progressing() -> None:
    assert health(task("oops", generation=None)) == ("Progressing", "waiting for the operator")


def test_object_without_metadata_is_judged_on_status() -> None:
    assert health({"status": RUNNING}) == ("Healthy", "WorkerRunning: 2 of 2 workers reporting")


# --- numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generation", "observed"),
    [(3.0, 3.0), (3, 3.0), (3.0, 3), ("3", 3), (3, "3")],
    ids=["floats", "int-float", "float-int", "string-int", "int-string"],
)
def test_generations_compare_as_numbers(generation: Any, observed: Any) -> None:
    status = {**RUNNING, "observedGeneration": observed}
    assert health(task(status, generation=generation)) == ("Healthy", "WorkerRunning: 2 of 2 workers reporting")


def test_float_generations_print_as_integers() -> None:
    status = {**RUNNING, "observedGeneration": 3.0}
    assert health(task(status, generation=4.0)) == (
        "Progressing",
        "waiting for the operator to observe generation 4 (status is for generation 3)",
    )


def test_a_numeric_message_is_shown_as_text() -> None:
    status = {"state": "Failed", "reason": "Code", "message": 42, "observedGeneration": 3}
    assert health(task(status)) == ("Degraded", "Code: 42")


# --- the script itself ------------------------------------------------------------------------------------


def test_runtime_is_lua_5_1() -> None:
    assert lua51.LuaRuntime().eval("_VERSION") == "Lua 5.1"


def test_script_is_valid_lua_5_1() -> None:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    load = lua.eval("function(source) local chunk, err = loadstring(source, '=health.lua') return type(chunk), err end")
    assert load(health_lua()) == ("function", None)
    assert load("goto done ::done::")[0] == "nil"  # the same check refuses what Lua 5.1 cannot parse


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("return {status = string.format('%s', 'Healthy')}", "reads the global 'string'"),
        ("return {status = math.floor(1)}", "reads the global 'math'"),
        ("hs = {} return hs", "assigns the global 'hs'"),
        ("return {status = ('Healthy'):sub(1)}", "attempt to index"),
        ("goto done ::done:: return {}", "health.lua:1:"),
    ],
    ids=["string-library", "math-library", "global-assignment", "string-method", "goto"],
)
def test_sandbox_rejects_what_argocd_would(source: str, error: str) -> None:
    """The checks above are only as good as this sandbox: it must refuse what Argo CD's Lua cannot run."""
    with pytest.raises(lua51.LuaError, match=re.escape(error)):
        run_lua(source, task(RUNNING))


# --- the argocd-cm snippet ----------------------------------------------------------------------------------


def test_argocd_cm_example_is_current() -> None:
    path = ARGOCD_CM.relative_to(ROOT)
    assert ARGOCD_CM.exists(), f"{path} is missing: run `{REGENERATE}`"
    assert ARGOCD_CM.read_text(encoding="utf-8") == render_argocd_cm(), (
        f"{path} is stale (health.lua changed): run `{REGENERATE}`"
    )


def test_argocd_cm_holds_the_exact_script_for_every_kind() -> None:
    doc = yaml.safe_load(render_argocd_cm())
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "ConfigMap")
    assert (doc["metadata"]["name"], doc["metadata"]["namespace"]) == ("argocd-cm", "argocd")
    assert doc["data"] == dict.fromkeys((health_key(kind) for kind in KINDS), health_lua())
    assert health_key("TopicSync") == "resource.customizations.health.ferry.dev_TopicSync"


def test_every_served_kind_has_a_health_check() -> None:
    assert set(PLUGINS) <= set(KINDS)


@pytest.mark.parametrize(
    "script",
    ["return {}", "return {}\n\n", "\nreturn {}\n", "return {} \n", "return {}\r\n", "\treturn {}\n"],
    ids=["no-newline", "blank-tail", "blank-head", "trailing-space", "crlf", "tab"],
)
def test_render_refuses_scripts_a_yaml_block_would_change(script: str) -> None:
    with pytest.raises(ValueError, match=r"^health\.lua must"):
        render_argocd_cm(script)


def test_health_lua_is_the_file_the_chart_loads() -> None:
    assert HEALTH_LUA.relative_to(ROOT / "charts" / "ferry").as_posix() == "files/argocd/health.lua"


# --- the Application example ---------------------------------------------------------------------------------


def test_application_example_installs_the_chart() -> None:
    app = yaml.safe_load((ROOT / "examples" / "argocd" / "application.yaml").read_text(encoding="utf-8"))
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    spec = app["spec"]
    assert spec["source"]["path"] == "charts/ferry"
    assert spec["source"]["targetRevision"] == "main"
    assert (ROOT / spec["source"]["path"] / "files" / "argocd" / "health.lua").is_file()
    assert spec["destination"]["namespace"] == "ferry-system"
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert set(spec["syncPolicy"]["syncOptions"]) == {"CreateNamespace=true", "ServerSideApply=true"}
