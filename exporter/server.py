"""HTTP: ``/metrics`` (from the last snapshot, never doing I/O), ``/`` (landing page), ``/healthz``.

With TLS (``--web.config.file``) the listening socket stays plain: each connection's handshake runs on its
own handler thread with a timeout, so a client that connects and sends nothing, or speaks plain HTTP to the
TLS port, costs one thread for a while and never blocks the accept loop or other scrapers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from exporter import __version__
from exporter.collection import Snapshot

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]

LANDING_PAGE = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>infermeter</title></head>
<body>
<h1>infermeter {__version__}</h1>
<p>Prometheus exporter for GPU nodes serving large language models.</p>
<ul>
<li><a href="metrics">/metrics</a>: GPU, engine, latency, throughput and KV-cache metrics</li>
<li><a href="healthz">/healthz</a>: liveness of the collection loop</li>
</ul>
</body></html>
""".encode()


# a client has this long to complete the TLS handshake
TLS_HANDSHAKE_TIMEOUT = 10.0


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None
    allow_reuse_address = True
    # socketserver's default backlog of 5 dropped connections under 8 concurrent scrapers (each retried
    # after 1 s; seen in benchmarks/bench_collect.py)
    request_queue_size = 128

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the connection's own thread: the TLS handshake (when on), then the request."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(TLS_HANDSHAKE_TIMEOUT)
        try:
            connection = self.ssl_context.wrap_socket(request, server_side=True)
        except OSError as err:  # ssl.SSLError, a timeout, a reset: this client only
            log.debug("http: TLS handshake with %s failed: %s", client_address[0], err)
            return
        try:
            connection.settimeout(None)
            super().finish_request(connection, client_address)
        finally:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_WR)
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http: error serving %s", client_address[0] if client_address else "?", exc_info=True)


class _ThreadingWSGIServerV6(_ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def make_app(registry: CollectorRegistry, current: Callable[[], Snapshot], interval: float,
             started: float | None = None) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application. ``/healthz`` turns 503 when no collection finished for 3 intervals."""
    metrics_app = make_wsgi_app(registry)
    started_at = started if started is not None else time.time()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD", "GET") not in {"GET", "HEAD"}:
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"method not allowed\n"]
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [LANDING_PAGE]
        if path == "/healthz":
            snapshot = current()
            now = time.time()
            last = snapshot.timestamp
            age = now - (last if last is not None else started_at)
            healthy = age <= max(3 * interval, 30.0)
            body = {"status": "ok" if healthy else "stalled",
                    "last_collect_age_seconds": round(age, 3) if last is not None else None}
            start_response("200 OK" if healthy else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [json.dumps(body).encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found; see /metrics\n"]

    return app


class Server:
    """The HTTP server on its own thread; HTTPS when given ``ssl_context``."""

    def __init__(self, host: str, port: int,
                 app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        server_class = _ThreadingWSGIServerV6 if ":" in host else _ThreadingWSGIServer
        self._httpd = make_server(host, port, app, server_class=server_class,
                                  handler_class=_QuietHandler)
        if ssl_context is not None:
            self._httpd.ssl_context = ssl_context
            self._httpd.base_environ["HTTPS"] = "on"  # wsgi.url_scheme https
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="infermeter-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
