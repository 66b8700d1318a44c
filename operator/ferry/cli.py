"""`ferry operator | worker | check | run | crds`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from ferry import credentials
from ferry.api import API_VERSION
from ferry.errors import TaskError
from ferry.registry import KINDS, PLUGINS
from ferry.reporting import ConsoleReporter, KubernetesReporter, ResumeStore
from ferry.runtime import run_task, stop_on_signals
from ferry.settings import WorkerSettings
from ferry.tasks import parse_task

log = logging.getLogger("ferry")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ferry", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    op = sub.add_parser("operator", help="run the Kopf operator")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", help="watch only these namespaces")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    op.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="Kopf liveness endpoint")

    sub.add_parser("worker", help="run one task's worker (configured by env, as in the worker Deployment)")
    sub.add_parser(
        "check",
        help="check a spec change against the brokers before it rolls out (configured by env, as in the check Job)",
    )

    run = sub.add_parser("run", help="run a task from manifests, no Kubernetes needed")
    run.add_argument(
        "-f",
        "--file",
        action="append",
        required=True,
        type=Path,
        help="YAML with the task and the Secrets it references (repeatable)",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field, e.g. spec.source.bootstrapServers=localhost:9092",
    )
    run.add_argument(
        "--group", help="consumer group (default: the one the spec names, else ferry-run.<namespace>.<name>)"
    )
    run.add_argument("--duration", type=float, help="stop (flushing and committing) after this many seconds")
    run.add_argument("--metrics-port", type=int, default=-1, help="serve /metrics and /healthz on this port")
    run.add_argument(
        "--state-file",
        type=Path,
        help="one-shot tasks (ObsRestoreTask): where the resume point is kept, so that running again continues "
        "(default: the first manifest's path + .state.json; delete it to start over)",
    )

    crds = sub.add_parser("crds", help="write the CRDs generated from the models")
    crds.add_argument("--out", type=Path, default=Path("crds"), help="directory (default ./crds)")

    args = parser.parse_args(argv)
    settings = WorkerSettings.from_env()
    if args.command != "operator":  # Kopf sets up the operator's logging itself
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "operator":
            _operator(args)
        elif args.command == "worker":
            _worker(settings)
        elif args.command == "check":
            _check(settings)
        elif args.command == "run":
            _run(args, settings)
        else:
            from ferry.api.crd import write_crds

            for path in write_crds(KINDS, args.out):
                print(path)
    except TaskError as err:
        print(f"ferry: {err.reason}: {err.message}", file=sys.stderr)
        sys.exit(2)


def _operator(args: argparse.Namespace) -> None:
    import kopf

    import ferry.operator  # (registers the handlers)

    ferry.operator.CLUSTERWIDE = not args.namespace  # the peer checks need every namespace's tasks
    ferry.operator.NAMESPACES = list(args.namespace or [])

    kopf.configure(verbose=False)
    # A line per successful periodic reconcile would drown the log; failures still show.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or [],
        liveness_endpoint=args.liveness,
    )


def _worker(settings: WorkerSettings) -> None:
    """In a worker pod: task from FERRY_TASK, secrets from env, progress to the CR's status."""
    from kubernetes import client

    doc = json.loads(os.environ["FERRY_TASK"])
    task = parse_task(doc, PLUGINS)
    plugin = PLUGINS[task.definition.kind]
    secrets = credentials.from_environment(plugin.secret_refs(task.spec))
    _load_kube_config()
    worker_id = os.environ.get("FERRY_WORKER_ID") or os.environ.get("HOSTNAME", "worker")
    reporter = KubernetesReporter(
        client.CustomObjectsApi(), task.definition.plural, task.namespace, task.name, worker_id
    )
    stop = threading.Event()
    stop_on_signals(stop)
    resume: ResumeStore | None = None
    if plugin.one_shot:  # its resume point, in the task's status (the worker's Role allows get/patch on it)
        from ferry.obsrestore.resume import StatusResume

        resume = StatusResume(client.CustomObjectsApi(), task.definition.plural, task.namespace, task.name)
    try:
        run_task(
            plugin,
            task,
            secrets,
            os.environ["FERRY_CONSUMER_GROUP"],
            reporter,
            settings,
            stop,
            epoch=int(os.environ.get("FERRY_OFFSET_EPOCH", "0")),
            resets=reporter,
            reset_to=os.environ.get("FERRY_OFFSET_RESET") or None,
            worker_id=worker_id,
            resume=resume,
        )
    finally:
        reporter.close()  # its last report (Stopped) sent before the process exits


