"""vLLM 0.32, 0.33 and 0.34 (issue 15): what each version serves is read, derived and exported.

Fixtures: vllm-0.32.0-real-* (a real server), vllm-0.33.0-* and vllm-0.34.0-* (each release wheel's own
PrometheusStatLogger, tests/fixtures/engines/SOURCES.md). Expected values come from the fixture text by a
naive line reader (tests/test_engines.py), not from the code under test. Each adapter test runs over every
version that serves what it reads.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from exporter.collection import EngineView, Snapshot
from exporter.collector import SnapshotCollector
from exporter.derive import plan, roofline
from exporter.derive.analysis import Deployment, analyse
from exporter.derive.cost import costs
from exporter.derive.engine import EngineStats, engine_stats
from exporter.derive.rightsizing import plan_inputs
from exporter.derive.verdict import gather
from exporter.facts.gpus import find
from exporter.facts.models import builtin
from exporter.samples import EngineSample
from exporter.sources.engines import vllm
from exporter.sources.exposition import parse
from tests.test_engines import naive, naive_sum, read, text

ROOT = Path(__file__).resolve().parent.parent

# every version from 0.32 on: (a scrape, a later scrape of the same server)
PAIRS = {"0.32.0": ("vllm-0.32.0-real-a.txt", "vllm-0.32.0-real-b.txt"),
         "0.33.0": ("vllm-0.33.0-a.txt", "vllm-0.33.0-b.txt"),
         "0.34.0": ("vllm-0.34.0-a.txt", "vllm-0.34.0-b.txt")}
CURRENT = sorted({f for pair in PAIRS.values() for f in pair} | {
    "vllm-0.32.0-real-mfu.txt", "vllm-0.32.0-specdecode.txt", "vllm-0.32.0-real-kvfull.txt",
    "vllm-0.33.0-hybrid.txt", "vllm-0.34.0-hybrid.txt", "vllm-0.34.0-render.txt"})
OLDER = ["vllm-v0-0.6.txt", "vllm-v1-0.10.txt", "vllm-v1-dp2.txt"]
SECONDS = 100.0
COMPLETED = ("stop", "length", "repetition")
H100 = find("NVIDIA H100 80GB HBM3")
LLAMA = builtin("meta-llama/Llama-3.1-8B-Instruct")


def window(version: str) -> tuple[list[EngineSample], EngineStats, str, str]:
    """The two scrapes of ``version``'s server, SECONDS apart, and their windowed statistics."""
    a, b = (text(f) for f in PAIRS[version])
    samples = [read(a, 1000.0), read(b, 1000.0 + SECONDS)]
    return samples, engine_stats(samples, (0.5,)), a, b


def rate(a: str, b: str, name: str, **labels: str) -> float:
    return (naive_sum(b, name, **labels) - naive_sum(a, name, **labels)) / SECONDS


# ---------------------------------------------------------------------------------------- 1. KV capacity


@pytest.mark.parametrize("fixture", CURRENT)
def test_kv_capacity_is_vllms_group_aware_figure(fixture: str) -> None:
    body = text(fixture)
    expected = sum(float(labels["kv_cache_size_tokens"]) for labels, _ in naive(body, "vllm:cache_config_info"))
    assert read(body).gauges["kv_cache_capacity_tokens"] == expected


@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_a_hybrid_model_is_not_read_as_blocks_times_block_size(version: str) -> None:
    body = text(f"vllm-{version}-hybrid.txt")
    labels = naive(body, "vllm:cache_config_info")[0][0]
    blocks = float(labels["num_gpu_blocks"]) * float(labels["block_size"])
    size = float(labels["kv_cache_size_tokens"])
    assert size < 0.5 * blocks  # one full-attention and five sliding-window groups share the pool
    sample = read(body)
    assert sample.gauges["kv_cache_capacity_tokens"] == size
    # KV tokens in use follow: usage x capacity
    stats = engine_stats([sample], (0.5,))
    assert stats.gauges["kv_cache_usage_ratio"] * stats.gauges["kv_cache_capacity_tokens"] == pytest.approx(
        naive_sum(body, "vllm:kv_cache_usage_perc") * size)


