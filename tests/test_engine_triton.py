"""NVIDIA Triton (TensorRT-LLM ensemble and a plain ONNX Runtime model): the adapter against fixtures built
from Triton core's and the TensorRT-LLM backend's sources, the simulator's Triton kind, and a real exporter
process reading a fake Triton.

Expected values are read from the fixture text by the naive line reader of tests/test_engines.py, not by the
code under test.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import EngineTarget
from exporter.derive.engine import engine_stats
from exporter.derive.quantiles import quantiles
from exporter.simulate import SCENARIOS, SimulatorServer, exposition_for, simulation
from exporter.simulate import exposition as sim_exposition
from exporter.simulate import triton as sim_triton
from exporter.sources import SourceError
from exporter.sources.engine import EngineSource
from exporter.sources.engines import detect, markdown_mapping, triton
from exporter.sources.exposition import parse
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node
from tests.process import ExporterProcess, Samples, value, wait_for
from tests.test_engines import naive, naive_sum, read

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
TRTLLM, TRTLLM_B = FIXTURES / "triton-trtllm.txt", FIXTURES / "triton-trtllm-b.txt"
ONNX, ONNX_B = FIXTURES / "triton-onnx.txt", FIXTURES / "triton-onnx-b.txt"
QS = (0.5, 0.9, 0.95, 0.99)


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def per_model(body: str, name: str, **labels: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for got, v in naive(body, name, **labels):
        totals[got["model"]] += v
    return dict(totals)


def le(bound: float) -> str:
    return "+Inf" if bound == math.inf else f"{bound:g}"


# ------------------------------------------------------------------------------------------ detection


def test_detected_by_the_nv_inference_names() -> None:
    assert detect(text(TRTLLM)).kind == "triton"
    assert detect(text(ONNX)).kind == "triton"
    # no model loaded yet: only GPU and pinned-memory families, which are not enough to say "Triton"
    gpu_only = "".join(line + "\n" for line in text(ONNX).splitlines()
                       if line.startswith(("nv_gpu", "# HELP nv_gpu", "# TYPE nv_gpu")))
    assert gpu_only
    with pytest.raises(SourceError, match=r"triton \(nv_inference_\*\)"):
        detect(gpu_only)


def test_counters_carry_no_total_on_the_wire() -> None:
    body = text(TRTLLM)
    assert "# TYPE nv_inference_request_success counter" in body
    assert not re.search(r"^[^#\s]*_total[{ ]", body, re.M)


# ------------------------------------------------------------------------------------------ TensorRT-LLM


def test_the_outermost_model_is_the_one_followed() -> None:
    body = text(TRTLLM)
    durations = per_model(body, "nv_inference_request_duration_us")
    successes = per_model(body, "nv_inference_request_success")
    outermost = max(durations, key=lambda m: durations[m])
    assert outermost == "ensemble"
    # the streamed postprocessing step has by far the most requests: a count-based rule would pick it
    assert max(successes, key=lambda m: successes[m]) == "postprocessing"
    sample = read(body)
    assert sample.kind == "triton" and sample.model_label == outermost
    assert sample.counters["requests_finished"] == successes[outermost]
    assert sample.counters["requests_finished"] < sum(successes.values())  # models are never summed


def test_trtllm_latencies_in_seconds() -> None:
    body = text(TRTLLM)
    sample = read(body)
    successes = naive_sum(body, "nv_inference_request_success", model="ensemble")
    for field, wire in (("e2e_request_latency", "nv_inference_request_duration_us"),
                        ("queue_time", "nv_inference_queue_duration_us")):
        histogram = sample.histograms[field]
        assert histogram.bounds == (math.inf,)
        assert histogram.cumulative_counts == (successes,)
        assert histogram.count == successes  # Triton adds durations on successful requests only
        assert histogram.sum == pytest.approx(naive_sum(body, wire, model="ensemble") / 1e6)
    mean = sample.histograms["e2e_request_latency"].sum / successes
    assert 1.0 < mean < 10.0  # seconds, not microseconds
    ttft = sample.histograms["time_to_first_token"]
    buckets = naive(body, "nv_inference_first_response_histogram_ms_bucket", model="ensemble")
    bounds = sorted(math.inf if lbl["le"] == "+Inf" else float(lbl["le"]) for lbl, _ in buckets)
    assert list(ttft.bounds) == [b / 1000 for b in bounds]  # ms -> s
    assert list(ttft.cumulative_counts) == [naive_sum(body, "nv_inference_first_response_histogram_ms_bucket",
                                                      model="ensemble", le=le(b)) for b in bounds]
    assert ttft.sum == pytest.approx(naive_sum(body, "nv_inference_first_response_histogram_ms_sum",
                                               model="ensemble") / 1000)
    assert ttft.count == naive_sum(body, "nv_inference_first_response_histogram_ms_count", model="ensemble")


def test_trtllm_batch_kv_cache_and_tokens() -> None:
    body = text(TRTLLM)
    sample = read(body)
    llm = {"model": "tensorrt_llm"}

    def kv(kind: str) -> float:
        return naive_sum(body, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type=kind, **llm)

    assert sample.gauges["requests_running"] == naive_sum(body, "nv_trt_llm_request_metrics",
                                                          request_type="scheduled", **llm)
    assert sample.gauges["requests_waiting"] == naive_sum(body, "nv_trt_llm_request_metrics", request_type="waiting",
                                                          **llm) + naive_sum(body, "nv_inference_pending_request_count",
                                                                             **llm)
    assert sample.gauges["kv_cache_capacity_tokens"] == kv("max") * kv("tokens_per")
    assert sample.gauges["kv_cache_usage_ratio"] == kv("used") / kv("max")
    assert sample.gauges["kv_cache_usage_ratio"] == pytest.approx(kv("fraction"), abs=1e-6)  # six decimals
    assert sample.counters["prompt_tokens"] == naive_sum(body, "nv_llm_input_token_len_sum", **llm)
    assert sample.counters["generation_tokens"] == naive_sum(body, "nv_llm_output_token_len_sum", **llm)
    assert "preemptions" not in sample.counters  # TensorRT-LLM reports none: absent


def test_older_trtllm_backend_without_waiting_or_fraction() -> None:
    # before the backend served request_type="waiting" and kv_cache_block_type="fraction" (< v0.18)
    lines = [line for line in text(TRTLLM).splitlines()
             if 'request_type="waiting"' not in line and 'kv_cache_block_type="fraction"' not in line]
    body = "\n".join(lines) + "\n"
    sample = read(body)
    llm = {"model": "tensorrt_llm"}
    active = naive_sum(body, "nv_trt_llm_request_metrics", request_type="active", **llm)
    scheduled = naive_sum(body, "nv_trt_llm_request_metrics", request_type="scheduled", **llm)
    pending = naive_sum(body, "nv_inference_pending_request_count", **llm)
    assert sample.gauges["requests_waiting"] == active - scheduled + pending
    # only the fraction left: it is used
    only_fraction = "\n".join(line for line in text(TRTLLM).splitlines()
                              if 'kv_cache_block_type="used"' not in line) + "\n"
    assert read(only_fraction).gauges["kv_cache_usage_ratio"] == naive_sum(
        only_fraction, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction")


def test_cumulative_durations_export_a_mean_and_no_quantile() -> None:
    a, b = read(text(TRTLLM), 1000.0), read(text(TRTLLM_B), 1010.0)
    assert quantiles(QS, a.histograms["e2e_request_latency"]) == {}  # a +Inf-only histogram has none
    stats = engine_stats([a, b], QS)
    e2e = stats.latency["e2e_request_latency"]
    assert e2e.quantiles == {}
    done = (naive_sum(text(TRTLLM_B), "nv_inference_request_success", model="ensemble")
            - naive_sum(text(TRTLLM), "nv_inference_request_success", model="ensemble"))
    spent = (naive_sum(text(TRTLLM_B), "nv_inference_request_duration_us", model="ensemble")
             - naive_sum(text(TRTLLM), "nv_inference_request_duration_us", model="ensemble")) / 1e6
    assert done > 0 and e2e.window_mean == pytest.approx(spent / done)
    assert stats.latency["queue_time"].quantiles == {}
    assert set(stats.latency["time_to_first_token"].quantiles) == set(QS)  # a real histogram has them
    assert stats.rates["requests_per_second"] == pytest.approx(done / 10)
    for counter, rate in (("nv_llm_input_token_len_sum", "prompt_tokens_per_second"),
                          ("nv_llm_output_token_len_sum", "generation_tokens_per_second")):
        assert stats.rates[rate] == pytest.approx(
            (naive_sum(text(TRTLLM_B), counter) - naive_sum(text(TRTLLM), counter)) / 10)


# ------------------------------------------------------------------------------------------ ONNX Runtime


def test_onnx_model_reports_requests_and_mean_latency_but_no_tokens() -> None:
    body = text(ONNX)
    sample = read(body)
    assert sample.model_label == "densenet_onnx"
    # a GPU instance's series (gpu_uuid) and the model-level series are added
    assert len(naive(body, "nv_inference_request_success")) == 2
    successes = naive_sum(body, "nv_inference_request_success")
    assert sample.counters == {"requests_finished": successes}
    e2e = sample.histograms["e2e_request_latency"]
    assert e2e.count == successes
    assert e2e.sum == pytest.approx(naive_sum(body, "nv_inference_request_duration_us") / 1e6)
    assert set(sample.histograms) == {"e2e_request_latency", "queue_time"}  # no first-response histogram enabled
    assert sample.gauges == {"requests_waiting": naive_sum(body, "nv_inference_pending_request_count")}
    stats = engine_stats([read(body, 1000.0), read(text(ONNX_B), 1010.0)], QS)
    assert set(stats.rates) == {"requests_per_second"}
    assert stats.rates["requests_per_second"] == pytest.approx(
        (naive_sum(text(ONNX_B), "nv_inference_request_success") - successes) / 10)
    assert stats.latency["e2e_request_latency"].window_mean is not None


# ------------------------------------------------------------------------------------------ several models


def _counters(models: dict[str, tuple[float, float]]) -> str:
    lines = ["# TYPE nv_inference_request_success counter"]
    lines += [f'nv_inference_request_success{{model="{m}",version="1"}} {n:g}' for m, (n, _) in models.items()]
    lines.append("# TYPE nv_inference_request_duration_us counter")
    lines += [f'nv_inference_request_duration_us{{model="{m}",version="1"}} {d:g}' for m, (_, d) in models.items()]
    return "\n".join(lines) + "\n"


def test_several_models_follow_the_largest_cumulative_duration() -> None:
    sample = read(_counters({"bert": (9000, 4.5e6), "llama": (300, 9.1e8), "resnet": (50000, 2.0e8)}))
    assert sample.model_label == "llama"
    assert sample.counters["requests_finished"] == 300
    assert sample.histograms["e2e_request_latency"].sum == pytest.approx(910.0)
    # versions of one model are added before comparing
    body = _counters({"a": (10, 5e6), "b": (10, 4e6)}) + 'nv_inference_request_duration_us{model="b",version="2"} 2e6\n'
    assert read(body).model_label == "b"
    # a fresh server (nothing finished): ties go to the first name, so the choice is stable
    assert read(_counters({"preprocessing": (0, 0), "ensemble": (0, 0)})).model_label == "ensemble"


def test_summaries_stand_in_when_latency_counters_are_off() -> None:
    # --metrics-config counter_latencies=false,summary_latencies=true
    body = "\n".join([
        "# TYPE nv_inference_request_success counter",
        'nv_inference_request_success{model="m",version="1"} 40',
        "# TYPE nv_inference_request_summary_us summary",
        'nv_inference_request_summary_us_count{model="m",version="1"} 40',
        'nv_inference_request_summary_us_sum{model="m",version="1"} 2000000',
        'nv_inference_request_summary_us{model="m",version="1",quantile="0.5"} 48000',
        "# TYPE nv_inference_queue_summary_us summary",
        'nv_inference_queue_summary_us_count{model="m",version="1"} 40',
        'nv_inference_queue_summary_us_sum{model="m",version="1"} 8000',
    ]) + "\n"
    sample = read(body)
    assert sample.histograms["e2e_request_latency"].sum == pytest.approx(2.0)
    assert sample.histograms["e2e_request_latency"].count == 40
    assert sample.histograms["queue_time"].sum == pytest.approx(0.008)
    assert quantiles(QS, sample.histograms["e2e_request_latency"]) == {}  # Triton's own quantiles are not used


def test_reading_only_the_needed_families_changes_nothing() -> None:
    for path in (TRTLLM, ONNX):
        body = text(path)
        adapter = detect(body)
        assert read(body) == adapter.adapt(parse(body), 1.0, None)
        assert len(parse(body, adapter.families).samples) < len(parse(body).samples)


def test_nan_and_unlabelled_samples_are_ignored() -> None:
    body = ('nv_inference_request_success{model="m",version="1"} NaN\n'
            'nv_inference_request_success 7\n'
            'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="m",version="1"} 0\n'
            'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="m",version="1"} +Inf\n')
    sample = read(body)
    assert "requests_finished" not in sample.counters
    assert "kv_cache_usage_ratio" not in sample.gauges and "kv_cache_capacity_tokens" not in sample.gauges


def test_docs_table_has_a_triton_column() -> None:
    table = markdown_mapping()
    assert "| triton |" in table.splitlines()[0] + " |"
    row = next(line for line in table.splitlines() if line.startswith("| kv_cache_capacity_tokens |"))
    assert "nv_trt_llm_kv_cache_block_metrics max x tokens_per" in row
    assert triton.ADAPTER.identity_paths == ()


# ------------------------------------------------------------------------------------------ simulator


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_simulated_triton_is_read_as_triton(scenario: str) -> None:
    sim = simulation("triton", scenario, seed=7)
    exposition = exposition_for(sim)
    assert isinstance(exposition, sim_triton.TritonExposition)
    sim.advance(75)
    body = exposition.render().decode()
    adapter = detect(body)
    assert adapter.kind == "triton"
    sample = adapter.adapt(parse(body, adapter.families), 0.0, adapter.identity(exposition.identity()))
    assert sample.model_label == "ensemble"
    assert sample.counters["requests_finished"] == sim.totals.finished > 0
    assert {"prompt_tokens", "generation_tokens"} <= set(sample.counters)
    assert "preemptions" not in sample.counters
    assert {"e2e_request_latency", "queue_time", "time_to_first_token"} <= set(sample.histograms)
    blocks = sim.kv_capacity_tokens // sim_triton.TOKENS_PER_BLOCK
    assert sample.gauges["kv_cache_capacity_tokens"] == blocks * sim_triton.TOKENS_PER_BLOCK
    assert 0.0 <= sample.gauges["kv_cache_usage_ratio"] <= 1.0
    assert sample.gauges["requests_running"] == sim.running_count
    assert value_of(body, sim_exposition.INFO_NAME, engine_kind="triton", scenario=scenario) == 1


def value_of(body: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(body) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _shape(body: str) -> dict[str, tuple[str, str, frozenset[str], tuple[str, ...]]]:
    shape: dict[str, tuple[str, str, frozenset[str], tuple[str, ...]]] = {}
    for family in text_string_to_metric_families(body):
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        bounds = tuple(dict.fromkeys(s.labels["le"] for s in family.samples if "le" in s.labels))
        shape[family.name] = (family.type, family.documentation, labels, bounds)
    return shape


def test_simulated_shape_equals_the_fixture() -> None:
    sim = simulation("triton", "balanced", seed=7)
    exposition = exposition_for(sim)
    sim.advance(30)
    body = exposition.render().decode()
    simulated, fixture = _shape(body), _shape(text(TRTLLM))
    simulated.pop(sim_exposition.INFO_NAME)
    # served as with --allow-gpu-metrics=false --allow-cpu-metrics=false
    assert set(fixture) - set(simulated) == {n for n in fixture if n.startswith(("nv_gpu_", "nv_cpu_", "nv_energy_"))}
    assert set(simulated) <= set(fixture)
    for name, shape in simulated.items():
        assert shape == fixture[name], name
    # prometheus-cpp's layout: no _total, no blank lines, _count and _sum before the buckets
    assert not re.search(r"^[^#\s]*_total[{ ]", body, re.M) and "\n\n" not in body
    lines = body.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("nv_llm_input_token_len"))
    assert lines[first].startswith("nv_llm_input_token_len_count{") and lines[first + 1].startswith(
        "nv_llm_input_token_len_sum{")
    assert sim_triton.INFO_NAME == sim_exposition.INFO_NAME and sim_triton.INFO_HELP == sim_exposition.INFO_HELP


def test_simulated_counters_advance_and_reset_on_restart() -> None:
    sim = simulation("triton", "engine-restart", seed=3)
    exposition = exposition_for(sim)
    series = {}
    for second in range(1, 71):
        sim.advance(1)
        series[second] = naive_sum(exposition.render().decode(), "nv_inference_request_success", model="ensemble")
    drops = [second for second in range(2, 71) if series[second] < series[second - 1]]
    assert drops == [60]  # the restart at 60 s; counters only grow otherwise
    assert series[59] > series[10] > 0 and series[70] > 0


def test_simulated_triton_reports_no_tokens_for_requests_it_gave_up() -> None:
    sim = simulation("triton", "slo-breach", seed=7)
    exposition = exposition_for(sim)
    sim.advance(120)  # clients give up after 15 s in the queue
    body = exposition.render().decode()
    assert sim.totals.aborted > 0
    assert naive_sum(body, "nv_llm_input_token_len_count") == sim.totals.finished
    assert naive_sum(body, "nv_inference_request_failure", model="tensorrt_llm", reason="CANCELED") == \
        sim.totals.aborted
    # the executor counts at most max_batch_size requests as active: the rest of the queue is not visible
    active = naive_sum(body, "nv_trt_llm_request_metrics", request_type="active")
    assert active == naive_sum(body, "nv_trt_llm_request_metrics", request_type="max")
    assert sim.waiting_count > active - sim.running_count


def test_simulator_http_server_is_read_by_the_engine_source() -> None:
    sim = simulation("triton", "balanced", seed=1)
    with SimulatorServer(sim, exposition_for(sim), port=0, speed=20.0) as server:
        wait_for(lambda: sim.totals.finished > 0, timeout=10)
        source = EngineSource(EngineTarget("sim", server.url), timeout=5.0, max_body_bytes=16 * 1024 * 1024)
        try:
            reading = source.read()
        finally:
            source.close()
    assert reading.sample.kind == "triton"
    assert reading.sample.model_label == "ensemble"
    assert reading.identity.model is None  # no identity endpoint: the model comes from the labels
    assert reading.sample.counters["requests_finished"] > 0


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture
def triton_engine() -> Iterator[tuple[FakeEngine, FakeEngineServer]]:
    engine = FakeEngine(TRTLLM)
    with FakeEngineServer(engine) as server:
        yield engine, server


def test_exporter_reads_a_triton_end_to_end(tmp_path: Path, triton_engine: tuple[FakeEngine, FakeEngineServer]) -> None:
    engine, server = triton_engine
    exporter = ExporterProcess(["--interval", "0.5", "--window", "30", "--engine", f"trt={server.url}"], tmp_path,
                               nvml_spec=h100_node(2))
    try:
        exporter.wait_ready()
        labels = {"engine": "trt", "kind": "triton", "model": "ensemble"}
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", **labels) == 1)
        time.sleep(1.0)  # a few reads of the first capture, then the counters move
        engine.load(TRTLLM_B)
        b = text(TRTLLM_B)
        count = naive_sum(b, "nv_inference_request_success", model="ensemble")

        def moved() -> Samples | None:
            samples = exporter.samples()
            done = value(samples, "infermeter_e2e_request_latency_seconds_count", **labels) == count
            return samples if done and value(samples, "infermeter_cost_per_request_dollars", **labels) else None

        samples = wait_for(moved)
        assert (value(samples, "infermeter_requests_per_second", **labels) or 0) > 0
        assert value(samples, "infermeter_e2e_request_latency_seconds_sum", **labels) == pytest.approx(
            naive_sum(b, "nv_inference_request_duration_us", model="ensemble") / 1e6)
        assert not [s for s in samples if s[0] == "infermeter_e2e_request_latency_seconds" and "quantile" in s[1]]
        assert (value(samples, "infermeter_cost_per_request_dollars", **labels) or 0) > 0
        assert (value(samples, "infermeter_generation_tokens_per_second", **labels) or 0) > 0
        assert value(samples, "infermeter_kv_cache_capacity_tokens", **labels) == naive_sum(
            b, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="max") * naive_sum(
            b, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="tokens_per")
        assert re.search(r'infermeter_time_to_first_token_seconds\{[^}]*quantile="0.5"', exporter.metrics_text())
    finally:
        exporter.stop()
