"""The fault matrix (issue 6): one real exporter process per fault group, a faulty engine beside a healthy one,
and NVML faults through the fake pynvml. Whatever the fault, the process lives, /metrics answers fast, the
faulty source shows as down (and recovers) and nothing else is disturbed."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node, missing_library
from tests.process import ExporterProcess, Samples, value, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
VLLM_V1 = FIXTURES / "vllm-v1-0.10.txt"
VLLM_REAL = FIXTURES / "vllm-0.32.0-real-a.txt"
TGI = FIXTURES / "tgi-3.x.txt"
ARGS = ["--interval", "0.5", "--window", "10", "--timeout", "0.4", "--max-body-bytes", "1000000"]
MAX_BODY = 1_000_000
SCRAPES = 5


@dataclass
class Rig:
    exporter: ExporterProcess
    faulty: FakeEngine
    faulty_server: FakeEngineServer
    healthy: FakeEngine
    healthy_server: FakeEngineServer
    slowest: float = 0.0

    def samples(self) -> Samples:
        """One scrape; every scrape also checks that the process lives and the healthy engine is up."""
        assert self.exporter.proc.poll() is None, self.exporter.log()
        began = time.monotonic()
        samples = self.exporter.samples()
        self.slowest = max(self.slowest, time.monotonic() - began)
        assert value(samples, "infermeter_engine_up", engine="healthy") == 1
        assert value(samples, "infermeter_collector_success", collector="engine/healthy") == 1
        return samples

    def state(self) -> tuple[float | None, float | None]:
        samples = self.samples()
        return (value(samples, "infermeter_engine_up", engine="faulty"),
                value(samples, "infermeter_collector_success", collector="engine/faulty"))

    def errors(self) -> float:
        got = value(self.samples(), "infermeter_collector_errors_total", collector="engine/faulty")
        return got if got is not None else 0.0

    def scrape_round(self) -> tuple[Samples, float]:
        """SCRAPES scrapes; the last one's samples and the slowest of them, in seconds."""
        slowest, samples = 0.0, []
        for _ in range(SCRAPES):
            began = time.monotonic()
            samples = self.samples()
            slowest = max(slowest, time.monotonic() - began)
            time.sleep(0.05)
        return samples, slowest

    def collected_after(self, seconds: float) -> None:
        """Wait until collections that started at least ``seconds`` from now have been published."""
        start = time.time()
        wait_for(lambda: (value(self.samples(), "infermeter_last_collect_timestamp_seconds") or 0)
                 > start + seconds)


def fresh_vllm() -> FakeEngine:
    engine = FakeEngine(VLLM_V1)
    engine.zero()
    return engine


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    faulty, healthy = fresh_vllm(), FakeEngine(TGI)
    healthy.zero()
    faulty_server, healthy_server = FakeEngineServer(faulty).start(), FakeEngineServer(healthy).start()
    exporter = ExporterProcess([*ARGS, "--engine", f"faulty={faulty_server.url}",
                                "--engine", f"healthy={healthy_server.url}"],
                               tmp_path_factory.mktemp("faults"), nvml_spec=h100_node(2))
    rig = Rig(exporter, faulty, faulty_server, healthy, healthy_server)
    try:
        exporter.wait_ready()
        wait_for(lambda: rig.state() == (1, 1))
        yield rig
    finally:
        exporter.stop()
        rig.faulty_server.stop()
        healthy_server.stop()


@pytest.fixture
def clean(rig: Rig) -> Iterator[Rig]:
    """The faulty engine healthy, as vLLM 0.10 from zero, before and after each test."""
    def restore() -> None:
        rig.faulty.clear_response()
        rig.faulty.set_delay(0)
        rig.faulty.load(VLLM_V1)
        rig.faulty.zero()
        wait_for(lambda: value(rig.samples(), "infermeter_engine_up", engine="faulty", kind="vllm") == 1)
        wait_for(lambda: rig.state() == (1, 1))

    restore()
    yield rig
    restore()


# ---------------------------------------------------------------------------------------------- failures

def _down(rig: Rig) -> None:
    rig.faulty_server.stop()  # connection refused on that port from now on


def _up_again(rig: Rig) -> None:
    rig.faulty_server = FakeEngineServer(rig.faulty, port=rig.faulty_server.port).start()