@pytest.mark.parametrize("fixture", OLDER)
def test_versions_without_kv_cache_size_tokens_fall_back_to_blocks(fixture: str) -> None:
    body = text(fixture)
    assert all("kv_cache_size_tokens" not in labels for labels, _ in naive(body, "vllm:cache_config_info"))
    expected = sum(float(labels["num_gpu_blocks"]) * float(labels["block_size"])
                   for labels, _ in naive(body, "vllm:cache_config_info"))
    assert read(body).gauges["kv_cache_capacity_tokens"] == expected


def test_vllm_034_unset_gpu_memory_utilization_resolves_as_vllm_does() -> None:
    config = read(text("vllm-0.34.0-a.txt")).config
    assert config["gpu_memory_utilization"] == "None" and config["enable_extensible_kv_cache"] == "True"
    assert LLAMA is not None and H100 is not None
    deployment = Deployment(LLAMA, H100, 1, H100.memory_bytes, None, engine_config=config)
    assert deployment.gpu_memory_utilization == 1.0
    off = Deployment(LLAMA, H100, 1, H100.memory_bytes, None,
                     engine_config={**config, "enable_extensible_kv_cache": "False"})
    assert off.gpu_memory_utilization == 0.92
    assert Deployment(LLAMA, H100, 1, H100.memory_bytes, None,
                      engine_config=read(text("vllm-0.33.0-a.txt")).config).gpu_memory_utilization == 0.92


# ---------------------------------------------------------------------------------------- 2. engine MBU


@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_engine_mbu_is_read_plus_write_bytes(version: str) -> None:
    _, stats, a, b = window(version)
    read_rate = rate(a, b, "vllm:estimated_read_bytes_per_gpu_total")
    write_rate = rate(a, b, "vllm:estimated_write_bytes_per_gpu_total")
    assert write_rate > 0
    assert LLAMA is not None and H100 is not None
    analysis = analyse(stats, Deployment(LLAMA, H100, 1, H100.memory_bytes, None), [], None)
    assert analysis.mbu["engine"] == pytest.approx((read_rate + write_rate) / H100.memory_bandwidth_bytes_per_second)


def test_the_032_capture_write_bytes_are_read_too() -> None:
    body = text("vllm-0.32.0-real-mfu.txt")
    assert read(body).counters["engine_write_bytes_per_gpu"] == naive_sum(
        body, "vllm:estimated_write_bytes_per_gpu_total") > 0


# ---------------------------------------------------------------------------------------- 3. computed prompt tokens


@pytest.mark.parametrize("fixture", CURRENT)
def test_computed_prompt_tokens_are_the_local_compute_source(fixture: str) -> None:
    body = text(fixture)
    sample = read(body)
    assert sample.counters["prompt_tokens_computed"] == naive_sum(
        body, "vllm:prompt_tokens_by_source_total", source="local_compute")
    assert sample.counters["prompt_tokens"] == naive_sum(body, "vllm:prompt_tokens_total")


@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_prefill_work_counts_only_computed_tokens(version: str) -> None:
    _, stats, a, b = window(version)
    computed, prompt = (rate(a, b, "vllm:prompt_tokens_by_source_total", source="local_compute"),
                        rate(a, b, "vllm:prompt_tokens_total"))
    generation, finished = rate(a, b, "vllm:generation_tokens_total"), rate(a, b, "vllm:request_success_total")
    assert 0 < computed < prompt  # the fixtures have prefix-cache and CPU-offload hits
    assert stats.rates["prompt_tokens_computed_per_second"] == pytest.approx(computed)
    assert LLAMA is not None and H100 is not None
    analysis = analyse(stats, Deployment(LLAMA, H100, 1, H100.memory_bytes, None), [], None)
    # analytic MFU: 2 x active params x (computed prompt + generated) tokens per second
    assert analysis.mfu["analytic"] == pytest.approx(
        2 * roofline.matmul_params(LLAMA) * (computed + generation) / H100.flops_for("bf16"), rel=1e-6)
    # expected TTFT: the roofline prefill of the mean computed prompt, shorter than the whole prompt's
    whole = roofline.prefill(LLAMA, H100, 1, prompt / finished)
    part = roofline.prefill(LLAMA, H100, 1, computed / finished)
    assert whole is not None and part is not None
    assert analysis.expected_ttft_seconds == pytest.approx(part.seconds) and part.seconds < whole.seconds
    # the planner: prefill on the computed part, the KV cache holds the whole prompt
    inputs = plan_inputs(stats, analysis)
    workload = inputs.workload
    assert workload.prompt_tokens == float(f"{prompt / finished:.2g}")
    assert workload.computed_prompt_tokens == float(f"{computed / finished:.2g}")
    assert workload.prefill_tokens == workload.computed_prompt_tokens < workload.prompt_tokens


