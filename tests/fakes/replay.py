"""Replay a recorded vLLM scenario (tests/fixtures/corpus/NAME) at the HTTP boundary.

The i-th ``GET /metrics`` gets capture i of the scenario (the last one once they run out), so an exporter
that scrapes once per second sees the engine as it was recorded, second by second. ``/v1/models`` and
``/version`` answer what the real server answered; anything else is a 404. Binds 127.0.0.1.

The corpus format (written by tests/fixtures/record_sequence.py; tests/fixtures/corpus/README.md):
``metrics.txt.gz`` holds every capture after a marker line ``### capture I t=SECONDS``.

    python -m tests.fakes.replay tests/fixtures/corpus/kv-starved --port 18000
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from exporter.simulate.server import send_body

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"
METRICS_FILE = "metrics.txt.gz"
MARKER = re.compile(r"^### capture (\d+) t=([0-9.]+)$")
DEFAULT_CONTENT_TYPE = "text/plain; version=1.0.0; charset=utf-8"  # what vLLM 0.32 serves


def read_captures(path: Path) -> list[tuple[float, str]]:
    """(seconds since the recording began, body) for every capture of a ``metrics.txt.gz``, in order."""
    captures: list[tuple[float, str]] = []
    lines: list[str] = []
    stamp: float | None = None
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            marker = MARKER.match(line.rstrip("\n"))
            if marker is None:
                if stamp is None:
                    raise ValueError(f"{path}: data before the first capture marker")
                lines.append(line)
                continue
            if stamp is not None:
                captures.append((stamp, "".join(lines)))
            if int(marker.group(1)) != len(captures):
                raise ValueError(f"{path}: capture {marker.group(1)} where {len(captures)} was due")
            stamp, lines = float(marker.group(2)), []
    if stamp is not None:
        captures.append((stamp, "".join(lines)))
    return captures


@dataclass(frozen=True)
class Scenario:
    """One recorded scenario: its captures, the side endpoints and the manifest entry (expect.json)."""

    name: str
    folder: Path
    captures: tuple[str, ...]
    stamps: tuple[float, ...]
    models: bytes
    version: bytes
    content_type: str
    expect: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> Scenario:
        pairs = read_captures(folder / METRICS_FILE)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        expect_file = folder / "expect.json"
        expect = json.loads(expect_file.read_text(encoding="utf-8")) if expect_file.exists() else {}
        return cls(folder.name, folder, tuple(body for _, body in pairs), tuple(stamp for stamp, _ in pairs),
                   (folder / "models.json").read_bytes(), (folder / "version.json").read_bytes(),
                   meta.get("content_type") or DEFAULT_CONTENT_TYPE, expect)


def scenarios(root: Path = CORPUS) -> Iterator[Scenario]:
    """Every scenario folder under ``root`` (one with a metrics.txt.gz), by name."""
    for folder in sorted(p.parent for p in root.glob(f"*/{METRICS_FILE}")):
        yield Scenario.load(folder)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        replay = self.server.replay
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            send_body(self, 200, replay.next_capture().encode(), replay.scenario.content_type)
        elif path == "/v1/models":
            send_body(self, 200, replay.scenario.models, "application/json")
        elif path == "/version":
            send_body(self, 200, replay.scenario.version, "application/json")
        else:
            send_body(self, 404, b'{"detail":"Not Found"}', "application/json")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, replay: ReplayEngine, port: int) -> None:
        self.replay = replay
        super().__init__(("127.0.0.1", port), _Handler)


class ReplayEngine:
    """Serves a Scenario on 127.0.0.1 from a daemon thread; a context manager."""

    def __init__(self, scenario: Scenario, port: int = 0) -> None:
        self.scenario = scenario
        self._lock = threading.Lock()
        self._served = 0
        self._server = _Server(self, port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def served(self) -> int:
        """How many /metrics GETs were answered (capture ``served - 1`` was the last one sent)."""
        with self._lock:
            return self._served

    def next_capture(self) -> str:
        with self._lock:
            index = min(self._served, len(self.scenario.captures) - 1)
            self._served += 1
        return self.scenario.captures[index]

    def serve(self) -> None:
        """Serve in this thread until interrupted (the command line)."""
        try:
            self._server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._server.server_close()

    def start(self) -> ReplayEngine:
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"replay-{self.scenario.name}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ReplayEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a scenario folder, e.g. tests/fixtures/corpus/idle")
    parser.add_argument("--port", type=int, default=18000)
    args = parser.parse_args(argv)
    replay = ReplayEngine(Scenario.load(args.folder), args.port)
    print(f"replaying {replay.scenario.name} ({len(replay.scenario.captures)} captures) on {replay.url}", flush=True)
    replay.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
