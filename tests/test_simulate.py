"""The engine simulator (exporter.simulate): its expositions match the real engines' shape, infermeter
reads them, and each scenario moves the metrics the way its docstring says."""

from __future__ import annotations

import itertools
import json
import math
import socket
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import cli
from exporter.config import EngineTarget
from exporter.simulate import SCENARIOS, VLLM_VERSION, VLLM_VERSIONS, SimulatorServer, exposition_for, main, simulation
from exporter.simulate.exposition import INFO_NAME, TgiExposition, VllmExposition, build_1_2_5_buckets
from exporter.sources.engine import EngineSource
from exporter.sources.engines import detect
from exporter.sources.exposition import parse

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
VLLM_REAL = FIXTURES / "vllm-0.32.0-real-a.txt"
# each vLLM version the simulator serves -> the fixture of that version it must look like
VLLM_SHAPES = {"0.32.0": "vllm-0.32.0-real-a", "0.33.0": "vllm-0.33.0-a", "0.34.0": "vllm-0.34.0-a"}
# the 0.33/0.34 fixtures were written with speculative decoding on; the simulated engine does not speculate
SPECULATIVE = {f"vllm:spec_decode_{name}{suffix}" for suffix in ("", "_created")
               for name in ("num_drafts", "num_draft_tokens", "num_accepted_tokens", "num_accepted_tokens_per_pos")}
TGI_FIXTURE = FIXTURES / "tgi-3.x.txt"
KINDS = ("vllm", "tgi")
CANONICAL = {
    "vllm": {"counters": {"prompt_tokens", "generation_tokens", "requests_finished", "preemptions",
                          "prefix_cache_queries", "prefix_cache_hits", "prefill_seconds", "decode_seconds"},
             "gauges": {"requests_running", "requests_waiting", "kv_cache_usage_ratio", "kv_cache_capacity_tokens"},
             "histograms": {"time_to_first_token", "time_per_output_token", "inter_token_latency",
                            "e2e_request_latency", "queue_time"}},
    "tgi": {"counters": {"prompt_tokens", "generation_tokens", "requests_finished"},
            "gauges": {"requests_running", "requests_waiting", "kv_cache_usage_ratio", "kv_cache_capacity_tokens"},
            "histograms": {"time_per_output_token", "e2e_request_latency", "queue_time"}},
}
# the token histograms' bounds are vLLM's 1-2-5 series up to max_model_len (512 in the capture)
VLLM_TOKEN_HISTOGRAMS = {"vllm:request_prompt_tokens", "vllm:request_generation_tokens",
                         "vllm:request_max_num_generation_tokens", "vllm:request_params_max_tokens",
                         "vllm:request_prefill_kv_computed_tokens"}

_driven: dict[tuple[str, str, str], tuple[Any, Any, str]] = {}


def driven(kind: str, scenario: str, seconds: float = 75.0, vllm_version: str = VLLM_VERSION) -> tuple[Any, Any, str]:
    """A simulation run for ``seconds`` with seed 7, its exposition and the rendered text (cached)."""
    key = (kind, scenario, vllm_version)
    if key not in _driven:
        sim = simulation(kind, scenario, seed=7)
        exposition = exposition_for(sim, vllm_version)
        sim.advance(seconds)
        _driven[key] = (sim, exposition, exposition.render().decode())
    return _driven[key]


def shape(text: str) -> dict[str, dict[str, Any]]:
    """Family name -> type, HELP, label names (without le/quantile) and bucket bounds (per series)."""
    families: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        labels: set[str] = set()
        bounds: dict[tuple[tuple[str, str], ...], list[str]] = defaultdict(list)
        for sample in family.samples:
            labels |= set(sample.labels) - {"le", "quantile"}
            if sample.name.endswith("_bucket"):
                key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                bounds[key].append(sample.labels["le"])
        layouts = {tuple(b) for b in bounds.values()}
        assert len(layouts) <= 1, family.name
        families[family.name] = {"type": family.type, "help": family.documentation, "labels": labels,
                                 "bounds": next(iter(layouts)) if layouts else ()}
    return families


