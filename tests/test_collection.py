"""One collection cycle at a time, with a controlled clock, against fake engines over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.collection import STALE_READS, Collection, engine_collector
from exporter.config import Config, EngineTarget
from exporter.sources.engine import EngineSource
from exporter.sources.nvml import NvmlSource
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node, load_fake_pynvml

FIXTURES = Path(__file__).parent / "fixtures" / "engines"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rename_window_engine() -> Iterator[tuple[FakeEngine, str]]:
    engine = FakeEngine(FIXTURES / "vllm-v1-0.10.txt")
    engine.zero()
    with FakeEngineServer(engine) as server:
        yield engine, server.url


def collection_for(url: str, clock: Clock, window: float = 60.0) -> Collection:
    config = Config(engines=(EngineTarget("e", url),), interval=1.0, window=window, timeout=2.0)
    return Collection(config, None, [EngineSource(config.engines[0], 2.0, 1 << 24, clock=clock)], clock=clock)


def test_rename_window_then_upgrade_then_restart(rename_window_engine: tuple[FakeEngine, str]) -> None:
    engine, url = rename_window_engine
    clock = Clock()
    collection = collection_for(url, clock)
    collection.run_once()

    # both old and new names advance together (vLLM 0.10 deprecation window)
    clock.now += 1
    engine.inc("vllm:prefix_cache_queries_total", 100)
    engine.inc("vllm:prefix_cache_hits_total", 40)
    engine.inc("vllm:generation_tokens_total", 60)
    engine.observe("vllm:inter_token_latency_seconds", 0.02, times=60)
    assert engine.value("vllm:gpu_prefix_cache_queries_total") == 100  # the twin moved too
    collection.run_once()

    # the upgrade completes: the old names disappear
    for old in ("vllm:gpu_prefix_cache_queries", "vllm:gpu_prefix_cache_hits", "vllm:gpu_cache_usage_perc",
                "vllm:time_per_output_token_seconds"):
        engine.drop_family(old)
    clock.now += 1
    engine.inc("vllm:prefix_cache_queries_total", 100)
    engine.inc("vllm:prefix_cache_hits_total", 10)
    snapshot = collection.run_once()
    stats = snapshot.engines[0].stats
    assert stats is not None
    assert stats.prefix_cache_hit_ratio == pytest.approx(50 / 200)  # counted once, across the rename
    assert stats.latency["inter_token_latency"].count == 60
    assert stats.rates["generation_tokens_per_second"] == pytest.approx(60 / 2)

    # a restart: counters start again from zero; the drop counts as a reset, never negative
    engine.reset()
    clock.now += 1
    engine.inc("vllm:generation_tokens_total", 30)
    engine.observe("vllm:inter_token_latency_seconds", 0.5, times=10)
    snapshot = collection.run_once()
    stats = snapshot.engines[0].stats
    assert stats is not None
    assert stats.rates["generation_tokens_per_second"] == pytest.approx((60 + 30) / 3)
    itl = stats.latency["inter_token_latency"]
    assert itl.count == 10  # cumulative, as the engine reports it after its restart
    # 60 observations at 0.02 s before the restart, 10 at 0.5 s after: the median stays in 0.02's bucket
    assert itl.quantiles[0.5] <= 0.025
    assert itl.quantiles[0.99] > 0.4


def test_window_forgets_old_samples(rename_window_engine: tuple[FakeEngine, str]) -> None:
    engine, url = rename_window_engine
    clock = Clock()
    collection = collection_for(url, clock, window=10.0)
    collection.run_once()
    engine.observe("vllm:time_to_first_token_seconds", 5.0, times=3)
    clock.now += 1
    collection.run_once()
    stats = collection.snapshot.engines[0].stats
    assert stats is not None and stats.latency["time_to_first_token"].quantiles
    for _ in range(11):  # nothing new for longer than the window
        clock.now += 1
        collection.run_once()
    stats = collection.snapshot.engines[0].stats
    assert stats is not None
    assert stats.latency["time_to_first_token"].quantiles == {}  # nothing finished in the window
    assert stats.latency["time_to_first_token"].count == 3
    assert stats.rates["generation_tokens_per_second"] == 0


def test_engine_down_counts_errors_and_keeps_identity(rename_window_engine: tuple[FakeEngine, str]) -> None:
    engine, url = rename_window_engine
    clock = Clock()
    collection = collection_for(url, clock)
    first = collection.run_once()
    assert first.engines[0].up and first.engines[0].model and first.engines[0].kind == "vllm"
    engine.set_response(status=503, body=b"loading")
    clock.now += 1
    down = collection.run_once()
    view = down.engines[0]
    # up 0 at once; one missed read leaves no gap in what comes from the window (for STALE_READS reads), but
    # the latest gauges are not repeated
    assert not view.up and view.stats is not None and first.engines[0].stats is not None
    assert view.stats.rates == first.engines[0].stats.rates and view.stats.gauges == {}
    assert (view.kind, view.model) == (first.engines[0].kind, first.engines[0].model)  # stable series labels
    status = down.collectors[engine_collector("e")]
    assert not status.success and status.errors_total == 1
    for failed in range(2, STALE_READS + 2):
        clock.now += 1
        view = collection.run_once().engines[0]
        assert not view.up and (view.stats is not None) == (failed <= STALE_READS), failed
    engine.clear_response()
    clock.now += 1
    back = collection.run_once()
    assert back.engines[0].up and back.engines[0].stats is not None
    assert back.collectors[engine_collector("e")].errors_total == STALE_READS + 1


def test_a_lost_gpu_is_logged_once_and_the_others_still_served(caplog: pytest.LogCaptureFixture) -> None:
    from exporter.samples import GpuSample, NvmlReading

    readings = iter([NvmlReading("580", (GpuSample(0, "GPU-0", "H100"), GpuSample(1, "GPU-1", "H100"))),
                     NvmlReading("580", (GpuSample(0, "GPU-0", "H100"),), failed_gpus=(1,)),
                     NvmlReading("580", (GpuSample(0, "GPU-0", "H100"),), failed_gpus=(1,)),
                     NvmlReading("580", (GpuSample(0, "GPU-0", "H100"), GpuSample(1, "GPU-1", "H100")))])

    class Nvml:
        def read(self) -> NvmlReading:
            return next(readings)

    collection = Collection(Config(interval=1.0, window=10.0, timeout=0.5), Nvml(), [])
    counts = []
    with caplog.at_level("INFO"):
        for _ in range(4):
            snapshot = collection.run_once()
            assert snapshot.nvml is not None
            counts.append(len(snapshot.nvml.gpus))
    assert counts == [2, 1, 1, 2]
    assert caplog.text.count("GPU 1 could not be read through NVML") == 1
    assert caplog.text.count("GPU 1 answers NVML again") == 1


def test_a_derivation_bug_costs_one_engine_not_the_snapshot(
        rename_window_engine: tuple[FakeEngine, str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import exporter.collection as collection_module

    _, url = rename_window_engine
    clock = Clock()
    collection = collection_for(url, clock)

    def broken(*_: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(collection_module, "engine_stats", broken)
    snapshot = collection.run_once()
    assert snapshot.timestamp == clock.now and not snapshot.engines[0].up
    assert "deriving windowed statistics failed" in caplog.text
    monkeypatch.undo()
    clock.now += 1
    assert collection.run_once().engines[0].up


def test_losing_a_gpu_moves_no_gpu_between_engines() -> None:
    nvml = load_fake_pynvml()
    node = h100_node(8)
    nvml.configure(node)
    engines = [FakeEngine(FIXTURES / "vllm-0.32.0-real-a.txt") for _ in range(2)]
    with FakeEngineServer(engines[0]) as first, FakeEngineServer(engines[1]) as second:
        clock = Clock()
        config = Config(engines=(EngineTarget("a", first.url), EngineTarget("b", second.url)), interval=1.0,
                        window=60.0, timeout=2.0, gpu_hourly_cost=2.0)
        collection = Collection(config, NvmlSource(nvml), [EngineSource(t, 2.0, 1 << 24, clock=clock)
                                                           for t in config.engines], clock=clock)

        def owned() -> dict[str, tuple[tuple[str, ...], float | None]]:
            clock.now += 1
            views = collection.run_once().engines
            return {v.name: (tuple(g.uuid for g in v.gpus), v.costs.per_hour if v.costs else None) for v in views}

        uuids = [gpu["uuid"] for gpu in node["gpus"]]
        before = owned()
        assert before == {"a": (tuple(uuids[:4]), 8.0), "b": (tuple(uuids[4:]), 8.0)}
        node["gpus"][1]["lost_after_reads"] = 0  # GPU 1 falls off the bus: listed, unreadable
        nvml.configure(node)
        lost = owned()
        assert lost["a"] == ((uuids[0], *uuids[2:4]), 8.0)  # still billed for the GPU it cannot use
        assert lost["b"] == before["b"]
        nvml.configure({**node, "gpus": [g for i, g in enumerate(node["gpus"]) if i != 1]})  # gone, renumbered
        assert owned() == lost
        node["gpus"][1]["lost_after_reads"] = None  # back again
        nvml.configure(node)
        assert owned() == before


def test_after_an_outage_rates_are_the_window_average_not_the_rate_while_up() -> None:
    """The issue's replayed outage: an engine generating 10 tokens/s is unreadable for 42 s of a 60 s window,
    then comes back restarted (counters from 0). Each cycle the exported rate must be the average over the
    last window, the outage counting as time without work (what PromQL's rate[60s] says), never the rate
    while the engine was up (10/s) divided over the few samples since it came back."""
    engine = FakeEngine(FIXTURES / "vllm-0.32.0-real-a.txt")
    engine.zero()
    clock = Clock()
    with FakeEngineServer(engine) as server:
        collection = collection_for(server.url, clock, window=60.0)
        done: list[tuple[float, float]] = []  # (time, tokens generated so far)
        total = 0.0
        for second in range(200):
            clock.now = 1_000.0 + second
            down = 80 <= second < 122
            if second == 122:
                engine.reset()  # the engine restarted during the outage
            if down:
                engine.set_response(503, b"down")
            else:
                engine.clear_response()
                engine.inc("vllm:generation_tokens_total", 10)
                total += 10
            done.append((clock.now, total))
            view = collection.run_once().engines[0]
            if down or second < 2:
                continue
            assert view.stats is not None
            rate = view.stats.rates["generation_tokens_per_second"]
            # the truth: tokens generated in (now - 60 s, now] over 60 s (or since the first read, if later)
            start = max(clock.now - 60.0, 1_000.0)
            before = max((tokens for at, tokens in done if at <= start), default=0.0)
            truth = (total - before) / (clock.now - start)
            # the window sees the counter from its first sample on: at most one interval's tokens short
            assert truth - 10 / (clock.now - start) - 1e-9 <= rate <= truth + 1e-9, (second, rate, truth)
