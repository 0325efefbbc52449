"""Benchmark the exporter as a user runs it: scrape latency, collection cost, memory.

Run from the repository root (it re-runs itself under ./.venv when the dependencies are missing):

    python3 benchmarks/bench_collect.py [--quick]

Each configuration starts a real ``python -m exporter --interval 1 --window 60`` process with the
fake pynvml of tests/fakes (H100 specs; each GPU read sleeps ``--nvml-delay``, 50 us by default, about
one real NVML driver call) and reads fake vLLM engines that run in separate processes (so their CPU is
not counted), each serving the real vLLM 0.32 capture tests/fixtures/engines/vllm-0.32.0-real-a.txt
(~54 KB) with --traffic (counters and histograms advance every second).

Per configuration, after a warm-up of 5 collection cycles:

- collection: ``infermeter_collector_duration_seconds`` read once per cycle, the max over collectors
  (they run concurrently, so the max is the cycle's wall time) averaged over the cycles seen;
- idle CPU: utime+stime of the exporter process (/proc/PID/stat) over a period with no scrape at all,
  divided by the number of cycles in it (from ``infermeter_last_collect_timestamp_seconds``);
- scrapes: sequential GET /metrics (http.client, one client) and the same with 8 concurrent threads:
  latency p50/p99/max, and the exporter's CPU per scrape (CPU over the burst minus the idle rate);
- VmRSS of the exporter after the run; the /metrics body size and number of samples.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"
INTERVAL, WINDOW = 1.0, 60.0
THREADS = 8
REAL_H100_NVML_MS = 10.7  # one full NVML collection of 1 GPU, measured on a real H100 (benchmarks/gpu_check.py)
CONFIGS = ((1, 1), (8, 1), (1, 4), (8, 4))  # (GPUs, engines)

_DURATION_RE = re.compile(r'^infermeter_collector_duration_seconds\{collector="([^"]*)"\} (\S+)$', re.M)
_TIMESTAMP_RE = re.compile(r"^infermeter_last_collect_timestamp_seconds (\S+)$", re.M)
_UP_RE = re.compile(r"^infermeter_collector_success\{collector=\"([^\"]*)\"\} (\S+)$", re.M)


def _ensure_environment() -> None:
    """Re-run under the project's virtual environment when this interpreter lacks the dependencies."""
    try:
        import apscheduler  # noqa: F401
        import prometheus_client  # noqa: F401
        import requests  # noqa: F401
    except ImportError:
        venv = ROOT / ".venv" / "bin" / "python"
        if venv.exists() and not os.environ.get("INFERMETER_BENCH_REEXEC"):
            os.environ["INFERMETER_BENCH_REEXEC"] = "1"
            os.execv(str(venv), [str(venv), *sys.argv])
        raise SystemExit("bench_collect: needs the project's dependencies (pip install -e .) or ./.venv") from None


@dataclass(frozen=True)
class Plan:
    warmup_cycles: int
    sample_seconds: float  # polling /metrics to read the per-cycle collector durations
    idle_seconds: float  # no scrape at all: CPU per collection cycle
    sequential: int  # sequential scrapes
    concurrent: int  # scrapes over THREADS threads


FULL = Plan(warmup_cycles=5, sample_seconds=6.0, idle_seconds=10.0, sequential=500, concurrent=800)
QUICK = Plan(warmup_cycles=1, sample_seconds=1.2, idle_seconds=1.2, sequential=30, concurrent=48)


@dataclass
class Result:
    gpus: int
    engines: int
    body_bytes: int = 0
    samples: int = 0
    seq: list[float] = field(default_factory=list)
    conc: list[float] = field(default_factory=list)
    collect_max: list[float] = field(default_factory=list)
    collect_nvml: list[float] = field(default_factory=list)
    cpu_per_cycle: float = 0.0
    cycles: int = 0
    cpu_per_scrape_seq: float = 0.0
    cpu_per_scrape_conc: float = 0.0
    rss_bytes: int = 0
    connection: str = ""
    listen_overflows: int | None = None  # TcpExt ListenOverflows during the 8-thread burst (None: unknown)

    @property
    def name(self) -> str:
        return f"{self.gpus} GPU{'s' if self.gpus > 1 else ''} x {self.engines} engine{'s' if self.engines > 1 else ''}"


