"""Plain typed samples: what the sources hand to the derivations, in base units.

A field a GPU or engine does not provide is ``None`` (never 0 or NaN); the collector then
emits no series for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuProcess:
    """A compute process NVML lists on one GPU."""

    pid: int
    used_memory_bytes: float | None


@dataclass(frozen=True)
class GpuSample:
    """One GPU read once through NVML, converted to base units."""

    index: int
    uuid: str
    name: str
    utilization_ratio: float | None = None
    memory_bandwidth_utilization_ratio: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_celsius: float | None = None
    sm_clock_hertz: float | None = None
    energy_joules: float | None = None
    # None: NVML could not list processes (unsupported, or not visible from this PID namespace).
    processes: tuple[GpuProcess, ...] | None = None


@dataclass(frozen=True)
class NvmlReading:
    """Every GPU NVML could read in one pass."""

    driver_version: str | None
    gpus: tuple[GpuSample, ...]
    # Indices of GPUs NVML lists but could not read this pass (lost, fallen off the bus).
    failed_gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Histogram:
    """A classic Prometheus histogram: cumulative counts per upper bound, the last bound +Inf.

    The counts are a tuple, except in a sample window, which keeps them as an ``array('d')`` (8 bytes a
    count instead of 32; exporter.derive.window); neither is ever changed after it is made."""

    bounds: tuple[float, ...]
    cumulative_counts: Sequence[float]
    sum: float
    count: float

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.cumulative_counts):
            raise ValueError("a histogram needs one count per bound")
        if not self.bounds or self.bounds[-1] != math.inf:
            raise ValueError("a histogram's last bound must be +Inf")


@dataclass(frozen=True)
class EngineSample:
    """One scrape of an inference server, mapped onto infermeter's canonical fields.

    ``counters`` keys: prompt_tokens (every prompt token, prefix-cache hits included),
    prompt_tokens_computed (the prompt tokens the engine computed: vLLM
    prompt_tokens_by_source{source="local_compute"}), generation_tokens, requests_finished (every finished
    request), requests_aborted (vLLM request_success{finished_reason="abort"}; SGLang
    num_aborted_requests_total) and requests_failed (vLLM request_success{finished_reason="error"}): completed =
    requests_finished - requests_aborted - requests_failed (stop, length, repetition), admission_rejections
    (vLLM admission_rejections_total, every reason), preemptions, prefix_cache_queries, prefix_cache_hits,
    prefix_cache_hits_<tier> (vLLM prompt_tokens_cached_by_source per tier: device, host, disk, p2p,
    external_unspecified), prefill_seconds and decode_seconds (GPU time the engine spent in each phase),
    engine_flops_per_gpu, engine_read_bytes_per_gpu and engine_write_bytes_per_gpu (vLLM/SGLang's own
    estimates; MBU source="engine" uses read + write), spec_decode_drafts, spec_decode_draft_tokens and
    spec_decode_accepted_tokens (speculative decoding).
    ``gauges`` keys: requests_running, requests_waiting (every waiting request),
    requests_waiting_capacity and requests_waiting_deferred (vLLM num_requests_waiting_by_reason),
    kv_cache_usage_ratio, kv_cache_capacity_tokens, prefix_cache_hit_ratio and spec_decode_acceptance_ratio
    (engines that only report a ratio), data_parallel_ranks, sleep_level (vLLM sleep mode: 0 awake, 1
    weights offloaded, 2 everything discarded).
    ``histograms`` keys: time_to_first_token, time_per_output_token, inter_token_latency,
    e2e_request_latency, queue_time, render_duration (vLLM 0.34+: rendering a request in the API server).
    Only what the engine reported is present.
    """

    timestamp: float
    kind: str
    counters: Mapping[str, float] = field(default_factory=dict)
    gauges: Mapping[str, float] = field(default_factory=dict)
    histograms: Mapping[str, Histogram] = field(default_factory=dict)
    # The model name the metrics carry (vLLM `model_name`), when they carry one.
    model_label: str | None = None
    # Engine configuration the metrics carry (vLLM cache_config_info labels: cache_dtype,
    # gpu_memory_utilization, block_size, ...), for the analytic model.
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineIdentity:
    """What an engine's identity endpoint says about it (vLLM /v1/models + /version, TGI /info)."""

    model: str | None = None
    version: str | None = None
    # Where the engine loaded the model from (vLLM /v1/models "root"), when it says.
    model_root: str | None = None
    # TGI /info max_batch_total_tokens, where the build reports it.
    max_batch_total_tokens: float | None = None
