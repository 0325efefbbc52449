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
        (p + "rightsizing_savings_dollars_per_hour", engine, 3.0),  # $6 now - 1 x $3
        (p + "rightsizing_plan_info", {**engine, "tensor_parallel": "1", "basis": "calibrated"}, 1.0),
        (p + "rightsizing_calibration_info", {**engine, "phase": "decode", "basis": "calibrated", "reason": ""}, 1.0),
        (p + "rightsizing_calibration_info", {**engine, "phase": "prefill", "basis": "roofline",
                                              "reason": "too_few_requests"}, 1.0),
        (p + "rightsizing_evidence_window_seconds", engine, 60.0),
        (p + "rightsizing_loaded_ratio", engine, 0.4),
        (p + "rightsizing_batch_ratio", engine, 0.02),
        *[(p + "rightsizing_state", {**engine, "state": s}, float(s == "overprovisioned"))
          for s in ("overprovisioned", "memory_bound", "compute_bound", "engine_limited", "sleeping", "balanced")],
    ]
    (only,) = group(samples)
    text = render(only)
    assert text.splitlines()[0] == "engine llama (vllm, meta-llama/Llama-3.1-8B-Instruct) on 2 x NVIDIA H100 80GB HBM3"
    # the state with the evidence it rests on
    assert ("  state            overprovisioned: no queue, loaded in 40% of samples, batch at 2% of the largest the "
            "TPOT target allows (last 60 s)") in text
    assert "TPOT p50 9.0 ms (roofline 4.5 ms, efficiency 0.50)" in text
    assert "$6.00/h, $0.00333 per request" in text  # $6 an hour / 1,800 requests an hour
    assert ("1 GPU(s) at tensor parallel 1 would serve this load within the SLOs (it has 2): save $3.00/h "
            "[decode calibrated, prefill too_few_requests]") in text


@pytest.mark.parametrize(("state", "values", "expected"), [
    ("memory_bound", {"preemptions_per_second": 1.13, "kv_cache_full_ratio": 0.8, "queueing_ratio": 0.6,
                      "waiting_requests": 3.3},
     "memory_bound: 1.13 preemptions/s, KV cache full in 80% of loaded samples, requests waiting in 60% of loaded "
     "samples (3.3 on average)"),
    ("compute_bound", {"queueing_ratio": 0.9, "waiting_requests": 12.0, "batch_ratio": 0.75},
     "compute_bound: requests waiting in 90% of loaded samples (12.0 on average), batch at 75% of the largest the "
     "TPOT target allows"),
    ("engine_limited", {"queueing_ratio": 1.0, "waiting_requests": 5.0, "batch_ratio": 0.06, "gpu_busy_ratio": 0.97},
     "engine_limited: requests waiting in 100% of loaded samples (5.0 on average) with KV cache room, batch at 6% of "
     "the largest the TPOT target allows: the engine's own caps (--max-num-seqs, --max-num-batched-tokens), GPUs "
     "97% busy"),
    ("sleeping", {}, "sleeping: the engine sleeps (vLLM sleep mode): its GPUs hold no work"),
    ("balanced", {"batch_ratio": 0.4}, "balanced: no sustained queue or preemption, batch at 40% of the largest the "
                                       "TPOT target allows"),
])
def test_each_state_prints_its_evidence(state: str, values: dict[str, float], expected: str) -> None:
    engine = {"engine": "e", "kind": "vllm", "model": "m"}
    samples = [("infermeter_engine_up", engine, 1.0),
               *((f"infermeter_rightsizing_{name}", engine, v) for name, v in values.items()),
               *(("infermeter_rightsizing_state", {**engine, "state": s}, float(s == state))
                  for s in ("overprovisioned", "memory_bound", "compute_bound", "engine_limited", "sleeping",
                            "balanced"))]
    (only,) = group(samples)
    (line,) = [line for line in render(only).splitlines() if line.startswith("  state")]
    assert line == f"  state            {expected}"


def test_no_state_yet_says_why() -> None:
    (only,) = group([("infermeter_engine_up", {"engine": "e", "kind": "vllm", "model": "m"}, 1.0)])
    assert ("  state            unknown (no model or GPU facts, or too little evidence yet)" in render(only))


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
        # --from finds out which of the two a URL is
        detected = report("--from", url)
        assert detected.returncode == 0 and detected.stdout.splitlines()[0] == first  # read through Prometheus
        assert report("--from", exporter.url).stdout.startswith("engine llama (vllm, tinyllama) on 1 x NVIDIA H100")
        # each explicit flag pointed at the other kind says what it is and what to pass instead
        wrong = report("--url", url)
        assert wrong.returncode == 1 and wrong.stdout == ""
        assert wrong.stderr == (f"infermeter report: {url} is a Prometheus server, not an infermeter exporter: pass "
                                f"--prometheus {url}\n")
        wrong = report("--prometheus", exporter.url)
        assert wrong.returncode == 1
        assert wrong.stderr == (f"infermeter report: {exporter.url} is an infermeter exporter, not a Prometheus "
                                f"server: pass --url {exporter.url}\n")


def _engine_samples(**values: float) -> list[tuple[str, dict[str, str], float]]:
    engine = {"engine": "llama", "kind": "vllm", "model": "meta-llama/Llama-3.1-8B"}
    return [("infermeter_engine_up", engine, 1.0),
            *((f"infermeter_{name}", engine, v) for name, v in values.items())]


def test_an_idle_engine_reads_idle_and_n_a_never_an_empty_value() -> None:
    (idle,) = group([*_engine_samples(requests_per_second=0.0, prompt_tokens_per_second=0.0,
                                      generation_tokens_per_second=0.0, requests_running=0.0, requests_waiting=0.0,
                                      kv_cache_usage_ratio=0.0, cost_dollars_per_hour=2.5,
                                      expected_time_per_output_token_seconds=0.0045),
                     ("infermeter_model_flops_utilization_ratio",
                      {"engine": "llama", "kind": "vllm", "model": "meta-llama/Llama-3.1-8B", "source": "analytic"},
                      0.0)])
    text = render(idle)
    lines = {line[2:18].strip(): line[19:] for line in text.splitlines()[1:]}
    assert lines["load"] == "idle: no requests or tokens in the window, KV cache 0% full"
    # what is known is printed (the roofline, the analytic MFU of 0); what is not says n/a
    assert lines["utilisation"] == "MBU n/a (idle), MFU 0.00 (analytic)"
    assert lines["latency"] == "TTFT p50 n/a, p95 n/a; TPOT p50 n/a (roofline 4.5 ms, efficiency n/a)"
    assert lines["cost"].startswith("$2.50/h, n/a per request and per million tokens (idle)")
    assert "MBU ," not in text and "?" not in text.split("\n", 1)[1]


def test_a_busy_engine_without_mbu_says_n_a_without_idle() -> None:
    (busy,) = group(_engine_samples(requests_per_second=1.5, generation_tokens_per_second=600.0))
    text = render(busy)
    assert "  utilisation      MBU n/a, MFU n/a" in text and "idle" not in text.split("cost")[0]


def test_small_dollar_amounts_print_as_decimals() -> None:
    # $0.0000815 a request: 8.15e-05 in the old format
    (cheap,) = group(_engine_samples(requests_per_second=1.0, cost_dollars_per_hour=0.2934,
                                     cost_per_request_dollars=8.15e-05))
    text = render(cheap)
    assert "$0.29/h, $0.0000815 per request" in text and "e-0" not in text
