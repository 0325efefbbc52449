"""SGLang: the adapter against fixtures rendered from SGLang's metric definitions, the simulator's SGLang kind,
and the real exporter process against a fake SGLang at its HTTP boundary.

Expected values are read from the fixture text by a naive line reader, not by the code under test.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.config import EngineTarget
from exporter.derive.engine import engine_stats
from exporter.samples import EngineIdentity, EngineSample
from exporter.simulate import SimulatorServer, exposition_for, simulation
from exporter.simulate.exposition import INFO_NAME
from exporter.simulate.sglang import SglangExposition
from exporter.sources.engine import EngineSource
from exporter.sources.engines import detect, sglang
from exporter.sources.exposition import parse
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node
from tests.process import ROOT, ExporterProcess, Samples, free_port, value, wait_for
from tests.test_engines import LINE, naive
from tests.test_quantiles import reference_quantile

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
SINGLE, LATER, DP2 = "sglang.txt", "sglang-b.txt", "sglang-dp2.txt"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def document(name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(text(name))
    return loaded


def one(body: str, name: str, **labels: str) -> float:
    values = naive(body, name, **labels)
    assert len(values) == 1, f"{name}{labels}: {len(values)} series"
    return values[0][1]


def total(body: str, name: str, **labels: str) -> float:
    values = naive(body, name, **labels)
    assert values, f"fixture lacks {name}"
    return sum(v for _, v in values)


def read(body: str, timestamp: float = 1.0, identity: EngineIdentity | None = None) -> EngineSample:
    adapter = detect(body)
    return adapter.adapt(parse(body, adapter.families), timestamp, identity)


def bounds(body: str, family: str) -> list[float]:
    return sorted({float(labels["le"]) for labels, _ in naive(body, family + "_bucket")})


# ------------------------------------------------------------------------------------------ adapter


@pytest.mark.parametrize("fixture", [SINGLE, LATER])
def test_every_mapped_field_from_one_scheduler(fixture: str) -> None:
    body = text(fixture)
    sample = read(body)
    assert detect(body) is sglang.ADAPTER and sample.kind == "sglang"
    assert sample.model_label == MODEL
    for field, wire in (("prompt_tokens", "sglang:prompt_tokens_total"),
                        ("generation_tokens", "sglang:generation_tokens_total"),
                        ("requests_finished", "sglang:num_requests_total"),
                        ("preemptions", "sglang:num_retracted_requests_total"),
                        ("prefix_cache_queries", "sglang:prompt_tokens_total"),
                        ("prefix_cache_hits", "sglang:cached_tokens_total")):
        assert sample.counters[field] == total(body, wire), field
    assert 0 < sample.counters["prefix_cache_hits"] < sample.counters["prefix_cache_queries"]
    assert sample.gauges["requests_running"] == one(body, "sglang:num_running_reqs")
    assert sample.gauges["requests_waiting"] == one(body, "sglang:num_queue_reqs")
    assert sample.gauges["kv_cache_capacity_tokens"] == one(body, "sglang:max_total_num_tokens") == 371589
    assert sample.gauges["kv_cache_usage_ratio"] == one(body, "sglang:token_usage")
    assert sample.gauges["kv_cache_usage_ratio"] == pytest.approx(
        one(body, "sglang:num_used_tokens") / one(body, "sglang:max_total_num_tokens"))
    assert sample.gauges["spec_decode_acceptance_ratio"] == one(body, "sglang:spec_accept_rate")
    assert "data_parallel_ranks" not in sample.gauges  # one scheduler: one replica
    for field, family in (("time_to_first_token", "sglang:time_to_first_token_seconds"),
                          ("inter_token_latency", "sglang:inter_token_latency_seconds"),
                          ("e2e_request_latency", "sglang:e2e_request_latency_seconds"),
                          ("queue_time", "sglang:queue_time_seconds")):
        histogram = sample.histograms[field]
        assert histogram.count == one(body, family + "_count") == histogram.cumulative_counts[-1], field
        assert histogram.sum == pytest.approx(one(body, family + "_sum")), field
        assert list(histogram.bounds) == bounds(body, family), field  # read from the scrape, never assumed
    # the builds read have no per-request TPOT histogram and no speculative token counters: absent, not 0
    assert "time_per_output_token" not in sample.histograms
    assert not {"spec_decode_accepted_tokens", "spec_decode_draft_tokens"} & set(sample.counters)
    assert not {"prefill_seconds", "decode_seconds", "prefix_cache_hit_ratio"} & (set(sample.counters) | set(
        sample.gauges))


def test_fixture_is_internally_consistent() -> None:
    body = text(SINGLE)
    finished = one(body, "sglang:num_requests_total")
    assert one(body, "sglang:e2e_request_latency_seconds_count") == finished
    assert one(body, "sglang:num_retractions_count") == finished
    started = finished + one(body, "sglang:num_aborted_requests_total") + one(body, "sglang:num_running_reqs")
    assert one(body, "sglang:time_to_first_token_seconds_count") == started
    assert one(body, "sglang:queue_time_seconds_count") == started
    assert one(body, "sglang:inter_token_latency_seconds_count") == one(body, "sglang:realtime_tokens_total",
                                                                         mode="decode")
    assert one(body, "sglang:spec_accept_rate") == pytest.approx(one(body, "sglang:spec_accept_length") / 4)
    assert not [line for line in body.splitlines() if "_created" in line]  # multiprocess mode


def test_cache_hit_rate_gauge_is_not_the_prefix_hit_ratio() -> None:
    # SGLang sets cache_hit_rate to 0.0 on every decode log: the ratio comes from the token counters
    body = text(SINGLE)
    assert one(body, "sglang:cache_hit_rate") == 0.0
    sample = read(body)
    assert sample.counters["prefix_cache_hits"] / sample.counters["prefix_cache_queries"] > 0.3
    no_hits = "\n".join(line for line in body.splitlines() if "sglang:cached_tokens_total" not in line) + "\n"
    sample = read(no_hits)
    assert "prefix_cache_hits" not in sample.counters and "prefix_cache_queries" not in sample.counters
    assert "prefix_cache_hit_ratio" not in sample.gauges


def test_data_parallel_ranks_add_up_and_kv_usage_is_weighted() -> None:
    body = text(DP2)
    sample = read(body)
    ranks = ("0", "1")
    assert {labels["dp_rank"] for labels, _ in naive(body, "sglang:num_running_reqs")} == set(ranks)
    assert sample.gauges["requests_running"] == total(body, "sglang:num_running_reqs") == 105
    assert sample.gauges["requests_waiting"] == total(body, "sglang:num_queue_reqs")
    capacity = {r: one(body, "sglang:max_total_num_tokens", dp_rank=r) for r in ranks}
    usage = {r: one(body, "sglang:token_usage", dp_rank=r) for r in ranks}
    assert sample.gauges["kv_cache_capacity_tokens"] == sum(capacity.values())
    assert sample.gauges["kv_cache_usage_ratio"] == pytest.approx(
        sum(usage[r] * capacity[r] for r in ranks) / sum(capacity.values()))
    assert sample.gauges["spec_decode_acceptance_ratio"] == pytest.approx(
        sum(one(body, "sglang:spec_accept_rate", dp_rank=r) for r in ranks) / 2)
    assert sample.gauges["data_parallel_ranks"] == 2
    assert sample.counters["preemptions"] == total(body, "sglang:num_retracted_requests_total")
    assert sample.histograms["queue_time"].count == total(body, "sglang:queue_time_seconds_count")
    assert sample.counters["prompt_tokens"] == one(body, "sglang:prompt_tokens_total")  # one tokenizer


def _with_tp_rank_1(body: str, scale: float) -> str:
    """Every scheduler series repeated for tp_rank="1" (--enable-metrics-for-all-schedulers), other values."""
    lines = []
    for line in body.splitlines():
        lines.append(line)
        match = LINE.match(line)
        if match and 'tp_rank="0"' in line:
            copy = line.replace('tp_rank="0"', 'tp_rank="1"').replace(f'pid="{_pid(line)}"', 'pid="1"')
            lines.append(copy.rsplit(" ", 1)[0] + f" {float(match.group('value')) * scale + 1}")
    return "\n".join(lines) + "\n"


def _pid(line: str) -> str:
    found = re.search(r'pid="(\d+)"', line)
    return found.group(1) if found else "-"


@pytest.mark.parametrize("fixture", [SINGLE, DP2])
def test_tensor_parallel_ranks_repeating_the_batch_are_read_once(fixture: str) -> None:
    body = text(fixture)
    doubled = _with_tp_rank_1(body, 3.0)
    assert len(naive(doubled, "sglang:num_running_reqs")) == 2 * len(naive(body, "sglang:num_running_reqs"))
    plain, deduplicated = read(body), read(doubled)
    assert deduplicated.gauges == plain.gauges
    assert deduplicated.counters == plain.counters
    assert deduplicated.histograms == plain.histograms


def test_dp_attention_ranks_are_one_replica() -> None:
    # DP attention: every attention-TP-rank-0 scheduler reports, each its own TP rank and dp_rank
    body = text(DP2)
    lines = [line.replace('tp_rank="0"', 'tp_rank="1"') if 'dp_rank="1"' in line else line
             for line in body.splitlines()]
    sample = read("\n".join(lines) + "\n")
    assert sample.gauges["requests_running"] == total(body, "sglang:num_running_reqs")
    assert sample.gauges["kv_cache_capacity_tokens"] == total(body, "sglang:max_total_num_tokens")
    assert "data_parallel_ranks" not in sample.gauges


def test_no_acceptance_ratio_without_speculative_decoding() -> None:
    body = text(SINGLE)
    off = re.sub(r"^(sglang:spec_accept_(?:length|rate)\{[^}]*\}) \S+$", r"\1 0.0", body, flags=re.M)
    assert one(off, "sglang:spec_accept_rate") == 0.0
    sample = read(off)
    assert "spec_decode_acceptance_ratio" not in sample.gauges
    assert sample.gauges["requests_running"] == one(body, "sglang:num_running_reqs")


def test_reading_only_the_needed_families_changes_nothing() -> None:
    for fixture in (SINGLE, DP2):
        body = text(fixture)
        adapter = detect(body)
        assert read(body) == adapter.adapt(parse(body), 1.0, None)
        assert len(parse(body, adapter.families).samples) < len(parse(body).samples)


def test_detection_and_no_confusion_with_other_engines() -> None:
    assert detect(text(SINGLE)).kind == "sglang"
    assert detect('sglang:num_running_reqs{model_name="m"} 1.0\n').kind == "sglang"
    for other, kind in (("vllm-0.32.0-real-a.txt", "vllm"), ("tgi-3.x.txt", "tgi")):
        assert detect(text(other)).kind == kind


def test_identity_from_models_and_server_info() -> None:
    models, info = document("sglang.models.json"), document("sglang.server_info.json")
    old = sglang.identity({"/v1/models": models, "/get_server_info": info})
    assert old == EngineIdentity(model=MODEL, version=info["version"], model_root=info["model_path"])
    newer = sglang.identity({"/v1/models": models, "/server_info": {**info, "version": "0.5.9"},
                             "/get_server_info": info})
    assert newer.version == "0.5.9"  # /server_info wins where a build has both
    assert sglang.identity({"/v1/models": models}) == EngineIdentity(model=MODEL)
    assert sglang.identity({}) == EngineIdentity()
    assert sglang.identity({"/server_info": {"version": 5, "model_path": ""}}) == EngineIdentity()


def test_windowed_rates_prefix_and_acceptance_between_two_scrapes() -> None:
    a, b = text(SINGLE), text(LATER)
    stats = engine_stats([read(a, 1000.0), read(b, 1010.0)], (0.5, 0.99))
    for counter, rate in (("sglang:generation_tokens_total", "generation_tokens_per_second"),
                          ("sglang:prompt_tokens_total", "prompt_tokens_per_second"),
                          ("sglang:num_requests_total", "requests_per_second")):
        assert stats.rates[rate] == pytest.approx((one(b, counter) - one(a, counter)) / 10.0)
    hits = total(b, "sglang:cached_tokens_total") - total(a, "sglang:cached_tokens_total")
    queries = one(b, "sglang:prompt_tokens_total") - one(a, "sglang:prompt_tokens_total")
    assert stats.prefix_cache_hit_ratio == pytest.approx(hits / queries)
    assert stats.spec_decode_acceptance_ratio == one(b, "sglang:spec_accept_rate")  # the latest gauge
    ttft = stats.latency["time_to_first_token"]
    assert ttft.count == one(b, "sglang:time_to_first_token_seconds_count") and set(ttft.quantiles) == {0.5, 0.99}
    assert stats.latency["queue_time"].window_mean is not None


# ------------------------------------------------------------------------------------------ simulator


def _families(body: str) -> list[tuple[str, str, str]]:
    """(name, type, HELP) of every sglang: family, in order."""
    helps = dict(re.findall(r"^# HELP (sglang:\S+) (.*)$", body, flags=re.M))
    return [(name, kind, helps[name]) for name, kind in re.findall(r"^# TYPE (sglang:\S+) (\S+)$", body, flags=re.M)]


def _label_names(body: str, family: str) -> set[str]:
    names: set[str] = set()
    for line in body.splitlines():
        if line.startswith((family + "{", family + "_")):
            names |= set(re.findall(r'(\w+)="', line)) - {"le", "pid"}
    return names


@pytest.fixture(scope="module")
def driven() -> tuple[SglangExposition, str]:
    sim = simulation("sglang", "memory-bound", seed=7)
    exposition = exposition_for(sim)
    assert isinstance(exposition, SglangExposition)
    sim.advance(120)
    return exposition, exposition.render().decode()


def test_simulator_shape_equals_the_fixture(driven: tuple[SglangExposition, str]) -> None:
    exposition, body = driven
    fixture = text(SINGLE)
    ours, theirs = _families(body), _families(fixture)
    assert ours == [f for f in theirs if f[0] in {name for name, _, _ in ours}]  # same order, types, HELP
    # only families SGLang creates on first use may still be missing (no abort yet)
    assert {name for name, _, _ in theirs} - {name for name, _, _ in ours} <= {"sglang:num_aborted_requests_total"}
    for name, _, _ in ours:
        assert _label_names(body, name) == _label_names(fixture, name), name
        if name.endswith("_seconds") or name == "sglang:num_retractions":
            assert bounds(body, name) == bounds(fixture, name), name
    assert exposition.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert "_created" not in body
    assert one(body, INFO_NAME, engine_kind="sglang", scenario="memory-bound") == 1.0


def test_simulator_is_read_as_sglang_and_moves(driven: tuple[SglangExposition, str]) -> None:
    exposition, body = driven
    sim = exposition.sim
    adapter = detect(body)
    assert adapter.kind == "sglang"
    identity = adapter.identity(exposition.identity())
    assert identity.model == "meta-llama/Llama-3.1-8B" and identity.version and "simulator" in identity.version
    first = adapter.adapt(parse(body, adapter.families), 0.0, identity)
    assert first.gauges["kv_cache_capacity_tokens"] == sim.kv_capacity_tokens
    assert first.gauges["kv_cache_usage_ratio"] > 0.9  # memory-bound fills the KV pool
    assert first.counters["preemptions"] == sim.totals.preemptions > 0  # retractions
    assert first.counters["requests_finished"] == sim.totals.finished > 0
    assert "spec_decode_acceptance_ratio" not in first.gauges  # the simulated engine does not speculate
    sim.advance(10)
    later = adapter.adapt(parse(exposition.render().decode(), adapter.families), 10.0, identity)
    for counter in ("prompt_tokens", "generation_tokens", "requests_finished"):
        assert later.counters[counter] > first.counters[counter], counter
    assert later.histograms["time_to_first_token"].count > first.histograms["time_to_first_token"].count


def test_simulator_restart_starts_every_series_again() -> None:
    sim = simulation("sglang", "engine-restart", seed=3)
    exposition = exposition_for(sim)
    sim.advance(59)
    before = read(exposition.render().decode())
    assert before.counters["requests_finished"] > 0
    sim.advance(2)
    after = exposition.render().decode()
    # a new process: nothing written yet but the cache configuration (the scheduler logs on its first batch)
    assert [name for name, _, _ in _families(after)] == ["sglang:cache_config_info"]
    assert detect(after).kind == "sglang" and read(after).counters == {}
    sim.advance(20)
    serving = read(exposition.render().decode())
    assert 0 < serving.counters["requests_finished"] < before.counters["requests_finished"]
    assert serving.gauges["kv_cache_capacity_tokens"] == sim.kv_capacity_tokens


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_simulator_http_server_and_engine_source() -> None:
    sim = simulation("sglang", "balanced", seed=1)
    with SimulatorServer(sim, exposition_for(sim), port=0, speed=20.0) as server:
        status, models = _get(server.url + "/v1/models")
        assert status == 200 and json.loads(models)["data"][0]["owned_by"] == "infermeter-simulator"
        assert "infermeter-simulator" in json.loads(_get(server.url + "/server_info")[1])["version"]
        source = EngineSource(EngineTarget("sim", server.url), timeout=5.0, max_body_bytes=16 * 1024 * 1024)
        try:
            reading = wait_for(lambda: (r := source.read()).sample.counters.get("requests_finished") and r)
        finally:
            source.close()
        assert reading.sample.kind == "sglang"
        assert reading.identity.model == "meta-llama/Llama-3.1-8B"
        assert reading.identity.model_root == "/simulator/meta-llama/Llama-3.1-8B"
        assert reading.sample.gauges["kv_cache_capacity_tokens"] == sim.kv_capacity_tokens


def test_infermeter_simulate_command_serves_sglang() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "simulate", "--engine-kind", "sglang", "--scenario",
                             "slo-breach", "--listen", f"127.0.0.1:{port}", "--speed", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stderr is not None
        assert "SIMULATED engine (engine sglang" in proc.stderr.readline()
        body = wait_for(lambda: (b := _get(f"http://127.0.0.1:{port}/metrics")[1].decode())
                        and "sglang:num_requests_total" in b and b, timeout=20)
        assert detect(body).kind == "sglang"
        assert read(body).gauges["requests_waiting"] >= 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture
def sglang_engine() -> Iterator[tuple[FakeEngine, FakeEngineServer]]:
    identity = {"/v1/models": document("sglang.models.json"),
                "/get_server_info": document("sglang.server_info.json")}
    engine = FakeEngine(FIXTURES / SINGLE, identity=identity)
    with FakeEngineServer(engine) as server:
        yield engine, server


TTFT_OBSERVATIONS = [0.05, 0.08, 0.15, 0.15, 0.3, 0.3, 0.5, 0.9, 1.5, 3.0, 0.12, 0.18]


def test_exporter_reads_a_fake_sglang_end_to_end(tmp_path: Path,
                                                 sglang_engine: tuple[FakeEngine, FakeEngineServer]) -> None:
    engine, server = sglang_engine
    body = text(SINGLE)
    exporter = ExporterProcess(["--interval", "0.5", "--window", "30", "--engine", f"sg={server.url}",
                                "--gpu-hourly-cost", "2.5"], tmp_path, nvml_spec=h100_node(1))
    labels = {"engine": "sg", "kind": "sglang", "model": MODEL}
    try:
        exporter.wait_ready()
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", **labels) == 1)
        base_ttft = one(body, "sglang:time_to_first_token_seconds_count")
        for ttft in TTFT_OBSERVATIONS:
            engine.observe("sglang:time_to_first_token_seconds", ttft)
        engine.inc("sglang:generation_tokens_total", 6000)
        engine.inc("sglang:prompt_tokens_total", 5000)
        engine.inc("sglang:cached_tokens_total", 2000)
        engine.inc("sglang:num_requests_total", 20)

        def settled() -> Samples | None:
            samples = exporter.samples()
            done = value(samples, "infermeter_time_to_first_token_seconds_count", **labels) == \
                base_ttft + len(TTFT_OBSERVATIONS)
            return samples if done and value(samples, "infermeter_prefix_cache_hit_ratio", **labels) else None

        samples = wait_for(settled)
        assert value(samples, "infermeter_engine_info", version="0.5.6", **labels) == 1
        # the TTFT quantiles: the new observations in SGLang's own buckets, then PromQL's interpolation
        edges = bounds(body, "sglang:time_to_first_token_seconds")
        cumulative = [float(sum(1 for o in TTFT_OBSERVATIONS if o <= b)) for b in edges]
        for q in (0.5, 0.9, 0.99):
            got = value(samples, "infermeter_time_to_first_token_seconds", quantile=f"{q:g}", **labels)
            assert got == pytest.approx(reference_quantile(q, edges, cumulative)), q
        generation = value(samples, "infermeter_generation_tokens_per_second", **labels)
        prompt = value(samples, "infermeter_prompt_tokens_per_second", **labels)
        assert generation is not None and prompt is not None
        assert generation == pytest.approx(prompt * 6000 / 5000)  # both increased once, in the same window
        assert 6000 / 30 <= generation <= 6000 / 0.25
        assert value(samples, "infermeter_prefix_cache_hit_ratio", **labels) == pytest.approx(2000 / 5000)
        assert value(samples, "infermeter_kv_cache_usage_ratio", **labels) == one(body, "sglang:token_usage")
        assert value(samples, "infermeter_kv_cache_capacity_tokens", **labels) == 371589
        assert value(samples, "infermeter_requests_running", **labels) == one(body, "sglang:num_running_reqs")
        assert value(samples, "infermeter_spec_decode_acceptance_ratio", **labels) == \
            one(body, "sglang:spec_accept_rate")
        per_million = value(samples, "infermeter_cost_per_million_tokens_dollars", token_type="total", **labels)
        assert per_million == pytest.approx(2.5 / ((prompt + generation) * 3600) * 1e6)
        assert value(samples, "infermeter_time_per_output_token_seconds_count", **labels) is None
        assert not math.isnan(per_million)
    finally:
        exporter.stop()
