"""The validating admission webhook: refuse at `kubectl apply` what the operator would later mark Failed.

For every kind in the registry it refuses, each time saying what to change:

1. a manifest the kind's model rejects;
2. for kinds that declare `mutable_fields` (ObsDumpTask: only `spec.state`), a change of any other spec field
   (a change back to the accepted spec is a repair, and admitted);
3. on CREATE, a task the kind's `admission` hook refuses (ObsDumpTask: the 19th on a Kafka instance);
4. a task that would raise one of REFUSING_CONDITIONS (TopicSync: a replication loop with identity naming),
   unless it carries that condition's opt-in annotation;
5. a copy onto itself through two spellings of one cluster (TopicSync, DataAccessTask: the kind's
   `onto_itself` hook), when the cluster ids the tasks' workers reported tell (ferry.control.identity);
6. a `spec.taskName` another task of the kind in the namespace already has (on CREATE, and on an UPDATE that
   changes the name): task names are unique per namespace and kind (ferry.control.names).

Rules 3 to 5 know a Kafka cluster by the cluster id its brokers reported to some task's workers, for any
`host:port` of the request's bootstrap lists; a spelling no worker has reached is known only by its
normalised bootstrap list. What the webhook cannot tell apart it admits: the worker, which asks the brokers,
refuses a copy onto itself (`CopyOntoItself`), and the operator counts the task under its cluster id once
its workers have reported.

Deletes, and updates that leave the spec as it was (finalizers, labels, Kopf's and the operator's own
annotations), are always admitted, so the operator can always finish its work, even on a task that predates
the webhook. The operator enforces the same rules by marking tasks Failed (rule 5: the worker, against the
brokers themselves), so the webhook is optional.

Kopf's server routes `POST <path>/{handler id}` to the handler with that id (`kopf/_kits/webhooks.py`); with no
root path and the ids below, the paths are `/validate-<plural>`, e.g. `/validate-obsdumptasks`. A path naming
no handler runs none and admits everything, so the chart's paths must be exactly these. Kopf does not manage
the ValidatingWebhookConfiguration: the Helm chart owns it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ferry.api import GROUP, VERSION
from ferry.api.base import normalise_bootstrap
from ferry.control.accepted import ACCEPTED_SPEC_ANNOTATION, accepted_spec, running_body
from ferry.control.identity import endpoints_of
from ferry.control.names import name_taken, task_name_of
from ferry.control.reconcile import rfc3339
from ferry.errors import TaskError
from ferry.registry import PLUGINS
from ferry.settings import OperatorSettings
from ferry.tasks import KindPlugin, Task, parse_task

log = logging.getLogger(__name__)

ALLOW_LOOP_ANNOTATION = "ferry.dev/allow-replication-loop"
CERT_FILE, KEY_FILE = "tls.crt", "tls.key"  # the kubernetes.io/tls Secret layout
# A kind's condition that refuses the task at admission: the annotation that opts in, and the fix.
REFUSING_CONDITIONS: dict[str, tuple[str, str]] = {
    "ReplicationLoop": (
        ALLOW_LOOP_ANNOTATION,
        "If the loop is not intended, set spec.targetTopicName so the copies land in other topics, e.g. "
        "'{source}.{topic}'; if it is (active-active sync, where the ferry.origin header stops records being "
        f'copied back), annotate this TopicSync with {ALLOW_LOOP_ANNOTATION}: "true"',
    ),
}

Body = Mapping[str, Any]


def handler_id(plugin: KindPlugin) -> str:
    """Also the URL path Kopf serves the kind's handler at (with a leading slash)."""
    return f"validate-{plugin.definition.plural}"


