"""Benchmark the exporter as a user runs it: scrape latency, collection cost, memory; beside a peer.

Run from the repository root (it re-runs itself under ./.venv when the dependencies are missing):

    python3 benchmarks/bench_collect.py [--quick] [--peer auto|off] [--profile]

The matrix: 1 and 8 GPUs x 1 and 8 engines. Each configuration starts a real
``python -m exporter --interval 1 --window 60`` process with the fake pynvml of tests/fakes (H100 SXM
specs; every NVML call sleeps ``--nvml-delay``, 50 us by default, about one real driver call) and
reads fake vLLM engines that run in separate processes (so their CPU is not counted), each serving the
real vLLM 0.32 capture tests/fixtures/engines/vllm-0.32.0-real-a.txt (~54 KB) with --traffic
(counters and histograms advance every second).

The peer: nvitop-exporter (PyPI, pinned to the version whose source the fake was written against),
installed on first use into its own virtual environment under build/bench/, run on the same fake
NVML with the same GPUs and the same ``--interval 1``, and measured the same way. It exports GPUs
(and host metrics) only, so it is compared with infermeter without engines (GPUs only), at 1 and 8
GPUs. Without network (or with ``--peer off``) its rows are skipped, with the reason printed.

Per exporter process, after a warm-up of 5 collection cycles:

- collection (infermeter): ``infermeter_collector_duration_seconds`` read once per cycle, the max over
  collectors (they run concurrently, so the max is the cycle's wall time) averaged over the cycles seen;
- idle CPU: utime+stime of the exporter process (/proc/PID/stat) over a period with no scrape at all,
  divided by the number of cycles in it;
- scrapes: sequential GET /metrics (http.client, one client) and the same with 8 concurrent threads:
  latency p50/p99/max, and the exporter's CPU per scrape (CPU over the burst minus the idle rate);
- VmRSS of the exporter after the run; the /metrics body size and number of samples;
- GPUs-only rows: benchmarks/nvml_probe.py times each exporter's GPU read in-process (wall, CPU) and
  counts its NVML calls per cycle.
"""

from __future__ import annotations

import argparse
import http.client
import json
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
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.host import cpu_seconds, ensure_venv, rss_bytes  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"
FAKE_PYNVML = ROOT / "tests" / "fakes" / "pynvml_fake"
PROBE = ROOT / "benchmarks" / "nvml_probe.py"
INTERVAL, WINDOW = 1.0, 60.0
THREADS = 8
PROMETHEUS_SCRAPE_INTERVAL = 15.0  # Prometheus' default scrape_interval, for the "CPU per second" row
REAL_H100_NVML_MS = 10.7  # one full NVML collection of 1 GPU, measured on a real H100 (benchmarks/gpu_check.py)
CONFIGS = ((1, 1), (8, 1), (1, 8), (8, 8))  # (GPUs, engines)
# The peer: the version whose source (nvitop_exporter/exporter.py, nvitop/api/libnvml.py, device.py) the
# fake pynvml answers; installed on demand into its own virtual environment (build/ is git-ignored).
PEER = "nvitop-exporter"
PEER_VERSION = "1.7.2"
PEER_VENV = ROOT / "build" / "bench" / f"{PEER}-{PEER_VERSION}"

_DURATION_RE = re.compile(r'^infermeter_collector_duration_seconds\{collector="([^"]*)"\} (\S+)$', re.M)
_TIMESTAMP_RE = re.compile(r"^infermeter_last_collect_timestamp_seconds (\S+)$", re.M)
_UP_RE = re.compile(r"^infermeter_collector_success\{collector=\"([^\"]*)\"\} (\S+)$", re.M)
_PEER_GPU_RE = re.compile(r"^gpu_utilization_Percentage\{", re.M)


@dataclass(frozen=True)
class Plan:
    warmup_cycles: int
    sample_seconds: float  # polling /metrics to read the per-cycle collector durations
    idle_seconds: float  # no scrape at all: CPU per collection cycle
    sequential: int  # sequential scrapes
    concurrent: int  # scrapes over THREADS threads
    peer_gpus: tuple[int, ...]  # GPU counts of the GPUs-only comparison with the peer
    probe_cycles: int  # in-process GPU reads timed by benchmarks/nvml_probe.py


FULL = Plan(warmup_cycles=5, sample_seconds=6.0, idle_seconds=15.0, sequential=500, concurrent=800,
            peer_gpus=(1, 8), probe_cycles=30)
