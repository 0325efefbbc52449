"""Model facts: shape, parameter count and weight bytes, computed from a Hugging Face ``config.json``.

Nothing is read from a model's name: the counts come from the architecture fields, so a fine-tune
or a renamed checkpoint gets the same numbers as its base. Shipped configs (``models/*.json``,
provenance in ``models/SOURCES.md``) cover common served models; :func:`builtin` matches a served
model id or path to them, :func:`load` reads any other ``config.json``.

Parameter count (names as in the HF modelling code; vLLM's ``model_executor/models/llama.py``,
``qwen2.py``, ``mixtral.py``, ``gemma2.py`` build the same tensors, with q/k/v fused into one
``QKVParallelLinear`` and gate/up into one ``MergedColumnParallelLinear``, which changes no count).
With d = hidden_size, L = num_hidden_layers, H = num_attention_heads, Hkv = num_key_value_heads
(default H), hd = head_dim (default d/H), I = intermediate_size, V = vocab_size:

- embeddings ``embed_tokens``: V·d; ``lm_head``: V·d unless ``tie_word_embeddings`` (default true
  for Gemma model types, false otherwise, as in each model's HF config class).
- attention per layer: q d·H·hd, k and v d·Hkv·hd each, o H·hd·d. Biases: q/k/v get H·hd + 2·Hkv·hd
  when the model type is Qwen2 (``Qwen2Attention`` hard-codes ``bias=True`` on q/k/v) or
  ``attention_bias`` is true (Llama/Mistral: then o_proj gets d as well, as in ``LlamaAttention``).
  Qwen3 adds per-head q_norm/k_norm (2·hd).
- MLP per layer, gated (SwiGLU for Llama/Mistral/Qwen2, GeGLU for Gemma 2): gate, up d·I and down I·d
  = 3·d·I (+ 2·I + d with ``mlp_bias``).
- MoE per layer (Mixtral ``num_local_experts``, Qwen-MoE ``num_experts``): router d·E plus E experts
  of 3·d·I_e, I_e = ``moe_intermediate_size`` if given else I; Qwen2-MoE's shared expert adds
  3·d·I_shared + d (its sigmoid gate). Every layer is taken to be an MoE layer (Mixtral, Qwen-MoE
  defaults; ``decoder_sparse_step``/``mlp_only_layers`` variants are not modelled).
- RMSNorm weights: 2·d per layer (input and post-attention), 4·d for Gemma 2 (it adds
  pre-/post-feedforward norms, ``Gemma2DecoderLayer``), plus the final d.

Active parameters per token: total - (E - k)·(one expert's parameters in all layers), k =
``num_experts_per_tok``; equal to total for a dense model. ``expert_params`` is one expert across all
layers (E·expert_params is all routed-expert weight).

Weight bytes. The unquantised dtype comes from ``torch_dtype`` (or ``dtype``): bfloat16 2 bytes,
float16 2. A float32 config is *served* in 16 bits by vLLM's and TGI's default ``dtype=auto``
(vLLM ``_get_and_verify_dtype``: float32 -> float16, or bfloat16 for model types that overflow in
fp16 such as Gemma 2/3), so it counts as 2 bytes too; pass ``dtype="fp32"`` to count 4. For a
``quantization_config`` the decoder linear layers (q, k, v, o, gate, up, down, experts) are
quantised and everything else -- embeddings, lm_head, norms, biases, the MoE router (vLLM builds it
with ``quant_config=None``) -- stays in the unquantised dtype:

- ``awq`` (AutoAWQ GEMM/GEMV): ``qweight`` packs ``bits`` per weight (4 -> 0.5 byte), per group of
  ``group_size`` inputs and per output an fp16 ``scales`` (2 bytes) and a packed ``qzeros``
  (bits/8 bytes): in·out·bits/8 + ceil(in/g)·out·(2 + bits/8). ``modules_to_not_convert`` entries
  (substrings of the module name, as vLLM's ``is_layer_skipped_awq``) stay unquantised.
- ``gptq``: as AWQ (``qweight``, ``qzeros``, ``scales``; group_size -1 = one group of all inputs)
  plus an int32 ``g_idx`` per input row (4·in bytes).
- ``fp8`` (AutoFP8 / vLLM ``Fp8Config`` checkpoints): 1 byte per weight, plus one fp32 scale per
  ``weight_block_size`` block (ceil(out/b0)·ceil(in/b1)·4 bytes) or one per tensor (4 bytes) and an
  fp32 ``input_scale`` when ``activation_scheme`` is static. ``ignored_layers`` stay unquantised.
- ``compressed-tensors`` (llm-compressor: FP8, W8A8, W4A16): ``num_bits``/8 bytes per weight from the
  first config group targeting ``Linear``, plus 2-byte scales per tensor, per output channel or per
  group of ``group_size`` inputs, zero points (num_bits/8) when not symmetric, and a 2-byte static
  ``input_scale`` per layer. ``ignore`` entries (names or ``re:`` patterns) stay unquantised.

The weight dtype reported is ``int4`` (4-bit), ``int8`` (8-bit integer), ``fp8`` (8-bit float) or
the unquantised dtype. Other quantisation methods raise ``ValueError``.

A ``config.json`` may come from the model directory an engine reports, so it is read as untrusted: at
most MAX_CONFIG_BYTES of a regular file, the architecture (an exported label) must be a class name, and
every error is one short line that quotes at most a short repr of a value.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from exporter import untrusted
from exporter.untrusted import short

# Real config.json files are a few kilobytes (the shipped ones at most 2 KB; a multimodal or heavily
# quantised one some tens): anything larger is not read.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# The architecture is a Python class name in Hugging Face transformers (LlamaForCausalLM); it becomes a label.
ARCHITECTURE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
_GEMMA_TYPES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})
_BF16_WHEN_FP32 = frozenset({"gemma2", "gemma3", "gemma3_text", "plamo2", "glm4"})
_QKV_BIAS_TYPES = frozenset({"qwen2", "qwen2_moe"})
_QK_NORM_TYPES = frozenset({"qwen3", "qwen3_moe"})
_DTYPE_NAMES: Mapping[str, str] = MappingProxyType({
    "bfloat16": "bf16", "bf16": "bf16", "torch.bfloat16": "bf16",
    "float16": "fp16", "fp16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "float32": "fp32", "fp32": "fp32", "float": "fp32", "torch.float32": "fp32",
})
_DTYPE_BYTES: Mapping[str, float] = MappingProxyType({"bf16": 2.0, "fp16": 2.0, "fp32": 4.0})


@dataclass(frozen=True)
class ModelSpec:
    """A model's shape and size, computed from its ``config.json`` (see the module docstring)."""

    name: str
    architecture: str
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    experts: int
    """Routed experts per MoE layer (1 for dense)."""
    experts_per_token: int
    """Experts each token is routed to (1 for dense)."""
    params_total: float
    params_active: float
    """Parameters a token passes through (MoE: shared parts + ``experts_per_token`` experts)."""
    expert_params: float
    """Parameters of ONE routed expert across all layers (0 for dense)."""
    weight_dtype: str
    """``bf16`` | ``fp16`` | ``fp32`` | ``fp8`` | ``int8`` | ``int4``."""
    weight_bytes: float
    """Bytes of all weights, quantisation scales and zero points included."""
    source: str

    def kv_cache_bytes_per_token(self, kv_dtype_bytes: float = 2.0) -> float:
        """K and V for one token in all layers: 2·L·Hkv·hd·bytes (no sliding-window saving counted)."""
        return 2.0 * self.layers * self.kv_heads * self.head_dim * kv_dtype_bytes