# ---------------------------------------------------------------------------------------------- helpers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class Scraper:
    """GET /metrics with http.client, reusing the connection while the server keeps it open."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = 0
        self.requests = 0

    def get(self, path: str = "/metrics") -> bytes:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.reconnects += 1
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = response.read()
        self.requests += 1
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        if response.will_close:
            self.conn.close()
            self.conn = None
        return body

    def timed(self) -> float:
        start = time.perf_counter()
        self.get()
        return time.perf_counter() - start

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def describe(self) -> str:
        if self.reconnects >= self.requests:
            return "http.client, a new TCP connection per request (the server answers HTTP/1.0 and closes)"
        return "http.client keep-alive (one connection per client thread)"


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full (this network namespace)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split(), values.split(), strict=False))
            return int(row["ListenOverflows"]) if "ListenOverflows" in row else None
    return None


def last_timestamp(body: str) -> float | None:
    m = _TIMESTAMP_RE.search(body)
    return float(m.group(1)) if m else None


def count_samples(body: str) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                response.read()
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------- phases


def sample_cycles(scraper: Scraper, seconds: float, result: Result) -> None:
    """Poll /metrics 5 times a second; record each new cycle's collector durations."""
    seen: set[float] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = scraper.get().decode()
        ts = last_timestamp(body)
        if ts is not None and ts not in seen:  # every cycle seen here ran after the warm-up
            seen.add(ts)
            durations = {name: float(v) for name, v in _DURATION_RE.findall(body)}
            if durations:
                result.collect_max.append(max(durations.values()))
                if "nvml" in durations:
                    result.collect_nvml.append(durations["nvml"])
        time.sleep(0.2)


def idle_cpu(pid: int, scraper: Scraper, seconds: float) -> tuple[float, float, int]:
    """(CPU seconds per second, CPU seconds per cycle, cycles) over ``seconds`` with no scrape."""
    ts0 = last_timestamp(scraper.get().decode())
    scraper.close()
    t0, c0 = time.perf_counter(), cpu_seconds(pid)
    time.sleep(seconds)
    t1, c1 = time.perf_counter(), cpu_seconds(pid)
    ts1 = last_timestamp(scraper.get().decode())
    cycles = round((ts1 - ts0) / INTERVAL) if ts0 is not None and ts1 is not None else 0
    cycles = cycles or round((t1 - t0) / INTERVAL)
    cpu = c1 - c0
    return cpu / (t1 - t0), cpu / max(cycles, 1), cycles


def sequential(pid: int, port: int, n: int, idle_rate: float) -> tuple[list[float], float, str]:
    scraper = Scraper(port)
    t0, c0 = time.perf_counter(), cpu_seconds(pid)
    latencies = [scraper.timed() for _ in range(n)]
    t1, c1 = time.perf_counter(), cpu_seconds(pid)
    scraper.close()
    per_scrape = max(0.0, (c1 - c0) - idle_rate * (t1 - t0)) / n
    return latencies, per_scrape, scraper.describe()


