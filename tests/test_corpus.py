"""Real vLLM captures (tests/fixtures/corpus) replayed through a real exporter: the right-sizing verdicts.

Each scenario is a recording of a real vLLM 0.32 server (CPU build, tiny model), one /metrics capture per
second, labelled in its expect.json (the manifest: tests/fixtures/corpus/README.md). The replay serves
capture i on the exporter's i-th scrape; the exporter runs as a process with a fake NVML (one H100 at the
scenario's utilisation). All scenarios replay at once, so the slow part takes about the longest recording
(3 minutes). The rules asserted are docs/analytic-model.md's (issue 13).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType

import pytest

from exporter.samples import EngineSample
from exporter.sources.engines import detect
from exporter.sources.exposition import parse
from tests.corpus_harness import TAIL_CYCLES, Observation, Run, replay_all
from tests.fakes.replay import CORPUS, METRICS_FILE, ReplayEngine, Scenario, read_captures, scenarios
from tools.verdict_table import corpus_table

NAMES = ("idle", "light", "balanced", "kv-starved", "concurrency-capped", "bursty", "rampup", "sleep")
STATES = ("overprovisioned", "memory_bound", "compute_bound", "engine_limited", "sleeping", "balanced")
EVIDENCE_SECONDS = 60  # the spec's evidence period: a verdict is due within it once its evidence holds
MAX_SCENARIO_BYTES = 1_000_000
ENGINE_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "engines"


def _recorder() -> ModuleType:
    path = Path(__file__).resolve().parent / "fixtures" / "record_sequence.py"
    spec = importlib.util.spec_from_file_location("record_sequence", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


record_sequence = _recorder()


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


# ----------------------------------------------------------------------------------- the corpus itself


def test_corpus_holds_every_scenario_small_and_labelled() -> None:
    found = {s.name: s for s in scenarios()}
    assert set(found) == set(NAMES)
    for name, scenario in found.items():
        size = sum(p.stat().st_size for p in scenario.folder.iterdir())
        assert size < MAX_SCENARIO_BYTES, f"{name}: {size} bytes"
        assert 120 <= len(scenario.captures) <= 180, name
        assert all(b > a for a, b in zip(scenario.stamps, scenario.stamps[1:], strict=False)), name
        assert scenario.content_type.startswith("text/plain; version=1.0.0"), name
        assert json.loads(scenario.version)["version"] == "0.32.0"
        expect = scenario.expect
        assert expect["verdict"] in STATES and expect["verdict"] in expect["states"], name
        assert all(state in STATES for state in expect["states"]), name
        assert 0 <= expect["gpu_utilization"] <= 1 and 0 <= expect["evidence_from"] < len(scenario.captures)
        assert expect["why"], name


def test_readme_table_is_the_generated_one() -> None:
    """The manifest's table is tools/verdict_table.py's output for the stored captures (regenerate it)."""
    assert corpus_table() in (CORPUS / "README.md").read_text(encoding="utf-8")


def test_filtered_body_reads_as_the_full_one() -> None:
    """The corpus keeps only vllm: TYPE and sample lines; the exporter's vLLM adapter makes the same sample
    of the filtered body as of the body as served (recorded from the same real server)."""
    full = (ENGINE_FIXTURES / "vllm-0.32.0-real-kvfull.txt").read_text(encoding="utf-8")
    kept = record_sequence.filter_body(full)
    assert len(kept) < 0.7 * len(full)
    assert all(line.startswith(("vllm:", "# TYPE vllm:")) for line in kept.splitlines())
    assert "_created" not in kept and "# HELP" not in kept

    def adapted(text: str) -> EngineSample:
        adapter = detect(text)
        return adapter.adapt(parse(text, adapter.families), 0.0, None)

    sample = adapted(kept)
    assert sample == adapted(full)
    assert (sample.gauges["requests_running"], sample.gauges["requests_waiting"]) == (6, 5)  # mid-burst, KV full
    assert sample.gauges["kv_cache_usage_ratio"] == 1.0 and sample.counters["preemptions"] == 26


def test_recorder_writes_what_replay_serves(tmp_path: Path) -> None:
    """record_sequence.py against a replayed scenario records the same captures and side documents."""
    source = Scenario.load(CORPUS / "kv-starved")
    out = tmp_path / "again"
    with ReplayEngine(source) as engine:
        assert record_sequence.main([engine.url, str(out), "--seconds", "1.0", "--interval", "0.2",
                                     "--log-dir", str(tmp_path)]) == 0
    again = Scenario.load(out)
    assert again.captures == source.captures[:5]
    assert again.models == source.models
    assert json.loads(again.version) == json.loads(source.version)
    assert json.loads((out / "meta.json").read_text())["captures"] == 5


def test_read_captures_rejects_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / METRICS_FILE
    path.write_bytes(gzip.compress(b"### capture 0 t=0.0\nvllm:a 1\n### capture 2 t=1.0\nvllm:a 2\n"))
    with pytest.raises(ValueError, match="capture 2 where 1 was due"):
        read_captures(path)
    path.write_bytes(gzip.compress(b"vllm:a 1\n### capture 0 t=0.0\n"))
    with pytest.raises(ValueError, match="before the first capture marker"):
        read_captures(path)


def test_replay_serves_capture_i_on_the_ith_scrape_and_clamps() -> None:
    scenario = Scenario("tiny", CORPUS, ("vllm:a 0\n", "vllm:a 1\n"), (0.0, 1.0), b'{"data": []}', b'{"v": 1}',
                        "text/plain; version=1.0.0; charset=utf-8")
    with ReplayEngine(scenario) as engine:
        assert engine.url.startswith("http://127.0.0.1:")
        bodies = [_get(engine.url + "/metrics") for _ in range(3)]
        assert [b for _, b, _ in bodies] == [b"vllm:a 0\n", b"vllm:a 1\n", b"vllm:a 1\n"]
        assert bodies[0][2] == scenario.content_type
        assert _get(engine.url + "/v1/models")[:2] == (200, b'{"data": []}')
        assert _get(engine.url + "/version")[:2] == (200, b'{"v": 1}')
        assert _get(engine.url + "/info")[0] == 404
        assert engine.served == 3


# ------------------------------------------------------------------- replayed through a real exporter


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    return replay_all(NAMES, tmp_path_factory.mktemp("corpus"))


def _explain(run: Run) -> str:
    timeline = [(o.capture, o.state) for i, o in enumerate(run.observations)
                if i == 0 or o.state != run.observations[i - 1].state]
    return f"states by capture {timeline}; last evidence {run.observations[-1].evidence if run.observations else {}}"


@pytest.mark.parametrize("name", NAMES)
def test_exporter_reads_every_capture(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    captures = len(run.scenario.captures)
    assert run.served >= captures + TAIL_CYCLES, run.exporter_log[-2000:]
    assert len(run.observations) >= 0.8 * captures
    assert all(o.engine_up == 1 for o in run.observations), run.exporter_log[-2000:]
    loaded = [o for o in run.observations if o.evidence.get("loaded_ratio", 0) > 0]
    for observation in loaded:  # the fake NVML reaches the evidence
        assert observation.evidence["gpu_busy_ratio"] == pytest.approx(run.scenario.expect["gpu_utilization"])


@pytest.mark.parametrize("name", NAMES)
def test_states_follow_the_scenario_without_flapping(runs: dict[str, Run], name: str) -> None:
    """The states taken, in order, are the scenario's; the idle lead-in before the load may be shorter than
    the state hold, and then the first state taken is the loaded one. The change counter agrees."""
    run = runs[name]
    expected = run.scenario.expect["states"]
    taken = run.states()
    first = next(o for o in run.observations if o.state is not None)
    skipped_lead_in = taken == expected[1:] and first.capture >= run.scenario.expect["evidence_from"]
    assert taken == expected or skipped_lead_in, _explain(run)
    assert run.observations[-1].state_changes == len(taken) - 1


@pytest.mark.parametrize("name", NAMES)
def test_verdict_within_the_evidence_period(runs: dict[str, Run], name: str) -> None:
    """The scenario's verdict is taken within 60 s of the capture where its evidence begins."""
    run = runs[name]
    verdict, since = run.scenario.expect["verdict"], run.scenario.expect["evidence_from"]
    reached = next((o for o in run.observations if o.state == verdict and o.capture >= since), None)
    assert reached is not None, _explain(run)
    assert reached.capture <= since + EVIDENCE_SECONDS, _explain(run)


