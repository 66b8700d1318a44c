"""Fault injection for tests: Shopify Toxiproxy between a client (a Ferry worker) and a server (Kafka, S3).

Toxiproxy is a TCP proxy with a REST API: each proxy listens on a port, forwards every connection to its
upstream, and passes the bytes through "toxics" that drop, delay or throttle them. The server is built
from its Go module once, by :func:`toxiproxy_binary`, into::

    ${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/ferry}/toxiproxy-v2.5.0/toxiproxy-server

(``go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0``: Go on PATH and the Go module proxy are
needed once, about 40 s on 2 cores; a file lock serialises concurrent first runs and the finished directory
is renamed into place atomically). :func:`start_toxiproxy` runs it on a free loopback port in its own
process group, stopped by PID (see :mod:`tests.support.servers`)::

    with start_toxiproxy(tmp_path) as toxiproxy:
        proxy = toxiproxy.proxy("s3", upstream="127.0.0.1:9000")   # listens on a free loopback port
        client = boto3.client("s3", endpoint_url=f"http://{proxy.listen}", ...)
        proxy.refuse()   # connections refused, open ones closed
        proxy.hang()     # connections accepted, no byte passes, nothing closed
        proxy.slow(latency_ms=500, bandwidth_kbps=10)
        proxy.heal()     # no toxics, enabled

A Kafka client learns the broker's address from the metadata, not from its bootstrap setting, so a proxy
in front of a broker must be the address the broker advertises: ``start_kafka(..., advertise=...)``
(tests/support/kafka.py) and the `proxied_kafka` fixture (tests/conftest.py) show how. `python -m
tests.support.testbed` builds the binary with the rest of the test bed.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from tests.support.gotools import TOXIPROXY
from tests.support.servers import (
    LOOPBACK,
    ServerStartError,
    _retry_port_clash,
    _Server,
    _start,
    free_port,
)

__all__ = [
    "TOXIPROXY_VERSION",
    "Proxy",
    "Toxiproxy",
    "ToxiproxyError",
    "start_toxiproxy",
    "toxiproxy_binary",
]

TOXIPROXY_VERSION = TOXIPROXY.version
PROGRAM = TOXIPROXY.program
API_TIMEOUT = 10.0
_BUILD_ENV = {"CGO_ENABLED": "0", "GOWORK": "off"}


class ToxiproxyError(RuntimeError):
    """The Toxiproxy API refused a request; the message has the method, path, status and Toxiproxy's words."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def toxiproxy_binary() -> Path:
    """The path of toxiproxy-server, built with ``go install`` on first use (tests/support/gotools.py)."""
    return TOXIPROXY.binary()


# ---------------------------------------------------------------------------------------------
# The REST API


