"""Live what-if: one engine's observed load planned on every candidate GPU model (docs/planning.md).

Pure. For each GPU model the cheapest tensor-parallel shape that serves the load within the SLO targets
(``plan.rank`` over ``plan.evaluate`` of every size, with the engine's observed efficiency where known);
the cheapest of those is the advice. The engine's own GPU model is one of the candidates, planned by the
same call that gives its right-sizing (exporter.derive.rightsizing), and the savings are what the engine
costs now minus the cheapest option: the same definition as infermeter_rightsizing_savings_dollars_per_hour,
which compares with the best shape of the engine's own GPU model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.derive import plan
from exporter.derive.rightsizing import savings
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
    # what the engine costs per hour now minus the best option, never below 0 (None: a price is missing)
    savings_per_hour: float | None
    basis: str


def shapes(model: ModelSpec, gpu: GpuSpec, price: float | None, load: plan.Workload, slo: plan.Slo,
           calibration: plan.Calibration, kv_cache_dtype: str = "auto",
           sizes: Sequence[int] = plan.TENSOR_PARALLEL_SIZES) -> list[plan.Candidate]:
    """``gpu`` at every tensor-parallel size in ``sizes``, evaluated (not ranked)."""
    return [plan.evaluate(model, gpu, tp, load, slo, price_per_gpu_hour=price, calibration=calibration,
                          kv_cache_dtype=kv_cache_dtype)
            for tp in sizes]


def what_if(evaluated: Mapping[str, Sequence[plan.Candidate]], current_dollars_per_hour: float | None,
            basis: str) -> WhatIf:
    """``evaluated``: GPU model name -> its shapes (:func:`shapes`); ``current_dollars_per_hour``: what the
    engine costs now (None: not priced)."""
    options = []
    for name, candidates in evaluated.items():
        best = plan.rank(candidates)[0]  # the cheapest priced shape, else the fewest GPUs
        if best.feasible and best.gpus is not None:
            options.append(GpuOption(name, best.tensor_parallel, best.gpus, best.dollars_per_hour))
    priced = [o for o in options if o.dollars_per_hour is not None]
    cheapest = min(priced, key=lambda o: (o.dollars_per_hour, o.gpus)) if priced else None
    saved = savings(current_dollars_per_hour, cheapest.dollars_per_hour if cheapest is not None else None)
    return WhatIf(tuple(options), cheapest, saved, basis)