# ------------------------------------------------------------------------------------------ parsing


class ModelConfigError(ValueError):
    """A config.json that infermeter cannot use; the message is one line."""


def _fail(source: str, what: str) -> ModelConfigError:
    return ModelConfigError(f"model config {source}: {what}")


def _int(config: Mapping[str, Any], key: str, source: str, default: int | None = None) -> int:
    value = config.get(key)
    if value is None:
        if default is None:
            raise _fail(source, f"missing {key}")
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _fail(source, f"{key} must be a positive integer, got {short(value)}")
    return value


def _base_dtype(config: Mapping[str, Any], model_type: str, source: str, override: str | None) -> str:
    if override is not None:
        dtype = _DTYPE_NAMES.get(override.lower())
        if dtype is None:
            raise _fail(source, f"dtype {short(override)} is not one of bf16, fp16, fp32")
        return dtype
    raw = config.get("torch_dtype", config.get("dtype"))
    dtype = _DTYPE_NAMES.get(str(raw).lower()) if raw is not None else "fp32"
    if dtype is None:
        raise _fail(source, f"torch_dtype {short(raw)} is not bfloat16, float16 or float32")
    if dtype == "fp32":  # served in 16 bits by default (module docstring)
        return "bf16" if model_type in _BF16_WHEN_FP32 else "fp16"
    return dtype


