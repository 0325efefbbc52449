"""Proof against a real Prometheus: the shipped rules and dashboards answer, and the alerts fire.

Debian's `prometheus` server runs on loopback with the shipped rule files (the alerts' `for:` cut to a
few seconds), scraping one `infermeter` process per engine, each reading a simulator (`infermeter
simulate`: three vLLM scenarios, TGI, Triton and SGLang) on fake H100s, and the simulators themselves
(the recording rules over the engines' own metrics). Then every recording rule and every dashboard
query must return data, every dashboard query that selects engines must answer for each engine kind
(but for what the kind cannot provide, listed in ABSENT_BY_KIND), the matching alert must fire for
`overprovisioned` and `memory-bound` (the latter quoting its preemptions and KV-full share), and no
right-sizing alert for `balanced`. Two recorded real vLLM runs (tests/fixtures/corpus), replayed, must fire
the memory-bound and the engine-limited alerts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.fakes.nvml_specs import h100_node
from tests.fakes.replay import CORPUS, ReplayEngine, Scenario
from tests.process import ROOT, ExporterProcess, free_port, stop_process, wait_for
from tests.prometheus_server import prometheus_binary

ALERTS = ROOT / "alerts"
# engine name -> (engine kind, scenario, H100s)
ENGINES = {"balanced": ("vllm", "balanced", 1), "overprovisioned": ("vllm", "overprovisioned", 4),
           "memory-bound": ("vllm", "memory-bound", 1), "tgi": ("tgi", "balanced", 1),
           "triton": ("triton", "balanced", 1), "sglang": ("sglang", "balanced", 1)}
# Real vLLM recordings (tests/fixtures/corpus), replayed one capture per exporter read: engine name ->
# (scenario, NVML utilisation while loaded). Prometheus scrapes only their exporters (a scrape of the replay
# itself would move it on).
REPLAYS = {"real-kv-starved": ("kv-starved", 0.95), "real-concurrency-capped": ("concurrency-capped", 0.03)}
TINY_CONFIG = CORPUS / "tinyllama-config.json"
# One engine of each kind, whose dashboard coverage is checked engine by engine.
PER_KIND = ("balanced", "tgi", "triton", "sglang")
RIGHT_SIZING_ALERTS = {"InfermeterDeploymentOverProvisioned", "InfermeterDeploymentMemoryBound",
                       "InfermeterDeploymentEngineLimited", "InfermeterDeploymentStateFlapping"}
SLO_ALERTS = {"InfermeterTTFTSLOBreach", "InfermeterTPOTSLOBreach"}
MODEL = "meta-llama/Llama-3.1-8B"
GPU = "NVIDIA H100 80GB HBM3"
# Triton's `model` label is the Triton model's name (the simulator serves the usual TensorRT-LLM
# `ensemble`), which names no architecture: without --model-config the exporter logs that and leaves
# expected performance, MBU/MFU, TPOT efficiency and right-sizing absent (docs/engines.md, Triton). The
# simulator runs MODEL, so the exporter is given MODEL's built-in config.json.
MODEL_CONFIGS = {"triton": ROOT / "exporter" / "facts" / "models" / "meta-llama--Llama-3.1-8B.json"}

# (engine kind, panel title) -> (what marks the targets of what the kind does not provide, why). A dashboard
# target of that panel that contains a marker may be empty for that kind; every other engine target must
# answer. Keep it minimal: an empty series the kind's adapter does provide is a bug, not an entry here.
TTFT, TPOT, ITL, E2E, QUEUE = (f"infermeter_{m}_seconds" for m in (
    "time_to_first_token", "time_per_output_token", "inter_token_latency", "e2e_request_latency", "queue_time"))


def _latency(summary: str) -> tuple[str, ...]:
    """A latency's targets: its summary (quantiles; _sum and _count for the mean) and the bounds of its
    quantiles (infermeter_latency_quantile_bound_seconds{histogram=...})."""
    return summary, f'histogram="{summary.removeprefix("infermeter_").removesuffix("_seconds")}"'


PREEMPTIONS, PREFIX, EFFICIENCY = ("infermeter_preemptions_per_second", "infermeter_prefix_cache_hit_ratio",
                                   "infermeter_tpot_efficiency_ratio")
# the right-sizing evidence: preemptions over the last minute, from the same engine counter as PREEMPTIONS
EVIDENCE_PREEMPTIONS = "infermeter_rightsizing_preemptions_per_second"
NO_PREEMPTIONS = {"tgi": "TGI reports no preemptions", "triton": "TensorRT-LLM reports no preemptions",
                  # sgl-project/sglang python/sglang/srt/metrics/collector.py @ 00ae9c15:
                  # increment_retracted_reqs() creates the labelled series at the first retraction
                  # (multiprocess mode writes nothing before)
                  "sglang": "sglang:num_retracted_requests_total appears at the first retraction, and the "
                            "balanced scenario retracts none"}
NO_TPOT_EFFICIENCY = "expected TPOT over the observed median TPOT: absent with the TPOT"
NO_TRITON_STEP_TIMES = "Triton core and the TensorRT-LLM backend have no TPOT or inter-token histogram"
ABSENT_BY_KIND: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("tgi", "Time to first token"): (_latency(TTFT), "TGI has no time-to-first-token histogram"),
    ("tgi", "Inter-token latency"): (_latency(ITL), "TGI has no inter-token histogram (only the mean time per "
                                                    "token of each request, drawn as TPOT)"),
    ("tgi", "Preemptions per second"): ((PREEMPTIONS,), NO_PREEMPTIONS["tgi"]),
    ("tgi", "Prefix cache hit ratio"): ((PREFIX,), "TGI reports no prefix-cache hits"),
    ("triton", "Time per output token"): (_latency(TPOT), NO_TRITON_STEP_TIMES),
    ("triton", "Inter-token latency"): (_latency(ITL), NO_TRITON_STEP_TIMES),
    ("triton", "TPOT efficiency"): ((EFFICIENCY,), NO_TPOT_EFFICIENCY),
    ("triton", "Lowest TPOT efficiency"): ((EFFICIENCY,), NO_TPOT_EFFICIENCY),
    ("triton", "Memory bandwidth utilisation (MBU)"): (
        ("infermeter_memory_bandwidth_utilization_ratio",),
        "analytic MBU needs the decode step time (inter-token or TPOT histogram), which Triton lacks; "
        "source=engine is vLLM's own estimate"),
    # Triton's durations are microsecond counters over the successes: one +Inf bucket with a sum, so the mean
    # (_sum/_count) and the interval the sum alone proves (0 to about mean / (1 - q)) answer, the quantiles not
    ("triton", "End-to-end request latency"): ((E2E,), "no quantile: Triton's request duration is a microsecond "
                                                       "counter"),
    ("triton", "Queue time"): ((QUEUE,), "no quantile: Triton's queue duration is a microsecond counter"),
    ("triton", "Preemptions per second"): ((PREEMPTIONS,), NO_PREEMPTIONS["triton"]),
    ("triton", "Prefix cache hit ratio"): ((PREFIX,), "Triton reports no prefix-cache hits"),
    ("sglang", "Time per output token"): (_latency(TPOT), "the SGLang builds read serve no per-request TPOT "
                                                          "histogram (request_time_per_output_token_seconds), only "
                                                          "inter-token latency"),
    ("sglang", "Preemptions per second"): ((PREEMPTIONS,), NO_PREEMPTIONS["sglang"]),
    # the same counter, over the evidence period, in the table of the state's evidence and in its own panel
    **{(kind, panel): ((EVIDENCE_PREEMPTIONS,), why) for kind, why in NO_PREEMPTIONS.items()
       for panel in ("State and evidence", "Evidence: preemptions per second")},
}


@dataclass
class Stack:
    url: str
    exporters: dict[str, ExporterProcess]


def _simulator(kind: str, scenario: str, port: int, gpus: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "simulate", "--engine-kind", kind, "--scenario", scenario,
         "--listen", f"127.0.0.1:{port}", "--model", MODEL, "--gpu", GPU, "--gpus", str(gpus), "--seed", "1",
         "--speed", "4"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _short_for(rules: dict[str, Any]) -> dict[str, Any]:
    for group in rules.get("groups", []):
        group["interval"] = "1s"
        for rule in group.get("rules", []):
            if "for" in rule:
                rule["for"] = "3s"
    return rules


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = requests.get(url + "/api/v1/query", params={"query": expr}, timeout=10).json()
    if answer.get("status") != "success":
        raise AssertionError(f"{expr}: {answer.get('error')}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


# A scrape that misses its 1 s timeout (a loaded machine) marks every series of that target stale until
# the next one succeeds, so a query can come back empty for a second or two. Empty queries are asked
# again for up to this long, all together; one that never answers still fails.
PATIENCE_SECONDS = 15.0


def _still_empty(url: str, exprs: list[str]) -> list[str]:
    """The queries of ``exprs`` that return no data, each asked again while PATIENCE_SECONDS last."""
    empty = [expr for expr in exprs if not _query(url, expr)]
    deadline = time.monotonic() + PATIENCE_SECONDS
    while empty and time.monotonic() < deadline:
        time.sleep(1)
        empty = [expr for expr in empty if not _query(url, expr)]
    return empty


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = prometheus_binary()
    tmp = tmp_path_factory.mktemp("proof")
    processes: list[subprocess.Popen[bytes]] = []
    exporters: dict[str, ExporterProcess] = {}
    replays: list[ReplayEngine] = []
    jobs = []
    try:
        for name, (scenario_name, utilization) in REPLAYS.items():
            replay = ReplayEngine(Scenario.load(CORPUS / scenario_name)).start()
            replays.append(replay)
            nvml = h100_node(1)
            nvml["gpus"][0]["utilization_gpu"] = round(utilization * 100)
            exporter = ExporterProcess(
                ["--interval", "1", "--window", "60", "--engine", f"{name}={replay.url}",
                 "--model-config", f"{name}={TINY_CONFIG}", "--gpu-hourly-cost", "3"], tmp, nvml_spec=nvml)
            exporters[name] = exporter
            jobs.append({"job_name": f"infermeter-{name}",
                         "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]})
        for name, (kind, scenario, gpus) in ENGINES.items():
            port = free_port()
            processes.append(_simulator(kind, scenario, port, gpus, tmp / f"sim-{name}.log"))
            engine = f"http://127.0.0.1:{port}"
            nvml = h100_node(gpus)
            if scenario == "overprovisioned":  # GPUs that sit idle
                for gpu in nvml["gpus"]:
                    gpu["utilization_gpu"] = 1
            dead = ["--engine", f"dead=http://127.0.0.1:{free_port()}"] if name == "balanced" else []
            model_config = ["--model-config", f"{name}={MODEL_CONFIGS[name]}"] if name in MODEL_CONFIGS else []
            exporter = ExporterProcess(
                ["--interval", "1", "--window", "20", "--engine", f"{name}={engine}", *dead, *model_config,
                 "--gpu-hourly-cost", "3",
                 "--slo-ttft-seconds", "1", "--slo-tpot-seconds", "0.05", "--budget-cost-per-request-dollars",
                 "0.01"], tmp, nvml_spec=nvml)
            exporters[name] = exporter
            jobs.append({"job_name": f"infermeter-{name}",
                         "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]})
            jobs.append({"job_name": f"engine-{name}", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]})
        rule_files = []
        for source in sorted(ALERTS.glob("*.yaml")):
            target = tmp / source.name
            target.write_text(yaml.safe_dump(_short_for(yaml.safe_load(source.read_text()))))
            rule_files.append(str(target))
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                          "rule_files": rule_files, "scrape_configs": jobs}))
        prometheus_port = free_port()
        processes.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=(tmp / "prometheus.log").open("w"), stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{prometheus_port}"
        for exporter in exporters.values():
            exporter.wait_ready(30)

        def all_engines_up() -> bool:
            try:
                return len(_query(url, "infermeter_engine_up == 1")) == len(ENGINES) + len(REPLAYS)
            except (requests.RequestException, ValueError, AssertionError):
                return False

        wait_for(all_engines_up, timeout=60, interval=1)
        time.sleep(25)  # windows fill, rules evaluate, alerts pass their (shortened) for:
        yield Stack(url, exporters)
    finally:
        for exporter in exporters.values():
            exporter.stop()
        for process in processes:
            process.terminate()  # all at once, then wait for each
        for process in processes:
            stop_process(process, timeout=10)
        for replay in replays:
            replay.stop()


def _records() -> list[str]:
    names = []
    for path in sorted(ALERTS.glob("*.yaml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            names += [rule["record"] for rule in group.get("rules", []) if "record" in rule]
    return names


def test_every_recording_rule_returns_data(stack: Stack) -> None:
    records = _records()
    assert records, "no recording rules shipped"
    empty = _still_empty(stack.url, records)
    assert not empty, f"recording rules with no data: {empty}"


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    from dashboards import generate

    queries = generate.all_queries()
    assert queries
    empty = set(_still_empty(stack.url, sorted({expr for _, _, expr in queries})))
    where = [f"{dashboard} / {panel}: {expr}" for dashboard, panel, expr in queries if expr in empty]
    assert not where, "dashboard queries with no data:\n" + "\n".join(where)


ENGINE_ANY = 'engine=~".*"'
Target = tuple[str, str, str]  # dashboard, panel, PromQL narrowed to one engine


@dataclass
class Coverage:
    answered: list[Target]
    listed: list[Target]  # empty, and ABSENT_BY_KIND says the kind cannot provide it
    empty: list[Target]


@pytest.fixture(scope="module")
def coverage(stack: Stack) -> dict[str, Coverage]:
    """Each PER_KIND engine's dashboard targets that select engines, narrowed to that engine."""
    from dashboards import generate

    queries = [q for q in generate.all_queries() if ENGINE_ANY in q[2]]  # the others are not per engine
    assert queries
    result = {}
    for name in PER_KIND:
        kind, found = ENGINES[name][0], Coverage([], [], [])
        unlisted = []
        for dashboard, panel, expr in queries:
            narrowed = (dashboard, panel, expr.replace(ENGINE_ANY, f'engine=~"{name}"'))
            absent = ABSENT_BY_KIND.get((kind, panel))
            if _query(stack.url, narrowed[2]):
                found.answered.append(narrowed)
            elif absent and any(marker in narrowed[2] for marker in absent[0]):
                found.listed.append(narrowed)
            else:
                unlisted.append(narrowed)
        empty = set(_still_empty(stack.url, sorted({expr for _, _, expr in unlisted})))
        found.empty = [target for target in unlisted if target[2] in empty]
        found.answered += [target for target in unlisted if target[2] not in empty]
        result[name] = found
    return result


