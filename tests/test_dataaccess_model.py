"""DataAccessTask's model, its generated CRD as the real API server applies it (schema + CEL), and the SASL
client configuration built for each mechanism."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ferry.api.base import SaslMechanism
from ferry.api.crd import crd_for
from ferry.credentials import Sensitive
from ferry.dataaccess.model import DATA_ACCESS_TASK, DataAccessTaskSpec
from ferry.dataaccess.worker import consumer_group, secret_refs
from ferry.kafka import LIBRDKAFKA_LOGGER, client_config
from ferry.registry import PLUGINS
from ferry.tasks import parse_task
from pydantic import ValidationError

from tests.support.admission import BLOCKED, Admission, admission
from tests.support.cluster import KubeEnv

CRD = crd_for(DATA_ACCESS_TASK)
SECRETS = {
    "SOURCE_SASL_USERNAME": Sensitive("dts-account"),
    "SOURCE_SASL_PASSWORD": Sensitive("dts-s3cret"),
    "TARGET_SASL_USERNAME": Sensitive("ckafka-user"),
    "TARGET_SASL_PASSWORD": Sensitive("ckafka-s3cret"),
}


def dts(**fields: Any) -> dict[str, Any]:
    body = {
        "bootstrapServers": "dts.tencent.internal:9092",
        "topic": "subscribe-orders",
        "consumerGroup": "consumer-grp-1",
        "credentialsSecretRef": {"name": "dts-account"},
        **fields,
    }
    return {k: v for k, v in body.items() if v is not None}


def manifest(source: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"type": "DTS", "dts": dts()} if source is None else source,
        "target": {"bootstrapServers": "ckafka:9092", "topic": "orders"},
    }
    body.update(spec)
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "DataAccessTask",
        "metadata": {"name": "pull-orders"},
        "spec": {k: v for k, v in body.items() if v is not None},
    }


@pytest.fixture(scope="module")
def server(kube: KubeEnv) -> Iterator[Admission]:
    with admission(kube.control_plane.api_client()) as answers:
        yield answers


def test_the_crd_is_structural_its_rules_compile_and_the_example_shape_passes(server: Admission) -> None:
    """The server took the CRD (so it is structural and its rules compile, within the cost budget: see
    test_crd_validation) and admits the example's shape."""
    assert server.errors(manifest()) == []
    assert PLUGINS["DataAccessTask"].definition is DATA_ACCESS_TASK


def test_dts_defaults_to_sasl_plaintext_with_scram_sha_512() -> None:
    spec = DataAccessTaskSpec.model_validate(manifest()["spec"])
    config = client_config(spec.source.endpoint, "SOURCE", SECRETS)
    assert callable(config.pop("error_cb"))  # feeds ferry.kafka.BROKER_ERRORS
    assert config.pop("logger") is LIBRDKAFKA_LOGGER  # rate-limited librdkafka log lines
    assert config == {
        "bootstrap.servers": "dts.tencent.internal:9092",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "dts-account",
        "sasl.password": "dts-s3cret",
    }
    assert spec.start_from.value == "latest"


@pytest.mark.parametrize("mechanism", [m.value for m in SaslMechanism])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_every_sasl_mechanism_reaches_librdkafka_with_the_secret_values(
    server: Admission, mechanism: str, protocol: str
) -> None:
    """What librdkafka is given for each mechanism, and that it accepts that configuration (the live handshakes
    against a real broker are in test_dataaccess_worker)."""
    from confluent_kafka import Consumer

    body = manifest(source={"type": "DTS", "dts": dts(saslMechanism=mechanism, securityProtocol=protocol)})
    assert server.errors(body) == []
    spec = DataAccessTaskSpec.model_validate(body["spec"])
    config = client_config(spec.source.endpoint, "SOURCE", SECRETS)
    assert config["sasl.mechanism"] == mechanism
    assert config["security.protocol"] == protocol
    assert (config["sasl.username"], config["sasl.password"]) == ("dts-account", "dts-s3cret")
    # librdkafka validates the mechanism and protocol when the client is built (no connection is made yet).
    Consumer({**config, "group.id": "g"}).close()


def test_secret_references_cover_both_ends_and_never_hold_values() -> None:
    body = manifest(
        target={
            "bootstrapServers": "ckafka:9093",
            "topic": "orders",
            "securityProtocol": "SASL_SSL",
            "saslMechanism": "SCRAM-SHA-256",
            "credentialsSecretRef": {"name": "ckafka-user", "usernameKey": "user"},
            "tls": {"caSecretRef": {"name": "ckafka-ca", "key": "ca.crt"}},
        }
    )
    task = parse_task(body, PLUGINS)
    refs = {role: (ref.secret, ref.key) for role, ref in secret_refs(task.spec).items()}  # type: ignore[arg-type]
    assert refs == {
        "SOURCE_SASL_USERNAME": ("dts-account", "username"),
        "SOURCE_SASL_PASSWORD": ("dts-account", "password"),
        "TARGET_SASL_USERNAME": ("ckafka-user", "user"),
        "TARGET_SASL_PASSWORD": ("ckafka-user", "password"),
        "TARGET_TLS_CA": ("ckafka-ca", "ca.crt"),
    }
    assert consumer_group(task.spec) == "consumer-grp-1"  # type: ignore[arg-type]
    assert "s3cret" not in repr(SECRETS) and "s3cret" not in str(SECRETS)


def test_the_source_is_a_tagged_union_on_type() -> None:
    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["source"]
    assert schema["required"] == ["type"]
    assert schema["properties"]["type"]["enum"] == ["DTS"]
    assert set(schema["properties"]) == {"type", "dts"}