def test_the_analytic_cost_split_uses_computed_tokens() -> None:
    stats = window("0.34.0")[1]
    # without vLLM's own prefill/decode times the split is analytic
    analytic = EngineStats(latency=stats.latency, rates=stats.rates, gauges=stats.gauges,
                           gauge_means=stats.gauge_means,
                           counter_rates={k: v for k, v in stats.counter_rates.items()
                                          if k not in ("prefill_seconds", "decode_seconds")})
    everything = EngineStats(latency=stats.latency, rates=stats.rates, gauges=stats.gauges,
                             gauge_means=stats.gauge_means,
                             counter_rates={k: v for k, v in analytic.counter_rates.items()
                                            if k != "prompt_tokens_computed"})
    assert LLAMA is not None and H100 is not None
    deployment = Deployment(LLAMA, H100, 1, H100.memory_bytes, None)
    computed_share = analyse(analytic, deployment, [], None).prompt_time_share
    whole_share = analyse(everything, deployment, [], None).prompt_time_share
    assert computed_share is not None and whole_share is not None
    assert computed_share < whole_share  # cached prompt tokens cost no prefill


def test_the_planner_plans_the_computed_prefill() -> None:
    assert LLAMA is not None and H100 is not None
    slo = plan.Slo(0.5, 0.05)
    whole = plan.evaluate(LLAMA, H100, 1, plan.Workload(1.0, 6000.0, 200.0), slo, price_per_gpu_hour=None)
    cached = plan.evaluate(LLAMA, H100, 1, plan.Workload(1.0, 6000.0, 200.0, 1500.0), slo, price_per_gpu_hour=None)
    assert whole.ttft_seconds is not None and cached.ttft_seconds is not None
    assert cached.ttft_seconds < whole.ttft_seconds
    assert cached.kv_cache_tokens == whole.kv_cache_tokens and cached.batch == whole.batch  # KV: the whole prompt
    with pytest.raises(ValueError, match="computed prompt tokens"):
        plan.Workload(1.0, 100.0, 10.0, 200.0)


# ---------------------------------------------------------------------------------------- 4. cache tiers


@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_prefix_cache_hit_ratio_per_tier(version: str) -> None:
    _, stats, a, b = window(version)
    queries = rate(a, b, "vllm:prefix_cache_queries_total")
    tiers = stats.prefix_cache_tier_hit_ratios
    assert set(tiers) == set(vllm.CACHE_TIERS)
    for tier in vllm.CACHE_TIERS:
        assert tiers[tier] == pytest.approx(
            rate(a, b, "vllm:prompt_tokens_cached_by_source_total", source=tier) / queries)
    assert tiers["host"] > 0  # CPU offloading served part of the prompts
    assert tiers["device"] == pytest.approx(stats.prefix_cache_hit_ratio)  # the existing ratio keeps its meaning
    # the tiers add up to every cache hit, local and external
    assert sum(tiers.values()) == pytest.approx(
        (rate(a, b, "vllm:prefix_cache_hits_total") + rate(a, b, "vllm:external_prefix_cache_hits_total")) / queries)


# ---------------------------------------------------------------------------------------- 5. outcomes


@pytest.mark.parametrize("version", list(PAIRS))
def test_request_outcomes_split_the_finished_requests(version: str) -> None:
    _, stats, a, b = window(version)
    finished = rate(a, b, "vllm:request_success_total")
    aborted = rate(a, b, "vllm:request_success_total", finished_reason="abort")
    failed = rate(a, b, "vllm:request_success_total", finished_reason="error")
    assert stats.rates["requests_per_second"] == pytest.approx(finished)
    assert stats.outcome_rates["aborted"] == pytest.approx(aborted)
    assert stats.outcome_rates["failed"] == pytest.approx(failed)
    assert stats.outcome_rates["completed"] == pytest.approx(finished - aborted - failed)
    completed = sum(rate(a, b, "vllm:request_success_total", finished_reason=r) for r in COMPLETED)
    assert stats.outcome_rates["completed"] == pytest.approx(completed)


@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_cost_per_request_is_spread_over_completed_requests(version: str) -> None:
    _, stats, a, b = window(version)
    completed = sum(rate(a, b, "vllm:request_success_total", finished_reason=r) for r in COMPLETED)
    assert completed < rate(a, b, "vllm:request_success_total")  # the fixtures abort and fail some
    assert costs(36.0, stats, [], None).per_request == pytest.approx(36.0 / (completed * 3600))


