"""The simulated engine's ``/metrics`` and identity documents, shaped like the real engines'.

vLLM 0.34 by default, 0.33 or 0.32 on request (``--vllm-version``; V1 engine): the families, HELP
strings, label names (``engine="0"``, ``model_name``), bucket bounds and ``vllm:cache_config_info`` labels
of a real 0.32.0 capture (``tests/fixtures/engines/vllm-0.32.0-real-a.txt``) and of 0.33.0 and 0.34.0's own
stat logger (``vllm-0.33.0-a.txt``, ``vllm-0.34.0-a.txt``: the three serve the same families; only
``cache_config_info``'s label set grows, VLLM_CONFIG_LABELS), rendered the way vLLM renders them: by
prometheus_client's own Counter/Gauge/Histogram in a registry, so counters carry ``_total`` and
every counter and histogram is followed by its ``_created`` gauge family. The token histograms'
bounds are vLLM's 1-2-5 series up to ``max_model_len``, as vLLM builds them.

TGI 3.x: the router's families (``router/src/server.rs`` and the v3 backend) in the layout of its
Rust exporter, metrics-exporter-prometheus 0.15.3 (``tests/fixtures/engines/tgi-3.x.txt`` and its
SOURCES.md): no ``_total``, no ``_created``, 35 geometric duration buckets (0.0001 x 1.5^k), token
buckets at 1 %..100 % of max_input_tokens / max_total_tokens, integer counts, Rust ``f64``
Display for values, a blank line after each family, series created on first use.

Both also serve ``infermeter_simulator_info{scenario,engine_kind} 1``, a family no real engine
has, and their identity endpoints say "infermeter-simulator".
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter.simulate.model import MAX_INPUT_TOKENS, Rank, Request, Simulation, StepReport
from exporter.simulate.sglang import SglangExposition
from exporter.simulate.triton import TritonExposition

SIMULATOR = "infermeter-simulator"
# the vLLM versions whose shape the simulator serves, oldest first; the newest is the default
VLLM_VERSIONS = ("0.32.0", "0.33.0", "0.34.0")
VLLM_VERSION = VLLM_VERSIONS[-1]
INFO_NAME = "infermeter_simulator_info"
INFO_HELP = "This engine is the infermeter simulator (not a real inference server): its scenario and engine kind."

# ------------------------------------------------------------------------------------------ vLLM

# vLLM V1 (vllm/v1/metrics/loggers.py) bucket bounds, as served by 0.32.0 to 0.34.0 (vllm/v1/metrics/buckets.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKENS_BUCKETS = (1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
                            16384.0)
PARAMS_N_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0)
PREEMPTIONS_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")

_HELP = {
    "estimated_flops_per_gpu": "Estimated number of floating point operations per GPU (for Model Flops "
                               "Utilization calculations).",
    "estimated_read_bytes_per_gpu": "Estimated number of bytes read from memory per GPU (for Model Flops "
                                    "Utilization calculations).",
    "estimated_write_bytes_per_gpu": "Estimated number of bytes written to memory per GPU (for Model Flops "
                                     "Utilization calculations).",
    "num_requests_running": "Number of requests in model execution batches.",
    "num_requests_waiting": "Number of requests waiting to be processed.",
    "num_requests_waiting_by_reason": "Number of waiting requests by reason. Reason labels: 'capacity' = waiting "
                                      "for scheduling capacity; 'deferred' = deferred by transient constraints "
                                      "(LoRA budget, KV transfer, blocked status). Sum of all reasons equals "
                                      "vllm:num_requests_waiting.",
    "engine_sleep_state": "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
                          "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
    "kv_cache_usage_perc": "KV-cache usage. 1 means 100 percent usage.",
    "prefix_cache_queries": "Prefix cache queries, in terms of number of queried tokens.",
    "prefix_cache_hits": "Prefix cache hits, in terms of number of cached tokens.",
    "external_prefix_cache_queries": "External prefix cache queries from KV connector cross-instance cache "
                                     "sharing, in terms of number of queried tokens.",
    "external_prefix_cache_hits": "External prefix cache hits from KV connector cross-instance cache sharing, "
                                  "in terms of number of cached tokens.",
    "mm_cache_queries": "Multi-modal cache queries, in terms of number of queried items.",
    "mm_cache_hits": "Multi-modal cache hits, in terms of number of cached items.",
    "num_preemptions": "Cumulative number of preemption from the engine.",
    "prompt_tokens": "Number of prefill tokens processed.",
    "prompt_tokens_by_source": "Number of prompt tokens by source.",
    "prompt_tokens_cached": "Number of cached prompt tokens (local + external).",
    "prompt_tokens_cached_by_source": "Prefix-cache hit tokens by the cache tier that supplied them: device "
                                      "(local HBM), host (offloaded to DRAM), disk, p2p (transferred from "
                                      "another vLLM instance) or external_unspecified. Counted at admission; "
                                      "sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
    "generation_tokens": "Number of generation tokens processed.",
    "request_success": "Count of successfully processed requests.",
    "admission_rejections": "Number of admission attempts rejected by a queue limit, by reason.",
    "request_prompt_tokens": "Number of prefill tokens processed.",
    "request_generation_tokens": "Number of generation tokens processed.",
    "iteration_tokens_total": "Histogram of number of tokens per engine_step.",
    "request_max_num_generation_tokens": "Histogram of maximum number of requested generation tokens.",
    "request_params_n": "Histogram of the n request parameter.",
    "request_params_max_tokens": "Histogram of the max_tokens request parameter.",
    "time_to_first_token_seconds": "Histogram of time to first token in seconds.",
    "inter_token_latency_seconds": "Histogram of inter-token latency in seconds.",
    "request_time_per_output_token_seconds": "Histogram of time_per_output_token_seconds per request.",
    "e2e_request_latency_seconds": "Histogram of e2e request latency in seconds.",
    "request_queue_time_seconds": "Histogram of time spent in WAITING phase for request.",
    "request_inference_time_seconds": "Histogram of time spent in RUNNING phase for request.",
    "request_prefill_time_seconds": "Histogram of time spent in PREFILL phase for request.",
    "request_decode_time_seconds": "Histogram of time spent in DECODE phase for request.",
    "request_num_preemptions": "Histogram of the number of times a request was preempted.",
    "request_prefill_kv_computed_tokens": "Histogram of new KV tokens computed during prefill (excluding cached "
                                          "tokens).",
    "cache_config_info": "Information of the LLMEngine CacheConfig",
}


def build_1_2_5_buckets(max_value: int) -> tuple[float, ...]:
    """vLLM's ``build_1_2_5_buckets``: 1, 2, 5, 10, 20, 50, ... up to ``max_value``."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(buckets)
            buckets.append(float(value))
        exponent += 1


