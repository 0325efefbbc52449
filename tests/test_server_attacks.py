"""Issue 12's attacks on the HTTP server, against a real exporter process (or a real server process):
an idle-connection flood under a 1,024 open-file limit, 300 concurrent scrapers, EMFILE, and TLS with
client-certificate verification. Resource bounds only, with wide margins; figures are in
benchmarks/attack_http.py."""

from __future__ import annotations

import http.client
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from exporter.httpserver import DEFAULT_MAX_CONNECTIONS, MAX_REJECTING
from tests.host import cpu_seconds, open_fds, threads
from tests.process import ROOT, ExporterProcess, stop_process
from tests.test_webconfig import HASH, PASSWORD, USER, _openssl

HOST = "127.0.0.1"
FD_LIMIT = 1024
IDLE_CONNECTIONS = 1100
SCRAPERS = 300


@pytest.fixture
def many_sockets() -> Iterator[None]:
    """This process may hold a few thousand sockets: soft open-file limit raised up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_CONNECTIONS + 400
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard open-file limit {hard} is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class LimitedExporter(ExporterProcess):
    """The exporter with its soft open-file limit at FD_LIMIT, the common default."""

    @staticmethod
    def command() -> list[str]:
        launch = ("import resource, runpy\n"
                  f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, "
                  "resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
                  "runpy.run_module('exporter', run_name='__main__', alter_sys=True)\n")
        return [sys.executable, "-c", launch]


def test_an_idle_connection_flood_under_a_1024_fd_limit_locks_nobody_out(tmp_path: Path, many_sockets: None) -> None:
    exporter = LimitedExporter(["--no-collector.nvml", "--interval", "1"], tmp_path)
    held: list[socket.socket] = []
    try:
        exporter.wait_ready()
        pid = exporter.proc.pid
        with open(f"/proc/{pid}/limits") as limits:
            assert any(line.startswith("Max open files") and line.split()[3] == str(FD_LIMIT) for line in limits)
        threads_before, fds_before = threads(pid), open_fds(pid)
        for _ in range(IDLE_CONNECTIONS):
            held.append(socket.create_connection((HOST, exporter.port), timeout=5))
        time.sleep(1.0)  # the exporter takes them in
        cpu_before = cpu_seconds(pid)
        time.sleep(2.0)
        cpu_idle = cpu_seconds(pid) - cpu_before
        metrics_status, metrics, _ = exporter.get("/metrics")
        health_status, _, _ = exporter.get("/healthz")
        threads_during, fds_during = threads(pid), open_fds(pid)
    finally:
        for sock in held:
            sock.close()
        exporter.stop()
    assert metrics_status == 200 and "infermeter_build_info" in metrics
    assert health_status == 200
    assert threads_during <= threads_before + 1, (threads_before, threads_during)  # a fixed set of threads
    assert fds_during <= fds_before + DEFAULT_MAX_CONNECTIONS + MAX_REJECTING + 4, (fds_before, fds_during)
    assert cpu_idle < 0.5, f"{cpu_idle:.2f} s of CPU over 2 s while holding idle connections (a busy loop?)"


def test_300_concurrent_scrapers_each_get_200_or_a_fast_503(tmp_path: Path, many_sockets: None) -> None:
    exporter = ExporterProcess(["--no-collector.nvml", "--interval", "1"], tmp_path)
    outcomes: list[tuple[str, float, str | None]] = []
    lock = threading.Lock()
    connected = threading.Barrier(SCRAPERS)

    def scrape() -> None:
        conn = http.client.HTTPConnection(HOST, exporter.port, timeout=30)
        began = time.monotonic()
        try:
            conn.connect()
            connected.wait(30)  # all connected before any sends: the most the server holds at once
            began = time.monotonic()
            conn.request("GET", "/metrics")
            reply = conn.getresponse()
            body = reply.read()
            outcome = str(reply.status) if reply.status != 200 or b"infermeter_build_info" in body else "bad body"
            retry = reply.getheader("Retry-After")
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as err:
            outcome, retry = type(err).__name__, None
        finally:
            conn.close()
        with lock:
            outcomes.append((outcome, time.monotonic() - began, retry))

    try:
        exporter.wait_ready()
        scrapers = [threading.Thread(target=scrape) for _ in range(SCRAPERS)]
        for scraper in scrapers:
            scraper.start()
        for scraper in scrapers:
            scraper.join(90)
    finally:
        exporter.stop()
    assert len(outcomes) == SCRAPERS, "a scraper hung"
    failures = sorted({outcome for outcome, _, _ in outcomes} - {"200", "503"})
    assert not failures, f"{[o for o, _, _ in outcomes].count(failures[0])} x {failures}"
    assert any(outcome == "200" for outcome, _, _ in outcomes)
    for outcome, took, retry in outcomes:
        if outcome == "503":
            assert retry is not None and took < 5.0, (took, retry)


EMFILE_SERVER = """
import logging, os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
from exporter.server import Server

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\\n"]