def _huge_body(rig: Rig) -> None:
    text = rig.faulty.render().encode()
    padding = b"# " + b"x" * 1021 + b"\n"  # valid exposition: only its size is wrong
    body = text + padding * ((50 * 1024 * 1024 - len(text)) // len(padding) + 1)
    assert len(body) >= 50 * 1024 * 1024 > MAX_BODY
    rig.faulty.set_response(200, body, rig.faulty.content_type)


FAILURES: dict[str, tuple[Callable[[Rig], None], Callable[[Rig], None]]] = {
    "down": (_down, _up_again),
    "hangs": (lambda r: r.faulty.set_delay(30), lambda r: r.faulty.set_delay(0)),
    "http-500": (lambda r: r.faulty.set_response(500, b"internal error"), lambda r: r.faulty.clear_response()),
    "garbage": (lambda r: r.faulty.set_response(200, b"<html>not metrics</html>\n{{{ \x00\xff"),
                lambda r: r.faulty.clear_response()),
    "50MB-body": (_huge_body, lambda r: r.faulty.clear_response()),
    # writes forever, fast: the body cap or the deadline stops it
    "endless-body": (lambda r: r.faulty.set_endless(b"# " + b"y" * 4093 + b"\n", 0.002),
                     lambda r: r.faulty.clear_response()),
    # writes forever, a trickle: never reaches the cap, only the deadline can stop it
    "endless-trickle": (lambda r: r.faulty.set_endless(b"# slow\n", 0.02), lambda r: r.faulty.clear_response()),
}


@pytest.mark.parametrize("fault", list(FAILURES))
def test_engine_failure_is_down_then_recovers(clean: Rig, fault: str) -> None:
    rig = clean
    inject, clear = FAILURES[fault]
    before = rig.errors()
    inject(rig)
    try:
        wait_for(lambda: rig.state() == (0, 0))
        wait_for(lambda: rig.errors() > before)
        samples, slowest = rig.scrape_round()
        assert slowest < 1.0, f"slowest of {SCRAPES} scrapes took {slowest:.2f}s"
        assert value(samples, "infermeter_engine_up", engine="faulty") == 0
        assert value(samples, "infermeter_requests_running", engine="faulty") is None  # no stale values
        assert value(samples, "infermeter_collector_success", collector="nvml") == 1
        last = value(samples, "infermeter_last_collect_timestamp_seconds")
        assert last is not None and time.time() - last < 5  # collection keeps going
    finally:
        clear(rig)
    wait_for(lambda: rig.state() == (1, 1))
    assert rig.exporter.proc.poll() is None


# ---------------------------------------------------------------------------------------------- odd values

def _engine_samples(samples: Samples) -> Samples:
    return [(n, labels, v) for n, labels, v in samples
            if n.startswith("infermeter_") and labels.get("engine") == "faulty"]


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["NaN", "+Inf"])
def test_nan_and_inf_samples_are_never_exported(clean: Rig, bad: float) -> None:
    rig, engine = clean, clean.faulty
    engine.inc("vllm:generation_tokens_total", 100)
    engine.observe("vllm:time_to_first_token_seconds", 0.05, times=3)
    rig.collected_after(0.6)
    engine.set("vllm:num_requests_running", bad)
    engine.set("vllm:kv_cache_usage_perc", bad)  # its twin gpu_cache_usage_perc follows
    engine.set("vllm:generation_tokens_total", bad)
    engine.set("vllm:time_to_first_token_seconds_sum", bad)
    rig.collected_after(1.5)
    for _ in range(SCRAPES):
        samples = rig.samples()
        assert value(samples, "infermeter_engine_up", engine="faulty") == 1
        assert value(samples, "infermeter_collector_success", collector="engine/faulty") == 1
        mine = _engine_samples(samples)
        assert mine, "the engine's series are there"
        not_finite = [(n, labels, v) for n, labels, v in mine if not math.isfinite(v)]
        assert not not_finite, not_finite
        time.sleep(0.2)
    assert rig.slowest < 1.0


def test_counter_reset_never_gives_a_negative_rate(clean: Rig) -> None:
    rig, engine = clean, clean.faulty
    engine.inc("vllm:generation_tokens_total", 5000)
    engine.inc("vllm:prompt_tokens_total", 9000)
    engine.inc("vllm:request_success_total", 20, {"finished_reason": "stop"})
    wait_for(lambda: (value(rig.samples(), "infermeter_generation_tokens_per_second", engine="faulty") or 0) > 0)
    engine.reset()
    engine.inc("vllm:generation_tokens_total", 10)
    seen = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        samples = rig.samples()
        assert value(samples, "infermeter_engine_up", engine="faulty") == 1
        rates = [(n, v) for n, _, v in _engine_samples(samples) if n.endswith("_per_second")]
        assert all(v >= 0 for _, v in rates), rates
        seen += bool(rates)
        time.sleep(0.2)
    assert seen, "rates were exported across the reset"


