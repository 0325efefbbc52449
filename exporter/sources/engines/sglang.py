"""SGLang (``--enable-metrics``): the ``sglang:*`` families and ``/v1/models`` + ``/server_info``.

Sources read (sgl-project/sglang): ``python/sglang/srt/observability/metrics_collector.py`` @ 44cedc2b9c7d
(``SchedulerMetricsCollector``, ``TokenizerMetricsCollector``; the same families as the older
``srt/metrics/collector.py`` @ 00ae9c15), ``observability/scheduler_metrics_mixin.py`` @ 44cedc2b9c7d
(labels, how each gauge is computed), ``srt/entrypoints/http_server.py`` @ 0025436eab05 (``/metrics``,
``/get_server_info``, ``/v1/models``) and ``srt/utils`` ``add_prometheus_middleware``.

SGLang runs prometheus_client in multiprocess mode: counters carry ``_total``, no ``_created``.
Tokenizer-side series (tokens, requests, TTFT, inter-token and end-to-end latency) carry
``model_name`` and ``engine_type``; scheduler-side series (running, queue, KV pool, speculative
decoding, queue time) also carry ``tp_rank``, ``pp_rank``, ``moe_ep_rank`` and, with several
data-parallel ranks, ``dp_rank``. Only one scheduler per data-parallel rank reports by default
(``attn_tp_rank == 0``); with ``--enable-metrics-for-all-schedulers`` every TP/PP rank repeats the
same batch, so per data-parallel rank only the lowest (tp, pp, moe_ep) rank's series is read.
Across data-parallel ranks running/queued requests and KV capacity add up; KV usage is weighted
by each rank's capacity; the speculative acceptance rate is averaged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from exporter.samples import EngineIdentity, EngineSample
from exporter.sources.engines import Adapter, EngineNames, capacity_weighted_mean, check_pin, served_model
from exporter.sources.exposition import Exposition, Labels, finite_sum

NAMES = EngineNames(
    kind="sglang",
    prefix="sglang:",
    model_label="model_name",
    counters={
        "prompt_tokens": ("sglang:prompt_tokens_total",),
        "generation_tokens": ("sglang:generation_tokens_total",),
        # incremented once per request when it finishes (TokenizerMetricsCollector.observe_one_finished_request)
        "requests_finished": ("sglang:num_requests_total",),
        # SGLang "retracts" running requests back to the queue when the KV pool runs out (vLLM: preemption)
        "preemptions": ("sglang:num_retracted_requests_total",),
    },
    gauges={},
    histograms={
        "time_to_first_token": ("sglang:time_to_first_token_seconds",),
        # per-request TPOT where a build has it; early builds' time_per_output_token_seconds observed the
        # running mean TPOT of every streamed chunk
        "time_per_output_token": ("sglang:request_time_per_output_token_seconds",
                                  "sglang:time_per_output_token_seconds"),
        # one observation per generated token (several per verify step with speculative decoding)
        "inter_token_latency": ("sglang:inter_token_latency_seconds",),
        "e2e_request_latency": ("sglang:e2e_request_latency_seconds",),
        "queue_time": ("sglang:queue_time_seconds",),
    },
)

RUNNING = "sglang:num_running_reqs"
QUEUED = "sglang:num_queue_reqs"
KV_USAGE = "sglang:token_usage"
KV_CAPACITY = "sglang:max_total_num_tokens"
# prompt tokens served from the prefix (radix) cache, by cache_source (device, host, storage_*; "total"
# where a build has no breakdown); counted with prompt_tokens_total when the request finishes
CACHED_TOKENS = "sglang:cached_tokens_total"
PROMPT_TOKENS = "sglang:prompt_tokens_total"
# speculative decoding: per decode-log interval; both 0 when speculative decoding is off
ACCEPT_RATE = "sglang:spec_accept_rate"
ACCEPT_LENGTH = "sglang:spec_accept_length"
RANK_LABELS = ("tp_rank", "pp_rank", "moe_ep_rank")

# fields adapt() computes beyond the name tables (docs/engines.md's mapping): field kind -> field -> sources
COMPUTED: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "counter": {"prefix_cache_queries": (f"{PROMPT_TOKENS} (once {CACHED_TOKENS} exists)",),
                "prefix_cache_hits": (f"{CACHED_TOKENS} (every cache_source)",)},
    "gauge": {
        "requests_running": (f"{RUNNING} (sum over data-parallel ranks)",),
        "requests_waiting": (f"{QUEUED} (sum over data-parallel ranks)",),
        "kv_cache_capacity_tokens": (f"{KV_CAPACITY} (sum over data-parallel ranks)",),
        "kv_cache_usage_ratio": (f"{KV_USAGE} (weighted by {KV_CAPACITY})",),
        "spec_decode_acceptance_ratio": (f"{ACCEPT_RATE} (where {ACCEPT_LENGTH} > 0)",),
    },
}


def _rank_key(labels: Labels) -> tuple[float, ...]:
    key = []
    for name in RANK_LABELS:
        try:
            key.append(float(labels.get(name, "0")))
        except ValueError:
            key.append(math.inf)
    return tuple(key)


def one_scheduler_per_replica(exposition: Exposition) -> Exposition:
    """The exposition with, per data-parallel rank, only the lowest (tp, pp, moe_ep) rank's scheduler series."""
    samples: dict[str, tuple[tuple[Labels, float], ...]] = {}
    for name in exposition.names():
        series = exposition.series(name)
        if not any("tp_rank" in labels for labels, _ in series):
            samples[name] = series
            continue
        lowest: dict[str, tuple[float, ...]] = {}
        for labels, _ in series:
            dp, key = labels.get("dp_rank", ""), _rank_key(labels)
            lowest[dp] = min(lowest.get(dp, key), key)
        samples[name] = tuple((labels, value) for labels, value in series
                              if _rank_key(labels) == lowest[labels.get("dp_rank", "")])
    return Exposition(samples)


