"""A small HTTP/1.1 server for one WSGI application, with every resource a client can hold bounded.

- One I/O thread (``selectors``) owns the listening socket and every connection while no application
  code runs for it: the TLS handshake (non-blocking), reading the request head, writing the response and
  the lingering close. Each connection always has a deadline (see ``Limits``), so a silent or slow client
  costs one file descriptor for a bounded time and never blocks anybody else.
- A fixed pool of worker threads runs the application on complete request heads and hands the whole
  response back as bytes. Workers never touch a socket: a client that does not read cannot hold one.
- At most ``max_connections`` connections. At the limit a new connection first takes the place of one
  that holds no request, oldest first: one closing after its last response, one that has sent nothing
  for ``fresh_grace`` seconds (a real client sends its request right after connecting; the evicted one
  gets a 503 when there is room for that, so a slow real client sees a 503, not a reset), or one idle
  between keep-alive requests. So a flood of idle sockets cannot lock scrapers out. When every slot
  holds a request, a few more connections are answered ``503`` with ``Retry-After``; beyond those the
  listener pauses and new connections wait in the kernel's backlog until a slot frees.
- Accept errors such as EMFILE pause the listener with a backoff (no busy loop) and log once per burst.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import queue
import select
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from exporter.httpwire import HeadParser, HTTPError, Request, error_response, response
from exporter.wsgibridge import WSGIApp, call, environ_for

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 256
MAX_REJECTING = 64  # connections being answered 503 at the same time, on top of max_connections
FD_MARGIN = 64  # file descriptors left to the rest of the process (engine sockets, NVML, logs)
RETRY_AFTER_SECONDS = 1
_PEER_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENOPROTOOPT, errno.EHOSTDOWN,
                        errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH, errno.EOPNOTSUPP, errno.ETIMEDOUT})
_READ_CHUNK = 16384
_WRITE_CHUNK = 65536
_ACCEPT_BURST = 64  # accepts per loop turn, so reading and writing go on during a flood
_MAX_BACKOFF = 1.0
_LINGER_BYTES = 1 << 20  # discarded after a final response before closing anyway
_CANDIDATES = 8  # connections looked at per eviction
_WARN_EVERY = 60.0
_LISTENER, _WAKER = object(), object()


@dataclass(frozen=True)
class Limits:
    """Timeouts (seconds) and sizes. The defaults suit Prometheus and probes on a node."""

    header_timeout: float = 10.0  # from accept (TLS handshake included), or from a request's first byte
    idle_timeout: float = 75.0  # between keep-alive requests: above the common 60 s scrape interval
    write_timeout: float = 10.0  # to take a whole response (Prometheus' default scrape timeout)
    linger_timeout: float = 2.0  # after a final response, and for a whole 503 answer
    fresh_grace: float = 0.25  # silent this long after connecting: may make room at the limit
    max_connections: int | None = None  # None: 256, fewer when the open-file limit is low
    workers: int = 4
    max_request_line: int = 8192
    max_head_bytes: int = 16384
    max_headers: int = 100


def connection_budget(limits: Limits) -> tuple[int, int]:
    """(connections, extra connections only answered 503): as given, or from the free file descriptors."""
    if limits.max_connections is not None:
        cap = max(1, limits.max_connections)
        return cap, max(2, min(MAX_REJECTING, cap // 4))
    spare = _free_fds() - FD_MARGIN
    cap = max(8, min(DEFAULT_MAX_CONNECTIONS, spare * 4 // 5))
    return cap, max(2, min(MAX_REJECTING, spare - cap))


def _free_fds() -> int:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1024
    if soft == resource.RLIM_INFINITY or soft > 1 << 20:
        soft = 1 << 20
    for directory in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return soft - len(os.listdir(directory))
    return soft - 32


class _Throttle:
    """At most one warning per topic per ``_WARN_EVERY`` seconds, saying how many it held back."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warn(self, topic: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < _WARN_EVERY:
                self._held[topic] = self._held.get(topic, 0) + 1
                held = -1
            else:
                self._last[topic] = now
                held = self._held.pop(topic, 0)
        if held < 0:
            log.debug(message, *args)
        elif held:
            log.warning(message + " (%d more in the last minute)", *args, held, exc_info=exc_info)
        else:
            log.warning(message, *args, exc_info=exc_info)


