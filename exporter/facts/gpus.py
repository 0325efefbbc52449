"""GPU facts: memory, bandwidth, dense tensor peaks, TDP and default prices, by NVML product name.

The table is ``gpus.toml`` in this package (units, sources and dates are in its header and rows).
:func:`catalogue` loads it once; :func:`find` looks a GPU up by the name ``nvmlDeviceGetName``
returns; :func:`spec_from_mapping` builds a user-supplied row (or overrides single keys of a shipped
one, e.g. only its price) from the config file.

Peak for a weight dtype (:meth:`GpuSpec.flops_for`) -- the tensor-core rate the matrix multiplies of
a model stored in that dtype run at on vLLM/TGI kernels:

- ``bf16`` / ``fp16``: its own rate; a GPU without one (T4 has no bf16) uses the other 16-bit rate,
  as engines serve bf16 checkpoints in fp16 there.
- ``fp8``: the fp8 rate (W8A8 on Ada/Hopper/Blackwell). Without fp8 tensor cores (Ampere, Turing)
  engines run fp8 checkpoints weight-only (Marlin: dequantise to 16-bit), so the 16-bit rate.
- ``int8``: the int8 rate (W8A8 SmoothQuant-style kernels), else the 16-bit rate.
- ``int4``: weight-only int4 (AWQ, GPTQ, compressed-tensors W4A16) dequantises to fp16/bf16 inside
  the GEMM, so the 16-bit rate. (W4A8 kernels exist but are rare; choose ``int8`` for them.)
- ``fp32``: engines serve fp32 checkpoints in 16-bit by default (vLLM ``dtype=auto``), so the 16-bit
  rate; a model really run in fp32 would be slower (TF32 or CUDA cores), which this does not model.

A value of ``None`` means the catalogue row has no usable tensor rate at all.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any

DTYPES = ("bf16", "fp16", "fp8", "int8")
"""Keys of :attr:`GpuSpec.peak_flops`."""

PRICING_MODELS = ("on-demand", "spot", "reserved")
"""Keys of :attr:`GpuSpec.prices`; ``on-demand`` is required."""

_FALLBACKS: Mapping[str, tuple[str, ...]] = {
    "bf16": ("bf16", "fp16"),
    "fp16": ("fp16", "bf16"),
    "fp8": ("fp8", "bf16", "fp16"),
    "int8": ("int8", "fp16", "bf16"),
    "int4": ("bf16", "fp16"),  # weight-only int4: dequantised to 16-bit inside the GEMM
    "fp32": ("bf16", "fp16"),
}


@dataclass(frozen=True)
class GpuSpec:
    """One GPU's facts (see ``gpus.toml`` for units and sources)."""

    name: str
    memory_bytes: float
    memory_bandwidth_bytes_per_second: float
    peak_flops: Mapping[str, float]
    """Dense tensor FLOP/s (int8: OP/s) by ``bf16`` | ``fp16`` | ``fp8`` | ``int8``; missing = unsupported."""
    tdp_watts: float | None
    prices: Mapping[str, float]
    """Dollars per GPU-hour by pricing model ``on-demand`` | ``spot`` | ``reserved``."""
    source: str
    price_source: str
    as_of: str
    note: str = field(default="", compare=False)

    def flops_for(self, dtype: str) -> float | None:
        """The dense tensor peak the GEMMs of a model with weights in ``dtype`` run at (module docstring)."""
        for key in _FALLBACKS.get(dtype.lower(), (dtype.lower(),)):
            value = self.peak_flops.get(key)
            if value is not None:
                return value
        return None

    def price(self, model: str = "on-demand") -> float | None:
        """Dollars per GPU-hour for a pricing model, or ``None`` when none is known."""
        return self.prices.get(model)