def test_older_versions_count_outcomes_by_the_reasons_they_have() -> None:
    body = text("vllm-v1-0.10.txt")  # stop, length, abort: no error reason yet
    sample = read(body)
    assert sample.counters["requests_aborted"] == naive_sum(body, "vllm:request_success_total", finished_reason="abort")
    assert sample.counters["requests_failed"] == 0.0
    assert "requests_aborted" not in read(text("tgi-3.x.txt")).counters


# ---------------------------------------------------------------------------------------- 6. rejected and deferred


@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_rejected_demand_reaches_the_planner(version: str) -> None:
    _, stats, a, b = window(version)
    rejected = rate(a, b, "vllm:admission_rejections_total")
    finished = rate(a, b, "vllm:request_success_total")
    assert rejected > 0
    assert stats.rates["admission_rejections_per_second"] == pytest.approx(rejected)
    assert LLAMA is not None and H100 is not None
    analysis = analyse(stats, Deployment(LLAMA, H100, 1, H100.memory_bytes, None), [], None)
    assert plan_inputs(stats, analysis).workload.requests_per_second == float(f"{finished + rejected:.2g}")


@pytest.mark.parametrize("fixture", CURRENT)
def test_waiting_by_reason(fixture: str) -> None:
    body = text(fixture)
    sample = read(body)
    capacity = naive_sum(body, "vllm:num_requests_waiting_by_reason", reason="capacity")
    deferred = naive_sum(body, "vllm:num_requests_waiting_by_reason", reason="deferred")
    assert sample.gauges["requests_waiting_capacity"] == capacity
    assert sample.gauges["requests_waiting_deferred"] == deferred
    assert sample.gauges["requests_waiting"] == capacity + deferred  # vLLM's total stays as it is


def test_deferred_requests_are_not_a_queue() -> None:
    samples, _, _, b = window("0.34.0")
    assert naive_sum(b, "vllm:num_requests_waiting_by_reason", reason="deferred") > 0
    only_deferred = [EngineSample(s.timestamp, s.kind, s.counters,
                                  {**s.gauges, "requests_waiting_capacity": 0.0}, s.histograms) for s in samples]
    assert all(s.gauges["requests_waiting"] > 0 for s in only_deferred)
    evidence = gather(only_deferred, {}, None, seconds=SECONDS)
    assert evidence.queueing_ratio == 0.0 and evidence.waiting_requests == 0.0
    queued = gather(samples, {}, None, seconds=SECONDS)
    assert queued.queueing_ratio == 1.0
    assert queued.waiting_requests == pytest.approx(
        sum(naive_sum(text(f), "vllm:num_requests_waiting_by_reason", reason="capacity") for f in PAIRS["0.34.0"]) / 2)


# ---------------------------------------------------------------------------------------- 8. speculative decoding


@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_mean_acceptance_length_is_vllms(version: str) -> None:
    _, stats, a, b = window(version)
    drafts = rate(a, b, "vllm:spec_decode_num_drafts_total")
    accepted = rate(a, b, "vllm:spec_decode_num_accepted_tokens_total")
    drafted = rate(a, b, "vllm:spec_decode_num_draft_tokens_total")
    assert stats.spec_decode_mean_acceptance_length == pytest.approx(1 + accepted / drafts)
    assert stats.spec_decode_acceptance_ratio == pytest.approx(accepted / drafted)


def test_the_032_speculative_capture_reads_drafts() -> None:
    body = text("vllm-0.32.0-specdecode.txt")
    assert read(body).counters["spec_decode_drafts"] == naive_sum(body, "vllm:spec_decode_num_drafts_total")


# ---------------------------------------------------------------------------------------- exported