QUICK = Plan(warmup_cycles=1, sample_seconds=1.2, idle_seconds=1.2, sequential=30, concurrent=48,
             peer_gpus=(8,), probe_cycles=5)


@dataclass
class Result:
    gpus: int
    engines: int
    exporter: str = "infermeter"
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
    probe: dict[str, Any] | None = None  # benchmarks/nvml_probe.py's answer (GPUs-only rows)

    @property
    def name(self) -> str:
        gpus = f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"
        if self.engines == 0:
            return f"{gpus}, no engine"
        return f"{gpus} x {self.engines} engine{'s' if self.engines > 1 else ''}"


# ---------------------------------------------------------------------------------------------- helpers


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
    from tests.process import stop_process

    stop_process(proc)


def nvml_spec(gpus: int, delay: float, pids: list[int]) -> dict[str, Any]:
    """H100 SXMs whose every NVML call costs ``delay``; GPU i runs process pids[i % len(pids)]."""
    from tests.fakes.nvml_specs import h100_bench_node

    return h100_bench_node(gpus, delay, pids)


def measured_sleep(delay: float, n: int = 200) -> float:
    """What time.sleep(delay) really takes here (timer slack makes it longer): the fake NVML's call cost."""
    start = time.perf_counter()
    for _ in range(n):
        time.sleep(delay)
    return (time.perf_counter() - start) / n


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
    """(CPU seconds per second, CPU seconds per cycle, cycles) over ``seconds`` with no scrape.

    Cycles come from infermeter_last_collect_timestamp_seconds where the exporter serves it, else
    from the elapsed time at one cycle per INTERVAL.
    """
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


def measure(result: Result, pid: int, port: int, plan: Plan) -> None:
    """The phases every exporter gets: idle CPU, sequential and concurrent scrapes, body, RSS."""
    scraper = Scraper(port)
    idle_rate, result.cpu_per_cycle, result.cycles = idle_cpu(pid, scraper, plan.idle_seconds)
    result.seq, result.cpu_per_scrape_seq, result.connection = sequential(pid, port, plan.sequential, idle_rate)
    result.conc, result.cpu_per_scrape_conc, result.listen_overflows = concurrent(
        pid, port, plan.concurrent, idle_rate)
    body = scraper.get().decode()
    scraper.close()
    result.body_bytes, result.samples = len(body.encode()), count_samples(body)
    result.rss_bytes = rss_bytes(pid)


