"""The HTTP server bounds what a client can hold (issue 12): real sockets against an in-process ``Server``
with short timeouts, real TLS; the process-level attacks are in tests/test_server_attacks.py."""

from __future__ import annotations

import gzip
import http.client
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter import __version__
from exporter.collection import Snapshot
from exporter.server import Limits, Server, make_app
from tests.test_webconfig import _openssl

HOST = "127.0.0.1"
MARKER = b"ECHO-MARKER-5519"


def hello(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


@contextmanager
def serving(app: Any = hello, ssl_context: ssl.SSLContext | None = None, host: str = HOST,
            **limits: Any) -> Iterator[Server]:
    server = Server(host, 0, app, ssl_context, limits=Limits(**limits))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    got = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def exchange(port: int, data: bytes, timeout: float = 3.0) -> tuple[bytes, bool]:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout)


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def get_ok(port: int, scheme: str = "http", **kwargs: Any) -> requests.Response:
    reply = requests.get(f"{scheme}://{HOST}:{port}/", timeout=5, **kwargs)
    assert reply.status_code == 200
    return reply


def test_keep_alive_serves_two_requests_on_one_connection_then_closes_it_when_idle() -> None:
    with serving(idle_timeout=0.5) as server:
        conn = http.client.HTTPConnection(HOST, server.port, timeout=5)
        client_ports = []
        for _ in range(2):
            conn.request("GET", "/")
            assert conn.sock is not None
            client_ports.append(conn.sock.getsockname()[1])
            reply = conn.getresponse()
            assert reply.status == 200 and reply.read() == b"hello\n"
        conn.close()
        assert client_ports[0] == client_ports[1]  # the same TCP connection

        with socket.create_connection((HOST, server.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            began = time.monotonic()
            reply, closed = read_until_closed(sock, 5.0)
            assert reply.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in reply
            assert closed, "an idle keep-alive connection stayed open"
            assert time.monotonic() - began >= 0.4  # kept open for the idle timeout, not closed at once


@pytest.mark.parametrize("request_head", [b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"])
def test_http_1_0_and_connection_close_end_the_connection(request_head: bytes) -> None:
    with serving() as server:
        reply, closed = exchange(server.port, request_head)
    assert status_of(reply) == 200 and closed


def test_slowloris_is_cut_at_the_header_deadline_and_blocks_nobody() -> None:
    with serving(header_timeout=0.5) as server, socket.create_connection((HOST, server.port)) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        cut = False
        for byte in b"X-Pad: 1\r\n" * 10:  # 10 s at most
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            if select.select([slow], [], [], 0.1)[0]:
                reply, cut = read_until_closed(slow, 2.0)
                assert reply.startswith(b"HTTP/1.1 408 ")
                break
            get_ok(server.port)  # others are served meanwhile
        assert cut, "a request head trickled for 10 s without being cut"
        assert time.monotonic() - began < 5.0


def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline() -> None:
    with serving(header_timeout=0.5) as server, socket.create_connection((HOST, server.port)) as silent:
        reply, closed = read_until_closed(silent, 5.0)
    assert closed and reply == b""


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /metrics HTTP/1.1-" + MARKER + b"\r\nHost: x\r\n\r\n", 400),
    (b"GET /metrics " + MARKER + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET /<script>" + MARKER + b" HTTP/1.1 extra\r\n\r\n", 400),
    (b"GET  /" + MARKER + b" HTTP/1.1\r\n\r\n", 400),
    (b"GE<T /" + MARKER + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET /\x01" + MARKER + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET " + MARKER + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + MARKER + b" HTTP/2.0\r\n\r\n", 505),
    (b"GET /" + MARKER + b" HTTP/1.1\r\nBad Header: " + MARKER + b"\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A : " + MARKER + b"\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A: 1\r\n folded " + MARKER + b"\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNoColon" + MARKER + b"\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A: \x00" + MARKER + b"\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n" + MARKER, 413),
    (b"GET / HTTP/1.1\r\nContent-Length: -1" + MARKER + b"\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n" + MARKER + b"\r\n0\r\n\r\n", 400),
    (b"GET /" + MARKER * 600 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"X-A: " + MARKER * 1100 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, MARKER) for i in range(101)) + b"\r\n", 431),
])
def test_malformed_requests_get_a_fixed_error_page_and_are_closed(data: bytes, status: int) -> None:
    with serving() as server:
        reply, closed = exchange(server.port, data)
    assert reply.startswith(b"HTTP/1.") and status_of(reply) == status, reply[:200]
    assert MARKER not in reply and b"script" not in reply
    assert b"\r\nConnection: close\r\n" in reply and closed


def test_an_http_0_9_request_line_gets_400_and_is_closed_at_once() -> None:
    with serving() as server, socket.create_connection((HOST, server.port)) as sock:
        sock.sendall(b"GET /metrics\r\n")  # no version, and no blank line will follow
        reply, closed = read_until_closed(sock, 2.0)
    assert reply.startswith(b"HTTP/1.1 400 ") and closed


def test_the_server_header_names_infermeter_not_python() -> None:
    with serving() as server:
        reply = get_ok(server.port)
    assert reply.headers["Server"] == f"infermeter/{__version__}"
    assert not any("python" in f"{k}: {v}".lower() for k, v in reply.headers.items())


def test_the_wsgi_environ_and_head_and_application_errors() -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(environ)
        if environ["PATH_INFO"] == "/fail":
            raise RuntimeError("boom " + MARKER.decode())
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "999")])
        return [b"0123456789"]

    with serving(app) as server:
        reply = requests.get(f"http://{HOST}:{server.port}/a%20b/c?x=1&name[]=y", headers={"X-Custom": "v"},
                             timeout=5)
        assert reply.status_code == 200 and reply.content == b"0123456789"
        assert reply.headers["Content-Length"] == "10"
        head, closed = exchange(server.port, b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert head.endswith(b"\r\n\r\n") and b"Content-Length: 10\r\n" in head and closed
        failed = requests.get(f"http://{HOST}:{server.port}/fail", timeout=5)
        assert failed.status_code == 500 and MARKER.decode() not in failed.text
        port = server.port
    environ = seen[0]
    assert environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"] == "/a b/c"
    assert environ["QUERY_STRING"] == "x=1&name%5B%5D=y" and environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == HOST and int(environ["REMOTE_PORT"]) > 0
    assert environ["SERVER_PORT"] == str(port) and environ["HTTP_X_CUSTOM"] == "v"
    assert environ["wsgi.url_scheme"] == "http" and environ["wsgi.input"].read() == b""
    assert seen[1]["REQUEST_METHOD"] == "HEAD"


def test_metrics_app_keeps_gzip_and_name_filter_through_the_server() -> None:
    registry = CollectorRegistry()
    Gauge("wanted_metric", "kept", registry=registry).set(3)
    Counter("other_metric", "filtered out", registry=registry).inc()
    app = make_app(registry, lambda: Snapshot(timestamp=time.time(), window_seconds=60.0), 1.0)
    with serving(app) as server:
        reply = requests.get(f"http://{HOST}:{server.port}/metrics", params={"name[]": "wanted_metric"},
                             headers={"Accept-Encoding": "gzip"}, timeout=5, stream=True)
        raw = reply.raw.read(decode_content=False)
        head = requests.head(f"http://{HOST}:{server.port}/metrics", timeout=5)
    assert reply.status_code == 200 and reply.headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(raw).decode()
    assert "wanted_metric 3.0" in text and "other_metric" not in text
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > 0 and head.content == b""


def test_idle_connections_beyond_the_limit_never_lock_scrapers_out() -> None:
    with serving(max_connections=8, fresh_grace=0.05) as server, ExitStack() as stack:
        idle = [stack.enter_context(socket.create_connection((HOST, server.port))) for _ in range(40)]
        time.sleep(0.3)
        for _ in range(3):
            get_ok(server.port)
        ended = select.select(idle, [], [], 0)[0]  # answered 503 or closed to make room
        assert len(ended) >= 40 - 8


def test_when_every_slot_holds_a_request_new_connections_get_a_fast_503() -> None:
    with serving(max_connections=4, header_timeout=5.0) as server, ExitStack() as stack:
        for _ in range(4):  # each holds a request in progress: not to be evicted
            slow = stack.enter_context(socket.create_connection((HOST, server.port)))
            slow.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(0.2)
        began = time.monotonic()
        reply = requests.get(f"http://{HOST}:{server.port}/", timeout=5)
        assert reply.status_code == 503 and time.monotonic() - began < 2.0
        assert reply.headers["Retry-After"] == "1" and reply.headers["Connection"] == "close"
        stack.close()  # the slow clients give up: their slots free
        time.sleep(0.2)
        get_ok(server.port)


@pytest.fixture(scope="module")
def server_certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _openssl(tmp_path_factory.mktemp("server-certs"))


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_silent_and_stalled_tls_clients_block_no_scrape_and_are_cut(server_certs: tuple[Path, Path]) -> None:
    cert, key = server_certs
    with serving(ssl_context=_tls_context(cert, key), header_timeout=1.0) as server, ExitStack() as stack:
        silent = [stack.enter_context(socket.create_connection((HOST, server.port))) for _ in range(5)]
        stalled = stack.enter_context(socket.create_connection((HOST, server.port)))
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
        plain = stack.enter_context(socket.create_connection((HOST, server.port)))
        plain.sendall(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP on the TLS port
        began = time.monotonic()
        with requests.Session() as session:
            for _ in range(2):
                reply = session.get(f"https://{HOST}:{server.port}/", verify=str(cert), timeout=5)
                assert reply.status_code == 200
        assert time.monotonic() - began < 2.0
        assert read_until_closed(plain, 2.0)[1]
        for sock in [*silent, stalled]:
            assert read_until_closed(sock, 5.0)[1], "a silent TLS client was not cut at the deadline"


def test_plain_silent_clients_block_no_scrape() -> None:
    with serving() as server, ExitStack() as stack:
        for _ in range(5):
            stack.enter_context(socket.create_connection((HOST, server.port)))
        began = time.monotonic()
        get_ok(server.port)
        assert time.monotonic() - began < 2.0


def test_stop_closes_the_listener_and_connections_promptly() -> None:
    server = Server(HOST, 0, hello, limits=Limits())
    server.start()
    port = server.port
    with ExitStack() as stack:
        idle = [stack.enter_context(socket.create_connection((HOST, port))) for _ in range(5)]
        get_ok(port)
        began = time.monotonic()
        server.stop()
        assert time.monotonic() - began < 1.0
        assert all(read_until_closed(sock, 2.0)[1] for sock in idle)
    with pytest.raises(OSError):
        socket.create_connection((HOST, port), timeout=2).close()
    assert not [t for t in threading.enumerate() if t.name.startswith("infermeter-http")]


def test_ipv6_host() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = Server("::1", 0, hello)
    except OSError as err:
        pytest.skip(f"no IPv6 loopback: {err}")
    server.start()
    try:
        assert requests.get(f"http://[::1]:{server.port}/", timeout=5).status_code == 200
    finally:
        server.stop()
