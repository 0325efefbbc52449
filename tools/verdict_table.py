"""The corpus verdict table for docs/analytic-model.md: scenario -> verdict -> evidence.

Reads the recorded real-vLLM scenarios (tests/fixtures/corpus/*/: the captures and the manifest entry
``expect.json``) and prints a markdown table. The evidence column is what the captures themselves show
(vLLM's own gauges, over the loaded captures: a request running or waiting). With ``--measure`` each scenario
is also replayed through a real exporter (all at once, a few minutes) and the table adds the states the
exporter took and its evidence metrics at the end (a tool: the exporter never reads tests/).

    python -m tools.verdict_table [--measure] [SCENARIO ...]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.corpus_harness import Run, replay_all
from tests.fakes.replay import Scenario, scenarios

_SAMPLE = re.compile(r'^(vllm:[A-Za-z0-9_:]+)(?:\{([^}]*)\})?\s+(\S+)')
GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
          "vllm:kv_cache_usage_perc": "kv", "vllm:num_preemptions_total": "preemptions"}
KV_FULL = 0.9  # exporter.derive.verdict.KV_FULL


def gauges(body: str) -> dict[str, float]:
    """running, waiting, kv, preemptions, capacity/deferred (waiting by reason) and awake, summed over series."""
    values: dict[str, float] = {}
    for line in body.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, raw = match.groups()
        key = GAUGES.get(name)
        if name == "vllm:num_requests_waiting_by_reason":
            reason = re.search(r'reason="([^"]*)"', labels or "")
            key = reason.group(1) if reason else None
        elif name == "vllm:engine_sleep_state" and 'sleep_state="awake"' in (labels or ""):
            key = "awake"
        if key is not None:
            values[key] = values.get(key, 0.0) + float(raw)
    return values


@dataclass(frozen=True)
class CaptureStats:
    """What vLLM's gauges say over a scenario; ranges and shares over the loaded captures."""

    captures: int
    seconds: float
    loaded: int
    first_loaded: int | None
    kv_min: float
    kv_max: float
    kv_mean: float
    kv_full_share: float
    waiting_share: float
    waiting_max: float
    running_max: float
    running_mean: float
    preemptions: float
    capacity_max: float
    deferred_max: float
    asleep: int

    @classmethod
    def of(cls, scenario: Scenario) -> CaptureStats:
        rows = [gauges(body) for body in scenario.captures]
        loaded = [i for i, r in enumerate(rows) if r.get("running", 0) > 0 or r.get("waiting", 0) > 0]
        on = [rows[i] for i in loaded] or [{}]
        kv = [r.get("kv", 0.0) for r in on]
        return cls(
            captures=len(rows), seconds=scenario.stamps[-1] - scenario.stamps[0], loaded=len(loaded),
            first_loaded=loaded[0] if loaded else None, kv_min=min(kv), kv_max=max(kv), kv_mean=sum(kv) / len(kv),
            kv_full_share=sum(v >= KV_FULL for v in kv) / len(on),
            waiting_share=sum(r.get("waiting", 0) > 0 for r in on) / len(on),
            waiting_max=max(r.get("waiting", 0.0) for r in on),
            running_max=max(r.get("running", 0.0) for r in on),
            running_mean=sum(r.get("running", 0.0) for r in on) / len(on),
            preemptions=rows[-1].get("preemptions", 0.0) - rows[0].get("preemptions", 0.0),
            capacity_max=max(r.get("capacity", 0.0) for r in rows),
            deferred_max=max(r.get("deferred", 0.0) for r in rows),
            asleep=sum(r.get("awake", 1.0) == 0 for r in rows))

    def describe(self) -> str:
        if not self.loaded:
            text = f"no request running or waiting in any of {self.captures} captures"
        else:
            text = (f"loaded {self.loaded}/{self.captures}; KV {self.kv_min:.2g}-{self.kv_max:.2g} "
                    f"mean {self.kv_mean:.2g} (>= {KV_FULL} on {self.kv_full_share:.0%}); "
                    f"running <= {self.running_max:.0f} "
                    f"(mean {self.running_mean:.1f}); waiting on {self.waiting_share:.0%} (<= {self.waiting_max:.0f}, "
                    f"capacity <= {self.capacity_max:.0f}, deferred <= {self.deferred_max:.0f}); "
                    f"{self.preemptions:.0f} preemptions")
        return text + (f"; asleep {self.asleep} captures" if self.asleep else "")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _evidence(values: Mapping[str, float]) -> str:
    short = {"queueing_ratio": "queueing", "kv_cache_full_ratio": "kv_full", "preemptions_per_second": "preempt/s",
             "batch_ratio": "batch", "loaded_ratio": "loaded", "gpu_busy_ratio": "gpu"}
    return ", ".join(f"{label} {values[key]:.2g}" for key, label in short.items() if key in values)


def table(chosen: Iterable[Scenario], measured: Mapping[str, Run] | None = None) -> str:
    header = ["scenario", "GPU util", "verdict", "evidence (vLLM's gauges, loaded captures)", "why"]
    if measured is not None:
        header += ["exporter states (changes)", "exporter evidence at the end"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario in chosen:
        expect = scenario.expect
        row = [scenario.name, f"{float(expect.get('gpu_utilization', 0)):.2f}", expect.get("verdict", "?"),
               CaptureStats.of(scenario).describe(), expect.get("why", "")]
        if measured is not None:
            run = measured[scenario.name]
            last = run.observations[-1] if run.observations else None
            changes = f" ({last.state_changes:.0f})" if last is not None and last.state_changes is not None else ""
            row += [" -> ".join(run.states()) + changes, _evidence(last.evidence) if last is not None else "-"]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def corpus_table() -> str:
    """The table of every stored scenario, in the manifest's order (docs/analytic-model.md's verdict-table)."""
    return table(sorted(scenarios(), key=lambda s: (s.expect.get("order", 99), s.name)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="scenarios (default: all)")
    parser.add_argument("--measure", action="store_true", help="also replay each scenario through an exporter")
    args = parser.parse_args(argv)
    chosen = sorted((s for s in scenarios() if not args.names or s.name in args.names),
                    key=lambda s: (s.expect.get("order", 99), s.name))
    missing = set(args.names) - {s.name for s in chosen}
    if missing:
        print(f"verdict_table: no scenario {', '.join(sorted(missing))}", file=sys.stderr)
        return 2
    measured = None
    if args.measure:
        with tempfile.TemporaryDirectory() as tmp:
            measured = replay_all([s.name for s in chosen], Path(tmp))
    print(table(chosen, measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