def concurrent(pid: int, port: int, n: int, idle_rate: float) -> tuple[list[float], float, int | None]:
    per_thread = max(1, n // THREADS)
    latencies: list[list[float]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS + 1)

    def worker(i: int) -> None:
        scraper = Scraper(port)
        try:
            barrier.wait()
            latencies[i].extend(scraper.timed() for _ in range(per_thread))
        except BaseException as err:
            errors.append(err)
        finally:
            scraper.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    o0 = listen_overflows()
    barrier.wait()
    t0, c0 = time.perf_counter(), cpu_seconds(pid)
    for t in threads:
        t.join()
    t1, c1 = time.perf_counter(), cpu_seconds(pid)
    o1 = listen_overflows()
    if errors:
        raise errors[0]
    flat = [x for lst in latencies for x in lst]
    per_scrape = max(0.0, (c1 - c0) - idle_rate * (t1 - t0)) / len(flat)
    return flat, per_scrape, (o1 - o0 if o0 is not None and o1 is not None else None)


# ---------------------------------------------------------------------------------------------- driver


def run_config(gpus: int, engine_urls: list[str], plan: Plan, tmp: Path, nvml_delay: float) -> Result:
    from tests.fakes.nvml_specs import h100_node
    from tests.process import ExporterProcess

    result = Result(gpus, len(engine_urls))
    spec = h100_node(gpus)
    for gpu in spec["gpus"]:
        gpu["delay_seconds"] = nvml_delay
    args = ["--interval", f"{INTERVAL:g}", "--window", f"{WINDOW:g}", "--log-level", "warning"]
    for i, url in enumerate(engine_urls):
        args += ["--engine", f"e{i}={url}"]
    exporter = ExporterProcess(args, tmp, nvml_spec=spec)
    try:
        exporter.wait_ready()
        pid = exporter.proc.pid
        time.sleep(plan.warmup_cycles * INTERVAL)
        scraper = Scraper(exporter.port)
        body = scraper.get().decode()
        failing = [name for name, v in _UP_RE.findall(body) if float(v) != 1]
        expected = {"nvml", *(f"engine/e{i}" for i in range(len(engine_urls)))}
        if failing or not expected <= {name for name, _ in _UP_RE.findall(body)}:
            raise RuntimeError(f"collectors failing after warm-up: {failing or 'missing'}\n{exporter.log()}")
        sample_cycles(scraper, plan.sample_seconds, result)
        idle_rate, result.cpu_per_cycle, result.cycles = idle_cpu(pid, scraper, plan.idle_seconds)
        result.seq, result.cpu_per_scrape_seq, result.connection = sequential(
            pid, exporter.port, plan.sequential, idle_rate)
        result.conc, result.cpu_per_scrape_conc, result.listen_overflows = concurrent(
            pid, exporter.port, plan.concurrent, idle_rate)
        body = scraper.get().decode()
        scraper.close()
        result.body_bytes, result.samples = len(body.encode()), count_samples(body)
        result.rss_bytes = rss_bytes(pid)
        if exporter.proc.poll() is not None:
            raise RuntimeError(f"exporter died:\n{exporter.log()}")
    finally:
        exporter.stop()
    return result


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"nproc {cpus}, CPU {model}, Python {platform.python_version()} ({platform.python_implementation()}), "
            f"{platform.system()} {platform.release()}")


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def table(results: list[Result]) -> str:
    ms = 1000.0
    head = ("| configuration | /metrics body | samples | scrape p50 / p99 / max (sequential) "
            "| scrape p50 / p99 / max (8 threads) | listen-queue overflows (8 threads) "
            "| collection cycle (max collector) | NVML collector | CPU per cycle "
            "| CPU per scrape (seq / 8 thr) | RSS |")
    rows = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        rows.append(
            f"| {r.name} | {r.body_bytes / 1024:.1f} KiB | {r.samples} "
            f"| {percentile(r.seq, 50) * ms:.2f} / {percentile(r.seq, 99) * ms:.2f} / {max(r.seq) * ms:.2f} ms "
            f"| {percentile(r.conc, 50) * ms:.2f} / {percentile(r.conc, 99) * ms:.2f} / {max(r.conc) * ms:.2f} ms "
            f"| {'?' if r.listen_overflows is None else r.listen_overflows} "
            f"| {mean(r.collect_max) * ms:.1f} ms "
            f"| {mean(r.collect_nvml) * ms:.2f} ms "
            f"| {r.cpu_per_cycle * ms:.1f} ms "
            f"| {r.cpu_per_scrape_seq * ms:.2f} / {r.cpu_per_scrape_conc * ms:.2f} ms "
            f"| {r.rss_bytes / 2**20:.1f} MiB |")
    return "\n".join(rows)


