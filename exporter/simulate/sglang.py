"""The simulated SGLang engine's ``/metrics`` (``--enable-metrics``) and identity documents.

SGLang runs prometheus_client in multiprocess mode (``MultiProcessCollector`` over the tokenizer's
and each scheduler's ``.db`` files), and this renders what that collector serves: counters with
``_total`` and no ``_created``; histogram samples ordered ``_sum``, buckets, ``_count``; labels
sorted; a series (and its family) only once it was first written; ``multiprocess_mode="all"``
gauges with a ``pid`` label. Names, HELP strings, label names and bucket bounds are SGLang's
(``python/sglang/srt/observability/metrics_collector.py`` @ 44cedc2b9c7d), in the family order of
``tests/fixtures/engines/sglang.txt`` (the real order follows the ``.db`` files' directory order).
The simulated engine does not speculate: like SGLang without ``--speculative-algorithm`` it
reports an accept length and rate of 0. It also serves ``infermeter_simulator_info``.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.simulate.model import Rank, Request, Simulation, StepReport

SGLANG_VERSION = "0.5.6"
SCHEDULER_PID = 4200  # the pid label of multiprocess_mode="all" gauges (first scheduler)

TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 200.0, 400.0)
E2E_BUCKETS = (*TTFT_BUCKETS, 600.0, 1200.0, 1800.0, 2400.0)
ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1, 0.2,
               0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0)
RETRACTION_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0,
                      75.0, 100.0)
QUEUE_BUCKETS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0,
                 90.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 1200.0, 1400.0, 1600.0,
                 1800.0, 2000.0, 2500.0, 3000.0)

# SchedulerMetricsCollector's multiprocess_mode="mostrecent" gauges, in the fixture's order
SCHEDULER_GAUGES: tuple[tuple[str, str], ...] = (
    ("num_running_reqs", "The number of running requests."),
    ("num_used_tokens", "The number of used tokens."),
    ("token_usage", "The token usage."),
    ("pending_prealloc_token_usage", "The token usage for pending preallocated tokens (not preallocated yet)."),
    ("swa_token_usage", "The token usage for SWA layers."),
    ("mamba_usage", "The token usage for Mamba layers."),
    ("decode_sum_seq_lens", "The sum of all sequence lengths in decode."),
    ("gen_throughput", "The generation throughput (token/s)."),
    ("num_queue_reqs", "The number of requests in the waiting queue."),
    ("num_grammar_queue_reqs", "The number of requests in the grammar waiting queue."),
    ("num_running_reqs_offline_batch",
     "The number of running low-priority offline batch requests(label is 'batch')."),
    ("cache_hit_rate", "The prefix cache hit rate."),
    ("max_total_num_tokens", "Maximum total number of tokens in the KV cache pool."),
    ("spec_accept_length", "The average acceptance length of speculative decoding."),
    ("spec_accept_rate",
     "The average acceptance rate of speculative decoding (`accepted tokens / total draft tokens` in batch)."),
    ("num_prefill_prealloc_queue_reqs", "The number of requests in the prefill prealloc queue."),
    ("num_prefill_inflight_queue_reqs", "The number of requests in the prefill inflight queue."),
    ("num_decode_prealloc_queue_reqs", "The number of requests in the decode prealloc queue."),
    ("num_decode_transfer_queue_reqs", "The number of requests in the decode transfer queue."),
    ("kv_transfer_speed_gb_s", "The transfer speed of the KV cache in GB/s."),
    ("kv_transfer_latency_ms", "The transfer latency of the KV cache in ms."),
    ("kv_transfer_bootstrap_ms", "The bootstrap time of the KV transfer in ms."),
    ("kv_transfer_alloc_ms", "The allocation waiting time of the KV transfer in ms."),
    ("kv_transfer_total_mb", "The total number of tokens transferred in the KV cache."),
    ("utilization", "The utilization."),
    ("engine_startup_time", "The time taken for the engine to start up."),
    ("engine_load_weights_time", "The time taken for the engine to load weights."),
    ("new_token_ratio", "The new token ratio."),
    ("is_cuda_graph", "Whether the batch is using CUDA graph."),
    ("num_unique_running_routing_keys", "Number of unique routing keys in running batch."),
)
# (kind, name, HELP, bounds): the rest of the families, in the fixture's order (the tokenizer's series carry
# model_name and engine_type only, the schedulers' the rank labels too)
FAMILIES: tuple[tuple[str, str, str, tuple[float, ...]], ...] = (
    ("gauge", "cache_config_info", "Cache configuration information.", ()),
    ("histogram", "time_to_first_token_seconds", "Histogram of time to first token in seconds.",
     TTFT_BUCKETS),
    ("histogram", "inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
     ITL_BUCKETS),
    ("histogram", "e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
     E2E_BUCKETS),
    ("histogram", "num_retractions", "Histogram of retraction counts per request.", RETRACTION_BUCKETS),
    ("gauge", "num_retracted_reqs", "The number of retracted requests.", ()),
    ("gauge", "num_paused_reqs", "The number of paused requests by async weight sync.", ()),
    ("histogram", "queue_time_seconds", "Histogram of queueing time in seconds.", QUEUE_BUCKETS),
    ("counter", "num_retracted_requests", "Total number of retracted requests.", ()),
    ("counter", "num_retracted_input_tokens", "Total number of retracted input tokens.", ()),
    ("counter", "num_retracted_output_tokens", "Total number of retracted output tokens.", ()),
    ("counter", "cuda_graph_passes", "Total number of forward passes categorized by CUDA graph.", ()),
    ("counter", "realtime_tokens", "Total number of tokens processed (updated on each log interval). mode: "
     "prefill_compute, prefill_cache, decode.", ()),
    ("counter", "prompt_tokens", "Number of prefill tokens processed.", ()),
    ("counter", "generation_tokens", "Number of generation tokens processed.", ()),
    ("counter", "cached_tokens", "Number of cached prompt tokens by source (device/host/storage).", ()),
    ("counter", "num_requests", "Number of requests processed.", ()),
    ("counter", "num_aborted_requests", "Number of requests aborted.", ()),
)
Labels = tuple[tuple[str, str], ...]


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: +Inf
        self.total = 0.0

    def observe(self, value: float, times: int = 1, total: float | None = None) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times if total is None else total


class _Series:
    """Every series written since the (simulated) engine started: family -> labels -> value."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = {}
        self.histograms: dict[str, dict[Labels, _Histogram]] = {}

    def inc(self, name: str, labels: Labels, amount: float) -> None:
        family = self.counters.setdefault(name, {})
        family[labels] = family.get(labels, 0.0) + amount

    def observe(self, name: str, labels: Labels, bounds: tuple[float, ...], value: float, times: int = 1,
                total: float | None = None) -> None:
        family = self.histograms.setdefault(name, {})
        histogram = family.get(labels) or family.setdefault(labels, _Histogram(bounds))
        histogram.observe(value, times, total)


