"""NVIDIA Triton Inference Server: Triton core's per-model metrics and the TensorRT-LLM backend's families.

Sources read:

- triton-inference-server/core ``src/metrics.cc``, ``src/metric_model_reporter.{h,cc}``,
  ``src/infer_stats.cc``, ``src/infer_response.cc`` @ 73aad7c3348d040c7087d57837d75822c488495e
  (2026-06): family names and HELP texts; labels ``model``, ``version`` (and ``gpu_uuid`` on a
  GPU instance's series, ``reason`` on failures); durations are counters of whole microseconds
  added on each *successful* request only (``UpdateSuccess*``), so their count is
  ``nv_inference_request_success``; the first-response histogram observes whole milliseconds,
  default buckets 100, 500, 2000, 5000 (``--metrics-config histogram_latencies=true``).
- triton-inference-server/server ``docs/user_guide/metrics.md`` @ e1db8a603d86 (2.73 dev).
- triton-inference-server/third_party ``CMakeLists.txt`` @ 6f855c019060: prometheus-cpp v1.0.1,
  whose ``TextSerializer`` writes counters without ``_total``.
- triton-inference-server/tensorrtllm_backend v0.19.0 (c1e19638304d) and NVIDIA/TensorRT-LLM
  ``triton_backend/inflight_batcher_llm/src/custom_metrics_reporter/custom_metrics_reporter.cc``
  @ 0d5352f5fc5f: ``nv_trt_llm_request_metrics{request_type=active|max|scheduled|context|waiting}``,
  ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max|free|used|tokens_per|reused|fraction}``
  and (since backend v0.16) the per-request histograms ``nv_llm_input_token_len`` /
  ``nv_llm_output_token_len``, whose ``_sum`` is the tokens of the requests that finished.

One Triton serves many models, and a TensorRT-LLM ensemble counts every request again in each of
its steps (``postprocessing`` even once per streamed response), so models are never summed: the
request counters, latencies and the ``model`` label come from ONE model, the one with the largest
cumulative request duration (the outermost: an ensemble's duration contains its steps'). The
TensorRT-LLM families come from the TensorRT-LLM model (the same rule among the models that serve
them). Series of one model (versions, GPU instances) are added.

``--engine-model ENGINE=NAME`` pins the model: then every field comes from that model alone (its
TensorRT-LLM families only if it serves them itself: nothing in the metrics says which ensemble calls
which model), and a read where it is absent fails with the models that are there.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from exporter.samples import EngineIdentity, EngineSample, Histogram
from exporter.sources.engines import Adapter, EngineNames, pinned_model_absent
from exporter.sources.exposition import Exposition, finite_sum

SUCCESS = "nv_inference_request_success"
REQUEST_US = "nv_inference_request_duration_us"
QUEUE_US = "nv_inference_queue_duration_us"
# --metrics-config summary_latencies=true (with counter_latencies=false the counters above are gone)
REQUEST_SUMMARY_US = "nv_inference_request_summary_us"
QUEUE_SUMMARY_US = "nv_inference_queue_summary_us"
FIRST_RESPONSE_MS = "nv_inference_first_response_histogram_ms"
PENDING = "nv_inference_pending_request_count"
TRT_REQUESTS = "nv_trt_llm_request_metrics"
TRT_KV = "nv_trt_llm_kv_cache_block_metrics"
INPUT_TOKENS = "nv_llm_input_token_len"
OUTPUT_TOKENS = "nv_llm_output_token_len"

MICROSECONDS = 1e-6
MILLISECONDS = 1e-3

# The names each field is read from (always of one model, see the module docstring).
NAMES = EngineNames(
    kind="triton",
    prefix="nv_inference_",
    model_label="model",
    counters={
        # prometheus-cpp writes counters without _total; prometheus_client's parser adds it to a counter's samples
        "requests_finished": (SUCCESS, f"{SUCCESS}_total"),
        "prompt_tokens": (f"{INPUT_TOKENS}_sum",),
        "generation_tokens": (f"{OUTPUT_TOKENS}_sum",),
    },
    histograms={"time_to_first_token": (FIRST_RESPONSE_MS,)},
)

# Fields computed beyond the name tables: field kind -> field -> sources (docs/engines.md's table).
COMPUTED: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "gauge": {
        "requests_running": (f'{TRT_REQUESTS}{{request_type="scheduled"}}',),
        "requests_waiting": (f'{TRT_REQUESTS}{{request_type="waiting"}} + {PENDING}', f"{PENDING} (all models)"),
        "kv_cache_usage_ratio": (f"{TRT_KV} used / max", f'{TRT_KV}{{kv_cache_block_type="fraction"}}'),
        "kv_cache_capacity_tokens": (f"{TRT_KV} max x tokens_per",),
    },
    "histogram": {
        "e2e_request_latency": (f"{REQUEST_US} / {SUCCESS} (mean only)", f"{REQUEST_SUMMARY_US} (mean only)"),
        "queue_time": (f"{QUEUE_US} / {SUCCESS} (mean only)", f"{QUEUE_SUMMARY_US} (mean only)"),
    },
}


def wire(exposition: Exposition, name: str) -> str:
    """A counter's sample name as parsed: as written, or with the ``_total`` the parser gives counters."""
    return name if exposition.has(name) else f"{name}_total"


