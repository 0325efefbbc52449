"""``infermeter --demo``: the exporter against built-in simulated engines on simulated GPUs.

Three simulated vLLM engines (``infermeter simulate``'s scenarios ``balanced``, ``memory-bound`` and
``overprovisioned``) serving Llama-3.1-8B, on six simulated H100s whose utilisation, memory, power,
temperature, clocks and energy follow the simulated load. Nothing here is real, and the exporter says
so: in its log, in ``infermeter_demo_info{engine,scenario}``, in the simulated GPUs' UUIDs
(``GPU-simulated-...``) and in the engines' own identity endpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from exporter.config import Config, EngineTarget
from exporter.facts.gpus import GpuSpec, find
from exporter.samples import GpuProcess, GpuSample, NvmlReading
from exporter.simulate import SimulatorServer, exposition_for, simulation

log = logging.getLogger(__name__)

GPU = "NVIDIA H100 80GB HBM3"
MODEL = "meta-llama/Llama-3.1-8B"
# engine name -> (scenario, simulated GPUs)
ENGINES: dict[str, tuple[str, int]] = {
    "demo-balanced": ("balanced", 1), "demo-memory-bound": ("memory-bound", 1),
    "demo-overprovisioned": ("overprovisioned", 4)}
IDLE_WATTS = 70.0
# Simulated history before the exporter's first read (~0.1 s of CPU): the memory-bound engine's KV cache
# is full by then, so every scenario shows its steady state within a minute of start.
WARM_UP_SECONDS = 120.0


@dataclass
class _Placed:
    server: SimulatorServer
    first_gpu: int


class SimulatedGpus:
    """An NVML stand-in whose GPUs follow the simulated engines' load (one GPU per data-parallel rank)."""

    def __init__(self, placed: list[_Placed], spec: GpuSpec, clock: Callable[[], float]) -> None:
        self._placed = placed
        self._spec = spec
        self._clock = clock
        self._energy: dict[int, float] = {}
        self._last: float | None = None
        self._lock = threading.Lock()

    def read(self) -> NvmlReading:
        with self._lock:
            now = self._clock()
            elapsed = 0.0 if self._last is None else now - self._last
            self._last = now
            gpus = []
            for placed in self._placed:
                with placed.server.lock:
                    ranks = list(placed.server.sim.ranks)
                    loads = [(min(rank.running_count / 32.0, 1.0), rank.kv_usage) for rank in ranks]
                per_rank = max(placed.server.sim.gpus // len(ranks), 1)
                for r, (busy, kv) in enumerate(loads):
                    for k in range(per_rank):
                        gpus.append(self._gpu(placed.first_gpu + r * per_rank + k, busy, kv, elapsed))
            return NvmlReading(driver_version="simulated", gpus=tuple(gpus))

    def _gpu(self, index: int, busy: float, kv: float, elapsed: float) -> GpuSample:
        spec = self._spec
        tdp = spec.tdp_watts or 700.0
        watts = IDLE_WATTS + (tdp - IDLE_WATTS) * busy
        self._energy[index] = self._energy.get(index, 0.0) + watts * elapsed
        used = 0.9 * spec.memory_bytes  # vLLM takes gpu_memory_utilization of the memory up front
        return GpuSample(
            index=index, uuid=f"GPU-simulated-{index:04d}", name=spec.name, utilization_ratio=round(busy, 2),
            memory_bandwidth_utilization_ratio=round(0.6 * busy + 0.1 * kv, 2), memory_used_bytes=used,
            memory_total_bytes=spec.memory_bytes, power_watts=watts, power_limit_watts=tdp,
            temperature_celsius=round(32 + 35 * busy), sm_clock_hertz=1.98e9 if busy > 0 else 3.45e8,
            energy_joules=self._energy[index], processes=(GpuProcess(pid=1000 + index, used_memory_bytes=used),))


def start(config: Config, clock: Callable[[], float]) -> tuple[Config, SimulatedGpus, Callable[[], None]]:
    """Start the simulated engines; return the config that reads them, the simulated GPUs, and a stop."""
    spec = find(GPU)
    if spec is None:  # the catalogue ships it; this guards an edited catalogue
        raise ValueError(f"the demo needs {GPU!r} in the GPU catalogue")
    placed: list[_Placed] = []
    targets, mapping, next_gpu = [], {}, 0
    for name, (scenario, gpus) in ENGINES.items():
        sim = simulation("vllm", scenario, model=MODEL, gpu=GPU, gpus=gpus, seed=7)
        sim.advance(WARM_UP_SECONDS)  # an exporter usually starts beside engines that already serve
        server = SimulatorServer(sim, exposition_for(sim), host="127.0.0.1", port=0).start()
        placed.append(_Placed(server, next_gpu))
        targets.append(EngineTarget(name, server.url))
        mapping[name] = tuple(range(next_gpu, next_gpu + gpus))
        next_gpu += gpus
    demo = dataclasses.replace(
        config, engines=tuple(targets), engine_gpus=mapping, nvml=True, model_configs=None,
        slo_ttft_seconds=config.slo_ttft_seconds or 1.0, slo_tpot_seconds=config.slo_tpot_seconds or 0.05,
        demo_engines={name: scenario for name, (scenario, _) in ENGINES.items()})
    log.warning("DEMO MODE: %d simulated vLLM engines (%s) serving %s on %d simulated %s GPUs. Nothing here is "
                "real; drop --demo to read real engines and GPUs.", len(ENGINES),
                ", ".join(f"{n}: {s}" for n, (s, _) in ENGINES.items()), MODEL, next_gpu, GPU)

    def stop() -> None:
        for each in placed:
            each.server.stop()

    return demo, SimulatedGpus(placed, spec, clock), stop