def run_probe(python: Path, target: str, spec_file: Path, cycles: int) -> dict[str, Any]:
    """benchmarks/nvml_probe.py under ``python``: the GPU read of one cycle, in-process."""
    path = [str(FAKE_PYNVML)] + ([str(ROOT)] if target == "infermeter" else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "INFERMETER_FAKE_NVML": str(spec_file)}
    done = subprocess.run([str(python), str(PROBE), target, "--cycles", str(cycles)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nvml_probe {target} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


# ---------------------------------------------------------------------------------------------- exporters


def run_infermeter(gpus: int, engine_urls: list[str], plan: Plan, tmp: Path, spec: dict[str, Any]) -> Result:
    from tests.process import ExporterProcess

    result = Result(gpus, len(engine_urls))
    args = ["--interval", f"{INTERVAL:g}", "--window", f"{WINDOW:g}", "--log-level", "error"]
    for i, url in enumerate(engine_urls):
        args += ["--engine", f"e{i}={url}"]
    exporter = ExporterProcess(args, tmp, nvml_spec=spec)
    try:
        exporter.wait_ready()
        time.sleep(plan.warmup_cycles * INTERVAL)
        scraper = Scraper(exporter.port)
        body = scraper.get().decode()
        failing = [name for name, v in _UP_RE.findall(body) if float(v) != 1]
        expected = {"nvml", *(f"engine/e{i}" for i in range(len(engine_urls)))}
        if failing or not expected <= {name for name, _ in _UP_RE.findall(body)}:
            raise RuntimeError(f"collectors failing after warm-up: {failing or 'missing'}\n{exporter.log()}")
        sample_cycles(scraper, plan.sample_seconds, result)
        scraper.close()
        measure(result, exporter.proc.pid, exporter.port, plan)
        if exporter.proc.poll() is not None:
            raise RuntimeError(f"exporter died:\n{exporter.log()}")
    except (RuntimeError, OSError) as err:
        raise RuntimeError(f"infermeter, {result.name}: {err}\nexporter log:\n{exporter.log()[-4000:]}") from err
    finally:
        exporter.stop()
    return result


@dataclass(frozen=True)
class Peer:
    python: Path
    versions: str  # e.g. "nvitop-exporter 1.7.2, nvitop 1.7.2, prometheus-client 0.26.0, psutil 7.2.2"


def _peer_versions(python: Path) -> str | None:
    code = ("import importlib.metadata as m, nvitop_exporter; "
            "print(', '.join(n + ' ' + m.version(n) for n in "
            "('nvitop-exporter', 'nvitop', 'prometheus-client', 'psutil', 'nvidia-ml-py')))")
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_peer(mode: str) -> tuple[Peer | None, str]:
    """The peer's interpreter, installing it on first use; or None and why not."""
    if mode == "off":
        return None, "--peer off"
    python = PEER_VENV / "bin" / "python"
    versions = _peer_versions(python) if python.exists() else None
    if versions is None or f"{PEER} {PEER_VERSION}" not in versions:
        print(f"installing {PEER}=={PEER_VERSION} into {PEER_VENV.relative_to(ROOT)} ...", file=sys.stderr, flush=True)
        steps = ([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)],
                 [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
                  f"{PEER}=={PEER_VERSION}"])
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
            except (OSError, subprocess.TimeoutExpired) as err:
                return None, f"`{' '.join(step[:4])} ...` failed: {err}"
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                return None, f"`{' '.join(step[:4])} ...` failed ({done.returncode}): {last}"
        versions = _peer_versions(python)
        if versions is None:
            return None, f"{PEER} installed into {PEER_VENV} but does not import"
    return Peer(python, versions), ""


def run_peer(peer: Peer, gpus: int, plan: Plan, tmp: Path, spec_file: Path) -> Result:
    """nvitop-exporter on the fake NVML (PYTHONPATH shadows nvidia-ml-py's pynvml), --interval 1."""
    from tests.process import free_port

    result = Result(gpus, 0, exporter=PEER)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(FAKE_PYNVML), "INFERMETER_FAKE_NVML": str(spec_file),
           "PYTHONUNBUFFERED": "1"}
    log_path = tmp / f"{PEER}-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(peer.python), "-m", "nvitop_exporter", "--bind-address", "127.0.0.1", "--port", str(port),
             "--interval", f"{INTERVAL:g}", "--hostname", "bench"],
            cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/metrics", 30, proc)
        except RuntimeError as err:
            raise RuntimeError(f"{err}\n{log_path.read_text()[-2000:]}") from err
        time.sleep(plan.warmup_cycles * INTERVAL)
        scraper = Scraper(port)
        body = scraper.get().decode()
        scraper.close()
        if len(_PEER_GPU_RE.findall(body)) != gpus:
            raise RuntimeError(f"{PEER} does not export {gpus} GPUs:\n{log_path.read_text()[-2000:]}")
        measure(result, proc.pid, port, plan)
        if proc.poll() is not None:
            raise RuntimeError(f"{PEER} died:\n{log_path.read_text()[-2000:]}")
    finally:
        stop(proc)
    return result


# ---------------------------------------------------------------------------------------------- report


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


def infermeter_version() -> str:
    from exporter import __version__

    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip()
    except OSError:
        commit = ""
    libs = ", ".join(f"{n} {metadata.version(n)}" for n in ("prometheus-client", "requests"))
    return f"infermeter {__version__}{f' ({commit})' if commit else ''}, {libs}"


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


def _probe(part: str, key: str) -> Callable[[Result], float | None]:
    def get(r: Result) -> float | None:
        if r.probe is None or part not in r.probe[key]:
            return None
        return float(r.probe[key][part]) * 1000

    return get


def _nvml_calls(r: Result) -> float | None:
    return None if r.probe is None else float(sum(r.probe["nvml_calls"].values()))


