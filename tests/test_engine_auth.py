"""Engine bearer tokens: sent to the engine, never shown in logs, errors, labels or pages."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exporter.config import ConfigError, EngineTarget, load_config
from exporter.sources import SourceError
from exporter.sources.engine import EngineSource
from tests.process import ExporterProcess, value, wait_for

BODY = (Path(__file__).parent / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt").read_bytes()
TOKEN = "s3cr3t-t0ken-value"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(BODY if self.path == "/metrics" else b"{}")


@pytest.fixture
def guarded() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_token_file_and_env(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n")
    config = load_config(["--engine", "a=http://h:1", "--engine-token-file", f"a={file}"], {})
    assert config.engine_tokens == {"a": TOKEN}
    assert TOKEN not in repr(config)
    assert load_config(["--engine", "a=http://h:1"], {"INFERMETER_ENGINE_TOKEN": TOKEN}).engine_tokens == {"": TOKEN}
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(["--engine-token-file", str(tmp_path / "missing")], {})
    with pytest.raises(ConfigError, match="no engine named 'b'"):
        load_config(["--engine", "a=http://h:1", "--engine-token-file", f"b={file}"], {})


def test_the_engine_gets_the_token_and_errors_do_not_show_it(guarded: str) -> None:
    assert EngineSource(EngineTarget("a", guarded), 2.0, 1 << 24, token=TOKEN).read().sample.kind == "vllm"
    with pytest.raises(SourceError) as refused:
        EngineSource(EngineTarget("a", guarded), 2.0, 1 << 24, token="wrong").read()
    assert "HTTP 401" in str(refused.value) and "--engine-token-file" in str(refused.value)
    assert "wrong" not in str(refused.value)


def test_token_never_reaches_logs_metrics_or_pages(guarded: str, tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text(TOKEN)
    exporter = ExporterProcess(["--interval", "0.5", "--window", "10", "--engine", f"a={guarded}",
                                "--engine-token-file", str(file), "--log-level", "debug"], tmp_path, nvml_spec=None,
                               env={"INFERMETER_COLLECTOR_NVML": "false"})
    try:
        exporter.wait_ready()
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="a") == 1)
        for path in ("/", "/metrics", "/healthz"):
            assert TOKEN not in exporter.get(path)[1]
    finally:
        exporter.stop()
    assert TOKEN not in exporter.log()