def _by_replica(exposition: Exposition, name: str) -> dict[str, float]:
    """data-parallel rank -> the finite value of a (deduplicated) scheduler gauge."""
    return {labels.get("dp_rank", ""): value for labels, value in exposition.series(name) if math.isfinite(value)}


def _kv(exposition: Exposition) -> tuple[float | None, float | None]:
    """(capacity in tokens over all data-parallel ranks, usage weighted by each rank's capacity)."""
    capacity = {rank: v for rank, v in _by_replica(exposition, KV_CAPACITY).items() if v > 0}
    usage = [(rank, min(max(v, 0.0), 1.0)) for rank, v in _by_replica(exposition, KV_USAGE).items()]
    total = finite_sum(list(capacity.values())) if capacity else None
    return total, capacity_weighted_mean(usage, capacity)


def _acceptance(exposition: Exposition) -> float | None:
    """Mean acceptance rate over the data-parallel ranks that run speculative decoding (accept length > 0)."""
    rates = _by_replica(exposition, ACCEPT_RATE)
    lengths = _by_replica(exposition, ACCEPT_LENGTH)
    speculating = [min(max(v, 0.0), 1.0) for rank, v in rates.items()
                   if (lengths.get(rank, 0.0) > 0 if lengths else v > 0)]
    return sum(speculating) / len(speculating) if speculating else None


def _replicas(exposition: Exposition) -> float | None:
    """Independent data-parallel replicas behind the URL: several dp_rank values whose scheduler is TP rank 0
    each (plain --dp-size). DP attention also labels dp_rank, but its ranks are TP ranks of one model."""
    series = [labels for labels, _ in exposition.series(RUNNING)]
    ranks = {labels.get("dp_rank") for labels in series}
    if len(ranks) > 1 and None not in ranks and all(labels.get("tp_rank", "0") == "0" for labels in series):
        return float(len(ranks))
    return None


def adapt(exposition: Exposition, timestamp: float, _identity: EngineIdentity | None = None, *,
          model: str | None = None) -> EngineSample:
    check_pin(model, NAMES.models_in_labels(exposition))  # one model per server: a pin is only checked
    deduplicated = one_scheduler_per_replica(exposition)
    base = NAMES.sample(deduplicated, timestamp)
    counters = dict(base.counters)
    hits, queries = deduplicated.total(CACHED_TOKENS), deduplicated.total(PROMPT_TOKENS)
    if hits is not None and queries is not None:  # absent until the first cache hit creates the series
        counters["prefix_cache_queries"], counters["prefix_cache_hits"] = queries, hits
    gauges: dict[str, float] = {}
    for field_name, wire in (("requests_running", RUNNING), ("requests_waiting", QUEUED)):
        values = list(_by_replica(deduplicated, wire).values())
        total = finite_sum(values) if values else None
        if total is not None:
            gauges[field_name] = total
    capacity, usage = _kv(deduplicated)
    if capacity is not None:
        gauges["kv_cache_capacity_tokens"] = capacity
    if usage is not None:
        gauges["kv_cache_usage_ratio"] = usage
    acceptance = _acceptance(deduplicated)
    if acceptance is not None:
        gauges["spec_decode_acceptance_ratio"] = acceptance
    replicas = _replicas(deduplicated)
    if replicas is not None:
        gauges["data_parallel_ranks"] = replicas
    return EngineSample(timestamp=base.timestamp, kind=base.kind, counters=counters, gauges=gauges,
                        histograms=base.histograms, model_label=base.model_label)


# /server_info since SGLang renamed it (the old /get_server_info then logs a deprecation warning per call)
IDENTITY_PATHS = ("/v1/models", "/server_info", "/get_server_info")


def identity(documents: Mapping[str, Any]) -> EngineIdentity:
    """Model from /v1/models (the served name), version and model path from /server_info or /get_server_info."""
    model, _ = served_model(documents.get("/v1/models"))
    info = next((doc for doc in (documents.get("/server_info"), documents.get("/get_server_info"))
                 if isinstance(doc, Mapping)), {})
    version, root = info.get("version"), info.get("model_path")
    return EngineIdentity(model=model, version=version if isinstance(version, str) else None,
                          model_root=root if isinstance(root, str) and root else None)


ADAPTER = Adapter(NAMES, NAMES.families(RUNNING, QUEUED, KV_USAGE, KV_CAPACITY, CACHED_TOKENS, ACCEPT_RATE,
                                        ACCEPT_LENGTH), IDENTITY_PATHS, identity, adapt)
