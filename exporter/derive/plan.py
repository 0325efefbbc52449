"""Capacity planning: which GPU, how many, and what it costs, for a model, a load and SLO targets.

Pure: takes the model and GPU facts, the load, the targets, prices and an optional calibration, and
returns one :class:`Candidate` per (GPU model, tensor-parallel size), ranked. The formulas, the
rules and every output field are in docs/planning.md; in short, for each candidate:

1. the tensor-parallel size must split the attention heads (vLLM's rule, :func:`tensor_parallel_problem`);
2. the weights must fit beside vLLM's reservations: weight bytes / n <= memory x 0.9 - 2 GiB;
3. the KV cache left must hold one whole request (prompt + output tokens);
4. the largest batch B* whose decode step at the mean context meets the TPOT target
   (``roofline.largest_batch``; calibrated: the roofline step / decode efficiency);
5. the prefill of one prompt (its computed part, where a prefix cache serves the rest) must meet the TTFT
   target (queueing is not modelled);
6. a replica serves 1 / (output x step(B*) / B* + prefill) requests per second, and is planned
   busy at most ``analysis.TARGET_BUSY_SHARE`` of the time, as the live right-sizing does:
   replicas = ceil(rate / (0.8 x that)), GPUs = replicas x n; costs follow from the price.

The live what-if advice calls :func:`evaluate` per engine with the observed load and calibration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from exporter.derive import roofline
from exporter.derive.analysis import TARGET_BUSY_SHARE
from exporter.facts.gpus import GpuSpec
from exporter.facts.models import ModelSpec, from_config

SCHEMA_VERSION = 1
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
# the batch cap roofline.largest_batch applies (as the live right-sizing does)
MAX_BATCH = 1024
# Default SLO targets: MLPerf Inference's Server scenario for Llama-3.1-8B (mlcommons/inference,
# loadgen/mlperf.conf at 001712e9: llama3_1-8b.Server.ttft_latency = 2000, tpot_latency = 100 ms).
DEFAULT_TTFT_SECONDS = 2.0
DEFAULT_TPOT_SECONDS = 0.1
WEIGHT_DTYPES = ("bf16", "fp8", "int8", "int4")
KV_CACHE_DTYPES = ("auto", "fp8")

# What ``--dtype`` turns an unquantised checkpoint into, as a Hugging Face quantization_config that
# exporter.facts.models sizes (its docstring has the byte rules):
_QUANTISATIONS: Mapping[str, Mapping[str, Any]] = {
    # vLLM --quantization fp8 on a 16-bit checkpoint: fp8 weights with one fp32 scale per tensor,
    # dynamic activation scales
    "fp8": {"quant_method": "fp8", "activation_scheme": "dynamic"},
    # W8A8 int8 as llm-compressor writes it: symmetric, one scale per output channel
    "int8": {"quant_method": "compressed-tensors", "ignore": ["lm_head"], "config_groups": {"group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
        "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}}}},
    # AutoAWQ 4-bit, groups of 128 inputs with fp16 scales and packed zero points (GEMM version)
    "int4": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
}

# ruled-out codes (Candidate.ruled_out), in the order they are checked
RULED_OUT = ("tensor_parallel", "no_peak", "does_not_fit", "kv_cache_too_small", "tpot_unreachable",
             "ttft_unreachable")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Workload:
    """The load to plan for: arrivals per second and the mean request's prompt and output tokens."""

    requests_per_second: float
    prompt_tokens: float
    output_tokens: float
    # the part of the prompt the engine computes, where a prefix cache (or KV transferred from elsewhere)
    # serves the rest (vLLM prompt_tokens_by_source{source="local_compute"}); None: all of it. The prefill is
    # timed on these; the KV cache holds the whole prompt.
    computed_prompt_tokens: float | None = None

    def __post_init__(self) -> None:
        _positive("requests per second", self.requests_per_second)
        if self.prompt_tokens < 1 or not math.isfinite(self.prompt_tokens):
            raise ValueError(f"prompt tokens must be at least 1, got {self.prompt_tokens!r}")
        if self.output_tokens < 1 or not math.isfinite(self.output_tokens):
            raise ValueError(f"output tokens must be at least 1, got {self.output_tokens!r}")
        computed = self.computed_prompt_tokens
        if computed is not None and not (1 <= computed <= self.prompt_tokens):
            raise ValueError(f"computed prompt tokens must be at least 1 and at most the prompt tokens "
                             f"({self.prompt_tokens:g}), got {computed!r}")

    @property
    def prefill_tokens(self) -> float:
        """Tokens one request's prefill computes."""
        return self.computed_prompt_tokens if self.computed_prompt_tokens is not None else self.prompt_tokens

    @property
    def context(self) -> float:
        """Mean tokens in the KV cache per running request while it decodes: prompt + half the output."""
        return self.prompt_tokens + self.output_tokens / 2

    @property
    def tokens_per_request(self) -> float:
        return self.prompt_tokens + self.output_tokens