@dataclass(frozen=True)
class _Linear:
    name: str  # HF module path below the layer, e.g. "self_attn.q_proj"
    inputs: int
    outputs: int
    count: int  # how many of it per layer (experts)
    quantisable: bool = True


@dataclass(frozen=True)
class _Quant:
    """How one quantised linear layer is stored."""

    dtype: str
    bits: int
    group_size: int | None  # None: per tensor or per channel (see per_channel)
    per_channel: bool
    scale_bytes: float
    zero_bytes: float  # per group per output (0 when symmetric)
    index_bytes_per_input: float  # GPTQ g_idx
    extra_bytes: float  # per-tensor scales (weight and static input)
    block: tuple[int, int] | None
    skip: tuple[str, ...]

    def skipped(self, full_name: str) -> bool:
        for pattern in self.skip:
            if pattern.startswith("re:"):
                if re.search(pattern[3:], full_name):
                    return True
            elif pattern and pattern in full_name:
                return True
        return False

    def bytes(self, inputs: int, outputs: int) -> float:
        total = inputs * outputs * self.bits / 8 + self.extra_bytes + inputs * self.index_bytes_per_input
        if self.block is not None:
            total += math.ceil(outputs / self.block[0]) * math.ceil(inputs / self.block[1]) * self.scale_bytes
        elif self.group_size is not None:
            total += math.ceil(inputs / self.group_size) * outputs * (self.scale_bytes + self.zero_bytes)
        elif self.per_channel:
            total += outputs * (self.scale_bytes + self.zero_bytes)
        else:
            total += self.scale_bytes
        return total


MAX_SKIP_NAMES = 10_000  # module names a quantization config may leave unquantised (real: a few hundred)
MAX_PATTERN_CHARS = 256


def _nested_repetition(pattern: str) -> bool:
    """Whether a repeated group holds a repetition or an alternation, e.g. ``(a+)+`` or ``(a|a)*``: Python's
    re may take exponential time on such a pattern, and nothing bounds a regex's time. Conservative: some
    harmless patterns, such as ``(a|b)*``, are refused too."""
    stack: list[bool] = []  # per open group: whether it repeats or alternates inside
    position = 0
    while position < len(pattern):
        char = pattern[position]
        if char == "\\":
            position += 2
            continue
        if char == "[":  # a character class repeats nothing by itself; skip to its end
            end = pattern.find("]", position + 2)
            position = end + 1 if end != -1 else len(pattern)
            continue
        if char == "(":
            stack.append(False)
        elif char == ")" and stack:
            inner = stack.pop()
            after = pattern[position + 1:position + 2]
            if inner and (after in ("*", "+") or (after == "{" and "," in pattern[position + 1:].split("}", 1)[0])):
                return True
            if stack:
                stack[-1] = stack[-1] or inner
        elif char in "*+|{" and stack:
            stack[-1] = True
        position += 1
    return False


def _names(value: Any, source: str = "") -> tuple[str, ...]:
    """Module names (or ``re:`` patterns) from a quantization config, checked: a bounded list, and only
    patterns that compile and cannot backtrack exponentially (the file comes from the engine's model
    directory, so its patterns are not trusted)."""
    if value is None:
        return ()
    names = (value,) if isinstance(value, str) else tuple(str(item) for item in value)
    if len(names) > MAX_SKIP_NAMES:
        raise _fail(source, f"quantization_config lists {len(names)} modules to leave unquantised "
                            f"(at most {MAX_SKIP_NAMES})")
    for name in names:
        if not name.startswith("re:"):
            continue
        pattern = name[3:]
        if len(pattern) > MAX_PATTERN_CHARS or _nested_repetition(pattern):
            raise _fail(source, f"quantization_config pattern {short(name, 60)} is refused: longer than "
                                f"{MAX_PATTERN_CHARS} characters or a repeated group that repeats again")
        try:
            re.compile(pattern)
        except re.error as err:
            raise _fail(source, f"quantization_config pattern {short(name, 60)} is not a regex: {err}") from None
    return names


