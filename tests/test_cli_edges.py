"""What a new user meets at the command line: wrong URLs, unreachable servers, ``| head`` and dollar amounts.

``report`` and ``plan --from`` read a running exporter or Prometheus. Pointed at anything else (an engine's
own /metrics, another exporter, a web page, a port with nothing behind it, a host that never answers) they
print one line saying what the URL is and what to pass instead, and exit 1: never a traceback, a requests
message or a report of a "DOWN" engine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
import pytest
import requests

from exporter import plan, report
from exporter.formatting import dollars
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.process import ROOT, ExporterProcess, free_port, wait_for

ENGINES = ROOT / "tests" / "fixtures" / "engines"
PASSWORD = "s3cret-Pa55word-4411"
# (fixture, how the message names the engine)
ENGINE_FIXTURES = [("vllm-0.32.0-real-a.txt", "vLLM, vllm:* metrics"), ("tgi-3.x.txt", "TGI, tgi_* metrics"),
                   ("sglang.txt", "SGLang, sglang:* metrics"), ("triton-onnx.txt", "Triton, nv_inference_* metrics")]
EXPORTER_TEXT = "\n".join([
    '# TYPE infermeter_engine_up gauge',
    'infermeter_engine_up{engine="llama",kind="vllm",model="m"} 1',
    'infermeter_requests_per_second{engine="llama",kind="vllm",model="m"} 2',
    'infermeter_cost_dollars_per_hour{engine="llama",kind="vllm",model="m"} 2.5', ""])


def call(main: Callable[[list[str]], int], *args: str) -> tuple[int, str, str]:
    """A command's main in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exit_:
            status = int(exit_.code or 0)
    return status, out.getvalue(), err.getvalue()


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "Max retries" not in stderr and "adapters" not in stderr
    return lines[0]


@contextlib.contextmanager
def http_server(status: int, body: bytes, content_type: str = "text/plain") -> Iterator[str]:
    """A server on 127.0.0.1 that answers every GET with ``status`` and ``body``; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


# ------------------------------------------------------------------------------ what a URL is


@pytest.mark.parametrize(("fixture", "named"), ENGINE_FIXTURES)
def test_an_engine_url_is_named_as_an_engine_with_what_to_run_instead(fixture: str, named: str) -> None:
    with FakeEngineServer(FakeEngine(ENGINES / fixture)) as engine:
        for main, args, flag in ((report.main, ["--url", engine.url], "--url"),
                                 (report.main, ["--from", engine.url + "/metrics"], "--from"),
                                 (plan.main, ["--from", engine.url], "--from")):
            status, out, err = call(main, *args)
            assert status == 1 and out == ""
            line = one_line(err)
            assert f"{engine.url} is an inference engine ({named}), not an infermeter exporter" in line
            assert f"run `infermeter --engine {engine.url}` beside it" in line
            assert line.endswith(f"({flag} http://127.0.0.1:9416)")


def test_another_exporter_and_a_web_page_are_not_mistaken_for_an_exporter() -> None:
    with http_server(200, b"# TYPE node_load1 gauge\nnode_load1 0.5\n") as url:
        status, _, err = call(report.main, "--from", url)
        assert status == 1
        assert one_line(err) == (f"infermeter report: {url}/metrics serves 1 metric families but no infermeter_* "
                                 "one (e.g. node_load1): not an infermeter exporter, whose default port is 9416")
    with http_server(200, b"<html><body>Grafana</body></html>", "text/html; charset=utf-8") as url:
        status, _, err = call(plan.main, "--from", url)
        assert status == 1
        assert one_line(err) == (f"infermeter plan: {url}/metrics does not serve Prometheus metrics (text/html): "
                                 "not an infermeter exporter")


def test_a_prometheus_without_infermeter_series_says_so() -> None:
    empty = json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode()
    with http_server(200, empty, "application/json") as url:
        for main, name in ((report.main, "report"), (plan.main, "plan")):
            status, _, err = call(main, "--from", url)
            assert status == 1
            assert one_line(err) == (f"infermeter {name}: Prometheus at {url} holds no infermeter_* series: does it "
                                     "scrape an exporter (a target on port 9416)?")


def test_an_exporter_url_reads_with_from_and_url_and_is_refused_as_prometheus() -> None:
    with http_server(200, EXPORTER_TEXT.encode()) as url:
        for args in (["--from", url], ["--url", url + "/metrics/"]):
            status, out, err = call(report.main, *args)
            assert status == 0, err
            assert out.startswith("engine llama (vllm, m) on no GPU") and "$2.50/h" in out
        status, out, err = call(report.main, "--prometheus", url)
        assert status == 1 and out == ""
        assert one_line(err) == (f"infermeter report: {url} is an infermeter exporter, not a Prometheus server: "
                                 f"pass --url {url}")


# ------------------------------------------------------------------------------ unreachable, not a URL


@pytest.mark.parametrize(("url", "expected"), [
    ("gpu-node-1:9416", "'gpu-node-1:9416' is not an http(s) URL: did you mean http://gpu-node-1:9416?"),
    ("ftp://gpu-node-1/", "'ftp://gpu-node-1/' is not an http(s) URL: such as http://gpu-node-1:9416"),
    ("http://gpu-node-1:99999", "'http://gpu-node-1:99999' is not a valid URL: bad port"),
    ("http://no-such-host.invalid:9416", "cannot read http://no-such-host.invalid:9416: host not found"),
])
def test_a_bad_url_is_one_line(url: str, expected: str) -> None:
    for main, args, name in ((report.main, ["--url", url], "report"), (report.main, ["--from", url], "report"),
                             (plan.main, ["--from", url, "--timeout", "5"], "plan")):
        status, out, err = call(main, *args)
        assert status == 1 and out == ""
        assert one_line(err) == f"infermeter {name}: {expected}"


def test_a_refused_connection_is_one_line_and_a_password_is_never_shown() -> None:
    port = free_port()
    status, _, err = call(report.main, "--url", f"http://prometheus:s3cret@127.0.0.1:{port}")
    assert status == 1
    assert one_line(err) == (f"infermeter report: cannot read http://prometheus:***@127.0.0.1:{port}: "
                             "connection refused (is it running, on that port?)")
    status, _, err = call(plan.main, "--from", f"http://127.0.0.1:{port}")
    assert status == 1 and one_line(err).endswith(f"127.0.0.1:{port}: connection refused (is it running, on that "
                                                  "port?)")


def test_a_server_that_never_answers_times_out_in_one_line() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        status, _, err = call(plan.main, "--from", url, "--timeout", "0.3")
        assert status == 1 and one_line(err) == f"infermeter plan: cannot read {url}: no answer within 0.3 s"
        status, _, err = call(report.main, "--from", url, "--timeout", "0.3")
        assert status == 1 and one_line(err) == f"infermeter report: cannot read {url}: no answer within 0.3 s"


@pytest.mark.parametrize(("status_code", "suffix"), [
    (500, "HTTP 500 Internal Server Error"),
    (401, "HTTP 401 Unauthorized (it asks for credentials: put USER:PASSWORD@ in the URL)"),
])
def test_an_http_error_status_is_one_line(status_code: int, suffix: str) -> None:
    with http_server(status_code, b"no") as url:
        status, _, err = call(report.main, "--url", url)
        assert status == 1 and one_line(err) == f"infermeter report: cannot read {url}/metrics: {suffix}"


@pytest.fixture(scope="module")
def tls_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExporterProcess, Path]]:
    """A real exporter behind TLS (a self-signed certificate) and basic auth, reading no engine."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "server.crt", tmp / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = tmp / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                   f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    process = ExporterProcess(["--no-collector.nvml", "--interval", "0.5", "--web.config.file", str(web)], tmp)
    try:
        wait_for(lambda: _answers(process, cert), timeout=20)
        yield process, cert
    finally:
        process.stop()


