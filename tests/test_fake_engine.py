"""The fake engine itself is right: fixtures parse, render round-trips, mutations stay consistent."""

from __future__ import annotations

import functools
import itertools
import json
import math
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.engine import FakeEngine, FakeEngineServer  # noqa: E402

ENGINES = ROOT / "tests" / "fixtures" / "engines"
V0, V1, DP2, TGI = (ENGINES / n for n in ("vllm-v0-0.6.txt", "vllm-v1-0.10.txt", "vllm-v1-dp2.txt", "tgi-3.x.txt"))
FIXTURES = [V0, V1, DP2, TGI]


@functools.lru_cache(maxsize=64)
def parse(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


@functools.lru_cache(maxsize=64)
def samples(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.append((s.name, tuple(sorted(s.labels.items())), s.value))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def histograms(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, object]]:
    """(family, series labels) -> {'buckets': [(le, v)...], 'sum': x, 'count': n}"""
    out: dict = defaultdict(lambda: {"buckets": []})
    for fam in text_string_to_metric_families(text):
        if fam.type != "histogram":
            continue
        for s in fam.samples:
            key = (fam.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")))
            if s.name.endswith("_bucket"):
                out[key]["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                out[key]["sum"] = s.value
            elif s.name.endswith("_count"):
                out[key]["count"] = s.value
    return dict(out)


def assert_histograms_consistent(text: str) -> None:
    hs = histograms(text)
    assert hs
    for key, h in hs.items():
        vals = [v for _, v in h["buckets"]]
        les = [le for le, _ in h["buckets"]]
        assert les == sorted(les) and les[-1] == math.inf, key
        assert all(a <= b for a, b in itertools.pairwise(vals)), key
        assert vals[-1] == h["count"], key
        assert h["sum"] >= 0


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_fixture_parses_and_is_consistent(fixture: Path) -> None:
    text = fixture.read_text()
    fams = list(text_string_to_metric_families(text))
    assert len(fams) > 10
    assert_histograms_consistent(text)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_untouched_render_round_trips(fixture: Path) -> None:
    text = fixture.read_text()
    eng = FakeEngine(fixture)
    out = eng.render()
    assert out == text  # byte for byte
    assert samples(out) == samples(text)


def test_vllm_v0_shape() -> None:
    text = V0.read_text()
    fams = parse(text)
    assert "vllm:gpu_prefix_cache_hit_rate" in fams and "vllm:time_in_queue_requests" in fams
    assert "vllm:request_queue_time_seconds" in fams and "vllm:time_per_output_token_seconds" in fams
    assert fams["vllm:cache_config_info"].type == "gauge"
    assert "_created" not in text  # disable_created_metrics() + multiprocess mode
    for fam in fams.values():
        for s in fam.samples:
            if s.name.startswith("vllm:") and s.name != "vllm:cache_config_info" and "lora" not in s.name:
                assert set(s.labels) - {"le", "finished_reason"} == {"model_name"}, s


def test_vllm_v1_rename_window_pairs_are_equal() -> None:
    text = V1.read_text()
    s = samples(text)
    by = {(n, lab): v for n, lab, v in s}
    pairs = [("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"),
             ("vllm:gpu_prefix_cache_queries_total", "vllm:prefix_cache_queries_total"),
             ("vllm:gpu_prefix_cache_hits_total", "vllm:prefix_cache_hits_total")]
    pairs += [(f"vllm:time_per_output_token_seconds{x}", f"vllm:inter_token_latency_seconds{x}")
              for x in ("_bucket", "_sum", "_count")]
    for old, new in pairs:
        olds = {lab: v for (n, lab), v in by.items() if n == old}
        news = {lab: v for (n, lab), v in by.items() if n == new}
        assert olds and olds == news, old
    assert "vllm:request_time_per_output_token_seconds" not in parse(text)
    cc = [x for x in s if x[0] == "vllm:cache_config_info"]
    assert len(cc) == 1 and "model_name" not in dict(cc[0][1]) and dict(cc[0][1])["engine"] == "0"


def test_vllm_dp2_two_engines_everywhere() -> None:
    text = DP2.read_text()
    fams = parse(text)
    for old in ("vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_queries", "vllm:time_per_output_token_seconds"):
        assert old not in fams
    for name, fam in fams.items():
        if not name.startswith("vllm:"):
            continue
        engines = {s.labels.get("engine") for s in fam.samples}
        assert engines == {"0", "1"}, name
    val = {(s.name, s.labels["engine"]): s.value for s in fams["vllm:prompt_tokens"].samples}
    assert val[("vllm:prompt_tokens_total", "0")] != val[("vllm:prompt_tokens_total", "1")]
    assert len(fams["vllm:cache_config_info"].samples) == 2


def test_tgi_shape() -> None:
    text = TGI.read_text()
    fams = parse(text)
    assert fams["tgi_request_count"].type == "counter"
    assert "tgi_request_count_total" not in text
    assert fams["tgi_request_skipped_tokens"].type == "summary"  # no bucket matcher in server.rs
    dur = [s for s in fams["tgi_request_duration"].samples if s.name.endswith("_bucket")]
    assert len(dur) == 36  # 35 geometric bounds + +Inf
    assert float(dur[0].labels["le"]) == pytest.approx(0.00015)
    assert len([s for s in fams["tgi_request_input_length"].samples if s.name.endswith("_bucket")]) == 101
    info = json.loads((ENGINES / "tgi-3.x.info.json").read_text())
    assert info["max_input_tokens"] == 8000 and info["max_total_tokens"] == 8192
    old = json.loads((ENGINES / "tgi-1.4.info.json").read_text())
    assert "max_batch_total_tokens" in old and "max_input_length" in old


@pytest.mark.parametrize("fixture", [V0, V1, DP2, TGI], ids=lambda p: p.name)
def test_observe_keeps_buckets_cumulative(fixture: Path) -> None:
    eng = FakeEngine(fixture)
    fam = {"tgi": "tgi_request_duration"}.get(fixture.name[:3], "vllm:e2e_request_latency_seconds")
    before = histograms(eng.render())
    eng.observe(fam, 3.3, times=5)
    eng.observe(fam, 1e9)  # lands only in +Inf
    after = histograms(eng.render())
    assert_histograms_consistent(eng.render())
    key = next(k for k in after if k[0] == fam)
    assert after[key]["count"] == before[key]["count"] + 6
    assert after[key]["sum"] == pytest.approx(before[key]["sum"] + 16.5 + 1e9)
    for (le, b), (_, a) in zip(before[key]["buckets"], after[key]["buckets"], strict=True):
        assert a - b == (5 if le >= 3.3 and le != math.inf else 6 if le == math.inf else 0)


def test_observe_selects_series_by_labels() -> None:
    eng = FakeEngine(DP2)
    eng.observe("vllm:time_to_first_token_seconds", 0.2, {"engine": "1"}, times=3)
    h = histograms(eng.render())
    base = histograms(DP2.read_text())
    k1 = next(k for k in h if k[0] == "vllm:time_to_first_token_seconds" and ("engine", "1") in k[1])
    k0 = next(k for k in h if k[0] == "vllm:time_to_first_token_seconds" and ("engine", "0") in k[1])
    assert h[k1]["count"] == base[k1]["count"] + 3 and h[k0] == base[k0]


def test_twins_are_fed_together_in_rename_window() -> None:
    eng = FakeEngine(V1)
    eng.observe("vllm:inter_token_latency_seconds", 0.02, times=10)
    eng.inc("vllm:prefix_cache_queries_total", 160)
    eng.set("vllm:kv_cache_usage_perc", 0.77)
    by = {(n, lab): v for n, lab, v in samples(eng.render())}
    assert by[("vllm:kv_cache_usage_perc", (("engine", "0"), ("model_name", "Qwen/Qwen2.5-7B-Instruct")))] == 0.77
    assert by[("vllm:gpu_cache_usage_perc", (("engine", "0"), ("model_name", "Qwen/Qwen2.5-7B-Instruct")))] == 0.77
    for suffix in ("_sum", "_count"):
        a = [v for (n, _), v in by.items() if n == "vllm:inter_token_latency_seconds" + suffix]
        b = [v for (n, _), v in by.items() if n == "vllm:time_per_output_token_seconds" + suffix]
        assert a == b
    assert eng.value("vllm:prefix_cache_queries_total") == eng.value("vllm:gpu_prefix_cache_queries_total")


def test_inc_set_and_lazily_created_series() -> None:
    eng = FakeEngine(V0)
    before = eng.value("vllm:prompt_tokens_total")
    eng.inc("vllm:prompt_tokens_total", 100)
    assert eng.value("vllm:prompt_tokens_total") == before + 100
    eng.inc("vllm:request_success_total", 2, {"finished_reason": "abort"})
    assert eng.value("vllm:request_success_total", {"finished_reason": "abort"}) == 2
    with pytest.raises(ValueError):
        eng.inc("vllm:prompt_tokens_total", -1)
    parse(eng.render())  # still valid


def test_tgi_values_render_like_rust() -> None:
    eng = FakeEngine(TGI)
    eng.inc("tgi_request_count", 3)
    eng.set("tgi_queue_size", 4)
    eng.observe("tgi_request_queue_duration", 0.25)
    text = eng.render()
    assert "\ntgi_queue_size 4\n" in text
    assert any(line.startswith("tgi_request_count ") and "." not in line for line in text.splitlines())
    assert parse(text)["tgi_request_queue_duration"].samples


@pytest.mark.parametrize("fixture", [V0, V1, TGI], ids=lambda p: p.name)
def test_reset_zeroes_counters_and_bumps_created(fixture: Path) -> None:
    eng = FakeEngine(fixture)
    eng.reset()
    text = eng.render()
    fams = parse(text)
    for fam in fams.values():
        for s in fam.samples:
            if s.name.endswith("_created"):
                assert s.value > 1.7e9
            elif fam.type in ("counter", "histogram", "summary"):
                assert s.value == 0, s
    cc = fams.get("vllm:cache_config_info")
    if cc is not None:
        assert all(s.value == 1 for s in cc.samples)
    if "tgi_batch_max_total_tokens" in fams:
        assert fams["tgi_batch_max_total_tokens"].samples[0].value > 0


def test_zero_keeps_created() -> None:
    eng = FakeEngine(V1)
    created = [x for x in samples(V1.read_text()) if x[0].endswith("_created")]
    eng.zero()
    assert [x for x in samples(eng.render()) if x[0].endswith("_created")] == created
    assert eng.value("vllm:generation_tokens_total") == 0


def test_alias_renders_both_names_then_drop() -> None:
    eng = FakeEngine(DP2)
    eng.alias("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    eng.alias("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits")
    eng.set("vllm:kv_cache_usage_perc", 0.5, {"engine": "1"})
    by = {(n, lab): v for n, lab, v in samples(eng.render())}
    for e in ("0", "1"):
        lab = (("engine", e), ("model_name", "Qwen/Qwen3-8B"))
        assert by[("vllm:kv_cache_usage_perc", lab)] == by[("vllm:gpu_cache_usage_perc", lab)]
        assert by[("vllm:prefix_cache_hits_total", lab)] == by[("vllm:gpu_prefix_cache_hits_total", lab)]
    assert "# TYPE vllm:gpu_prefix_cache_hits_total counter" in eng.render()
    eng.drop_family("vllm:kv_cache_usage_perc")  # end of window: only the new name stays
    fams = parse(eng.render())
    assert "vllm:kv_cache_usage_perc" not in fams
    assert {s.labels["engine"]: s.value for s in fams["vllm:gpu_cache_usage_perc"].samples}["1"] == 0.5
    eng.drop_family("vllm:gpu_prefix_cache_hits")
    assert "vllm:gpu_prefix_cache_hits" not in parse(eng.render())


def test_load_swaps_engine_kind() -> None:
    eng = FakeEngine(V0)
    assert "/version" in eng.identity
    eng.load(TGI)
    assert set(eng.identity) == {"/info"} and eng.content_type.startswith("text/plain; charset")
    assert "tgi_request_count" in parse(eng.render())


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_server_over_http() -> None:
    eng = FakeEngine(V1)
    with FakeEngineServer(eng) as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        status, ctype, body = _get(srv.url + "/metrics")
        assert status == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8"
        assert body.decode() == V1.read_text()
        status, _, body = _get(srv.url + "/v1/models")
        assert status == 200 and json.loads(body)["data"][0]["max_model_len"] == 32768
        assert json.loads(_get(srv.url + "/version")[2]) == {"version": "0.10.2"}
        assert _get(srv.url + "/health")[0] == 200
        assert _get(srv.url + "/nope")[0] == 404
        eng.set_response(503, b"overloaded")
        assert _get(srv.url + "/metrics")[:3:2] == (503, b"overloaded")
        eng.clear_response()
        eng.inc("vllm:generation_tokens_total", 5)
        assert "vllm:generation_tokens_total" in _get(srv.url + "/metrics")[2].decode()
        eng.load(TGI)
        status, ctype, body = _get(srv.url + "/metrics")
        assert ctype == "text/plain; charset=utf-8" and body.decode() == TGI.read_text()
        assert json.loads(_get(srv.url + "/info")[2])["version"] == "3.3.6"


def test_traffic_tick_keeps_exposition_valid() -> None:
    import random

    for fx in (V0, V1, DP2, TGI):
        eng = FakeEngine(fx)
        rnd = random.Random(0)
        for _ in range(3):
            eng.tick(rnd)
        text = eng.render()
        assert_histograms_consistent(text)
        assert samples(text) != samples(fx.read_text())