@dataclass(frozen=True)
class Slo:
    """Targets for the mean request: time to first token and time per output token, seconds."""

    ttft_seconds: float = DEFAULT_TTFT_SECONDS
    tpot_seconds: float = DEFAULT_TPOT_SECONDS

    def __post_init__(self) -> None:
        _positive("TTFT target", self.ttft_seconds)
        _positive("TPOT target", self.tpot_seconds)


@dataclass(frozen=True)
class Calibration:
    """The share of the roofline a watched deployment reached, applied to every candidate.

    ``decode``: roofline decode step / observed step (the exporter's analytic MBU);
    ``prefill``: roofline prefill / observed prefill (exporter.derive.rightsizing.plan_inputs says how).
    ``None`` leaves that phase at the roofline. Values above 1 are capped at 1 (the roofline is an
    upper bound; a higher ratio means the model undercounts the work), values <= 0 are refused.
    """

    decode: float | None = None
    prefill: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("decode", "prefill"):
            value = getattr(self, name)
            if value is not None:
                _positive(f"{name} efficiency", value)
                object.__setattr__(self, name, min(float(value), 1.0))

    @property
    def decode_factor(self) -> float:
        return self.decode if self.decode is not None else 1.0

    @property
    def prefill_factor(self) -> float:
        return self.prefill if self.prefill is not None else 1.0

    @property
    def applies(self) -> bool:
        return self.decode is not None or self.prefill is not None


ROOFLINE = Calibration()


@dataclass(frozen=True)
class Candidate:
    """One GPU model at one tensor-parallel size: feasible (``ruled_out`` None) or why not.

    Field names are the JSON keys (docs/planning.md, "JSON"); ``None`` where a step was not reached.
    """

    gpu: str
    tensor_parallel: int
    ruled_out: str | None = None
    reason: str | None = None
    weight_bytes_per_gpu: float | None = None
    usable_bytes_per_gpu: float | None = None
    weights_fit: bool | None = None
    kv_cache_tokens: float | None = None
    batch: int | None = None
    batch_limit: str | None = None          # "kv_cache" | "tpot" | "max_batch"
    tpot_seconds: float | None = None       # decode step at the batch (calibrated)
    ttft_seconds: float | None = None       # prefill of one prompt (calibrated), no queueing
    bound: str | None = None                # the decode step: "memory" | "compute"
    prefill_bound: str | None = None
    decode_tokens_per_second: float | None = None              # batch / step, one replica
    requests_per_second_per_replica: float | None = None       # at 100 % busy, prefill included
    generation_tokens_per_second_per_replica: float | None = None
    replicas: int | None = None
    gpus: int | None = None
    price_per_gpu_hour: float | None = None
    dollars_per_hour: float | None = None
    dollars_per_request: float | None = None
    dollars_per_million_tokens: float | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def feasible(self) -> bool:
        return self.ruled_out is None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["feasible"] = self.feasible
        return data


def _gb(value: float) -> str:
    return f"{value / 1e9:,.1f} GB"


