"""DataAccessTask's model, its generated CRD (schema + CEL, as the API server applies them), and the SASL
client configuration built for each mechanism."""

from __future__ import annotations

from typing import Any

import pytest
from ferry.api.base import SaslMechanism
from ferry.api.crd import crd_for
from ferry.credentials import Sensitive
from ferry.dataaccess.model import DATA_ACCESS_TASK, DataAccessTaskSpec
from ferry.dataaccess.worker import consumer_group, secret_refs
from ferry.kafka import client_config
from ferry.registry import PLUGINS
from ferry.tasks import parse_task
from pydantic import ValidationError

from tests.support.crdcheck import cost_check, structural_check, validate

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


def test_the_crd_is_structural_its_rules_compile_and_the_example_shape_passes() -> None:
    assert structural_check(CRD) == []
    assert cost_check(CRD) == []
    assert validate(CRD, manifest()) == []
    assert PLUGINS["DataAccessTask"].definition is DATA_ACCESS_TASK


def test_dts_defaults_to_sasl_plaintext_with_scram_sha_512() -> None:
    spec = DataAccessTaskSpec.model_validate(manifest()["spec"])
    config = client_config(spec.source.endpoint, "SOURCE", SECRETS)
    assert callable(config.pop("error_cb"))  # feeds ferry.kafka.BROKER_ERRORS
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
def test_every_sasl_mechanism_reaches_librdkafka_with_the_secret_values(mechanism: str, protocol: str) -> None:
    """What librdkafka is given for each mechanism, and that it accepts that configuration (the live handshakes
    against a real broker are in test_dataaccess_worker)."""
    from confluent_kafka import Consumer

    body = manifest(source={"type": "DTS", "dts": dts(saslMechanism=mechanism, securityProtocol=protocol)})
    assert validate(CRD, body) == []
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


REFUSALS = [
    ("unknown mechanism", manifest(source={"type": "DTS", "dts": dts(saslMechanism="GSSAPI")}), "supported values"),
    ("unknown source type", manifest(source={"type": "MySQL", "dts": dts()}), "supported values"),
    ("type without its member", manifest(source={"type": "DTS"}), "source.type DTS needs source.dts"),
    (
        "SASL without credentials",
        manifest(source={"type": "DTS", "dts": dts(credentialsSecretRef=None)}),
        "need credentialsSecretRef",
    ),
    (
        "mechanism without SASL",
        manifest(source={"type": "DTS", "dts": dts(securityProtocol="PLAINTEXT", saslMechanism="PLAIN")}),
        "only used with securityProtocol",
    ),
    (
        "target equal to source",
        manifest(target={"bootstrapServers": "dts.tencent.internal:9092", "topic": "subscribe-orders"}),
        "copied onto themselves",
    ),
    ("no target topic", manifest(target={"bootstrapServers": "ckafka:9092"}), "Required value"),
    ("no consumer group", manifest(source={"type": "DTS", "dts": dts(consumerGroup=None)}), "Required value"),
    ("bad group", manifest(source={"type": "DTS", "dts": dts(consumerGroup="a group")}), "should match"),
    ("inline password", manifest(source={"type": "DTS", "dts": dts(password="x")}), "unknown field"),
]


@pytest.mark.parametrize(("case", "body", "message"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_bad_manifests_are_refused_by_the_api_server(case: str, body: dict[str, Any], message: str) -> None:
    errors = validate(CRD, body, field_validation="Strict")  # kubectl apply's default
    assert any(message in e for e in errors), errors


@pytest.mark.parametrize(("case", "body", "message"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_the_model_refuses_the_same_manifests(case: str, body: dict[str, Any], message: str) -> None:
    """`ferry run` and the operator parse the same models, so a manifest never reaches a worker half-valid."""
    with pytest.raises(ValidationError):
        DataAccessTaskSpec.model_validate(body["spec"])


def test_the_model_also_sees_the_same_instance_spelt_otherwise() -> None:
    body = manifest(target={"bootstrapServers": "DTS.tencent.internal", "topic": "subscribe-orders"})
    assert validate(CRD, body) == []  # CEL compares the strings as written
    with pytest.raises(ValidationError, match="copied onto themselves"):
        DataAccessTaskSpec.model_validate(body["spec"])


def test_source_and_target_may_change_after_creation() -> None:
    old = manifest()
    new = manifest(target={"bootstrapServers": "ckafka-2:9092", "topic": "orders-v2"})
    new["spec"]["source"]["dts"]["topic"] = "subscribe-orders-v2"
    assert validate(CRD, new, old) == []
    assert DATA_ACCESS_TASK.mutable_fields is None


def test_a_strimzi_kafkauser_secret_works_with_the_username_given_in_the_spec() -> None:
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
    assert validate(CRD, body, field_validation="Strict") == []
    task = parse_task(body, PLUGINS)
    refs = secret_refs(task.spec)  # type: ignore[arg-type]
    assert "TARGET_SASL_USERNAME" not in refs and refs["TARGET_SASL_PASSWORD"].key == "password"
    spec = DataAccessTaskSpec.model_validate(body["spec"])
    config = client_config(spec.target, "TARGET", {"TARGET_SASL_PASSWORD": Sensitive("pw")})
    assert (config["sasl.username"], config["sasl.password"]) == ("ferry-writer", "pw")
