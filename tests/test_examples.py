"""The shipped examples are valid: admitted by the generated CRDs, parsed by the models, Secrets included."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ferry.api.crd import crd_for
from ferry.registry import PLUGINS
from ferry.tasks import parse_task

from tests.support.crdcheck import validate

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_every_kind_has_an_example() -> None:
    kinds = {d["kind"] for path in EXAMPLES for d in yaml.safe_load_all(path.read_text()) if d}
    assert set(PLUGINS) <= kinds


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_admitted_and_brings_its_secrets(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    secrets = {d["metadata"]["name"]: set(d.get("stringData", {})) for d in docs if d["kind"] == "Secret"}
    for doc in docs:
        if doc["kind"] not in PLUGINS:
            continue
        assert validate(crd_for(PLUGINS[doc["kind"]].definition), doc) == []
        task = parse_task(doc, PLUGINS)
        for ref in PLUGINS[doc["kind"]].secret_refs(task.spec).values():
            if ref.secret in secrets:  # CA bundles are cluster-specific and not shipped
                assert ref.key in secrets[ref.secret]
