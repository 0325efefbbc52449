"""A busy engine is not a down engine (issue 14): a /metrics that answers in 1-3 s at --interval 1 reads as up
in every cycle, and its windowed series never gap; a read past --timeout is a failure."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node
from tests.process import ExporterProcess, value, wait_for

FIXTURE = Path(__file__).parent / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"


@pytest.fixture
def slow_engine() -> Iterator[tuple[FakeEngine, str]]:
    engine = FakeEngine(FIXTURE)
    with FakeEngineServer(engine) as server:
        yield engine, server.url


def test_an_engine_answering_in_one_to_three_seconds_is_up_every_cycle(slow_engine: tuple[FakeEngine, str],
                                                                         tmp_path: Path) -> None:
    engine, url = slow_engine
    exporter = ExporterProcess(["--interval", "1", "--window", "60", "--engine", f"busy={url}"], tmp_path,
                               nvml_spec=h100_node(1))
    try:
        exporter.wait_ready()
        # two fast reads first: a rate needs two samples
        wait_for(lambda: value(exporter.samples(), "infermeter_generation_tokens_per_second",
                               engine="busy") is not None)
        for delay in (1.3, 2.5, 3.0):  # what a saturated vLLM took in the issue: up to 1.27 s, and worse
            engine.set_delay(delay)
            began, seen = time.monotonic(), []
            while time.monotonic() - began < 4 * delay:
                engine.tick()
                samples = exporter.samples()
                seen.append((value(samples, "infermeter_engine_up", engine="busy"),
                             value(samples, "infermeter_collector_errors_total", collector="engine/busy"),
                             value(samples, "infermeter_generation_tokens_per_second", engine="busy")))
                time.sleep(0.25)
            assert all(up == 1 for up, _, _ in seen), (delay, seen)
            assert all(errors == 0 for _, errors, _ in seen), (delay, seen)
            assert all(rate is not None for _, _, rate in seen), (delay, seen)  # no gap in the windowed series
        # the reads still arrive: the window keeps growing while the engine is slow
        assert value(exporter.samples(), "infermeter_requests_per_second", engine="busy") is not None
    finally:
        engine.set_delay(0)
        exporter.stop()


def test_a_read_past_the_timeout_fails(slow_engine: tuple[FakeEngine, str], tmp_path: Path) -> None:
    engine, url = slow_engine
    exporter = ExporterProcess(["--interval", "1", "--window", "60", "--timeout", "2", "--engine", f"slow={url}"],
                               tmp_path, nvml_spec=h100_node(1))
    try:
        exporter.wait_ready()
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="slow") == 1)
        engine.set_delay(5.0)
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="slow") == 0, timeout=20)
        assert (value(exporter.samples(), "infermeter_collector_errors_total", collector="engine/slow") or 0) >= 1
        assert "took longer than the deadline" in exporter.log() or "timed out" in exporter.log()
        engine.set_delay(0)
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", engine="slow") == 1, timeout=20)
    finally:
        engine.set_delay(0)
        exporter.stop()