def _none_or_zero(value: float | None) -> bool:
    return value is None or value == 0


# What each state's evidence must show (docs/analytic-model.md): (description, test on the evidence gauges)
STATE_EVIDENCE: Mapping[str, tuple[str, Callable[[Mapping[str, float]], bool]]] = {
    "memory_bound": ("preemptions_per_second > 0 or kv_cache_full_ratio >= 0.25",
                     lambda e: e.get("preemptions_per_second", 0) > 0 or e.get("kv_cache_full_ratio", 0) >= 0.25),
    "engine_limited": ("queueing_ratio >= 0.25 and batch_ratio < 0.5",
                       lambda e: e.get("queueing_ratio", 0) >= 0.25 and e.get("batch_ratio", 1) < 0.5),
    "compute_bound": ("queueing_ratio >= 0.25 and batch_ratio >= 0.5",
                      lambda e: e.get("queueing_ratio", 0) >= 0.25 and e.get("batch_ratio", 0) >= 0.5),
    "overprovisioned": ("nothing waits and nothing is preempted",
                        lambda e: _none_or_zero(e.get("queueing_ratio"))
                        and _none_or_zero(e.get("preemptions_per_second"))),
    "balanced": ("loaded, nothing waits, nothing is preempted",
                 lambda e: e.get("loaded_ratio", 0) > 0 and _none_or_zero(e.get("queueing_ratio"))
                 and _none_or_zero(e.get("preemptions_per_second"))),
    "sleeping": ("the engine says it sleeps", lambda e: True),
}


@pytest.mark.parametrize("name", NAMES)
def test_evidence_supports_each_state(runs: dict[str, Run], name: str) -> None:
    """When a state is taken (its evidence held for the hold) and at the end, the evidence gauges show it."""
    run = runs[name]
    checked: list[Observation] = [o for i, o in enumerate(run.observations)
                                  if o.state is not None and (i == 0 or run.observations[i - 1].state != o.state)]
    checked.append(run.observations[-1])
    for observation in checked:
        assert observation.state is not None
        rule, holds = STATE_EVIDENCE[observation.state]
        assert holds(observation.evidence), (f"{observation.state} at capture {observation.capture}: want {rule}, "
                                             f"got {observation.evidence}")


@pytest.mark.parametrize("name", NAMES)
def test_report_and_plan_print_the_exporters_gpu_count(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    needed = run.observations[-1].gpus_needed
    assert needed is not None
    assert run.report_gpus() == needed, run.report
    assert run.plan_gpus() == needed, run.plan_error
    assert run.plan_text_gpus() == needed, run.plan_text
