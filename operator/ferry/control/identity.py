"""Which Kafka cluster an endpoint names: for the per-instance limit, replication loops and copies onto themselves.

Workers ask the brokers which cluster they are (one metadata request) and report the cluster id each side
answered with; the operator keeps it in the task's status (`sourceClusterId`, `targetClusterId`). For limits
and loops an endpoint's identity is, in this order:

1. its `instanceId`, when the user set one (an override);
2. the cluster id its brokers reported to the task's own workers (the task's status);
3. the cluster id the workers of another task of the kind reported for brokers at one of the same `host:port`s
   (the normalised bootstrap lists share a `host:port`), when every task that reported for them agrees;
4. its spelling: the normalised bootstrap list.

So two spellings of one cluster (`127.0.0.1:P` and `localhost:P`) are one instance as soon as a worker of each
task has reported, and a new task whose bootstrap list shares a `host:port` with a task that has reported is
known before its own workers start. A copy onto itself is decided by cluster ids alone (steps 2 and 3):
`instanceId` names an instance, it does not make two clusters of one. A spelling no worker has reached is known
only by its spelling: the webhook admits what it cannot tell apart, and the worker, which asks the brokers,
refuses a copy onto itself.

A `host:port` is taken to name the same brokers from every worker pod, as cluster DNS names and Service
addresses do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ferry.api.base import KafkaEndpoint, TaskSpec, normalise_bootstrap
from pydantic import ValidationError


def host_ports(bootstrap: str) -> list[str]:
    """The normalised `host:port`s of a bootstrap list (lower case, default port)."""
    return normalise_bootstrap(bootstrap).split(",")


def name_of(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def reported(body: Mapping[str, Any] | None, field: str) -> str | None:
    """The cluster id a task's own workers reported for one side (`field` of its status), if any."""
    value = ((body or {}).get("status") or {}).get(field)
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Reported:
    cluster_id: str
    by: str  # namespace/name of the task whose workers reported it


@dataclass(frozen=True)
class KnownClusters:
    """Each `host:port` to the cluster id reported for a bootstrap list holding it (ambiguous ones left out)."""

    by_host: Mapping[str, Reported]

    def cluster_of(self, endpoint: KafkaEndpoint) -> Reported | None:
        """The cluster id reported for the endpoint's `host:port`s, when they agree on one."""
        found = [self.by_host[h] for h in host_ports(endpoint.bootstrap_servers) if h in self.by_host]
        if not found or len({r.cluster_id for r in found}) > 1:
            return None
        return found[0]


NOTHING_KNOWN = KnownClusters({})


def endpoints_of(body: Mapping[str, Any], spec_model: type[TaskSpec]) -> dict[str, KafkaEndpoint]:
    """A task body's Kafka endpoints by the status field holding their cluster id ({} if its spec is invalid)."""
    try:
        return spec_model.model_validate(body.get("spec") or {}).cluster_endpoints()
    except ValidationError:
        return {}


def known_clusters(peers: Iterable[Mapping[str, Any]], spec_model: type[TaskSpec]) -> KnownClusters:
    """What the workers of the tasks of one kind reported, by `host:port` of the bootstrap lists they reached.

    A `host:port` two tasks report different clusters for (a cluster rebuilt, a name moved to other brokers)
    is left out: no guess is better than a wrong one.
    """
    seen: dict[str, Reported] = {}
    ambiguous: set[str] = set()
    for body in sorted(peers, key=name_of):  # the same answer whatever order the API listed them in
        for field, endpoint in endpoints_of(body, spec_model).items():
            cluster = reported(body, field)
            if cluster is None:
                continue
            for host in host_ports(endpoint.bootstrap_servers):
                if host in seen and seen[host].cluster_id != cluster:
                    ambiguous.add(host)
                seen.setdefault(host, Reported(cluster, name_of(body)))
    return KnownClusters({h: r for h, r in seen.items() if h not in ambiguous})


def cluster_of(
    endpoint: KafkaEndpoint, body: Mapping[str, Any] | None, field: str, known: KnownClusters
) -> Reported | None:
    """The endpoint's cluster id: reported to the task's own workers, else to another task's for its brokers."""
    own = reported(body, field)
    if own is not None:
        return Reported(own, name_of(body or {}))
    return known.cluster_of(endpoint)


@dataclass(frozen=True)
class Identity:
    key: str  # what limits and loops compare
    shown: str  # how messages name it


def identity(endpoint: KafkaEndpoint, body: Mapping[str, Any] | None, field: str, known: KnownClusters) -> Identity:
    """instanceId, else the reported cluster id, else the normalised bootstrap list (see the module doc)."""
    if endpoint.instance_id:
        return Identity(endpoint.instance_id, endpoint.instance_id)
    spelling = normalise_bootstrap(endpoint.bootstrap_servers)
    cluster = cluster_of(endpoint, body, field, known)
    if cluster is None:
        return Identity(spelling, spelling)
    return Identity(cluster.cluster_id, f"{spelling} (cluster id {cluster.cluster_id})")


def find_body(peers: Iterable[Mapping[str, Any]], namespace: str, name: str) -> Mapping[str, Any] | None:
    """The body of the task named so among the peers (both the operator and the webhook put it there)."""
    return next((p for p in peers if name_of(p) == f"{namespace}/{name}"), None)


@dataclass(frozen=True)
class OneCluster:
    """Source and target resolved to one cluster id, and whose workers said so."""

    cluster_id: str
    reporters: tuple[str, ...]

    def fact(self, source_field: str, source: KafkaEndpoint, target_field: str, target: KafkaEndpoint) -> str:
        by = " and ".join(self.reporters)
        return (
            f"{source_field} {source.bootstrap_servers} and {target_field} {target.bootstrap_servers} are the same "
            f"Kafka cluster (cluster id {self.cluster_id}, as reported by the workers of {by})"
        )


def one_cluster(
    source: KafkaEndpoint,
    target: KafkaEndpoint,
    body: Mapping[str, Any] | None,
    known: KnownClusters,
    source_field: str,
    target_field: str,
) -> OneCluster | None:
    """Whether the reported cluster ids show source and target to be one cluster (instanceId plays no part)."""
    of_source = cluster_of(source, body, source_field, known)
    of_target = cluster_of(target, body, target_field, known)
    if of_source is None or of_target is None or of_source.cluster_id != of_target.cluster_id:
        return None
    return OneCluster(of_source.cluster_id, tuple(sorted({of_source.by, of_target.by})))
