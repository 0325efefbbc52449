"""Latency quantiles against the server's own truth, for docs/accuracy.md (issue 14).

Reads the real vLLM runs of tests/fixtures/truth/ (README there): the /metrics captures, one a second,
and every observation the server made into its request histograms. For each latency histogram infermeter
exports and q in QUANTILES it compares, over 60 s windows of captures (and over each whole run):

* PromQL's ``histogram_quantile`` on the window's bucket increase (what infermeter exported before),
* ``bounded_quantiles``: the same held to ``quantile_bounds`` (what it exports now),

with the exact quantile of the observations the server made between the same two captures (matched by
count: a capture's ``_count`` says how many of the family's observations, in order, it includes).

    python -m tools.accuracy_table            # print the generated blocks
    python -m tools.accuracy_table --write    # and rewrite them in docs/accuracy.md

The blocks must match (tests/test_accuracy_real.py); the same module gives that test its data.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import gzip
import json
import math
import re
import statistics
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.derive.quantiles import bounded_quantiles, histogram_quantile, quantile_bounds
from exporter.derive.rates import histogram_increase
from exporter.samples import Histogram
from exporter.sources.engines.vllm import NAMES
from exporter.sources.exposition import parse
from tests.fakes.replay import read_captures

ROOT = Path(__file__).resolve().parent.parent
TRUTH = ROOT / "tests" / "fixtures" / "truth"
DOC = ROOT / "docs" / "accuracy.md"
RUN_ORDER = ("steady", "concurrency-capped", "kv-starved", "bursty")
QUANTILES = (0.5, 0.9, 0.95, 0.99)
WINDOW_SECONDS = 60.0
# Observations are stored to 1 µs: a stored value is within half of that of what the server observed.
STORED_HALF_STEP = 0.5e-6


@dataclass(frozen=True)
class Family:
    """A latency histogram infermeter exports: its canonical name, vLLM's name, its code in the fixtures."""

    name: str
    vllm: str
    code: str


FAMILIES = (
    Family("time_to_first_token", "vllm:time_to_first_token_seconds", "t"),
    Family("time_per_output_token", "vllm:request_time_per_output_token_seconds", "p"),
    Family("inter_token_latency", "vllm:inter_token_latency_seconds", "i"),
    Family("e2e_request_latency", "vllm:e2e_request_latency_seconds", "e"),
    Family("queue_time", "vllm:request_queue_time_seconds", "q"),
)
HTTP_CODE = "H"  # the server's HTTP duration of /v1/completions (prometheus-fastapi-instrumentator)


@dataclass(frozen=True)
class TruthRun:
    """One recorded run: captures (as infermeter reads them) and the server's raw observations."""

    name: str
    folder: Path
    stamps: tuple[float, ...]  # each capture, seconds since the first (the recorder's clock)
    histograms: Mapping[str, tuple[Histogram, ...]]  # family name -> its histogram in each capture
    values: Mapping[str, tuple[float, ...]]  # family code -> every observation, in the order made
    times: Mapping[str, tuple[float, ...]]  # family code -> when each was made, seconds since t0
    capture_times: tuple[float, ...]  # when the server collected each capture, seconds since t0
    other_collects: int  # collects that were not the recorder's (the bench client reads /metrics)
    t0: float  # time.monotonic() of the first capture's collect, in the server
    bench: tuple[Mapping[str, Any], ...]  # the bench client's results (per-request client-side truth)

    def observed(self, family: Family, capture: int) -> int:
        """How many of the family's observations the capture includes (its ``_count``)."""
        return round(self.histograms[family.name][capture].count)


def _histograms(body: str) -> dict[str, Histogram]:
    """The latency histograms infermeter reads from one vLLM capture, by canonical name (its adapter)."""
    exposition = parse(body, NAMES.families())
    return dict(NAMES.sample(exposition, 0.0).histograms)


