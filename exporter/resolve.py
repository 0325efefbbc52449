"""Find the facts for each engine: its model's architecture and its GPUs' specs and price.

Runs in the collection thread (never in a scrape); results are cached, and each thing that cannot
be found is logged once with what to do about it. Engines choose the model names and directories these
caches are keyed by, so every cache is bounded: a few models per engine, a few hundred warnings
remembered, and a few warnings per engine and topic before the rest go to the debug level.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from exporter.config import Config
from exporter.derive import plan, rightsizing, whatif
from exporter.derive.analysis import Analysis
from exporter.derive.engine import EngineStats
from exporter.derive.rightsizing import PlanInputs, Shapes, plan_inputs
from exporter.derive.whatif import WhatIf
from exporter.facts.gpus import GpuSpec, catalogue, find, spec_from_mapping
from exporter.facts.models import ModelSpec, builtin, load
from exporter.untrusted import short

log = logging.getLogger(__name__)

MODELS_PER_ENGINE = 4  # model specs remembered per engine (a rolling upgrade swaps between two)
WARNINGS_REMEMBERED = 256  # warn_once keys remembered (the oldest is forgotten first)
WARNINGS_PER_TOPIC = 5  # distinct warnings per topic (e.g. "model:ENGINE") and hour; the rest go to debug
WARNING_PERIOD_SECONDS = 3600.0


def _remember(cache: OrderedDict[str, None], key: str, limit: int) -> bool:
    """Add ``key`` as the newest entry; False when it was there already. Keeps at most ``limit``."""
    if key in cache:
        cache.move_to_end(key)
        return False
    cache[key] = None
    if len(cache) > limit:
        cache.popitem(last=False)
    return True


class FactsResolver:
    """Model and GPU facts for the engines, from the config, the engine's own model directory and the
    built-in catalogues, in that order."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._user_gpus: dict[str, GpuSpec] = {
            name: spec_from_mapping(name, fields, find(name))
            for name, fields in (config.gpu_specs or {}).items()}
        self._models: dict[str, OrderedDict[tuple[str, str], ModelSpec | None]] = {}
        self._said: OrderedDict[str, None] = OrderedDict()
        self._topics: OrderedDict[str, tuple[int, float]] = OrderedDict()  # topic -> (warnings, since)
        self._whatif: dict[str, tuple[GpuSpec, float | None]] | None = None

    def warn_once(self, key: str, message: str, *args: object) -> None:
        """Log a warning the first time ``key`` (``TOPIC:ENGINE:VALUE``) is seen. An engine whose values
        keep changing would log one per change: after WARNINGS_PER_TOPIC in an hour in a topic (the key's
        first two fields) the rest of that hour are logged at debug level."""
        if not _remember(self._said, key, WARNINGS_REMEMBERED):
            return
        topic = ":".join(key.split(":", 2)[:2])
        now = time.monotonic()
        said, since = self._topics.pop(topic, (0, now))
        if now - since > WARNING_PERIOD_SECONDS:
            said, since = 0, now
        said += 1
        self._topics[topic] = (said, since)
        if len(self._topics) > WARNINGS_REMEMBERED:
            self._topics.popitem(last=False)
        if said < WARNINGS_PER_TOPIC:
            log.warning(message, *args)
        elif said == WARNINGS_PER_TOPIC:
            log.warning(message + " (further %s warnings this hour are logged at debug level)", *args, topic)
        else:
            log.debug(message, *args)

    def cached_entries(self) -> int:
        """How many entries the caches hold (they are bounded; a test checks it)."""
        return sum(len(models) for models in self._models.values()) + len(self._said) + len(self._topics)

    def gpu(self, nvml_name: str) -> GpuSpec | None:
        spec = find(nvml_name, self._user_gpus)
        if spec is None:
            self.warn_once(f"gpu:{nvml_name}", "GPU %r is not in infermeter's catalogue: expected performance and "
                       "cost are not computed for it. Add its specs under `gpus:` in the config file "
                       "(docs/analytic-model.md)", nvml_name)
        return spec

    def price(self, spec: GpuSpec) -> float | None:
        if self.config.gpu_hourly_cost is not None:
            return self.config.gpu_hourly_cost
        price = spec.prices.get(self.config.pricing)
        if price is None:
            self.warn_once(f"price:{spec.name}:{self.config.pricing}", "no %s price for %r: cost metrics are absent; "
                       "set --gpu-hourly-cost or a price under `gpus:` in the config file",
                       self.config.pricing, spec.name)
        return price

    def whatif_gpus(self) -> dict[str, tuple[GpuSpec, float | None]]:
        """The GPU models the what-if advice considers, with their --pricing price (cached: the
        configuration does not change while running)."""
        if self._whatif is None:
            names = self.config.whatif_gpus or tuple(dict.fromkeys([*catalogue(), *self._user_gpus]))
            specs = [spec for name in names if (spec := find(name, self._user_gpus)) is not None]
            self._whatif = {spec.name: (spec, spec.prices.get(self.config.pricing)) for spec in specs}
        return self._whatif

    def model(self, engine: str, served: str, root: str | None) -> ModelSpec | None:
        """The spec of the model ``engine`` serves (cached: the MODELS_PER_ENGINE last ones per engine)."""
        cache = self._models.setdefault(engine, OrderedDict())
        key = (served, root or "")
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        spec = cache[key] = self._find_model(engine, served, root)
        if len(cache) > MODELS_PER_ENGINE:
            cache.popitem(last=False)
        return spec

    def _find_model(self, engine: str, served: str, root: str | None) -> ModelSpec | None:
        configured = _configured(self.config.model_configs or {}, engine)
        if configured:
            try:
                return load(configured)
            except (OSError, ValueError) as err:  # checked at start; the file may have changed since
                self.warn_once(f"model-config:{configured}", "engine %s: cannot read --model-config %s: %s",
                           engine, configured, err)
        if root and os.path.isfile(Path(root) / "config.json"):  # False, not an error, for a NUL byte
            try:
                spec = load(root)
            except (OSError, ValueError) as err:
                self.warn_once(f"root:{engine}:{root}", "engine %s: cannot use the model directory %s: %s", engine,
                               short(root, 200), err)
            else:
                log.info("engine %s: model architecture from %s/config.json", engine, short(root, 200))
                return spec
        for name in (served, Path(root).name if root else ""):
            known = builtin(name) if name else None
            if known is not None:
                log.info("engine %s: model architecture of %s from the built-in catalogue (%s)", engine,
                         short(served), known.source)
                return known
        self.warn_once(f"model:{engine}:{served}", "engine %s: no architecture known for model %s: expected "
                   "performance and right-sizing are not computed. Pass --model-config %s=PATH/config.json",
                   engine, short(served), engine)
        return None


