"""The simulated engine as NVIDIA Triton serving a TensorRT-LLM model in the usual ensemble.

The models are those of tensorrtllm_backend's ``all_models/inflight_batcher_llm`` (``ensemble``,
``preprocessing``, ``tensorrt_llm``, ``postprocessing``), streaming: every generated token is one
response, and so one ``postprocessing`` request. The body is laid out as Triton's metrics port
(8002) serves it: prometheus-cpp v1.0.1's ``TextSerializer`` (no ``_total``, no blank lines,
labels sorted by name, ``_count`` and ``_sum`` before the buckets, numbers as ``std::ostream`` at
16 significant digits), families in registration order (Triton core's counters, the backend's
counter, core's gauges, the backend's gauges, histograms), as with ``--metrics-config
histogram_latencies=true --allow-gpu-metrics=false --allow-cpu-metrics=false``. Names, HELP
texts and units: ``tests/fixtures/engines/triton-trtllm.txt`` and its SOURCES.md entry.

What a real Triton would report and nothing more: Triton core's per-model counters (durations in
whole microseconds, first responses in whole milliseconds), the TensorRT-LLM backend's batch and
KV-cache gauges (blocks of 64 tokens; the executor only counts up to ``max_batch_size`` requests
as active, so a longer queue is not seen) and its per-request token-length histograms. No
preemption count (TensorRT-LLM reports none). The queueing model schedules as for vLLM.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from exporter.simulate.model import Request, Simulation, StepReport

ENSEMBLE, PREPROCESSING, LLM, POSTPROCESSING = "ensemble", "preprocessing", "tensorrt_llm", "postprocessing"
MODELS = (ENSEMBLE, LLM, POSTPROCESSING, PREPROCESSING)  # the order series are written in
TOKENS_PER_BLOCK = 64
FIRST_RESPONSE_BUCKETS_MS = (100.0, 500.0, 2000.0, 5000.0)  # Triton core's default
TOKEN_BUCKETS = (10.0, 50.0, 100.0, 500.0, 1000.0)  # custom_metrics_reporter.cc
REASONS = ("OTHER", "BACKEND", "CANCELED", "REJECTED")
LOAD_SECONDS = {ENSEMBLE: 0.004318, LLM: 41.873152, POSTPROCESSING: 2.380514, PREPROCESSING: 2.431907}
INFO_NAME = "infermeter_simulator_info"
INFO_HELP = "This engine is the infermeter simulator (not a real inference server): its scenario and engine kind."

# (counter family, its HELP): triton-inference-server/core src/metrics.cc
_COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)"),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)"),
    ("nv_inference_request_duration_us",
     "Cumulative inference request duration in microseconds (includes cached requests)"),
    ("nv_inference_queue_duration_us",
     "Cumulative inference queuing duration in microseconds (includes cached requests)"),
    ("nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in microseconds (does not include cached requests)"),
)


def cpp_double(value: float) -> str:
    """``std::ostream << double`` at precision 16 (prometheus-cpp's TextSerializer)."""
    if math.isnan(value):
        return "Nan"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return format(float(value), ".16g")


def _labels(pairs: dict[str, str], le: str | None = None) -> str:
    parts = [f'{k}="{v}"' for k, v in sorted(pairs.items())]
    if le is not None:
        parts.append(f'le="{le}"')
    return "{" + ",".join(parts) + "}" if parts else ""


class _Histogram:
    """prometheus-cpp's Histogram: per-bucket counts (a value lands in the first bound >= it)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times

    def lines(self, name: str, labels: dict[str, str]) -> list[str]:
        count = sum(self.counts)
        out = [f"{name}_count{_labels(labels)} {count}", f"{name}_sum{_labels(labels)} {cpp_double(self.total)}"]
        cumulative = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            out.append(f"{name}_bucket{_labels(labels, cpp_double(bound))} {cumulative}")
        out.append(f"{name}_bucket{_labels(labels, '+Inf')} {count}")
        return out


@dataclass
class _Model:
    """One Triton model's core counters (durations in whole microseconds) and first-response histogram."""

    success: float = 0.0
    failure: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REASONS, 0.0))
    count: float = 0.0
    exec_count: float = 0.0
    request_us: float = 0.0
    queue_us: float = 0.0
    input_us: float = 0.0
    infer_us: float = 0.0
    output_us: float = 0.0
    first_response: _Histogram = field(default_factory=lambda: _Histogram(FIRST_RESPONSE_BUCKETS_MS))

    def succeeded(self, seconds: float, queue: float, compute_input: float, compute_output: float,
                  times: int = 1) -> None:
        """``times`` requests of ``seconds`` each (Triton adds ``ns / 1000`` per request)."""
        self.success += times
        self.count += times
        self.exec_count += times
        self.request_us += int(seconds * 1e6) * times
        self.queue_us += int(queue * 1e6) * times
        self.input_us += int(compute_input * 1e6) * times
        self.output_us += int(compute_output * 1e6) * times
        self.infer_us += int(max(seconds - queue - compute_input - compute_output, 0.0) * 1e6) * times

    def values(self) -> tuple[float, ...]:
        return (self.success, 0.0, self.count, self.exec_count, self.request_us, self.queue_us, self.input_us,
                self.infer_us, self.output_us)


