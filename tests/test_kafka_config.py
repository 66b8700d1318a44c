"""librdkafka configuration built from a Kafka endpoint, for every kind: TLS with a CA and a client
certificate (mTLS, as Strimzi's `authentication: tls` users have), checked by librdkafka itself."""

from __future__ import annotations

import pytest
import trustme
from confluent_kafka import KafkaException, Producer
from ferry.api.base import KafkaEndpoint
from ferry.credentials import Sensitive
from ferry.errors import TaskError
from ferry.kafka import admin_client, client_config, endpoint_secret_refs, look_up

from tests.support.kafka import KafkaCluster


def test_a_client_certificate_and_ca_reach_librdkafka_from_their_secrets() -> None:
    ca = trustme.CA()
    client = ca.issue_cert("ferry-worker")
    endpoint = KafkaEndpoint.model_validate(
        {
            "bootstrapServers": "my-cluster-kafka-bootstrap.kafka.svc:9093",
            "securityProtocol": "SSL",
            "tls": {
                "caSecretRef": {"name": "my-cluster-cluster-ca-cert", "key": "ca.crt"},
                "clientCertificateSecretRef": {"name": "ferry-user"},
            },
        }
    )
    refs = {role: (ref.secret, ref.key) for role, ref in endpoint_secret_refs(endpoint, "SOURCE").items()}
    assert refs == {
        "SOURCE_TLS_CA": ("my-cluster-cluster-ca-cert", "ca.crt"),
        "SOURCE_TLS_CERT": ("ferry-user", "user.crt"),  # Strimzi KafkaUser Secret keys by default
        "SOURCE_TLS_KEY": ("ferry-user", "user.key"),
    }
    secrets = {
        "SOURCE_TLS_CA": Sensitive(ca.cert_pem.bytes().decode()),
        "SOURCE_TLS_CERT": Sensitive(client.cert_chain_pems[0].bytes().decode()),
        "SOURCE_TLS_KEY": Sensitive(client.private_key_pem.bytes().decode()),
    }
    config = client_config(endpoint, "SOURCE", secrets)
    assert config["ssl.certificate.pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in config["ssl.key.pem"] and "CERTIFICATE" in config["ssl.ca.pem"]
    Producer(config).flush(0)  # librdkafka parses the PEMs when it builds the SSL context

    broken = {**secrets, "SOURCE_TLS_KEY": Sensitive("not a key")}
    with pytest.raises(KafkaException, match=r"ssl\.key"):
        Producer(client_config(endpoint, "SOURCE", broken))


def test_a_worker_given_a_certificate_secret_that_is_not_pem_reports_it_and_waits() -> None:
    """librdkafka refuses such settings when the client is built: the worker reports a reason a user can
    act on and retries, instead of dying into a crash loop."""
    from ferry.dataaccess.model import DataAccessTaskSpec
    from ferry.dataaccess.pipeline import AccessPipeline
    from ferry.metrics import WorkerMetrics

    from tests.support.dumps import Recorder

    spec = DataAccessTaskSpec.model_validate(
        {
            "source": {
                "type": "DTS",
                "dts": {
                    "bootstrapServers": "127.0.0.1:1",
                    "securityProtocol": "SSL",
                    "topic": "t",
                    "consumerGroup": "g",
                    "tls": {"clientCertificateSecretRef": {"name": "user"}},
                },
            },
            "target": {"bootstrapServers": "127.0.0.1:2", "topic": "t"},
        }
    )
    secrets = {"SOURCE_TLS_CERT": Sensitive("not a certificate"), "SOURCE_TLS_KEY": Sensitive("not a key either")}
    source_config = client_config(spec.source.endpoint, "SOURCE", secrets)
    with pytest.raises(TaskError) as refused:
        admin_client(source_config)
    assert refused.value.reason == "KafkaClientConfigInvalid"
    assert "ssl.certificate.pem" in refused.value.message and "127.0.0.1:1" in refused.value.message

    recorder = Recorder()
    pipeline = AccessPipeline(
        spec, source_config, {"bootstrap.servers": "127.0.0.1:2"}, "g", recorder, WorkerMetrics("DataAccessTask", "t")
    )
    assert pipeline._ready() is False  # reported, and retried by the caller: no exception escapes
    error = recorder.last.error
    assert error is not None and error.reason == "KafkaClientConfigInvalid"
    assert "not a key either" not in error.message and "not a certificate" not in error.message


def endpoint_at(bootstrap: str, protocol: str, mechanism: str | None = None, ca: bool = False) -> KafkaEndpoint:
    fields: dict[str, object] = {"bootstrapServers": bootstrap, "securityProtocol": protocol}
    if mechanism is not None:
        fields |= {"saslMechanism": mechanism, "credentialsSecretRef": {"name": "kafka-user"}}
    if ca:
        fields["tls"] = {"caSecretRef": {"name": "cluster-ca", "key": "ca.crt"}}
    return KafkaEndpoint.model_validate(fields)


@pytest.mark.parametrize(
    ("listener", "protocol", "mechanism", "reason", "says"),
    [
        # SASL against a listener without that mechanism (here: without SASL at all)
        ("PLAINTEXT", "SASL_PLAINTEXT", "SCRAM-SHA-512", "KafkaAuthenticationFailed", "supported mechanisms"),
        # the broker closes the connection after ApiVersions, librdkafka says no more than that: a hint, not a verdict
        ("SASL_PLAINTEXT", "PLAINTEXT", None, "KafkaUnreachable", "check securityProtocol"),
        ("SASL_PLAINTEXT", "SASL_SSL", "SCRAM-SHA-512", "KafkaSecurityProtocolMismatch", "PLAINTEXT"),
        ("SSL", "SASL_PLAINTEXT", "SCRAM-SHA-512", "KafkaUnreachable", "check securityProtocol"),
        ("SSL", "SSL", None, "KafkaTLSFailed", "certificate verify failed"),  # a CA that did not sign the broker
    ],
)
def test_a_handshake_that_fails_is_reported_as_its_cause_not_as_an_unreachable_broker(
    kafka: KafkaCluster, listener: str, protocol: str, mechanism: str | None, reason: str, says: str
) -> None:
    bootstrap = {
        "PLAINTEXT": kafka.bootstrap,
        "SASL_PLAINTEXT": kafka.sasl_plaintext_bootstrap,
        "SSL": kafka.ssl_bootstrap,
    }[listener]
    endpoint = endpoint_at(bootstrap, protocol, mechanism, ca=protocol in ("SSL", "SASL_SSL"))
    secrets = {
        "SOURCE_SASL_USERNAME": Sensitive(kafka.scram_user),
        "SOURCE_SASL_PASSWORD": Sensitive(kafka.scram_password),
        "SOURCE_TLS_CA": Sensitive(trustme.CA().cert_pem.bytes().decode()),  # never the cluster's CA
    }
    with pytest.raises(TaskError) as raised:
        look_up(admin_client(client_config(endpoint, "SOURCE", secrets)), bootstrap, timeout=5)
    assert raised.value.reason == reason, str(raised.value)
    assert says in raised.value.message
    assert kafka.scram_password not in str(raised.value)
