"""Find the facts for each engine: its model's architecture and its GPUs' specs and price.

Runs in the collection thread (never in a scrape); results are cached, and each thing that cannot
be found is logged once with what to do about it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from exporter.config import Config
from exporter.facts.gpus import GpuSpec, find, spec_from_mapping
from exporter.facts.models import ModelSpec, builtin, load

log = logging.getLogger(__name__)


class FactsResolver:
    """Model and GPU facts for the engines, from the config, the engine's own model directory and the
    built-in catalogues, in that order."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._user_gpus: dict[str, GpuSpec] = {
            name: spec_from_mapping(name, fields, find(name))
            for name, fields in (config.gpu_specs or {}).items()}
        self._models: dict[tuple[str, str, str], ModelSpec | None] = {}
        self._said: set[str] = set()

    def warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

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

    def model(self, engine: str, served: str, root: str | None) -> ModelSpec | None:
        key = (engine, served, root or "")
        if key not in self._models:
            self._models[key] = self._find_model(engine, served, root)
        return self._models[key]

    def _find_model(self, engine: str, served: str, root: str | None) -> ModelSpec | None:
        configured = _configured(self.config.model_configs or {}, engine)
        if configured:
            try:
                return load(configured)
            except (OSError, ValueError) as err:  # checked at start; the file may have changed since
                self.warn_once(f"model-config:{configured}", "engine %s: cannot read --model-config %s: %s",
                           engine, configured, err)
        if root and os.path.isfile(Path(root) / "config.json"):
            try:
                spec = load(root)
            except (OSError, ValueError) as err:
                self.warn_once(f"root:{root}", "engine %s: cannot use the model directory %s: %s", engine, root, err)
            else:
                log.info("engine %s: model architecture from %s/config.json", engine, root)
                return spec
        for name in (served, Path(root).name if root else ""):
            known = builtin(name) if name else None
            if known is not None:
                log.info("engine %s: model architecture of %r from the built-in catalogue (%s)", engine, served,
                         known.source)
                return known
        self.warn_once(f"model:{engine}:{served}", "engine %s: no architecture known for model %r: expected "
                   "performance and right-sizing are not computed. Pass --model-config %s=PATH/config.json",
                   engine, served, engine)
        return None


def _configured(paths: Mapping[str, str], engine: str) -> str | None:
    return paths.get(engine) or paths.get("")