def test_a_metric_renamed_mid_run(clean: Rig) -> None:
    rig, engine = clean, clean.faulty
    engine.set("vllm:kv_cache_usage_perc", 0.42)
    usage = lambda: value(rig.samples(), "infermeter_kv_cache_usage_ratio", engine="faulty")  # noqa: E731
    wait_for(lambda: usage() == pytest.approx(0.42))  # a capacity-weighted mean: equal up to rounding
    # a downgrade: only the deprecated name is left, with the same value
    engine.drop_family("vllm:kv_cache_usage_perc")
    # and a counter that moves to a name infermeter does not know
    engine.inc("vllm:generation_tokens_total", 500)
    wait_for(lambda: (value(rig.samples(), "infermeter_generation_tokens_per_second", engine="faulty") or 0) > 0)
    engine.alias("vllm:generation_tokens_total", "vllm:generation_tokens_v2_total")
    engine.drop_family("vllm:generation_tokens_total")
    assert "vllm:generation_tokens_v2" in engine.families()
    rig.collected_after(0.6)
    for _ in range(SCRAPES):
        samples = rig.samples()
        assert value(samples, "infermeter_engine_up", engine="faulty") == 1
        assert value(samples, "infermeter_kv_cache_usage_ratio", engine="faulty") == pytest.approx(0.42)
        time.sleep(0.1)
    # what the engine no longer provides is absent, not 0 and not a stale rate
    wait_for(lambda: value(rig.samples(), "infermeter_generation_tokens_per_second", engine="faulty") is None)
    assert value(rig.samples(), "infermeter_engine_up", engine="faulty") == 1


