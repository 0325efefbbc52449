"""Ready-made specs for the fake pynvml (tests/fakes/pynvml_fake/pynvml.py); see its docstring."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

H100_MEMORY_TOTAL = 85_520_809_984  # bytes, what NVML reports for an H100 80GB HBM3
DRIVER_VERSION = "580.95.05"


def h100_gpu(index: int) -> dict[str, Any]:
    """One busy H100 running one vLLM worker; values differ a little per index."""
    return {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-{index:08x}-5b1c-4e2a-9f3d-0c1e2d3f4a5b",
        "utilization_gpu": 87 - index,
        "utilization_memory": 54 + index,
        "memory_total": H100_MEMORY_TOTAL,
        "memory_used": 70_000_000_000 + index * 1_000_000,
        "memory_reserved": 503_316_480,  # 480 MiB, what an H100 driver reserves (seen on a real one)
        "power_mw": 512_345 + index * 1_000,
        "power_limit_mw": 700_000,
        "temperature": 61 + index,
        "sm_clock_mhz": 1980,
        "energy_mj": 123_456_789 + index * 1_000_000,
        "energy_mj_per_read": 51_234,  # ~512 W over a 100 ms scrape interval
        "processes": [{"pid": 4242 + index, "used_memory": 69_000_000_000}],
        "not_supported": [],
        "lost_after_reads": None,
        "delay_seconds": 0,
    }


def h100_node(n_gpus: int = 8) -> dict[str, Any]:
    """A node with ``n_gpus`` H100s (indices 0..n-1) on driver 580.95.05."""
    return {"missing": False, "driver_version": DRIVER_VERSION, "gpus": [h100_gpu(i) for i in range(n_gpus)]}


def missing_library() -> dict[str, Any]:
    """A host without libnvidia-ml.so.1: nvmlInit raises NVMLError_LibraryNotFound."""
    return {"missing": True, "gpus": []}


def write_spec(path: str | Path, spec: dict[str, Any]) -> Path:
    """Write ``spec`` as JSON to ``path`` (for INFERMETER_FAKE_NVML); returns the path."""
    out = Path(path)
    out.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return out


def h100_sxm_full_gpu(index: int, pid: int | None = None) -> dict[str, Any]:
    """:func:`h100_gpu` plus what other NVML clients (nvitop) read: encoder/decoder, PCIe, NVLink
    (18 links on an H100 SXM), video clock, MIG mode, per-process utilization. No fan: an H100 SXM
    has none (NVML answers NOT_SUPPORTED). ``pid``: the process on the GPU (a real one, so that a
    client that looks the process up on the host finds it)."""
    gpu = h100_gpu(index)
    gpu.update({
        "encoder_utilization": 0,
        "decoder_utilization": 0,
        "pcie_tx_kib_s": 1_200 + index,
        "pcie_rx_kib_s": 3_400 + index,
        "mem_clock_mhz": 2619,
        "video_clock_mhz": 1755,
        "mig_mode": 0,
        "performance_state": 0,
        "nvlink_links": 18,
        "nvlink_kib_s": 20_000_000,
    })
    process = {"pid": 4242 + index if pid is None else pid, "used_memory": 69_000_000_000,
               "sm_util": 80 - index, "mem_util": 45}
    gpu["processes"] = [process]
    return gpu


def h100_bench_node(n_gpus: int, call_delay_seconds: float, pids: list[int] | None = None) -> dict[str, Any]:
    """``n_gpus`` H100 SXMs as :func:`h100_sxm_full_gpu`, where every NVML call (any client) sleeps
    ``call_delay_seconds``, the cost of a real driver call; GPU i runs ``pids[i % len(pids)]``."""
    gpus = [h100_sxm_full_gpu(i, pids[i % len(pids)] if pids else None) for i in range(n_gpus)]
    return {"missing": False, "driver_version": DRIVER_VERSION, "cuda_driver_version": 13000,
            "call_delay_seconds": call_delay_seconds, "gpus": gpus}


def load_fake_pynvml() -> ModuleType:
    """A private instance of the fake pynvml module, for in-process tests (configure() it, then pass it to
    exporter.sources.nvml.NvmlSource); other instances and the real pynvml are untouched."""
    path = Path(__file__).parent / "pynvml_fake" / "pynvml.py"
    spec = importlib.util.spec_from_file_location("infermeter_private_pynvml", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module