def test_every_dashboard_engine_query_answers_for_each_engine_kind(coverage: dict[str, Coverage]) -> None:
    assert {kind for kind, _ in ABSENT_BY_KIND} <= {ENGINES[name][0] for name in PER_KIND}
    report = [f"{ENGINES[name][0]:>7} ({name}): {len(c.answered)} answer, {len(c.empty)} empty, "
              f"{len(c.listed)} absent as listed ({', '.join(sorted({panel for _, panel, _ in c.listed})) or '-'})"
              for name, c in coverage.items()]
    empty = [f"  {name}: {dashboard} / {panel}: {expr}"
             for name, c in coverage.items() for dashboard, panel, expr in c.empty]
    assert not empty, "per-engine coverage:\n" + "\n".join(report) + "\nempty for an engine:\n" + "\n".join(empty)
    print("\nper-engine dashboard coverage:\n" + "\n".join(report))  # shown with pytest -s


def test_each_listed_absence_is_still_absent(coverage: dict[str, Coverage]) -> None:
    """An ABSENT_BY_KIND marker whose targets all answer is stale: remove it (keeps the list minimal)."""
    stale = []
    for (kind, panel), (markers, _) in ABSENT_BY_KIND.items():
        name = next(n for n in PER_KIND if ENGINES[n][0] == kind)
        for marker in markers:
            if not any(p == panel and marker in expr for _, p, expr in coverage[name].listed):
                stale.append(f"{kind} / {panel} ({marker})")
    assert not stale, f"listed as absent but answering: {stale}"


