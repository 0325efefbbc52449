"""A broken or hostile engine cannot make infermeter hold unbounded memory or write unbounded logs (issue 12).

Engines are served over real HTTP by tests/fakes/engine.py and read by the real Collection; the
exposition is rendered by the real collector. Memory is measured with tracemalloc over many cycles.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import logs, resolve
from exporter.collection import Collection, Snapshot, engine_collector
from exporter.collector import SnapshotCollector
from exporter.config import Config, EngineTarget
from exporter.derive.window import SampleWindow
from exporter.facts.models import MAX_CONFIG_BYTES, load
from exporter.resolve import (
    MODELS_PER_ENGINE,
    WARNING_PERIOD_SECONDS,
    WARNINGS_PER_TOPIC,
    WARNINGS_REMEMBERED,
    FactsResolver,
)
from exporter.samples import EngineSample, Histogram
from exporter.sources import SourceError
from exporter.sources.engine import EngineSource
from exporter.sources.engines import check_sample
from exporter.sources.engines.vllm import ADAPTER
from exporter.sources.exposition import MAX_BUCKETS, MAX_LABEL_CHARS, parse
from exporter.sources.nvml import NvmlSource
from exporter.untrusted import LABEL_CHARS
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node, load_fake_pynvml

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
VLLM = FIXTURES / "vllm-v1-0.10.txt"
MODEL = "Qwen/Qwen2.5-7B-Instruct"  # the model_name label of that fixture
LATENCIES = ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
             "vllm:inter_token_latency_seconds", "vllm:request_time_per_output_token_seconds")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def histogram_body(buckets: int, hists: tuple[str, ...] = LATENCIES) -> bytes:
    """A vLLM exposition whose latency histograms have ``buckets`` finite buckets each."""
    lines = ["# TYPE vllm:num_requests_running gauge", f'vllm:num_requests_running{{model_name="{MODEL}"}} 1']
    for name in hists:
        lines.append(f"# TYPE {name} histogram")
        lines += [f'{name}_bucket{{le="{(i + 1) / 1000:.3f}",model_name="{MODEL}"}} {i}' for i in range(buckets)]
        lines += [f'{name}_bucket{{le="+Inf",model_name="{MODEL}"}} {buckets}',
                  f'{name}_count{{model_name="{MODEL}"}} {buckets}', f'{name}_sum{{model_name="{MODEL}"}} 1.5']
    return ("\n".join(lines) + "\n").encode()


def collection_for(urls: dict[str, str], clock: Clock, nvml: ModuleType | None = None,
                   window: float = 300.0) -> Collection:
    # a generous --timeout: tracemalloc slows every read, and a read still in flight would hold its memory
    config = Config(engines=tuple(EngineTarget(name, url) for name, url in urls.items()), interval=5.0,
                    window=window, timeout=4.0, gpu_hourly_cost=2.0 if nvml is not None else None)
    sources = [EngineSource(target, 4.0, 16 * 1024 * 1024, clock=clock) for target in config.engines]
    return Collection(config, NvmlSource(nvml) if nvml is not None else None, sources, clock=clock)


def exposition(collection: Collection) -> str:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: collection.snapshot))
    return generate_latest(registry).decode()


def engine_labels(text: str, engine: str) -> list[dict[str, str]]:
    return [s.labels for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "infermeter_engine_up" and s.labels.get("engine") == engine]


@contextmanager
def served(*engines: FakeEngine) -> Iterator[list[str]]:
    servers = [FakeEngineServer(engine).start() for engine in engines]
    try:
        yield [server.url for server in servers]
    finally:
        for server in servers:
            server.stop()


def traced_growth(step: Callable[[], object], warm: int, cycles: int) -> int:
    """Bytes still allocated after ``cycles`` calls of ``step`` beyond what was after ``warm`` calls."""
    tracemalloc.start()
    try:
        for _ in range(warm):
            step()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(cycles):
            step()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


# --- a histogram with thousands of buckets beside a healthy engine ---------------------------------------


@pytest.mark.parametrize(("buckets", "reason"), [
    (10_000, r"metric family vllm:time_to_first_token_seconds has more than 10000 series"),
    (1_000, rf"histogram vllm:\S+ has more than {MAX_BUCKETS} buckets in one series"),
])
def test_a_huge_histogram_fails_its_read_holds_nothing_and_spares_the_healthy_engine(
        buckets: int, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    healthy, hostile = FakeEngine(VLLM), FakeEngine(VLLM)
    healthy.zero()
    hostile.set_response(200, histogram_body(buckets), "text/plain; version=0.0.4")
    clock = Clock()
    with served(healthy, hostile) as (good_url, bad_url):
        collection = collection_for({"good": good_url, "bad": bad_url}, clock)

        def cycle() -> Snapshot:
            clock.now += 5
            healthy.inc("vllm:generation_tokens_total", 50, {"model_name": MODEL})
            return collection.run_once()

        growth = traced_growth(cycle, warm=2, cycles=8)
        snapshot = collection.snapshot
    good, bad = snapshot.engines
    assert good.up and good.stats is not None and good.stats.rates["generation_tokens_per_second"] == pytest.approx(10)
    assert not bad.up and bad.stats is None
    status = snapshot.collectors[engine_collector("bad")]
    assert not status.success and status.errors_total == 10
    (failure,) = [r.getMessage() for r in caplog.records if r.name == "exporter.collection"]  # then debug
    assert re.search(rf"^engine bad: {reason}( \(infermeter reads at most \d+\))? \(infermeter_engine_up 0", failure)
    # a window of 5 x 1000-bucket histograms as parsed costs > 300 kB a cycle; 8 cycles would keep > 2.4 MB
    assert growth < 1_000_000, growth


def test_the_failing_read_says_why_in_one_line() -> None:
    engine = FakeEngine(VLLM)
    engine.set_response(200, histogram_body(1_000), "text/plain")
    with served(engine) as (url,), pytest.raises(SourceError) as caught:
        EngineSource(EngineTarget("e", url), 2.0, 1 << 24).read()
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and len(message) < 200
    assert f"more than {MAX_BUCKETS} buckets" in message


def test_a_full_window_at_the_caps_stays_within_its_memory_arithmetic() -> None:
    """1000 samples (config.MAX_WINDOW_SAMPLES), each with 5 histograms of MAX_BUCKETS buckets whose counts
    all change, and a changing model label: the window's memory arithmetic (exporter.derive.window) says
    about 13 MB; stored as parsed (tuples of float objects, fresh bounds each sample) it would be 82 MB."""
    window = SampleWindow(1e9)

    def histogram(i: int) -> Histogram:  # new tuples of new floats, as every parse makes them
        bounds = (*(float(b + 1) for b in range(MAX_BUCKETS - 1)), math.inf)
        counts = tuple(float(i * MAX_BUCKETS + b) for b in range(MAX_BUCKETS))
        return Histogram(bounds, counts, float(i), counts[-1])

    def sample(i: int) -> EngineSample:
        histograms = {f"h{k}": histogram(i) for k in range(5)}
        return EngineSample(timestamp=float(i), kind="vllm", counters={"prompt_tokens": float(i)},
                            gauges={"requests_running": 1.0}, histograms=histograms,
                            model_label=f"{i:0{LABEL_CHARS}d}", config={"cache_dtype": "auto"})

    tracemalloc.start()
    try:
        for i in range(1000):
            window.add(sample(i))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(window.samples()) == 1000
    assert held < 16_000_000, held  # 12.7 MB measured


# --- identity fields ------------------------------------------------------------------------------------


def test_huge_identity_fields_are_bounded_in_the_labels_and_the_exposition_stays_small() -> None:
    engine = FakeEngine(VLLM, identity={
        "/v1/models": {"data": [{"id": "m" * 400_000, "root": "/models/" + "r" * 100_000}]},
        "/version": {"version": "9" * 1_000_000}})
    clock = Clock()
    with served(engine) as (url,):
        collection = collection_for({"e": url}, clock)
        collection.run_once()
        text = exposition(collection)
    (labels,) = engine_labels(text, "e")
    assert len(labels["model"]) == LABEL_CHARS and labels["model"].startswith("m" * 100)
    info = [s.labels for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "infermeter_engine_info"]
    assert info == [{"engine": "e", "kind": "vllm", "model": labels["model"], "version": ""}]  # refused
    assert len(text) < 64_000, len(text)


def test_model_names_that_differ_only_past_the_cut_get_different_labels() -> None:
    models = []
    for suffix in ("a", "b"):
        engine = FakeEngine(VLLM, identity={"/v1/models": {"data": [{"id": "m" * 5000 + suffix}]}})
        with served(engine) as (url,):
            collection = collection_for({"e": url}, Clock())
            collection.run_once()
            models.append(collection.snapshot.engines[0].model)
    assert models[0] != models[1] and all(len(m) == LABEL_CHARS for m in models)


@pytest.mark.parametrize("model", ["evil\nmodel 1", "nul\x00byte", "lone \ud800 surrogate", "rtl\u202eoverride"])
def test_unprintable_model_names_become_printable_labels(model: str) -> None:
    engine = FakeEngine(VLLM, identity={"/v1/models": {"data": [{"id": model}]}, "/version": {"version": "0.10.1"}})
    with served(engine) as (url,):
        collection = collection_for({"e": url}, Clock())
        collection.run_once()
        text = exposition(collection)  # a lone surrogate cannot even be encoded: the scrape would fail
    (labels,) = engine_labels(text, "e")
    assert labels["model"].isprintable() and labels["model"].startswith(model[:3])


def test_a_model_label_over_the_label_cap_fails_the_read_and_a_long_one_is_cut() -> None:
    text = VLLM.read_text(encoding="utf-8")
    sizes = {"huge": 100_000, "long": MAX_LABEL_CHARS}
    engines = {}
    for name, size in sizes.items():
        engines[name] = FakeEngine(VLLM, identity={})  # no /v1/models: the metrics' model_name is the model
        body = text.replace(MODEL, "x" * size, 1 if name == "huge" else -1)  # huge: on one series
        engines[name].set_response(200, body.encode(), "text/plain")
    with served(*engines.values()) as urls:
        collection = collection_for(dict(zip(sizes, urls, strict=True)), Clock())
        collection.run_once()
        body = exposition(collection)
        with pytest.raises(SourceError, match=rf"has a label longer than {MAX_LABEL_CHARS} characters"):
            EngineSource(EngineTarget("huge", urls[0]), 2.0, 1 << 24).read()
    huge, long = collection.snapshot.engines
    assert not huge.up and not collection.snapshot.collectors[engine_collector("huge")].success
    assert long.up and len(long.model) == LABEL_CHARS and long.model.startswith("x" * 100)
    assert len(body) < 64_000, len(body)


# --- counters that go negative, series served twice --------------------------------------------------------

SUCCESS = "vllm:request_success_total"
STOP = {"finished_reason": "stop"}


def test_a_negative_counter_fails_the_read_and_no_rate_is_ever_negative() -> None:
    engine = FakeEngine(VLLM)
    engine.zero()
    clock = Clock()
    with served(engine) as (url,):
        collection = collection_for({"e": url}, clock)
        views = []
        for value in (-100.0, -175.0, -250.0):  # falls by 75 a read, never back to zero
            engine.set(SUCCESS, value, STOP)
            clock.now += 1
            views.append(collection.run_once().engines[0])
        with pytest.raises(SourceError, match=rf"^counter {SUCCESS} has a negative series \(-250\): the engine's"):
            EngineSource(EngineTarget("e", url), 2.0, 1 << 24).read()
    assert not any(view.up or view.stats for view in views)


def test_a_counter_computed_from_several_series_fails_when_negative() -> None:
    """Every series is checked, and so is what an adapter computes from them (vLLM's per-GPU mean)."""
    text = VLLM.read_text(encoding="utf-8")
    flops = '\nvllm:estimated_flops_per_gpu_total{engine="0",model_name="m"} -5\n'
    exposition = parse(text + flops, ADAPTER.families)
    with pytest.raises(SourceError, match=r"^counter engine_flops_per_gpu is negative \(-5\): the engine's"):
        check_sample(ADAPTER.adapt(exposition, 1.0, None))
    with pytest.raises(SourceError, match=r"^histogram time_to_first_token has a negative count"):
        check_sample(EngineSample(1.0, "vllm", histograms={
            "time_to_first_token": Histogram((1.0, math.inf), (-1.0, 2.0), 0.0, 2.0)}))


def test_a_series_served_twice_fails_the_read_instead_of_counting_twice() -> None:
    text = VLLM.read_text(encoding="utf-8")
    line = next(line for line in text.splitlines() if line.startswith(SUCCESS + '{engine="0",finished_reason="stop"'))
    engine = FakeEngine(VLLM)
    engine.set_response(200, text.replace(line, f"{line}\n{line}").encode(), "text/plain")
    clock = Clock()
    with served(engine) as (url,):
        collection = collection_for({"e": url}, clock)
        for _ in range(2):
            clock.now += 1
            view = collection.run_once().engines[0]
            assert not view.up and view.stats is None
        with pytest.raises(SourceError) as caught:
            EngineSource(EngineTarget("e", url), 2.0, 1 << 24).read()
    assert str(caught.value) == (f'duplicate series {SUCCESS}{{engine=\'0\',finished_reason=\'stop\','
                                 f"model_name='{MODEL}'}}: the engine serves it twice in one exposition")


# --- identity churn: every cache bounded -----------------------------------------------------------------


@pytest.mark.parametrize("where", ["v1-models", "model-label"])
def test_an_identity_that_changes_every_read_leaves_every_cache_bounded(where: str,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    nvml = load_fake_pynvml()
    nvml.configure(h100_node(1))
    engine = FakeEngine(VLLM, identity={})
    body = VLLM.read_text(encoding="utf-8")
    clock = Clock()
    names = iter(range(10**6))
    with served(engine) as (url,):
        collection = collection_for({"e": url}, clock, nvml=nvml, window=60.0)  # full after 12 reads

        def cycle() -> Snapshot:
            nvml.clear_calls()  # the fake NVML's own record of calls is not infermeter's memory
            name = f"{next(names):06d}-" + "n" * 3000  # unknown to the catalogue: each one warns once
            if where == "v1-models":  # the identity is read again every 60 s
                engine.identity = {"/v1/models": {"data": [{"id": name, "root": "/nonexistent/" + name}]}}
                clock.now += 61
            else:
                engine.set_response(200, body.replace(MODEL, name).encode(), "text/plain")
                clock.now += 5
            return collection.run_once()

        with caplog.at_level(logging.WARNING):
            growth = traced_growth(cycle, warm=12, cycles=188)  # 200 names
    facts = collection._facts
    assert facts.cached_entries() <= MODELS_PER_ENGINE + 2 * WARNINGS_REMEMBERED
    assert len(facts._models["e"]) <= MODELS_PER_ENGINE
    warnings = [r for r in caplog.records if r.name == "exporter.resolve"]
    assert len(warnings) == WARNINGS_PER_TOPIC  # then debug level
    assert "further model:e warnings this hour are logged at debug level" in warnings[-1].getMessage()
    assert all(len(r.getMessage()) < 400 for r in caplog.records)
    # each name held (3000 characters, in two caches) would add about 1.7 MB over 188 names
    assert growth < 400_000, growth
    (labels,) = engine_labels(exposition(collection), "e")
    assert labels["model"].startswith(f"{next(names) - 1:06d}-")  # the latest name, cut


def test_warnings_about_changing_values_go_to_debug_after_a_few(caplog: pytest.LogCaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    facts = FactsResolver(Config())
    with caplog.at_level(logging.DEBUG, logger="exporter.resolve"):
        for i in range(2 * WARNINGS_REMEMBERED):
            facts.warn_once(f"model:e:name-{i}", "engine e: model %s", i)
            facts.warn_once(f"model:e:name-{i}", "engine e: model %s", i)  # the same key: not logged again
        facts.warn_once("model:other:x", "engine other: model %s", "x")  # another topic still warns
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(levels) == 2 * WARNINGS_REMEMBERED + 1
    assert [lvl for lvl, _ in levels[:WARNINGS_PER_TOPIC]] == [logging.WARNING] * WARNINGS_PER_TOPIC
    assert all(lvl == logging.DEBUG for lvl, _ in levels[WARNINGS_PER_TOPIC:-1])
    assert levels[-1] == (logging.WARNING, "engine other: model x")
    assert facts.cached_entries() <= 2 * WARNINGS_REMEMBERED
    caplog.clear()
    later = time.monotonic() + WARNING_PERIOD_SECONDS + 1
    monkeypatch.setattr(resolve.time, "monotonic", lambda: later)
    facts.warn_once("model:e:an-hour-later", "engine e: model %s", "an-hour-later")  # a new hour: warns again
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


# --- config.json from the engine's model directory ------------------------------------------------------


def _engine_root(tmp_path: Path, content: str) -> Path:
    root = tmp_path / "model"
    root.mkdir()
    (root / "config.json").write_text(content, encoding="utf-8")
    return root


def test_a_huge_config_json_is_refused_with_a_short_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": "x" * (MAX_CONFIG_BYTES + 10)}
    root = _engine_root(tmp_path, json.dumps(config))
    facts = FactsResolver(Config())
    with caplog.at_level(logging.WARNING):
        assert facts.model("e", "some/unknown-model", str(root)) is None
    (refused, unknown) = [r.getMessage() for r in caplog.records]
    assert "config.json" in refused and f"larger than {MAX_CONFIG_BYTES} bytes" in refused
    assert len(refused) < 400 and len(unknown) < 400 and "\n" not in refused


LLAMA = Path(__file__).parent.parent / "exporter" / "facts" / "models" / "meta-llama--Llama-3.1-8B.json"


@pytest.mark.parametrize(("field", "value"), [
    ("architectures", '["Llama\\nForCausalLM"]'), ("architectures", json.dumps(["A" * 5000])),
    ("architectures", '[{"x": 1}]'), ("hidden_size", json.dumps("9" * 100_000)),
    ("num_hidden_layers", "1" + "0" * 5000), ("num_hidden_layers", "1" + "0" * 400),
    ("torch_dtype", json.dumps("f" * 100_000)), ("quantization_config", '{"quant_method": "awq", "bits": "4x"}'),
    ("quantization_config", '{"quant_method": "fp8", "weight_block_size": 5}'),
    ("vocab_size", "[" * 100_000 + "]" * 100_000),
])
def test_bad_values_in_a_config_json_give_a_short_one_line_error(tmp_path: Path, field: str, value: str) -> None:
    base = LLAMA.read_text(encoding="utf-8").rstrip().removesuffix("}")
    root = _engine_root(tmp_path, base + f', "{field}": {value}}}')  # the field, as written, wins (last)
    with pytest.raises(ValueError) as caught:
        load(root)
    message = str(caught.value)
    assert message.startswith(f"model config {root / 'config.json'}: ")
    assert len(message) < 400 and "\n" not in message


def test_the_architecture_label_is_a_class_name(tmp_path: Path) -> None:
    root = _engine_root(tmp_path, LLAMA.read_text(encoding="utf-8"))
    assert load(root).architecture == "LlamaForCausalLM"


def test_a_fifo_config_json_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(lambda: load(fifo))), daemon=True)
    reader.start()
    reader.join(5)
    assert outcome and "not a regular file" in outcome[0]


def _error_of(call: Callable[[], object]) -> str:
    try:
        call()
    except ValueError as err:
        return str(err)
    return "no error"


# --- log records are bounded -----------------------------------------------------------------------------


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_every_log_record_is_bounded_with_a_visible_marker(root_logger: logging.Logger) -> None:
    stream = StringIO()
    logs.configure("info", stream)
    try:
        log = logging.getLogger("exporter.test_hostile_engine")
        log.warning("engine %s: value %s", "e", "v" * 1_000_000)
        try:
            raise ValueError("x" * 1_000_000)
        except ValueError:
            log.exception("failed on %s", "y" * 1_000_000)
        log.debug("not shown at info")
    finally:
        stream.flush()
    first, second = stream.getvalue().split("\n", 1)
    assert len(first) < logs.MESSAGE_CHARS + 100 and first.endswith("more characters]")
    assert "WARNING engine e: value vvv" in first
    assert len(second) < logs.RECORD_CHARS + 100
    assert "ERROR failed on yyy" in second and "ValueError: xxx" in second and "more characters]" in second
    assert "not shown" not in second


def test_configure_replaces_its_own_handler(root_logger: logging.Logger) -> None:
    before = list(root_logger.handlers)
    first = logs.configure("debug", StringIO())
    second = logs.configure("warning", StringIO())
    assert first not in root_logger.handlers and second in root_logger.handlers
    assert root_logger.handlers == [*before, second] and root_logger.level == logging.WARNING


def _with_ignore(tmp_path: Path, ignore: list[str]) -> Path:
    config = json.loads(LLAMA.read_text(encoding="utf-8"))
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "ignore": ignore,
        "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}}
    return _engine_root(tmp_path, json.dumps(config))


@pytest.mark.parametrize("pattern", ["re:(a+)+$", "re:(.*a){12}x|(a|a)*b", "re:((model|layers)+.)*gate$",
                                     "re:" + "a" * 300, "re:(unclosed"])
def test_a_quantization_pattern_that_could_backtrack_exponentially_is_refused(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ValueError) as caught:
        load(_with_ignore(tmp_path, ["lm_head", pattern]))
    message = str(caught.value)
    assert "quantization_config pattern" in message and len(message) < 400 and "\n" not in message


def test_a_quantization_ignore_list_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 10000"):
        load(_with_ignore(tmp_path, [f"model.layers.{i}.mlp.gate" for i in range(10_001)]))


def test_real_quantization_patterns_still_load(tmp_path: Path) -> None:
    # as llm-compressor writes them (the mixture-of-experts gates, a vision tower)
    spec = load(_with_ignore(tmp_path, ["lm_head", "re:.*mlp.gate$", "re:vision_tower.*",
                                        "re:model[.]layers[.][0-9]+[.]mlp[.](gate|shared_expert_gate)$"]))
    assert spec.weight_dtype == "fp8"
