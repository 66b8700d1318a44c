"""Every kind Ferry serves, in one place."""

from __future__ import annotations

from ferry.api.kinds import KindDef
from ferry.obsdump.worker import PLUGIN as OBS_DUMP
from ferry.tasks import KindPlugin

PLUGINS: dict[str, KindPlugin] = {p.definition.kind: p for p in (OBS_DUMP,)}
KINDS: list[KindDef] = [p.definition for p in PLUGINS.values()]
