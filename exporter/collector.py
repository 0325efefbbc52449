"""The Prometheus collector: turns the latest snapshot into metric families, with no I/O.

Example exposition::

    infermeter_gpu_power_watts{gpu="0",uuid="GPU-8f6c..."} 512.3
    infermeter_engine_up{engine="llama",kind="vllm",model="meta-llama/Llama-3.1-8B-Instruct"} 1
    infermeter_time_to_first_token_seconds{engine="llama",kind="vllm",model="...",quantile="0.95"} 0.21
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.catalog import CATALOG, MetricSpec, help_text
from exporter.collection import Snapshot
from exporter.derive.rightsizing import PHASES, Rightsizing
from exporter.derive.verdict import STATES
from exporter.derive.whatif import WhatIf
from exporter.samples import GpuSample

# GPU gauge/counter name -> GpuSample field
GPU_FIELDS: dict[str, str] = {
    "infermeter_gpu_utilization_ratio": "utilization_ratio",
    "infermeter_gpu_memory_bandwidth_utilization_ratio": "memory_bandwidth_utilization_ratio",
    "infermeter_gpu_memory_used_bytes": "memory_used_bytes",
    "infermeter_gpu_memory_total_bytes": "memory_total_bytes",
    "infermeter_gpu_power_watts": "power_watts",
    "infermeter_gpu_power_limit_watts": "power_limit_watts",
    "infermeter_gpu_temperature_celsius": "temperature_celsius",
    "infermeter_gpu_sm_clock_hertz": "sm_clock_hertz",
    "infermeter_gpu_energy_joules_total": "energy_joules",
}

# summary name -> canonical histogram
LATENCIES: dict[str, str] = {
    "infermeter_time_to_first_token_seconds": "time_to_first_token",
    "infermeter_time_per_output_token_seconds": "time_per_output_token",
    "infermeter_inter_token_latency_seconds": "inter_token_latency",
    "infermeter_e2e_request_latency_seconds": "e2e_request_latency",
    "infermeter_queue_time_seconds": "queue_time",
    "infermeter_request_render_duration_seconds": "render_duration",
}

ENGINE_GAUGES: dict[str, str] = {
    "infermeter_requests_running": "requests_running",
    "infermeter_requests_waiting": "requests_waiting",
    "infermeter_kv_cache_usage_ratio": "kv_cache_usage_ratio",
    "infermeter_kv_cache_capacity_tokens": "kv_cache_capacity_tokens",
}
# infermeter_requests_waiting_by_reason: reason -> canonical gauge
WAITING_REASONS: dict[str, str] = {"capacity": "requests_waiting_capacity", "deferred": "requests_waiting_deferred"}


@dataclass(frozen=True)
class Point:
    """One sample: family name, sample-name suffix (``_count``, ``_sum`` or ""), labels, value."""

    family: str
    labels: dict[str, str]
    value: float
    suffix: str = ""


def _gpu_labels(gpu: GpuSample) -> dict[str, str]:
    return {"gpu": str(gpu.index), "uuid": gpu.uuid}


def gpu_points(snapshot: Snapshot) -> Iterator[Point]:
    if snapshot.nvml is None:
        return
    for gpu in snapshot.nvml.gpus:
        labels = _gpu_labels(gpu)
        yield Point("infermeter_gpu_info", {**labels, "name": gpu.name,
                                            "driver_version": snapshot.nvml.driver_version or ""}, 1)
        for family, field_name in GPU_FIELDS.items():
            value = getattr(gpu, field_name)
            if value is not None:
                yield Point(family, labels, value)


def engine_points(snapshot: Snapshot) -> Iterator[Point]:
    for engine in snapshot.engines:
        labels = {"engine": engine.name, "kind": engine.kind, "model": engine.model}
        yield Point("infermeter_engine_up", labels, 1 if engine.up else 0)
        for gpu in engine.gpus:
            yield Point("infermeter_engine_gpu_info", {"engine": engine.name, **_gpu_labels(gpu)}, 1)
        if engine.gpu_memory_used_bytes is not None:
            yield Point("infermeter_engine_gpu_memory_used_bytes", labels, engine.gpu_memory_used_bytes)
        if engine.stats is None:
            continue
        yield Point("infermeter_engine_info", {**labels, "version": engine.version}, 1)
        stats = engine.stats
        for family, histogram in LATENCIES.items():
            summary = stats.latency.get(histogram)
            if summary is None:
                continue
            for q, value in summary.quantiles.items():
                yield Point(family, {**labels, "quantile": f"{q:g}"}, value)
            for q, (lower, upper) in summary.bounds.items():
                bound_labels = {**labels, "histogram": histogram, "q": f"{q:g}"}  # "quantile" is for summaries
                yield Point("infermeter_latency_quantile_bound_seconds", {**bound_labels, "bound": "lower"}, lower)
                yield Point("infermeter_latency_quantile_bound_seconds", {**bound_labels, "bound": "upper"}, upper)
            yield Point(family, labels, summary.count, "_count")
            yield Point(family, labels, summary.sum, "_sum")
        for name, value in stats.rates.items():
            yield Point("infermeter_" + name, labels, value)
        if stats.prefix_cache_hit_ratio is not None:
            yield Point("infermeter_prefix_cache_hit_ratio", labels, stats.prefix_cache_hit_ratio)
        for tier, ratio in stats.prefix_cache_tier_hit_ratios.items():
            yield Point("infermeter_prefix_cache_tier_hit_ratio", {**labels, "tier": tier}, ratio)
        if stats.spec_decode_acceptance_ratio is not None:
            yield Point("infermeter_spec_decode_acceptance_ratio", labels, stats.spec_decode_acceptance_ratio)
        if stats.spec_decode_mean_acceptance_length is not None:
            yield Point("infermeter_spec_decode_mean_acceptance_length_tokens", labels,
                        stats.spec_decode_mean_acceptance_length)
        for outcome, rate in stats.outcome_rates.items():
            yield Point("infermeter_request_outcomes_per_second", {**labels, "outcome": outcome}, rate)
        for family, gauge in ENGINE_GAUGES.items():
            if gauge in stats.gauges:
                yield Point(family, labels, stats.gauges[gauge])
        for reason, gauge in WAITING_REASONS.items():
            if gauge in stats.gauges:
                yield Point("infermeter_requests_waiting_by_reason", {**labels, "reason": reason}, stats.gauges[gauge])


def gpu_fact_points(snapshot: Snapshot) -> Iterator[Point]:
    if snapshot.nvml is None:
        return
    for gpu in snapshot.nvml.gpus:
        labels = _gpu_labels(gpu)
        spec = snapshot.gpu_specs.get(gpu.index)
        if spec is not None:
            for dtype, flops in sorted(spec.peak_flops.items()):
                yield Point("infermeter_gpu_peak_flops", {**labels, "dtype": dtype}, flops)
            yield Point("infermeter_gpu_memory_bandwidth_bytes_per_second", labels,
                        spec.memory_bandwidth_bytes_per_second)
        if gpu.index in snapshot.gpu_prices:
            yield Point("infermeter_gpu_cost_dollars_per_hour", labels, snapshot.gpu_prices[gpu.index])


# Analysis field -> gauge
ANALYSIS_GAUGES: dict[str, str] = {
    "infermeter_model_weight_bytes": "model_weight_bytes",
    "infermeter_kv_cache_bytes_per_token": "kv_bytes_per_token",
    "infermeter_expected_kv_cache_capacity_tokens": "expected_kv_capacity_tokens",
    "infermeter_expected_time_per_output_token_seconds": "expected_tpot_seconds",
    "infermeter_expected_time_to_first_token_seconds": "expected_ttft_seconds",
    "infermeter_tpot_efficiency_ratio": "tpot_efficiency_ratio",
}
# Analysis mapping field -> (gauge, label name)
ANALYSIS_BREAKDOWNS: dict[str, tuple[str, str]] = {
    "infermeter_memory_bandwidth_utilization_ratio": ("mbu", "source"),
    "infermeter_model_flops_utilization_ratio": ("mfu", "source"),
    "infermeter_gpu_memory_breakdown_bytes": ("memory_breakdown", "component"),
}
COST_GAUGES: dict[str, str] = {
    "infermeter_cost_dollars_per_hour": "per_hour",
    "infermeter_cost_per_request_dollars": "per_request",
    "infermeter_idle_cost_dollars_per_hour": "idle_per_hour",
}


def analysis_points(snapshot: Snapshot) -> Iterator[Point]:
    for engine in snapshot.engines:
        labels = {"engine": engine.name, "kind": engine.kind, "model": engine.model}
        if engine.cost_dollars_total is not None:
            yield Point("infermeter_cost_dollars_total", labels, engine.cost_dollars_total)
        if engine.costs is not None:
            for family, field_name in COST_GAUGES.items():
                value = getattr(engine.costs, field_name)
                if value is not None:
                    yield Point(family, labels, value)
            for token_type, value in sorted(engine.costs.per_million_tokens.items()):
                yield Point("infermeter_cost_per_million_tokens_dollars", {**labels, "token_type": token_type}, value)
        yield from whatif_points(engine.whatif, labels)
        yield from rightsizing_points(engine.rightsizing, labels)
        analysis = engine.analysis
        if analysis is None:
            continue
        model = analysis.model
        yield Point("infermeter_model_info", {**labels, "architecture": model.architecture,
                                              "weight_dtype": model.weight_dtype, "spec_source": model.source}, 1)
        for family, field_name in ANALYSIS_GAUGES.items():
            value = getattr(analysis, field_name)
            if value is not None:
                yield Point(family, labels, value)
        for family, (field_name, label) in ANALYSIS_BREAKDOWNS.items():
            for key, value in sorted(getattr(analysis, field_name).items()):
                yield Point(family, {**labels, label: key}, value)


# Rightsizing / Evidence field -> gauge
RIGHTSIZING_GAUGES: dict[str, str] = {
    "infermeter_rightsizing_gpus_needed": "gpus_needed",
    "infermeter_rightsizing_savings_dollars_per_hour": "savings_per_hour",
    "infermeter_achievable_cost_per_million_tokens_dollars": "achievable_cost_per_million_tokens",
}
EVIDENCE_GAUGES: dict[str, str] = {
    "infermeter_rightsizing_evidence_window_seconds": "seconds",
    "infermeter_rightsizing_loaded_ratio": "loaded_ratio",
    "infermeter_rightsizing_queueing_ratio": "queueing_ratio",
    "infermeter_rightsizing_kv_cache_full_ratio": "kv_full_ratio",
    "infermeter_rightsizing_preemptions_per_second": "preemptions_per_second",
    "infermeter_rightsizing_waiting_requests": "waiting_requests",
    "infermeter_rightsizing_gpu_busy_ratio": "gpu_busy_ratio",
    "infermeter_rightsizing_batch_ratio": "batch_ratio",
}


def rightsizing_points(sizing: Rightsizing | None, labels: dict[str, str]) -> Iterator[Point]:
    if sizing is None:
        return
    if sizing.state is not None:
        for state in STATES:
            yield Point("infermeter_rightsizing_state", {**labels, "state": state}, 1 if state == sizing.state else 0)
        yield Point("infermeter_rightsizing_state_changes_total", labels, sizing.state_changes)
    if sizing.evidence is not None:
        for family, field_name in EVIDENCE_GAUGES.items():
            value = getattr(sizing.evidence, field_name)
            if value is not None and math.isfinite(value):
                yield Point(family, labels, value)
    for family, field_name in RIGHTSIZING_GAUGES.items():
        value = getattr(sizing, field_name)
        if value is not None:
            yield Point(family, labels, value)
    inputs = sizing.inputs
    if sizing.tensor_parallel is not None:
        yield Point("infermeter_rightsizing_plan_info",
                    {**labels, "tensor_parallel": str(sizing.tensor_parallel), "basis": inputs.basis,
                     "kv_cache_dtype": inputs.kv_cache_dtype}, 1)
    workload = inputs.workload
    yield Point("infermeter_rightsizing_planned_requests_per_second", labels, workload.requests_per_second)
    yield Point("infermeter_rightsizing_planned_prompt_tokens", labels, workload.prompt_tokens)
    if workload.computed_prompt_tokens is not None:
        yield Point("infermeter_rightsizing_planned_computed_prompt_tokens", labels, workload.computed_prompt_tokens)
    yield Point("infermeter_rightsizing_planned_output_tokens", labels, workload.output_tokens)
    for phase in PHASES:
        efficiency = getattr(inputs.calibration, phase)
        if efficiency is not None:
            yield Point("infermeter_rightsizing_efficiency_ratio", {**labels, "phase": phase}, efficiency)
        reason = inputs.reasons.get(phase, "")
        yield Point("infermeter_rightsizing_calibration_info",
                    {**labels, "phase": phase, "basis": "roofline" if efficiency is None else "calibrated",
                     "reason": reason}, 1)


def whatif_points(advice: WhatIf | None, labels: dict[str, str]) -> Iterator[Point]:
    if advice is None:
        return
    for option in advice.options:
        gpu_labels = {**labels, "gpu_model": option.gpu_model}
        yield Point("infermeter_whatif_gpus_needed", gpu_labels, option.gpus)
        if option.dollars_per_hour is not None:
            yield Point("infermeter_whatif_cost_dollars_per_hour", gpu_labels, option.dollars_per_hour)
    if advice.best is not None:
        yield Point("infermeter_whatif_best_gpu_info", {**labels, "gpu_model": advice.best.gpu_model,
                                                        "tensor_parallel": str(advice.best.tensor_parallel),
                                                        "basis": advice.basis}, 1)
    if advice.savings_per_hour is not None:
        yield Point("infermeter_whatif_savings_dollars_per_hour", labels, advice.savings_per_hour)


def self_points(snapshot: Snapshot) -> Iterator[Point]:
    for collector, status in sorted(snapshot.collectors.items()):
        labels = {"collector": collector}
        yield Point("infermeter_collector_success", labels, 1 if status.success else 0)
        yield Point("infermeter_collector_duration_seconds", labels, status.duration_seconds)
        yield Point("infermeter_collector_errors_total", labels, status.errors_total)
    if snapshot.timestamp is not None:
        yield Point("infermeter_last_collect_timestamp_seconds", {}, snapshot.timestamp)
    yield Point("infermeter_window_seconds", {}, snapshot.window_seconds)
    if snapshot.slo_ttft_seconds is not None:
        yield Point("infermeter_slo_time_to_first_token_seconds", {}, snapshot.slo_ttft_seconds)
    if snapshot.slo_tpot_seconds is not None:
        yield Point("infermeter_slo_time_per_output_token_seconds", {}, snapshot.slo_tpot_seconds)
    if snapshot.budget_cost_per_request_dollars is not None:
        yield Point("infermeter_budget_cost_per_request_dollars", {}, snapshot.budget_cost_per_request_dollars)
    if snapshot.whatif_savings_threshold_ratio is not None:
        yield Point("infermeter_whatif_savings_threshold_ratio", {}, snapshot.whatif_savings_threshold_ratio)
    yield Point("infermeter_build_info", {"version": __version__}, 1)
    for engine, scenario in sorted(snapshot.demo_engines.items()):
        yield Point("infermeter_demo_info", {"engine": engine, "scenario": scenario}, 1)


POINTS: tuple[Callable[[Snapshot], Iterator[Point]], ...] = (gpu_points, gpu_fact_points, engine_points,
                                                              analysis_points, self_points)


def _family(spec: MetricSpec, window_seconds: float) -> Metric:
    name = spec.name
    if spec.type == "counter":
        name = name.removesuffix("_total")
    elif spec.type == "info":
        name = name.removesuffix("_info")
    return Metric(name, help_text(spec, window_seconds), spec.type)


def _sample_name(spec: MetricSpec, point: Point) -> str:
    return spec.name + point.suffix


class SnapshotCollector(Collector):
    """Serves whatever snapshot ``current()`` returns; safe to call from many scrape threads."""

    def __init__(self, current: Callable[[], Snapshot]) -> None:
        self._current = current

    def describe(self) -> Iterator[Metric]:
        window = self._current().window_seconds
        for spec in CATALOG:
            yield _family(spec, window)

    def collect(self) -> Iterator[Metric]:
        snapshot = self._current()
        by_family: dict[str, list[Point]] = defaultdict(list)
        for make_points in POINTS:
            for point in make_points(snapshot):
                by_family[point.family].append(point)
        for spec in CATALOG:
            points = by_family.get(spec.name)
            if not points:
                continue
            family = _family(spec, snapshot.window_seconds)
            for point in points:
                family.add_sample(_sample_name(spec, point), point.labels, float(point.value))
            yield family
