"""A server on 127.0.0.1 that answers every GET with one fixed response: hostile bodies for tests."""

from __future__ import annotations

import gzip
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def gzip_bomb(inflated_mib: int) -> bytes:
    """gzip data that inflates to ``inflated_mib`` MiB of zeros (about 1/1000 of that compressed)."""
    buffer = io.BytesIO()
    block = b"\0" * (1 << 20)
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as compressor:
        for _ in range(inflated_mib):
            compressor.write(block)
    return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self.send_response(self.server.status)
            for name, value in self.server.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(self.server.body)))
            self.end_headers()
            self.wfile.write(self.server.body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers
        super().__init__(("127.0.0.1", 0), _Handler)


class FixedResponseServer:
    """Answers every GET with ``status``, ``headers`` and ``body``; a context manager giving its URL."""

    def __init__(self, body: bytes, headers: dict[str, str] | None = None, status: int = 200) -> None:
        self._httpd = _Server(status, body, {"Content-Type": "text/plain", **(headers or {})})
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fixed-response", daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._thread.join(5)
        self._httpd.server_close()