def _alerts(url: str) -> list[dict[str, Any]]:
    answer = requests.get(url + "/api/v1/alerts", timeout=10).json()
    alerts: list[dict[str, Any]] = answer["data"]["alerts"]
    return alerts


def _firing(url: str, name: str, engine: str) -> dict[str, Any] | None:
    return next((a for a in _alerts(url) if a["labels"].get("alertname") == name
                 and a["labels"].get("engine") == engine and a["state"] == "firing"), None)


def test_real_vllm_recordings_fire_their_alerts(stack: Stack) -> None:
    """The recorded real vLLM runs (tests/fixtures/corpus): the KV-starved one fires the memory-bound alert,
    quoting its preemptions; the concurrency-capped one (--max-num-seqs 2) fires the engine-limited alert,
    naming vLLM's flags. Each replay begins with ~20-25 idle captures, then its evidence holds 15 s before
    the state is taken, then the shortened `for:` passes."""
    wait_for(lambda: _firing(stack.url, "InfermeterDeploymentMemoryBound", "real-kv-starved") is not None,
             timeout=120, interval=1)
    memory = _firing(stack.url, "InfermeterDeploymentMemoryBound", "real-kv-starved")
    assert memory is not None
    assert re.search(r"\d+\.\d\d preemptions/s", memory["annotations"]["description"]), memory["annotations"]
    wait_for(lambda: _firing(stack.url, "InfermeterDeploymentEngineLimited", "real-concurrency-capped") is not None,
             timeout=120, interval=1)
    limited = _firing(stack.url, "InfermeterDeploymentEngineLimited", "real-concurrency-capped")
    assert limited is not None and "--max-num-seqs" in limited["annotations"]["description"], limited["annotations"]
    assert not _firing(stack.url, "InfermeterDeploymentMemoryBound", "real-concurrency-capped")


