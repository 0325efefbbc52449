"""Soak a real exporter whose only source fails every cycle, and print its RSS and threads over time.

Run from the repository root with the project's venv:

    python3 benchmarks/soak_failing.py [--cycles 3600] [--interval 0.05] [--kinds down,over-cap,...]

Each failure kind starts its own ``python -m exporter`` (127.0.0.1 only), at ``--interval`` with no GPU
unless the kind is about NVML, and runs until the failing collector has failed ``--cycles`` times
(3,600 is an hour at ``--interval 1``, five hours at the default 5 s). Kinds run one after another:

- ``down``: the engine's port refuses connections;
- ``http-500``: the engine answers 500;
- ``over-cap``: the engine declares a 20 MB body (Content-Length), over the default 16 MiB cap;
- ``over-cap-streamed``: the engine streams a body without a length until the 1 MB cap given here;
- ``gzip-bomb``: a 10 MB gzip body that inflates to 10 GB;
- ``nvml-init``: no engine, and the fake pynvml fails nvmlInit (no library) every cycle.

RSS (VmRSS) and threads are read from /proc at 10 points; "growth" is the last reading minus the one
at 10 % of the run (after start-up has settled). Issue 12 measured, before the fix: down 35.5 -> 88.5 MB in
6.3 minutes at --interval 0.2; over the cap 37 MB -> 2.4 GB in 145 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakes.bodies import FixedResponseServer, gzip_bomb  # noqa: E402
from tests.fakes.engine import FakeEngine, FakeEngineServer  # noqa: E402
from tests.fakes.nvml_specs import missing_library  # noqa: E402
from tests.host import rss_bytes, threads  # noqa: E402
from tests.process import ExporterProcess, free_port, value  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"
POINTS = 10


@contextmanager
def _engine(fault: Callable[[FakeEngine], None]) -> Iterator[list[str]]:
    engine = FakeEngine(FIXTURE)
    fault(engine)
    with FakeEngineServer(engine) as server:
        yield ["--engine", f"engine={server.url}"]


@contextmanager
def _bomb() -> Iterator[list[str]]:
    with FixedResponseServer(gzip_bomb(10_240), {"Content-Encoding": "gzip"}) as url:
        yield ["--engine", f"engine={url}"]


@contextmanager
def _args(*args: str) -> Iterator[list[str]]:
    yield list(args)


ENGINE = "engine/engine"
# kind -> (what to start beside the exporter, giving its extra arguments; the failing collector; fake NVML)
KINDS: dict[str, tuple[Callable[[], AbstractContextManager[list[str]]], str, dict[str, Any] | None]] = {
    "down": (lambda: _args("--engine", f"engine=http://127.0.0.1:{free_port()}"), ENGINE, None),
    "http-500": (lambda: _engine(lambda e: e.set_response(500, b"internal error\n")), ENGINE, None),
    "over-cap": (lambda: _engine(lambda e: e.set_response(200, b"#" * 20_000_000)), ENGINE, None),
    "over-cap-streamed": (lambda: _engine(lambda e: e.set_endless(b"# padding\n" * 6_000, pause=0)), ENGINE, None),
    "gzip-bomb": (_bomb, ENGINE, None),
    "nvml-init": (_args, "nvml", missing_library()),
}


def soak(kind: str, cycles: int, interval: float) -> tuple[list[tuple[int, float, int]], float]:
    """(failed cycles, RSS MiB, threads) at POINTS moments, and the seconds the run took."""
    make, collector, nvml = KINDS[kind]
    args = ["--interval", str(interval), "--timeout", str(interval * 0.8), "--window", str(interval * 100)]
    if kind == "over-cap-streamed":
        args += ["--max-body-bytes", "1000000"]
    if nvml is None:
        args.append("--no-collector.nvml")
    with tempfile.TemporaryDirectory() as tmp, make() as extra:
        exporter = ExporterProcess([*args, *extra], Path(tmp), nvml_spec=nvml)
        began = time.monotonic()
        points: list[tuple[int, float, int]] = []
        try:
            exporter.wait_ready()
            for point in range(1, POINTS + 1):
                target = cycles * point // POINTS
                while True:
                    failed = value(exporter.samples(), "infermeter_collector_errors_total", collector=collector) or 0
                    if failed >= target:
                        break
                    time.sleep(min(1.0, interval * 5))
                pid = exporter.proc.pid
                points.append((int(failed), rss_bytes(pid) / 2**20, threads(pid)))
        finally:
            exporter.stop()
        return points, time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3600)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--kinds", default=",".join(KINDS))
    options = parser.parse_args()
    print("| failure | failed cycles | seconds | RSS at 10 % | RSS at end | growth | threads (max) |")
    print("|---|---|---|---|---|---|---|")
    for kind in options.kinds.split(","):
        points, seconds = soak(kind, options.cycles, options.interval)
        first, last = points[0], points[-1]
        print(f"| {kind} | {last[0]} | {seconds:.0f} | {first[1]:.1f} MiB | {last[1]:.1f} MiB | "
              f"{last[1] - first[1]:+.1f} MiB | {max(p[2] for p in points)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