def load_run(folder: Path) -> TruthRun:
    captures = read_captures(folder / "metrics.txt.gz")
    per_capture = [_histograms(body) for _, body in captures]
    histograms = {family.name: tuple(h[family.name] for h in per_capture) for family in FAMILIES}
    values: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    capture_times: list[float] = []
    other = 0
    t0 = math.nan
    with gzip.open(folder / "observations.txt.gz", "rt", encoding="utf-8") as lines:
        for line in lines:
            fields = line.split()
            if fields[0] == "#":
                t0 = float(fields[2])
            elif fields[0] == "s":
                capture_times.append(float(fields[1]))
            elif fields[0] == "x":
                other += 1
            else:
                values.setdefault(fields[0], []).append(float(fields[1]))
                times.setdefault(fields[0], []).append(float(fields[2]))
    bench = tuple(json.loads(gzip.decompress(path.read_bytes())) for path in sorted(folder.glob("bench*.json.gz")))
    return TruthRun(folder.name, folder, tuple(stamp for stamp, _ in captures), histograms,
                    {code: tuple(v) for code, v in values.items()}, {code: tuple(t) for code, t in times.items()},
                    tuple(capture_times), other, t0, bench)


@functools.lru_cache(maxsize=1)
def runs() -> tuple[TruthRun, ...]:
    return tuple(load_run(TRUTH / name) for name in RUN_ORDER if (TRUTH / name / "observations.txt.gz").exists())


def exact_quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values by linear interpolation between order statistics (numpy's default,
    and what ``vllm bench serve`` reports): rank h = q (n - 1) from 0."""
    h = q * (len(ordered) - 1)
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The q-quantile as the ceil(q n)-th smallest value (the rank PromQL's histogram_quantile aims at)."""
    return ordered[max(math.ceil(q * len(ordered) - 1e-9), 1) - 1]


def window_pairs(stamps: Sequence[float], seconds: float = WINDOW_SECONDS) -> list[tuple[int, int]]:
    """(i, j): capture j is the first at least ``seconds`` after capture i; one window per capture i."""
    pairs = []
    for i, stamp in enumerate(stamps):
        j = bisect.bisect_left(stamps, stamp + seconds - 1e-9)
        if j < len(stamps):
            pairs.append((i, j))
    return pairs


@dataclass(frozen=True)
class Estimate:
    """One window (captures ``start`` to ``end``) of one family at one q."""

    run: str
    family: str
    q: float
    start: int
    end: int
    observations: int
    exact: float  # linear interpolation (numpy)
    exact_nearest: float  # nearest rank
    promql: float
    bounded: float
    lower: float | None
    upper: float | None
    bucket_width: float  # width of the bucket the nearest-rank value is in (inf in the +Inf bucket)
    in_first_bucket: bool  # every observation of the window lies in the first bucket

    @property
    def bites(self) -> bool:
        return self.bounded != self.promql


def estimates(run: TruthRun, family: Family, pairs: Sequence[tuple[int, int]]) -> Iterator[Estimate]:
    """Every q of every window with at least one observation of the family."""
    hists = run.histograms[family.name]
    values = run.values.get(family.code, ())
    for start, end in pairs:
        first, last = run.observed(family, start), run.observed(family, end)
        if last <= first:
            continue
        window = histogram_increase(hists[start:end + 1])
        assert window is not None
        ordered = sorted(values[first:last])
        bounded = bounded_quantiles(QUANTILES, window)
        for q in QUANTILES:
            interval = quantile_bounds(q, window)
            nearest = nearest_rank(ordered, q)
            index = bisect.bisect_left(window.bounds, nearest)
            lower_edge = window.bounds[index - 1] if index else 0.0
            yield Estimate(run.name, family.name, q, start, end, last - first, exact_quantile(ordered, q), nearest,
                           histogram_quantile(q, window.bounds, window.cumulative_counts), bounded[q],
                           None if interval is None else interval[0], None if interval is None else interval[1],
                           window.bounds[index] - lower_edge,
                           window.cumulative_counts[0] == window.cumulative_counts[-1])


@functools.lru_cache(maxsize=1)
def all_windows() -> tuple[Estimate, ...]:
    """Every sliding 60 s window of every run, family and q."""
    return tuple(e for run in runs() for family in FAMILIES for e in estimates(run, family, window_pairs(run.stamps)))


@functools.lru_cache(maxsize=1)
def whole_runs() -> tuple[Estimate, ...]:
    """First to last capture of every run, family and q."""
    return tuple(e for run in runs() for family in FAMILIES
                 for e in estimates(run, family, [(0, len(run.stamps) - 1)]))


# --- markdown --------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    """Milliseconds to 3 significant figures (µs precision below 1 ms)."""
    ms = seconds * 1000
    if ms == 0:
        return "0"
    if abs(ms) >= 100:
        return f"{ms:.0f}"
    if abs(ms) >= 1:
        return f"{ms:.3g}"
    return f"{ms:.3f}"