def per_model(exposition: Exposition, name: str) -> dict[str, float]:
    """``name`` summed over each model's series (versions, GPU instances); finite, non-negative totals."""
    return {m: total for m, total in by_label(exposition, wire(exposition, name), "model").items() if m and total >= 0}


def outermost(exposition: Exposition, among: set[str] | None = None) -> str | None:
    """The model with the largest cumulative request duration (then the most requests, then by name)."""
    durations = per_model(exposition, REQUEST_US) or per_model(exposition, f"{REQUEST_SUMMARY_US}_sum")
    successes = per_model(exposition, SUCCESS)
    candidates = (set(durations) | set(successes)) if among is None else among
    if not candidates:
        return None
    return min(candidates, key=lambda m: (-durations.get(m, 0.0), -successes.get(m, 0.0), m))


def only(exposition: Exposition, model: str) -> Exposition:
    """The samples of one model."""
    return Exposition({name: kept for name, series in exposition.samples.items()
                       if (kept := tuple(s for s in series if s[0].get("model") == model))})


def by_label(exposition: Exposition, name: str, label: str) -> dict[str, float]:
    """``name``'s finite values summed per value of ``label``."""
    values: dict[str, list[float]] = defaultdict(list)
    for labels, value in exposition.series(name):
        if label in labels and math.isfinite(value):
            values[labels[label]].append(value)
    return {k: total for k, v in values.items() if (total := finite_sum(v)) is not None}


def mean_only(total_seconds: float | None, count: float | None) -> Histogram | None:
    """A cumulative duration as a histogram with only a +Inf bucket: its mean is exported, no quantile."""
    if total_seconds is None or count is None or total_seconds < 0 or count < 0:
        return None
    return Histogram(bounds=(math.inf,), cumulative_counts=(count,), sum=total_seconds, count=count)


def scaled(histogram: Histogram, factor: float) -> Histogram:
    """``histogram`` with its bounds and sum times ``factor`` (> 0); bounds that become equal are merged."""
    bounds: list[float] = []
    counts: list[float] = []
    for bound, count in zip(histogram.bounds, histogram.cumulative_counts, strict=True):
        value = bound * factor
        if bounds and value <= bounds[-1]:
            counts[-1] = max(counts[-1], count)
            continue
        bounds.append(value)
        counts.append(count)
    return Histogram(tuple(bounds), tuple(counts), histogram.sum * factor, histogram.count)


def _latencies(model: Exposition, successes: float | None) -> dict[str, Histogram]:
    histograms: dict[str, Histogram] = {}
    for field_name, counter, summary in (("e2e_request_latency", REQUEST_US, REQUEST_SUMMARY_US),
                                         ("queue_time", QUEUE_US, QUEUE_SUMMARY_US)):
        micros, count = model.total(wire(model, counter)), successes
        if micros is None:
            micros, count = model.total(f"{summary}_sum"), model.total(f"{summary}_count")
        histogram = mean_only(micros * MICROSECONDS if micros is not None else None, count)
        if histogram is not None:
            histograms[field_name] = histogram
    first = model.histogram(FIRST_RESPONSE_MS)
    if first is not None:
        histograms["time_to_first_token"] = scaled(first, MILLISECONDS)
    return histograms


