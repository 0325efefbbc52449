"""End to end: the real ``infermeter`` process, fake engines at their HTTP boundary, NVML faked at the
pynvml boundary, scraped over HTTP and linted with promtool."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.derive.quantiles import quantile_bounds
from exporter.samples import Histogram
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node, missing_library
from tests.process import ExporterProcess, Samples, value, wait_for
from tests.prometheus_server import prometheus_binary
from tests.test_quantiles import reference_quantile

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
ROOT_DIR = Path(__file__).resolve().parent.parent
VLLM = FIXTURES / "vllm-0.32.0-real-a.txt"
TGI = FIXTURES / "tgi-3.x.txt"
TTFT_OBSERVATIONS = [0.012, 0.03, 0.07, 0.07, 0.09, 0.15, 0.3, 0.3, 0.6, 1.2, 3.0, 0.045]


@pytest.fixture
def vllm_engine() -> Iterator[tuple[FakeEngine, FakeEngineServer]]:
    engine = FakeEngine(VLLM)
    engine.zero()
    with FakeEngineServer(engine) as server:
        yield engine, server


@pytest.fixture
def tgi_engine() -> Iterator[tuple[FakeEngine, FakeEngineServer]]:
    engine = FakeEngine(TGI, identity={"/info": json.loads((FIXTURES / "tgi-1.4.info.json").read_text())})
    engine.zero()
    with FakeEngineServer(engine) as server:
        yield engine, server


@pytest.fixture
def two_engines(tmp_path: Path, vllm_engine: tuple[FakeEngine, FakeEngineServer],
                tgi_engine: tuple[FakeEngine, FakeEngineServer]) -> Iterator[tuple[FakeEngine, ExporterProcess]]:
    """The exporter reading a vLLM engine named llama and a TGI engine named tgi, both up."""
    vllm, vllm_server = vllm_engine
    exporter = start(tmp_path, "--engine", f"llama={vllm_server.url}", "--engine", f"tgi={tgi_engine[1].url}")
    try:
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="llama") == 1)
        yield vllm, exporter
    finally:
        exporter.stop()


def start(tmp_path: Path, *args: str, nvml: dict[str, object] | None = None) -> ExporterProcess:
    exporter = ExporterProcess(["--interval", "0.5", "--window", "30", *args], tmp_path,
                               nvml_spec=nvml if nvml is not None else h100_node(2))
    exporter.wait_ready()
    return exporter


def stop_with(exporter: ExporterProcess, signum: int) -> tuple[int, float]:
    """Send ``signum``; the exit code and the seconds the process took to exit."""
    exporter.proc.send_signal(signum)
    began = time.monotonic()
    code = exporter.proc.wait(timeout=5)
    took = time.monotonic() - began
    exporter.stop()
    return code, took


def ttft_bounds(engine: FakeEngine) -> list[float]:
    text = engine.render()
    bounds = set()
    for line in text.splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            bounds.add(math.inf if le == "+Inf" else float(le))
    return sorted(bounds)


def test_vllm_tgi_and_gpus_end_to_end(tmp_path: Path, vllm_engine: tuple[FakeEngine, FakeEngineServer],
                                      tgi_engine: tuple[FakeEngine, FakeEngineServer]) -> None:
    vllm, vllm_server = vllm_engine
    tgi, tgi_server = tgi_engine
    started = time.monotonic()
    exporter = start(tmp_path, "--engine", f"llama={vllm_server.url}", "--engine", f"tgi={tgi_server.url}")
    try:
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="llama") == 1)
        for ttft in TTFT_OBSERVATIONS:
            vllm.observe("vllm:time_to_first_token_seconds", ttft)
        vllm.inc("vllm:generation_tokens_total", 1000)
        vllm.inc("vllm:request_success_total", 12, {"finished_reason": "stop"})
        vllm.set("vllm:num_requests_waiting", 7)
        tgi.observe("tgi_request_duration", 1.5, times=4)
        tgi.inc("tgi_request_success", 4)
        wait_for(lambda: value(exporter.samples(), "infermeter_time_to_first_token_seconds_count",
                               engine="llama") == len(TTFT_OBSERVATIONS))
        samples = exporter.samples()
        elapsed = time.monotonic() - started
        llama = {"engine": "llama", "kind": "vllm", "model": "tinyllama"}

        # windowed quantiles: the observations bucketed with the engine's own bounds, PromQL's interpolation,
        # held to the interval the buckets and the sum allow (exported beside it)
        bounds = ttft_bounds(vllm)
        cumulative = [float(sum(1 for o in TTFT_OBSERVATIONS if o <= b)) for b in bounds]
        count = float(len(TTFT_OBSERVATIONS))
        window = Histogram(tuple(bounds), tuple(cumulative), math.fsum(TTFT_OBSERVATIONS), count)
        for q in (0.5, 0.9, 0.95, 0.99):
            interval = quantile_bounds(q, window)
            assert interval is not None
            expected = min(max(reference_quantile(q, bounds, cumulative), interval[0]), interval[1])
            got = value(samples, "infermeter_time_to_first_token_seconds", quantile=f"{q:g}", **llama)
            assert got == pytest.approx(expected), q
            for bound, known in zip(("lower", "upper"), interval, strict=True):
                exported = value(samples, "infermeter_latency_quantile_bound_seconds", histogram="time_to_first_token",
                                 q=f"{q:g}", bound=bound, **llama)
                assert exported == pytest.approx(known), (q, bound)
            raw = sorted(TTFT_OBSERVATIONS)[max(math.ceil(q * len(TTFT_OBSERVATIONS)) - 1, 0)]
            upper = min(b for b in bounds if b >= raw)
            lower = max([b for b in bounds if b < raw], default=0.0)
            assert lower <= got <= upper  # the raw quantile's bucket
        assert value(samples, "infermeter_time_to_first_token_seconds_sum", **llama) == pytest.approx(
            sum(TTFT_OBSERVATIONS))
        # nothing finished end to end: no e2e quantile, but the cumulative count is there
        assert value(samples, "infermeter_e2e_request_latency_seconds", quantile="0.5", **llama) is None

        rate = value(samples, "infermeter_generation_tokens_per_second", **llama)
        # the increase over the time between the window's first and last samples: at most the test's whole
        # run, at least about one interval (0.5 s). Two reads' timestamps are taken when each read ends, so
        # their spacing can shrink by the difference of their durations under load: the upper bound allows
        # half an interval. (test_collection checks the exact arithmetic with a controlled clock.)
        assert rate is not None and 1000 / elapsed <= rate <= 1000 / 0.25
        assert value(samples, "infermeter_requests_waiting", **llama) == 7
        capacity = value(samples, "infermeter_kv_cache_capacity_tokens", **llama)
        assert capacity is not None and capacity > 0
        assert value(samples, "infermeter_engine_info", version="0.32.0", **llama) == 1

        tgi_labels = {"engine": "tgi", "kind": "tgi", "model": json.loads(
            (FIXTURES / "tgi-1.4.info.json").read_text())["model_id"]}
        assert value(samples, "infermeter_engine_up", **tgi_labels) == 1
        assert value(samples, "infermeter_e2e_request_latency_seconds_count", **tgi_labels) == 4
        assert value(samples, "infermeter_time_to_first_token_seconds_count", **tgi_labels) is None  # TGI has none

        # GPUs: base units, two engines split two GPUs in order
        spec = h100_node(2)["gpus"]
        assert value(samples, "infermeter_gpu_power_limit_watts", gpu="1") == spec[1]["power_limit_mw"] / 1000
        assert value(samples, "infermeter_gpu_memory_total_bytes", gpu="0") == spec[0]["memory_total"]
        assert value(samples, "infermeter_gpu_sm_clock_hertz", gpu="0") == spec[0]["sm_clock_mhz"] * 1e6
        assert value(samples, "infermeter_gpu_utilization_ratio", gpu="0") == spec[0]["utilization_gpu"] / 100
        assert value(samples, "infermeter_engine_gpu_info", engine="llama", gpu="0") == 1
        assert value(samples, "infermeter_engine_gpu_info", engine="tgi", gpu="1") == 1
        assert value(samples, "infermeter_engine_gpu_memory_used_bytes", engine="llama") == \
            spec[0]["processes"][0]["used_memory"]
        assert value(samples, "infermeter_collector_success", collector="nvml") == 1
        assert value(samples, "infermeter_window_seconds") == 30
    finally:
        exporter.stop()


def test_exposition_passes_promtool_lint(two_engines: tuple[FakeEngine, ExporterProcess]) -> None:
    tool = prometheus_binary("promtool")
    vllm, exporter = two_engines
    vllm.tick()
    wait_for(lambda: value(exporter.samples(), "infermeter_time_to_first_token_seconds", quantile="0.5",
                           engine="llama") is not None)
    body = exporter.metrics_text()
    result = subprocess.run([tool, "check", "metrics"], input=body, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


def test_engine_failures_show_as_up_zero_and_errors_then_recover(
        two_engines: tuple[FakeEngine, ExporterProcess]) -> None:
    vllm, exporter = two_engines
    errors = lambda: value(exporter.samples(), "infermeter_collector_errors_total",  # noqa: E731
                           collector="engine/llama")
    for status, body in ((500, b"internal error"), (200, b"<html>not metrics</html>\n{{{")):
        before = errors()
        vllm.set_response(status=status, body=body)
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="llama") == 0)
        samples = exporter.samples()
        assert value(samples, "infermeter_collector_success", collector="engine/llama") == 0
        assert value(samples, "infermeter_requests_running", engine="llama") is None  # no stale values
        assert value(samples, "infermeter_engine_up", engine="tgi") == 1  # the other engine is unaffected
        wait_for(lambda b=before: errors() > b)
        vllm.clear_response()
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="llama") == 1)
    log = exporter.log()
    assert "engine llama: HTTP 500" in log
    assert "engine llama: recovered" in log


def test_hung_engine_never_slows_a_scrape_or_the_other_sources(
        two_engines: tuple[FakeEngine, ExporterProcess]) -> None:
    vllm, exporter = two_engines
    vllm.set_delay(30)
    wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="llama") == 0)
    slowest = 0.0
    for _ in range(20):
        began = time.monotonic()
        samples = exporter.samples()
        slowest = max(slowest, time.monotonic() - began)
        assert value(samples, "infermeter_engine_up", engine="tgi") == 1
        assert value(samples, "infermeter_collector_success", collector="nvml") == 1
        time.sleep(0.05)
    # a scrape never waits for the hung engine (its reads take 30 s); generous bound for a loaded CI machine
    assert slowest < 2.0
    last = value(exporter.samples(), "infermeter_last_collect_timestamp_seconds")
    assert last is not None and time.time() - last < 5  # collection keeps going


def test_engine_restart_and_kind_change_behind_the_same_url(
        tmp_path: Path, vllm_engine: tuple[FakeEngine, FakeEngineServer]) -> None:
    vllm, server = vllm_engine
    exporter = start(tmp_path, "--engine", f"e={server.url}")
    try:
        vllm.inc("vllm:generation_tokens_total", 5000)
        wait_for(lambda: (value(exporter.samples(), "infermeter_generation_tokens_per_second", engine="e") or 0) > 0)
        vllm.reset()  # counters back to zero
        vllm.inc("vllm:generation_tokens_total", 10)
        for _ in range(4):
            time.sleep(0.5)
            rate = value(exporter.samples(), "infermeter_generation_tokens_per_second", engine="e")
            assert rate is not None and rate >= 0  # a reset is never a negative rate
        vllm.load(TGI, identity={"/info": {"model_id": "bigscience/bloom-560m", "version": "3.3.6"}})
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="e", kind="tgi",
                               model="bigscience/bloom-560m") == 1)
        assert value(exporter.samples(), "infermeter_engine_info", engine="e", version="3.3.6") == 1
    finally:
        exporter.stop()


def test_no_gpu_and_no_engine_still_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    exporter = start(tmp_path, nvml=missing_library())
    try:
        samples: Samples = exporter.samples()
        assert value(samples, "infermeter_build_info") == 1
        assert value(samples, "infermeter_collector_success", collector="nvml") == 0
        assert not [n for n, _, _ in samples if n.startswith("infermeter_gpu_")]
        status, page, headers = exporter.get("/")
        assert status == 200 and 'href="metrics"' in page and headers["Content-Type"].startswith("text/html")
        assert exporter.get("/healthz")[0] == 200
        assert exporter.get("/nope")[0] == 404
        log = exporter.log()
        assert log.count("NVML unavailable: NVML library not found") == 1
        assert "no engine configured" in log
    finally:
        code, took = stop_with(exporter, signal.SIGTERM)
    assert code == 0
    assert took < 1.0, f"SIGTERM took {took:.2f}s"


def test_sigint_stops_promptly_even_with_a_hung_engine(
        tmp_path: Path, vllm_engine: tuple[FakeEngine, FakeEngineServer]) -> None:
    vllm, server = vllm_engine
    vllm.set_delay(30)
    exporter = start(tmp_path, "--engine", f"e={server.url}")
    try:
        time.sleep(1.0)  # a read is now hung inside the engine
    finally:
        code, took = stop_with(exporter, signal.SIGINT)
    assert code == 0
    assert took < 1.0, f"SIGINT took {took:.2f}s"


def test_bad_configuration_fails_at_start_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run([*ExporterProcess.command(), "--interval", "soon"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "infermeter: configuration error: --interval (--interval): expected a number of seconds, got 'soon'"]


LLAMA_8B_CONFIG = ROOT_DIR / "exporter" / "facts" / "models" / "meta-llama--Llama-3.1-8B.json"


def test_expectations_cost_and_rightsizing_through_the_exporter(
        tmp_path: Path, vllm_engine: tuple[FakeEngine, FakeEngineServer],
        tgi_engine: tuple[FakeEngine, FakeEngineServer]) -> None:
    vllm, vllm_server = vllm_engine
    tgi, tgi_server = tgi_engine
    tgi.load(TGI, identity={"/info": {"model_id": "bigscience/bloom-560m", "version": "1.4.5"}})  # in no catalogue
    started = time.monotonic()
    exporter = start(tmp_path, "--engine", f"llama={vllm_server.url}", "--engine", f"tgi={tgi_server.url}",
                     "--model-config", f"llama={LLAMA_8B_CONFIG}", "--gpu-hourly-cost", "2.5",
                     "--slo-tpot-seconds", "0.05", "--slo-ttft-seconds", "2")
    try:
        vllm.inc("vllm:prompt_tokens_total", 5000)
        vllm.inc("vllm:generation_tokens_total", 2000)
        vllm.inc("vllm:request_success_total", 10, {"finished_reason": "stop"})
        vllm.observe("vllm:inter_token_latency_seconds", 0.012, times=2000)
        vllm.observe("vllm:request_time_per_output_token_seconds", 0.012, times=10)
        vllm.set("vllm:num_requests_running", 4)
        llama = {"engine": "llama", "kind": "vllm", "model": "tinyllama"}
        def priced() -> Samples | None:
            samples = exporter.samples()
            return samples if value(samples, "infermeter_cost_per_request_dollars", **llama) else None

        first = wait_for(priced)
        # facts: Llama-3.1-8B from the given config, an H100 from the catalogue, the price from the flag
        assert value(first, "infermeter_kv_cache_bytes_per_token", **llama) == 131_072
        assert value(first, "infermeter_model_weight_bytes", **llama) == 16_060_522_496
        assert value(first, "infermeter_model_info", architecture="LlamaForCausalLM", weight_dtype="bf16",
                     spec_source=str(LLAMA_8B_CONFIG), **llama) == 1
        assert value(first, "infermeter_gpu_peak_flops", gpu="0", dtype="bf16") == 989.4e12
        assert value(first, "infermeter_gpu_memory_bandwidth_bytes_per_second", gpu="0") == 3.35e12
        assert value(first, "infermeter_gpu_cost_dollars_per_hour", gpu="0") == 2.5
        # the engine owns GPU 0 (two engines split two GPUs): $2.50 an hour
        assert value(first, "infermeter_cost_dollars_per_hour", **llama) == 2.5
        expected_tpot = value(first, "infermeter_expected_time_per_output_token_seconds", **llama)
        assert expected_tpot is not None and expected_tpot >= 4.48e-3  # never below the batch-1 floor
        assert (value(first, "infermeter_expected_time_to_first_token_seconds", **llama) or 0) > 0
        median = value(first, "infermeter_time_per_output_token_seconds", quantile="0.5", **llama)
        assert median is not None
        assert value(first, "infermeter_tpot_efficiency_ratio", **llama) == pytest.approx(expected_tpot / median)
        # the state is absent until its candidate has held 3 cycles and 15 s (verdict.StateHold), then one of six
        # is 1: 4 running of a B* in the hundreds, an empty KV cache, nothing waiting: overprovisioned
        assert not [n for n, _, _ in first if n == "infermeter_rightsizing_state"] or \
            time.monotonic() - started >= 15
        def held() -> dict[str, float] | None:
            states = {labels["state"]: v for n, labels, v in exporter.samples()
                      if n == "infermeter_rightsizing_state" and labels["engine"] == "llama"}
            return states or None

        states = wait_for(held, timeout=30)
        assert sorted(states.values()) == [0, 0, 0, 0, 0, 1] and states["overprovisioned"] == 1
        assert value(first, "infermeter_slo_time_per_output_token_seconds") == 0.05
        assert value(first, "infermeter_slo_time_to_first_token_seconds") == 2
        spent = value(first, "infermeter_cost_dollars_total", **llama)
        assert spent is not None
        wait_for(lambda: (value(exporter.samples(), "infermeter_cost_dollars_total", **llama) or 0) > spent)
        # the TGI engine's model is not in any catalogue: its expectations are absent, not zero;
        # its GPU has a price, so what it costs is still known
        tgi_labels = {"engine": "tgi"}
        def tgi_up() -> Samples | None:  # a read in which the TGI engine answered (it has no analysis to show)
            samples = exporter.samples()
            return samples if value(samples, "infermeter_engine_up", **tgi_labels) == 1 else None

        later = wait_for(tgi_up)
        for name in ("infermeter_expected_time_per_output_token_seconds", "infermeter_model_weight_bytes",
                     "infermeter_rightsizing_gpus_needed", "infermeter_achievable_cost_per_million_tokens_dollars",
                     "infermeter_rightsizing_state", "infermeter_rightsizing_planned_requests_per_second"):
            assert value(later, name, **tgi_labels) is None, name
        assert value(later, "infermeter_cost_dollars_per_hour", **tgi_labels) == 2.5
        assert "engine tgi: no architecture known for model" in exporter.log()
    finally:
        exporter.stop()
