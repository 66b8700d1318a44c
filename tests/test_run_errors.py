"""`ferry run` with bad input: one `ferry:` line that says what to fix, exit code 2, never a traceback; and the
same name and pattern rules the API server and the CRDs apply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "obsdumptask.yaml"


def example_docs() -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]


def ferry_run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ferry", "run", *args, "--duration", "1"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


def assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ferry: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def write(tmp_path: Path, docs: list[dict[str, object]]) -> str:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: ferry.dev/v1alpha1\nkind: ObsDumpTask\nspec:\n  topics: [orders\n")
    assert_refused(ferry_run("-f", str(path)), str(path), "is not valid YAML", "line")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    assert_refused(ferry_run("-f", str(tmp_path / "absent.yaml")), "cannot read", "absent.yaml")


def test_a_set_value_that_is_not_yaml_says_to_quote_it() -> None:
    assert_refused(ferry_run("-f", str(EXAMPLE), "--set", "spec.topics=[orders"), "--set spec.topics", "quote it")


def test_a_set_path_through_a_scalar_is_refused() -> None:
    result = ferry_run("-f", str(EXAMPLE), "--set", "spec.startFrom.deep=1")
    assert_refused(result, "spec.startFrom is not a mapping")


def test_a_secret_data_value_that_is_not_base64_says_to_use_string_data(tmp_path: Path) -> None:
    docs = example_docs()
    secret = next(d for d in docs if d["kind"] == "Secret")
    secret.pop("stringData")
    secret["data"] = {"accessKey": "not base64!", "secretKey": "c2VjcmV0"}
    assert_refused(ferry_run("-f", write(tmp_path, docs)), "InvalidSecret", "accessKey", "stringData")


def test_a_manifest_without_a_name_is_refused(tmp_path: Path) -> None:
    docs = example_docs()
    docs[0]["metadata"] = {}
    assert_refused(ferry_run("-f", write(tmp_path, docs)), "metadata.name is required")


@pytest.mark.parametrize(
    ("name", "message"),
    [("x" * 300, "at most 253 characters"), ("Orders_To_OBS", "lower case letters"), ("-orders", "lower case")],
)
def test_a_name_the_api_server_would_refuse_is_refused(tmp_path: Path, name: str, message: str) -> None:
    docs = example_docs()
    docs[0]["metadata"] = {"name": name}
    assert_refused(ferry_run("-f", write(tmp_path, docs)), "metadata.name", message)


@pytest.mark.parametrize("pattern", ["(?s).*", "[\\s\\S]*", ".{0,}", "(?:.)+", "__.*|.*"])
def test_a_topic_pattern_that_matches_every_topic_is_refused_however_written(tmp_path: Path, pattern: str) -> None:
    docs = example_docs()
    spec = docs[0]["spec"]
    assert isinstance(spec, dict)
    spec.pop("topics")
    spec["topicRegex"] = pattern
    assert_refused(ferry_run("-f", write(tmp_path, docs)), "topicRegex must not match every topic")
