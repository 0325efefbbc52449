"""Speculative decoding: vLLM's draft/accepted token counters become infermeter_spec_decode_acceptance_ratio."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.derive.engine import engine_stats
from exporter.samples import EngineSample
from exporter.sources.engines import detect
from exporter.sources.exposition import parse
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.process import ExporterProcess, value, wait_for
from tests.test_collection import Clock, collection_for

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
SPEC = FIXTURES / "vllm-0.32.0-specdecode.txt"


def _sample(t: float, draft: float, accepted: float) -> EngineSample:
    counters = {"spec_decode_draft_tokens": draft, "spec_decode_accepted_tokens": accepted}
    return EngineSample(t, "vllm", counters=counters)


def test_the_vllm_adapter_reads_the_draft_and_accepted_token_counters() -> None:
    body = SPEC.read_text()
    adapter = detect(body)
    sample = adapter.adapt(parse(body, adapter.families), 1.0, None)
    # the fixture: 1200 drafts of 3 tokens, accepted per position 960 + 720 + 540
    assert sample.counters["spec_decode_draft_tokens"] == 3600
    assert sample.counters["spec_decode_accepted_tokens"] == 960 + 720 + 540


def test_the_ratio_is_the_increase_of_accepted_over_draft_tokens_in_the_window() -> None:
    stats = engine_stats([_sample(0, 100, 80), _sample(10, 400, 200), _sample(20, 700, 350)], (0.5,))
    assert stats.spec_decode_acceptance_ratio == pytest.approx((350 - 80) / (700 - 100))


def test_no_drafts_in_the_window_means_no_ratio_and_a_reset_is_not_negative() -> None:
    assert engine_stats([_sample(0, 100, 80), _sample(10, 100, 80)], (0.5,)).spec_decode_acceptance_ratio is None
    assert engine_stats([_sample(0, 100, 80)], (0.5,)).spec_decode_acceptance_ratio is None
    # restart between the samples: PromQL's reset rule counts the new values from zero
    stats = engine_stats([_sample(0, 1000, 900), _sample(10, 50, 20)], (0.5,))
    assert stats.spec_decode_acceptance_ratio == pytest.approx(20 / 50)


def test_an_engine_reporting_only_a_ratio_gauge_gives_its_latest_value() -> None:
    samples = [EngineSample(t, "vllm", gauges={"spec_decode_acceptance_ratio": v}) for t, v in ((0, 0.2), (5, 0.7))]
    assert engine_stats(samples, (0.5,)).spec_decode_acceptance_ratio == 0.7


def test_vllm_v0_acceptance_rate_gauge_is_read_when_the_counters_are_absent() -> None:
    body = ("# HELP vllm:spec_decode_draft_acceptance_rate Speulative token acceptance rate.\n"
            "# TYPE vllm:spec_decode_draft_acceptance_rate gauge\n"
            'vllm:spec_decode_draft_acceptance_rate{model_name="m"} 0.61\n'
            "# TYPE vllm:num_requests_running gauge\n"
            'vllm:num_requests_running{model_name="m"} 1.0\n')
    adapter = detect(body)
    assert adapter.adapt(parse(body, adapter.families), 1.0, None).gauges["spec_decode_acceptance_ratio"] == 0.61


def test_collection_over_http_counts_the_window() -> None:
    engine = FakeEngine(SPEC)
    engine.zero()
    with FakeEngineServer(engine) as server:
        clock = Clock()
        collection = collection_for(server.url, clock)
        collection.run_once()
        clock.now += 5
        engine.inc("vllm:spec_decode_num_draft_tokens_total", 300)
        engine.inc("vllm:spec_decode_num_accepted_tokens_total", 180)
        stats = collection.run_once().engines[0].stats
    assert stats is not None
    assert stats.spec_decode_acceptance_ratio == pytest.approx(180 / 300)


def test_the_running_exporter_serves_the_ratio(tmp_path: Path) -> None:
    engine = FakeEngine(SPEC)
    engine.zero()
    with FakeEngineServer(engine) as server:
        exporter = ExporterProcess(["--engine", f"spec={server.url}", "--interval", "0.2", "--window", "60",
                                    "--no-collector.nvml"], tmp_path)
        try:
            exporter.wait_ready()
            assert value(exporter.samples(), "infermeter_spec_decode_acceptance_ratio") is None  # nothing drafted yet
            engine.inc("vllm:spec_decode_num_draft_tokens_total", 1000)
            engine.inc("vllm:spec_decode_num_accepted_tokens_total", 250)
            ratio = wait_for(lambda: value(exporter.samples(), "infermeter_spec_decode_acceptance_ratio",
                                           engine="spec", kind="vllm"))
            assert ratio == pytest.approx(0.25)
        finally:
            exporter.stop()
