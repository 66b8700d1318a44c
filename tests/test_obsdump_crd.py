"""The real API server, with the generated ObsDumpTask CRD, refuses bad manifests with a clear message (its schema
validation and our CEL rules), and refuses spec changes after creation (transition rules)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.admission import BLOCKED, Admission, admission
from tests.support.cluster import KubeEnv


@pytest.fixture(scope="module")
def server(kube: KubeEnv) -> Iterator[Admission]:
    with admission(kube.control_plane.api_client()) as answers:
        yield answers


def manifest(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"bootstrapServers": "kafka:9092"},
        "topics": ["orders"],
        "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
    }
    body.update(spec)
    return {"apiVersion": "ferry.dev/v1alpha1", "kind": "ObsDumpTask", "metadata": {"name": "t"}, "spec": body}


def without(field: str) -> dict[str, Any]:
    body = manifest()
    del body["spec"][field]
    return body


def immutable(field: str) -> str:
    return (
        f"spec: Invalid value: spec.{field} cannot change after creation; only spec.state can. "
        "Create a new ObsDumpTask to change it."
    )


def test_a_valid_manifest_is_admitted_with_defaults(server: Admission) -> None:
    result = server.create(manifest())
    assert result.errors == []
    spec = result.object["spec"]
    assert spec["state"] == "Running" and spec["dumpPeriodSeconds"] == 300 and spec["startFrom"] == "latest"
    assert spec["target"]["recordSeparator"] == "\n" and spec["target"]["timeDirectoryFormat"] == "yyyy/MM/dd/HH"
    # Fields added later have their defaults in the model only (ferry.obsdump.model._applied_by_the_model).
    assert not {"compression", "timeZone", "timeDirectoryLayout", "createBucket"} & set(spec["target"])


TASK_NAME = "taskName must be 4-64 characters of letters, digits, '-' and '_'"
TOPIC_REGEX = "topicRegex must not match every topic: list topics or narrow the pattern"
ONE_OF = "spec: Invalid value: set exactly one of topics and topicRegex"
TARGET = manifest()["spec"]["target"]
DIRECTORY_PATTERN = r"^([A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*)?$"

# (case, manifest, what the server answers); a schema error keeps the CEL rules from running (BLOCKED).
CREATE_REFUSALS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("short taskName", manifest(taskName="abc"), [f'spec.taskName: Invalid value: "abc": {TASK_NAME}']),
    (
        "taskName with a dot",
        manifest(taskName="orders.dump"),
        [f'spec.taskName: Invalid value: "orders.dump": {TASK_NAME}'],
    ),
    (
        "taskName too long",
        manifest(taskName="x" * 65),
        ["spec.taskName: Too long: may not be more than 64 bytes", BLOCKED],
    ),
    (
        "21 topics",
        manifest(topics=[f"t{i}" for i in range(21)]),
        ["spec.topics: Too many: 21: must have at most 20 items", BLOCKED],
    ),
    ("topicRegex .*", manifest(topics=None, topicRegex=".*"), [f'spec.topicRegex: Invalid value: ".*": {TOPIC_REGEX}']),
    (
        "topicRegex ^.*$",
        manifest(topics=None, topicRegex="^.*$"),
        [f'spec.topicRegex: Invalid value: "^.*$": {TOPIC_REGEX}'],
    ),
    ("both topics and regex", manifest(topicRegex="orders-.*"), [ONE_OF]),
    ("neither topics nor regex", without("topics"), [ONE_OF]),
    (
        "negative period",
        manifest(dumpPeriodSeconds=-5),
        [
            "spec.dumpPeriodSeconds: Invalid value: -5: "
            "spec.dumpPeriodSeconds in body should be greater than or equal to 1"
        ],
    ),
    (
        "period over a day",
        manifest(dumpPeriodSeconds=90000),
        [
            "spec.dumpPeriodSeconds: Invalid value: 90000: "
            "spec.dumpPeriodSeconds in body should be less than or equal to 86400"
        ],
    ),
    (
        "unknown startFrom",
        manifest(startFrom="middle"),
        ['spec.startFrom: Unsupported value: "middle": supported values: "earliest", "latest"', BLOCKED],
    ),
    (
        "unknown state",
        manifest(state="Stopped"),
        ['spec.state: Unsupported value: "Stopped": supported values: "Running", "Paused"', BLOCKED],
    ),
    ("duplicate topics", manifest(topics=["a", "a"]), ['spec.topics[1]: Duplicate value: "a"']),
    (
        "bad topic name",
        manifest(topics=["has space"]),
        ["spec.topics[0]: Invalid value: \"has space\": spec.topics[0] in body should match '^[a-zA-Z0-9._-]{1,249}$'"],
    ),
    (
        "upper-case bucket",
        manifest(target={**TARGET, "bucket": "Dumps"}),
        [
            'spec.target.bucket: Invalid value: "Dumps": '
            "spec.target.bucket in body should match '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$'"
        ],
    ),
    (
        "leading slash in directory",
        manifest(target={**TARGET, "directory": "/x"}),
        [
            'spec.target.directory: Invalid value: "/x": '
            f"spec.target.directory in body should match '{DIRECTORY_PATTERN}'"
        ],
    ),
    (
        "storeKeys with a comma separator",
        manifest(target={**TARGET, "storeKeys": True, "recordSeparator": ","}),
        [
            "spec: Invalid value: "
            "with storeKeys the recordSeparator must be made of control characters such as a newline"
        ],
    ),
    (
        "format jsonl with a comma separator",
        manifest(target={**TARGET, "format": "jsonl", "recordSeparator": ","}),
        [
            "spec: Invalid value: "
            "with format jsonl the recordSeparator must be made of control characters such as a newline"
        ],
    ),
    (
        "format raw with storeKeys",
        manifest(target={**TARGET, "format": "raw", "storeKeys": True}),
        [
            "spec: Invalid value: "
            "format raw writes the values only: leave storeKeys out, or choose format jsonl or parquet"
        ],
    ),
    (
        "SASL without credentials",
        manifest(source={"bootstrapServers": "k:9092", "securityProtocol": "SASL_SSL"}),
        [
            "spec.source: Invalid value: "
            "securityProtocol SASL_PLAINTEXT and SASL_SSL need saslMechanism and credentialsSecretRef"
        ],
    ),
    (
        "mechanism without SASL",
        manifest(source={"bootstrapServers": "k:9092", "saslMechanism": "PLAIN"}),
        ["spec.source: Invalid value: saslMechanism is only used with securityProtocol SASL_PLAINTEXT or SASL_SSL"],
    ),
    ("no target", without("target"), ["spec.target: Required value", BLOCKED]),
    (
        "no credentials Secret",
        manifest(target={"endpoint": "http://s3", "bucket": "dumps"}),
        ["spec.target.credentialsSecretRef: Required value", BLOCKED],
    ),
    (
        "a records cap of 0",
        manifest(maxRecordsPerObject=0),
        [
            "spec.maxRecordsPerObject: Invalid value: 0: "
            "spec.maxRecordsPerObject in body should be greater than or equal to 1"
        ],
    ),
    (
        "a bytes cap of 0",
        manifest(maxBytesPerObject=0),
        [
            "spec.maxBytesPerObject: Invalid value: 0: "
            "spec.maxBytesPerObject in body should be greater than or equal to 1"
        ],
    ),
    (
        "unknown compression",
        manifest(target={**TARGET, "compression": "brotli"}),
        ['spec.target.compression: Unsupported value: "brotli": supported values: "none", "gzip", "zstd"', BLOCKED],
    ),
    (
        "unknown time directory layout",
        manifest(target={**TARGET, "timeDirectoryLayout": "dots"}),
        ['spec.target.timeDirectoryLayout: Unsupported value: "dots": supported values: "slashes", "hive"', BLOCKED],
    ),
    (
        "time zone that is a path",
        manifest(target={**TARGET, "timeZone": "../etc/localtime"}),
        [
            'spec.target.timeZone: Invalid value: "../etc/localtime": '
            "spec.target.timeZone in body should match '^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$'"
        ],
    ),
    (
        "resume window not a duration",
        manifest(resumeWindow="1 day"),
        [
            'spec.resumeWindow: Invalid value: "1 day": '
            "spec.resumeWindow in body should match '^([0-9]+(\\.[0-9]+)?(s|m|h))+$'"
        ],
    ),
]


@pytest.mark.parametrize(("case", "body", "expected"), CREATE_REFUSALS, ids=[c[0] for c in CREATE_REFUSALS])
def test_bad_manifests_are_refused_at_admission_with_a_clear_message(
    server: Admission, case: str, body: dict[str, Any], expected: list[str]
) -> None:
    spec = body["spec"]
    for key in [k for k, v in spec.items() if v is None]:
        del spec[key]
    assert server.errors(body) == expected, case


def changed(path: list[str], value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    old = manifest()
    new = copy.deepcopy(old)
    node = new["spec"]
    for part in path[:-1]:
        node = node[part]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return old, new


UPDATE_REFUSALS = [
    ("bucket changed", changed(["target", "bucket"], "elsewhere"), "target"),
    ("topics changed", changed(["topics"], ["orders", "payments"]), "topics"),
    ("period changed", changed(["dumpPeriodSeconds"], 60), "dumpPeriodSeconds"),
    ("source changed", changed(["source", "bootstrapServers"], "other:9092"), "source"),
    ("taskName added", changed(["taskName"], "added_later"), "taskName"),
    ("storeKeys switched", changed(["target", "storeKeys"], True), "target"),
    ("compression added", changed(["target", "compression"], "gzip"), "target"),
    ("time zone added", changed(["target", "timeZone"], "Asia/Shanghai"), "target"),
    ("records cap added", changed(["maxRecordsPerObject"], 1000), "maxRecordsPerObject"),
    ("bytes cap added", changed(["maxBytesPerObject"], 1 << 20), "maxBytesPerObject"),
]


@pytest.mark.parametrize(("case", "pair", "field"), UPDATE_REFUSALS, ids=[c[0] for c in UPDATE_REFUSALS])
def test_spec_changes_after_creation_are_refused(
    server: Admission, case: str, pair: tuple[dict[str, Any], dict[str, Any]], field: str
) -> None:
    old, new = pair
    assert server.update(old, new).errors == [immutable(field)], case


def test_removing_an_optional_field_is_refused_too(server: Admission) -> None:
    old = manifest(taskName="named_task")
    new = copy.deepcopy(old)
    del new["spec"]["taskName"]
    assert server.update(old, new).errors == [immutable("taskName")]


def test_only_state_may_change(server: Admission) -> None:
    old = manifest()
    new = copy.deepcopy(old)
    new["spec"]["state"] = "Paused"
    assert server.update(old, new).errors == []
