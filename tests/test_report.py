"""``infermeter report`` against a running exporter, and against a real Prometheus that scrapes one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.report import group, render
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node
from tests.process import ROOT, ExporterProcess, free_port, value, wait_for
from tests.prometheus_server import prometheus_scraping

FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"
LLAMA_8B = ROOT / "exporter" / "facts" / "models" / "meta-llama--Llama-3.1-8B.json"


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", "report", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_render_from_samples() -> None:
    p = "infermeter_"
    engine = {"engine": "llama", "kind": "vllm", "model": "meta-llama/Llama-3.1-8B-Instruct"}
    samples = [
        (p + "gpu_info", {"gpu": "0", "uuid": "GPU-0", "name": "NVIDIA H100 80GB HBM3", "driver_version": "580"}, 1.0),
        (p + "gpu_info", {"gpu": "1", "uuid": "GPU-1", "name": "NVIDIA H100 80GB HBM3", "driver_version": "580"}, 1.0),
        (p + "engine_gpu_info", {"engine": "llama", "gpu": "0", "uuid": "GPU-0"}, 1.0),
        (p + "engine_gpu_info", {"engine": "llama", "gpu": "1", "uuid": "GPU-1"}, 1.0),
        (p + "engine_up", engine, 1.0),
        (p + "requests_per_second", engine, 0.5),
        (p + "generation_tokens_per_second", engine, 50.0),
        (p + "kv_cache_usage_ratio", engine, 0.03),
        (p + "time_per_output_token_seconds", {**engine, "quantile": "0.5"}, 0.009),
        (p + "expected_time_per_output_token_seconds", engine, 0.0045),
        (p + "tpot_efficiency_ratio", engine, 0.5),
        (p + "cost_dollars_per_hour", engine, 6.0),
        (p + "cost_per_request_dollars", engine, 6.0 / 1800),
        (p + "rightsizing_gpus_needed", engine, 1.0),
        (p + "rightsizing_savings_dollars_per_hour", engine, 3.0),
        *[(p + "rightsizing_state", {**engine, "state": s}, float(s == "overprovisioned"))
          for s in ("overprovisioned", "memory_bound", "compute_bound", "balanced")],
    ]
    (only,) = group(samples)
    text = render(only)
    assert text.splitlines()[0] == "engine llama (vllm, meta-llama/Llama-3.1-8B-Instruct) on 2 x NVIDIA H100 80GB HBM3"
    assert "state            overprovisioned" in text
    assert "TPOT p50 9.0 ms (roofline 4.5 ms, efficiency 0.50)" in text
    assert "$6.00/h, $0.00333 per request" in text  # $6 an hour / 1,800 requests an hour
    assert "1 GPU(s) would serve this load within the SLOs (it has 2): save $3.00/h" in text


def test_down_engine() -> None:
    (only,) = group([("infermeter_engine_up", {"engine": "e", "kind": "", "model": ""}, 0.0)])
    assert "DOWN" in render(only)


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[ExporterProcess]:
    engine = FakeEngine(FIXTURE)
    engine.zero()
    with FakeEngineServer(engine) as server:
        process = ExporterProcess(["--interval", "0.5", "--window", "30", "--engine", f"llama={server.url}",
                                   "--model-config", str(LLAMA_8B), "--gpu-hourly-cost", "2.5"],
                                  tmp_path, nvml_spec=h100_node(1))
        try:
            process.wait_ready()
            engine.inc("vllm:generation_tokens_total", 3000)
            engine.inc("vllm:request_success_total", 6, {"finished_reason": "stop"})
            wait_for(lambda: value(process.samples(), "infermeter_cost_per_request_dollars", engine="llama"))
            yield process
        finally:
            process.stop()


def test_report_from_a_running_exporter(exporter: ExporterProcess) -> None:
    result = report("--url", exporter.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "engine llama (vllm, tinyllama) on 1 x NVIDIA H100 80GB HBM3"
    assert any(line.startswith("  state            ") for line in lines)
    assert "$2.50/h" in result.stdout
    data = json.loads(report("--url", exporter.url, "--format", "json").stdout)
    assert data[0]["engine"] == "llama" and data[0]["values"]["infermeter_cost_dollars_per_hour"] == 2.5
    assert data[0]["labels"]["architecture"] == "LlamaForCausalLM"
    missing = report("--url", exporter.url, "--engine", "nope")
    assert missing.returncode == 1 and "no engine found named 'nope'" in missing.stderr


def test_report_says_why_it_cannot_read() -> None:
    result = report("--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("infermeter report: cannot read http://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_report_from_a_real_prometheus(exporter: ExporterProcess, tmp_path: Path) -> None:
    with prometheus_scraping(tmp_path, f"127.0.0.1:{exporter.port}", "infermeter_cost_dollars_per_hour") as url:
        result = report("--prometheus", url)
        assert result.returncode == 0, result.stderr
        first = result.stdout.splitlines()[0]
        assert first == (f"engine llama (vllm, tinyllama) on 1 x NVIDIA H100 80GB HBM3 "
                         f"[127.0.0.1:{exporter.port}/infermeter]")
        assert "$2.50/h" in result.stdout