def _observe_many(child: Any, value: float, count: int) -> None:
    """``count`` observations of the same ``value`` (one decode step's inter-token gaps) at once."""
    if count <= 0:
        return
    buckets, bounds, total = (getattr(child, "_buckets", None), getattr(child, "_upper_bounds", None),
                              getattr(child, "_sum", None))
    if buckets is None or bounds is None or total is None:  # another prometheus_client layout
        for _ in range(count):
            child.observe(value)
        return
    total.inc(value * count)
    buckets[bisect.bisect_left(bounds, value)].inc(count)


class VllmExposition:
    """vLLM's ``/metrics`` (``version``: one of VLLM_VERSIONS) for one simulation: prometheus_client metrics in
    a private registry, one ``engine`` label value per data-parallel rank."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, sim: Simulation, version: str = VLLM_VERSION) -> None:
        if version not in VLLM_VERSIONS:
            raise ValueError(f"unknown vLLM version {version!r} (one of {', '.join(VLLM_VERSIONS)})")
        self.sim = sim
        self.version = version
        self.started = time.time()
        self.ranks = [_VllmRank(self, rank) for rank in sim.ranks]
        self.rebuild()
        for recorder, rank in zip(self.ranks, sim.ranks, strict=True):
            rank.recorders.append(recorder)

    def rebuild(self) -> None:
        """A fresh registry: every counter and histogram from zero, new ``_created`` (an engine restart)."""
        model = self.sim.engine.served_name
        self.registry = registry = CollectorRegistry(auto_describe=True)
        # vLLM uses the default registry, which carries these too
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
        ProcessCollector(registry=registry)
        labels = ("model_name", "engine")
        families: dict[str, Any] = {}
        for kind, name, extra in _VLLM_FAMILIES:
            if kind == "counter":
                families[name] = Counter(f"vllm:{name}", _HELP[name], [*labels, *extra], registry=registry)
            elif kind == "gauge":
                families[name] = Gauge(f"vllm:{name}", _HELP[name], [*labels, *extra], registry=registry)
            elif kind == "histogram":
                buckets = _VLLM_BUCKETS.get(name) or build_1_2_5_buckets(self.sim.engine.max_model_len)
                families[name] = Histogram(f"vllm:{name}", _HELP[name], labels, buckets=buckets, registry=registry)
            else:  # admission_rejections: the API server's, without an engine label
                rejections = Counter(f"vllm:{name}", _HELP[name], ["model_name", "reason"], registry=registry)
                rejections.labels(model, "max_num_queued_reqs")
                rejections.labels(model, "max_num_queued_tokens")
        for recorder in self.ranks:
            recorder.bind(families, model)
        configs = [cache_config_labels(rank, self.version) for rank in self.sim.ranks]
        info = Gauge("vllm:cache_config_info", _HELP["cache_config_info"], sorted(configs[0]), registry=registry)
        for config in configs:
            info.labels(**config).set(1)
        simulator = Gauge(INFO_NAME, INFO_HELP, ["scenario", "engine_kind"], registry=registry)
        simulator.labels(self.sim.scenario.name, "vllm").set(1)

    def render(self) -> bytes:
        for recorder in self.ranks:
            recorder.set_gauges()
        return generate_latest(self.registry)

    def identity(self) -> dict[str, Any]:
        model = self.sim.engine.served_name
        created = int(self.started)
        return {
            "/v1/models": {"object": "list", "data": [{
                "id": model, "object": "model", "created": created, "owned_by": SIMULATOR,
                "root": f"/simulator/{model}", "parent": None, "max_model_len": self.sim.engine.max_model_len,
                "permission": [{"id": "modelperm-infermeter-simulator", "object": "model_permission",
                                "created": created, "allow_create_engine": False, "allow_sampling": True,
                                "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                                "allow_fine_tuning": False, "organization": "*", "group": None,
                                "is_blocking": False}]}]},
            "/version": {"version": f"{self.version}+{SIMULATOR}"},
        }


# (kind, name without vllm: and _total, extra label names): the capture's family order
_VLLM_FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("counter", "estimated_flops_per_gpu", ()), ("counter", "estimated_read_bytes_per_gpu", ()),
    ("counter", "estimated_write_bytes_per_gpu", ()), ("gauge", "num_requests_running", ()),
    ("gauge", "num_requests_waiting", ()), ("gauge", "num_requests_waiting_by_reason", ("reason",)),
    ("gauge", "engine_sleep_state", ("sleep_state",)), ("gauge", "kv_cache_usage_perc", ()),
    ("counter", "prefix_cache_queries", ()), ("counter", "prefix_cache_hits", ()),
    ("counter", "external_prefix_cache_queries", ()), ("counter", "external_prefix_cache_hits", ()),
    ("counter", "mm_cache_queries", ()), ("counter", "mm_cache_hits", ()), ("counter", "num_preemptions", ()),
    ("counter", "prompt_tokens", ()), ("counter", "prompt_tokens_by_source", ("source",)),
    ("counter", "prompt_tokens_cached", ()), ("counter", "prompt_tokens_cached_by_source", ("source",)),
    ("counter", "generation_tokens", ()), ("counter", "request_success", ("finished_reason",)),
    ("api", "admission_rejections", ()),
    ("histogram", "request_prompt_tokens", ()), ("histogram", "request_generation_tokens", ()),
    ("histogram", "iteration_tokens_total", ()), ("histogram", "request_max_num_generation_tokens", ()),
    ("histogram", "request_params_n", ()), ("histogram", "request_params_max_tokens", ()),
    ("histogram", "time_to_first_token_seconds", ()), ("histogram", "inter_token_latency_seconds", ()),
    ("histogram", "request_time_per_output_token_seconds", ()), ("histogram", "e2e_request_latency_seconds", ()),
    ("histogram", "request_queue_time_seconds", ()), ("histogram", "request_inference_time_seconds", ()),
    ("histogram", "request_prefill_time_seconds", ()), ("histogram", "request_decode_time_seconds", ()),
    ("histogram", "request_num_preemptions", ()), ("histogram", "request_prefill_kv_computed_tokens", ()),
)
# bounds of the non-token histograms (the token ones are build_1_2_5_buckets(max_model_len))
_VLLM_BUCKETS: dict[str, tuple[float, ...]] = {
    "iteration_tokens_total": ITERATION_TOKENS_BUCKETS, "request_params_n": PARAMS_N_BUCKETS,
    "time_to_first_token_seconds": TTFT_BUCKETS, "inter_token_latency_seconds": TPOT_BUCKETS,
    "request_time_per_output_token_seconds": TPOT_BUCKETS,
    "e2e_request_latency_seconds": REQUEST_LATENCY_BUCKETS, "request_queue_time_seconds": REQUEST_LATENCY_BUCKETS,
    "request_inference_time_seconds": REQUEST_LATENCY_BUCKETS, "request_prefill_time_seconds": REQUEST_LATENCY_BUCKETS,
    "request_decode_time_seconds": REQUEST_LATENCY_BUCKETS, "request_num_preemptions": PREEMPTIONS_BUCKETS,
}


class _VllmRank:
    """One data-parallel rank's series (``engine="<index>"``): the Recorder of that rank."""

    def __init__(self, exposition: VllmExposition, rank: Rank) -> None:
        self.exposition = exposition
        self.rank = rank

    def bind(self, families: Mapping[str, Any], model: str) -> None:
        """Take this rank's children of a (new) set of families; pre-create the series vLLM creates at start."""
        values = (model, str(self.rank.index))

        def child(name: str, *extra: str) -> Any:
            return families[name].labels(*values, *extra)

        self.running, self.waiting = child("num_requests_running"), child("num_requests_waiting")
        self.waiting_capacity = child("num_requests_waiting_by_reason", "capacity")
        child("num_requests_waiting_by_reason", "deferred")
        child("engine_sleep_state", "awake").set(1)
        child("engine_sleep_state", "weights_offloaded")
        child("engine_sleep_state", "discard_all")
        self.kv_usage = child("kv_cache_usage_perc")
        for name in ("estimated_flops_per_gpu", "estimated_read_bytes_per_gpu", "estimated_write_bytes_per_gpu",
                     "external_prefix_cache_queries", "external_prefix_cache_hits", "mm_cache_queries",
                     "mm_cache_hits"):
            child(name)  # served at 0, as vLLM does without the features behind them
        self.prefix_queries, self.prefix_hits = child("prefix_cache_queries"), child("prefix_cache_hits")
        self.preemptions = child("num_preemptions")
        self.prompt_tokens = child("prompt_tokens")
        self.prompt_computed = child("prompt_tokens_by_source", "local_compute")
        self.prompt_cache_hit = child("prompt_tokens_by_source", "local_cache_hit")
        child("prompt_tokens_by_source", "external_kv_transfer")
        self.prompt_cached = child("prompt_tokens_cached")
        self.prompt_cached_device = child("prompt_tokens_cached_by_source", "device")
        for source in ("host", "p2p", "disk", "external_unspecified"):
            child("prompt_tokens_cached_by_source", source)
        self.generation_tokens = child("generation_tokens")
        self.success = {reason: child("request_success", reason) for reason in FINISH_REASONS}
        self.request_prompt_tokens = child("request_prompt_tokens")
        self.request_generation_tokens = child("request_generation_tokens")
        self.iteration_tokens = child("iteration_tokens_total")
        self.max_generation_tokens = child("request_max_num_generation_tokens")
        self.params_n = child("request_params_n")
        self.params_max_tokens = child("request_params_max_tokens")
        self.ttft = child("time_to_first_token_seconds")
        self.itl = child("inter_token_latency_seconds")
        self.tpot = child("request_time_per_output_token_seconds")
        self.e2e = child("e2e_request_latency_seconds")
        self.queue = child("request_queue_time_seconds")
        self.inference = child("request_inference_time_seconds")
        self.prefill = child("request_prefill_time_seconds")
        self.decode = child("request_decode_time_seconds")
        self.request_preemptions = child("request_num_preemptions")
        self.kv_computed = child("request_prefill_kv_computed_tokens")

    def set_gauges(self) -> None:
        rank = self.rank
        self.running.set(rank.running_count)
        self.waiting.set(rank.waiting_count)
        self.waiting_capacity.set(rank.waiting_count)
        self.kv_usage.set(rank.kv_usage)

    # ---------------------------------------------------------------------------- Recorder

    def arrived(self, request: Request, now: float) -> None:
        pass

    def step(self, report: StepReport) -> None:
        self.iteration_tokens.observe(report.prefill_tokens + report.decode_tokens)
        self.generation_tokens.inc(report.decode_tokens)
        _observe_many(self.itl, report.seconds, report.decode_tokens)

    def prefilled(self, request: Request, first_admission: bool) -> None:
        # the prefill step also samples a token
        self.generation_tokens.inc()
        if not first_admission:
            return
        self.prompt_tokens.inc(request.prompt)
        self.prompt_computed.inc(request.prompt - request.cached)
        self.prompt_cache_hit.inc(request.cached)
        self.prompt_cached.inc(request.cached)
        self.prompt_cached_device.inc(request.cached)
        self.prefix_queries.inc(request.prompt)
        self.prefix_hits.inc(request.cached)

    def first_token(self, request: Request, now: float) -> None:
        self.ttft.observe(now - request.arrival)

    def preempted(self, request: Request) -> None:
        self.preemptions.inc()

    def finished(self, request: Request, now: float) -> None:
        scheduled = request.scheduled if request.scheduled is not None else request.arrival
        first = request.first_token if request.first_token is not None else now
        decode = now - first
        self.success[request.finish_reason].inc()
        self.e2e.observe(now - request.arrival)
        self.queue.observe(scheduled - request.arrival)
        self.inference.observe(now - scheduled)
        self.prefill.observe(first - scheduled)
        self.decode.observe(decode)
        self.tpot.observe(decode / (request.generated - 1) if request.generated > 1 else 0.0)
        self.request_prompt_tokens.observe(request.prompt)
        self.request_generation_tokens.observe(request.generated)
        self.max_generation_tokens.observe(request.max_tokens)
        self.params_max_tokens.observe(request.max_tokens)
        self.params_n.observe(1)
        self.request_preemptions.observe(request.preemptions)
        self.kv_computed.observe(request.prompt - request.cached)

    def aborted(self, request: Request, now: float) -> None:
        self.success["abort"].inc()

    def restarted(self, now: float) -> None:
        if self.rank.index == 0:  # the ranks restart together: one new registry
            self.exposition.rebuild()