def test_right_sizing_alerts_match_the_scenarios(stack: Stack) -> None:
    """The over-provisioned and memory-bound engines fire their alerts (past the shortened `for:`, not
    just pending), with the evidence in the description; the balanced engine fires none."""
    # firing needs the condition on every 1 s evaluation for the shortened `for:` (3 s); a scrape that
    # misses its 1 s timeout on a loaded machine marks the series stale and restarts it, hence the margin
    wait_for(lambda: _firing(stack.url, "InfermeterDeploymentOverProvisioned", "overprovisioned") is not None,
             timeout=90, interval=1)
    wait_for(lambda: _firing(stack.url, "InfermeterDeploymentMemoryBound", "memory-bound") is not None,
             timeout=90, interval=1)
    memory = _firing(stack.url, "InfermeterDeploymentMemoryBound", "memory-bound")
    assert memory is not None
    # the simulated vLLM preempts: the description quotes its rate and the KV-full share
    assert re.search(r"In the last \d+ s: \d+\.\d\d preemptions/s, KV cache full \(at least 90 %\) in "
                     r"[\d.]+% of the loaded samples", memory["annotations"]["description"]), memory["annotations"]
    balanced = [a["labels"]["alertname"] for a in _alerts(stack.url) if a["labels"].get("engine") == "balanced"
                and a["labels"].get("alertname") in RIGHT_SIZING_ALERTS | SLO_ALERTS]
    assert not balanced, f"right-sizing or SLO alerts on the balanced engine: {balanced}"