def _quant(config: Mapping[str, Any], source: str) -> _Quant | None:
    qc = config.get("quantization_config")
    if qc is None:
        return None
    if not isinstance(qc, Mapping):
        raise _fail(source, "quantization_config must be a table")
    method = str(qc.get("quant_method", "")).lower()
    if method in ("awq", "gptq"):
        bits = int(qc.get("bits", qc.get("w_bit", 4)))
        group = int(qc.get("group_size", qc.get("q_group_size", 128)))
        if bits not in (2, 3, 4, 8):
            raise _fail(source, f"quantization_config.bits {bits} is not supported")
        return _Quant(
            dtype="int4" if bits <= 4 else "int8",
            bits=bits,
            group_size=group if group > 0 else None,
            per_channel=group <= 0,
            scale_bytes=2.0,
            zero_bytes=bits / 8 if (method == "gptq" or qc.get("zero_point", True)) else 0.0,
            index_bytes_per_input=4.0 if method == "gptq" else 0.0,
            extra_bytes=0.0,
            block=None,
            skip=_names(qc.get("modules_to_not_convert"), source),
        )
    if method == "fp8":
        block = qc.get("weight_block_size")
        static = str(qc.get("activation_scheme", "dynamic")).lower() == "static"
        return _Quant(
            dtype="fp8", bits=8, group_size=None, per_channel=False, scale_bytes=4.0, zero_bytes=0.0,
            index_bytes_per_input=0.0, extra_bytes=4.0 if static else 0.0,
            block=(int(block[0]), int(block[1])) if block else None,
            skip=_names(qc.get("ignored_layers", qc.get("modules_to_not_convert")), source),
        )
    if method == "compressed-tensors":
        groups = qc.get("config_groups") or {}
        scheme: Mapping[str, Any] | None = None
        activations: Mapping[str, Any] | None = None
        for group in groups.values():
            if isinstance(group, Mapping) and isinstance(group.get("weights"), Mapping):
                scheme, activations = group["weights"], group.get("input_activations")
                break
        if scheme is None:
            raise _fail(source, "quantization_config.config_groups has no weights scheme")
        bits = int(scheme.get("num_bits", 8))
        kind = str(scheme.get("type", "int")).lower()
        strategy = str(scheme.get("strategy", "tensor")).lower()
        group_size = scheme.get("group_size")
        block_structure = scheme.get("block_structure")
        static_input = isinstance(activations, Mapping) and not activations.get("dynamic", True)
        return _Quant(
            dtype="fp8" if kind == "float" and bits == 8 else ("int4" if bits <= 4 else "int8"),
            bits=bits,
            group_size=int(group_size) if strategy == "group" and group_size else None,
            per_channel=strategy == "channel",
            scale_bytes=2.0,
            zero_bytes=0.0 if scheme.get("symmetric", True) else bits / 8,
            index_bytes_per_input=0.0,
            extra_bytes=2.0 if static_input else 0.0,
            block=(int(block_structure[0]), int(block_structure[1]))
            if strategy == "block" and block_structure else None,
            skip=tuple(name for name in _names(qc.get("ignore"), source) if name != "lm_head"),
        )
    raise _fail(source, f"quantization_config.quant_method {short(method)} is not supported "
                        "(awq, gptq, fp8, compressed-tensors)")


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The decoder's config: multimodal wrappers nest it under ``text_config``."""
    nested = config.get("text_config")
    if "num_hidden_layers" not in config and isinstance(nested, Mapping):
        merged = dict(nested)
        for key in ("quantization_config", "torch_dtype", "architectures"):
            if key in config and key not in merged:
                merged[key] = config[key]
        return merged
    return config


def from_config(config: Mapping[str, Any], name: str, source: str, *, dtype: str | None = None) -> ModelSpec:
    """A model spec from a parsed ``config.json``. ``dtype`` overrides the served unquantised dtype
    (``bf16``/``fp16``/``fp32``). Raises ``ValueError("model config <source>: <what is wrong>")``, one
    short line, whatever the file holds."""
    try:
        return _from_config(config, name, source, dtype)
    except ModelConfigError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as err:
        # a field of the wrong type or size (int("x"), 1e400 layers); the error's own text may quote all of it
        raise _fail(source, f"unusable content ({type(err).__name__}: {short(str(err))})") from None


def _architecture(config: Mapping[str, Any], model_type: str, source: str) -> str:
    architectures = config.get("architectures") or [model_type or "unknown"]
    first = architectures[0] if isinstance(architectures, list) and architectures else architectures
    if not isinstance(first, str) or not ARCHITECTURE.fullmatch(first):
        raise _fail(source, f"architectures {short(first)} is not a class name")
    return first