class _Api:
    """JSON over HTTP to one toxiproxy-server, never through an HTTP proxy from the environment."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=API_TIMEOUT) as response:
                text = response.read().decode()
                is_json = response.headers.get_content_type() == "application/json"
        except urllib.error.HTTPError as err:
            words = err.read().decode(errors="replace").strip()
            raise ToxiproxyError(f"{method} {path}: HTTP {err.code}: {words}", err.code) from None
        return json.loads(text) if is_json else text  # GET /version is text/plain


def _version_not_ready(api: _Api) -> str | None:
    try:
        version = api.call("GET", "/version")
    except (OSError, ToxiproxyError) as err:
        return f"GET {api.url}/version: {err}"
    expected = TOXIPROXY_VERSION.removeprefix("v")
    return None if version == expected else f"GET {api.url}/version: {version!r}, expected {expected!r}"


# Toxic names this module gives (Toxiproxy's own default would be "<type>_<stream>").
_HANG = ("hang-upstream", "hang-downstream")
_LATENCY = "slow-latency"
_BANDWIDTH = ("slow-bandwidth-upstream", "slow-bandwidth-downstream")


@dataclass
class Proxy:
    """One Toxiproxy proxy: a loopback port whose connections are forwarded to upstream through the toxics.

    Semantics checked in the toxiproxy v2.5.0 source (proxy.go, link.go, toxics/*.go). "upstream" is the
    client-to-server direction, "downstream" the server-to-client one. Toxics apply to connections that are
    already open as well as new ones. Toxiproxy accepts a client first and then dials upstream: a
    connection through an enabled proxy whose upstream is down is accepted, then closed at once.
    """

    name: str
    listen: str  # host:port the proxy listens on, what clients dial
    upstream: str  # host:port each connection is forwarded to
    _api: _Api = field(repr=False, compare=False)

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def refuse(self) -> None:
        """Disable the proxy: it closes its listening socket (a new connection is refused: ECONNREFUSED) and
        closes both ends of every open connection. Toxics stay; :meth:`heal` enables it on the same port."""
        self._api.call("POST", f"/proxies/{self.name}", {"enabled": False})

    def hang(self) -> None:
        """A ``timeout`` toxic with timeout 0 on both directions: connections are still accepted (and dialled
        upstream), but every byte either way is dropped (discarded, not delayed), and no connection is ever
        closed by the proxy; a side that closes its end still gets the other end closed. A client sees its
        requests time out. Removing the toxic (:meth:`heal`) closes the connections it hung: their data is
        gone; a new connection works."""
        for name, stream in zip(_HANG, ("upstream", "downstream"), strict=True):
            self._set_toxic(name, "timeout", stream, {"timeout": 0})

    def slow(self, latency_ms: int, bandwidth_kbps: int | None = None) -> None:
        """Replace the previous slow() toxics with these.

        latency_ms: a ``latency`` toxic on the downstream (server-to-client) direction: each chunk of the
        server's bytes is held until latency_ms after the proxy read it, so a request/response round trip
        takes latency_ms longer (the client-to-server direction is not delayed). 0 leaves latency off.

        bandwidth_kbps: ``bandwidth`` toxics on both directions (uploads too, e.g. to S3), each limited to
        this many kilobytes (1000 bytes, not kilobits) per second: Toxiproxy's ``rate``. A chunk is held for
        its size / rate; one bigger than 100 ms worth is passed on in 100 ms slices. None: no limit.

        Data is delayed, never dropped; nothing is closed, also not when heal() removes these toxics. A
        hang() in place stays (slow() replaces only its own toxics).
        """
        if latency_ms < 0 or (bandwidth_kbps is not None and bandwidth_kbps <= 0):
            raise ValueError(f"latency_ms must be >= 0 and bandwidth_kbps > 0; got {latency_ms}, {bandwidth_kbps}")
        wanted: dict[str, tuple[str, str, dict[str, int]]] = {}
        if latency_ms:
            wanted[_LATENCY] = ("latency", "downstream", {"latency": latency_ms, "jitter": 0})
        if bandwidth_kbps is not None:
            for name, stream in zip(_BANDWIDTH, ("upstream", "downstream"), strict=True):
                wanted[name] = ("bandwidth", stream, {"rate": bandwidth_kbps})
        for name in {_LATENCY, *_BANDWIDTH} - wanted.keys():
            self._remove_toxic(name)
        for name, (kind, stream, attributes) in wanted.items():
            self._set_toxic(name, kind, stream, attributes)

    def heal(self) -> None:
        """Remove every toxic and enable the proxy (on the same port). Removing a ``timeout`` toxic closes
        the connections it held (see :meth:`hang`); removing ``latency`` or ``bandwidth`` passes on what they
        held and keeps the connections open. Connections closed by refuse() stay closed."""
        for toxic in self.toxics():
            self._remove_toxic(toxic["name"])
        self._api.call("POST", f"/proxies/{self.name}", {"enabled": True})

    def toxics(self) -> list[dict[str, Any]]:
        """The toxics in place, as Toxiproxy lists them (name, type, stream, toxicity, attributes)."""
        toxics: list[dict[str, Any]] = self._api.call("GET", f"/proxies/{self.name}/toxics")
        return toxics

    def enabled(self) -> bool:
        return bool(self._api.call("GET", f"/proxies/{self.name}")["enabled"])

    def delete(self) -> None:
        """Remove the proxy: as refuse(), and its port is free for anyone."""
        self._api.call("DELETE", f"/proxies/{self.name}")

    def _set_toxic(self, name: str, kind: str, stream: str, attributes: dict[str, int]) -> None:
        body = {"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes}
        try:
            self._api.call("POST", f"/proxies/{self.name}/toxics", body)
        except ToxiproxyError as err:
            if err.status != 409:
                raise
            # There already (an earlier call): update it in place.
            self._api.call("POST", f"/proxies/{self.name}/toxics/{name}", {"attributes": attributes, "toxicity": 1.0})

    def _remove_toxic(self, name: str) -> None:
        try:
            self._api.call("DELETE", f"/proxies/{self.name}/toxics/{name}")
        except ToxiproxyError as err:
            if err.status != 404:  # 404: not there, nothing to remove
                raise


@dataclass
class Toxiproxy(_Server):
    """A toxiproxy-server whose REST API (url) listens on loopback; proxies are made with :meth:`proxy`."""

    program: ClassVar[str] = PROGRAM

    url: str
    _api_client: _Api = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._api_client = _Api(self.url)

    def proxy(self, name: str, upstream: str, *, listen: str | None = None) -> Proxy:
        """A new enabled proxy without toxics, forwarding to upstream (host:port).

        listen (host:port) defaults to a free loopback port, picked by :func:`~tests.support.servers.free_port`
        rather than port 0: Toxiproxy 2.5 would take port 0 (it records the port the kernel chose and binds
        that one again when re-enabled), but a kernel-chosen port is in the ephemeral range, where an
        outgoing connection could take it while the proxy is refused. Pass listen to fix the address before
        the upstream runs, e.g. to make a Kafka broker advertise it.
        """
        if listen is not None:
            return self._create(name, upstream, listen)

        def attempt() -> Proxy:
            try:
                return self._create(name, upstream, f"{LOOPBACK}:{free_port()}")
            except ToxiproxyError as err:
                raise ServerStartError(str(err), port_clash="address already in use" in str(err)) from err

        return _retry_port_clash(attempt)

    def proxies(self) -> list[str]:
        """Names of the proxies this server has."""
        return sorted(self._api_client.call("GET", "/proxies"))

    def reset(self) -> None:
        """Enable every proxy and remove every toxic (POST /reset); the proxies stay."""
        self._api_client.call("POST", "/reset")

    def _create(self, name: str, upstream: str, listen: str) -> Proxy:
        created = self._api_client.call(
            "POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        )
        return Proxy(name=name, listen=created["listen"], upstream=created["upstream"], _api=self._api_client)


def start_toxiproxy(workdir: Path) -> Toxiproxy:
    """Start toxiproxy-server with its API on a free loopback port; its log (JSON lines) is workdir/toxiproxy.log.

    Builds the binary first if needed (:func:`toxiproxy_binary`). Ready once GET /version answers 2.5.0.
    Use the result as a context manager, or call stop(): the proxies go with the process.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    binary = toxiproxy_binary()
    log_path = workdir / "toxiproxy.log"
    env = {**os.environ, "LOG_LEVEL": "info"}  # the default, debug, logs every API request

    def attempt() -> Toxiproxy:
        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        argv = [str(binary), f"-host={LOOPBACK}", f"-port={port}"]
        proc = _start(argv, workdir, log_path, env, partial(_version_not_ready, _Api(url)))
        return Toxiproxy(pid=proc.pid, log_path=log_path, url=url, _proc=proc)

    return _retry_port_clash(attempt)