class SglangExposition(Collector):
    """SGLang's ``/metrics`` for one simulation: one scheduler per data-parallel rank (``dp_rank`` labels
    when there are several), one tokenizer manager."""

    content_type = CONTENT_TYPE_PLAIN_0_0_4  # prometheus_client's ASGI app, for infermeter's Accept header

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.started = time.time()
        self.bounds = {name: bounds for kind, name, _, bounds in FAMILIES if kind == "histogram"}
        self.ranks = [_SchedulerRank(self, rank, len(sim.ranks) > 1) for rank in sim.ranks]
        self.series = _Series()
        for recorder, rank in zip(self.ranks, sim.ranks, strict=True):
            rank.recorders.append(recorder)

    @property
    def tokenizer_labels(self) -> Labels:
        return (("engine_type", "unified"), ("model_name", self.sim.engine.served_name))

    def observe(self, name: str, labels: Labels, value: float, times: int = 1, total: float | None = None) -> None:
        self.series.observe(name, labels, self.bounds[name], value, times, total)

    def restart(self) -> None:
        """Every process starts again: new .db files, no series until first written."""
        self.series = _Series()
        for rank in self.ranks:
            rank.reset()

    # ---------------------------------------------------------------------------- rendering

    def collect(self) -> Iterator[Metric]:
        running = [rank for rank in self.ranks if rank.logged]
        for name, help_text in SCHEDULER_GAUGES:
            if running:
                metric = Metric(f"sglang:{name}", help_text, "gauge")
                for rank in running:
                    metric.add_sample(metric.name, dict(rank.labels), rank.gauge(name))
                yield metric
        for kind, name, help_text, _ in FAMILIES:
            metric = Metric(f"sglang:{name}", help_text, kind)
            if name == "cache_config_info":
                capacity = self.sim.engine.kv_capacity_tokens
                metric.add_sample(metric.name, {"num_pages": str(capacity), "page_size": "1"}, 1.0)
            elif kind == "gauge":
                for rank in running:
                    labels = {**dict(rank.labels), "pid": str(SCHEDULER_PID + rank.rank.index)}
                    metric.add_sample(metric.name, labels, float(rank.retracted_since_log if name ==
                                                                 "num_retracted_reqs" else 0))
            elif kind == "counter":
                for key, value in self.series.counters.get(name, {}).items():
                    metric.add_sample(f"{metric.name}_total", dict(key), value)
            else:
                for key, histogram in self.series.histograms.get(name, {}).items():
                    _histogram_samples(metric, dict(key), histogram)
            if metric.samples:
                yield metric
        from exporter.simulate.exposition import INFO_HELP, INFO_NAME  # (that module imports this one)

        info = Metric(INFO_NAME, INFO_HELP, "gauge")
        info.add_sample(INFO_NAME, {"engine_kind": "sglang", "scenario": self.sim.scenario.name}, 1.0)
        yield info

    def render(self) -> bytes:
        for rank in self.ranks:
            rank.log()
        body = generate_latest(self)
        for rank in self.ranks:
            rank.retracted_since_log = 0
        return body

    def identity(self) -> dict[str, Any]:
        from exporter.simulate.exposition import SIMULATOR

        engine = self.sim.engine
        model = engine.served_name
        capacity = engine.kv_capacity_tokens
        server_info = {
            "model_path": f"/simulator/{model}", "tokenizer_path": f"/simulator/{model}", "served_model_name": model,
            "host": "127.0.0.1", "port": 30000, "dtype": "auto", "kv_cache_dtype": "auto", "page_size": 1,
            "tp_size": engine.gpus, "pp_size": 1, "dp_size": len(self.sim.ranks), "enable_dp_attention": False,
            "mem_fraction_static": engine.gpu_memory_utilization, "disaggregation_mode": "null",
            "enable_metrics": True, "speculative_algorithm": None, "max_total_num_tokens": capacity,
            "max_req_input_len": engine.max_model_len - 1,
            "internal_states": [{"last_gen_throughput": rank.throughput, "memory_usage": {"token_capacity": capacity}}
                                for rank in self.ranks],
            "version": f"{SGLANG_VERSION}+{SIMULATOR}",
        }
        return {
            "/v1/models": {"object": "list", "data": [{
                "id": model, "object": "model", "created": int(self.started), "owned_by": SIMULATOR, "root": model,
                "parent": None, "max_model_len": engine.max_model_len}]},
            "/server_info": server_info,
            "/get_server_info": server_info,
            "/get_model_info": {"model_path": f"/simulator/{model}", "tokenizer_path": f"/simulator/{model}",
                                "is_generation": True, "preferred_sampling_params": None, "weight_version": "default"},
        }