def _trtllm(model: Exposition, counters: dict[str, float], gauges: dict[str, float]) -> None:
    """The TensorRT-LLM model's batch, KV cache and token families."""
    requests = by_label(model, TRT_REQUESTS, "request_type")
    scheduled, active = requests.get("scheduled"), requests.get("active")
    waiting = requests.get("waiting")
    if waiting is None and active is not None and scheduled is not None:  # before "waiting" existed (< v0.18)
        waiting = max(active - scheduled, 0.0)
    pending = model.total(PENDING)  # queued in Triton before the backend took them
    if scheduled is not None and scheduled >= 0:
        gauges["requests_running"] = scheduled
    if waiting is not None and waiting >= 0:
        total = waiting + (pending if pending is not None and pending >= 0 else 0.0)
        if math.isfinite(total):
            gauges["requests_waiting"] = total
    blocks = by_label(model, TRT_KV, "kv_cache_block_type")
    most, used, per_block = blocks.get("max"), blocks.get("used"), blocks.get("tokens_per")
    if most is not None and per_block is not None and most > 0 and per_block > 0:
        capacity = most * per_block
        if math.isfinite(capacity):
            gauges["kv_cache_capacity_tokens"] = capacity
    usage = used / most if used is not None and most is not None and most > 0 else blocks.get("fraction")
    if usage is not None and math.isfinite(usage):
        gauges["kv_cache_usage_ratio"] = min(max(usage, 0.0), 1.0)
    for field_name, histogram in (("prompt_tokens", INPUT_TOKENS), ("generation_tokens", OUTPUT_TOKENS)):
        tokens = model.total(f"{histogram}_sum")
        if tokens is not None and tokens >= 0:
            counters[field_name] = tokens


def models(exposition: Exposition) -> set[str]:
    """Every model named on the samples read (Triton creates a model's series when it loads the model)."""
    return {model for name in exposition.names() for labels, _ in exposition.series(name)
            if (model := labels.get("model"))}


def adapt(exposition: Exposition, timestamp: float, _identity: EngineIdentity | None = None, *,
          model: str | None = None) -> EngineSample:
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    histograms: dict[str, Histogram] = {}
    if model is not None and model not in models(exposition):
        raise pinned_model_absent(model, models(exposition))
    served = outermost(exposition) if model is None else model
    if served is not None:
        successes = per_model(exposition, SUCCESS).get(served)
        if successes is not None:
            counters["requests_finished"] = successes
        histograms = _latencies(only(exposition, served), successes)
    llms = set(per_model(exposition, TRT_KV)) | set(per_model(exposition, TRT_REQUESTS))
    candidates = llms if model is None else llms & {model}  # pinned: its own TensorRT-LLM families, if any
    llm = outermost(exposition, candidates) if candidates else None
    if llm is not None:
        _trtllm(only(exposition, llm), counters, gauges)
    else:
        # unpinned: every model's queue (an ensemble is never pending itself, its steps are)
        pending = per_model(exposition, PENDING)
        if model is not None:
            pending = {model: pending[model]} if model in pending else {}
        waiting = finite_sum(list(pending.values())) if pending else None
        if waiting is not None:
            gauges["requests_waiting"] = waiting
    return EngineSample(timestamp=timestamp, kind=NAMES.kind, counters=counters, gauges=gauges,
                        histograms=histograms, model_label=served)


IDENTITY_PATHS: tuple[str, ...] = ()  # the metrics port (8002) serves /metrics only; the model is in the labels


def identity(_documents: Mapping[str, Any]) -> EngineIdentity:
    return EngineIdentity()


ADAPTER = Adapter(NAMES, NAMES.families(REQUEST_US, QUEUE_US, REQUEST_SUMMARY_US, QUEUE_SUMMARY_US, PENDING,
                                        TRT_REQUESTS, TRT_KV), IDENTITY_PATHS, identity, adapt)
