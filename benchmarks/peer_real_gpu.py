"""infermeter beside nvitop-exporter on a real GPU: the GPU part of both, against the real NVML driver.

Run on a GPU machine from the repository root (it uses only the standard library, the project's
dependencies and, for the peer, nvitop-exporter 1.7.2 and nvitop importable from ``--peer-path``):

    python3 benchmarks/peer_real_gpu.py --out results.json [--peer-path /tmp/site] [--load]

For each exporter in turn (never both at once), at ``--interval 1`` and with no engine configured:
start it, wait for its first collection, then measure

- CPU per second while nobody scrapes (utime + stime from /proc over ``--idle`` seconds): the
  cost of collecting, since both collect on their interval, not per scrape;
- ``--scrapes`` sequential scrapes: latency p50 / p99 / max, and the body size and sample count;
- RSS (VmRSS) at the end.

``--load`` runs a bf16 matmul loop on every GPU with PyTorch meanwhile, so utilisation, power and
clocks move as under real work. The figures go to ``--out`` (JSON) and a markdown table to stdout;
docs/performance.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scrape(url: str) -> tuple[float, bytes]:
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    return time.perf_counter() - began, body


def wait_until_serving(url: str, marker: bytes, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the exporter exited with {proc.returncode}")
        try:
            if marker in scrape(url)[1]:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}: no {marker!r} after {timeout}s")


def measure(name: str, command: list[str], url: str, marker: bytes, env: dict[str, str], idle: float,
            scrapes: int) -> dict[str, Any]:
    log = open(f"/tmp/{name}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(url, marker, proc)
        time.sleep(5)  # a few collections pass
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(idle)
        idle_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        latencies, body = [], b""
        cpu1 = cpu_seconds(proc.pid)
        t1 = time.monotonic()
        for _ in range(scrapes):
            took, body = scrape(url)
            latencies.append(took)
        burst = time.monotonic() - t1
        scrape_cpu = (cpu_seconds(proc.pid) - cpu1 - idle_cpu * burst) / scrapes
        latencies.sort()
        samples = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
        return {
            "exporter": name, "cpu_seconds_per_second_idle": idle_cpu,
            "scrape_p50_ms": 1000 * statistics.median(latencies),
            "scrape_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "scrape_max_ms": 1000 * latencies[-1], "cpu_ms_per_scrape": 1000 * scrape_cpu,
            "body_bytes": len(body), "samples": len(samples),
            "gpu_samples": len([s for s in samples if "gpu" in s.split("{")[0].lower()]),
            "rss_mib": rss_bytes(proc.pid) / 2**20,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def load_gpus() -> subprocess.Popen[bytes]:
    code = (
        "import torch, time\n"
        "xs = []\n"
        "for i in range(torch.cuda.device_count()):\n"
        "    a = torch.randn(8192, 8192, device=f'cuda:{i}', dtype=torch.bfloat16)\n"
        "    xs.append((a, a.clone()))\n"
        "while True:\n"
        "    for a, b in xs:\n"
        "        torch.matmul(a, b)\n"
        "    torch.cuda.synchronize()\n"
        "    time.sleep(0.002)\n")
    return subprocess.Popen([sys.executable, "-c", code])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--peer-path", default="", help="PYTHONPATH entry holding nvitop and nvitop_exporter")
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--load", action="store_true")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), args.peer_path) if p)}
    loader = load_gpus() if args.load else None
    results = []
    try:
        if loader is not None:
            time.sleep(8)  # CUDA context up, GPUs busy
        port = free_port()
        results.append(measure("infermeter", [sys.executable, "-m", "exporter", "--interval", "1", "--listen",
                                              f"127.0.0.1:{port}"],
                               f"http://127.0.0.1:{port}/metrics", b"infermeter_gpu_power_watts", env,
                               args.idle, args.scrapes))
        port = free_port()
        results.append(measure("nvitop-exporter", [sys.executable, "-m", "nvitop_exporter", "--bind-address",
                                                   "127.0.0.1", "--port", str(port), "--interval", "1"],
                               f"http://127.0.0.1:{port}/metrics", b"gpu_power_usage", env, args.idle, args.scrapes))
    finally:
        if loader is not None:
            loader.terminate()
            loader.wait(10)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        smi = "no nvidia-smi (fake NVML?)"
    report = {"gpus": smi, "python": platform.python_version(), "cpus": os.cpu_count(), "load": args.load,
              "date": time.strftime("%Y-%m-%d"), "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2))
    keys = ["cpu_seconds_per_second_idle", "scrape_p50_ms", "scrape_p99_ms", "scrape_max_ms", "cpu_ms_per_scrape",
            "body_bytes", "samples", "rss_mib"]
    print("| exporter | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for r in results:
        print(f"| {r['exporter']} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
    if len(results) == 2:
        ours, peer = results
        print("| ratio infermeter / nvitop-exporter | " + " | ".join(
            f"{ours[k] / peer[k]:.2f}" if peer[k] else "n/a" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
