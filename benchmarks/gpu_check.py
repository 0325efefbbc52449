"""Check infermeter's GPU metrics against nvidia-smi on a real GPU, under a real PyTorch load.

Run on a machine with an NVIDIA GPU, PyTorch and this repository's dependencies:

    python3 benchmarks/gpu_check.py [--out report.md] [--seconds 60]

It starts a bf16 matrix-multiply load on GPU 0, a fake vLLM engine (tests/fakes/engine.py) so that
the engine-to-GPU attribution has something to attribute, and the exporter with --interval 1;
then it reads /metrics and `nvidia-smi --query-gpu` at the same moments and prints a table of
both, plus the exporter's scrape latency and NVML collection time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PORT, ENGINE_PORT = 19416, 18011

# nvidia-smi field -> (infermeter metric, factor from the exporter's base unit to nvidia-smi's unit)
FIELDS = {
    "utilization.gpu": ("infermeter_gpu_utilization_ratio", 100.0),
    "utilization.memory": ("infermeter_gpu_memory_bandwidth_utilization_ratio", 100.0),
    "memory.used": ("infermeter_gpu_memory_used_bytes", 1 / 2**20),
    "memory.total": ("infermeter_gpu_memory_total_bytes", 1 / 2**20),
    "power.draw": ("infermeter_gpu_power_watts", 1.0),
    "enforced.power.limit": ("infermeter_gpu_power_limit_watts", 1.0),
    "temperature.gpu": ("infermeter_gpu_temperature_celsius", 1.0),
    "clocks.sm": ("infermeter_gpu_sm_clock_hertz", 1e-6),
}
LOAD = """
import sys, time, torch
end = time.time() + float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
hold = torch.empty(int(20e9), dtype=torch.uint8, device="cuda")  # 20 GB resident, visible per process
while time.time() < end:
    for _ in range(50):
        c = a @ b
    torch.cuda.synchronize()
"""


def scrape() -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], float]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=5) as response:
        body = response.read().decode()
    elapsed = time.perf_counter() - started
    values = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            values[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return values, elapsed


def metric(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric_name: str, /,
           **labels: str) -> float | None:
    for (n, got), v in values.items():
        if n == metric_name and all(dict(got).get(k) == want for k, want in labels.items()):
            return v
    return None


def smi() -> list[dict[str, str]]:
    keys = ["index", "uuid", "name", "driver_version", *FIELDS]
    out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(keys)}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return [dict(zip(keys, (c.strip() for c in line.split(",")), strict=True)) for line in out.strip().splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--out", default=os.environ.get("OUT", ".") + "/gpu_check.md")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", LOAD, str(args.seconds + 30)], env=env),
        subprocess.Popen([sys.executable, "-m", "tests.fakes.engine", "--fixture",
                          str(ROOT / "tests/fixtures/engines/vllm-0.32.0-real-a.txt"), "--port", str(ENGINE_PORT),
                          "--traffic"], env=env, cwd=ROOT),
    ]
    log = open(Path(args.out).with_suffix(".exporter.log"), "w")  # noqa: SIM115 - closed below
    procs.append(subprocess.Popen([sys.executable, "-m", "exporter", "--listen", f"127.0.0.1:{PORT}",
                                   "--interval", "1", "--window", "30",
                                   "--engine", f"vllm=http://127.0.0.1:{ENGINE_PORT}"],
                                  env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    lines: list[str] = []
    try:
        time.sleep(20)  # the load ramps up, the window fills
        rounds = []
        for _ in range(3):
            values, _ = scrape()
            rounds.append((values, smi()))
            time.sleep(1.1)
        lines += ["| GPU | field | nvidia-smi | infermeter | infermeter in nvidia-smi units |", "|---|---|---|---|---|"]
        for values, gpus in rounds:
            for gpu in gpus:
                for field, (name, factor) in FIELDS.items():
                    mine = metric(values, name, gpu=gpu["index"])
                    shown = "absent" if mine is None else f"{mine:g}"
                    converted = "" if mine is None else f"{mine * factor:.1f}"
                    lines.append(f"| {gpu['index']} | {field} | {gpu[field]} | {shown} | {converted} |")
                info = metric(values, "infermeter_gpu_info", gpu=gpu["index"], uuid=gpu["uuid"], name=gpu["name"],
                              driver_version=gpu["driver_version"])
                lines.append(f"| {gpu['index']} | uuid/name/driver (info labels match) | {gpu['uuid']} | "
                             f"{'match' if info == 1 else 'MISMATCH'} | |")
            lines.append("| | | | | |")
        # energy counter against integrated power
        e0, t0 = metric(scrape()[0], "infermeter_gpu_energy_joules_total", gpu="0"), time.time()
        powers = []
        for _ in range(10):
            time.sleep(1)
            powers.append(metric(scrape()[0], "infermeter_gpu_power_watts", gpu="0") or 0.0)
        e1, t1 = metric(scrape()[0], "infermeter_gpu_energy_joules_total", gpu="0"), time.time()
        if e0 is not None and e1 is not None:
            lines.append(f"\nEnergy counter: {e1 - e0:.1f} J over {t1 - t0:.1f} s = {(e1 - e0) / (t1 - t0):.1f} W "
                         f"mean; sampled power gauge mean {statistics.mean(powers):.1f} W.")
        values, _ = scrape()
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True).stdout.strip()
        lines.append(f"\nnvidia-smi compute apps (pid, MiB): {apps or 'none listed'}")
        engine_mem = metric(values, "infermeter_engine_gpu_memory_used_bytes", engine="vllm")
        lines.append(f"infermeter_engine_gpu_memory_used_bytes{{engine=vllm}}: "
                     f"{'absent' if engine_mem is None else f'{engine_mem / 2**20:.0f} MiB'}")
        latencies = [scrape()[1] for _ in range(200)]
        latencies.sort()
        nvml = metric(values, "infermeter_collector_duration_seconds", collector="nvml")
        lines.append(f"\nScrape latency over 200 sequential scrapes: p50 {latencies[100] * 1e3:.2f} ms, "
                     f"p99 {latencies[197] * 1e3:.2f} ms. "
                     f"NVML collection: {nvml * 1e3 if nvml else float('nan'):.2f} ms.")
        for key in ("infermeter_engine_up", "infermeter_generation_tokens_per_second",
                    "infermeter_collector_success"):
            lines.append(f"{key}: " + ", ".join(f"{dict(lbl)}={v:g}" for (n, lbl), v in values.items() if n == key))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    report = "\n".join(lines) + "\n"
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
