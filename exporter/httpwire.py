"""HTTP/1.1 on the wire: bounded request-head parsing and response formatting, with no I/O.

Strict on purpose: the exporter serves GET/HEAD to scrapers and probes, so anything odd is refused with a
fixed error page that never repeats what the client sent (RFC 9112 framing; bodies are not accepted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import urlsplit

REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_TARGET = re.compile(rb"[\x21-\x7e]+")  # visible ASCII: no spaces, controls or raw non-ASCII
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters other than tab
_STATUS = re.compile(r"[1-5]\d\d [^\r\n\x00]*")
_FIELD_VALUE_BAD = re.compile(r"[\r\n\x00]")
_HEAD_END = (b"\n\r\n", b"\n\n")
# set by the server itself; an app's own values for these are dropped
_SERVER_HEADERS = frozenset({"connection", "content-length", "date", "keep-alive", "server", "transfer-encoding"})


class HTTPError(Exception):
    """A request the server answers with ``status`` and a fixed page, then closes."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-encoded, as sent
    query: str
    version: str  # HTTP/1.0 or HTTP/1.1
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), latin-1 as WSGI wants
    keep_alive: bool


class HeadParser:
    """Collects bytes until one request head is complete; bounded by the three limits."""

    def __init__(self, max_request_line: int, max_head_bytes: int, max_headers: int) -> None:
        self.max_request_line = max_request_line
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.buffer = bytearray()
        self._scanned = 0  # where to resume the search for the blank line
        self._line_end = -1  # the request line's "\n", once seen and checked

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def take(self) -> Request | None:
        """The next request head, removed from the buffer; None until complete; HTTPError when refused."""
        buffer = self.buffer
        if self._line_end < 0:
            while buffer[:2] == b"\r\n" or buffer[:1] == b"\n":  # RFC 9112 2.2: skip empty lines first
                del buffer[: 2 if buffer[:1] == b"\r" else 1]
            end = buffer.find(b"\n", 0, self.max_request_line + 2)
            if end < 0:
                if len(buffer) > self.max_request_line + 1:
                    raise HTTPError(414)
                return None
            _request_line(_strip_cr(bytes(buffer[:end])), self.max_request_line)  # refuse early, e.g. HTTP/0.9
            self._line_end = self._scanned = end
        start = max(self._scanned - 2, self._line_end)
        ends = [at + len(marker) for marker in _HEAD_END if (at := buffer.find(marker, start)) >= 0]
        if not ends:
            if len(buffer) > self.max_head_bytes:
                raise HTTPError(431)
            self._scanned = len(buffer)
            return None
        end = min(ends)
        if end > self.max_head_bytes:
            raise HTTPError(431)
        head = bytes(buffer[:end])
        del buffer[:end]
        self._line_end = -1
        self._scanned = 0
        return parse_head(head, self.max_request_line, self.max_headers)


def _strip_cr(line: bytes) -> bytes:
    line = line[:-1] if line.endswith(b"\r") else line
    if b"\r" in line:
        raise HTTPError(400)
    return line


def _request_line(line: bytes, max_request_line: int) -> tuple[str, str, str, str]:
    if len(line) > max_request_line:
        raise HTTPError(414)
    parts = line.split(b" ")
    if len(parts) != 3:  # two words is HTTP/0.9, refused like any other malformed line
        raise HTTPError(400)
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise HTTPError(400)
    matched = _VERSION.fullmatch(version)
    if matched is None:
        raise HTTPError(400)
    if matched.group(1) != b"1":
        raise HTTPError(505)
    text = target.decode("ascii")
    if text.startswith("/"):
        path, _, query = text.partition("?")
    elif text.startswith(("http://", "https://")):  # absolute-form
        split = urlsplit(text)
        path, query = split.path or "/", split.query
    else:
        raise HTTPError(400)
    minor = "1" if matched.group(2) != b"0" else "0"  # 1.x above 1.1 is answered as 1.1
    return method.decode("ascii"), path, query, f"HTTP/1.{minor}"


def parse_head(head: bytes, max_request_line: int, max_headers: int) -> Request:
    """One complete head (request line, fields, blank line) into a Request; HTTPError when refused."""
    lines = head.split(b"\n")
    method, path, query, version = _request_line(_strip_cr(lines[0]), max_request_line)
    headers: list[tuple[str, str]] = []
    for raw in lines[1:]:
        line = _strip_cr(raw)
        if not line:
            break
        if line[:1] in (b" ", b"\t"):  # obsolete line folding
            raise HTTPError(400)
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):  # also refuses whitespace before the colon
            raise HTTPError(400)
        value = value.strip(b" \t")
        if _CONTROL.search(value):
            raise HTTPError(400)
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
        if len(headers) > max_headers:
            raise HTTPError(431)
    _refuse_body(headers)
    tokens = {token.strip().lower() for name, value in headers if name == "connection" for token in value.split(",")}
    keep_alive = version == "HTTP/1.1" and "close" not in tokens
    return Request(method, path, query, version, tuple(headers), keep_alive)


def _refuse_body(headers: list[tuple[str, str]]) -> None:
    """No request body is accepted: Content-Length above 0 is 413; Transfer-Encoding or a bad length 400."""
    lengths = {value for name, value in headers if name == "content-length"}
    if any(name == "transfer-encoding" for name, _ in headers):
        raise HTTPError(400)
    if not lengths:
        return
    if len(lengths) > 1 or not all(value.isascii() and value.isdigit() for value in lengths):
        raise HTTPError(400)
    if int(lengths.pop()) > 0:
        raise HTTPError(413)


def response(status: str, headers: list[tuple[str, str]], body: bytes, *, head_only: bool, keep_alive: bool,
             server: str) -> bytes:
    """A whole HTTP/1.1 response with Content-Length framing; ValueError on a malformed status or header."""
    if not _STATUS.fullmatch(status):
        raise ValueError("malformed status line from the application")
    lines = [f"HTTP/1.1 {status}", f"Server: {server}", f"Date: {formatdate(usegmt=True)}"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name.encode("latin-1", "replace")) or _FIELD_VALUE_BAD.search(value):
            raise ValueError("malformed header from the application")
        if name.lower() not in _SERVER_HEADERS:
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error_response(status: int, server: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A fixed page for ``status`` (nothing from the request in it); always closes the connection."""
    reason = REASONS[status]
    return response(f"{status} {reason}", [("Content-Type", "text/plain; charset=utf-8"), *extra],
                    f"{reason.lower()}\n".encode(), head_only=False, keep_alive=False, server=server)