def assert_cumulative(text: str) -> None:
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = defaultdict(list)
        counts: dict[tuple[tuple[str, str], ...], float] = {}
        for sample in family.samples:
            key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            if sample.name.endswith("_bucket"):
                series[key].append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                counts[key] = sample.value
        for key, buckets in series.items():
            bounds = [b for b, _ in buckets]
            values = [v for _, v in buckets]
            assert bounds == sorted(bounds) and bounds[-1] == math.inf, family.name
            assert all(a <= b for a, b in itertools.pairwise(values)), (family.name, key)
            assert values[-1] == counts[key], (family.name, key)


def value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def line_value(text: str, name: str) -> float:
    """The sum of ``name``'s series, read from the lines (no parser: fast enough to call every second)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{")))


# ------------------------------------------------------------------------------------------ shape


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_scenario_is_read_by_infermeter(kind: str, scenario: str) -> None:
    sim, exposition, text = driven(kind, scenario)
    assert_cumulative(text)
    assert value(text, INFO_NAME, scenario=scenario, engine_kind=kind) == 1.0
    adapter = detect(text)
    assert adapter.kind == kind
    identity = adapter.identity(exposition.identity())
    assert identity.model == "meta-llama/Llama-3.1-8B"
    sample = adapter.adapt(parse(text, adapter.families), 0.0, identity)
    wanted = CANONICAL[kind]
    assert wanted["counters"] <= set(sample.counters)
    assert wanted["gauges"] <= set(sample.gauges)
    assert wanted["histograms"] <= set(sample.histograms)
    assert sample.gauges["kv_cache_capacity_tokens"] == sim.kv_capacity_tokens
    assert sample.counters["requests_finished"] > 0
    assert 0.0 <= sample.gauges["kv_cache_usage_ratio"] <= 1.0


@pytest.mark.parametrize("version", VLLM_VERSIONS)
def test_vllm_shape_equals_each_versions_fixture(version: str) -> None:
    """0.32.0: the real capture; 0.33.0 and 0.34.0: what each release's own stat logger wrote."""
    sim, exposition, text = driven("vllm", "memory-bound", vllm_version=version)
    real = shape((FIXTURES / f"{VLLM_SHAPES[version]}.txt").read_text())
    served = shape(text)
    assert exposition.content_type in ("text/plain; version=1.0.0; charset=utf-8",
                                       "text/plain; version=0.0.4; charset=utf-8")
    assert exposition.identity()["/version"]["version"].startswith(version + "+")
    ours = {name for name in served if name.startswith("vllm:")}
    theirs = {name for name in real if name.startswith("vllm:")} - SPECULATIVE
    assert ours == theirs  # every vLLM family of the fixture, and no other
    models = json.loads((FIXTURES / f"{VLLM_SHAPES[version]}.models.json").read_text())
    max_model_len = models["data"][0]["max_model_len"]
    for name in sorted(ours):
        assert served[name]["type"] == real[name]["type"], name
        assert served[name]["help"] == real[name]["help"], name
        assert served[name]["labels"] == real[name]["labels"], name
        if name in VLLM_TOKEN_HISTOGRAMS:
            assert [float(b) for b in real[name]["bounds"][:-1]] == list(build_1_2_5_buckets(max_model_len))
            assert [float(b) for b in served[name]["bounds"][:-1]] == list(
                build_1_2_5_buckets(sim.engine.max_model_len)), name
        else:
            assert served[name]["bounds"] == real[name]["bounds"], name
    for line in text.splitlines():  # engine="0" and model_name on every vLLM series but the two exceptions
        if line.startswith("vllm:") and not line.startswith(("vllm:cache_config_info", "vllm:admission_rejections")):
            assert 'engine="0"' in line and 'model_name="meta-llama/Llama-3.1-8B"' in line, line
    assert 'vllm:num_preemptions_total{engine="0"' in text
    assert "vllm:num_preemptions_created{" in text


def test_the_simulator_serves_the_newest_vllm_by_default() -> None:
    assert VLLM_VERSION == VLLM_VERSIONS[-1] == "0.34.0"
    _, exposition, text = driven("vllm", "balanced")
    assert exposition.identity()["/version"]["version"] == "0.34.0+infermeter-simulator"
    assert 'enable_extensible_kv_cache="True"' in text
    _, older, old_text = driven("vllm", "balanced", vllm_version="0.32.0")
    assert older.identity()["/version"]["version"] == "0.32.0+infermeter-simulator"
    assert "enable_extensible_kv_cache" not in old_text and "simple_cpu_offload_num_blocks" not in old_text
    with pytest.raises(ValueError, match=r"unknown vLLM version '0\.31\.0'"):
        VllmExposition(simulation("vllm", "balanced"), "0.31.0")


