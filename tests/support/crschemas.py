"""Schemas for the third-party custom resources the chart can render, which kubernetes-validate does not know.

kubernetes-validate ships the schemas of Kubernetes' built-in kinds only. For ServiceMonitor, PodMonitor and
PrometheusRule (monitoring.coreos.com/v1, prometheus-operator 0.84's CRDs) and Certificate and Issuer
(cert-manager.io/v1, cert-manager 1.18's CRDs) these are excerpts of the upstream ``openAPIV3Schema``, written down
from the CRDs' YAML: at every level the chart writes, the complete list of properties the CRD declares
(anything else is an error, as with ``kubectl apply --validate=strict``), their types, enums, patterns and
required fields. Levels the chart never writes (authorization, TLS, relabelings, ACME, Vault...) are accepted
as any object: a value placed there by hand is not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema

__all__ = ["SCHEMAS", "custom_resource_errors"]

Schema = dict[str, Any]

_ANY_OBJECT: Schema = {"type": "object"}
_STRINGS: Schema = {"type": "array", "items": {"type": "string"}}
_STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_INT_OR_STRING: Schema = {"type": ["integer", "string"]}
_PROM_DURATION: Schema = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_SCRAPE_PROTOCOLS = ["PrometheusProto", "OpenMetricsText0.0.1", "OpenMetricsText1.0.0", "PrometheusText0.0.4"]
_SCRAPE_PROTOCOLS += ["PrometheusText1.0.0"]

_OBJECT_META: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}

_LABEL_SELECTOR: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {"key": {"type": "string"}, "operator": {"type": "string"}, "values": _STRINGS},
            },
        },
        "matchLabels": _STRING_MAP,
    },
}

_NAMESPACE_SELECTOR: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": _STRINGS},
}

# Fields a ServiceMonitor Endpoint and a PodMonitor PodMetricsEndpoint share.
_ENDPOINT_COMMON: dict[str, Schema] = {
    "authorization": _ANY_OBJECT,
    "basicAuth": _ANY_OBJECT,
    "bearerTokenSecret": _ANY_OBJECT,
    "enableHttp2": {"type": "boolean"},
    "filterRunning": {"type": "boolean"},
    "followRedirects": {"type": "boolean"},
    "honorLabels": {"type": "boolean"},
    "honorTimestamps": {"type": "boolean"},
    "interval": _PROM_DURATION,
    "metricRelabelings": {"type": "array", "items": _ANY_OBJECT},
    "noProxy": {"type": "string"},
    "oauth2": _ANY_OBJECT,
    "params": {"type": "object", "additionalProperties": _STRINGS},
    "path": {"type": "string"},
    "port": {"type": "string"},
    "proxyConnectHeader": _ANY_OBJECT,
    "proxyFromEnvironment": {"type": "boolean"},
    "proxyUrl": {"type": "string", "pattern": r"^(http|https|socks5)://.+$"},
    "relabelings": {"type": "array", "items": _ANY_OBJECT},
    "scheme": {"type": "string", "enum": ["http", "https", "HTTP", "HTTPS"]},
    "scrapeTimeout": _PROM_DURATION,
    "targetPort": _INT_OR_STRING,
    "tlsConfig": _ANY_OBJECT,
    "trackTimestampsStaleness": {"type": "boolean"},
}

# Fields the ServiceMonitor and PodMonitor specs share.
_MONITOR_SPEC_COMMON: dict[str, Schema] = {
    "attachMetadata": {"type": "object", "additionalProperties": False, "properties": {"node": {"type": "boolean"}}},
    "bodySizeLimit": {"type": "string"},
    "convertClassicHistogramsToNHCB": {"type": "boolean"},
    "fallbackScrapeProtocol": {"type": "string", "enum": _SCRAPE_PROTOCOLS},
    "jobLabel": {"type": "string"},
    "keepDroppedTargets": {"type": "integer"},
    "labelLimit": {"type": "integer"},
    "labelNameLengthLimit": {"type": "integer"},
    "labelValueLengthLimit": {"type": "integer"},
    "namespaceSelector": _NAMESPACE_SELECTOR,
    "nativeHistogramBucketLimit": {"type": "integer"},
    "nativeHistogramMinBucketFactor": _INT_OR_STRING,
    "podTargetLabels": _STRINGS,
    "sampleLimit": {"type": "integer"},
    "scrapeClass": {"type": "string", "minLength": 1},
    "scrapeClassicHistograms": {"type": "boolean"},
    "scrapeProtocols": {"type": "array", "items": {"type": "string", "enum": _SCRAPE_PROTOCOLS}},
    "selector": _LABEL_SELECTOR,
    "selectorMechanism": {"type": "string", "enum": ["RelabelConfig", "RoleSelector"]},
    "targetLimit": {"type": "integer"},
}


def _resource(api_version: str, kind: str, spec: Schema) -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _OBJECT_META,
            "spec": spec,
        },
    }


_SERVICE_MONITOR_SPEC: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["endpoints", "selector"],
    "properties": {
        **_MONITOR_SPEC_COMMON,
        "endpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {**_ENDPOINT_COMMON, "bearerTokenFile": {"type": "string"}},
            },
        },
        "serviceDiscoveryRole": {"type": "string", "enum": ["Endpoints", "EndpointSlice"]},
        "targetLabels": _STRINGS,
    },
}

_POD_MONITOR_SPEC: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["selector"],
    "properties": {
        **_MONITOR_SPEC_COMMON,
        "podMetricsEndpoints": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    **_ENDPOINT_COMMON,
                    "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                },
            },
        },
    },
}

_KEY_USAGES = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
]

_CERTIFICATE_SPEC: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": ["issuerRef", "secretName"],
    "properties": {
        "additionalOutputFormats": {"type": "array", "items": _ANY_OBJECT},
        "commonName": {"type": "string"},
        "dnsNames": _STRINGS,
        "duration": {"type": "string"},
        "emailAddresses": _STRINGS,
        "encodeUsagesInRequest": {"type": "boolean"},
        "ipAddresses": _STRINGS,
        "isCA": {"type": "boolean"},
        "issuerRef": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {"group": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}},
        },
        "keystores": _ANY_OBJECT,
        "literalSubject": {"type": "string"},
        "nameConstraints": _ANY_OBJECT,
        "otherNames": {"type": "array", "items": _ANY_OBJECT},
        "privateKey": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "algorithm": {"type": "string", "enum": ["RSA", "ECDSA", "Ed25519"]},
                "encoding": {"type": "string", "enum": ["PKCS1", "PKCS8"]},
                "rotationPolicy": {"type": "string", "enum": ["Never", "Always"]},
                "size": {"type": "integer"},
            },
        },
        "renewBefore": {"type": "string"},
        "renewBeforePercentage": {"type": "integer"},
        "revisionHistoryLimit": {"type": "integer"},
        "secretName": {"type": "string"},
        "secretTemplate": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"annotations": _STRING_MAP, "labels": _STRING_MAP},
        },
        "signatureAlgorithm": {
            "type": "string",
            "enum": [
                "SHA256WithRSA",
                "SHA384WithRSA",
                "SHA512WithRSA",
                "ECDSAWithSHA256",
                "ECDSAWithSHA384",
                "ECDSAWithSHA512",
                "PureEd25519",
            ],
        },
        "subject": _ANY_OBJECT,
        "uris": _STRINGS,
        "usages": {"type": "array", "items": {"type": "string", "enum": _KEY_USAGES}},
    },
}

_ISSUER_SPEC: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "acme": _ANY_OBJECT,
        "ca": _ANY_OBJECT,
        "selfSigned": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"crlDistributionPoints": _STRINGS},
        },
        "vault": _ANY_OBJECT,
        "venafi": _ANY_OBJECT,
    },
    # Not in the CRD: cert-manager's webhook requires exactly one issuer type.
    "minProperties": 1,
    "maxProperties": 1,
}

_PROMETHEUS_RULE_SPEC: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": _PROM_DURATION,
                    "labels": _STRING_MAP,
                    "limit": {"type": "integer"},
                    "partial_response_strategy": {"type": "string"},
                    "query_offset": _PROM_DURATION,
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["expr"],
                            "properties": {
                                "alert": {"type": "string"},
                                "record": {"type": "string"},
                                "expr": _INT_OR_STRING,
                                "for": _PROM_DURATION,
                                "keep_firing_for": {"type": "string", "minLength": 1},
                                "labels": _STRING_MAP,
                                "annotations": _STRING_MAP,
                            },
                        },
                    },
                },
            },
        }
    },
}

SCHEMAS: dict[tuple[str, str], Schema] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _resource(
        "monitoring.coreos.com/v1", "ServiceMonitor", _SERVICE_MONITOR_SPEC
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): _resource("monitoring.coreos.com/v1", "PodMonitor", _POD_MONITOR_SPEC),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _resource(
        "monitoring.coreos.com/v1", "PrometheusRule", _PROMETHEUS_RULE_SPEC
    ),
    ("cert-manager.io/v1", "Certificate"): _resource("cert-manager.io/v1", "Certificate", _CERTIFICATE_SPEC),
    ("cert-manager.io/v1", "Issuer"): _resource("cert-manager.io/v1", "Issuer", _ISSUER_SPEC),
}


def custom_resource_errors(document: Mapping[str, Any]) -> list[str]:
    """Errors of a third-party custom resource against its schema; KeyError for a kind not covered here."""
    schema = SCHEMAS[(document["apiVersion"], document["kind"])]
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
