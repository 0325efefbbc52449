"""The collector maps a snapshot to exactly the catalogue's families and labels."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalog import BY_NAME, CATALOG
from exporter.collection import CollectorStatus, EngineView, Snapshot
from exporter.collector import SnapshotCollector
from exporter.derive.analysis import Analysis, Deployment, analyse
from exporter.derive.cost import Costs
from exporter.derive.engine import EngineStats, LatencySummary
from exporter.derive.plan import Calibration, Workload
from exporter.derive.rightsizing import PlanInputs, Rightsizing
from exporter.derive.verdict import Evidence
from exporter.facts.gpus import find
from exporter.facts.models import builtin
from exporter.samples import GpuProcess, GpuSample, NvmlReading

GPU0 = GpuSample(index=0, uuid="GPU-0", name="NVIDIA H100 80GB HBM3", utilization_ratio=0.87,
                 memory_bandwidth_utilization_ratio=0.5, memory_used_bytes=7e10, memory_total_bytes=8.5e10,
                 power_watts=512.3, power_limit_watts=700.0, temperature_celsius=61.0, sm_clock_hertz=1.98e9,
                 energy_joules=123456.789, processes=(GpuProcess(42, 6.9e10),))
GPU1 = GpuSample(index=1, uuid="GPU-1", name="NVIDIA H100 80GB HBM3", utilization_ratio=0.1)  # the rest unsupported


def analysis() -> Analysis:
    llama, h100 = builtin("meta-llama/Llama-3.1-8B"), find("NVIDIA H100 80GB HBM3")
    assert llama is not None and h100 is not None
    window = EngineStats(gauges={"requests_running": 8, "kv_cache_usage_ratio": 0.2, "kv_cache_capacity_tokens": 4e5},
                         counter_rates={"generation_tokens": 800, "prompt_tokens": 2000, "requests_finished": 2,
                                        "engine_flops_per_gpu": 1e13, "engine_read_bytes_per_gpu": 1e12},
                         latency={"inter_token_latency": LatencySummary({0.5: 0.01}, 9, 0.09, 0.01),
                                  "time_per_output_token": LatencySummary({0.5: 0.01}, 9, 0.09, 0.01)})
    return analyse(window, Deployment(llama, h100, 1, 85_520_809_984, 3.0, slo_tpot_seconds=0.05), [0.9], 7e10)


def sizing() -> Rightsizing:
    """The state (held, changed twice) with its evidence, and the planner's answer: 1 GPU at TP1, decode calibrated."""
    inputs = PlanInputs(Workload(2.0, 1000.0, 400.0), Calibration(0.45, None, "observed"),
                        {"decode": "", "prefill": "too_few_requests"})
    evidence = Evidence(seconds=60.0, loaded_ratio=0.5, queueing_ratio=0.0, kv_full_ratio=0.0,
                        kv_full_waiting_ratio=0.0, preemptions_per_second=0.0, waiting_requests=0.0, kv_usage=0.2,
                        gpu_busy_ratio=None, batch_ratio=float("inf"))
    return Rightsizing(inputs, "overprovisioned", 2, evidence, gpus_needed=1, tensor_parallel=1, savings_per_hour=0.5,
                       achievable_cost_per_million_tokens=0.27)


def snapshot() -> Snapshot:
    stats = EngineStats(
        latency={"time_to_first_token": LatencySummary({0.5: 0.1, 0.99: 0.4}, count=10, sum=1.5),
                 "e2e_request_latency": LatencySummary({}, count=10, sum=30.0)},
        rates={"generation_tokens_per_second": 2310.5, "requests_per_second": 2.5},
        prefix_cache_hit_ratio=0.25,
        gauges={"requests_running": 3, "kv_cache_usage_ratio": 0.41, "kv_cache_capacity_tokens": 123456},
    )
    return Snapshot(
        timestamp=1_700_000_000.0, window_seconds=300,
        nvml=NvmlReading(driver_version="580.95.05", gpus=(GPU0, GPU1)),
        engines=(EngineView("llama", True, "vllm", "meta-llama/Llama-3.1-8B", "0.10.2", stats, (GPU0,), 6.9e10,
                            analysis(), Costs(3.0, 0.0004, {"total": 3.0 / (2800 * 3600) * 1e6}, 0.3), 0.25,
                            rightsizing=sizing()),
                 EngineView("down", False, "tgi", "", "", None, (GPU1,), None)),
        collectors={"nvml": CollectorStatus(True, 0.01, 0), "engine/down": CollectorStatus(False, 0.5, 7)},
        gpu_specs={0: find("NVIDIA H100 80GB HBM3")}, gpu_prices={0: 3.0},  # type: ignore[dict-item]
        slo_ttft_seconds=1.0, slo_tpot_seconds=0.05, budget_cost_per_request_dollars=0.002,
    )


