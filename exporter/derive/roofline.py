"""Analytic expectations: what the hardware could do for this model (the roofline).

Every function is pure and takes plain numbers or the fact records (ModelSpec, GpuSpec). The
formulas and their sources are written out in docs/analytic-model.md; in short:

- KV cache bytes per token = 2 (K and V) x layers x kv_heads x head_dim x kv dtype bytes
  (kipply, "Transformer Inference Arithmetic"; llm-analysis ``get_memory_kv_cache_per_layer``).
- Decode step (one output token for each of B sequences with mean context c, on n GPUs):
  max(memory, compute), memory = (weight bytes read + B x c x KV bytes per token) / (n x bandwidth),
  where the weights read are all of them but the input embedding table (only B of its rows),
  compute = (2 x active params + 4 x layers x heads x head_dim x c) x B / (n x peak FLOP/s), the
  active params without the input embedding table (a lookup) unless it is tied to the LM head.
  A mixture-of-experts layer reads only the experts its B tokens touch, each routed to k of E
  experts: with uniform routing, E x (1 - (1 - k/E)^B) of them (k for one token, E for many).
- Prefill of s prompt tokens: compute = (2 x active params x s + 2 x layers x heads x head_dim x s^2)
  / (n x peak), floored by one read of the weights (memory-bound for short prompts).
- KV capacity = (n x memory x gpu_memory_utilization - weight bytes - n x overhead) / KV bytes per token.
- MBU = bytes moved per decode step / observed step time / (n x bandwidth) (Databricks, "LLM
  Inference Performance Engineering: Best Practices"); MFU = FLOPs per second / (n x peak).
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.facts.gpus import GpuSpec
from exporter.facts.models import ModelSpec

GIB = 1024**3
# Memory vLLM needs per GPU beside weights and KV cache (activations at the profiled batch, CUDA
# graphs, NCCL, the CUDA context). An assumption, documented; vLLM measures it when it starts.
DEFAULT_OVERHEAD_BYTES_PER_GPU = 2 * GIB
# vLLM's default --gpu-memory-utilization
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


def kv_dtype_bytes(cache_dtype: str | None, model: ModelSpec) -> float:
    """Bytes per KV cache element from vLLM's ``cache_dtype`` ("auto" = the model's activation dtype)."""
    text = (cache_dtype or "auto").lower()
    if text.startswith("fp8") or text == "int8":
        return 1.0
    if text in {"fp16", "bf16", "bfloat16", "float16", "half"}:
        return 2.0
    return 4.0 if model.weight_dtype == "fp32" else 2.0


def kv_bytes_per_token(model: ModelSpec, kv_bytes: float) -> float:
    """KV cache bytes one token occupies across all layers."""
    return 2.0 * model.layers * model.kv_heads * model.head_dim * kv_bytes


def bytes_per_weight(model: ModelSpec) -> float:
    return float(model.weight_bytes) / float(model.params_total)


def experts_touched(experts: int, per_token: int, tokens: float) -> float:
    """Expected distinct experts (of ``experts``) that ``tokens`` tokens touch, each routed to
    ``per_token`` distinct experts uniformly: E x (1 - (1 - k/E)^tokens) (exactly k for one token)."""
    if experts <= 1:
        return 1.0
    untouched = float((1.0 - min(per_token, experts) / experts) ** max(tokens, 0.0))
    return experts * (1.0 - untouched)


def embedding_bytes(model: ModelSpec) -> float:
    """Bytes of the input embedding table (kept in the activation dtype by quantised checkpoints too)."""
    return float(model.vocab_size * model.hidden_size) * (4.0 if model.weight_dtype == "fp32" else 2.0)


def weight_bytes_read(model: ModelSpec, tokens: float) -> float:
    """Weight bytes one forward pass over ``tokens`` tokens reads.

    Every weight once, except the input embedding table, of which only the tokens' rows are read
    (unless it is tied to the LM head, which reads all of it); a mixture-of-experts layer reads only
    the experts the tokens touch.
    """
    tokens = max(tokens, 1.0)
    total = float(model.weight_bytes)
    if model.experts > 1 and model.expert_params > 0:
        per_weight = bytes_per_weight(model)
        touched = experts_touched(model.experts, model.experts_per_token, tokens)
        total -= (model.experts - touched) * model.expert_params * per_weight
    if not model.tied_embeddings:
        table = embedding_bytes(model)
        total -= table - min(tokens, float(model.vocab_size)) * table / model.vocab_size
    return total


def matmul_params(model: ModelSpec) -> float:
    """Active parameters a token multiplies by: all active ones but the input embedding table (a
    lookup, no FLOPs), unless it is tied to the LM head (then the LM head's product counts it)."""
    lookup = 0.0 if model.tied_embeddings else float(model.vocab_size * model.hidden_size)
    return float(model.params_active) - lookup


def peak_flops(gpu: GpuSpec, model: ModelSpec) -> float | None:
    """The dense peak the model's matrix products run at (by its weight dtype)."""
    return gpu.flops_for(model.weight_dtype)


@dataclass(frozen=True)
class StepTime:
    """A roofline time: the larger of its memory and compute terms decides."""

    memory_seconds: float
    compute_seconds: float

    @property
    def seconds(self) -> float:
        return max(self.memory_seconds, self.compute_seconds)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_seconds >= self.compute_seconds else "compute"


def decode_step(model: ModelSpec, gpu: GpuSpec, gpus: int, batch: float, context: float,
                kv_bytes: float) -> StepTime | None:
    """Expected time of one decode step (= time per output token) at ``batch`` and mean ``context``."""
    flops = peak_flops(gpu, model)
    if flops is None or gpus < 1:
        return None
    batch = max(batch, 1.0)
    moved = weight_bytes_read(model, batch) + batch * context * kv_bytes_per_token(model, kv_bytes)
    per_token_flops = 2.0 * matmul_params(model) + 4.0 * model.layers * model.heads * model.head_dim * context
    return StepTime(moved / (gpus * gpu.memory_bandwidth_bytes_per_second),
                    per_token_flops * batch / (gpus * flops))


def prefill(model: ModelSpec, gpu: GpuSpec, gpus: int, prompt_tokens: float) -> StepTime | None:
    """Expected prefill time of one prompt of ``prompt_tokens`` (the TTFT without queueing)."""
    flops = peak_flops(gpu, model)
    if flops is None or gpus < 1 or prompt_tokens <= 0:
        return None
    work = (2.0 * matmul_params(model) * prompt_tokens
            + 2.0 * model.layers * model.heads * model.head_dim * prompt_tokens**2)
    weights = weight_bytes_read(model, prompt_tokens)
    return StepTime(weights / (gpus * gpu.memory_bandwidth_bytes_per_second), work / (gpus * flops))


def kv_capacity_tokens(model: ModelSpec, gpus: int, memory_bytes_per_gpu: float, kv_bytes: float,
                       gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
                       overhead_bytes_per_gpu: float = DEFAULT_OVERHEAD_BYTES_PER_GPU) -> float:
    """KV cache tokens that fit beside the weights (0 when the weights alone do not fit)."""
    free = gpus * (memory_bytes_per_gpu * gpu_memory_utilization - overhead_bytes_per_gpu) - model.weight_bytes
    return max(free, 0.0) / kv_bytes_per_token(model, kv_bytes)


def decode_bytes_per_step(model: ModelSpec, batch: float, kv_tokens: float, kv_bytes: float) -> float:
    """Bytes one decode step moves: the weights it reads plus every cached token of the batch."""
    return weight_bytes_read(model, max(batch, 1.0)) + kv_tokens * kv_bytes_per_token(model, kv_bytes)


def memory_bandwidth_utilization(bytes_per_step: float, step_seconds: float, gpu: GpuSpec, gpus: int) -> float | None:
    """MBU: achieved bytes per second over the peak bandwidth of the engine's GPUs."""
    if step_seconds <= 0 or gpus < 1:
        return None
    return bytes_per_step / step_seconds / (gpus * gpu.memory_bandwidth_bytes_per_second)


def model_flops_utilization(model: ModelSpec, gpu: GpuSpec, gpus: int, tokens_per_second: float) -> float | None:
    """MFU: 2 x active params (the matrix products') x tokens per second over the engine's GPUs' peak."""
    flops = peak_flops(gpu, model)
    if flops is None or gpus < 1:
        return None
    return 2.0 * matmul_params(model) * tokens_per_second / (gpus * flops)


def largest_batch(model: ModelSpec, gpu: GpuSpec, gpus: int, context: float, kv_bytes: float,
                  kv_capacity: float, tpot_target: float | None, limit: int = 1024) -> int:
    """The largest batch whose KV cache fits and whose decode step meets ``tpot_target`` (0 if none)."""
    fits = int(kv_capacity // max(context, 1.0)) if kv_capacity > 0 else 0
    best = 0
    low, high = 1, min(limit, fits)
    while low <= high:  # the step time grows with the batch: binary search
        middle = (low + high) // 2
        step = decode_step(model, gpu, gpus, middle, context, kv_bytes)
        if step is not None and (tpot_target is None or step.seconds <= tpot_target):
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return best

