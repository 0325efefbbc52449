"""HTTP: ``/metrics`` (from the last snapshot, never doing I/O), ``/`` (landing page), ``/healthz``."""

from __future__ import annotations

import json
import logging
import socket
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


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 dropped connections under 8 concurrent scrapers (each retried
    # after 1 s; seen in benchmarks/bench_collect.py)
    request_queue_size = 128


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
    """The HTTP server on its own thread."""

    def __init__(self, host: str, port: int,
                 app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        server_class = _ThreadingWSGIServerV6 if ":" in host else _ThreadingWSGIServer
        self._httpd = make_server(host, port, app, server_class=server_class,
                                  handler_class=_QuietHandler)
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