# (row label, value in the unit of the label; None: not applicable, format)
PEER_ROWS: tuple[tuple[str, Callable[[Result], float | None], str], ...] = (
    ("/metrics body (KiB)", lambda r: r.body_bytes / 1024, "{:.1f}"),
    ("samples in /metrics", lambda r: r.samples, "{:.0f}"),
    ("scrape p50, sequential (ms)", lambda r: percentile(r.seq, 50) * 1000, "{:.2f}"),
    ("scrape p99, sequential (ms)", lambda r: percentile(r.seq, 99) * 1000, "{:.2f}"),
    ("scrape p50, 8 threads (ms)", lambda r: percentile(r.conc, 50) * 1000, "{:.2f}"),
    ("scrape p99, 8 threads (ms)", lambda r: percentile(r.conc, 99) * 1000, "{:.2f}"),
    ("scrape max, 8 threads (ms)", lambda r: max(r.conc) * 1000, "{:.1f}"),
    ("listen-queue overflows, 8 threads", lambda r: r.listen_overflows, "{:.0f}"),
    ("CPU per scrape, sequential (ms)", lambda r: r.cpu_per_scrape_seq * 1000, "{:.2f}"),
    ("CPU per scrape, 8 threads (ms)", lambda r: r.cpu_per_scrape_conc * 1000, "{:.2f}"),
    ("CPU per collection cycle, whole process, no scrapes (ms)", lambda r: r.cpu_per_cycle * 1000, "{:.1f}"),
    ("CPU per second: a cycle every 1 s + a scrape every 15 s (ms/s)",
     lambda r: (r.cpu_per_cycle / INTERVAL + r.cpu_per_scrape_seq / PROMETHEUS_SCRAPE_INTERVAL) * 1000, "{:.1f}"),
    ("GPU read per cycle, in-process: wall (ms)", _probe("gpus", "wall_s"), "{:.2f}"),
    ("GPU read per cycle, in-process: CPU (ms)", _probe("gpus", "cpu_s"), "{:.2f}"),
    ("host metrics per cycle, in-process: CPU (ms)", _probe("host", "cpu_s"), "{:.2f}"),
    ("NVML calls per cycle", _nvml_calls, "{:.0f}"),
    ("RSS (MiB)", lambda r: r.rss_bytes / 2**20, "{:.1f}"),
)


def peer_table(pairs: list[tuple[Result, Result | None]]) -> str:
    """Rows: metrics; per GPU count: infermeter (no engine), the peer, and infermeter / peer."""
    head = "| GPUs only, --interval 1 |" + "".join(
        f" {own.gpus} GPU{'s' if own.gpus > 1 else ''}: infermeter | {PEER} | ratio |" for own, _ in pairs)
    rows = [head, "|---|" + "---:|---:|---:|" * len(pairs)]
    for label, get, fmt in PEER_ROWS:
        cells = []
        for own, theirs in pairs:
            a, b = get(own), (get(theirs) if theirs is not None else None)
            ratio = f"{a / b:.2f}x" if a is not None and b else "-"
            cells += [fmt.format(a) if a is not None else "-", fmt.format(b) if b is not None else "-", ratio]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def calls_breakdown(r: Result) -> str:
    if r.probe is None:
        return "-"
    calls = r.probe["nvml_calls"]
    return ", ".join(f"{name.removeprefix('nvml')} {n / r.gpus:g}" for name, n in calls.items())


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


# ---------------------------------------------------------------------------------------------- driver