def scrape(snap: Snapshot) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snap))
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        families[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return families


def value(families: dict[str, list[tuple[str, dict[str, str], float]]], sample: str, **labels: str) -> float | None:
    for samples in families.values():
        for name, got, v in samples:
            if name == sample and all(got.get(k) == want for k, want in labels.items()):
                return v
    return None


def test_every_family_and_label_set_is_declared_in_the_catalogue() -> None:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    for metric in registry.collect():
        sample_specs = {s.name: s for s in metric.samples}
        for sample in metric.samples:
            base = sample.name
            for suffix in ("_count", "_sum"):
                if metric.type == "summary" and base.endswith(suffix):
                    base = base.removesuffix(suffix)
            spec = BY_NAME[base]
            assert spec.type == metric.type
            extra = {"quantile"} if metric.type == "summary" and "quantile" in sample.labels else set()
            assert set(sample.labels) == set(spec.labels) | extra, (sample.name, sample.labels)
        assert sample_specs


def test_gpu_values_in_base_units_and_unsupported_fields_absent() -> None:
    families = scrape(snapshot())
    assert value(families, "infermeter_gpu_power_watts", gpu="0") == 512.3
    assert value(families, "infermeter_gpu_energy_joules_total", gpu="0") == 123456.789
    assert value(families, "infermeter_gpu_info", gpu="1", name="NVIDIA H100 80GB HBM3",
                 driver_version="580.95.05") == 1
    assert value(families, "infermeter_gpu_utilization_ratio", gpu="1") == 0.1
    assert value(families, "infermeter_gpu_power_watts", gpu="1") is None  # absent, not 0


def test_engine_series() -> None:
    families = scrape(snapshot())
    llama = {"engine": "llama", "kind": "vllm", "model": "meta-llama/Llama-3.1-8B"}
    assert value(families, "infermeter_engine_up", **llama) == 1
    assert value(families, "infermeter_engine_info", version="0.10.2", **llama) == 1
    assert value(families, "infermeter_time_to_first_token_seconds", quantile="0.99", **llama) == 0.4
    assert value(families, "infermeter_time_to_first_token_seconds_count", **llama) == 10
    assert value(families, "infermeter_e2e_request_latency_seconds_sum", **llama) == 30.0
    assert value(families, "infermeter_e2e_request_latency_seconds", quantile="0.5") is None
    assert value(families, "infermeter_generation_tokens_per_second", **llama) == 2310.5
    assert value(families, "infermeter_prefix_cache_hit_ratio", **llama) == 0.25
    assert value(families, "infermeter_kv_cache_capacity_tokens", **llama) == 123456
    assert value(families, "infermeter_requests_waiting", **llama) is None
    assert value(families, "infermeter_engine_gpu_memory_used_bytes", **llama) == 6.9e10
    assert value(families, "infermeter_engine_gpu_info", engine="llama", gpu="0", uuid="GPU-0") == 1


def test_down_engine_exports_up_zero_and_nothing_derived() -> None:
    families = scrape(snapshot())
    assert value(families, "infermeter_engine_up", engine="down", kind="tgi") == 0
    assert value(families, "infermeter_engine_info", engine="down") is None
    assert value(families, "infermeter_collector_success", collector="engine/down") == 0
    assert value(families, "infermeter_collector_errors_total", collector="engine/down") == 7


def test_window_length_is_in_help_text_and_metric() -> None:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    text = generate_latest(registry).decode()
    assert "# HELP infermeter_prompt_tokens_per_second" not in text  # absent: not in the snapshot
    assert "over the last 300s (--window)" in text
    assert "infermeter_window_seconds 300.0" in text


def test_describe_lists_the_whole_catalogue() -> None:
    collector = SnapshotCollector(snapshot)
    described = {m.name for m in collector.describe()}
    assert len(described) == len(CATALOG)


def test_analysis_and_cost_series() -> None:
    families = scrape(snapshot())
    llama = {"engine": "llama", "kind": "vllm", "model": "meta-llama/Llama-3.1-8B"}
    assert value(families, "infermeter_kv_cache_bytes_per_token", **llama) == 131_072
    assert value(families, "infermeter_cost_dollars_per_hour", **llama) == 3.0
    assert value(families, "infermeter_cost_dollars_total", **llama) == 0.25
    assert value(families, "infermeter_memory_bandwidth_utilization_ratio", source="engine", **llama) == \
        pytest.approx(1e12 / 3.35e12)
    assert value(families, "infermeter_gpu_memory_breakdown_bytes", component="weights", **llama) == 16_060_522_496
    assert value(families, "infermeter_cost_per_million_tokens_dollars", token_type="total", **llama) == \
        pytest.approx(3.0 / (2800 * 3600) * 1e6)
    assert value(families, "infermeter_gpu_peak_flops", gpu="0", dtype="fp8") == 1978.9e12
    assert value(families, "infermeter_gpu_cost_dollars_per_hour", gpu="0") == 3.0
    assert value(families, "infermeter_slo_time_per_output_token_seconds") == 0.05
    assert value(families, "infermeter_budget_cost_per_request_dollars") == 0.002
    # nothing about the down engine or the unpriced GPU
    assert value(families, "infermeter_cost_dollars_per_hour", engine="down") is None
    assert value(families, "infermeter_gpu_cost_dollars_per_hour", gpu="1") is None


def test_rightsizing_series() -> None:
    families = scrape(snapshot())
    llama = {"engine": "llama", "kind": "vllm", "model": "meta-llama/Llama-3.1-8B"}
    # one series per state, exactly one of them 1
    states = {labels["state"]: v for _, labels, v in families["infermeter_rightsizing_state"]}
    assert states == {"overprovisioned": 1, "memory_bound": 0, "compute_bound": 0, "engine_limited": 0,
                      "sleeping": 0, "balanced": 0}
    assert value(families, "infermeter_rightsizing_state_changes_total", **llama) == 2
    assert value(families, "infermeter_rightsizing_gpus_needed", **llama) == 1
    assert value(families, "infermeter_rightsizing_plan_info", tensor_parallel="1", basis="calibrated", **llama) == 1
    assert value(families, "infermeter_rightsizing_savings_dollars_per_hour", **llama) == 0.5
    assert value(families, "infermeter_achievable_cost_per_million_tokens_dollars", **llama) == 0.27
    # evidence: what is known, and nothing for what is not (no NVML utilisation) or not finite (B* = 0)
    assert value(families, "infermeter_rightsizing_evidence_window_seconds", **llama) == 60
    assert value(families, "infermeter_rightsizing_loaded_ratio", **llama) == 0.5
    assert value(families, "infermeter_rightsizing_queueing_ratio", **llama) == 0
    assert value(families, "infermeter_rightsizing_kv_cache_full_ratio", **llama) == 0
    assert value(families, "infermeter_rightsizing_preemptions_per_second", **llama) == 0
    assert value(families, "infermeter_rightsizing_waiting_requests", **llama) == 0
    assert value(families, "infermeter_rightsizing_gpu_busy_ratio", **llama) is None
    assert value(families, "infermeter_rightsizing_batch_ratio", **llama) is None
    # the planner's inputs, and per phase its calibration or why there is none
    assert value(families, "infermeter_rightsizing_planned_requests_per_second", **llama) == 2
    assert value(families, "infermeter_rightsizing_planned_prompt_tokens", **llama) == 1000
    assert value(families, "infermeter_rightsizing_planned_output_tokens", **llama) == 400
    assert value(families, "infermeter_rightsizing_efficiency_ratio", phase="decode", **llama) == 0.45
    assert value(families, "infermeter_rightsizing_efficiency_ratio", phase="prefill") is None
    calibration = {labels["phase"]: (labels["basis"], labels["reason"])
                   for _, labels, _ in families["infermeter_rightsizing_calibration_info"]}
    assert calibration == {"decode": ("calibrated", ""), "prefill": ("roofline", "too_few_requests")}
    # nothing about the down engine
    assert not [labels for samples in families.values() for name, labels, _ in samples
                if name.startswith("infermeter_rightsizing_") and labels.get("engine") == "down"]


def test_no_state_series_before_the_state_has_held() -> None:
    held = snapshot()
    llama = held.engines[0]
    fresh = replace(llama.rightsizing, state=None, state_changes=0)  # type: ignore[type-var]
    families = scrape(replace(held, engines=(replace(llama, rightsizing=fresh),)))
    assert "infermeter_rightsizing_state" not in families
    assert value(families, "infermeter_rightsizing_state_changes_total") is None
    # the plan and the evidence do not wait for the state
    assert value(families, "infermeter_rightsizing_gpus_needed", engine="llama") == 1
    assert value(families, "infermeter_rightsizing_loaded_ratio", engine="llama") == 0.5
