"""HTTP: ``/metrics`` (from the last snapshot, never doing I/O), ``/`` (landing page), ``/healthz``.

The server itself is exporter/httpserver.py: one I/O thread, a fixed pool of workers, a deadline on every
connection and a cap on their number, TLS handshakes that never block anybody (see its docstring).
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app

from exporter import __version__
from exporter.collection import Snapshot
from exporter.httpserver import HTTPServer, Limits

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
        if path == "/metrics":  # prometheus_client refuses HEAD; the server sends HEAD answers without body
            metrics_environ = {**environ, "REQUEST_METHOD": "GET"}
            return metrics_app(metrics_environ, start_response)  # type: ignore[no-any-return]
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


class Server(HTTPServer):
    """The exporter's HTTP server; HTTPS when given ``ssl_context``. ``limits`` is for tests."""

    def __init__(self, host: str, port: int,
                 app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]],
                 ssl_context: ssl.SSLContext | None = None, *, limits: Limits | None = None) -> None:
        super().__init__(host, port, app, ssl_context, limits=limits, server_header=f"infermeter/{__version__}")