def _time(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def tensor_parallel_problem(model: ModelSpec, tp: int) -> str | None:
    """Why vLLM cannot shard ``model`` over ``tp`` GPUs, or None.

    vLLM (ModelConfig.verify_with_parallel_config) needs the attention heads to divide by tp;
    QKVParallelLinear (vllm/model_executor/layers/linear.py) splits the KV heads when tp is smaller
    and replicates them when tp is larger, both exactly (``divide``), and the MLP's column-parallel
    layers split the intermediate size exactly.
    """
    if model.heads % tp:
        return f"tensor parallel {tp} does not divide the {model.heads} attention heads"
    if (model.kv_heads % tp) if tp < model.kv_heads else (tp % model.kv_heads):
        return f"tensor parallel {tp} neither divides nor is a multiple of the {model.kv_heads} KV heads"
    if model.intermediate_size % tp:
        return f"tensor parallel {tp} does not divide the MLP's {model.intermediate_size} columns"
    return None


def kv_sharded_model(model: ModelSpec, tp: int) -> ModelSpec:
    """The model as its KV cache is stored over ``tp`` GPUs: with fewer KV heads than GPUs, vLLM
    gives every GPU one KV head (replicas), so the cache holds ``tp`` heads' worth per token."""
    return replace(model, kv_heads=max(model.kv_heads, tp)) if tp > model.kv_heads else model


def with_weight_dtype(config: Mapping[str, Any], name: str, source: str, dtype: str | None) -> ModelSpec:
    """The model of a parsed ``config.json`` served with weights in ``dtype`` (None: as the checkpoint is).

    ``bf16`` serves an unquantised checkpoint in bf16; ``fp8``/``int8``/``int4`` quantise its decoder
    linear layers by the conventions in ``_QUANTISATIONS`` (embeddings and the LM head stay 16-bit).
    A checkpoint that is already quantised keeps its own format: asking for another raises ValueError.
    """
    model = from_config(config, name, source)
    if dtype is None or dtype == model.weight_dtype:
        return model
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (one of {', '.join(WEIGHT_DTYPES)})")
    if config.get("quantization_config") is not None or (
            isinstance(config.get("text_config"), Mapping) and config["text_config"].get("quantization_config")):
        raise ValueError(f"model {name} is already quantised ({model.weight_dtype}); --dtype converts unquantised "
                         "checkpoints only")
    if dtype == "bf16":
        return from_config(config, name, source, dtype="bf16")
    quantised = {**config, "quantization_config": dict(_QUANTISATIONS[dtype])}
    return from_config(quantised, name, f"{source}, served as {dtype}")


def _dtype_note(model: ModelSpec, gpu: GpuSpec) -> str | None:
    dtype = model.weight_dtype
    if dtype in ("fp8", "int8") and dtype not in gpu.peak_flops:
        return (f"no {dtype} tensor cores: {dtype} weights run weight-only (dequantised to 16 bits), "
                "so compute runs at the 16-bit rate")
    if dtype == "int4":
        return "int4 weights are weight-only: compute runs at the 16-bit rate"
    return None


def _batch_limit(batch: int, kv_capacity: float, context: float) -> str:
    fits = int(kv_capacity // max(context, 1.0))
    if batch >= MAX_BATCH and fits >= MAX_BATCH:
        return "max_batch"
    return "kv_cache" if batch >= fits else "tpot"


def evaluate(model: ModelSpec, gpu: GpuSpec, tp: int, workload: Workload, slo: Slo, *,
             price_per_gpu_hour: float | None, calibration: Calibration = ROOFLINE,
             kv_cache_dtype: str = "auto", pricing: str = "on-demand") -> Candidate:
    """One candidate: ``tp`` GPUs of ``gpu`` per replica serving ``workload`` within ``slo``."""
    out = Candidate(gpu=gpu.name, tensor_parallel=tp)
    notes = [note for note in (_dtype_note(model, gpu),) if note]
    problem = tensor_parallel_problem(model, tp)
    if problem is not None:
        return replace(out, ruled_out="tensor_parallel", reason=problem)
    flops = roofline.peak_flops(gpu, model)
    if flops is None:
        return replace(out, ruled_out="no_peak",
                       reason=f"the GPU's row has no tensor-core rate for {model.weight_dtype} weights")
    usable = gpu.memory_bytes * roofline.DEFAULT_GPU_MEMORY_UTILIZATION - roofline.DEFAULT_OVERHEAD_BYTES_PER_GPU
    per_gpu = model.weight_bytes / tp
    fit = model.weight_bytes <= tp * usable
    out = replace(out, weight_bytes_per_gpu=per_gpu, usable_bytes_per_gpu=usable, weights_fit=fit,
                  notes=tuple(notes))
    if not fit:
        return replace(out, ruled_out="does_not_fit",
                       reason=f"the weights need {_gb(per_gpu)} per GPU at tensor parallel {tp}, more than the "
                              f"{_gb(usable)} each holds ({_gb(gpu.memory_bytes)} x "
                              f"{roofline.DEFAULT_GPU_MEMORY_UTILIZATION} - "
                              f"{roofline.DEFAULT_OVERHEAD_BYTES_PER_GPU / roofline.GIB:g} GiB)")
    kv_model = kv_sharded_model(model, tp)
    kv_bytes = roofline.kv_dtype_bytes(kv_cache_dtype, model)
    capacity = roofline.kv_capacity_tokens(kv_model, tp, gpu.memory_bytes, kv_bytes)
    out = replace(out, kv_cache_tokens=capacity)
    if capacity < workload.tokens_per_request:
        return replace(out, ruled_out="kv_cache_too_small",
                       reason=f"the KV cache holds {capacity:,.0f} tokens, fewer than one request's "
                              f"{workload.tokens_per_request:,.0f}")

    decode_eff, prefill_eff = calibration.decode_factor, calibration.prefill_factor
    context = workload.context
    # step / efficiency <= target  <=>  step <= target x efficiency
    batch = roofline.largest_batch(kv_model, gpu, tp, context, kv_bytes, capacity, slo.tpot_seconds * decode_eff,
                                   limit=MAX_BATCH)
    if batch == 0:
        floor = roofline.decode_step(kv_model, gpu, tp, 1, context, kv_bytes)
        assert floor is not None  # flops is known
        return replace(out, ruled_out="tpot_unreachable", bound=floor.bound,
                       reason=f"the TPOT target {_time(slo.tpot_seconds)} is below the decode step at batch 1 "
                              f"and a {context:,.0f}-token context ({_time(floor.seconds / decode_eff)})")
    step = roofline.decode_step(kv_model, gpu, tp, batch, context, kv_bytes)
    first = roofline.prefill(kv_model, gpu, tp, workload.prefill_tokens)
    assert step is not None and first is not None  # flops is known, the prompt is at least 1 token
    step_seconds, prefill_seconds = step.seconds / decode_eff, first.seconds / prefill_eff
    out = replace(out, batch=batch, batch_limit=_batch_limit(batch, capacity, context), tpot_seconds=step_seconds,
                  ttft_seconds=prefill_seconds, bound=step.bound, prefill_bound=first.bound)
    if prefill_seconds > slo.ttft_seconds:
        return replace(out, ruled_out="ttft_unreachable",
                       reason=f"the prefill of {workload.prefill_tokens:,.0f} tokens takes {_time(prefill_seconds)}, "
                              f"above the TTFT target {_time(slo.ttft_seconds)}")

    # a replica's time per request: its share of decode steps plus its own prefill
    per_request = workload.output_tokens * step_seconds / batch + prefill_seconds
    replica_rps = 1.0 / per_request
    replicas = max(1, math.ceil(workload.requests_per_second / (TARGET_BUSY_SHARE * replica_rps) - 1e-9))
    gpus = replicas * tp
    out = replace(out, decode_tokens_per_second=batch / step_seconds, requests_per_second_per_replica=replica_rps,
                  generation_tokens_per_second_per_replica=replica_rps * workload.output_tokens,
                  replicas=replicas, gpus=gpus)
    if price_per_gpu_hour is None:
        return replace(out, notes=(*out.notes, f"no {pricing} price for this GPU: set one under gpus: in --config"))
    hourly = gpus * price_per_gpu_hour
    requests_per_hour = workload.requests_per_second * 3600
    return replace(out, price_per_gpu_hour=price_per_gpu_hour, dollars_per_hour=hourly,
                   dollars_per_request=hourly / requests_per_hour,
                   dollars_per_million_tokens=hourly / (requests_per_hour * workload.tokens_per_request) * 1e6)


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Feasible and priced first, cheapest per request (then fewer GPUs); feasible without a price
    next, fewest GPUs first; ruled out last, in catalogue order."""
    items = list(candidates)
    order = {id(c): i for i, c in enumerate(items)}

    def key(c: Candidate) -> tuple[int, float, float, int]:
        if c.ruled_out is not None:
            return (2, 0.0, 0.0, order[id(c)])
        if c.dollars_per_request is None:
            return (1, float(c.gpus or 0), 0.0, order[id(c)])
        return (0, c.dollars_per_request, float(c.gpus or 0), order[id(c)])

    return sorted(items, key=key)


@dataclass(frozen=True)
class Plan:
    """Every candidate for one model and load, ranked (:func:`rank`)."""

    model: ModelSpec
    workload: Workload
    slo: Slo
    pricing: str
    kv_cache_dtype: str
    calibration: Calibration
    candidates: tuple[Candidate, ...]

    @property
    def basis(self) -> str:
        return "calibrated" if self.calibration.applies else "roofline"

    @property
    def feasible(self) -> list[Candidate]:
        return [c for c in self.candidates if c.feasible]

    def to_json(self, extra_inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The documented JSON object (docs/planning.md, "JSON"); ``extra_inputs`` join ``inputs``."""
        model = self.model
        kv_bytes = roofline.kv_dtype_bytes(self.kv_cache_dtype, model)
        inputs: dict[str, Any] = {
            "model": {"name": model.name, "source": model.source, "architecture": model.architecture,
                      "weight_dtype": model.weight_dtype, "params_total": model.params_total,
                      "weight_bytes": model.weight_bytes,
                      "kv_cache_bytes_per_token": roofline.kv_bytes_per_token(model, kv_bytes)},
            "kv_cache_dtype": self.kv_cache_dtype,
            "requests_per_second": self.workload.requests_per_second,
            "prompt_tokens": self.workload.prompt_tokens,
            "output_tokens": self.workload.output_tokens,
            **({"computed_prompt_tokens": self.workload.computed_prompt_tokens}
               if self.workload.computed_prompt_tokens is not None else {}),
            "slo": {"ttft_seconds": self.slo.ttft_seconds, "tpot_seconds": self.slo.tpot_seconds},
            "pricing": self.pricing,
            "gpu_memory_utilization": roofline.DEFAULT_GPU_MEMORY_UTILIZATION,
            "overhead_bytes_per_gpu": roofline.DEFAULT_OVERHEAD_BYTES_PER_GPU,
            "target_busy_share": TARGET_BUSY_SHARE,
            "max_batch": MAX_BATCH,
            **(extra_inputs or {}),
        }
        calibration = None
        if self.calibration.applies:
            calibration = {"decode_efficiency": self.calibration.decode,
                           "prefill_efficiency": self.calibration.prefill, "source": self.calibration.source}
        return {"schema_version": SCHEMA_VERSION, "inputs": inputs, "basis": self.basis, "calibration": calibration,
                "candidates": [c.to_json() for c in self.candidates]}


def plan(model: ModelSpec, gpus: Sequence[GpuSpec], workload: Workload, slo: Slo = Slo(), *,
         pricing: str = "on-demand", calibration: Calibration = ROOFLINE, kv_cache_dtype: str = "auto",
         tensor_parallel_sizes: Sequence[int] = TENSOR_PARALLEL_SIZES) -> Plan:
    """Every GPU in ``gpus`` at every tensor-parallel size, evaluated and ranked."""
    candidates = [evaluate(model, gpu, tp, workload, slo, price_per_gpu_hour=gpu.price(pricing),
                           calibration=calibration, kv_cache_dtype=kv_cache_dtype, pricing=pricing)
                  for gpu in gpus for tp in tensor_parallel_sizes]
    return Plan(model=model, workload=workload, slo=slo, pricing=pricing, kv_cache_dtype=kv_cache_dtype,
                calibration=calibration, candidates=tuple(rank(candidates)))