# cache_config_info labels a version adds (vllm/config/cache.py CacheConfig fields, which metrics_info() turns
# into labels), with the value the simulation serves
VLLM_CONFIG_LABELS: dict[str, dict[str, str]] = {
    "0.33.0": {"simple_cpu_offload_num_blocks": "None"},
    # the extensible KV cache, on by default on CUDA; gpu_memory_utilization is served as set (--gpu-memory-
    # utilization 0.9 here: left unset, 0.34 serves "None")
    "0.34.0": {"enable_extensible_kv_cache": "True", "_extensible_kv_cache_resolved": "True"},
}


def cache_config_labels(rank: Rank, version: str = VLLM_VERSION) -> dict[str, str]:
    """``vllm:cache_config_info``'s labels as vLLM ``version`` serves them, for one rank's simulated cache."""
    engine = rank.engine
    tokens = engine.kv_capacity_tokens
    added = {key: value for v in VLLM_VERSIONS[:VLLM_VERSIONS.index(version) + 1]
             for key, value in VLLM_CONFIG_LABELS.get(v, {}).items()}
    return {**added,
        "_block_size_resolved": "True", "block_size": str(engine.block_size), "cache_dtype": "auto",
        "cache_hit_alignment_tokens": "None", "effective_attention_block_size": str(engine.block_size),
        "enable_mamba_shared_prefix_checkpoint": "False", "enable_prefix_caching": "True", "engine": str(rank.index),
        "gpu_memory_utilization": str(engine.gpu_memory_utilization), "hash_block_size": "None",
        "is_attention_free": "False", "kv_cache_dtype_skip_layers": "[]", "kv_cache_layout": "None",
        "kv_cache_max_concurrency": str(tokens / engine.max_model_len),
        "kv_cache_memory_bytes": str(int(tokens * engine.model.kv_cache_bytes_per_token(engine.kv_bytes))),
        "kv_cache_size_tokens": str(tokens), "kv_offloading_backend": "native", "kv_offloading_size": "None",
        "kv_sharing_fast_prefill": "False", "mamba_block_size": "None", "mamba_cache_dtype": "auto",
        "mamba_cache_mode": "none", "mamba_page_size_padded": "None", "mamba_ssm_cache_dtype": "float32",
        "num_cpu_blocks": "None", "num_gpu_blocks": str(engine.num_gpu_blocks), "num_gpu_blocks_override": "None",
        "prefix_cache_retention_interval": "0", "prefix_caching_hash_algo": "sha256", "prefix_match_unit": "None",
        "replayssm_buffer_len": "16", "skip_page_size_padded": "None", "sliding_window": "None",
        "swa_bounded_replay": "True", "use_kda_recoverssm": "False", "use_replayssm": "False",
        "user_specified_block_size": "False",
    }