def profile_engine_read(url: str, reads: int, top: int = 15) -> str:
    """cProfile ``reads`` calls of EngineSource.read() (this process) against a fake engine (another process)."""
    import cProfile
    import io
    import pstats

    from exporter.config import EngineTarget
    from exporter.sources import http
    from exporter.sources.engine import ACCEPT_TEXT, EngineSource
    from exporter.sources.engines import detect
    from exporter.sources.exposition import parse

    source = EngineSource(EngineTarget("bench", url), timeout=5.0, max_body_bytes=16 * 2**20)
    source.read()  # warm-up: connection, identity
    text = http.get(source._session, url + "/metrics", time.monotonic() + 5, 16 * 2**20, ACCEPT_TEXT).body.decode()

    def per_call(fn: Callable[[], object], clock: Callable[[], float]) -> float:
        """Median over 5 rounds of the mean time of one call (rounds of ``reads`` // 5 calls)."""
        n = max(1, reads // 5)
        rounds = []
        for _ in range(5):
            t0 = clock()
            for _ in range(n):
                fn()
            rounds.append((clock() - t0) / n)
        return statistics.median(rounds)

    wall_read = per_call(source.read, time.perf_counter)
    cpu_read = per_call(source.read, time.process_time)
    wanted = detect(text).families
    cpu_parse = per_call(lambda: parse(text, wanted), time.process_time)
    cpu_parse_all = per_call(lambda: parse(text), time.process_time)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(reads):
        source.read()
    profiler.disable()
    wall = (time.perf_counter() - start) / reads
    out = io.StringIO()
    out.write(f"/metrics body: {len(text.encode())} bytes, {count_samples(text)} samples\n")
    out.write(f"EngineSource.read() without profiler: {wall_read * 1000:.1f} ms wall, {cpu_read * 1000:.1f} ms CPU "
              f"per read; exposition.parse() of the families the adapter reads: {cpu_parse * 1000:.1f} ms CPU "
              f"({cpu_parse / cpu_read:.0%} of a read); of the whole body: {cpu_parse_all * 1000:.1f} ms CPU\n")
    out.write(f"EngineSource.read() x {reads} under cProfile: {wall * 1000:.1f} ms per read\n")
    for order in ("tottime", "cumulative"):
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run (< 30 s): few cycles and scrapes")
    ap.add_argument("--nvml-delay", type=float, default=50e-6,
                    help="seconds the fake NVML sleeps per GPU read (default 50e-6, about one driver call)")
    ap.add_argument("--profile", action="store_true",
                    help="instead: cProfile EngineSource.read() against one fake engine and print the top items")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    sys.path.insert(0, str(ROOT))
    from tests.process import free_port

    started = time.monotonic()
    n_engines = 1 if args.profile else max(e for _, e in CONFIGS)
    engines: list[subprocess.Popen[bytes]] = []
    results: list[Result] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        urls = []
        for i in range(n_engines):
            port = free_port()
            engines.append(subprocess.Popen(
                [sys.executable, "-m", "tests.fakes.engine", "--fixture", str(FIXTURE), "--port", str(port),
                 "--traffic", "--seed", str(i)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(urls, engines, strict=True):
            wait_http(url + "/metrics", 20, proc)
        if args.profile:
            print(f"Machine: {machine()}\n")
            print(profile_engine_read(urls[0], reads=20 if args.quick else 100))
            return 0
        with tempfile.TemporaryDirectory(prefix="infermeter-bench-") as tmp:
            for gpus, n in CONFIGS:
                print(f"running {gpus} GPU(s) x {n} engine(s) ...", file=sys.stderr, flush=True)
                results.append(run_config(gpus, urls[:n], plan, Path(tmp), args.nvml_delay))
    finally:
        for proc in engines:
            if proc.poll() is None:
                proc.terminate()
        for proc in engines:
            stop(proc)

    print(f"# infermeter collection benchmark{' (--quick)' if args.quick else ''}\n")
    print(f"Machine: {machine()}\n")
    print(f"Exporter: python -m exporter --interval {INTERVAL:g} --window {WINDOW:g}; fake NVML "
          f"(H100 specs, {args.nvml_delay * 1e6:g} us per GPU read); fake vLLM engines in separate processes "
          f"serving {FIXTURE.relative_to(ROOT)} ({FIXTURE.stat().st_size} bytes) with --traffic.")
    print(f"Scrapes: {plan.sequential} sequential, {plan.concurrent // THREADS * THREADS} over {THREADS} threads; "
          f"client: {results[0].connection}. Idle CPU over {plan.idle_seconds:g} s without scrapes "
          f"({results[-1].cycles} cycles in the last configuration).\n")
    print(table(results))
    print(f"\nNote: the fake NVML answers in microseconds; on a real H100 a full NVML collection of 1 GPU "
          f"took ~{REAL_H100_NVML_MS} ms (real calls cost ~10-100 us each).")
    print(f"\nTotal {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    _ensure_environment()
    raise SystemExit(main())