def _histogram_samples(metric: Metric, labels: dict[str, str], histogram: _Histogram) -> None:
    """MultiProcessCollector's order: _sum, the cumulative buckets, _count."""
    metric.add_sample(f"{metric.name}_sum", labels, histogram.total)
    cumulative = 0.0
    # prometheus_client's floatToGoString of each bound (repr below 1e6) and +Inf
    for le, count in zip((*map(repr, histogram.bounds), "+Inf"), histogram.counts, strict=True):
        cumulative += count
        metric.add_sample(f"{metric.name}_bucket", {**labels, "le": le}, cumulative)
    metric.add_sample(f"{metric.name}_count", labels, cumulative)


class _SchedulerRank:
    """One data-parallel rank's scheduler: its gauges (set on every log), counters and queue times."""

    def __init__(self, exposition: SglangExposition, rank: Rank, data_parallel: bool) -> None:
        self.exposition = exposition
        self.rank = rank
        labels = {"engine_type": "unified", "model_name": rank.engine.served_name, "moe_ep_rank": "0",
                  "pp_rank": "0", "tp_rank": "0"}
        if data_parallel:
            labels["dp_rank"] = str(rank.index)
        self.labels: Labels = tuple(sorted(labels.items()))
        self.reset()

    def reset(self) -> None:
        self.logged = False
        self.values: dict[str, float] = {}
        self.retracted_since_log = 0
        self.throughput = 0.0
        self.last_hit_rate = 0.0
        self.cached_this_step = 0
        self._tokens_at_log, self._time_at_log = 0, self.rank.now

    def log(self) -> None:
        """What log_prefill_stats / log_decode_stats set (SchedulerStats), read from the model now."""
        rank, engine = self.rank, self.rank.engine
        if not self.logged:
            return
        elapsed = rank.now - self._time_at_log
        if elapsed > 0:
            self.throughput = (rank.totals.generation_tokens - self._tokens_at_log) / elapsed
            self._tokens_at_log, self._time_at_log = rank.totals.generation_tokens, rank.now
        self.values = {
            "num_running_reqs": rank.running_count, "num_used_tokens": int(rank.kv_used_tokens),
            "token_usage": rank.kv_usage, "decode_sum_seq_lens": rank.context_tokens,
            "gen_throughput": self.throughput, "num_queue_reqs": rank.waiting_count,
            "cache_hit_rate": self.last_hit_rate, "max_total_num_tokens": engine.kv_capacity_tokens,
            "engine_startup_time": 31.5, "engine_load_weights_time": 5.2, "new_token_ratio": 0.7, "is_cuda_graph": 1,
        }

    def gauge(self, name: str) -> float:
        return float(self.values.get(name, 0.0))

    # ---------------------------------------------------------------------------- Recorder

    def arrived(self, request: Request, now: float) -> None:
        pass

    def step(self, report: StepReport) -> None:
        self.logged = True
        series = self.exposition.series
        if report.prefill_tokens:  # SGLang skips zero increments
            series.inc("realtime_tokens", (*self.labels, ("mode", "prefill_compute")), report.prefill_tokens)
        if report.decode_tokens:
            series.inc("realtime_tokens", (*self.labels, ("mode", "decode")), report.decode_tokens)
            series.inc("cuda_graph_passes", (*self.labels, ("mode", "decode_cuda_graph")), 1)
            # the tokenizer sees one new token per running request, an interval of one step apart
            self.exposition.observe("inter_token_latency_seconds", self.exposition.tokenizer_labels, report.seconds,
                                    times=report.decode_tokens, total=report.seconds * report.decode_tokens)
        computed = report.prefill_tokens
        if report.admitted:
            cached = self.cached_this_step
            self.last_hit_rate = cached / (computed + cached) if computed + cached else 0.0
        elif report.decode_tokens:
            self.last_hit_rate = 0.0
        self.cached_this_step = 0

    def prefilled(self, request: Request, first_admission: bool) -> None:
        if first_admission:
            scheduled = request.scheduled if request.scheduled is not None else request.arrival
            self.exposition.observe("queue_time_seconds", self.labels, scheduled - request.arrival)
            if request.cached:
                self.exposition.series.inc("realtime_tokens", (*self.labels, ("mode", "prefill_cache")),
                                           request.cached)
                self.cached_this_step += request.cached

    def first_token(self, request: Request, now: float) -> None:
        self.exposition.observe("time_to_first_token_seconds", self.exposition.tokenizer_labels,
                                now - request.arrival)

    def preempted(self, request: Request) -> None:
        series = self.exposition.series
        series.inc("num_retracted_requests", self.labels, 1)
        series.inc("num_retracted_input_tokens", self.labels, request.prompt)
        series.inc("num_retracted_output_tokens", self.labels, request.generated)
        self.retracted_since_log += 1

    def finished(self, request: Request, now: float) -> None:
        labels, series = self.exposition.tokenizer_labels, self.exposition.series
        series.inc("prompt_tokens", labels, request.prompt)
        series.inc("generation_tokens", labels, request.generated)
        if request.cached:
            series.inc("cached_tokens", (*labels, ("cache_source", "device")), request.cached)
        series.inc("num_requests", labels, 1)
        self.exposition.observe("e2e_request_latency_seconds", labels, now - request.arrival)
        self.exposition.observe("num_retractions", labels, request.preemptions)

    def aborted(self, request: Request, now: float) -> None:
        self.exposition.series.inc("num_aborted_requests", self.exposition.tokenizer_labels, 1)

    def restarted(self, now: float) -> None:
        if self.rank.index == 0:  # the ranks restart together
            self.exposition.restart()
