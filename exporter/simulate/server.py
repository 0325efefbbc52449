"""HTTP for the simulated engine: ``/metrics``, the identity endpoints and ``/health``.

A background thread advances the simulation by ticks (10 per second of wall time times
``speed``); the handlers read it under the same lock, so a scrape always sees a whole tick.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter.simulate.exposition import Exposition
from exporter.simulate.model import TICK_SECONDS, Simulation

# at most this many ticks are caught up at once after a stall (e.g. a suspended process)
MAX_CATCH_UP_TICKS = 600


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        with owner.lock:
            if path == "/metrics":
                body, ctype, status = owner.exposition.render(), owner.exposition.content_type, 200
            elif path == "/health":
                down = owner.sim.down
                body, ctype, status = b"" if not down else b'{"error":"restarting"}', "application/json", (
                    503 if down else 200)
            else:
                document = owner.exposition.identity().get(path)
                if document is None:
                    body, ctype, status = b'{"detail":"Not Found"}', "application/json", 404
                else:
                    body, ctype, status = json.dumps(document).encode(), "application/json", 200
        send_body(self, status, body, ctype)


def send_body(handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    """Answer with ``body``; a client that has gone away is not an error."""
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: SimulatorServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


class SimulatorServer:
    """Serves a simulation over HTTP and advances it in real time (times ``speed``). A context manager."""

    def __init__(self, sim: Simulation, exposition: Exposition, host: str = "127.0.0.1", port: int = 0,
                 speed: float = 1.0, run_clock: bool = True) -> None:
        if speed <= 0:
            raise ValueError(f"--speed must be positive, got {speed}")
        self.sim = sim
        self.exposition = exposition
        self.speed = speed
        self.run_clock = run_clock
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = _Server((host, port), self)
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> SimulatorServer:
        if not self._threads:
            self._threads.append(threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                                  name="simulator-http", daemon=True))
            if self.run_clock:
                self._threads.append(threading.Thread(target=self._clock, name="simulator-clock", daemon=True))
            for thread in self._threads:
                thread.start()
        return self

    def _clock(self) -> None:
        started = time.monotonic()
        done = 0
        interval = TICK_SECONDS / self.speed
        while not self._stop.is_set():
            due = int((time.monotonic() - started) / interval) - done
            if due > MAX_CATCH_UP_TICKS:  # fell far behind: skip ahead instead of bursting
                done += due - MAX_CATCH_UP_TICKS
                due = MAX_CATCH_UP_TICKS
            for _ in range(due):
                with self.lock:
                    self.sim.tick()
                done += 1
            self._stop.wait(max(0.0, started + (done + 1) * interval - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        if self._threads:
            self._httpd.shutdown()
            for thread in self._threads:
                thread.join(5)
            self._threads = []
        self._httpd.server_close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
