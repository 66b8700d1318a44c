"""Every kind Ferry serves, in one place."""

from __future__ import annotations

from ferry.api.kinds import KindDef
from ferry.dataaccess.worker import PLUGIN as DATA_ACCESS
from ferry.obsdump.worker import PLUGIN as OBS_DUMP
from ferry.obsrestore.worker import PLUGIN as OBS_RESTORE
from ferry.tasks import KindPlugin
from ferry.topicsync.worker import PLUGIN as TOPIC_SYNC

PLUGINS: dict[str, KindPlugin] = {p.definition.kind: p for p in (DATA_ACCESS, TOPIC_SYNC, OBS_DUMP, OBS_RESTORE)}
KINDS: list[KindDef] = [p.definition for p in PLUGINS.values()]