def test_tgi_shape_equals_the_3x_fixture() -> None:
    _, exposition, text = driven("tgi", "memory-bound")
    fixture_text = TGI_FIXTURE.read_text()
    fixture = shape(fixture_text)
    served = shape(text)
    ours = {name for name in served if name.startswith("tgi_")}
    # tgi_request_failure only appears once a request failed validation or was refused
    assert ours == set(fixture) - {"tgi_request_failure"}
    for name in sorted(ours):
        for key in ("type", "help", "labels", "bounds"):
            assert served[name][key] == fixture[name][key], (name, key)
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert not {n for n in names if n.endswith(("_total", "_created"))}
    assert exposition.content_type == "text/plain; charset=utf-8"
    # metrics-exporter-prometheus: a blank line after each family; bucket and bound text as Rust prints it
    assert "\n\n# HELP tgi_queue_size Current queue size\n" in text
    assert 'tgi_request_duration_bucket{le="0.00015000000000000001"}' in text
    assert 'tgi_request_generated_tokens_bucket{le="8192"}' in text


def test_identity_endpoints_say_simulator() -> None:
    _, vllm, _ = driven("vllm", "balanced")
    assert isinstance(vllm, VllmExposition)
    models = vllm.identity()["/v1/models"]["data"][0]
    assert models["id"] == "meta-llama/Llama-3.1-8B"
    assert models["owned_by"] == "infermeter-simulator"
    assert models["root"] == "/simulator/meta-llama/Llama-3.1-8B"
    assert "infermeter-simulator" in vllm.identity()["/version"]["version"]
    _, tgi, _ = driven("tgi", "balanced")
    assert isinstance(tgi, TgiExposition)
    info = tgi.identity()["/info"]
    assert info["version"] == "infermeter-simulator"
    assert info["model_id"] == "meta-llama/Llama-3.1-8B"
    assert info["max_batch_total_tokens"] == tgi.sim.engine.kv_capacity_tokens


# ------------------------------------------------------------------------------------------ scenarios


def test_memory_bound_fills_the_cache_preempts_and_queues() -> None:
    sim = simulation("vllm", "memory-bound", seed=11)
    exposition = exposition_for(sim)
    sim.advance(180)
    assert sim.kv_usage >= 0.9
    assert sim.totals.preemptions > 0
    assert sim.waiting_count > 0
    text = exposition.render().decode()
    assert value(text, "vllm:num_preemptions_total") > 0
    assert value(text, "vllm:kv_cache_usage_perc") >= 0.9
    assert value(text, "vllm:num_requests_waiting") > 0
    # TGI reserves prompt + max_new_tokens and never preempts: the reservation is full and requests queue
    tgi = simulation("tgi", "memory-bound", seed=11)
    tgi.advance(120)
    assert tgi.kv_usage >= 0.9 and tgi.waiting_count > 0 and tgi.totals.preemptions == 0


def test_overprovisioned_is_nearly_idle() -> None:
    sim = simulation("vllm", "overprovisioned", seed=5)
    assert sim.gpus == 4
    peak_kv, peak_running = 0.0, 0
    for _ in range(120):
        sim.advance(1)
        peak_kv, peak_running = max(peak_kv, sim.kv_usage), max(peak_running, sim.running_count)
    assert peak_kv < 0.01
    assert peak_running <= 3
    assert sim.totals.preemptions == 0 and sim.waiting_count == 0
    assert 3 <= sim.totals.finished <= 30  # a handful of requests per minute


def test_overprovisioned_vllm_runs_one_data_parallel_rank_per_gpu() -> None:
    # so that infermeter can size it in whole 1-GPU replicas (gpus_needed 1, savings > 0)
    sim, _, text = driven("vllm", "overprovisioned")
    assert len(sim.ranks) == 4 and sim.engine.gpus == 1 and sim.gpus == 4
    adapter = detect(text)
    sample = adapter.adapt(parse(text, adapter.families), 0.0, None)
    assert sample.gauges["data_parallel_ranks"] == 4
    assert {f'engine="{i}"' for i in range(4)} <= {part for line in text.splitlines()
                                                   if line.startswith("vllm:cache_config_info")
                                                   for part in line.split(",")}
    _, tgi, _ = driven("tgi", "overprovisioned")
    assert len(tgi.sim.ranks) == 1 and tgi.sim.engine.gpus == 4  # TGI: one engine sharded over 4 GPUs


