"""vLLM: V0 (``vllm/engine/metrics.py``) and V1 (``vllm/v1/metrics/loggers.py``) metric names.

Sources read: vLLM V1 ``PrometheusStatLogger`` (v0.10.x, the 0.12 era, and the release wheels of 0.32.0,
0.33.0 and 0.34.0: vllm/v1/metrics/loggers.py, perf.py, stats.py, vllm/v1/spec_decode/metrics.py,
vllm/v1/core/kv_cache_utils.py, vllm/config/cache.py) and V0 ``Metrics`` (~v0.6); the renames, the
versions each fallback name serves (FALLBACK_VERSIONS) and what each version gives are in docs/engines.md.
Counters carry ``_total`` on the wire. Series carry ``model_name`` and, since ~v0.9, ``engine`` (the
data-parallel rank); ``cache_config_info`` carries ``engine`` but no ``model_name``;
``admission_rejections_total`` (the API server's) carries ``model_name`` and ``reason`` but no ``engine``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from exporter.samples import EngineIdentity, EngineSample
from exporter.sources.engines import (
    Adapter,
    EngineNames,
    capacity_weighted_mean,
    check_pin,
    label_totals,
    served_model,
)
from exporter.sources.exposition import Exposition, finite_sum

NAMES = EngineNames(
    kind="vllm",
    prefix="vllm:",
    model_label="model_name",
    counters={
        "prompt_tokens": ("vllm:prompt_tokens_total",),
        "generation_tokens": ("vllm:generation_tokens_total",),
        "requests_finished": ("vllm:request_success_total",),
        "preemptions": ("vllm:num_preemptions_total",),
        # renamed in 0.9 (gpu_prefix_cache_* deprecated, both served for a while)
        "prefix_cache_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
        "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
        # time requests spent in prefill and decode (the cost split by GPU time)
        "prefill_seconds": ("vllm:request_prefill_time_seconds_sum",),
        "decode_seconds": ("vllm:request_decode_time_seconds_sum",),
        # speculative decoding (V1 vllm/v1/spec_decode/metrics.py SpecDecodingProm; V0 had the same counters)
        "spec_decode_drafts": ("vllm:spec_decode_num_drafts_total",),
        "spec_decode_draft_tokens": ("vllm:spec_decode_num_draft_tokens_total",),
        "spec_decode_accepted_tokens": ("vllm:spec_decode_num_accepted_tokens_total",),
        # the API server's queue limits (--max-num-queued-reqs/-tokens), every reason (loggers.py 0.32-0.34)
        "admission_rejections": ("vllm:admission_rejections_total",),
    },
    gauges={
        "requests_running": ("vllm:num_requests_running",),
        "requests_waiting": ("vllm:num_requests_waiting",),
        # V0 reported a hit-rate gauge instead of counters
        "prefix_cache_hit_ratio": ("vllm:gpu_prefix_cache_hit_rate",),
        # V0 also reported the acceptance rate as a 0..1 gauge (vllm/engine/metrics.py)
        "spec_decode_acceptance_ratio": ("vllm:spec_decode_draft_acceptance_rate",),
    },
    histograms={
        "time_to_first_token": ("vllm:time_to_first_token_seconds",),
        # per-request TPOT since 0.11; before, time_per_output_token observed every inter-token gap
        "time_per_output_token": ("vllm:request_time_per_output_token_seconds",
                                  "vllm:time_per_output_token_seconds"),
        # renamed in 0.11 from time_per_output_token_seconds (same observations)
        "inter_token_latency": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        "e2e_request_latency": ("vllm:e2e_request_latency_seconds",),
        # V0 had time_in_queue_requests before request_queue_time_seconds
        "queue_time": ("vllm:request_queue_time_seconds", "vllm:time_in_queue_requests"),
        # 0.34+ (vllm/renderers/metrics.py, observed by online_renderer.py render_chat/render_completion): request
        # checks, chat template, tokenisation and multimodal preprocessing in the API server, registered at the
        # first request; TTFT's clock starts inside this span, so most of it is already in TTFT
        "render_duration": ("vllm:request_render_duration_seconds",),
    },
)

# --enable-mfu-metrics: vLLM's own estimates, per GPU (averaged over data-parallel ranks, not summed);
# vllm/v1/metrics/perf.py (0.32-0.34) counts memory traffic as read + write bytes
PER_GPU = {"engine_flops_per_gpu": "vllm:estimated_flops_per_gpu_total",
           "engine_read_bytes_per_gpu": "vllm:estimated_read_bytes_per_gpu_total",
           "engine_write_bytes_per_gpu": "vllm:estimated_write_bytes_per_gpu_total"}
# request_success_total's finished_reason (vllm/v1/engine/__init__.py FinishReason: stop, length, abort, error,
# repetition in 0.32-0.34; stop, length, abort in 0.10) -> the canonical counter of that outcome
SUCCESS = "vllm:request_success_total"
OUTCOMES = {"requests_aborted": "abort", "requests_failed": "error"}
# prompt tokens by where their KV came from (vllm/v1/metrics/stats.py PromptTokenStats): the ones computed
PROMPT_BY_SOURCE = "vllm:prompt_tokens_by_source_total"
COMPUTED_SOURCE = "local_compute"
# prefix-cache hit tokens by the tier that supplied them (vllm/v1/metrics/cache_hit_source.py CacheHitSource)
CACHED_BY_SOURCE = "vllm:prompt_tokens_cached_by_source_total"
CACHE_TIERS = ("device", "host", "disk", "p2p", "external_unspecified")
# waiting requests by reason (loggers.py): capacity (scheduling capacity) or deferred (LoRA budget, KV
# transfer, blocked); they sum to vllm:num_requests_waiting
WAITING_BY_REASON = "vllm:num_requests_waiting_by_reason"
WAITING_REASONS = {"requests_waiting_capacity": "capacity", "requests_waiting_deferred": "deferred"}
# renamed in 0.9: gpu_cache_usage_perc -> kv_cache_usage_perc (both 0..1 fractions)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
CACHE_CONFIG = "vllm:cache_config_info"
# --enable-sleep-mode (vllm/v1/metrics/loggers.py): one series per sleep_state, 1 on the current one
SLEEP_STATE = "vllm:engine_sleep_state"
SLEEP_LEVELS = {"awake": 0.0, "weights_offloaded": 1.0, "discard_all": 2.0}
# fields adapt() computes beyond the name tables: field kind -> field -> the wire names it comes from,
# preferred first (docs/engines.md's tables)
COMPUTED: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "counter": {
        **{name: (f"{wire} (mean over data-parallel ranks)",) for name, wire in PER_GPU.items()},
        **{name: (f'{SUCCESS}{{finished_reason="{reason}"}}',) for name, reason in OUTCOMES.items()},
        "prompt_tokens_computed": (f'{PROMPT_BY_SOURCE}{{source="{COMPUTED_SOURCE}"}}',),
        **{f"prefix_cache_hits_{tier}": (f'{CACHED_BY_SOURCE}{{source="{tier}"}}',) for tier in CACHE_TIERS},
    },
    "gauge": {
        **{name: (f'{WAITING_BY_REASON}{{reason="{reason}"}}',) for name, reason in WAITING_REASONS.items()},
        "kv_cache_usage_ratio": KV_USAGE,
        "kv_cache_capacity_tokens": (f"{CACHE_CONFIG} kv_cache_size_tokens",
                                     f"{CACHE_CONFIG} num_gpu_blocks x block_size"),
        "sleep_level": (f"{SLEEP_STATE} (awake 0, weights_offloaded 1, discard_all 2)",),
        "data_parallel_ranks": ("vllm:num_requests_running (engine label values)",),
    },
}
# Names no release from 0.32 on serves, and the supported versions that need each (docs/engines.md).
FALLBACK_VERSIONS: dict[str, str] = {
    "vllm:gpu_prefix_cache_queries_total": "0.9-0.11 (deprecated name, served beside the new one)",
    "vllm:gpu_prefix_cache_hits_total": "0.9-0.11 (deprecated name, served beside the new one)",
    "vllm:gpu_prefix_cache_hit_rate": "V0 (~0.6)",
    "vllm:spec_decode_draft_acceptance_rate": "V0 with speculative decoding",
    "vllm:time_per_output_token_seconds": "V0 and V1 up to 0.11 (0.12 with --show-hidden-metrics-for-version)",
    "vllm:time_in_queue_requests": "V0",
    "vllm:gpu_cache_usage_perc": "V0 and V1 up to 0.11",
}


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def kv_capacity_by_rank(exposition: Exposition) -> dict[str, float]:
    """KV cache capacity in tokens per data-parallel rank, from cache_config_info labels: vLLM's group-aware
    ``kv_cache_size_tokens`` (vllm/config/cache.py, set by update_kv_cache_capacity in
    vllm/v1/core/kv_cache_utils.py; 0.32-0.34), which counts what a request takes in every KV cache group of a
    hybrid model (sliding window, Mamba, mixed attention: there ``num_gpu_blocks x block_size`` overstates it,
    vllm PR #42206); ``num_gpu_blocks x block_size`` where a version does not serve it (0.10-0.12 era)."""
    capacity: dict[str, float] = {}
    for labels, _ in exposition.series(CACHE_CONFIG):
        tokens = _number(labels.get("kv_cache_size_tokens"))
        if tokens is None:
            blocks, block_size = _number(labels.get("num_gpu_blocks")), _number(labels.get("block_size"))
            tokens = blocks * block_size if blocks is not None and block_size is not None else None
            if tokens is not None and not math.isfinite(tokens):
                tokens = None
        if tokens is not None:
            capacity[labels.get("engine", "")] = tokens
    return capacity


def kv_usage(exposition: Exposition, capacity: Mapping[str, float]) -> float | None:
    """KV cache usage over all data-parallel ranks, weighted by each rank's capacity where known."""
    for name in KV_USAGE:
        series = [(labels.get("engine", ""), v) for labels, v in exposition.series(name) if math.isfinite(v)]
        if series:
            return capacity_weighted_mean(series, capacity)
    return None


def adapt(exposition: Exposition, timestamp: float, _identity: EngineIdentity | None = None, *,
          model: str | None = None) -> EngineSample:
    check_pin(model, NAMES.models_in_labels(exposition))  # one model per server: a pin is only checked
    base = NAMES.sample(exposition, timestamp)
    capacity = kv_capacity_by_rank(exposition)
    counters = dict(base.counters)
    for field_name, wire in PER_GPU.items():
        values = [v for _, v in exposition.series(wire) if math.isfinite(v)]
        total = finite_sum(values) if values and any(values) else None  # 0 unless --enable-mfu-metrics
        if total is not None:
            counters[field_name] = total / len(values)
    counters.update(outcome_counters(exposition))
    counters.update(prompt_source_counters(exposition))
    gauges = dict(base.gauges)
    waiting = label_totals(exposition, WAITING_BY_REASON, "reason", counter=False)
    for field_name, reason in WAITING_REASONS.items():
        if waiting is not None and reason in waiting:
            gauges[field_name] = waiting[reason]
    ranks = {labels.get("engine", "") for labels, _ in exposition.series("vllm:num_requests_running")}
    if ranks:
        gauges["data_parallel_ranks"] = float(len(ranks))
    total_capacity = finite_sum(list(capacity.values())) if capacity else None
    if total_capacity is not None:
        gauges["kv_cache_capacity_tokens"] = total_capacity
    usage = kv_usage(exposition, capacity)
    if usage is not None:
        gauges["kv_cache_usage_ratio"] = usage
    level = sleep_level(exposition)
    if level is not None:
        gauges["sleep_level"] = level
    return EngineSample(timestamp=base.timestamp, kind=base.kind, counters=counters, gauges=gauges,
                        histograms=base.histograms, model_label=base.model_label, config=cache_config(exposition))


def outcome_counters(exposition: Exposition) -> dict[str, float]:
    """Finished requests by outcome, from request_success_total's finished_reason: aborted (the client went
    away) and failed (a request-level error); 0 where the engine serves the label but no such series yet (V0
    creates a series when a request first finishes with that reason)."""
    reasons = label_totals(exposition, SUCCESS, "finished_reason")
    if reasons is None:
        return {}
    return {field_name: reasons.get(reason, 0.0) for field_name, reason in OUTCOMES.items()}


def prompt_source_counters(exposition: Exposition) -> dict[str, float]:
    """Prompt tokens vLLM computed (prompt_tokens_by_source{source="local_compute"}: prompt_tokens_total
    counts prefix-cache hits and KV transferred from elsewhere too), and prefix-cache hit tokens per tier
    (prompt_tokens_cached_by_source{source}: prefix_cache_hits_<tier>)."""
    counters: dict[str, float] = {}
    sources = label_totals(exposition, PROMPT_BY_SOURCE, "source")
    if sources is not None and COMPUTED_SOURCE in sources:
        counters["prompt_tokens_computed"] = sources[COMPUTED_SOURCE]
    tiers = label_totals(exposition, CACHED_BY_SOURCE, "source") or {}
    for tier in CACHE_TIERS:
        if tier in tiers:
            counters[f"prefix_cache_hits_{tier}"] = tiers[tier]
    return counters


# cache_config_info labels kept in a sample (the analytic model reads these), and their longest value:
# every sample of the window keeps them, so nothing else an engine puts there is held.
# (0.34: gpu_memory_utilization is "None" unless set; enable_extensible_kv_cache then says what it resolves to)
CONFIG_KEYS = ("block_size", "cache_dtype", "enable_extensible_kv_cache", "gpu_memory_utilization", "num_gpu_blocks")
CONFIG_VALUE_CHARS = 64


def sleep_level(exposition: Exposition) -> float | None:
    """0 awake, 1 sleeping with its weights offloaded, 2 sleeping with everything discarded; the deepest
    level any data-parallel rank reports; None where the engine does not say."""
    levels = [SLEEP_LEVELS[labels["sleep_state"]] for labels, value in exposition.series(SLEEP_STATE)
              if value == 1 and labels.get("sleep_state") in SLEEP_LEVELS]
    return max(levels) if levels else None


def cache_config(exposition: Exposition) -> dict[str, str]:
    """The first data-parallel rank's cache_config_info labels in CONFIG_KEYS (the ranks share one config)."""
    series = exposition.series(CACHE_CONFIG)
    labels = series[0][0] if series else {}
    return {k: v for k in CONFIG_KEYS if (v := labels.get(k)) is not None and len(v) <= CONFIG_VALUE_CHARS}


IDENTITY_PATHS = ("/v1/models", "/version")


def identity(documents: Mapping[str, Any]) -> EngineIdentity:
    """Model from /v1/models (the base model, not a LoRA adapter) and version from /version."""
    model, root = served_model(documents.get("/v1/models"))
    version_doc = documents.get("/version")
    version = version_doc.get("version") if isinstance(version_doc, Mapping) else None
    return EngineIdentity(model=model, version=version if isinstance(version, str) else None, model_root=root)


ADAPTER = Adapter(NAMES, NAMES.families(*KV_USAGE, CACHE_CONFIG, SLEEP_STATE, *PER_GPU.values(), SUCCESS,
                                        PROMPT_BY_SOURCE, CACHED_BY_SOURCE, WAITING_BY_REASON),
                  IDENTITY_PATHS, identity, adapt)
