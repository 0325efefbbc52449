"""Time one exporter's GPU read in-process against the fake pynvml, and count its NVML calls.

Run by benchmarks/bench_collect.py (not by hand), with ``tests/fakes/pynvml_fake`` first on
PYTHONPATH and INFERMETER_FAKE_NVML naming the spec:

    python benchmarks/nvml_probe.py infermeter|nvitop --cycles N

- ``infermeter``: ``exporter.sources.nvml.NvmlSource.read()``, the whole GPU read of one cycle;
- ``nvitop``: what nvitop-exporter 1.7.2 does each ``--interval`` (nvitop_exporter/exporter.py,
  ``PrometheusExporter.collect``): ``update_host()`` (psutil: CPU, memory, network, disks), then
  ``update_device(d)`` for every GPU; the two parts are timed apart.

Prints one JSON object: per cycle, the mean wall and CPU (``time.process_time``) seconds of each
part, and the NVML calls by function (counted by the fake). Stdlib only, so that it runs in the
peer's virtual environment too.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Callable
from typing import Any

Part = Callable[[], object]


def infermeter_parts() -> dict[str, Part]:
    from exporter.sources.nvml import NvmlSource

    source = NvmlSource()
    return {"gpus": source.read}


def nvitop_parts() -> dict[str, Part]:
    from nvitop import Device  # type: ignore[import-not-found,unused-ignore]
    from nvitop_exporter.exporter import PrometheusExporter  # type: ignore[import-not-found,unused-ignore]
    from prometheus_client import CollectorRegistry

    devices = Device.from_indices(range(Device.count()))
    exporter = PrometheusExporter(devices, hostname="bench", registry=CollectorRegistry(), interval=1.0)

    def gpus() -> None:
        for device in devices:
            exporter.update_device(device)

    return {"host": exporter.update_host, "gpus": gpus}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=("infermeter", "nvitop"))
    ap.add_argument("--cycles", type=int, default=20)
    args = ap.parse_args()
    import pynvml

    if not getattr(pynvml, "IS_FAKE", False):
        raise SystemExit("nvml_probe: put tests/fakes/pynvml_fake first on PYTHONPATH")
    parts = infermeter_parts() if args.target == "infermeter" else nvitop_parts()
    for part in parts.values():  # warm-up: first reads (nvitop's first NVLink read sleeps 20 ms)
        part()
        part()
    wall = dict.fromkeys(parts, 0.0)
    cpu = dict.fromkeys(parts, 0.0)
    calls: collections.Counter[str] = collections.Counter()
    for _ in range(args.cycles):
        for name, part in parts.items():
            pynvml.clear_calls()
            t0, c0 = time.perf_counter(), time.process_time()
            part()
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
            if name == "gpus":
                calls.update(fn for fn, _ in pynvml.calls())
    result: dict[str, Any] = {
        "target": args.target,
        "cycles": args.cycles,
        "wall_s": {k: v / args.cycles for k, v in wall.items()},
        "cpu_s": {k: v / args.cycles for k, v in cpu.items()},
        "nvml_calls": {k: v / args.cycles for k, v in sorted(calls.items())},
    }
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