def review(
    plugin: KindPlugin,
    operation: str,
    new_body: Body | None,
    old_body: Body | None,
    list_peers: Callable[[], list[dict[str, Any]]],
    now: datetime | None = None,
) -> str | None:
    """Why the operation must be refused (a message saying what to change), or None to admit it.

    `list_peers` returns every task of the kind in the cluster; it is called only when a rule needs them,
    and at most once.
    """
    if operation not in ("CREATE", "UPDATE") or new_body is None:
        return None
    kind = plugin.definition.kind
    new_spec = new_body.get("spec") or {}
    if operation == "UPDATE" and old_body is not None:
        if new_spec == (old_body.get("spec") or {}):
            return None  # metadata only: finalizers and annotations must always get through
        immutable = _immutable_change(plugin, new_body, old_body)
        if immutable is not None:
            return immutable
    body = _with_creation_time(_with_current_ids(plugin, new_body, old_body), now or datetime.now(UTC))
    try:
        task = parse_task(body, {kind: plugin})
    except TaskError as err:
        return f"invalid {kind}: {err.message}"
    # The other tasks as their workers run them: a change the operator holds back claims nothing yet.
    peers = _once(lambda: _with_self([running_body(plugin, p) for p in list_peers()], body))
    if plugin.onto_itself is not None:
        onto_itself = plugin.onto_itself(task, peers)
        if onto_itself is not None:
            return onto_itself.message
    if task.spec.task_name is not None and (
        operation == "CREATE" or task_name_of(old_body or {}) != task.spec.task_name
    ):
        taken = name_taken(task, peers())
        if taken is not None:
            return taken
    if operation == "CREATE" and plugin.admission is not None:
        refused = plugin.admission(task, peers())
        if refused is not None:
            return _admission_message(kind, refused)
    if plugin.conditions is not None:
        return _refusing_condition(plugin, task, body, peers)
    return None


def _once(list_peers: Callable[[], list[dict[str, Any]]]) -> Callable[[], list[dict[str, Any]]]:
    listed: list[list[dict[str, Any]]] = []

    def peers() -> list[dict[str, Any]]:
        if not listed:
            listed.append(list_peers())
        return listed[0]

    return peers


def _with_current_ids(plugin: KindPlugin, new_body: Body, old_body: Body | None) -> dict[str, Any]:
    """The request's task with only the cluster ids that still hold: none on CREATE (the status is the
    operator's and the workers'), and on UPDATE none for a side whose bootstrap list changed (they name the
    brokers the workers reached before)."""
    body = dict(new_body)
    status = dict(body.get("status") or {})
    old = endpoints_of(old_body or {}, plugin.definition.spec_model)
    for field, endpoint in endpoints_of(body, plugin.definition.spec_model).items():
        before = old.get(field)
        if before is None or normalise_bootstrap(before.bootstrap_servers) != normalise_bootstrap(
            endpoint.bootstrap_servers
        ):
            status.pop(field, None)
    body["status"] = status
    return body


def _immutable_change(plugin: KindPlugin, new_body: Body, old_body: Body) -> str | None:
    """The accepted-spec check the operator runs (`accepted_spec`), against the spec accepted at creation,
    or, before the operator recorded it, the spec stored until now. A change back to it is admitted."""
    mutable = plugin.definition.mutable_fields
    if mutable is None:
        return None
    old_annotations = (old_body.get("metadata") or {}).get("annotations") or {}
    accepted = old_annotations.get(ACCEPTED_SPEC_ANNOTATION)
    if not _is_json_object(accepted):  # not recorded yet (or mangled by hand)
        accepted = json.dumps({k: v for k, v in (old_body.get("spec") or {}).items() if k not in mutable})
    metadata = dict(new_body.get("metadata") or {})
    # The stored annotation, not the request's: editing it along with the spec does not get a change through.
    metadata["annotations"] = {**(metadata.get("annotations") or {}), ACCEPTED_SPEC_ANNOTATION: accepted}
    _, error = accepted_spec(plugin, {**new_body, "metadata": metadata})
    return None if error is None else error.message


def _is_json_object(text: str | None) -> bool:
    try:
        return isinstance(json.loads(text or ""), dict)
    except ValueError:
        return False


def _with_creation_time(body: Body, now: datetime) -> dict[str, Any]:
    """The API server sets creationTimestamp before validating admission; a request without one is ranked now."""
    metadata = dict(body.get("metadata") or {})
    metadata.setdefault("creationTimestamp", rfc3339(now))
    return {**body, "metadata": metadata}


def _with_self(peers: list[dict[str, Any]], body: dict[str, Any]) -> list[dict[str, Any]]:
    """The peers as they would be once the request is applied: this task's stored version replaced by the new."""
    meta = body["metadata"]
    me = (meta.get("namespace"), meta.get("name"))
    return [p for p in peers if (p["metadata"].get("namespace"), p["metadata"].get("name")) != me] + [body]


def _admission_message(kind: str, error: TaskError) -> str:
    if error.reason == "TaskLimitExceeded":
        # The operator's message ends in what happens to a task that exists; this one will not: keep the fact.
        fact = error.message.split(": ", 1)[0]
        return f"{fact}: delete one of them first, then create this {kind} again"
    return error.message


