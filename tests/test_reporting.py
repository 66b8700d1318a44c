"""Progress reports, secrets handling and the `ferry` command line, without servers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from ferry.api.base import PartitionProgress, Totals, WorkerError
from ferry.cli import main
from ferry.credentials import SecretRef, Sensitive, from_environment, from_secret_manifests
from ferry.errors import TaskError
from ferry.reporting import ConsoleReporter, Progress


def test_worker_reports_cap_partitions_keeping_the_most_lagging() -> None:
    partitions = [PartitionProgress(topic="t", partition=p, lag=p % 7) for p in range(500)]
    wire = Progress(phase="Running", partitions=partitions).wire()
    assert len(wire["partitions"]) == 200 and min(p["lag"] for p in wire["partitions"]) >= 4
    assert wire["lag"] == sum(p % 7 for p in range(500))


def test_console_reporter_prints_one_line_with_partitions_and_error() -> None:
    out = io.StringIO()
    progress = Progress(
        phase="Failed",
        partitions=[PartitionProgress(topic="orders", partition=1, committed_offset=7, lag=3)],
        totals=Totals(records=7, bytes=70),
        error=WorkerError(reason="BucketNotFound", message="create it", time="t"),
    )
    ConsoleReporter(out).report(progress)
    line = out.getvalue()
    assert line.count("\n") == 1
    assert "Failed records=7 bytes=70 lag=3" in line and "orders[1]@7 lag 3" in line
    assert "error=BucketNotFound: create it" in line


def test_sensitive_values_never_print() -> None:
    value = Sensitive("hunter2")
    assert "hunter2" not in repr(value) and "hunter2" not in str(value) and "hunter2" not in f"{[value]}"
    assert value.reveal() == "hunter2"


def test_secrets_resolve_from_manifests_with_data_or_string_data() -> None:
    docs = [
        {"kind": "Secret", "metadata": {"name": "a"}, "data": {"k": "c2VjcmV0"}},
        {"kind": "Secret", "metadata": {"name": "b"}, "stringData": {"k": "plain"}},
    ]
    found = from_secret_manifests({"ONE": SecretRef("a", "k"), "TWO": SecretRef("b", "k")}, docs)
    assert found["ONE"].reveal() == "secret" and found["TWO"].reveal() == "plain"
    with pytest.raises(TaskError, match="not among the manifests") as missing:
        from_secret_manifests({"X": SecretRef("missing", "k")}, docs)
    assert missing.value.reason == "SecretNotFound"
    with pytest.raises(TaskError, match="has no key 'nope'"):
        from_secret_manifests({"X": SecretRef("a", "nope")}, docs)


def test_secrets_resolve_from_the_environment_in_a_pod() -> None:
    assert from_environment(["ROLE"], {"FERRY_SECRET_ROLE": "v"})["ROLE"].reveal() == "v"
    with pytest.raises(TaskError, match="FERRY_SECRET_ROLE is unset"):
        from_environment(["ROLE"], {})


def test_ferry_crds_writes_the_generated_crds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["crds", "--out", str(tmp_path)])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [
        "ferry.dev_dataaccesstasks.yaml",
        "ferry.dev_obsdumptasks.yaml",
        "ferry.dev_obsrestoretasks.yaml",
        "ferry.dev_topicsyncs.yaml",
    ]
    assert "ferry.dev_obsdumptasks.yaml" in capsys.readouterr().out


def test_ferry_run_refuses_an_invalid_manifest_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: ferry.dev/v1alpha1\nkind: ObsDumpTask\nmetadata: {name: bad}\n"
        "spec: {source: {bootstrapServers: k}, topicRegex: '.*', target: {endpoint: 'http://s', bucket: bkt,"
        " credentialsSecretRef: {name: s}}}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "-f", str(manifest)])
    assert exit_info.value.code == 2
    assert "InvalidSpec: spec.topicRegex" in capsys.readouterr().err


def test_the_status_reset_ledger_turns_api_failures_into_a_reason_the_worker_reports() -> None:
    from ferry.errors import TaskError
    from ferry.reporting import KubernetesReporter

    class Refusing:
        def get_namespaced_custom_object_status(self, *args: object, **kwargs: object) -> dict[str, object]:
            raise RuntimeError("403 Forbidden")

        def patch_namespaced_custom_object_status(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("403 Forbidden")

    class Answering:
        def __init__(self) -> None:
            self.patched: list[object] = []

        def get_namespaced_custom_object_status(self, *args: object, **kwargs: object) -> dict[str, object]:
            assert kwargs["_request_timeout"]  # a slow API server must not hold the worker up for long
            return {"status": {"offsetResetEpoch": 2}}

        def patch_namespaced_custom_object_status(self, *args: object, **kwargs: object) -> None:
            assert kwargs["_request_timeout"]
            self.patched.append(args[-1])

    ledger = KubernetesReporter(Refusing(), "dataaccesstasks", "ns", "t", "pod-1")
    with pytest.raises(TaskError, match="RuntimeError") as read:
        ledger.applied_epoch()
    assert read.value.reason == "StatusUnavailable"
    with pytest.raises(TaskError, match="ServiceAccount"):
        ledger.record(3)
    answering = Answering()
    ledger = KubernetesReporter(answering, "dataaccesstasks", "ns", "t", "pod-1")
    assert ledger.applied_epoch() == 2
    ledger.record(3)
    assert answering.patched == [{"status": {"offsetResetEpoch": 3}}]


def test_progress_reports_go_out_on_a_thread_of_their_own_latest_first_and_close_sends_the_last() -> None:
    """A slow API server never holds up the data path that reports: `report` returns at once while a patch
    hangs, reports made meanwhile collapse into the latest, and `close` sends it before the worker exits."""
    import threading
    import time

    from ferry.reporting import KubernetesReporter, Progress, Totals

    release = threading.Event()

    class Slow:
        def __init__(self) -> None:
            self.sent: list[int] = []

        def patch_namespaced_custom_object_status(self, *args: object, **kwargs: object) -> None:
            release.wait(30)  # the API server answers only once released
            body: dict[str, dict[str, dict[str, dict[str, object]]]] = args[-1]  # type: ignore[assignment]
            self.sent.append(int(body["status"]["workers"]["pod-1"]["totals"]["records"]))  # type: ignore[call-overload]

    def progress(records: int) -> Progress:
        return Progress(phase="Running", partitions=[], totals=Totals(records=records, bytes=0), epoch=0)

    api = Slow()
    reporter = KubernetesReporter(api, "topicsyncs", "ns", "t", "pod-1")
    started = time.monotonic()
    for records in range(1, 6):
        reporter.report(progress(records))
    assert time.monotonic() - started < 1.0  # five reports while the first patch hangs: none waited for it
    release.set()
    reporter.close()
    # At most the one the sender took first (in flight), then the latest: the others were superseded unsent.
    assert api.sent[-1] == 5 and len(api.sent) <= 2 and api.sent == sorted(api.sent), api.sent
