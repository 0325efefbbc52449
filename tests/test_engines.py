"""Engine adapters against exposition fixtures shaped like each engine version's output.

Expected values are read from the fixture text by a separate, deliberately naive line reader,
not by the code under test.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from exporter.samples import EngineIdentity, EngineSample
from exporter.sources import SourceError
from exporter.sources.engines import detect, tgi, vllm
from exporter.sources.exposition import parse

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")


def read(body: str, timestamp: float = 1.0, identity: EngineIdentity | None = None) -> EngineSample:
    """What EngineSource does with a body: detect the kind, parse the families its adapter reads, adapt."""
    adapter = detect(body)
    return adapter.adapt(parse(body, adapter.families), timestamp, identity)


def text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def naive(body: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in body.splitlines():
        match = LINE.match(line)
        if not match or match.group("name") != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group("labels") or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            out.append((got, float(match.group("value"))))
    return out


def naive_sum(body: str, name: str, **labels: str) -> float:
    values = naive(body, name, **labels)
    assert values, f"fixture lacks {name}"
    return sum(v for _, v in values)


VLLM_FIXTURES = ["vllm-v0-0.6.txt", "vllm-v1-0.10.txt", "vllm-v1-dp2.txt", "vllm-0.32.0-real-a.txt",
                 "vllm-0.32.0-real-b.txt", "vllm-0.33.0-a.txt", "vllm-0.33.0-b.txt", "vllm-0.33.0-hybrid.txt",
                 "vllm-0.34.0-a.txt", "vllm-0.34.0-b.txt", "vllm-0.34.0-hybrid.txt"]


@pytest.mark.parametrize("fixture", VLLM_FIXTURES)
def test_vllm_counters_gauges_and_latency(fixture: str) -> None:
    body = text(fixture)
    sample = read(body, 100.0, None)
    assert sample.kind == "vllm"
    assert sample.counters["prompt_tokens"] == naive_sum(body, "vllm:prompt_tokens_total")
    assert sample.counters["generation_tokens"] == naive_sum(body, "vllm:generation_tokens_total")
    assert sample.counters["requests_finished"] == naive_sum(body, "vllm:request_success_total")
    assert sample.gauges["requests_running"] == naive_sum(body, "vllm:num_requests_running")
    assert sample.gauges["requests_waiting"] == naive_sum(body, "vllm:num_requests_waiting")
    e2e = sample.histograms["e2e_request_latency"]
    assert e2e.count == naive_sum(body, "vllm:e2e_request_latency_seconds_count")
    assert e2e.cumulative_counts[-1] == naive_sum(body, "vllm:e2e_request_latency_seconds_bucket", le="+Inf")
    assert e2e.sum == pytest.approx(naive_sum(body, "vllm:e2e_request_latency_seconds_sum"))
    bounds = sorted({float(labels["le"]) for labels, _ in naive(body, "vllm:e2e_request_latency_seconds_bucket")})
    assert list(e2e.bounds) == bounds  # read from the scrape, never assumed
    assert "time_to_first_token" in sample.histograms
    assert sample.model_label == naive(body, "vllm:prompt_tokens_total")[0][0]["model_name"]


def test_rename_window_counts_each_value_once() -> None:
    body = text("vllm-v1-0.10.txt")
    # the fixture serves both names with the same values
    assert naive_sum(body, "vllm:gpu_cache_usage_perc") == naive_sum(body, "vllm:kv_cache_usage_perc")
    assert naive_sum(body, "vllm:gpu_prefix_cache_hits_total") == naive_sum(body, "vllm:prefix_cache_hits_total")
    sample = read(body, 1.0, None)
    assert sample.gauges["kv_cache_usage_ratio"] == naive_sum(body, "vllm:kv_cache_usage_perc")
    assert sample.counters["prefix_cache_hits"] == naive_sum(body, "vllm:prefix_cache_hits_total")
    assert sample.counters["prefix_cache_queries"] == naive_sum(body, "vllm:prefix_cache_queries_total")
    itl = sample.histograms["inter_token_latency"]
    assert itl.count == naive_sum(body, "vllm:inter_token_latency_seconds_count")


def test_v0_names() -> None:
    body = text("vllm-v0-0.6.txt")
    sample = read(body, 1.0, None)
    assert sample.gauges["kv_cache_usage_ratio"] == naive_sum(body, "vllm:gpu_cache_usage_perc")
    assert sample.gauges["prefix_cache_hit_ratio"] == naive_sum(body, "vllm:gpu_prefix_cache_hit_rate")
    tpot = sample.histograms["time_per_output_token"]
    assert tpot.count == naive_sum(body, "vllm:time_per_output_token_seconds_count")


def test_kv_capacity_from_cache_config_info() -> None:
    # vLLM's group-aware kv_cache_size_tokens where served (0.32 on), else num_gpu_blocks x block_size
    for fixture in ["vllm-v1-0.10.txt", "vllm-0.32.0-real-a.txt", "vllm-v1-dp2.txt", "vllm-0.33.0-hybrid.txt",
                    "vllm-0.34.0-hybrid.txt"]:
        body = text(fixture)
        expected = sum(float(labels["kv_cache_size_tokens"]) if "kv_cache_size_tokens" in labels
                       else float(labels["num_gpu_blocks"]) * float(labels["block_size"])
                       for labels, _ in naive(body, "vllm:cache_config_info"))
        assert read(body, 1.0, None).gauges["kv_cache_capacity_tokens"] == expected


def test_data_parallel_sums_and_weights_kv_usage_by_capacity() -> None:
    body = text("vllm-v1-dp2.txt")
    sample = read(body, 1.0, None)
    ranks = {labels["engine"] for labels, _ in naive(body, "vllm:prompt_tokens_total")}
    assert ranks == {"0", "1"}
    assert sample.counters["prompt_tokens"] == sum(naive_sum(body, "vllm:prompt_tokens_total", engine=r) for r in ranks)
    capacity = {labels["engine"]: float(labels["num_gpu_blocks"]) * float(labels["block_size"])
                for labels, _ in naive(body, "vllm:cache_config_info")}
    usage = {r: naive_sum(body, "vllm:kv_cache_usage_perc", engine=r) for r in ranks}
    expected = sum(usage[r] * capacity[r] for r in ranks) / sum(capacity.values())
    assert sample.gauges["kv_cache_usage_ratio"] == pytest.approx(expected)
    ttft = sample.histograms["time_to_first_token"]
    assert ttft.count == naive_sum(body, "vllm:time_to_first_token_seconds_count")


def test_tgi_names_and_identity() -> None:
    body = text("tgi-3.x.txt")
    info = json.loads(text("tgi-1.4.info.json"))
    identity = tgi.identity({"/info": info})
    assert identity.model == info["model_id"]
    assert identity.max_batch_total_tokens == info["max_batch_total_tokens"]
    sample = read(body, 1.0, identity)
    assert sample.kind == "tgi"
    assert sample.counters["generation_tokens"] == naive_sum(body, "tgi_request_generated_tokens_sum")
    assert sample.counters["prompt_tokens"] == naive_sum(body, "tgi_request_input_length_sum")
    assert sample.counters["requests_finished"] == naive_sum(body, "tgi_request_success")
    assert sample.gauges["requests_running"] == naive_sum(body, "tgi_batch_current_size")
    assert sample.gauges["requests_waiting"] == naive_sum(body, "tgi_queue_size")
    assert sample.gauges["kv_cache_capacity_tokens"] == info["max_batch_total_tokens"]
    assert sample.gauges["kv_cache_usage_ratio"] == pytest.approx(
        naive_sum(body, "tgi_batch_current_max_tokens") / info["max_batch_total_tokens"])
    assert "time_to_first_token" not in sample.histograms  # TGI has none: absent, not guessed
    assert sample.histograms["e2e_request_latency"].count == naive_sum(body, "tgi_request_duration_count")
    assert len(sample.histograms["e2e_request_latency"].bounds) == len(naive(body, "tgi_request_duration_bucket"))


def test_tgi_3_info_has_no_batch_total_tokens_so_no_kv_capacity() -> None:
    identity = tgi.identity({"/info": json.loads(text("tgi-3.x.info.json"))})
    sample = read(text("tgi-3.x.txt"), 1.0, identity)
    assert identity.version and identity.model
    assert "kv_cache_capacity_tokens" not in sample.gauges
    assert "kv_cache_usage_ratio" not in sample.gauges


def test_vllm_identity_prefers_the_base_model_over_lora_adapters() -> None:
    models = {"object": "list", "data": [
        {"id": "sql-lora", "root": "/adapters/sql", "parent": "llama"},
        {"id": "llama", "root": "/models/llama", "parent": None}]}
    identity = vllm.identity({"/v1/models": models, "/version": {"version": "0.10.2"}})
    assert identity == EngineIdentity(model="llama", version="0.10.2", model_root="/models/llama")
    real = json.loads(text("vllm-0.32.0-real-a.models.json"))
    assert vllm.identity({"/v1/models": real}).model == "tinyllama"
    assert vllm.identity({}).model is None


def test_unknown_and_garbage_bodies() -> None:
    with pytest.raises(SourceError, match=r"no metrics of a known engine in the response \(vllm \(vllm:\*\)"):
        detect("node_load1 0.5\n# HELP vllm_like not_vllm\n")
    with pytest.raises(SourceError, match="invalid Prometheus exposition"):
        parse("<html>502 Bad Gateway</html>\n")


def test_nan_and_inf_samples_do_not_poison_sums() -> None:
    body = ('vllm:prompt_tokens_total{engine="0"} NaN\nvllm:prompt_tokens_total{engine="1"} 5\n'
            'vllm:num_requests_running{engine="0"} +Inf\n')
    sample = read(body, 1.0, None)
    assert sample.counters["prompt_tokens"] == 5
    assert "requests_running" not in sample.gauges
    assert all(math.isfinite(v) for v in sample.counters.values())


def test_real_vllm_kv_cache_full_capture() -> None:
    # recorded mid-burst with --num-gpu-blocks-override 12 (tests/fixtures/engines/REAL_VLLM.md)
    body = text("vllm-0.32.0-real-kvfull.txt")
    sample = read(body, 1.0, None)
    assert sample.gauges["kv_cache_usage_ratio"] == 1.0
    assert sample.gauges["requests_waiting"] == naive_sum(body, "vllm:num_requests_waiting") > 0
    assert sample.counters["preemptions"] == naive_sum(body, "vllm:num_preemptions_total") > 0
    blocks = naive(body, "vllm:cache_config_info")[0][0]
    assert sample.gauges["kv_cache_capacity_tokens"] == 12 * float(blocks["block_size"])


def test_windowed_stats_between_two_real_scrapes() -> None:
    from exporter.derive.engine import engine_stats

    a, b = text("vllm-0.32.0-real-a.txt"), text("vllm-0.32.0-real-b.txt")
    first, second = read(a, 1000.0, None), read(b, 1010.0, None)
    stats = engine_stats([first, second], (0.5, 0.99))
    for counter, rate in (("vllm:generation_tokens_total", "generation_tokens_per_second"),
                          ("vllm:prompt_tokens_total", "prompt_tokens_per_second"),
                          ("vllm:request_success_total", "requests_per_second")):
        assert stats.rates[rate] == pytest.approx((naive_sum(b, counter) - naive_sum(a, counter)) / 10.0)
    e2e = stats.latency["e2e_request_latency"]
    assert e2e.count == naive_sum(b, "vllm:e2e_request_latency_seconds_count")
    finished = naive_sum(b, "vllm:e2e_request_latency_seconds_count") - naive_sum(
        a, "vllm:e2e_request_latency_seconds_count")
    assert finished > 0 and set(e2e.quantiles) == {0.5, 0.99}
    # the median lies in the bucket where half of the requests finished between the two scrapes
    bounds = sorted({float(lbl["le"]) for lbl, _ in naive(b, "vllm:e2e_request_latency_seconds_bucket")})
    delta = [naive_sum(b, "vllm:e2e_request_latency_seconds_bucket", le=_le(x))
             - naive_sum(a, "vllm:e2e_request_latency_seconds_bucket", le=_le(x)) for x in bounds]
    index = next(i for i, c in enumerate(delta) if c >= 0.5 * finished)
    assert (bounds[index - 1] if index else 0.0) <= e2e.quantiles[0.5] <= bounds[index]


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


@pytest.mark.parametrize("fixture", [*VLLM_FIXTURES, "vllm-0.32.0-real-kvfull.txt", "tgi-3.x.txt"])
def test_reading_only_the_needed_families_changes_nothing(fixture: str) -> None:
    body = text(fixture)
    adapter = detect(body)
    identity = EngineIdentity(max_batch_total_tokens=100000.0)
    assert read(body, 1.0, identity) == adapter.adapt(parse(body), 1.0, identity)
    assert len(parse(body, adapter.families).samples) < len(parse(body).samples)


def test_vllm_own_flop_and_byte_estimates_only_when_it_counts_them() -> None:
    # recorded with --enable-mfu-metrics; without it vLLM 0.32 serves the same counters at 0
    mfu = read(text("vllm-0.32.0-real-mfu.txt"))
    body = text("vllm-0.32.0-real-mfu.txt")
    assert mfu.counters["engine_flops_per_gpu"] == naive_sum(body, "vllm:estimated_flops_per_gpu_total") > 0
    assert mfu.counters["engine_read_bytes_per_gpu"] == naive_sum(body, "vllm:estimated_read_bytes_per_gpu_total")
    plain = read(text("vllm-0.32.0-real-a.txt"))
    assert naive_sum(text("vllm-0.32.0-real-a.txt"), "vllm:estimated_flops_per_gpu_total") == 0
    assert "engine_flops_per_gpu" not in plain.counters
    assert plain.config["cache_dtype"] == "auto" and "gpu_memory_utilization" in plain.config
    assert plain.gauges["data_parallel_ranks"] == 1
    assert read(text("vllm-v1-dp2.txt")).gauges["data_parallel_ranks"] == 2
    assert read(text("vllm-v1-dp2.txt")).counters["prefill_seconds"] == naive_sum(
        text("vllm-v1-dp2.txt"), "vllm:request_prefill_time_seconds_sum")


def _sleeping(body: str, rank: str, state: str) -> str:
    """``body`` with data-parallel rank ``rank`` in sleep state ``state`` (1 on that series, 0 on the others)."""
    def one(match: re.Match[str]) -> str:
        return f'{match.group(1)}{1.0 if match.group(2) == state else 0.0}'
    pattern = re.compile(r'^(vllm:engine_sleep_state\{engine="' + rank + r'",[^}]*sleep_state="(\w+)"\} )\S+$',
                         re.MULTILINE)
    return pattern.sub(one, body)


def test_vllm_sleep_mode_is_a_sleep_level() -> None:
    """vLLM --enable-sleep-mode: one vllm:engine_sleep_state series per sleep_state, 1 on the current one."""
    body = text("vllm-0.32.0-real-a.txt")
    assert naive(body, "vllm:engine_sleep_state", sleep_state="awake")[0][1] == 1.0
    assert read(body).gauges["sleep_level"] == 0.0
    assert read(_sleeping(body, "0", "weights_offloaded")).gauges["sleep_level"] == 1.0
    assert read(_sleeping(body, "0", "discard_all")).gauges["sleep_level"] == 2.0
    # an engine without sleep mode's metric says nothing about sleep
    without = "\n".join(line for line in body.splitlines() if "engine_sleep_state" not in line) + "\n"
    assert "sleep_level" not in read(without).gauges
    # a state this exporter does not know (the only one at 1) is not read as a level
    dozing = body.replace('sleep_state="awake"} 1.0', 'sleep_state="dozing"} 1.0')
    assert naive(dozing, "vllm:engine_sleep_state", sleep_state="dozing")[0][1] == 1.0
    assert "sleep_level" not in read(dozing).gauges


def test_vllm_sleep_level_is_the_deepest_any_data_parallel_rank_reports() -> None:
    base = text("vllm-0.32.0-real-a.txt")
    rank1 = "\n".join(line.replace('engine="0"', 'engine="1"') for line in base.splitlines()
                      if line.startswith("vllm:engine_sleep_state{"))
    body = base.replace('vllm:engine_sleep_state{engine="0",model_name="tinyllama",sleep_state="discard_all"} 0.0',
                        'vllm:engine_sleep_state{engine="0",model_name="tinyllama",sleep_state="discard_all"} 0.0\n'
                        + rank1)
    assert len(naive(body, "vllm:engine_sleep_state")) == 6
    assert read(body).gauges["sleep_level"] == 0.0
    assert read(_sleeping(body, "1", "weights_offloaded")).gauges["sleep_level"] == 1.0
