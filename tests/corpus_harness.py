"""Replay corpus scenarios (tests/fixtures/corpus) through a real exporter process and record what it says.

Shared by tests/test_corpus.py and tools/verdict_table.py. A run serves the scenario's captures one per
``GET /metrics`` (tests/fakes/replay.py) to ``python -m exporter`` with a faked NVML (one H100 at the
scenario's utilisation), scrapes the exporter once per cycle until every capture has been served, then asks
``infermeter report`` and ``infermeter plan --from`` about it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.nvml_specs import h100_node
from tests.fakes.replay import CORPUS, ReplayEngine, Scenario
from tests.process import ROOT, ExporterProcess

ENGINE = "tiny"
GPU_MODEL = "NVIDIA H100 80GB HBM3"  # what the fake NVML reports (tests/fakes/nvml_specs.py)
MODEL_CONFIG = CORPUS / "tinyllama-config.json"
PREFIX = "infermeter_rightsizing_"
EVIDENCE = ("evidence_window_seconds", "loaded_ratio", "queueing_ratio", "kv_cache_full_ratio",
            "preemptions_per_second", "waiting_requests", "gpu_busy_ratio", "batch_ratio")
# cycles scraped after the last capture was served: the exporter's last cycles judge the whole recording
TAIL_CYCLES = 3
REPORT_GPUS = re.compile(r"^\s*recommendation\s+(\d+) GPU\(s\)", re.MULTILINE)
PLAN_TEXT_GPUS = re.compile(r"the engine's GPU model, [^:]+: (\d+) GPU\(s\)")


@dataclass(frozen=True)
class Observation:
    """One scrape of the exporter: the capture the engine served last, and the right-sizing metrics."""

    capture: int
    state: str | None
    state_changes: float | None
    evidence: dict[str, float]
    gpus_needed: float | None
    engine_up: float | None


@dataclass
class Run:
    scenario: Scenario
    observations: list[Observation] = field(default_factory=list)
    report: str = ""
    plan: dict[str, Any] | None = None
    plan_error: str = ""
    plan_text: str = ""
    exporter_log: str = ""
    served: int = 0

    def states(self) -> list[str]:
        """The states the exporter took, in order, each once per change (None before the first left out)."""
        sequence: list[str] = []
        for observation in self.observations:
            if observation.state is not None and (not sequence or sequence[-1] != observation.state):
                sequence.append(observation.state)
        return sequence

    def first(self, state: str) -> Observation | None:
        return next((o for o in self.observations if o.state == state), None)

    def report_gpus(self) -> int | None:
        match = REPORT_GPUS.search(self.report)
        return int(match.group(1)) if match else None

    def plan_text_gpus(self) -> int | None:
        """GPUs the plan's text says for the engine's own GPU model (its header line)."""
        match = PLAN_TEXT_GPUS.search(" ".join(self.plan_text.split()))  # the line may wrap
        return int(match.group(1)) if match else None

    def plan_gpus(self) -> int | None:
        """GPUs in the plan's best feasible row for the engine's own GPU model (the planner ranks rows)."""
        if self.plan is None:
            return None
        for candidate in self.plan.get("candidates", []):
            if candidate.get("gpu") == GPU_MODEL and candidate.get("feasible"):
                return int(candidate["gpus"])
        return None


def nvml_spec(utilization: float) -> dict[str, Any]:
    """One H100 at ``utilization`` (0..1) for the whole run."""
    spec = h100_node(1)
    spec["gpus"][0]["utilization_gpu"] = round(utilization * 100)
    return spec


def observe(samples: Sequence[tuple[str, dict[str, str], float]], capture: int) -> Observation:
    state = next((labels["state"] for name, labels, value in samples
                  if name == PREFIX + "state" and value == 1), None)
    values = {name: value for name, labels, value in samples if labels.get("engine") == ENGINE}
    return Observation(
        capture=capture, state=state, state_changes=values.get(PREFIX + "state_changes_total"),
        evidence={key: values[PREFIX + key] for key in EVIDENCE if PREFIX + key in values},
        gpus_needed=values.get(PREFIX + "gpus_needed"), engine_up=values.get("infermeter_engine_up"))


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def replay(scenario: Scenario, tmp: Path) -> Run:
    """Replay ``scenario`` through a fresh exporter (interval 1 s, window 300 s) and observe every cycle."""
    run = Run(scenario)
    utilization = float(scenario.expect.get("gpu_utilization", 0.0))
    with ReplayEngine(scenario) as engine:
        exporter = ExporterProcess(
            ["--interval", "1", "--window", "300", "--engine", f"{ENGINE}={engine.url}",
             "--model-config", f"{ENGINE}={MODEL_CONFIG}"], tmp, nvml_spec=nvml_spec(utilization))
        try:
            exporter.wait_ready(timeout=60)
            last = len(scenario.captures) + TAIL_CYCLES
            deadline = time.monotonic() + 3 * last + 60  # a starved machine still ends
            while engine.served < last and time.monotonic() < deadline:
                time.sleep(1)
                status, body, _ = exporter.get("/metrics")
                if status == 200:
                    run.observations.append(observe(_samples(body), engine.served - 1))
            run.served = engine.served
            run.report = _cli("report", "--url", exporter.url).stdout
            run.plan_text = _cli("plan", "--from", exporter.url).stdout
            planned = _cli("plan", "--from", exporter.url, "--format", "json")
            try:
                run.plan = json.loads(planned.stdout)
            except ValueError:
                run.plan_error = planned.stderr.strip() or planned.stdout[-500:]
        finally:
            exporter.stop()
            run.exporter_log = exporter.log()
    return run


def replay_all(names: Sequence[str], tmp: Path) -> dict[str, Run]:
    """Every named scenario at once (one thread each), so the whole takes about the longest recording."""
    loaded = [Scenario.load(CORPUS / name) for name in names]
    folders = [tmp / s.name for s in loaded]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=len(loaded)) as pool:
        runs = list(pool.map(replay, loaded, folders))
    return {run.scenario.name: run for run in runs}
