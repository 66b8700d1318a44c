"""Every kind Ferry serves, in one place."""

from __future__ import annotations

from ferry.api.kinds import KindDef
from ferry.obsdump.worker import PLUGIN as OBS_DUMP
from ferry.tasks import KindPlugin
from ferry.topicsync.worker import PLUGIN as TOPIC_SYNC

PLUGINS: dict[str, KindPlugin] = {p.definition.kind: p for p in (OBS_DUMP, TOPIC_SYNC)}
KINDS: list[KindDef] = [p.definition for p in PLUGINS.values()]
