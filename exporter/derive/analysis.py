"""Observed load held against the roofline, priced: expectations, efficiency, cost, right-sizing.

Pure: takes the windowed engine statistics, the model and GPU facts and the prices, returns
numbers. The rules and formulas are in docs/analytic-model.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exporter.derive import roofline
from exporter.derive.cost import engine_prompt_share
from exporter.derive.engine import EngineStats
from exporter.facts.gpus import GpuSpec
from exporter.facts.models import ModelSpec

# When nothing tells the context length: a common chat-serving mean (an assumption, documented).
DEFAULT_CONTEXT_TOKENS = 1024.0
# Right-sizing keeps this headroom: a replica is planned to be busy at most this share of the time.
TARGET_BUSY_SHARE = 0.8
# vLLM 0.34's gpu_memory_utilization when unset (vllm/config/cache.py: resolved_gpu_memory_utilization)
VLLM_EXTENSIBLE_KV_CACHE_UTILIZATION = 1.0
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92


@dataclass(frozen=True)
class Deployment:
    """What the engine runs on: model, GPU type, how many, their memory and prices."""

    model: ModelSpec
    gpu: GpuSpec
    gpus: int
    memory_bytes_per_gpu: float
    # dollars per hour of each of the engine's GPUs (None: no price known)
    price_per_gpu_hour: float | None
    # vLLM cache_config_info labels (cache_dtype, gpu_memory_utilization)
    engine_config: Mapping[str, str] = field(default_factory=dict)
    slo_ttft_seconds: float | None = None
    slo_tpot_seconds: float | None = None
    # data-parallel ranks behind the engine's URL: each is a replica with gpus / replicas GPUs
    # (its tensor-parallel shape) and a full copy of the weights
    replicas: int = 1

    @property
    def replica_gpus(self) -> int:
        return max(self.gpus // max(self.replicas, 1), 1)

    @property
    def kv_bytes(self) -> float:
        return roofline.kv_dtype_bytes(self.engine_config.get("cache_dtype"), self.model)

    @property
    def gpu_memory_utilization(self) -> float:
        """The engine's gpu_memory_utilization; vLLM 0.34 serves "None" when it was not set, and then uses
        1.0 with the extensible KV cache (sized from measured free memory) and 0.92 without
        (vllm/config/cache.py 0.34, CacheConfig.resolved_gpu_memory_utilization)."""
        text = self.engine_config.get("gpu_memory_utilization", "")
        if text == "None":
            extensible = self.engine_config.get("enable_extensible_kv_cache")
            if extensible == "True":
                return VLLM_EXTENSIBLE_KV_CACHE_UTILIZATION
            if extensible == "False":
                return VLLM_DEFAULT_GPU_MEMORY_UTILIZATION
        try:
            value = float(text)
        except ValueError:
            return roofline.DEFAULT_GPU_MEMORY_UTILIZATION
        return value if 0 < value <= 1 else roofline.DEFAULT_GPU_MEMORY_UTILIZATION


@dataclass(frozen=True)
class Load:
    """The observed load over the window, in the units the analytic model needs."""

    batch: float                  # mean running requests (at least 1 for the roofline)
    context: float                # mean tokens in the KV cache per running request
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
    requests_per_second: float
    mean_prompt_tokens: float | None  # every prompt token (what the KV cache holds)
    kv_tokens: float | None       # tokens in the KV cache now (usage x capacity)
    step_seconds: float | None    # observed decode step: mean inter-token latency over the window
    tpot_median_seconds: float | None
    # prompt tokens the engine computed (vLLM: prefix-cache hits and transferred KV left out; else every one)
    prompt_tokens_computed_per_second: float = 0.0
    mean_computed_prompt_tokens: float | None = None


@dataclass(frozen=True)
class Analysis:
    """Every derived number for one engine; None where an input is unknown."""

    model: ModelSpec
    kv_bytes_per_token: float
    model_weight_bytes: float
    expected_kv_capacity_tokens: float
    expected_tpot_seconds: float | None = None
    expected_ttft_seconds: float | None = None
    tpot_efficiency_ratio: float | None = None
    mbu: Mapping[str, float] = field(default_factory=dict)   # source ("analytic" | "engine") -> ratio
    mfu: Mapping[str, float] = field(default_factory=dict)
    memory_breakdown: Mapping[str, float] = field(default_factory=dict)  # weights | kv_cache | other
    # share of GPU time on prompts (the engine's own times, else the analytic ones), for the cost split
    prompt_time_share: float | None = None
    # share of the GPUs' bandwidth decode used over the window, idle time included (bandwidth_share)
    bandwidth_share: float | None = None


def observed_load(stats: EngineStats, replicas: int = 1) -> Load:
    """The load per replica (a data-parallel rank) where it matters: batch and context; rates stay whole."""
    rates = stats.counter_rates
    prompt_tps = rates.get("prompt_tokens", 0.0)
    generation_tps = rates.get("generation_tokens", 0.0)
    rps = rates.get("requests_finished", 0.0)
    running = stats.gauge_means.get("requests_running", stats.gauges.get("requests_running", 0.0))
    usage = stats.gauges.get("kv_cache_usage_ratio")
    capacity = stats.gauges.get("kv_cache_capacity_tokens")
    kv_tokens = usage * capacity if usage is not None and capacity else None
    mean_prompt = prompt_tps / rps if rps > 0 and prompt_tps > 0 else None
    computed_tps = stats.prompt_tokens_computed_per_second()
    mean_computed = computed_tps / rps if rps > 0 and computed_tps > 0 else None
    mean_output = generation_tps / rps if rps > 0 and generation_tps > 0 else None
    now_running = stats.gauges.get("requests_running", 0.0)
    if kv_tokens and now_running > 0:
        context = kv_tokens / now_running
    elif mean_prompt is not None:
        context = mean_prompt + (mean_output or 0.0) / 2
    else:
        context = DEFAULT_CONTEXT_TOKENS
    itl = stats.latency.get("inter_token_latency") or stats.latency.get("time_per_output_token")
    # engines without a per-request TPOT histogram (SGLang): the inter-token latency, the same decode step
    tpot = stats.latency.get("time_per_output_token") or stats.latency.get("inter_token_latency")
    return Load(batch=max(running / max(replicas, 1), 1.0), context=context, prompt_tokens_per_second=prompt_tps,
                generation_tokens_per_second=generation_tps, requests_per_second=rps,
                mean_prompt_tokens=mean_prompt, kv_tokens=kv_tokens,
                step_seconds=itl.window_mean if itl else None,
                tpot_median_seconds=tpot.quantiles.get(0.5) if tpot else None,
                prompt_tokens_computed_per_second=computed_tps, mean_computed_prompt_tokens=mean_computed)


def analyse(stats: EngineStats, deployment: Deployment, gpu_utilization: Sequence[float],
            gpu_memory_used_bytes: float | None) -> Analysis:
    """Expectations, efficiency, cost and right-sizing of one engine over the window."""
    model, gpu, n, replicas = deployment.model, deployment.gpu, deployment.replica_gpus, deployment.replicas
    kv_bytes = deployment.kv_bytes
    load = observed_load(stats, replicas)
    kv_per_token = roofline.kv_bytes_per_token(model, kv_bytes)
    capacity = replicas * roofline.kv_capacity_tokens(model, n, deployment.memory_bytes_per_gpu, kv_bytes,
                                                      deployment.gpu_memory_utilization)
    decode = roofline.decode_step(model, gpu, n, load.batch, load.context, kv_bytes)
    # the prefill of the mean prompt's computed part (a prefix-cache hit or transferred KV is not computed)
    prompt = load.mean_computed_prompt_tokens or load.mean_prompt_tokens or load.context
    prefill = roofline.prefill(model, gpu, n, prompt)
    expected_tpot = decode.seconds if decode else None
    efficiency = (expected_tpot / load.tpot_median_seconds
                  if expected_tpot and load.tpot_median_seconds else None)

    mbu: dict[str, float] = {}
    if load.step_seconds and load.kv_tokens is not None:
        bytes_per_step = roofline.decode_bytes_per_step(model, load.batch, load.kv_tokens / replicas, kv_bytes)
        value = roofline.memory_bandwidth_utilization(bytes_per_step, load.step_seconds, gpu, n)
        if value is not None:
            mbu["analytic"] = value
    read_rate = stats.counter_rates.get("engine_read_bytes_per_gpu")
    if read_rate is not None:
        # vLLM's memory traffic is read + write bytes (vllm/v1/metrics/perf.py, 0.32-0.34)
        moved = read_rate + stats.counter_rates.get("engine_write_bytes_per_gpu", 0.0)
        mbu["engine"] = moved / gpu.memory_bandwidth_bytes_per_second
    mfu: dict[str, float] = {}
    tokens_per_second = load.prompt_tokens_computed_per_second + load.generation_tokens_per_second
    analytic_mfu = roofline.model_flops_utilization(model, gpu, deployment.gpus, tokens_per_second)
    if analytic_mfu is not None:
        mfu["analytic"] = analytic_mfu
    flops_rate = stats.counter_rates.get("engine_flops_per_gpu")
    peak = roofline.peak_flops(gpu, model)
    if flops_rate is not None and peak:
        mfu["engine"] = flops_rate / peak

    breakdown = memory_breakdown(model.weight_bytes * replicas, stats.gauges.get("kv_cache_capacity_tokens"),
                                 kv_per_token, gpu_memory_used_bytes)
    share = prompt_time_share(stats, load, decode, prefill)
    return Analysis(
        model=model, kv_bytes_per_token=kv_per_token, model_weight_bytes=model.weight_bytes,
        expected_kv_capacity_tokens=capacity, expected_tpot_seconds=expected_tpot,
        expected_ttft_seconds=prefill.seconds if prefill else None, tpot_efficiency_ratio=efficiency,
        mbu=mbu, mfu=mfu, memory_breakdown=breakdown, prompt_time_share=share,
        bandwidth_share=bandwidth_share(load, deployment))


def memory_breakdown(weights: float, kv_capacity_tokens: float | None, kv_per_token: float,
                     used_bytes: float | None) -> dict[str, float]:
    """Weights and the KV pool (analytic sizes); the rest of what NVML says is used is "other"."""
    parts = {"weights": weights}
    if kv_capacity_tokens:
        parts["kv_cache"] = kv_capacity_tokens * kv_per_token
    if used_bytes is not None and "kv_cache" in parts:
        parts["other"] = max(used_bytes - parts["weights"] - parts["kv_cache"], 0.0)
    return parts


def bandwidth_share(load: Load, deployment: Deployment) -> float:
    """Share of the GPUs' bandwidth decode used over the window: steps per second x bytes per step.

    Unlike MBU (bytes per step over the step time), this counts the time the GPUs sat idle.
    """
    steps_per_second = load.generation_tokens_per_second / (load.batch * deployment.replicas)
    kv_tokens = (load.kv_tokens or 0.0) / deployment.replicas
    moved = roofline.decode_bytes_per_step(deployment.model, load.batch, kv_tokens, deployment.kv_bytes)
    return steps_per_second * deployment.replicas * moved / (
        deployment.gpus * deployment.gpu.memory_bandwidth_bytes_per_second)


def prompt_time_share(stats: EngineStats, load: Load, decode: roofline.StepTime | None,
                      prefill: roofline.StepTime | None) -> float | None:
    """Share of GPU time spent on prompts: the engine's own prefill/decode time where it reports it
    (cost.engine_prompt_share), else the analytic times of the observed token rates, counting the prompt
    tokens the engine computed (not its prefix-cache hits)."""
    own = engine_prompt_share(stats)
    if own is not None:
        return own
    computed = load.mean_computed_prompt_tokens
    if decode is None or prefill is None or computed is None:
        return None
    # prefills per second x the prefill of the mean computed prompt (``prefill``)
    prompt_time = load.prompt_tokens_computed_per_second * prefill.seconds / computed
    generation_time = load.generation_tokens_per_second * decode.seconds / load.batch
    total = prompt_time + generation_time
    return prompt_time / total if total > 0 else None
