"""The pydantic models and the CRDs generated from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ferry.api.base import KafkaEndpoint, normalise_bootstrap, parse_duration
from ferry.api.crd import crd_for, render_crd_yaml
from ferry.api.kinds import KindDef
from ferry.obsdump.model import OBS_DUMP_TASK, ObsDumpTaskSpec
from ferry.registry import KINDS
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]


def spec(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "source": {"bootstrapServers": "kafka:9092"},
        "topics": ["orders"],
        "target": {"endpoint": "http://s3:8333", "bucket": "dumps", "credentialsSecretRef": {"name": "obs"}},
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_committed_crd_is_generated_from_the_models(kind: KindDef) -> None:
    path = ROOT / "crds" / f"ferry.dev_{kind.plural}.yaml"
    assert path.read_text() == render_crd_yaml(kind), "run `ferry crds` to regenerate crds/"


def test_crd_has_printer_columns_short_names_category_and_status() -> None:
    crd = crd_for(OBS_DUMP_TASK)
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]][:6] == [
        "Task Name",
        "State",
        "Ready",
        "Last Dump",
        "Lag",
        "Age",
    ]
    assert crd["spec"]["names"]["categories"] == ["ferry"]
    assert "odt" in crd["spec"]["names"]["shortNames"]
    assert version["subresources"] == {"status": {}}


def test_crd_schema_is_structural() -> None:
    text = yaml.safe_dump(crd_for(OBS_DUMP_TASK))
    for forbidden in ("$ref", "anyOf", "$defs", "title:", "propertyNames", "additionalProperties: false"):
        assert forbidden not in text


def test_defaults() -> None:
    parsed = ObsDumpTaskSpec.model_validate(spec())
    assert parsed.state.value == "Running"
    assert parsed.dump_period_seconds == 300
    assert parsed.start_from.value == "latest"
    assert parsed.target.record_separator == "\n"
    assert parsed.target.time_directory_format.value == "yyyy/MM/dd/HH"
    assert parsed.resume_window is None and parsed.resume_window_delta is None  # any pause resumes where it was


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"taskName": "ab"}, "taskName must be 4-64"),
        ({"taskName": "bad name!"}, "taskName must be 4-64"),
        ({"topics": [f"t{i}" for i in range(21)]}, "at most 20"),
        ({"topics": None, "topicRegex": ".*"}, "must not match every topic"),
        ({"topicRegex": "orders-.*"}, "exactly one of topics and topicRegex"),
        ({"topics": None}, "exactly one of topics and topicRegex"),
        ({"topics": None, "topicRegex": "orders-(["}, "not a valid regular expression"),
        ({"dumpPeriodSeconds": -5}, "greater than or equal to 1"),
        ({"source": {"bootstrapServers": "kafka:9092", "securityProtocol": "SASL_SSL"}}, "need saslMechanism"),
        ({"startFrom": "middle"}, "'earliest' or 'latest'"),
        ({"unknownField": 1}, "Extra inputs are not permitted"),
        ({"topics": ["has space"]}, "String should match pattern"),
    ],
)
def test_invalid_specs_are_refused_with_a_clear_message(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ObsDumpTaskSpec.model_validate(spec(**overrides))


def test_store_keys_needs_a_control_character_separator() -> None:
    target = {**spec()["target"], "storeKeys": True, "recordSeparator": ","}  # type: ignore[dict-item]
    with pytest.raises(ValidationError, match="control characters"):
        ObsDumpTaskSpec.model_validate(spec(target=target))


def test_instance_identity_normalises_the_bootstrap_list() -> None:
    assert normalise_bootstrap("B:1, a ,b:1") == "a:9092,b:1"
    one = KafkaEndpoint.model_validate({"bootstrapServers": "k1:9092,k2:9092"})
    two = KafkaEndpoint.model_validate({"bootstrapServers": "K2:9092, k1"})
    assert one.instance == two.instance
    named = KafkaEndpoint.model_validate({"bootstrapServers": "k1", "instanceId": "prod-kafka"})
    assert named.instance == "prod-kafka"


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400), ("90m", 5400), ("1h30m", 5400), ("45s", 45)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("1 day")