def _ttft_bounds(engine: FakeEngine) -> list[float]:
    bounds = set()
    for line in engine.render().splitlines():
        if line.startswith("vllm:time_to_first_token_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            if le != "+Inf":
                bounds.add(float(le))
    return sorted(bounds)


def coarser_ttft_fixture(tmp_path: Path) -> Path:
    """vllm-0.32.0-real-a with every third time-to-first-token bucket bound (and +Inf) only."""
    text = VLLM_REAL.read_text(encoding="utf-8").splitlines()
    bounds = [line.split('le="')[1].split('"')[0] for line in text
              if line.startswith("vllm:time_to_first_token_seconds_bucket")]
    keep = {*list(dict.fromkeys(bounds))[::3], "+Inf"}
    out = [line for line in text if not line.startswith("vllm:time_to_first_token_seconds_bucket")
           or line.split('le="')[1].split('"')[0] in keep]
    path = tmp_path / "vllm-coarse-ttft.txt"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def test_histogram_buckets_that_change(clean: Rig, tmp_path: Path) -> None:
    rig, engine = clean, clean.faulty
    engine.observe("vllm:time_to_first_token_seconds", 0.05, times=5)
    wait_for(lambda: value(rig.samples(), "infermeter_time_to_first_token_seconds", engine="faulty",
                           quantile="0.5") is not None)
    old_bounds = _ttft_bounds(engine)
    engine.load(VLLM_REAL)  # an upgrade: the token-count histograms get other bounds behind the same URL
    rig.collected_after(0.6)
    assert value(rig.samples(), "infermeter_engine_up", engine="faulty") == 1
    # and then the latency histogram too (same fixture, every third bound kept)
    engine.load(coarser_ttft_fixture(tmp_path), identity=engine.identity)
    new_bounds = _ttft_bounds(engine)
    assert new_bounds != old_bounds and len(new_bounds) < len(old_bounds)
    engine.observe("vllm:time_to_first_token_seconds", 0.3, times=50)

    def quantiles() -> list[float]:
        samples = rig.samples()
        assert value(samples, "infermeter_engine_up", engine="faulty") == 1
        return [v for n, labels, v in samples if n == "infermeter_time_to_first_token_seconds"
                and labels.get("engine") == "faulty" and "quantile" in labels]

    end = time.monotonic() + 2.0
    while time.monotonic() < end:  # while the window holds samples of both bucket layouts
        got = quantiles()
        assert all(math.isfinite(v) and v >= 0 for v in got), got
        time.sleep(0.2)
    wait_for(quantiles)
    assert all(0 <= v <= max(new_bounds) for v in quantiles())
    assert value(rig.samples(), "infermeter_collector_success", collector="engine/faulty") == 1


def test_engine_kind_changes_behind_the_same_url(clean: Rig) -> None:
    rig, engine = clean, clean.faulty
    engine.load(TGI, identity={"/info": {"model_id": "bigscience/bloom-560m", "version": "3.3.6"}})
    wait_for(lambda: value(rig.samples(), "infermeter_engine_up", engine="faulty", kind="tgi",
                           model="bigscience/bloom-560m") == 1)
    samples, slowest = rig.scrape_round()
    assert slowest < 1.0
    assert value(samples, "infermeter_engine_up", engine="faulty") == 1  # one series, not a stale vllm one
    assert value(samples, "infermeter_collector_success", collector="engine/faulty") == 1
    assert not [n for n, labels, _ in _engine_samples(samples) if labels.get("kind") == "vllm"]
    assert value(samples, "infermeter_time_to_first_token_seconds_count", engine="faulty") is None  # TGI has none


# ---------------------------------------------------------------------------------------------- NVML

@pytest.fixture
def engine_url() -> Iterator[str]:
    with FakeEngineServer(fresh_vllm()) as server:
        yield server.url


def nvml_exporter(tmp_path: Path, url: str, spec: dict[str, Any]) -> ExporterProcess:
    exporter = ExporterProcess([*ARGS, "--engine", f"e={url}"], tmp_path, nvml_spec=spec)
    exporter.wait_ready()
    return exporter


def gpu_series(samples: Samples, gpu: str) -> list[str]:
    return sorted({n for n, labels, _ in samples if n.startswith("infermeter_gpu_") and labels.get("gpu") == gpu})


def engine_ok(samples: Samples) -> bool:
    return (value(samples, "infermeter_engine_up", engine="e") == 1
            and value(samples, "infermeter_collector_success", collector="engine/e") == 1)


def timed_scrapes(exporter: ExporterProcess) -> tuple[Samples, float]:
    slowest, samples = 0.0, []
    for _ in range(SCRAPES):
        began = time.monotonic()
        samples = exporter.samples()
        slowest = max(slowest, time.monotonic() - began)
        assert exporter.proc.poll() is None
        time.sleep(0.05)
    return samples, slowest


def test_nvml_library_missing(tmp_path: Path, engine_url: str) -> None:
    exporter = nvml_exporter(tmp_path, engine_url, missing_library())
    try:
        wait_for(lambda: engine_ok(exporter.samples()))
        samples, slowest = timed_scrapes(exporter)
        assert slowest < 1.0
        assert value(samples, "infermeter_collector_success", collector="nvml") == 0
        assert not [n for n, _, _ in samples if n.startswith("infermeter_gpu_")]
        assert engine_ok(samples)
    finally:
        exporter.stop()


def test_nvml_fields_unsupported(tmp_path: Path, engine_url: str) -> None:
    spec = h100_node(2)
    spec["gpus"][0]["not_supported"] = ["power", "energy", "temperature"]
    exporter = nvml_exporter(tmp_path, engine_url, spec)
    try:
        wait_for(lambda: engine_ok(exporter.samples()))
        samples, slowest = timed_scrapes(exporter)
        assert slowest < 1.0
        assert value(samples, "infermeter_collector_success", collector="nvml") == 1
        for name in ("infermeter_gpu_power_watts", "infermeter_gpu_energy_joules_total",
                     "infermeter_gpu_temperature_celsius"):
            assert value(samples, name, gpu="0") is None, name  # absent, never 0
            assert value(samples, name, gpu="1") is not None, name
        for name in ("infermeter_gpu_utilization_ratio", "infermeter_gpu_memory_used_bytes",
                     "infermeter_gpu_power_limit_watts", "infermeter_gpu_sm_clock_hertz"):
            assert value(samples, name, gpu="0") is not None, name
    finally:
        exporter.stop()


def test_nvml_gpu_lost_mid_run(tmp_path: Path, engine_url: str) -> None:
    spec = h100_node(2)
    spec["gpus"][1]["lost_after_reads"] = 6
    exporter = nvml_exporter(tmp_path, engine_url, spec)
    try:
        before = exporter.samples()
        assert gpu_series(before, "1"), "GPU 1 is there before it is lost"
        full = gpu_series(before, "0")
        wait_for(lambda: not gpu_series(exporter.samples(), "1"))
        samples, slowest = timed_scrapes(exporter)
        assert slowest < 1.0
        assert not gpu_series(samples, "1")
        assert gpu_series(samples, "0") == full
        assert value(samples, "infermeter_collector_success", collector="nvml") == 1
        assert engine_ok(samples)
    finally:
        exporter.stop()


def test_nvml_calls_that_block(tmp_path: Path, engine_url: str) -> None:
    spec = h100_node(2)
    spec["gpus"][0]["delay_seconds"] = 2
    exporter = nvml_exporter(tmp_path, engine_url, spec)
    try:
        wait_for(lambda: engine_ok(exporter.samples()))
        wait_for(lambda: value(exporter.samples(), "infermeter_collector_success", collector="nvml") == 0)
        samples, slowest = timed_scrapes(exporter)
        assert slowest < 1.0
        assert value(samples, "infermeter_collector_success", collector="nvml") == 0
        assert engine_ok(samples)
        last = value(samples, "infermeter_last_collect_timestamp_seconds")
        assert last is not None and time.time() - last < 5
    finally:
        exporter.stop()