def test_the_new_metrics_are_exported() -> None:
    _, stats, _, _ = window("0.34.0")
    view = EngineView(name="llama", up=True, kind="vllm", model="m", version="0.34.0", stats=stats, gpus=(),
                      gpu_memory_used_bytes=None)
    snapshot = Snapshot(timestamp=1.0, window_seconds=60.0, engines=(view,))
    families = {f.name: f for f in SnapshotCollector(lambda: snapshot).collect()}
    outcomes = {s.labels["outcome"]: s.value for s in families["infermeter_request_outcomes_per_second"].samples}
    assert outcomes == pytest.approx(stats.outcome_rates)
    assert sum(outcomes.values()) == pytest.approx(families["infermeter_requests_per_second"].samples[0].value)
    tiers = {s.labels["tier"]: s.value for s in families["infermeter_prefix_cache_tier_hit_ratio"].samples}
    assert tiers == pytest.approx(stats.prefix_cache_tier_hit_ratios)
    waiting = {s.labels["reason"]: s.value for s in families["infermeter_requests_waiting_by_reason"].samples}
    assert sum(waiting.values()) == families["infermeter_requests_waiting"].samples[0].value
    for name in ("infermeter_admission_rejections_per_second", "infermeter_prompt_tokens_computed_per_second",
                 "infermeter_spec_decode_mean_acceptance_length_tokens"):
        assert families[name].samples[0].value > 0, name


# ---------------------------------------------------------------------------------------- 9. fallbacks, docs


def _reads(fixture: str) -> set[str]:
    """The families of a fixture the vLLM adapter keeps."""
    return set(parse(text(fixture), vllm.ADAPTER.families).samples)


def test_every_fallback_name_serves_an_older_version_only() -> None:
    names = {n for table in (vllm.NAMES.counters, vllm.NAMES.gauges, vllm.NAMES.histograms)
             for candidates in table.values() for n in candidates} | set(vllm.KV_USAGE)
    current = set().union(*(_reads(f) for f in CURRENT))
    older = set().union(*(_reads(f) for f in OLDER))

    def served(name: str, families: set[str]) -> bool:
        return any(f == name or f.startswith(name + "_") for f in families)

    # a name no 0.32+ fixture serves is a documented fallback, and every documented fallback is such a name
    assert {n for n in names if not served(n, current)} == set(vllm.FALLBACK_VERSIONS)
    assert set(vllm.FALLBACK_VERSIONS) <= names
    for name in vllm.FALLBACK_VERSIONS:
        assert not served(name, current), name
        if name != "vllm:spec_decode_draft_acceptance_rate":  # V0 with speculative decoding: no fixture
            assert served(name, older), name


def test_the_versions_table_in_docs_is_generated() -> None:
    sys.path.insert(0, str(ROOT))
    from tools.engine_support import VLLM_VERSIONS, markdown_vllm_versions
    doc = (ROOT / "docs" / "engines.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- vllm-versions:start[^>]*-->\n(.*?)<!-- vllm-versions:end -->", doc, re.S)
    assert block is not None and block.group(1) == markdown_vllm_versions(), "regenerate the vllm-versions block"
    assert [column for column, _ in VLLM_VERSIONS][-3:] == ["0.32", "0.33", "0.34"]
    row = next(line for line in block.group(1).splitlines() if line.startswith("| kv_cache_capacity_tokens |"))
    assert row.count("kv_cache_size_tokens") == 3 and row.count("num_gpu_blocks x block_size") == 3


def test_a_negative_labelled_counter_fails_the_read_with_one_line() -> None:
    from exporter.sources import SourceError
    body = text("vllm-0.34.0-a.txt")
    line = next(x for x in body.splitlines() if x.startswith("vllm:prompt_tokens_by_source_total{")
                and 'source="local_compute"' in x)
    broken = body.replace(line, line.rsplit(" ", 1)[0] + " -5.0")
    negative = r"prompt_tokens_by_source_total\{source='local_compute'\} is negative"
    with pytest.raises(SourceError, match=negative) as err:
        read(broken)
    assert "\n" not in str(err.value)


def test_render_duration_is_read_where_vllm_serves_it() -> None:
    """vLLM 0.34 registers vllm:request_render_duration_seconds (vllm/renderers/metrics.py) at the first request:
    the fixture adds that family, made with vLLM's own definition, to a 0.34 capture. Both request types
    (completion, chat) add up; an older version, or a 0.34 server before its first request, has none."""
    with_render = read(text("vllm-0.34.0-render.txt"))
    histogram = with_render.histograms["render_duration"]
    assert histogram.count == 2000  # 700 completions + 1,300 chats
    assert histogram.bounds[:3] == (0.0001, 0.00025, 0.0005) and histogram.bounds[-1] == float("inf")
    assert "render_duration" not in read(text("vllm-0.34.0-a.txt")).histograms
    assert "render_duration" not in read(text("vllm-0.32.0-real-a.txt")).histograms