def run_peer_comparison(plan: Plan, tmp: Path, delay: float, pids: list[int], peer: Peer | None,
                        peer_note: str) -> tuple[list[tuple[Result, Result | None]], str]:
    """infermeter without engines and the peer, per GPU count, on the same fake NVML spec."""
    pairs: list[tuple[Result, Result | None]] = []
    for gpus in plan.peer_gpus:
        spec = nvml_spec(gpus, delay, pids)
        spec_file = tmp / f"nvml-peer-{gpus}.json"
        spec_file.write_text(json.dumps(spec))
        print(f"running {gpus} GPU(s), no engine: infermeter ...", file=sys.stderr, flush=True)
        own = run_infermeter(gpus, [], plan, tmp, spec)
        own.probe = run_probe(Path(sys.executable), "infermeter", spec_file, plan.probe_cycles)
        theirs = None
        if peer is not None:
            print(f"running {gpus} GPU(s): {PEER} ...", file=sys.stderr, flush=True)
            try:
                theirs = run_peer(peer, gpus, plan, tmp, spec_file)
                theirs.probe = run_probe(peer.python, "nvitop", spec_file, plan.probe_cycles)
            except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as err:
                peer, peer_note, theirs = None, f"{PEER} failed at {gpus} GPUs: {err}", None
        pairs.append((own, theirs))
    return pairs, peer_note


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a short smoke run (< 60 s on 2 cores): few cycles and scrapes; the peer at 8 GPUs only")
    ap.add_argument("--nvml-delay", type=float, default=50e-6,
                    help="seconds the fake NVML sleeps per NVML call (default 50e-6, about one driver call)")
    ap.add_argument("--peer", choices=("auto", "off"), default="auto",
                    help=f"auto: run {PEER} {PEER_VERSION} beside infermeter, installing it into "
                         f"{PEER_VENV.relative_to(ROOT)} on first use (needs PyPI); off: skip it")
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
    pairs: list[tuple[Result, Result | None]] = []
    peer: Peer | None = None
    peer_note = ""
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
        if not args.profile:
            peer, peer_note = ensure_peer(args.peer)  # while the engines start
        for url, proc in zip(urls, engines, strict=True):
            wait_http(url + "/metrics", 30, proc)
        if args.profile:
            print(f"Machine: {machine()}\n")
            print(profile_engine_read(urls[0], reads=20 if args.quick else 100))
            return 0
        pids = [proc.pid for proc in engines]  # the GPUs' processes (nvitop looks them up on the host)
        with tempfile.TemporaryDirectory(prefix="infermeter-bench-") as tmp:
            for gpus, n in CONFIGS:
                print(f"running {gpus} GPU(s) x {n} engine(s) ...", file=sys.stderr, flush=True)
                results.append(run_infermeter(gpus, urls[:n], plan, Path(tmp), nvml_spec(gpus, args.nvml_delay, pids)))
            pairs, peer_note = run_peer_comparison(plan, Path(tmp), args.nvml_delay, pids, peer, peer_note)
    finally:
        for proc in engines:
            if proc.poll() is None:
                proc.terminate()
        for proc in engines:
            stop(proc)

    command = " ".join(["python3", "benchmarks/bench_collect.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# infermeter collection benchmark{' (--quick)' if args.quick else ''}\n")
    print(f"Command: `{command}`; run {time.strftime('%Y-%m-%d %H:%M %Z')}.\n")
    print(f"Machine: {machine()}; 1-minute load average at the end {os.getloadavg()[0]:.2f}.\n")
    print(f"Versions: {infermeter_version()}; peer: {peer.versions if peer else 'none'}.\n")
    print(f"Exporter: python -m exporter --interval {INTERVAL:g} --window {WINDOW:g}; fake NVML "
          f"(H100 SXM specs; every NVML call sleeps {args.nvml_delay * 1e6:g} us, "
          f"{measured_sleep(args.nvml_delay) * 1e6:.0f} us measured here); fake vLLM engines in separate "
          f"processes serving {FIXTURE.relative_to(ROOT)} ({FIXTURE.stat().st_size} bytes) with --traffic.")
    print(f"Scrapes: {plan.sequential} sequential, {plan.concurrent // THREADS * THREADS} over {THREADS} threads; "
          f"client: {results[0].connection}. Idle CPU over {plan.idle_seconds:g} s without scrapes "
          f"({results[-1].cycles} cycles in the last configuration).\n")
    print(table(results))
    print(f"\nNote: the fake NVML's calls sleep (no CPU); on a real H100 a full NVML collection of 1 GPU "
          f"took ~{REAL_H100_NVML_MS} ms, partly kernel CPU in the driver.")
    print(f"\n## GPUs only: infermeter (no engine) and {PEER} on the same fake NVML\n")
    if peer_note:
        print(f"Peer skipped: {peer_note}\n")
    print(f"Ratio = infermeter / {PEER} (below 1: infermeter is cheaper or faster). Both collect on a "
          f"{INTERVAL:g} s interval and render the last collection on a scrape. In-process rows: "
          f"benchmarks/nvml_probe.py, {plan.probe_cycles} reads; {PEER}'s GPU read is update_device() for every "
          f"GPU, its host metrics (psutil) are update_host().\n")
    print(peer_table(pairs))
    for own, theirs in pairs[:1]:
        print(f"\nNVML calls per GPU per cycle ({own.gpus} GPU{'s' if own.gpus > 1 else ''}): "
              f"infermeter: {calls_breakdown(own)}.")
        if theirs is not None:
            print(f"{PEER}: {calls_breakdown(theirs)}.")
    print(f"\nTotal {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    ensure_venv(("apscheduler", "prometheus_client", "requests"), "bench_collect")
    raise SystemExit(main())