# (case, manifest, what the server answers); a schema error keeps the CEL rules from running (BLOCKED).
REFUSALS: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "unknown mechanism",
        manifest(source={"type": "DTS", "dts": dts(saslMechanism="GSSAPI")}),
        [
            'spec.source.dts.saslMechanism: Unsupported value: "GSSAPI": '
            'supported values: "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"',
            BLOCKED,
        ],
    ),
    (
        "unknown source type",
        manifest(source={"type": "MySQL", "dts": dts()}),
        ['spec.source.type: Unsupported value: "MySQL": supported values: "DTS"', BLOCKED],
    ),
    (
        "type without its member",
        manifest(source={"type": "DTS"}),
        ["spec.source: Invalid value: source.type DTS needs source.dts"],
    ),
    (
        "SASL without credentials",
        manifest(source={"type": "DTS", "dts": dts(credentialsSecretRef=None)}),
        [
            "spec.source.dts: Invalid value: securityProtocol SASL_PLAINTEXT and SASL_SSL need credentialsSecretRef "
            "(the DTS account and password)"
        ],
    ),
    (
        "mechanism without SASL",
        manifest(source={"type": "DTS", "dts": dts(securityProtocol="PLAINTEXT", saslMechanism="PLAIN")}),
        ["spec.source.dts: Invalid value: saslMechanism is only used with securityProtocol SASL_PLAINTEXT or SASL_SSL"],
    ),
    (
        "target equal to source",
        manifest(target={"bootstrapServers": "dts.tencent.internal:9092", "topic": "subscribe-orders"}),
        [
            "spec: Invalid value: spec.target names the source topic itself (same bootstrapServers and topic): "
            "records would be copied onto themselves; point spec.target at another topic or Kafka instance"
        ],
    ),
    (
        "no target topic",
        manifest(target={"bootstrapServers": "ckafka:9092"}),
        ["spec.target.topic: Required value", BLOCKED],
    ),
    (
        "no consumer group",
        manifest(source={"type": "DTS", "dts": dts(consumerGroup=None)}),
        ["spec.source.dts.consumerGroup: Required value", BLOCKED],
    ),
    (
        "bad group",
        manifest(source={"type": "DTS", "dts": dts(consumerGroup="a group")}),
        [
            'spec.source.dts.consumerGroup: Invalid value: "a group": '
            "spec.source.dts.consumerGroup in body should match '^[A-Za-z0-9._-]{1,255}$'"
        ],
    ),
    (
        "inline password",
        manifest(source={"type": "DTS", "dts": dts(password="x")}),
        [
            'DataAccessTask in version "v1alpha1" cannot be handled as a DataAccessTask: '
            'strict decoding error: unknown field "spec.source.dts.password"'
        ],
    ),
]


@pytest.mark.parametrize(("case", "body", "expected"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_bad_manifests_are_refused_by_the_api_server(
    server: Admission, case: str, body: dict[str, Any], expected: list[str]
) -> None:
    assert server.errors(body) == expected, case  # strict field validation: kubectl apply's default


@pytest.mark.parametrize(("case", "body", "expected"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_the_model_refuses_the_same_manifests(case: str, body: dict[str, Any], expected: list[str]) -> None:
    """`ferry run` and the operator parse the same models, so a manifest never reaches a worker half-valid."""
    with pytest.raises(ValidationError):
        DataAccessTaskSpec.model_validate(body["spec"])


def test_the_model_also_sees_the_same_instance_spelt_otherwise(server: Admission) -> None:
    body = manifest(target={"bootstrapServers": "DTS.tencent.internal", "topic": "subscribe-orders"})
    assert server.errors(body) == []  # CEL compares the strings as written
    with pytest.raises(ValidationError, match="copied onto themselves"):
        DataAccessTaskSpec.model_validate(body["spec"])


def test_source_and_target_may_change_after_creation(server: Admission) -> None:
    old = manifest()
    new = manifest(target={"bootstrapServers": "ckafka-2:9092", "topic": "orders-v2"})
    new["spec"]["source"]["dts"]["topic"] = "subscribe-orders-v2"
    answer = server.update(old, new)
    assert answer.errors == []
    assert answer.object["spec"]["target"]["topic"] == "orders-v2"
    assert DATA_ACCESS_TASK.mutable_fields is None


def test_a_strimzi_kafkauser_secret_works_with_the_username_given_in_the_spec(server: Admission) -> None:
    """Strimzi's KafkaUser Secrets hold `password` (and `sasl.jaas.config`) but no username key: the
    username is the KafkaUser's name, so the spec may name it directly."""
    body = manifest(
        target={
            "bootstrapServers": "my-cluster-kafka-bootstrap.kafka.svc:9093",
            "topic": "orders",
            "securityProtocol": "SASL_SSL",
            "saslMechanism": "SCRAM-SHA-512",
            "credentialsSecretRef": {"name": "ferry-writer", "username": "ferry-writer"},
        }
    )
    assert server.errors(body) == []  # strict field validation: kubectl apply's default
    task = parse_task(body, PLUGINS)
    refs = secret_refs(task.spec)  # type: ignore[arg-type]
    assert "TARGET_SASL_USERNAME" not in refs and refs["TARGET_SASL_PASSWORD"].key == "password"
    spec = DataAccessTaskSpec.model_validate(body["spec"])
    config = client_config(spec.target, "TARGET", {"TARGET_SASL_PASSWORD": Sensitive("pw")})
    assert (config["sasl.username"], config["sasl.password"]) == ("ferry-writer", "pw")
