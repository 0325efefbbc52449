"""Load and soak: many concurrent scrapes on a busy exporter; thousands of collection cycles without growth."""

from __future__ import annotations

import gc
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.collection import Collection
from exporter.config import Config, EngineTarget
from exporter.sources.engine import EngineSource
from exporter.sources.nvml import NvmlSource
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node, load_fake_pynvml
from tests.process import ROOT, ExporterProcess, value, wait_for

FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"


@pytest.fixture
def eight_engines() -> Iterator[list[tuple[FakeEngine, FakeEngineServer]]]:
    with ExitStack() as stack:
        engines = []
        for _ in range(8):
            engine = FakeEngine(FIXTURE)
            engines.append((engine, stack.enter_context(FakeEngineServer(engine))))
        yield engines


def test_200_concurrent_scrapes_while_collecting_8_gpus_and_8_engines(
        tmp_path: Path, eight_engines: list[tuple[FakeEngine, FakeEngineServer]]) -> None:
    args = ["--interval", "0.5", "--window", "30"]
    for i, (_, server) in enumerate(eight_engines):
        args += ["--engine", f"e{i}={server.url}"]
    exporter = ExporterProcess(args, tmp_path, nvml_spec=h100_node(8))
    try:
        exporter.wait_ready()
        wait_for(lambda: all(value(exporter.samples(), "infermeter_engine_up", engine=f"e{i}") == 1
                             for i in range(8)))
        results: list[tuple[int, str, float]] = []
        errors: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(200)

        def scrape() -> None:
            start.wait()
            began = time.monotonic()
            try:
                response = requests.get(exporter.url + "/metrics", timeout=30)
                with lock:
                    results.append((response.status_code, response.text, time.monotonic() - began))
            except requests.RequestException as err:
                with lock:
                    errors.append(type(err).__name__)

        threads = [threading.Thread(target=scrape) for _ in range(200)]
        for thread in threads:
            thread.start()
        for engine, _ in eight_engines:  # the engines keep moving while the scrapes run
            engine.tick()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        assert len(results) == 200 and all(status == 200 for status, _, _ in results)
        for _, body, _ in results:  # every answer is a whole, parsable exposition with all engines and GPUs
            names = [(s.name, s.labels.get("engine"), s.labels.get("gpu"))
                     for f in text_string_to_metric_families(body) for s in f.samples]
            assert sum(1 for n, e, _ in names if n == "infermeter_engine_up") == 8
            assert sum(1 for n, _, g in names if n == "infermeter_gpu_power_watts") == 8
        latencies = sorted(elapsed for _, _, elapsed in results)
        print(f"\n200 concurrent scrapes: p50 {latencies[99] * 1e3:.1f} ms, p99 {latencies[197] * 1e3:.1f} ms")
    finally:
        exporter.stop()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def test_soak_10000_collection_cycles_without_growth() -> None:
    engine = FakeEngine(FIXTURE)
    nvml = load_fake_pynvml()
    nvml.configure(h100_node(2))
    now = [1_000.0]

    def clock() -> float:
        return now[0]

    with FakeEngineServer(engine) as server:
        config = Config(engines=(EngineTarget("e", server.url),), interval=1.0, window=60.0, timeout=5.0,
                        gpu_hourly_cost=2.0)
        source = EngineSource(config.engines[0], 5.0, 1 << 24, clock=clock)
        collection = Collection(config, NvmlSource(nvml), [source], clock=clock)
        rss: dict[int, int] = {}
        for cycle in range(1, 10_001):
            now[0] += 1.0  # one simulated second per cycle: the 60 s window stays full
            if cycle % 50 == 0:
                engine.tick()
            if cycle % 2500 == 0:
                engine.reset()  # restarts along the way
            snapshot = collection.run_once()
            if cycle in (2_000, 10_000):
                gc.collect()
                rss[cycle] = _rss_bytes()
        assert snapshot.engines[0].up and snapshot.collectors["nvml"].success
        assert len(collection._windows["e"].samples()) <= 61
    growth = rss[10_000] - rss[2_000]
    print(f"\nRSS after 2,000 cycles {rss[2_000] / 2**20:.1f} MiB, after 10,000 {rss[10_000] / 2**20:.1f} MiB")
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 8,000 cycles"