def _from_config(config: Mapping[str, Any], name: str, source: str, dtype: str | None) -> ModelSpec:
    if not isinstance(config, Mapping):
        raise _fail(source, "is not a JSON object")
    config = _text_config(config)
    model_type = str(config.get("model_type", "")).lower()
    architecture = _architecture(config, model_type, source)

    d = _int(config, "hidden_size", source)
    layers = _int(config, "num_hidden_layers", source)
    heads = _int(config, "num_attention_heads", source)
    kv_heads = _int(config, "num_key_value_heads", source, default=heads)
    head_dim = _int(config, "head_dim", source, default=d // heads)
    vocab = _int(config, "vocab_size", source)
    unmodelled = [k for k in ("n_routed_experts", "n_shared_experts", "first_k_dense_replace", "kv_lora_rank")
                  if config.get(k) is not None]
    if unmodelled:
        raise _fail(source, f"{architecture}: {', '.join(unmodelled)} (DeepSeek-style experts or latent attention) "
                            "are not modelled yet")
    experts = int(config.get("num_local_experts") or config.get("num_experts") or 0)
    if experts > 1:
        has_moe_size = config.get("moe_intermediate_size") is not None
        inter = _int(config, "moe_intermediate_size" if has_moe_size else "intermediate_size", source)
        per_token = _int(config, "num_experts_per_tok", source)
    else:
        experts, per_token = 1, 1
        inter = _int(config, "intermediate_size", source)
    tied = bool(config.get("tie_word_embeddings", model_type in _GEMMA_TYPES))

    base = _base_dtype(config, model_type, source, dtype)
    base_bytes = _DTYPE_BYTES[base]
    quant = _quant(config, source)

    # Linear layers of one decoder layer (HF module names) and the unquantised extras.
    linears = [
        _Linear("self_attn.q_proj", d, heads * head_dim, 1),
        _Linear("self_attn.k_proj", d, kv_heads * head_dim, 1),
        _Linear("self_attn.v_proj", d, kv_heads * head_dim, 1),
        _Linear("self_attn.o_proj", heads * head_dim, d, 1),
    ]
    attention_bias = bool(config.get("attention_bias", False))
    extras = 0  # per-layer parameters outside the linear weights: biases, norms
    if model_type in _QKV_BIAS_TYPES or attention_bias:
        extras += heads * head_dim + 2 * kv_heads * head_dim
    if attention_bias and model_type not in _QKV_BIAS_TYPES:
        extras += d  # o_proj bias (LlamaAttention: bias=config.attention_bias on o_proj too)
    if model_type in _QK_NORM_TYPES:
        extras += 2 * head_dim
    expert_layer = 0
    if experts > 1:
        linears.append(_Linear("mlp.gate", d, experts, 1, quantisable=False))  # router
        linears += [
            _Linear("mlp.experts.gate_proj", d, inter, experts),
            _Linear("mlp.experts.up_proj", d, inter, experts),
            _Linear("mlp.experts.down_proj", inter, d, experts),
        ]
        expert_layer = 3 * d * inter
        shared = config.get("shared_expert_intermediate_size")
        if shared:
            linears += [
                _Linear("mlp.shared_expert.gate_proj", d, int(shared), 1),
                _Linear("mlp.shared_expert.up_proj", d, int(shared), 1),
                _Linear("mlp.shared_expert.down_proj", int(shared), d, 1),
                _Linear("mlp.shared_expert_gate", d, 1, 1, quantisable=False),
            ]
    else:
        linears += [
            _Linear("mlp.gate_proj", d, inter, 1),
            _Linear("mlp.up_proj", d, inter, 1),
            _Linear("mlp.down_proj", inter, d, 1),
        ]
        if config.get("mlp_bias"):
            extras += 2 * inter + d
    extras += (4 if model_type == "gemma2" else 2) * d  # RMSNorm weights

    linear_params = sum(lin.inputs * lin.outputs * lin.count for lin in linears)
    embedding_params = vocab * d * (1 if tied else 2) + d  # embed (+ lm_head) + final norm
    params_total = float(layers * (linear_params + extras) + embedding_params)
    expert_params = float(layers * expert_layer)
    params_active = params_total - (experts - per_token) * expert_params if experts > 1 else params_total

    if quant is None:
        weight_bytes = params_total * base_bytes
        weight_dtype = base
    else:
        weight_dtype = quant.dtype
        layer_bytes = extras * base_bytes
        for lin in linears:
            full = f"model.layers.0.{lin.name}"
            if lin.quantisable and not quant.skipped(full):
                layer_bytes += quant.bytes(lin.inputs, lin.outputs) * lin.count
            else:
                layer_bytes += lin.inputs * lin.outputs * lin.count * base_bytes
        weight_bytes = layers * layer_bytes + embedding_params * base_bytes

    return ModelSpec(
        name=name, architecture=architecture, layers=layers, hidden_size=d, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, intermediate_size=inter, vocab_size=vocab, tied_embeddings=tied, experts=experts,
        experts_per_token=per_token, params_total=params_total, params_active=float(params_active),
        expert_params=expert_params, weight_dtype=weight_dtype, weight_bytes=float(weight_bytes), source=source,
    )


def load(path: str | Path, *, dtype: str | None = None) -> ModelSpec:
    """A model spec from a ``config.json`` file, or a directory holding one (raises ``ValueError``)."""
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    source = untrusted.label(str(file))  # also the spec_source label
    try:
        text = read_bounded(file, MAX_CONFIG_BYTES)
    except OSError as err:
        raise _fail(source, f"cannot read: {err.strerror or err}") from None
    except ValueError as err:
        raise _fail(source, str(err)) from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise _fail(source, f"is not valid JSON: {err.msg} at line {err.lineno}") from None
    except (ValueError, RecursionError) as err:  # an integer of too many digits; arrays nested too deep
        raise _fail(source, f"is not usable JSON ({type(err).__name__})") from None
    name = file.parent.name if file.name == "config.json" else file.stem
    return from_config(config, name, source, dtype=dtype)


def read_bounded(file: Path, limit: int) -> str:
    """The text of a regular file of at most ``limit`` bytes; ValueError (one line) for anything else: a
    FIFO or a device (never waited on or read), a larger file, text that is not UTF-8."""
    descriptor = os.open(file, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"is larger than {limit} bytes: not a model config")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None


# ------------------------------------------------------------------------------------------ built-ins

_DROP_TOKENS = frozenset({"instruct", "chat", "it"})


def _normalise(served: str) -> str:
    """``meta-llama/Meta-Llama-3.1-70B-Instruct`` -> ``llama-3.x-70b`` (see :func:`builtin`)."""
    parts = [part for part in re.split(r"[\\/]", served.strip()) if part]
    if not parts:
        return ""
    last = parts[-1]
    for part in parts:  # a Hugging Face cache path: .../models--org--name/snapshots/<hash>
        if part.startswith("models--"):
            last = part.split("--")[-1]
    text = last.lower()
    text = re.sub(r"^(meta-)?llama-?(\d)", r"llama-\2", text)
    tokens = [token for token in re.split(r"[-_\s]+", text) if token]
    if tokens and tokens[0] == "meta":
        tokens = tokens[1:]
    tokens = [token for token in tokens if token not in _DROP_TOKENS and not re.fullmatch(r"v\d+(\.\d+)*", token)]
    if len(tokens) > 1 and tokens[0] == "llama" and re.fullmatch(r"3(\.\d+)?", tokens[1]):
        tokens[1] = "3.x"  # Llama 3, 3.1, 3.3: same shapes at the same size
    return "-".join(tokens)


@functools.cache
def _builtins() -> Mapping[str, tuple[str, str]]:
    """Normalised name -> (repo id, file name) of every shipped config."""
    out: dict[str, tuple[str, str]] = {}
    folder = resources.files("exporter.facts").joinpath("models")
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".json"):
            repo_id = entry.name[: -len(".json")].replace("--", "/", 1)
            out[_normalise(repo_id)] = (repo_id, entry.name)
    return MappingProxyType(out)


def builtin_names() -> tuple[str, ...]:
    """Repo ids of the shipped configs, e.g. ``meta-llama/Llama-3.1-8B``."""
    return tuple(sorted(repo_id for repo_id, _ in _builtins().values()))


@functools.cache
def _builtin_spec(file_name: str, repo_id: str) -> ModelSpec:
    text = resources.files("exporter.facts").joinpath("models").joinpath(file_name).read_text(encoding="utf-8")
    return from_config(json.loads(text), repo_id, f"built-in: {repo_id}")


def builtin(served_name: str) -> ModelSpec | None:
    """The shipped config a served model id or path refers to, or ``None``.

    Case-insensitive; the org prefix and directories are optional; ``-Instruct``/``-Chat``/``-it``,
    a leading ``Meta-`` and version tags like ``v0.3`` are ignored; Llama 3, 3.1 and 3.3 of the same
    size share a config. A name with a different size or a quantisation suffix that is not shipped
    gives ``None``: a different model is never guessed.
    """
    key = _normalise(served_name)
    hit = _builtins().get(key)
    if hit is None:
        return None
    repo_id, file_name = hit
    return _builtin_spec(file_name, repo_id)