def _answers(process: ExporterProcess, cert: Path) -> bool:
    try:
        return requests.get(f"https://127.0.0.1:{process.port}/healthz", verify=str(cert), timeout=1).ok
    except requests.RequestException:
        return False


def test_tls_and_basic_auth_problems_are_one_line_with_the_fix(tls_exporter: tuple[ExporterProcess, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    process, cert = tls_exporter
    url = f"https://127.0.0.1:{process.port}"
    status, _, err = call(report.main, "--url", url)
    assert status == 1 and one_line(err) == (f"infermeter report: cannot read {url}: TLS error: self-signed "
                                             "certificate (trust its CA with REQUESTS_CA_BUNDLE=ca.crt)")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    status, _, err = call(report.main, "--url", url)
    assert status == 1 and one_line(err) == (f"infermeter report: cannot read {url}/metrics: HTTP 401 Unauthorized "
                                             "(it asks for credentials: put USER:PASSWORD@ in the URL)")
    status, _, err = call(report.main, "--from", f"https://prometheus:{PASSWORD}@127.0.0.1:{process.port}")
    assert status == 1 and PASSWORD not in err
    assert one_line(err) == (f"infermeter report: no engine found at https://prometheus:***@127.0.0.1:{process.port}"
                             ": the exporter reads none (start it with --engine URL)")


# ------------------------------------------------------------------------------ | head


def closed_pipe_run(*args: str) -> subprocess.CompletedProcess[str]:
    """``infermeter ARGS`` writing to a pipe whose reader has already gone, as ``| head`` leaves it."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "exporter", *args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_plan_quietly() -> None:
    # every catalogue GPU: several kilobytes (argparse's --help already ignores a closed stdout)
    result = closed_pipe_run("plan", "--model", "meta-llama/Llama-3.1-70B", "--rate", "2", "--prompt-tokens",
                             "1000", "--output-tokens", "250")
    assert result.stderr == ""
    assert result.returncode == 141  # 128 + SIGPIPE, as a shell reports `yes | head` for yes


def test_a_closed_pipe_ends_report_quietly() -> None:
    with http_server(200, EXPORTER_TEXT.encode()) as url:
        result = closed_pipe_run("report", "--url", url)  # a few hundred bytes: they fail at the final flush
    assert result.stderr == "" and result.returncode == 141


# ------------------------------------------------------------------------------ dollars


@pytest.mark.parametrize(("value", "text"), [
    (8.15e-05, "$0.0000815"), (0.000722, "$0.000722"), (0.00052, "$0.00052"), (0.0667, "$0.0667"),
    (0.58, "$0.58"), (12.0, "$12.00"), (81.5, "$81.50"), (845360.4, "$845,360"), (0.0, "$0.00"),
    (-3.25, "-$3.25"), (1e-12, "$0.00"),
])
def test_dollars_read_as_decimals(value: float, text: str) -> None:
    assert dollars(value) == text