def test_balanced_serves_without_a_queue() -> None:
    sim, _, text = driven("vllm", "balanced")
    assert sim.totals.preemptions == 0 and sim.totals.aborted == 0
    assert sim.waiting_count <= 2
    assert 0.05 < sim.kv_usage < 0.5
    count = value(text, "vllm:time_to_first_token_seconds_count")
    assert value(text, "vllm:time_to_first_token_seconds_bucket", le="0.5") >= 0.95 * count


def test_slo_breach_queues_and_ttft_p95_is_over_a_second() -> None:
    sim, _, text = driven("vllm", "slo-breach")
    assert sim.waiting_count > 10
    assert sim.kv_usage < 0.9
    count = value(text, "vllm:time_to_first_token_seconds_count")
    assert value(text, "vllm:time_to_first_token_seconds_bucket", le="1.0") < 0.95 * count


@pytest.mark.parametrize("kind", KINDS)
def test_engine_restart_resets_counters(kind: str) -> None:
    sim = simulation(kind, "engine-restart", seed=3)
    exposition = exposition_for(sim)
    name = "vllm:prompt_tokens_total" if kind == "vllm" else "tgi_request_input_length_sum"
    running = "vllm:num_requests_running" if kind == "vllm" else "tgi_batch_current_size"
    series = []
    for second in range(1, 71):
        sim.advance(1)
        text = exposition.render().decode()
        series.append((second, line_value(text, name), line_value(text, running)))
    drops = [second for (second, v, _), (_, previous, _) in zip(series[1:], series, strict=False) if v < previous]
    assert drops == [60]
    assert series[58][1] > 0
    _, after, running_after = series[59]
    assert after == 0 and running_after == 0
    assert sim.restarts == 1
    assert series[-1][1] > 0  # serving again after the restart


def test_deterministic_given_the_seed() -> None:
    a, b = simulation("tgi", "slo-breach", seed=42), simulation("tgi", "slo-breach", seed=42)
    ea, eb = exposition_for(a), exposition_for(b)
    a.advance(20)
    b.advance(20)
    assert ea.render() == eb.render()
    c = simulation("tgi", "slo-breach", seed=43)
    c.advance(20)
    assert c.totals != a.totals


# ------------------------------------------------------------------------------------------ HTTP and CLI


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


@pytest.mark.parametrize("kind", KINDS)
def test_http_server_serves_and_stops(kind: str) -> None:
    sim = simulation(kind, "balanced", seed=1)
    server = SimulatorServer(sim, exposition_for(sim), port=0, speed=20.0)
    with server:
        status, ctype, body = _get(server.url + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert INFO_NAME in body.decode()
        assert _get(server.url + "/health")[0] == 200
        assert _get(server.url + "/nope")[0] == 404
        if kind == "vllm":
            status, _, body = _get(server.url + "/v1/models")
            assert status == 200 and json.loads(body)["data"][0]["owned_by"] == "infermeter-simulator"
            assert "infermeter-simulator" in json.loads(_get(server.url + "/version")[2])["version"]
        else:
            assert json.loads(_get(server.url + "/info")[2])["version"] == "infermeter-simulator"
        # infermeter's own engine source reads it
        source = EngineSource(EngineTarget("sim", server.url), timeout=5.0, max_body_bytes=16 * 1024 * 1024)
        reading = source.read()
        source.close()
        assert reading.sample.kind == kind
        assert reading.identity.model == "meta-llama/Llama-3.1-8B"
        assert reading.sample.gauges["kv_cache_capacity_tokens"] == sim.kv_capacity_tokens
    assert sim.now > 0  # the clock ran
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass


def test_cli_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--engine-kind", "vllm", "--scenario", "balanced", "--model", "no/such-model",
                 "--listen", "127.0.0.1:0"]) == 2
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["simulate", "--engine-kind", "vllm", "--scenario", "no-such-scenario"])
    assert exit_info.value.code == 2
