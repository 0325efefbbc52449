"""Attack the exporter's HTTP server the way issue 12 did and print what it costs the exporter.

Run from the repository root (127.0.0.1 only; every phase is bounded in count and time, ~1 minute):

    .venv/bin/python benchmarks/attack_http.py [--root DIR] [--fd-limit 1024] [--idle 1100] [--scrapers 300]

``--root`` runs the exporter from another checkout (e.g. a copy with the old server) for a before/after
comparison; the fake NVML (8 GPUs, for a realistic /metrics body) always comes from this checkout. The
exporter runs with its soft open-file limit set to ``--fd-limit``; this process raises its own soft limit
to its hard limit to hold the idle connections.

Phases, each on the same exporter process:

1. baseline: threads (/proc/PID/task), open fds (/proc/PID/fd), CPU (utime+stime) over 2 s;
2. idle flood: ``--idle`` connections that send nothing; 2 s later the same figures, then one /metrics
   and one /healthz (5 s timeout each);
3. ``--scrapers`` concurrent GET /metrics (http.client, one new connection each, all connected before
   any sends): how many got 200, 503 or an error, latency p50/p99/max from the send, the most threads
   seen;
4. slowloris: one header byte every 0.5 s; when the exporter cut it (or not within 20 s);
5. a malformed request line carrying a marker: is the marker echoed; an HTTP/0.9 line: how long until the
   exporter answers and closes; the Server header.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.nvml_specs import h100_node  # noqa: E402
from tests.host import cpu_seconds, open_fds, threads  # noqa: E402

FAKE_PYNVML = ROOT / "tests" / "fakes" / "pynvml_fake"
HOST = "127.0.0.1"
MAX_IDLE, MAX_SCRAPERS = 3000, 500
LAUNCH = ("import resource, runpy, sys\n"
          "limit = int(sys.argv.pop(1))\n"
          "resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
          "sys.argv[0] = 'infermeter'\n"
          "runpy.run_module('exporter', run_name='__main__', alter_sys=True)\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def get(port: int, path: str, timeout: float = 5.0) -> tuple[str, float]:
    began = time.monotonic()
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        conn.request("GET", path)
        reply = conn.getresponse()
        reply.read()
        conn.close()
        return str(reply.status), time.monotonic() - began
    except (OSError, http.client.HTTPException) as err:
        return type(err).__name__, time.monotonic() - began


def figures(pid: int) -> str:
    cpu = cpu_seconds(pid)
    time.sleep(2.0)
    return f"threads {threads(pid)}, fds {open_fds(pid)}, CPU {cpu_seconds(pid) - cpu:.2f} s over 2 s"


def idle_flood(port: int, count: int) -> list[socket.socket]:
    held: list[socket.socket] = []
    deadline = time.monotonic() + 15
    while len(held) < count and time.monotonic() < deadline:
        sock = socket.socket()
        sock.settimeout(2)
        try:
            sock.connect((HOST, port))
        except OSError:
            sock.close()
            continue
        held.append(sock)
    return held


def scrapers(pid: int, port: int, count: int) -> str:
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count + 1)
    most = [threads(pid)]

    def scrape() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        began = time.monotonic()
        try:
            conn.connect()
            barrier.wait(60)  # all connected before any sends: the most the server must hold at once
            began = time.monotonic()
            conn.request("GET", "/metrics")
            reply = conn.getresponse()
            reply.read()
            result = (str(reply.status), time.monotonic() - began)
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as err:
            result = (type(err).__name__, time.monotonic() - began)
        finally:
            conn.close()
        with lock:
            outcomes.append(result)

    workers = [threading.Thread(target=scrape, daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    barrier.wait(60)
    deadline = time.monotonic() + 90
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            most[0] = max(most[0], threads(pid))
        time.sleep(0.05)
    counts = Counter(status for status, _ in outcomes)
    counts["unfinished"] = count - len(outcomes)
    line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)
    for status in ("200", "503"):
        took = sorted(t for s, t in outcomes if s == status)
        if took:
            p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
            line += (f"; {status}: p50 {statistics.median(took) * 1e3:.0f} ms, p99 {p99 * 1e3:.0f} ms, "
                     f"max {took[-1] * 1e3:.0f} ms")
    return line + f"; most threads seen {most[0]}"


def slowloris(port: int) -> str:
    """A request head one byte every 0.5 s: when the exporter cut it, and what it answered."""
    sock = socket.create_connection((HOST, port), timeout=2)
    began = time.monotonic()
    trickle = b"X-Pad: 1\r\n" * 40
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        for byte in trickle:
            if time.monotonic() - began > 20:
                return "still open after 20 s"
            sock.sendall(bytes([byte]))
            if select.select([sock], [], [], 0.5)[0]:
                first = sock.recv(4096).split(b"\r\n")[0].decode("latin-1")
                return f"cut after {time.monotonic() - began:.1f} s ({first or 'EOF'})"
        return "sent the whole head slowly"
    except OSError as err:
        return f"cut after {time.monotonic() - began:.1f} s ({type(err).__name__})"
    finally:
        sock.close()


def exchange(port: int, data: bytes) -> tuple[bytes, float]:
    """Send ``data``; everything read until the exporter closes (at most 5 s) and when that was."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(data)
        began, got = time.monotonic(), b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                got += chunk
        return got, time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to run the exporter from")
    parser.add_argument("--fd-limit", type=int, default=1024, help="the exporter's soft RLIMIT_NOFILE")
    parser.add_argument("--idle", type=int, default=1100, help=f"idle connections (at most {MAX_IDLE})")
    parser.add_argument("--scrapers", type=int, default=300, help=f"concurrent scrapes (at most {MAX_SCRAPERS})")
    args = parser.parse_args()
    idle, concurrent = min(args.idle, MAX_IDLE), min(args.scrapers, MAX_SCRAPERS)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="attack-http-"))
    spec = tmp / "nvml.json"
    spec.write_text(json.dumps(h100_node(8)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKE_PYNVML), str(args.root.resolve())]),
           "INFERMETER_FAKE_NVML": str(spec), "PYTHONUNBUFFERED": "1"}
    log = (tmp / "exporter.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(args.fd_limit), "--listen", f"{HOST}:{port}",
                             "--interval", "1"], cwd=args.root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while get(port, "/healthz", 1)[0] != "200":
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"exporter did not start; see {log.name}")
                return 1
            time.sleep(0.2)
        pid = proc.pid
        print(f"exporter from {args.root} (pid {pid}), soft fd limit {args.fd_limit}, Python {sys.version.split()[0]}")
        print(f"| baseline | {figures(pid)} |")
        held = idle_flood(port, idle)
        print(f"| {len(held)} idle connections | {figures(pid)} |")
        for path in ("/metrics", "/healthz"):
            status, took = get(port, path)
            print(f"| {path} during the idle flood | {status} in {took * 1e3:.0f} ms |")
        for sock in held:
            sock.close()
        time.sleep(1.0)
        print(f"| {concurrent} concurrent scrapers | {scrapers(pid, port, concurrent)} |")
        print(f"| slowloris (1 byte / 0.5 s) | {slowloris(port)} |")
        marker = b"ECHO-MARKER-7731"
        for line in (b"GET /metrics HTTP/1.1-" + marker, b"GET /metrics " + marker + b" HTTP/1.1"):
            got, _ = exchange(port, line + b"\r\nHost: x\r\n\r\n")
            print(f"| malformed request line {line.decode()!r} | {got[:12]!r}..., "
                  f"marker {'ECHOED' if marker in got else 'not echoed'} |")
        got, took = exchange(port, b"GET /metrics\r\n")
        print(f"| HTTP/0.9 line | {got[:12]!r}..., closed after {took:.2f} s |")
        server = [line for line in get_headers(port) if line.lower().startswith("server:")]
        print(f"| Server header | {server} |")
        print(f"| after the attacks | {figures(pid)} |")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return 0


def get_headers(port: int) -> list[str]:
    got, _ = exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    return got.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")


if __name__ == "__main__":
    raise SystemExit(main())