def _load_toml(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
    data: dict[str, Any] = tomllib.loads(text)
    return data


@functools.cache
def catalogue() -> Mapping[str, GpuSpec]:
    """The shipped GPU table, keyed by NVML name (loaded once from the packaged ``gpus.toml``)."""
    text = resources.files("exporter.facts").joinpath("gpus.toml").read_text(encoding="utf-8")
    rows = _load_toml(text)
    return MappingProxyType({name: spec_from_mapping(name, row) for name, row in rows.items()})


def _normalise(name: str) -> str:
    text = re.sub(r"\s+", " ", name.strip().lower())
    for prefix in ("nvidia ", "tesla "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def find(nvml_name: str, extra: Mapping[str, GpuSpec] | None = None) -> GpuSpec | None:
    """The spec for a GPU name: ``extra`` (user specs) first, then the exact name, then a normalised
    match (case, whitespace, optional ``NVIDIA ``/``Tesla `` prefix); ``None`` when nothing matches."""
    tables: list[Mapping[str, GpuSpec]] = [extra] if extra else []
    tables.append(catalogue())
    for table in tables:
        if nvml_name in table:
            return table[nvml_name]
    wanted = _normalise(nvml_name)
    for table in tables:
        for key, spec in table.items():
            if _normalise(key) == wanted:
                return spec
    return None


def _fail(name: str, key: str, problem: str) -> ValueError:
    return ValueError(f"gpu {name!r}: {key}: {problem}")


def _positive(name: str, key: str, value: Any) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 960e9 (no dot) as a string
        try:
            value = float(value.strip())
        except ValueError:
            raise _fail(name, key, f"must be a number, got {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, key, f"must be a number, got {type(value).__name__} {str(value)[:40]!r}")
    try:
        number = float(value)
    except OverflowError:
        raise _fail(name, key, f"must be a finite number > 0, got {str(value)[:40]!r}...") from None
    if not math.isfinite(number) or number <= 0:
        raise _fail(name, key, f"must be a finite number > 0, got {value!r}")
    return number


def _text(name: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, key, f"must be a non-empty string, got {value!r}")
    return value


def _table(name: str, key: str, value: Any, allowed: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise _fail(name, key, f"must be a table of {'/'.join(allowed)} -> number, got {type(value).__name__}")
    out: dict[str, float] = {}
    for sub, number in value.items():
        if sub not in allowed:
            raise _fail(name, f"{key}.{sub}", f"unknown key (expected one of {', '.join(allowed)})")
        out[str(sub)] = _positive(name, f"{key}.{sub}", number)
    return out


_KNOWN_KEYS = frozenset({
    "name", "memory_bytes", "memory_basis", "memory_bandwidth_bytes_per_second", "peak_flops", "tdp_watts",
    "prices", "source", "price_source", "as_of", "note",
})


def spec_from_mapping(name: str, data: Mapping[str, Any], base: GpuSpec | None = None) -> GpuSpec:
    """A GPU spec from a config-file table (keys as in ``gpus.toml``).

    With ``base`` only the given keys override it, and ``peak_flops``/``prices`` merge key by key
    (``{"prices": {"on-demand": 2.1}}`` changes just that price). Without it, ``memory_bytes``,
    ``memory_bandwidth_bytes_per_second``, ``peak_flops`` and ``prices.on-demand`` are required.
    Raises ``ValueError("gpu 'NAME': <key>: <what is wrong>")``.
    """
    if not isinstance(data, Mapping):
        raise _fail(name, "(table)", f"must be a table of keys, got {type(data).__name__}")
    for key in data:
        if key not in _KNOWN_KEYS:
            raise _fail(name, str(key), f"unknown key (expected one of {', '.join(sorted(_KNOWN_KEYS))})")

    def need(key: str) -> Any:
        if key not in data:
            raise _fail(name, key, "missing")
        return data[key]

    if base is None:
        memory = _positive(name, "memory_bytes", need("memory_bytes"))
        bandwidth = _positive(name, "memory_bandwidth_bytes_per_second", need("memory_bandwidth_bytes_per_second"))
        flops = _table(name, "peak_flops", need("peak_flops"), DTYPES)
        if not flops:
            raise _fail(name, "peak_flops", "needs at least one of " + ", ".join(DTYPES))
        prices = _table(name, "prices", need("prices"), PRICING_MODELS)
        tdp: float | None = None
        source = price_source = as_of = "user config"
        note = ""
    else:
        memory, bandwidth = base.memory_bytes, base.memory_bandwidth_bytes_per_second
        flops, prices, tdp = dict(base.peak_flops), dict(base.prices), base.tdp_watts
        source, price_source, as_of, note = base.source, base.price_source, base.as_of, base.note
        if "memory_bytes" in data:
            memory = _positive(name, "memory_bytes", data["memory_bytes"])
        if "memory_bandwidth_bytes_per_second" in data:
            bandwidth = _positive(name, "memory_bandwidth_bytes_per_second", data["memory_bandwidth_bytes_per_second"])
        if "peak_flops" in data:
            flops.update(_table(name, "peak_flops", data["peak_flops"], DTYPES))
        if "prices" in data:
            prices.update(_table(name, "prices", data["prices"], PRICING_MODELS))
            if "price_source" not in data:
                price_source = "user config"
        if any(key in data for key in ("memory_bytes", "memory_bandwidth_bytes_per_second", "peak_flops")) \
                and "source" not in data:
            source = f"user config over: {base.source}"
    if "on-demand" not in prices:
        raise _fail(name, "prices.on-demand", "missing (a dollars-per-GPU-hour number is required)")
    if "tdp_watts" in data:
        tdp = _positive(name, "tdp_watts", data["tdp_watts"])
    if "source" in data:
        source = _text(name, "source", data["source"])
    if "price_source" in data:
        price_source = _text(name, "price_source", data["price_source"])
    if "as_of" in data:
        as_of = _text(name, "as_of", data["as_of"])
    if "note" in data:
        note = str(data["note"])
    return GpuSpec(
        name=name,
        memory_bytes=memory,
        memory_bandwidth_bytes_per_second=bandwidth,
        peak_flops=MappingProxyType(flops),
        tdp_watts=tdp,
        prices=MappingProxyType(prices),
        source=source,
        price_source=price_source,
        as_of=as_of,
        note=note,
    )
