"""Request-head parsing and response formatting of the HTTP server (exporter/httpwire.py), without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.httpwire import REASONS, HeadParser, HTTPError, Request, error_response, response

LINE, HEAD, COUNT = 8192, 16384, 100
PROMETHEUS = (b"GET /metrics?name[]=up HTTP/1.1\r\nHost: node:9416\r\nUser-Agent: Prometheus/3.0\r\n"
              b"Accept: text/plain;version=0.0.4\r\nAccept-Encoding: gzip\r\n"
              b"X-Prometheus-Scrape-Timeout-Seconds: 10\r\n"
              b"Authorization: Basic cHJvbWV0aGV1czpzM2NyZXQ=\r\n\r\n")


def parse(data: bytes) -> Request | None:
    parser = HeadParser(LINE, HEAD, COUNT)
    parser.feed(data)
    return parser.take()


def test_a_prometheus_scrape_head() -> None:
    request = parse(PROMETHEUS)
    assert request == Request("GET", "/metrics", "name[]=up", "HTTP/1.1", (
        ("host", "node:9416"), ("user-agent", "Prometheus/3.0"), ("accept", "text/plain;version=0.0.4"),
        ("accept-encoding", "gzip"), ("x-prometheus-scrape-timeout-seconds", "10"),
        ("authorization", "Basic cHJvbWV0aGV1czpzM2NyZXQ=")), keep_alive=True)


@pytest.mark.parametrize(("data", "path", "query", "version", "keep_alive"), [
    (b"GET / HTTP/1.0\r\n\r\n", "/", "", "HTTP/1.0", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "/", "", "HTTP/1.0", False),
    (b"GET /x HTTP/1.1\r\nConnection: TE, Close\r\n\r\n", "/x", "", "HTTP/1.1", False),
    (b"\r\n\r\nGET /x?a=b?c HTTP/1.1\n\n", "/x", "a=b?c", "HTTP/1.1", True),  # leading empty lines, bare LF
    (b"HEAD http://node:9416/metrics?x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "/metrics", "x", "HTTP/1.1", True),
    (b"GET / HTTP/1.9\r\n\r\n", "/", "", "HTTP/1.1", True),
])
def test_framing_and_keep_alive(data: bytes, path: str, query: str, version: str, keep_alive: bool) -> None:
    request = parse(data)
    assert request is not None
    assert (request.path, request.query, request.version, request.keep_alive) == (path, query, version, keep_alive)


def test_a_head_split_anywhere_parses_the_same_and_pipelined_heads_come_one_by_one() -> None:
    whole = parse(PROMETHEUS)
    for cut in range(1, len(PROMETHEUS)):
        parser = HeadParser(LINE, HEAD, COUNT)
        parser.feed(PROMETHEUS[:cut])
        assert parser.take() is None
        parser.feed(PROMETHEUS[cut:])
        assert parser.take() == whole
    parser = HeadParser(LINE, HEAD, COUNT)
    parser.feed(PROMETHEUS + b"GET /healthz HTTP/1.1\r\n\r\nGET /")
    first, second = parser.take(), parser.take()
    assert first == whole and second is not None and second.path == "/healthz"
    assert parser.take() is None and bytes(parser.buffer) == b"GET /"


@pytest.mark.parametrize("line", [b"GET /metrics", b"GET", b"", b"GET /metrics HTTP/1.1 x", b"get / HTTPS/1.1",
                                  b"GET / http/1.1", b"GET /\xff HTTP/1.1", b"GET * HTTP/1.1", b"GET /a\rb HTTP/1.1"])
def test_a_bad_request_line_is_refused_as_soon_as_it_ends(line: bytes) -> None:
    parser = HeadParser(LINE, HEAD, COUNT)
    parser.feed(line + b"\r\n")  # no blank line yet: HTTP/0.9 clients never send one
    if line == b"":
        assert parser.take() is None  # an empty line before the request is skipped
        return
    with pytest.raises(HTTPError) as refused:
        parser.take()
    assert refused.value.status == 400


def test_limits_are_enforced_before_the_end_of_the_head() -> None:
    parser = HeadParser(LINE, HEAD, COUNT)
    parser.feed(b"GET /" + b"a" * LINE)  # no line end yet
    with pytest.raises(HTTPError) as too_long:
        parser.take()
    assert too_long.value.status == 414
    parser = HeadParser(LINE, HEAD, COUNT)
    parser.feed(b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 3000)  # no blank line yet
    with pytest.raises(HTTPError) as too_big:
        parser.take()
    assert too_big.value.status == 431


@given(chunks=st.lists(st.binary(max_size=3000), max_size=12))
@settings(max_examples=300, deadline=None)
def test_any_bytes_in_any_chunks_give_a_request_none_or_a_known_refusal(chunks: list[bytes]) -> None:
    parser = HeadParser(LINE, HEAD, COUNT)
    for chunk in chunks:
        parser.feed(chunk)
        try:
            while parser.take() is not None:
                pass
        except HTTPError as err:
            assert err.status in REASONS
            return
        assert len(parser.buffer) <= HEAD + 3000  # never more than the limit and one chunk


@given(method=st.sampled_from(["GET", "HEAD"]), path=st.text("abc/%?=&[]", max_size=50),
       headers=st.lists(st.tuples(st.text("abcdefXY-", min_size=1, max_size=10),
                                  st.text(st.characters(min_codepoint=0x20, max_codepoint=0xff), max_size=30)),
                        max_size=20))
@settings(max_examples=200, deadline=None)
def test_well_formed_heads_round_trip(method: str, path: str, headers: list[tuple[str, str]]) -> None:
    headers = [(name, value.strip(" \x7f").replace("\x7f", "")) for name, value in headers
               if name.lower() not in ("content-length", "transfer-encoding")]
    head = f"{method} /{path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    request = parse(head.encode("latin-1"))
    assert request is not None and request.method == method
    assert (request.path + ("?" + request.query if "?" in path else "")) == f"/{path}"
    assert list(request.headers) == [(n.lower(), v) for n, v in headers]


def test_responses_frame_the_body_and_refuse_splitting() -> None:
    reply = response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "999"), ("Connection", "x")],
                     b"body", head_only=False, keep_alive=True, server="infermeter/1")
    head, body = reply.split(b"\r\n\r\n", 1)
    assert body == b"body" and b"Content-Length: 4" in head and b"Connection" not in head
    assert b"Content-Length: 999" not in head and b"Server: infermeter/1" in head
    assert response("200 OK", [], b"body", head_only=True, keep_alive=False, server="s").endswith(
        b"Content-Length: 4\r\nConnection: close\r\n\r\n")
    for status, headers in [("200 OK\r\nX: y", []), ("OK", []), ("200 OK", [("X", "a\r\nSet-Cookie: b")]),
                            ("200 OK", [("X Y", "a")])]:
        with pytest.raises(ValueError):
            response(status, headers, b"", head_only=False, keep_alive=True, server="s")
    for status in REASONS:
        page = error_response(status, "s")
        assert page.startswith(b"HTTP/1.1 %d " % status) and b"Connection: close" in page