def _refusing_condition(
    plugin: KindPlugin, task: Task, body: dict[str, Any], peers: Callable[[], list[dict[str, Any]]]
) -> str | None:
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    fixes = {kind: fix for kind, (opt_in, fix) in REFUSING_CONDITIONS.items() if annotations.get(opt_in) != "true"}
    if not fixes:
        return None  # every refusal opted out of: do not list the peers
    assert plugin.conditions is not None
    for condition in plugin.conditions(task, peers()):
        if condition.active and condition.type in fixes:
            return f"{condition.message}. {fixes[condition.type]}"
    return None


# ---------------------------------------------------------------------------------------------
# Kopf wiring


def webhook_server(settings: OperatorSettings) -> kopf.WebhookServer:
    """HTTPS on every interface (IPv4 and IPv6) with the mounted certificate; Kopf reloads renewed files."""
    cert_dir = Path(settings.webhook_cert_dir)
    missing = [name for name in (CERT_FILE, KEY_FILE) if not (cert_dir / name).is_file()]
    if missing:
        files = f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'}"
        raise kopf.PermanentError(
            f"the admission webhook is on (FERRY_OPERATOR_WEBHOOK_PORT={settings.webhook_port}) but {files} "
            f"missing in {cert_dir}: mount the webhook's kubernetes.io/tls Secret there "
            "(FERRY_OPERATOR_WEBHOOK_CERT_DIR), or set FERRY_OPERATOR_WEBHOOK_PORT=0 to turn the webhook off"
        )
    return kopf.WebhookServer(
        addr=None,  # Kopf's `host` is only the advertised name; `addr` None listens on all interfaces
        port=settings.webhook_port,
        certfile=str(cert_dir / CERT_FILE),
        pkeyfile=str(cert_dir / KEY_FILE),
    )


def _list_peers(plugin: KindPlugin) -> list[dict[str, Any]]:
    """Every task of the kind; an API failure refuses the request (fail closed) saying to try again."""
    plural = plugin.definition.plural
    try:
        items: list[dict[str, Any]] = client.CustomObjectsApi().list_cluster_custom_object(GROUP, VERSION, plural)[
            "items"
        ]
    except ApiException as err:
        raise _unavailable(plural, f"the API answered {err.status} {err.reason}") from None
    except (HTTPError, OSError) as err:
        raise _unavailable(plural, f"the API is unreachable ({type(err).__name__})") from None
    return items


def _unavailable(plural: str, why: str) -> kopf.AdmissionError:
    log.warning("admission: could not list %s: %s", plural, why)
    return kopf.AdmissionError(
        f"the Ferry operator could not list the {plural} it checks this request against ({why}): try again; "
        "if this persists, check the operator's logs and its RBAC permission to list them",
        code=503,
    )


class RefusalsAreNotErrors(logging.Filter):
    """Kopf logs every refused admission as an ERROR ("Webhook 'validate-x' failed permanently: ..."). A refusal
    is the webhook doing its job, not a fault of the operator: log it at INFO, as "admission refused"."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.levelno == logging.ERROR and text.startswith("Webhook 'validate-") and "failed permanently" in text:
            handler, _, reason = text.partition(" failed permanently: ")
            record.msg, record.args = "admission refused by %s: %s", (handler.removeprefix("Webhook "), reason)
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def register(config: OperatorSettings, registry: kopf.OperatorRegistry | None = None) -> None:
    """The webhook server at startup and a validating handler per kind, at /validate-<plural>."""

    def serve_webhook(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = webhook_server(config)
        logging.getLogger("kopf.objects").addFilter(RefusalsAreNotErrors())
        # settings.admission.managed stays None: the chart owns the ValidatingWebhookConfiguration.

    kopf.on.startup(id="webhook-server", registry=registry)(serve_webhook)
    for plugin in PLUGINS.values():
        _register(plugin, registry)


def _register(plugin: KindPlugin, registry: kopf.OperatorRegistry | None) -> None:
    def validate(**kwargs: Any) -> None:  # Kopf's WebhookFn protocol does not name operation, old and new
        new, old = kwargs.get("new"), kwargs.get("old")
        message = review(
            plugin,
            kwargs.get("operation") or "",
            dict(new) if new is not None else None,
            dict(old) if old is not None else None,
            lambda: _list_peers(plugin),
        )
        if message is not None:
            raise kopf.AdmissionError(message, code=422)

    kopf.on.validate(
        GROUP,
        VERSION,
        plugin.definition.plural,
        id=handler_id(plugin),
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )(validate)


SETTINGS = OperatorSettings.from_env()
if SETTINGS.webhook_port:
    register(SETTINGS)