def _active(url: str, name: str, **labels: str) -> bool:
    return any(a["labels"].get("alertname") == name and all(a["labels"].get(k) == v for k, v in labels.items())
               and a["state"] in {"pending", "firing"} for a in _alerts(url))


@pytest.mark.parametrize(("alert", "labels"), [
    # the memory-bound engine queues for tens of seconds: its TTFT p95 is far over the 1 s target
    ("InfermeterTTFTSLOBreach", {"engine": "memory-bound"}),
    # an engine nobody serves on its URL
    ("InfermeterEngineDown", {"engine": "dead"}),
    ("InfermeterCollectorFailing", {"collector": "engine/dead"}),
    # the over-provisioned node's GPUs report 1 % utilisation
    ("InfermeterGPUIdleButAllocated", {"engine": "overprovisioned"}),
    # its light load fits one small GPU: the cheapest catalogue GPU model saves far more than 25 % of an H100
    ("InfermeterCheaperGPUAvailable", {"engine": "overprovisioned"}),
])
def test_other_alerts_on_their_scenarios(stack: Stack, alert: str, labels: dict[str, str]) -> None:
    wait_for(lambda: _active(stack.url, alert, **labels), timeout=60, interval=1)


def test_alert_descriptions_render_live_values(stack: Stack) -> None:
    alerts = [a for a in _alerts(stack.url) if a["labels"].get("alertname") in RIGHT_SIZING_ALERTS]
    assert alerts
    for alert in alerts:
        text = alert["annotations"].get("description", "")
        assert text and "{{" not in text and not re.search(r"\$value|\$labels", text), text


def test_each_scenario_has_its_state(stack: Stack) -> None:
    """The memory-bound and over-provisioned scenarios reach their states (the simulators start empty, so
    the memory-bound one first fills its KV cache); every engine's state is printed with pytest -s."""
    expected = {"memory-bound": "memory_bound", "overprovisioned": "overprovisioned"}

    def reached() -> dict[str, str] | None:
        now = {r["metric"]["engine"]: r["metric"]["state"]
               for r in _query(stack.url, "infermeter_rightsizing_state == 1")}
        return now if expected.items() <= now.items() else None

    found = wait_for(reached, timeout=90, interval=1)
    batch = {r["metric"]["engine"]: float(r["value"][1])
             for r in _query(stack.url, "infermeter_rightsizing_batch_ratio")}
    calibration: dict[str, list[str]] = {}
    for r in _query(stack.url, "infermeter_rightsizing_calibration_info"):
        labels = r["metric"]  # Prometheus drops the empty reason="" of a calibrated phase
        why = labels.get("reason") or labels["basis"]
        calibration.setdefault(labels["engine"], []).append(f"{labels['phase']} {why}")
    print("\nright-sizing state per engine:\n" + "\n".join(
        f"  {name:>15} ({ENGINES[name][0]}): {found.get(name, 'none yet')}, "
        f"batch {batch.get(name, float('nan')):.3f} of B*, {', '.join(sorted(calibration.get(name, [])))}"
        for name in ENGINES))
