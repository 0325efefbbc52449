"""``infermeter simulate``: a simulated vLLM, TGI, Triton or SGLang engine, for watching infermeter without a GPU.

It serves ``/metrics`` shaped exactly like vLLM 0.34's (0.33's or 0.32's with ``--vllm-version``), TGI 3.x's
(``exposition``), Triton's with a
TensorRT-LLM ensemble (``triton``) or SGLang's (``sglang``), moved by a small deterministic queueing
model timed by infermeter's own roofline (``model``, whose docstring documents the model and every
scenario, with what infermeter shows for each), plus the engine's identity endpoints (vLLM
``/v1/models`` and ``/version``, TGI ``/info``, SGLang ``/v1/models`` and ``/server_info``; Triton's
metrics port has none) and ``/health``. It is plainly a
simulator: the identity endpoints say ``infermeter-simulator`` and the metrics carry
``infermeter_simulator_info{scenario,engine_kind} 1``.

    infermeter simulate --engine-kind vllm --scenario memory-bound --listen 127.0.0.1:8000
    infermeter --engine sim=http://127.0.0.1:8000 --no-collector.nvml
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from exporter.simulate.exposition import (
    VLLM_VERSION,
    VLLM_VERSIONS,
    TgiExposition,
    VllmExposition,
    describe,
    exposition_for,
)
from exporter.simulate.model import (
    DEFAULT_GPU,
    DEFAULT_MODEL,
    ENGINE_KINDS,
    SCENARIOS,
    Engine,
    Scenario,
    Simulation,
    find_engine,
)
from exporter.simulate.server import SimulatorServer

__all__ = ["SCENARIOS", "VLLM_VERSION", "VLLM_VERSIONS", "Engine", "Scenario", "Simulation", "SimulatorServer",
           "TgiExposition", "VllmExposition", "exposition_for", "find_engine", "main", "simulation"]


def simulation(kind: str, scenario: str, *, model: str = DEFAULT_MODEL, gpu: str = DEFAULT_GPU,
               gpus: int | None = None, seed: int = 0) -> Simulation:
    """A simulation by names (ValueError, one line, for an unknown one); its exposition is
    ``exposition_for(sim)``."""
    chosen = SCENARIOS.get(scenario)
    if chosen is None:
        raise ValueError(f"unknown scenario {scenario!r} (one of {', '.join(SCENARIOS)})")
    count = chosen.default_gpus if gpus is None else gpus
    engine = find_engine(kind, model, gpu, count)
    ranks = 1
    if chosen.data_parallel and kind == "vllm" and count > 1:
        try:
            find_engine(kind, model, gpu, 1)
            ranks = count
        except ValueError:  # the model needs several GPUs: one tensor-parallel engine
            ranks = 1
    return Simulation(engine, chosen, seed=seed, ranks=ranks)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _parser() -> argparse.ArgumentParser:
    scenarios = "; ".join(f"{s.name}: {s.summary}" for s in SCENARIOS.values())
    parser = argparse.ArgumentParser(
        prog="infermeter simulate",
        description="Serve a simulated vLLM (0.34 by default), TGI 3.x, Triton (TensorRT-LLM ensemble) or SGLang "
                    "engine (metrics, identity, health) under a scenario's load. It is a simulator, and says so on "
                    "every endpoint.",
        epilog=f"Scenarios: {scenarios}. The model and what infermeter shows for each: "
               "the docstring of exporter/simulate/model.py.")
    parser.add_argument("--engine-kind", required=True, choices=ENGINE_KINDS)
    parser.add_argument("--scenario", required=True, choices=tuple(SCENARIOS))
    parser.add_argument("--listen", type=_listen, default=("127.0.0.1", 8000), metavar="HOST:PORT",
                        help="where to serve (default 127.0.0.1:8000)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a built-in model (default {DEFAULT_MODEL})")
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f"a catalogue GPU name (default {DEFAULT_GPU!r})")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs of the engine (default 1; 4 for the overprovisioned scenario)")
    parser.add_argument("--vllm-version", choices=VLLM_VERSIONS, default=VLLM_VERSION,
                        help=f"the vLLM release whose /metrics shape to serve (default {VLLM_VERSION}, the newest)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the run is deterministic given it)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per wall-clock second (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``infermeter simulate ...``: serve until SIGINT or SIGTERM; 2 on a bad argument."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        sim = simulation(args.engine_kind, args.scenario, model=args.model, gpu=args.gpu, gpus=args.gpus,
                         seed=args.seed)
        exposition = exposition_for(sim, args.vllm_version)
        host, port = args.listen
        server = SimulatorServer(sim, exposition, host=host, port=port, speed=args.speed)
    except (ValueError, OSError) as err:
        print(f"infermeter simulate: error: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    facts = ", ".join(f"{k} {v}" for k, v in describe(sim).items())
    print(f"infermeter simulate: SIMULATED engine ({facts}); serving {server.url}/metrics", file=sys.stderr,
          flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