# ------------------------------------------------------------------------------------------ TGI


def rust_f64(value: float) -> str:
    """Rust's ``Display`` for f64: the shortest round-trip digits, never an exponent, no ``.0``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == int(value) and abs(value) < 1e16:
        return str(int(value))
    text = repr(value)
    return format(Decimal(text), "f") if "e" in text else text


def tgi_duration_buckets() -> tuple[float, ...]:
    """server.rs: ``Matcher::Suffix("duration")``: 35 bounds, 0.0001 x 1.5 before each push."""
    bounds, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        bounds.append(value)
    return tuple(bounds)


def tgi_percent_buckets(maximum: int) -> tuple[float, ...]:
    """server.rs: 1 %..100 % of ``maximum`` (max_input_tokens or max_total_tokens)."""
    return tuple((maximum / 100.0) * (i + 1) for i in range(100))


Labels = tuple[tuple[str, str], ...]

# (kind, name, HELP or None): the order of the tgi-3.x fixture (the real order varies per run)
_TGI_FAMILIES: tuple[tuple[str, str, str | None], ...] = (
    ("counter", "tgi_batch_inference_success", "Number of successful inference calls per method (prefill or "
                                                "decode)"),
    ("counter", "tgi_request_failure", None),
    ("counter", "tgi_request_count", "Total number of requests"),
    ("counter", "tgi_batch_concat", None),
    ("counter", "tgi_request_success", "Number of successful requests"),
    ("counter", "tgi_batch_inference_count", "Inference calls per method (prefill or decode)"),
    ("gauge", "tgi_batch_current_max_tokens", "Maximum tokens for the current batch"),
    ("gauge", "tgi_queue_size", "Current queue size"),
    ("gauge", "tgi_batch_max_total_tokens", None),
    ("gauge", "tgi_batch_current_size", "Current batch size"),
    ("histogram", "tgi_request_inference_duration", "Request inference duration"),
    ("histogram", "tgi_batch_filter_duration", "Time spent filtering batches and sending generated tokens per "
                                               "method (prefill or decode)"),
    ("histogram", "tgi_request_input_length", "Input token length per request"),
    ("histogram", "tgi_batch_forward_duration", "Batch forward duration per method (prefill or decode)"),
    ("histogram", "tgi_request_mean_time_per_token_duration", "Mean time per token per request"),
    ("histogram", "tgi_request_generated_tokens", "Generated tokens per request"),
    ("histogram", "tgi_batch_concat_duration", None),
    ("histogram", "tgi_request_validation_duration", "Request validation duration"),
    ("summary", "tgi_request_skipped_tokens", "Speculated tokens per request"),
    ("histogram", "tgi_batch_inference_duration", "Batch inference duration"),
    ("histogram", "tgi_request_queue_duration", "Request queue duration"),
    ("histogram", "tgi_request_max_new_tokens", "Maximum new tokens per request"),
    ("histogram", "tgi_batch_decode_duration", "Time spent decoding a batch per method (prefill or decode)"),
    ("histogram", "tgi_request_duration", "Request duration"),
    ("histogram", "tgi_batch_next_size", "Batch size of the next batch"),
)
_SUMMARY_QUANTILES = ("0", "0.5", "0.9", "0.95", "0.99", "0.999", "1")


class _RustHistogram:
    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.count += 1
        self.total += value


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{v}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class TgiExposition:
    """TGI 3.x's ``/metrics`` for one simulation, in metrics-exporter-prometheus 0.15.3's layout."""

    content_type = "text/plain; charset=utf-8"
    max_input_tokens = MAX_INPUT_TOKENS

    def __init__(self, sim: Simulation) -> None:
        if len(sim.ranks) != 1:
            raise ValueError("TGI has no data-parallel ranks behind one URL")
        self.sim = sim
        self.rng = random.Random(sim.seed + 1)
        self.max_total_tokens = sim.engine.max_model_len
        durations = tgi_duration_buckets()
        self.bounds: dict[str, tuple[float, ...]] = {
            name: durations for kind, name, _ in _TGI_FAMILIES if kind == "histogram" and name.endswith("duration")}
        self.bounds["tgi_request_input_length"] = tgi_percent_buckets(self.max_input_tokens)
        self.bounds["tgi_request_generated_tokens"] = tgi_percent_buckets(self.max_total_tokens)
        self.bounds["tgi_request_max_new_tokens"] = tgi_percent_buckets(self.max_total_tokens)
        self.bounds["tgi_batch_next_size"] = tuple(float(i) for i in range(1, 1025))
        self._reset()
        sim.ranks[0].recorders.append(self)

    def _reset(self) -> None:
        # a series exists from its first use, as in the metrics crate
        self.counters: dict[str, dict[Labels, int]] = {}
        self.histograms: dict[str, dict[Labels, _RustHistogram]] = {}
        self.skipped_count = 0
        self.skipped_seen = False

    def _inc(self, name: str, labels: Labels = (), value: int = 1) -> None:
        series = self.counters.setdefault(name, {})
        series[labels] = series.get(labels, 0) + value

    def _observe(self, name: str, value: float, labels: Labels = ()) -> None:
        series = self.histograms.setdefault(name, {})
        histogram = series.get(labels)
        if histogram is None:
            histogram = series[labels] = _RustHistogram(self.bounds[name])
        histogram.observe(value)

    def _small(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high)

    # ---------------------------------------------------------------------------- Recorder

    def arrived(self, request: Request, now: float) -> None:
        self._inc("tgi_request_count")
        self._observe("tgi_request_validation_duration", self._small(0.0005, 0.002))
        self._observe("tgi_request_input_length", request.prompt)
        self._observe("tgi_request_max_new_tokens", request.max_tokens)

    def step(self, report: StepReport) -> None:
        work = (("prefill", report.prefill_seconds, report.admitted > 0),
                ("decode", report.decode_seconds, report.decode_tokens > 0))
        for method, seconds, ran in work:
            if not ran:
                continue
            labels = (("method", method),)
            self._inc("tgi_batch_inference_count", labels)
            self._inc("tgi_batch_inference_success", labels)
            self._observe("tgi_batch_forward_duration", seconds * 0.95, labels)
            self._observe("tgi_batch_decode_duration", self._small(0.0002, 0.001), labels)
            self._observe("tgi_batch_filter_duration", self._small(0.0001, 0.001), labels)
            self._observe("tgi_batch_inference_duration", seconds, labels)
        if report.admitted:
            self._observe("tgi_batch_next_size", report.admitted)
            if report.decode_tokens:
                # new requests joined a running batch
                self._inc("tgi_batch_concat", (("reason", "backpressure"),))
                self._observe("tgi_batch_concat_duration", self._small(0.001, 0.003), (("method", "decode"),))

    def prefilled(self, request: Request, first_admission: bool) -> None:
        pass

    def first_token(self, request: Request, now: float) -> None:
        pass

    def preempted(self, request: Request) -> None:
        pass

    def finished(self, request: Request, now: float) -> None:
        scheduled = request.scheduled if request.scheduled is not None else request.arrival
        inference = now - scheduled
        self._inc("tgi_request_success")
        self._observe("tgi_request_duration", now - request.arrival)
        self._observe("tgi_request_queue_duration", scheduled - request.arrival)
        self._observe("tgi_request_inference_duration", inference)
        self._observe("tgi_request_mean_time_per_token_duration", inference / max(request.generated, 1))
        self._observe("tgi_request_generated_tokens", request.generated)
        self.skipped_seen = True
        self.skipped_count += request.generated

    def aborted(self, request: Request, now: float) -> None:
        pass

    def restarted(self, now: float) -> None:
        self._reset()

    # ---------------------------------------------------------------------------- rendering

    def render(self) -> bytes:
        sim = self.sim
        gauges = {"tgi_batch_current_max_tokens": sim.ranks[0].kv_used_tokens, "tgi_queue_size": sim.waiting_count,
                  "tgi_batch_max_total_tokens": sim.engine.kv_capacity_tokens,
                  "tgi_batch_current_size": sim.running_count}
        lines: list[str] = []
        for kind, name, help_text in _TGI_FAMILIES:
            body: list[str] = []
            if kind == "counter":
                body = [f"{name}{_labels(labels)} {value}" for labels, value in self.counters.get(name, {}).items()]
            elif kind == "gauge":
                body = [f"{name} {rust_f64(float(gauges[name]))}"]
            elif kind == "summary":
                if self.skipped_seen:
                    body = [f'{name}{{quantile="{q}"}} 0' for q in _SUMMARY_QUANTILES]
                    body += [f"{name}_sum 0", f"{name}_count {self.skipped_count}"]
            else:
                for labels, histogram in self.histograms.get(name, {}).items():
                    cumulative = 0
                    for bound, count in zip(histogram.bounds, histogram.counts, strict=True):
                        cumulative += count
                        le = 'le="' + rust_f64(bound) + '"'
                        body.append(f"{name}_bucket{_labels(labels, le)} {cumulative}")
                    inf = 'le="+Inf"'
                    body.append(f"{name}_bucket{_labels(labels, inf)} {histogram.count}")
                    body.append(f"{name}_sum{_labels(labels)} {rust_f64(histogram.total)}")
                    body.append(f"{name}_count{_labels(labels)} {histogram.count}")
            if not body:
                continue
            if help_text is not None:
                lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(body)
            lines.append("")
        lines.append(f"# HELP {INFO_NAME} {INFO_HELP}")
        lines.append(f"# TYPE {INFO_NAME} gauge")
        lines.append(f'{INFO_NAME}{{engine_kind="tgi",scenario="{sim.scenario.name}"}} 1')
        lines.append("")
        return ("\n".join(lines) + "\n").encode("utf-8")

    def identity(self) -> dict[str, Any]:
        engine = self.sim.engine
        return {"/info": {
            "model_id": engine.served_name, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4,
            "max_input_tokens": self.max_input_tokens, "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router",
            "version": SIMULATOR, "sha": None, "docker_label": None,
            # TGI 1.x reported this; the simulator keeps it so KV usage can be derived
            "max_batch_total_tokens": engine.kv_capacity_tokens,
        }}


Exposition = VllmExposition | TgiExposition | TritonExposition | SglangExposition


def exposition_for(sim: Simulation, vllm_version: str = VLLM_VERSION) -> Exposition:
    """The exposition of the simulation's engine kind (registered as its recorder); a vLLM one in the shape of
    ``vllm_version``."""
    if sim.engine.kind == "triton":
        return TritonExposition(sim)
    if sim.engine.kind == "sglang":
        return SglangExposition(sim)
    return VllmExposition(sim, vllm_version) if sim.engine.kind == "vllm" else TgiExposition(sim)


def describe(sim: Simulation) -> Mapping[str, str]:
    """One line's worth of facts about a simulation (for the start-up log)."""
    engine = sim.engine
    return {"engine": engine.kind, "scenario": sim.scenario.name, "model": engine.served_name,
            "gpus": f"{sim.gpus} x {engine.gpu.name}", "data_parallel_ranks": str(len(sim.ranks)),
            "kv_cache_tokens": str(sim.kv_capacity_tokens),
            "arrivals_per_second": f"{sim.rate:.3g}"}