class _State(Enum):
    HANDSHAKE = "TLS handshake"
    READING = "reading a request"
    BUSY = "in the application"
    WRITING = "writing a response"
    LINGERING = "closing"


class _Conn:
    """One client connection; only the I/O thread changes it."""

    __slots__ = ("closed", "deadline", "discarded", "events", "handshaking", "keep", "out", "parser", "peer",
                 "rejected", "requests", "since", "sock", "started", "state", "tls")

    def __init__(self, sock: socket.socket, peer: tuple[Any, ...], tls: bool, parser: HeadParser) -> None:
        self.sock = sock
        self.peer = peer
        self.tls = tls
        self.parser = parser
        self.state = _State.HANDSHAKE if tls else _State.READING
        self.handshaking = False  # the client sent its first TLS bytes
        self.started = False  # bytes of the current request arrived
        self.requests = 0  # answered so far
        self.rejected = False  # only gets a 503
        self.closed = False
        self.deadline = float("inf")
        self.since = 0.0  # when it began waiting for a request (eviction order)
        self.out = memoryview(b"")
        self.keep = False  # after the response being written
        self.discarded = 0
        self.events = 0


class HTTPServer:
    """Serves ``app`` on ``host:port`` (HTTPS with ``ssl_context``); binds at once, serves after ``start()``."""

    def __init__(self, host: str, port: int, app: WSGIApp, ssl_context: ssl.SSLContext | None = None, *,
                 limits: Limits | None = None, server_header: str = "infermeter") -> None:
        self._limits = limits if limits is not None else Limits()
        self._cap, self._max_rejecting = connection_budget(self._limits)
        self._app = app
        self._ssl_context = ssl_context
        self._host = host
        self._server_header = server_header
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(min(socket.SOMAXCONN, 4096))
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKER)
        self._conns: set[_Conn] = set()
        self._rejecting: set[_Conn] = set()
        # connections without a request in progress, oldest first: evicted in this order at the limit
        self._lingering: dict[_Conn, None] = {}
        self._fresh: dict[_Conn, None] = {}
        self._idle: dict[_Conn, None] = {}
        self._next_check = float("inf")
        self._paused = False
        self._resume_at = 0.0
        self._backoff = 0.0
        self._accept_failures = 0
        self._jobs: queue.SimpleQueue[tuple[_Conn, Request] | None] = queue.SimpleQueue()
        self._finished: deque[tuple[_Conn, bytes, bool]] = deque()
        self._throttle = _Throttle()
        self._stopping = False
        self._stopped = False
        self._io = threading.Thread(target=self._serve, name="infermeter-http", daemon=True)
        self._workers = [threading.Thread(target=self._work, name=f"infermeter-http-worker-{i}", daemon=True)
                         for i in range(max(1, self._limits.workers))]
        if self._limits.max_connections is None and self._cap < 64:
            log.warning("http: the open-file limit leaves room for only %d connections (ulimit -n)", self._cap)
        log.debug("http: up to %d connections (+%d answered 503), %d workers", self._cap, self._max_rejecting,
                  len(self._workers))

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._io.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Close the listener and every connection; wait up to ``timeout`` seconds for the threads."""
        if self._stopped:
            return
        self._stopped = self._stopping = True
        deadline = time.monotonic() + timeout
        if self._io.is_alive():
            self._wake()
            self._io.join(max(0.0, deadline - time.monotonic()))
        elif self._io.ident is None:
            self._shutdown()
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - time.monotonic()))

    # --- the I/O thread ---------------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopping:
                ready = self._selector.select(self._timeout(time.monotonic()))
                accept = False
                for key, _ in ready:
                    if key.data is _LISTENER:
                        accept = True
                    elif key.data is _WAKER:
                        self._drain_waker()
                    else:
                        self._step(key.data)
                self._finish_jobs()
                now = time.monotonic()
                self._expire(now)
                if accept and not self._stopping:
                    self._accept(now)
                self._maybe_resume(now)
        except Exception:  # a bug: say so loudly rather than leave a silent, dead listener
            log.exception("http: the server loop failed; no more requests are served")
        finally:
            self._shutdown()

    def _timeout(self, now: float) -> float:
        wake = self._next_check
        if self._paused:
            if self._resume_at > now:  # backing off after an accept error
                wake = min(wake, self._resume_at)
            elif self._fresh:  # full: the oldest silent connection may make room once old enough
                wake = min(wake, next(iter(self._fresh)).since + self._limits.fresh_grace)
        return max(0.0, min(wake - now, 5.0))

    def _step(self, conn: _Conn) -> None:
        try:
            if conn.state is _State.HANDSHAKE:
                self._handshake(conn)
            elif conn.state is _State.READING:
                self._read(conn)
            elif conn.state is _State.WRITING:
                self._write(conn)
            elif conn.state is _State.LINGERING:
                self._drain(conn)
        except Exception:
            self._throttle.warn("connection", "http: unexpected error on a connection; closed it", exc_info=True)
            self._close(conn, "unexpected error")

    def _watch(self, conn: _Conn, events: int) -> None:
        if events == conn.events:
            return
        if not conn.events:
            self._selector.register(conn.sock, events, conn)
        elif not events:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _schedule(self, conn: _Conn, seconds: float) -> None:
        conn.deadline = time.monotonic() + seconds
        self._next_check = min(self._next_check, conn.deadline)

    def _handshake(self, conn: _Conn) -> None:
        if not conn.handshaking:
            conn.handshaking = True
            self._not_reusable(conn)
        assert isinstance(conn.sock, ssl.SSLSocket)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except OSError as err:  # ssl.SSLError too: plain HTTP, no or a bad client certificate, a reset
            self._close(conn, f"TLS handshake failed: {err}")
            return
        conn.state = _State.READING
        if conn.rejected:
            self._send(conn, self._busy_page(), close=True)
            return
        self._reusable(conn)
        self._read(conn)

    def _read(self, conn: _Conn) -> None:
        while conn.state is _State.READING and not conn.closed:
            if conn.parser.buffer:
                self._started(conn)
                if self._dispatch(conn):
                    return
            try:
                data = conn.sock.recv(_READ_CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError):
                self._watch(conn, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._watch(conn, selectors.EVENT_WRITE)
                return
            except OSError as err:
                self._close(conn, f"read failed: {err}")
                return
            if not data:
                self._close(conn, "closed by the client")
                return
            conn.parser.feed(data)

    def _started(self, conn: _Conn) -> None:
        """The first bytes of a request: no longer reusable; on a kept-alive connection the head deadline."""
        if conn.started:
            return
        conn.started = True
        self._not_reusable(conn)
        if conn.requests:
            self._schedule(conn, self._limits.header_timeout)

    def _dispatch(self, conn: _Conn) -> bool:
        """Hand a complete head to the workers, or answer a refused one; False while incomplete."""
        try:
            request = conn.parser.take()
        except HTTPError as err:
            log.debug("http: refused a request from %s with %d", conn.peer[0], err.status)
            self._send(conn, error_response(err.status, self._server_header), close=True)
            return True
        if request is None:
            return False
        conn.state = _State.BUSY
        conn.deadline = float("inf")  # the application is ours and never waits on the network
        self._watch(conn, 0)
        self._jobs.put((conn, request))
        return True

    def _send(self, conn: _Conn, data: bytes, close: bool) -> None:
        self._not_reusable(conn)
        conn.state = _State.WRITING
        conn.out = memoryview(data)
        conn.keep = not close
        self._schedule(conn, self._limits.write_timeout)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        while conn.out:
            try:
                sent = conn.sock.send(conn.out[:_WRITE_CHUNK])
            except (BlockingIOError, ssl.SSLWantWriteError):
                self._watch(conn, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._watch(conn, selectors.EVENT_READ)
                return
            except OSError as err:
                self._close(conn, f"write failed: {err}")
                return
            conn.out = conn.out[sent:]
        if conn.keep and not self._stopping:
            self._keep(conn)
        else:
            self._linger(conn)

    def _keep(self, conn: _Conn) -> None:
        """Wait for the next request on a kept-alive connection."""
        conn.requests += 1
        conn.started = False
        conn.state = _State.READING
        self._schedule(conn, self._limits.idle_timeout)
        self._reusable(conn)
        self._read(conn)  # a pipelined request may be buffered already

    def _linger(self, conn: _Conn) -> None:
        """After a final response: send FIN, then discard what the client still sends until it closes, so
        that the kernel does not answer unread bytes with a reset that could destroy the response."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn, "gone")
            return
        conn.state = _State.LINGERING
        conn.discarded = 0
        self._schedule(conn, self._limits.linger_timeout)
        if not conn.rejected:
            self._lingering[conn] = None
        self._drain(conn)

    def _drain(self, conn: _Conn) -> None:
        while True:
            try:
                data = conn.sock.recv(_READ_CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                self._watch(conn, selectors.EVENT_READ)
                return
            except OSError:
                self._close(conn, "reset after the response")
                return
            conn.discarded += len(data)
            if not data or conn.discarded > _LINGER_BYTES:
                self._close(conn, "done")
                return

    def _close(self, conn: _Conn, why: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        log.debug("http: closed connection from %s:%s (%s, %s)", conn.peer[0], conn.peer[1], conn.state.value, why)
        if conn.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(conn.sock)
            conn.events = 0
        self._conns.discard(conn)
        self._rejecting.discard(conn)
        self._not_reusable(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _reusable(self, conn: _Conn) -> None:
        """It now waits for a request: another connection may take its place at the limit."""
        if conn.rejected or conn.closed:
            return
        conn.since = time.monotonic()
        (self._idle if conn.requests else self._fresh)[conn] = None

    def _not_reusable(self, conn: _Conn) -> None:
        self._fresh.pop(conn, None)
        self._idle.pop(conn, None)
        self._lingering.pop(conn, None)

    def _expire(self, now: float) -> None:
        if now < self._next_check:
            return
        self._next_check = float("inf")
        for conn in [*self._conns, *self._rejecting]:
            if conn.closed:
                continue
            if conn.deadline > now:
                self._next_check = min(self._next_check, conn.deadline)
            elif conn.state is _State.READING and conn.started and not conn.rejected:
                log.debug("http: request head from %s not complete in time", conn.peer[0])
                self._send(conn, error_response(408, self._server_header), close=True)
            else:
                self._close(conn, "timed out")

    def _finish_jobs(self) -> None:
        while True:
            try:
                conn, data, close = self._finished.popleft()
            except IndexError:
                return
            if not conn.closed:
                self._send(conn, data, close)

    # --- accepting ---------------------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        for _ in range(_ACCEPT_BURST):
            if not self._can_admit(now):
                self._pause(now)
                return
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in _PEER_GONE:
                    continue
                self._accept_failed(err, now)
                return
            if self._accept_failures:
                log.info("http: accepting connections again after %d failed attempts", self._accept_failures)
                self._accept_failures = 0
                self._backoff = 0.0
            self._admit(sock, peer, now)

    def _accept_failed(self, err: OSError, now: float) -> None:
        """EMFILE and friends: pause the listener (doubling up to 1 s) instead of spinning on it."""
        self._accept_failures += 1
        self._backoff = min(_MAX_BACKOFF, self._backoff * 2 if self._backoff else 0.05)
        if self._accept_failures == 1:
            log.warning("http: cannot accept connections: %s; retrying every %gs at most until it works "
                        "(%d connections open, limit %d)", err.strerror or err, _MAX_BACKOFF,
                        len(self._conns) + len(self._rejecting), self._cap)
        self._pause(now + self._backoff)

    def _pause(self, until: float) -> None:
        if not self._paused:
            self._selector.unregister(self._listener)
            self._paused = True
        self._resume_at = until

    def _maybe_resume(self, now: float) -> None:
        if self._paused and not self._stopping and now >= self._resume_at and self._can_admit(now):
            self._selector.register(self._listener, selectors.EVENT_READ, _LISTENER)
            self._paused = False

    def _can_admit(self, now: float) -> bool:
        return (len(self._conns) < self._cap or bool(self._lingering) or bool(self._idle)
                or (bool(self._fresh) and now - next(iter(self._fresh)).since >= self._limits.fresh_grace)
                or len(self._rejecting) < self._max_rejecting)

    def _admit(self, sock: socket.socket, peer: tuple[Any, ...], now: float) -> None:
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rejected = len(self._conns) >= self._cap and not self._make_room(now)
            if rejected and len(self._rejecting) >= self._max_rejecting:
                log.debug("http: no room for a connection from %s; closed it", peer[0])
                sock.close()
                return
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as err:
            log.debug("http: dropped a connection from %s: %s", peer[0], err)
            sock.close()
            return
        limits = self._limits
        conn = _Conn(sock, peer, self._ssl_context is not None,
                     HeadParser(limits.max_request_line, limits.max_head_bytes, limits.max_headers))
        log.debug("http: connection from %s:%s", peer[0], peer[1])
        if rejected:
            self._reject(conn)
            return
        self._conns.add(conn)
        self._schedule(conn, limits.header_timeout)
        self._reusable(conn)
        self._watch(conn, selectors.EVENT_READ)

    def _make_room(self, now: float) -> bool:
        """Close (or answer 503) the oldest connection that holds no request; False when there is none."""
        if self._lingering:
            self._close(next(iter(self._lingering)), "making room")
            return True
        for conn in list(itertools.islice(self._fresh, _CANDIDATES)):
            if now - conn.since < self._limits.fresh_grace:
                break
            if not _readable(conn.sock):
                self._conns.discard(conn)
                self._not_reusable(conn)
                if len(self._rejecting) < self._max_rejecting:
                    self._reject(conn)
                else:
                    self._close(conn, "silent, making room")
                return True
        for conn in list(itertools.islice(self._idle, _CANDIDATES)):
            if not _readable(conn.sock):
                self._close(conn, "idle, making room")
                return True
        return False

    def _reject(self, conn: _Conn) -> None:
        """Answer 503 with Retry-After and close, within ``linger_timeout``."""
        conn.rejected = True
        self._rejecting.add(conn)
        self._schedule(conn, self._limits.linger_timeout)
        self._throttle.warn("limit", "http: %d connections open (the limit): answering 503 with Retry-After to "
                                     "connections that cannot wait", self._cap)
        if conn.state is _State.READING:
            self._send(conn, self._busy_page(), close=True)
        else:
            self._watch(conn, selectors.EVENT_READ)  # the TLS handshake first

    def _busy_page(self) -> bytes:
        return error_response(503, self._server_header, (("Retry-After", str(RETRY_AFTER_SECONDS)),))

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_waker(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _shutdown(self) -> None:
        for conn in [*self._conns, *self._rejecting]:
            self._close(conn, "server stopping")
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    # --- the workers -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, request = job
            data, close = self._respond(conn, request)
            self._finished.append((conn, data, close))
            self._wake()

    def _respond(self, conn: _Conn, request: Request) -> tuple[bytes, bool]:
        """The whole response to ``request`` and whether to close after it."""
        keep = request.keep_alive and not self._stopping
        try:
            environ = environ_for(request, conn.peer, conn.tls, self._host, self._port, self._server_header)
            status, headers, body = call(self._app, environ)
            return response(status, headers, body, head_only=request.method == "HEAD", keep_alive=keep,
                            server=self._server_header), not keep
        except Exception:
            self._throttle.warn("app", "http: the application failed; answered 500", exc_info=True)
            return error_response(500, self._server_header), True


def _readable(sock: socket.socket) -> bool:
    """Bytes (or an EOF) wait on ``sock``: its request may be on the way, so it is not evicted."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))
