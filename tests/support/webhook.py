"""Admission webhook tests: a throwaway certificate, AdmissionReview requests, and HTTPS posts to the operator."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

LOOPBACK = "127.0.0.1"


def write_certificate(cert_dir: Path) -> ssl.SSLContext:
    """tls.crt and tls.key (the kubernetes.io/tls Secret layout) for 127.0.0.1, from a throwaway CA;
    returns a client context that trusts only that CA."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(LOOPBACK)
    (cert_dir / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(cert_dir / "tls.key"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def admission_review(
    operation: str,
    obj: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    plural: str = "obsdumptasks",
) -> dict[str, Any]:
    """An `admission.k8s.io/v1` AdmissionReview as kube-apiserver sends it for a custom resource."""
    body = obj if obj is not None else old
    assert body is not None
    meta = body["metadata"]
    kind = {"group": "ferry.dev", "version": "v1alpha1", "kind": body["kind"]}
    resource = {"group": "ferry.dev", "version": "v1alpha1", "resource": plural}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": old,
            "dryRun": False,
        },
    }


@dataclass(frozen=True)
class WebhookClient:
    port: int
    context: ssl.SSLContext

    def post(self, path: str, review: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """POST the review to https://127.0.0.1:<port><path> and return the AdmissionReview answer."""
        request = urllib.request.Request(
            f"https://{LOOPBACK}:{self.port}{path}",
            data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, context=self.context, timeout=timeout) as answer:
            result: dict[str, Any] = json.loads(answer.read())
        return result

    def wait_until_serving(self, path: str, review: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """The first answer once the operator's webhook server is up (it starts after Kopf's startup)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.post(path, review, timeout=5)
            except (urllib.error.URLError, ConnectionError) as err:
                if time.monotonic() > deadline:
                    raise AssertionError(f"webhook on port {self.port} not serving after {timeout}s: {err}") from err
            time.sleep(0.2)
