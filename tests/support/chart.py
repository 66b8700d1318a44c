"""The Helm chart charts/ferry as the tests see it, and the plain manifests deploy/ferry.yaml made from it.

deploy/ferry.yaml is a Namespace, the chart's CRDs and ``helm template ferry charts/ferry --namespace
ferry-system`` with default values, for ``kubectl apply --server-side -f deploy/ferry.yaml``. Regenerate it
with ``make deploy`` (which also syncs the CRDs) or:

    python -m tests.support.chart            # write deploy/ferry.yaml
    python -m tests.support.chart --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support.tools import helm_binary, helm_env

__all__ = [
    "ALL_ON",
    "ALL_ON_CERT_MANAGER",
    "ALL_ON_CERT_MANAGER_ISSUER",
    "CHART",
    "CHART_CRDS",
    "DEPLOY",
    "NAMESPACE",
    "RELEASE",
    "REPO_CRDS",
    "Grant",
    "Helm",
    "HelmError",
    "documents",
    "grants",
    "kubernetes_validate",
    "plain_manifests",
]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ferry"
CHART_CRDS = CHART / "crds"
REPO_CRDS = REPO / "crds"
DEPLOY = REPO / "deploy" / "ferry.yaml"
RELEASE = "ferry"
NAMESPACE = "ferry-system"
REGENERATE = "make deploy (or: .venv/bin/python -m tests.support.chart)"
HELM_TIMEOUT = 120.0

# Every optional part switched on; the three ways to get the webhook's certificate.
ALL_ON: dict[str, Any] = {
    "watchNamespaces": ["team-a", "team-b"],
    "webhook": {"enabled": True},
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    },
    "dashboard": {"enabled": True},
    "argocd": {"healthChecks": {"enabled": True}},
}
ALL_ON_CERT_MANAGER: dict[str, Any] = {**ALL_ON, "webhook": {"enabled": True, "certManager": {"enabled": True}}}
ALL_ON_CERT_MANAGER_ISSUER: dict[str, Any] = {
    **ALL_ON,
    "watchNamespaces": [],
    "webhook": {
        "enabled": True,
        "certManager": {"enabled": True, "issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"}},
    },
}

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


class HelmError(RuntimeError):
    """helm exited non-zero; the message holds its stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} failed (exit {returncode}):\n{stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class Helm:
    """Runs the pinned helm binary with a private home (no user config, caches or kubeconfig)."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.env = helm_env(home)

    def run(self, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = self.env if kubeconfig is None else {**self.env, "KUBECONFIG": str(kubeconfig)}
        result = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=HELM_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise HelmError(args, result.returncode, result.stderr)
        return result

    def _values_args(self, values: Mapping[str, Any] | None, set_values: Iterable[str]) -> list[str]:
        args: list[str] = []
        if values:
            with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=self.home, delete=False) as handle:
                yaml.safe_dump(dict(values), handle)
            args += ["--values", handle.name]
        for assignment in set_values:
            args += ["--set", assignment]
        return args

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        set_values: Iterable[str] = (),
        namespace: str = NAMESPACE,
        kube_version: str | None = None,
        cluster: Path | None = None,
    ) -> str:
        """`helm template`; with `cluster` (a kubeconfig), `--dry-run=server`, so that `lookup` sees that cluster."""
        args = ["template", RELEASE, str(CHART), "--namespace", namespace]
        if kube_version:
            args += ["--kube-version", kube_version]
        if cluster:
            args += ["--dry-run=server"]
        return self.run(*args, *self._values_args(values, set_values), kubeconfig=cluster).stdout

    def install(self, namespace: str, kubeconfig: Path, values: Mapping[str, Any] | None = None) -> str:
        """`helm install` of charts/ferry as release `ferry` into namespace (created), waiting for nothing."""
        args = ["install", RELEASE, str(CHART), "--namespace", namespace, "--create-namespace"]
        return self.run(*args, *self._values_args(values, ()), kubeconfig=kubeconfig).stdout

    def upgrade(
        self, namespace: str, kubeconfig: Path, values: Mapping[str, Any] | None, set_values: Iterable[str] = ()
    ) -> str:
        """`helm upgrade --reuse-values` of the release in namespace, with these values on top."""
        args = ["upgrade", RELEASE, str(CHART), "--namespace", namespace, "--reuse-values"]
        return self.run(*args, *self._values_args(values, set_values), kubeconfig=kubeconfig).stdout

    def uninstall(self, namespace: str, kubeconfig: Path) -> str:
        return self.run("uninstall", RELEASE, "--namespace", namespace, "--wait", kubeconfig=kubeconfig).stdout

    def lint(self, values: Mapping[str, Any] | None = None) -> str:
        result = self.run("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *self._values_args(values, ()))
        return result.stdout + result.stderr

    def notes(self, values: Mapping[str, Any] | None = None) -> str:
        """The rendered NOTES.txt, from a client-only dry-run install (no cluster)."""
        args = ["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
        stdout = self.run(*args, *self._values_args(values, ())).stdout
        return stdout.split("NOTES:\n", 1)[1] if "NOTES:\n" in stdout else ""


def documents(text: str) -> list[dict[str, Any]]:
    """The YAML documents of a multi-document stream, empty ones dropped."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def plain_manifests(helm: Helm) -> str:
    """deploy/ferry.yaml: a Namespace, the chart's CRDs and the chart rendered with default values."""
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": "ferry", "pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    parts = [
        "# Generated from charts/ferry with default values by `make deploy`. Do not edit.\n"
        "# Install or upgrade: kubectl apply --server-side -f deploy/ferry.yaml\n"
        + yaml.safe_dump(namespace, sort_keys=False)
    ]
    sources = [path.read_text() for path in sorted(CHART_CRDS.glob("*.yaml"))] + [helm.template()]
    parts += [chunk.strip() + "\n" for text in sources for chunk in re.split(r"^---[ \t]*$", text, flags=re.M)]
    return "---\n" + "---\n".join(part for part in parts if part.strip())


def grants(rules: Iterable[Mapping[str, Any]]) -> set[Grant]:
    """An RBAC rule list flattened to (apiGroup, resource, verb) triples (rules with resourceNames excluded)."""
    result: set[Grant] = set()
    for rule in rules:
        if rule.get("resourceNames") or rule.get("nonResourceURLs"):
            continue
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    result.add((group, resource, verb))
    return result


def kubernetes_validate(docs: Sequence[Mapping[str, Any]], version: str) -> tuple[list[str], list[str]]:
    """kubernetes-validate in strict mode (unknown fields are errors): (errors, kinds it has no schema for)."""
    from kubernetes_validate import utils

    errors: list[str] = []
    unknown: list[str] = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            utils.validate(dict(doc), version, strict=True)
        except utils.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            errors.append(f"{name}: {path}: {err.message}")
        except utils.SchemaNotFoundError:
            unknown.append(f"{doc.get('apiVersion')}/{doc.get('kind')}")
    return errors, unknown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.chart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if deploy/ferry.yaml is stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ferry-helm-") as home:
        text = plain_manifests(Helm(helm_binary(), Path(home)))
    if args.check:
        if not DEPLOY.exists() or DEPLOY.read_text() != text:
            print(f"{DEPLOY.relative_to(REPO)} is stale: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    DEPLOY.parent.mkdir(parents=True, exist_ok=True)
    DEPLOY.write_text(text)
    print(DEPLOY.relative_to(REPO))
    return 0


if __name__ == "__main__":
    sys.exit(main())