def _load_kube_config() -> None:
    """The API server as a worker or check pod reaches it: its ServiceAccount's token, else the kubeconfig it was
    given (KUBECONFIG, as the tests' process kubelet gives one)."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def _check(settings: WorkerSettings) -> None:
    """In a check Job's pod (ferry.control.preflight): the worker's start-up checks for FERRY_TASK's spec, and their
    outcome in the task's status.specCheck, if this check is still the one the operator waits for."""
    from kubernetes import client

    from ferry.control.preflight import CHECK_DIGEST_ENV, CHECK_JOB_ENV, FAILED, PASSED, record_outcome
    from ferry.reporting import utc_now

    task = parse_task(json.loads(os.environ["FERRY_TASK"]), PLUGINS)
    plugin = PLUGINS[task.definition.kind]
    if plugin.preflight is None:
        sys.exit(f"ferry check: {task.definition.kind} has no start-up checks to make")
    error: TaskError | None = None
    try:
        plugin.preflight(task, credentials.from_environment(plugin.secret_refs(task.spec)), settings)
    except TaskError as err:
        error = err
    outcome = {
        "result": PASSED if error is None else FAILED,
        "reason": None if error is None else error.reason,
        "message": None if error is None else error.message,
        "checkedAt": utc_now(),
    }
    _load_kube_config()
    job, wanted = os.environ[CHECK_JOB_ENV], os.environ[CHECK_DIGEST_ENV]
    written = record_outcome(client.CustomObjectsApi(), task, job, wanted, outcome)
    said = "passed" if error is None else f"failed: {error.reason}: {error.message}"
    log.info("spec check %s%s", said, "" if written else " (not recorded: the task waits for another check now)")


def _set_path(doc: dict[str, Any], assignment: str) -> None:
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise TaskError("InvalidArgument", f"--set needs PATH=VALUE, got {assignment!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise TaskError(
            "InvalidArgument", f"--set {path}: {raw!r} is not a YAML value ({_yaml_problem(err)}): quote it"
        ) from None
    *parents, leaf = path.split(".")
    node = doc
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            where = ".".join(parents[: depth + 1])
            raise TaskError("InvalidArgument", f"--set {path}: {where} is not a mapping, so it has no field {leaf!r}")
    node[leaf] = value


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's own words and where, without the source excerpt yaml adds."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(err).splitlines()[0]


def _read_manifests(paths: list[Path]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        try:
            loaded = list(yaml.safe_load_all(path.read_text()))
        except OSError as err:
            raise TaskError("InvalidArgument", f"cannot read {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise TaskError("InvalidArgument", f"{path} is not valid YAML: {_yaml_problem(err)}") from None
        for doc in loaded:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise TaskError("InvalidArgument", f"{path}: each document must be a manifest (a mapping)")
            docs.append(doc)
    return docs


def _run(args: argparse.Namespace, settings: WorkerSettings) -> None:
    docs = _read_manifests(args.file)
    tasks = [d for d in docs if d.get("apiVersion") == API_VERSION]
    if len(tasks) != 1:
        raise TaskError("InvalidArgument", f"the files must hold exactly one {API_VERSION} task, found {len(tasks)}")
    doc = tasks[0]
    for assignment in args.set:
        _set_path(doc, assignment)
    task = parse_task(doc, PLUGINS)
    plugin = PLUGINS[task.definition.kind]
    refs = plugin.secret_refs(task.spec)
    from_env = {r for r in refs if credentials.env_name(r) in os.environ}
    secrets = credentials.from_environment(from_env)
    secrets.update(credentials.from_secret_manifests({r: v for r, v in refs.items() if r not in from_env}, docs))
    stop = threading.Event()
    stop_on_signals(stop)
    if args.duration:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True  # a task that ends first (an ObsRestoreTask) does not wait for it
        timer.start()
    group = args.group or (
        plugin.fixed_group(task.spec) if plugin.fixed_group else f"ferry-run.{task.namespace}.{task.name}"
    )
    how = "to completion" if plugin.one_shot else f"as consumer group {group}"
    print(f"running {task.definition.kind} {task.namespace}/{task.name} {how}", flush=True)
    # Stable across restarts on this host, as a pod's name is across its container's: exactlyOnce names its
    # transactional id after it. Two `ferry run` of one task on one host need FERRY_WORKER_ID each.
    worker_id = os.environ.get("FERRY_WORKER_ID") or socket.gethostname()
    resume: ResumeStore | None = None
    if plugin.one_shot:  # runs to completion; the resume point lets an interrupted run continue
        from ferry.obsrestore.resume import FileResume

        state_file = args.state_file or args.file[0].with_name(args.file[0].name + ".state.json")
        print(f"resume point kept in {state_file} (delete it to start over)", flush=True)
        resume = FileResume(state_file)
    run_task(
        plugin,
        task,
        secrets,
        group,
        ConsoleReporter(),
        settings_with_port(settings, args.metrics_port),
        stop,
        worker_id=worker_id,
        resume=resume,
    )


def settings_with_port(settings: WorkerSettings, port: int) -> WorkerSettings:
    from dataclasses import replace

    return replace(settings, metrics_port=port)