class TritonExposition:
    """Triton's ``/metrics`` for one simulation (the Recorder of its only rank)."""

    content_type = "text/plain; charset=utf-8"  # server src/http_server.cc HTTPMetricsServer::Handle

    def __init__(self, sim: Simulation) -> None:
        if len(sim.ranks) != 1:
            raise ValueError("the simulated Triton runs one TensorRT-LLM engine")
        self.sim = sim
        self.rng = random.Random(sim.seed + 2)
        self.started = time.time()
        self._reset()
        sim.ranks[0].recorders.append(self)

    def _reset(self) -> None:
        self.models = {name: _Model() for name in MODELS}
        self.input_tokens = _Histogram(TOKEN_BUCKETS)
        self.output_tokens = _Histogram(TOKEN_BUCKETS)
        self.preprocess: dict[int, float] = {}  # request id -> its preprocessing seconds
        self.last_step: StepReport | None = None

    def _postprocess(self, responses: int) -> None:
        """``responses`` streamed responses, each one postprocessing request (a detokenisation, ~0.2 ms)."""
        if responses <= 0:
            return
        seconds = self.rng.uniform(0.00018, 0.00024)
        model = self.models[POSTPROCESSING]
        model.succeeded(seconds, 0.00002, 0.00001, 0.000012, times=responses)
        model.first_response.observe(float(int(seconds * 1000)), responses)

    # ---------------------------------------------------------------------------- Recorder

    def arrived(self, request: Request, now: float) -> None:
        seconds = self.rng.uniform(0.0012, 0.0026)  # tokenisation, before the request reaches tensorrt_llm
        self.preprocess[request.id] = seconds
        model = self.models[PREPROCESSING]
        model.succeeded(seconds, 0.00004, 0.00002, 0.00003)
        model.first_response.observe(float(int(seconds * 1000)))

    def step(self, report: StepReport) -> None:
        self.last_step = report
        self._postprocess(report.decode_tokens)

    def prefilled(self, request: Request, first_admission: bool) -> None:
        self._postprocess(1)  # the prefill step's token is a response too

    def first_token(self, request: Request, now: float) -> None:
        first = now - request.arrival
        pre = self.preprocess.get(request.id, 0.0)
        self.models[LLM].first_response.observe(float(int(first * 1000)))
        self.models[ENSEMBLE].first_response.observe(float(int((pre + first + 0.0002) * 1000)))

    def preempted(self, request: Request) -> None:
        pass  # TensorRT-LLM reports no preemptions

    def finished(self, request: Request, now: float) -> None:
        seconds = now - request.arrival
        pre = self.preprocess.pop(request.id, 0.0)
        self.models[LLM].succeeded(seconds, self.rng.uniform(0.00005, 0.00012), 0.0001, 0.0002)
        self.models[ENSEMBLE].succeeded(pre + seconds + 0.00025, 0.000012, 0.0, 0.0)
        self.input_tokens.observe(float(request.prompt))
        self.output_tokens.observe(float(request.generated))

    def aborted(self, request: Request, now: float) -> None:
        # the client gave up: tensorrt_llm's request is cancelled; an ensemble counts a failed step and its own
        # failure under OTHER (docs/user_guide/metrics.md, "Failure Count Categories")
        self.preprocess.pop(request.id, None)
        self.models[LLM].failure["CANCELED"] += 1
        self.models[ENSEMBLE].failure["OTHER"] += 2

    def restarted(self, now: float) -> None:
        self._reset()

    # ---------------------------------------------------------------------------- rendering

    def _family(self, lines: list[str], name: str, help_text: str, kind: str,
                series: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{_labels(labels)} {cpp_double(value)}" for labels, value in series)

    def render(self) -> bytes:
        sim, engine = self.sim, self.sim.engine
        lines: list[str] = []
        for index, (name, help_text) in enumerate(_COUNTERS):
            if name == "nv_inference_request_failure":
                series = [({"model": m, "version": "1", "reason": r}, self.models[m].failure[r])
                          for m in MODELS for r in REASONS]
            else:
                series = [({"model": m, "version": "1"}, self.models[m].values()[index]) for m in MODELS]
            self._family(lines, name, help_text, "counter", series)
        llm = {"model": LLM, "version": "1"}
        self._family(lines, "nv_trt_llm_disaggregated_serving_metrics", "TRT LLM disaggregated serving metrics",
                     "counter", [({**llm, "disaggregated_serving_type": t}, 0.0)
                                 for t in ("request_count", "kv_cache_transfer_ms")])
        self._family(lines, "nv_inference_pending_request_count",
                     "Instantaneous number of pending requests awaiting execution per-model.", "gauge",
                     [({"model": m, "version": "1"}, 0.0) for m in MODELS])
        self._family(lines, "nv_model_load_duration_secs", "Model load time in seconds", "gauge",
                     [({"model": m, "version": "1"}, LOAD_SECONDS[m]) for m in MODELS])
        self._family(lines, "nv_pinned_memory_pool_total_bytes", "Pinned memory pool total memory size, in bytes",
                     "gauge", [({}, 268435456.0)])
        self._family(lines, "nv_pinned_memory_pool_used_bytes", "Pinned memory pool used memory size, in bytes",
                     "gauge", [({}, 0.0)])
        scheduled = sim.running_count
        active = min(scheduled + sim.waiting_count, engine.max_num_seqs)
        step = self.last_step
        context = step.admitted if step is not None else 0
        self._family(lines, "nv_trt_llm_request_metrics", "TRT LLM request metrics", "gauge",
                     [({**llm, "request_type": t}, float(v)) for t, v in
                      (("waiting", active - scheduled), ("context", context), ("scheduled", scheduled),
                       ("max", engine.max_num_seqs), ("active", active))])
        self._family(lines, "nv_trt_llm_runtime_memory_metrics", "TRT LLM runtime memory metrics", "gauge",
                     [({**llm, "memory_type": t}, v) for t, v in
                      (("pinned", 0.0), ("gpu", 18087936.0), ("cpu", 71303168.0))])
        blocks = engine.kv_capacity_tokens // TOKENS_PER_BLOCK
        used = min(blocks, math.ceil(sim.ranks[0].kv_used_tokens / TOKENS_PER_BLOCK))
        fraction = float(f"{used / blocks:.6f}") if blocks else 0.0  # std::to_string: six decimals
        self._family(lines, "nv_trt_llm_kv_cache_block_metrics", "TRT LLM KV cache block metrics", "gauge",
                     [({**llm, "kv_cache_block_type": t}, float(v)) for t, v in
                      (("fraction", fraction), ("reused", 0), ("tokens_per", TOKENS_PER_BLOCK), ("used", used),
                       ("free", blocks - used), ("max", blocks))])
        self._family(lines, "nv_trt_llm_inflight_batcher_metrics", "TRT LLM inflight_batcher-specific metrics",
                     "gauge", [({**llm, "inflight_batcher_specific_metric": t}, float(v)) for t, v in
                               (("paused_requests", 0), ("micro_batch_id", 0),
                                ("generation_requests", step.decode_tokens if step else 0),
                                ("total_context_tokens", step.prefill_tokens if step else 0))])
        self._family(lines, "nv_trt_llm_general_metrics", "General TRT LLM metrics", "gauge",
                     [({**llm, "general_type": "iteration_counter"}, float(sim.totals.steps)),
                      ({**llm, "general_type": "timestamp"}, float(int((self.started + sim.now) * 1e6)))])
        first = "nv_inference_first_response_histogram_ms"
        lines += [f"# HELP {first} Duration from request to first response in milliseconds",
                  f"# TYPE {first} histogram"]
        for m in MODELS:
            lines += self.models[m].first_response.lines(first, {"model": m, "version": "1"})
        for name, histogram, kind in (("nv_llm_output_token_len", self.output_tokens, "total_output_tokens"),
                                      ("nv_llm_input_token_len", self.input_tokens, "total_input_tokens")):
            lines += [f"# HELP {name} TRT LLM response metrics", f"# TYPE {name} histogram"]
            lines += histogram.lines(name, {**llm, "response_metric_type": kind})
        self._family(lines, INFO_NAME, INFO_HELP, "gauge",
                     [({"engine_kind": "triton", "scenario": sim.scenario.name}, 1.0)])
        return ("\n".join(lines) + "\n").encode("utf-8")

    def identity(self) -> dict[str, Any]:
        return {}  # the metrics port serves /metrics only