def _relative(errors: Sequence[float]) -> str:
    worst = max(errors)
    return "inf" if math.isinf(worst) else f"{worst * 100:,.3g} %" if worst < 10 else f"{worst * 100:,.0f} %"


def _relative_error(estimate: float, exact: float) -> float:
    error = abs(estimate - exact)
    return error / exact if exact > 0 else (0.0 if error == 0 else math.inf)


def _errors(chosen: Sequence[Estimate]) -> tuple[list[float], list[float]]:
    return [abs(e.promql - e.exact) for e in chosen], [abs(e.bounded - e.exact) for e in chosen]


def window_table(windows: Sequence[Estimate] | None = None) -> str:
    """Per family and q, over the sliding 60 s windows of every run: PromQL's error -> the bounded one's."""
    windows = all_windows() if windows is None else windows
    rows = ["| histogram | q | windows | bounds bite | median abs. error | worst abs. error | worst rel. error |",
            "|---|---|---|---|---|---|---|"]
    for family in FAMILIES:
        for q in QUANTILES:
            chosen = [e for e in windows if e.family == family.name and e.q == q]
            if not chosen:
                continue
            promql, bounded = _errors(chosen)
            bite = sum(e.bites for e in chosen) / len(chosen)
            rows.append(f"| {family.name} | {q:g} | {len(chosen)} | {bite * 100:.0f} % "
                        f"| {_ms(statistics.median(promql))} → {_ms(statistics.median(bounded))} ms "
                        f"| {_ms(max(promql))} → {_ms(max(bounded))} ms "
                        f"| {_relative([_relative_error(e.promql, e.exact) for e in chosen])} → "
                        f"{_relative([_relative_error(e.bounded, e.exact) for e in chosen])} |")
    return "\n".join(rows) + "\n"


def bite_table(windows: Sequence[Estimate] | None = None) -> str:
    """Where the bounds bite: per run, family and q, over the windows where the bounded estimate differs."""
    windows = all_windows() if windows is None else windows
    rows = ["| run | histogram | q | bitten windows | exact (median) | PromQL (median) | bounded (median) "
            "| median abs. error |", "|---|---|---|---|---|---|---|---|"]
    for run in RUN_ORDER:
        for family in FAMILIES:
            for q in QUANTILES:
                chosen = [e for e in windows if e.run == run and e.family == family.name and e.q == q]
                bitten = [e for e in chosen if e.bites]
                if not bitten:
                    continue
                promql, bounded = _errors(bitten)
                rows.append(f"| {run} | {family.name} | {q:g} | {len(bitten)}/{len(chosen)} "
                            f"| {_ms(statistics.median(e.exact for e in bitten))} ms "
                            f"| {_ms(statistics.median(e.promql for e in bitten))} ms "
                            f"| {_ms(statistics.median(e.bounded for e in bitten))} ms "
                            f"| {_ms(statistics.median(promql))} → {_ms(statistics.median(bounded))} ms |")
    return "\n".join(rows) + "\n"


