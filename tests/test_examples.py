"""The shipped examples are valid: admitted by the real API server with the generated CRDs (`kubectl apply
--dry-run=server`, Secrets included), parsed by the models, and their Secrets hold the keys the tasks name."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ferry.registry import PLUGINS
from ferry.tasks import parse_task

from tests.support.cluster import KubeEnv

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_every_kind_has_an_example() -> None:
    kinds = {d["kind"] for path in EXAMPLES for d in yaml.safe_load_all(path.read_text()) if d}
    assert set(PLUGINS) <= kinds


def resource(doc: dict[str, Any]) -> str:
    """How kubectl names the object: kind.group/name (no group for the core API)."""
    group = doc["apiVersion"].rpartition("/")[0]
    return f"{doc['kind'].lower()}{'.' + group if group else ''}/{doc['metadata']['name']}"


@pytest.fixture(scope="module")
def namespace(kube: KubeEnv) -> Iterator[str]:
    name = f"examples-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_admitted_and_brings_its_secrets(kube: KubeEnv, namespace: str, path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    applied = kube.kubectl("apply", "--dry-run=server", "--namespace", namespace, "-f", str(path))
    assert applied.stderr == ""  # no warning (kubectl's default --validate=strict refuses unknown fields)
    assert applied.stdout.splitlines() == [f"{resource(doc)} created (server dry run)" for doc in docs]
    secrets = {d["metadata"]["name"]: set(d.get("stringData", {})) for d in docs if d["kind"] == "Secret"}
    for doc in docs:
        if doc["kind"] not in PLUGINS:
            continue
        task = parse_task(doc, PLUGINS)
        for ref in PLUGINS[doc["kind"]].secret_refs(task.spec).values():
            if ref.secret in secrets:  # CA bundles are cluster-specific and not shipped
                assert ref.key in secrets[ref.secret]