def _configured(paths: Mapping[str, str], engine: str) -> str | None:
    return paths.get(engine) or paths.get("")


class Planner:
    """One planner call per engine per cycle (exporter.derive.rightsizing): the engine's own GPU model at
    every tensor-parallel size, and with --whatif every candidate GPU model, for the engine's observed load
    and efficiency. Inputs are rounded to two significant digits and each GPU model's shapes cached, so a
    steady load costs dictionary lookups per cycle instead of plans over the catalogue."""

    CACHE_SIZE = 1024  # GPU-model evaluations kept (a catalogue's worth for dozens of loads)

    def __init__(self, facts: FactsResolver, config: Config) -> None:
        self._facts = facts
        self._whatif = config.whatif
        self._slo = plan.Slo(config.slo_ttft_seconds or plan.DEFAULT_TTFT_SECONDS,
                             config.slo_tpot_seconds or plan.DEFAULT_TPOT_SECONDS)
        self._cache: dict[tuple[object, ...], tuple[plan.Candidate, ...]] = {}

    def advise(self, stats: EngineStats, analysis: Analysis, engine_config: Mapping[str, str], gpu: GpuSpec,
               price_per_gpu_hour: float | None, current_tensor_parallel: int,
               current_dollars_per_hour: float | None) -> tuple[PlanInputs, Shapes, WhatIf | None]:
        """The planner's inputs, the engine's own GPU model ranked (its recommendation and batch limit), and
        the what-if over GPU models (None with --no-whatif). ``price_per_gpu_hour`` is the engine's own
        price (which may be --gpu-hourly-cost); ``current_dollars_per_hour`` what it costs now."""
        inputs = plan_inputs(stats, analysis, engine_config.get("cache_dtype"))
        kv_dtype = inputs.kv_cache_dtype
        model = analysis.model
        base = (model.name, model.source, model.weight_dtype, inputs.workload, inputs.calibration, kv_dtype)

        def evaluated(spec: GpuSpec, price: float | None, sizes: tuple[int, ...]) -> tuple[plan.Candidate, ...]:
            key = (*base, spec.name, price, sizes)
            if key not in self._cache:
                if len(self._cache) >= self.CACHE_SIZE:
                    self._cache.clear()
                self._cache[key] = tuple(whatif.shapes(model, spec, price, inputs.workload, self._slo,
                                                       inputs.calibration, kv_dtype, sizes))
            return self._cache[key]

        sizes = tuple(dict.fromkeys([*plan.TENSOR_PARALLEL_SIZES, current_tensor_parallel]))
        own = evaluated(gpu, price_per_gpu_hour, sizes)
        advice = None
        if self._whatif:
            by_gpu = {name: evaluated(spec, price, plan.TENSOR_PARALLEL_SIZES)
                      for name, (spec, price) in self._facts.whatif_gpus().items() if name != gpu.name}
            # the engine's own GPU model takes part at the engine's own price, with its own evaluation
            by_gpu[gpu.name] = tuple(c for c in own if c.tensor_parallel in plan.TENSOR_PARALLEL_SIZES)
            advice = whatif.what_if(by_gpu, current_dollars_per_hour, inputs.basis)
        return inputs, rightsizing.shapes(own, current_tensor_parallel), advice