def run_table(whole: Sequence[Estimate] | None = None) -> str:
    """Per run and family, the whole run: exact, PromQL and bounded p50 and p99."""
    whole = whole_runs() if whole is None else whole
    rows = ["| run | histogram | n | exact p50 | PromQL p50 | bounded p50 | exact p99 | PromQL p99 | bounded p99 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for run in RUN_ORDER:
        for family in FAMILIES:
            by_q = {e.q: e for e in whole if e.run == run and e.family == family.name}
            if 0.5 not in by_q or 0.99 not in by_q:
                continue
            p50, p99 = by_q[0.5], by_q[0.99]
            rows.append(f"| {run} | {family.name} | {p50.observations} | {_ms(p50.exact)} | {_ms(p50.promql)} "
                        f"| {_ms(p50.bounded)} | {_ms(p99.exact)} | {_ms(p99.promql)} | {_ms(p99.bounded)} |")
    return "\n".join(rows) + "\n"


# --- whose latency: the client's view against the server's ----------------------------------------------


@dataclass(frozen=True)
class Paired:
    """Per-request pairs of two views of one request, matched by start time."""

    label: str
    differences: tuple[float, ...]  # later view minus earlier view, seconds
    inconsistent: int  # pairs where the outer interval does not contain the inner one (should be 0)


def _starts(run: TruthRun, code: str) -> list[tuple[float, float, float]]:
    """(start on the monotonic clock, duration, end) of each observation of ``code``: it was observed
    when it ended, so it started ``value`` earlier."""
    return sorted((run.t0 + t - v, v, run.t0 + t) for v, t in zip(run.values.get(code, ()), run.times.get(code, ()),
                                                                   strict=True))


def _client(run: TruthRun, key: str) -> list[tuple[float, float, float]]:
    """(start, duration, end) per successful client request, on the same clock (perf_counter = monotonic)."""
    out = []
    for result in run.bench:
        for start, value, error in zip(result["start_times"], result[key], result["errors"], strict=True):
            if not error:
                out.append((start, value, start + value))
    return sorted(out)


TIE_SECONDS = 0.005  # requests sent closer together than this are paired by when they ended
PAIR_SLACK = 0.002  # the server observes a latency a little after its clock stopped


def _in_end_order(items: list[tuple[float, float, float]], groups: list[range]) -> list[tuple[float, float, float]]:
    return [item for group in groups for item in sorted(items[group.start:group.stop], key=lambda x: x[2])]


def pair(label: str, outer: list[tuple[float, float, float]], inner: list[tuple[float, float, float]]) -> Paired:
    """Pair requests (start, duration, end) in start order; requests whose ``outer`` starts lie within
    TIE_SECONDS of each other (a burst sends many at once) are paired in end order instead. ``outer``
    should contain ``inner``: start no later, end no earlier (PAIR_SLACK allowed); a pair that does not
    counts as inconsistent, and the count is reported."""
    if len(outer) != len(inner):
        raise ValueError(f"{label}: {len(outer)} against {len(inner)} requests cannot be paired")
    groups: list[range] = []
    begin = 0
    for k in range(1, len(outer) + 1):
        if k == len(outer) or outer[k][0] - outer[k - 1][0] > TIE_SECONDS:
            groups.append(range(begin, k))
            begin = k
    differences = []
    inconsistent = 0
    for (o_start, o_value, o_end), (i_start, i_value, i_end) in zip(
            _in_end_order(outer, groups), _in_end_order(inner, groups), strict=True):
        differences.append(o_value - i_value)
        if i_start < o_start - PAIR_SLACK or i_end > o_end + PAIR_SLACK:
            inconsistent += 1
    return Paired(label, tuple(differences), inconsistent)


def views(run: TruthRun) -> list[Paired]:
    return [
        pair("client TTFT - vLLM TTFT", _client(run, "ttfts"), _starts(run, "t")),
        pair("client e2e - vLLM e2e", _client(run, "latencies"), _starts(run, "e")),
        pair("server HTTP duration - vLLM e2e", _starts(run, HTTP_CODE), _starts(run, "e")),
    ]


def views_table() -> str:
    rows = ["| run | difference (per request) | requests | median | p90 | p99 | max | pairs out of order |",
            "|---|---|---|---|---|---|---|---|"]
    for run in runs():
        for paired in views(run):
            ordered = sorted(paired.differences)
            rows.append(f"| {run.name} | {paired.label} | {len(ordered)} | {_ms(exact_quantile(ordered, 0.5))} ms "
                        f"| {_ms(exact_quantile(ordered, 0.9))} ms | {_ms(exact_quantile(ordered, 0.99))} ms "
                        f"| {_ms(ordered[-1])} ms | {paired.inconsistent} |")
    return "\n".join(rows) + "\n"


BLOCKS = {"accuracy-windows": window_table, "accuracy-bite": bite_table, "accuracy-runs": run_table,
          "accuracy-views": views_table}


def block(text: str, name: str) -> str | None:
    match = re.search(rf"<!-- {name}:start[^>]*-->\n(.*?)<!-- {name}:end -->", text, re.S)
    return match.group(1) if match else None


def write(document: Path = DOC) -> bool:
    """Rewrite the generated blocks of ``document``; True when it changed."""
    text = document.read_text(encoding="utf-8")
    updated = text
    for name, render in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {name}:start[^>]*-->\n)(.*?)(<!-- {name}:end -->)", re.S)
        match = pattern.search(updated)
        if match is None:
            raise SystemExit(f"{document.name} has no {name} block")
        updated = updated[:match.start(2)] + render() + updated[match.end(2):]
    if updated != text:
        document.write_text(updated, encoding="utf-8")
    return updated != text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the blocks in docs/accuracy.md")
    args = parser.parse_args(argv)
    if args.write:
        print("updated docs/accuracy.md" if write() else "docs/accuracy.md is up to date")
        return 0
    for name, render in BLOCKS.items():
        print(f"<!-- {name} -->\n{render()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
