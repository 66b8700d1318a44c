"""The Argo CD health-check snippet for `argocd-cm`, derived from the chart's `files/argocd/health.lua`.

`render_argocd_cm()` returns the text of `examples/argocd/argocd-cm-health.yaml`: one
`resource.customizations.health.ferry.dev_<Kind>` key per kind, each holding the Lua script verbatim.
Regenerate the file after editing the script with (from the repository root)::

    .venv/bin/python -m tests.support.argocd
"""

from __future__ import annotations

import sys
from pathlib import Path

from ferry.api import GROUP

ROOT = Path(__file__).resolve().parents[2]
HEALTH_LUA = ROOT / "charts" / "ferry" / "files" / "argocd" / "health.lua"
ARGOCD_CM = ROOT / "examples" / "argocd" / "argocd-cm-health.yaml"
REGENERATE = ".venv/bin/python -m tests.support.argocd"

# Every kind the script is installed for; tests check that each served kind is here.
KINDS = ("DataAccessTask", "TopicSync", "ObsDumpTask", "ObsRestoreTask")

_HEADER = f"""\
# Argo CD health checks for Ferry's kinds, as a patch for the argocd-cm ConfigMap:
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file examples/argocd/argocd-cm-health.yaml
# Generated from charts/ferry/files/argocd/health.lua by `{REGENERATE}`: do not edit by hand.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def health_key(kind: str) -> str:
    """The argocd-cm key Argo CD reads a kind's health script from (`<group>_<Kind>`)."""
    return f"resource.customizations.health.{GROUP}_{kind}"


def health_lua() -> str:
    return HEALTH_LUA.read_text(encoding="utf-8")


def _block(script: str, indent: str) -> str:
    """`script` as the body of a YAML literal block scalar (`|`) that reads back exactly as `script`."""
    if not script.endswith("\n") or script.endswith("\n\n"):
        raise ValueError("health.lua must end with exactly one newline to be embedded as a YAML `|` block")
    if script[0] in " \t\n":
        raise ValueError("health.lua must not start with whitespace to be embedded as a YAML `|` block")
    if "\t" in script or "\r" in script or " \n" in script:
        raise ValueError("health.lua must use spaces, LF line endings and no trailing spaces")
    return "".join(f"{indent}{line}\n" if line else "\n" for line in script.split("\n")[:-1])


def render_argocd_cm(script: str | None = None) -> str:
    """The argocd-cm patch with `script` (default: the chart's health.lua) under every kind's key."""
    body = _block(health_lua() if script is None else script, "    ")
    return _HEADER + "".join(f"  {health_key(kind)}: |\n{body}" for kind in KINDS)


def main() -> int:
    ARGOCD_CM.parent.mkdir(parents=True, exist_ok=True)
    ARGOCD_CM.write_text(render_argocd_cm(), encoding="utf-8")
    print(f"wrote {ARGOCD_CM.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
