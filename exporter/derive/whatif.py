"""Live what-if: one engine's observed load planned on every candidate GPU model (docs/planning.md).

Pure. For each GPU model the cheapest tensor-parallel shape that serves the load within the SLO
targets (``plan.evaluate``, with the engine's observed efficiency where known); the cheapest of
those is the advice. The savings compare it with the engine's own GPU model planned the same way,
so both sides share one model of the load and efficiency: the advice is about which GPU model, while
how many GPUs of the current one is right-sizing's answer (infermeter_rightsizing_*).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exporter.derive import plan
from exporter.derive.engine import EngineStats
from exporter.facts.gpus import GpuSpec
from exporter.facts.models import ModelSpec


@dataclass(frozen=True)
class GpuOption:
    """The cheapest way one GPU model serves the load: its tensor-parallel size, GPUs and price."""

    gpu_model: str
    tensor_parallel: int
    gpus: int
    dollars_per_hour: float | None


@dataclass(frozen=True)
class WhatIf:
    # one per GPU model that can serve the load within the targets, in candidate order
    options: tuple[GpuOption, ...]
    # the cheapest priced option (None when none is priced)
    best: GpuOption | None
    # the engine's own GPU model planned the same way minus the best option, never below 0 (None: a price
    # is missing, or the current GPU model is not planned)
    savings_per_hour: float | None
    basis: str


def workload(stats: EngineStats) -> plan.Workload | None:
    """The mean request over the window, or None when the engine finished nothing or reports no tokens."""
    rates = stats.counter_rates
    rps = rates.get("requests_finished", 0.0)
    prompt, output = rates.get("prompt_tokens", 0.0), rates.get("generation_tokens", 0.0)
    if not (rps > 0 and prompt > 0 and output > 0):
        return None
    try:
        return plan.Workload(rps, max(prompt / rps, 1.0), max(output / rps, 1.0))
    except ValueError:
        return None


def what_if(model: ModelSpec, gpus: Mapping[str, tuple[GpuSpec, float | None]], load: plan.Workload,
            slo: plan.Slo, calibration: plan.Calibration, current_gpu_model: str | None,
            kv_cache_dtype: str = "auto") -> WhatIf:
    """``gpus``: GPU model name -> (its spec, dollars per GPU-hour or None); ``current_gpu_model`` one of
    them, the GPU model the engine runs on."""
    options = []
    for name, (spec, price) in gpus.items():
        candidates = [plan.evaluate(model, spec, tp, load, slo, price_per_gpu_hour=price, calibration=calibration,
                                    kv_cache_dtype=kv_cache_dtype)
                      for tp in plan.TENSOR_PARALLEL_SIZES]
        best = plan.rank(candidates)[0]  # the cheapest priced shape, else the fewest GPUs
        if best.feasible and best.gpus is not None:
            options.append(GpuOption(name, best.tensor_parallel, best.gpus, best.dollars_per_hour))
    priced = [o for o in options if o.dollars_per_hour is not None]
    cheapest = min(priced, key=lambda o: (o.dollars_per_hour, o.gpus)) if priced else None
    current = next((o for o in options if o.gpu_model == current_gpu_model), None)
    savings = None
    if (cheapest is not None and cheapest.dollars_per_hour is not None and current is not None
            and current.dollars_per_hour is not None):
        savings = max(current.dollars_per_hour - cheapest.dollars_per_hour, 0.0)
    return WhatIf(tuple(options), cheapest, savings, "calibrated" if calibration.applies else "roofline")