server = Server("127.0.0.1", 0, app)
server.start()
print(server.port, flush=True)
held = []
for line in sys.stdin:
    if line.strip() == "exhaust":  # the rest of the process takes every free file descriptor
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        print(len(held), flush=True)
    elif line.strip() == "release":
        for fd in held:
            os.close(fd)
        held.clear()
        print("released", flush=True)
server.stop()
"""


def test_emfile_pauses_accepting_without_a_busy_loop_and_logs_once(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdin is not None and proc.stdout is not None
        clients: list[socket.socket] = []
        try:
            port = int(proc.stdout.readline())
            proc.stdin.write("exhaust\n")
            proc.stdin.flush()
            assert int(proc.stdout.readline()) > 0
            for _ in range(20):
                clients.append(socket.create_connection((HOST, port), timeout=5))
            time.sleep(0.5)
            cpu_before = cpu_seconds(proc.pid)
            time.sleep(2.0)
            cpu_stuck = cpu_seconds(proc.pid) - cpu_before
            proc.stdin.write("release\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "released"
            reply = requests.get(f"http://{HOST}:{port}/", timeout=5)
        finally:
            for client in clients:
                client.close()
            stop_process(proc)  # type: ignore[arg-type]  # text mode: same process API
    text = log_path.read_text()
    assert cpu_stuck < 0.5, f"{cpu_stuck:.2f} s of CPU over 2 s while accept() failed (a busy loop?)"
    assert reply.status_code == 200
    assert text.count("cannot accept connections") == 1, text[-2000:]
    assert "accepting connections again" in text


@pytest.fixture(scope="module")
def mutual_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    server_cert, server_key = _openssl(tmp_path_factory.mktemp("server"))
    client_cert, client_key = _openssl(tmp_path_factory.mktemp("client"))
    return server_cert, server_key, client_cert, client_key


def test_tls_with_client_certificates_and_basic_auth_through_the_exporter(
        tmp_path: Path, mutual_tls: tuple[Path, Path, Path, Path]) -> None:
    server_cert, server_key, client_cert, client_key = mutual_tls
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {server_cert}\n  key_file: {server_key}\n"
                   f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {client_cert}\n"
                   f"basic_auth_users:\n  {USER}: '{HASH}'\n")
    exporter = ExporterProcess(["--no-collector.nvml", "--interval", "0.5", "--web.config.file", str(web)], tmp_path)
    url = f"https://{HOST}:{exporter.port}"
    identity = (str(client_cert), str(client_key))
    try:
        deadline = time.monotonic() + 15
        while True:
            assert exporter.proc.poll() is None, exporter.log()
            try:
                if requests.get(url + "/healthz", verify=str(server_cert), cert=identity, timeout=1).ok:
                    break
            except requests.RequestException:
                assert time.monotonic() < deadline, exporter.log()
                time.sleep(0.1)
        with requests.Session() as session:  # keep-alive over TLS
            for _ in range(2):
                reply = session.get(url + "/metrics", verify=str(server_cert), cert=identity, auth=(USER, PASSWORD),
                                    timeout=5)
                assert reply.status_code == 200 and "infermeter_build_info" in reply.text
        denied = requests.get(url + "/metrics", verify=str(server_cert), cert=identity, timeout=5)
        assert denied.status_code == 401
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url + "/healthz", verify=str(server_cert), timeout=5)  # no client certificate
        stranger_cert, stranger_key = _openssl(tmp_path)
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url + "/healthz", verify=str(server_cert), cert=(str(stranger_cert), str(stranger_key)),
                         timeout=5)
    finally:
        exporter.stop()
