"""Latency quantiles against the real vLLM server's own observations (issue 14; tests/fixtures/truth/).

Every run holds the /metrics captures (one a second) and every observation the server made into its
request histograms. For every latency histogram infermeter exports and q in 0.5, 0.9, 0.95, 0.99, over
every sliding 60 s window of captures and over each whole run:

* the exact quantile of the server's observations lies in ``quantile_bounds`` of the window's buckets;
* ``bounded_quantiles`` is never further from it than PromQL's ``histogram_quantile``;
* it is within the bucket resolution, and far better where vLLM's first bucket holds everything
  (queue time: (0, 0.3 s]).

The stored observations are rounded to 1 µs (STORED_HALF_STEP): a stored value is within 0.5 µs of what
the server observed, so so is every exact quantile computed from them; that is the only tolerance used.
"""

from __future__ import annotations

import bisect
import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

import pytest

from exporter.samples import Histogram
from tests.fixtures.truth.record_truth import HOOK
from tools.accuracy_table import (
    BLOCKS,
    DOC,
    FAMILIES,
    QUANTILES,
    RUN_ORDER,
    STORED_HALF_STEP,
    TRUTH,
    Estimate,
    TruthRun,
    all_windows,
    block,
    runs,
    views,
    whole_runs,
)

TOLERANCE = STORED_HALF_STEP
# Windows where every observation lies in vLLM's first queue-time bucket (0, 0.3 s]: the bounded estimate
# must be at least this much closer to the truth than PromQL's, in the median window.
FAR_BETTER = 100.0


def _estimates() -> tuple[Estimate, ...]:
    return (*all_windows(), *whole_runs())


def _describe(e: Estimate) -> str:
    return (f"{e.run} {e.family} q={e.q} captures {e.start}-{e.end} (n={e.observations}): exact {e.exact!r} "
            f"(nearest rank {e.exact_nearest!r}), bounds [{e.lower!r}, {e.upper!r}], PromQL {e.promql!r}, "
            f"bounded {e.bounded!r}")


def test_every_run_is_recorded() -> None:
    assert tuple(run.name for run in runs()) == RUN_ORDER
    for run in runs():
        assert len(run.capture_times) == len(run.stamps) > 120, run.name  # every capture's collect is found
        assert run.bench, run.name


def _check_prefix(run: TruthRun, code: str, hists: Sequence[Histogram]) -> list[str]:
    """Each capture against the observations it includes (the first ``_count`` ones, in order): per bucket
    the count equals the stored values' up to those within 0.5 µs of a bound, and the sum agrees to
    0.5 µs an observation."""
    values = run.values.get(code, ())
    bounds = hists[0].bounds
    strict = [0] * len(bounds)  # observations surely <= bound
    loose = [0] * len(bounds)  # observations possibly <= bound (within the stored precision)
    total = 0.0
    seen = 0
    problems = []
    for index, h in enumerate(hists):
        count = round(h.count)
        if count > len(values) or count < seen:
            problems.append(f"capture {index}: _count {count} but {len(values)} observations ({seen} before)")
            break
        for value in values[seen:count]:
            strict[bisect.bisect_left(bounds, value + TOLERANCE)] += 1
            loose[bisect.bisect_left(bounds, value - TOLERANCE)] += 1
            total += value
        seen = count
        cumulative_strict = list(_accumulate(strict))
        cumulative_loose = list(_accumulate(loose))
        for k, bound in enumerate(bounds):
            if not cumulative_strict[k] <= h.cumulative_counts[k] <= cumulative_loose[k]:
                problems.append(f"capture {index}: bucket le={bound} holds {h.cumulative_counts[k]}, the "
                                f"observations {cumulative_strict[k]}..{cumulative_loose[k]}")
        if abs(total - h.sum) > count * TOLERANCE + 1e-9 * max(abs(h.sum), 1.0):
            problems.append(f"capture {index}: _sum {h.sum!r}, the observations add up to {total!r}")
    return problems


def _accumulate(counts: Sequence[int]) -> list[int]:
    out, running = [], 0
    for count in counts:
        running += count
        out.append(running)
    return out


@pytest.mark.parametrize("name", RUN_ORDER)
def test_observations_are_what_every_capture_counted(name: str) -> None:
    run = next(r for r in runs() if r.name == name)
    for family in FAMILIES:
        problems = _check_prefix(run, family.code, run.histograms[family.name])
        assert not problems, f"{name} {family.vllm}: " + "; ".join(problems[:5])
        assert run.observed(family, len(run.stamps) - 1) > 0, (name, family.name)


def _max_num_seqs(run: TruthRun) -> int:
    """The server's --max-num-seqs (the last one given wins; start_server.sh gives 8)."""
    flags = json.loads((run.folder / "meta.json").read_text(encoding="utf-8"))["server_flags"]
    given = [int(flags[k + 1]) for k, flag in enumerate(flags) if flag == "--max-num-seqs"]
    return given[-1] if given else 8


@pytest.mark.parametrize("name", RUN_ORDER)
def test_matching_by_time_agrees_with_matching_by_count(name: str) -> None:
    """The server logged when each capture's collect began: the observations made before it are the ones
    the capture counted, except that vLLM serves /metrics from a worker thread, so a collect can also
    include the observations of one engine step recorded while it read (at most one per running request,
    i.e. --max-num-seqs), on a rare capture."""
    run = next(r for r in runs() if r.name == name)
    for family in FAMILIES:
        times = run.times[family.code]
        offsets = [bisect.bisect_left(times, stamp) - run.observed(family, k)
                   for k, stamp in enumerate(run.capture_times)]
        assert all(-_max_num_seqs(run) <= offset <= 0 for offset in offsets), (name, family.name, offsets)
        assert sum(offset != 0 for offset in offsets) <= len(offsets) // 20, (name, family.name, offsets)


def test_the_exact_quantile_lies_in_the_bounds() -> None:
    outside = []
    for e in _estimates():
        if e.lower is None or e.upper is None:
            outside.append("no bounds: " + _describe(e))
            continue
        for exact in (e.exact, e.exact_nearest):
            if not e.lower - TOLERANCE <= exact <= e.upper + TOLERANCE:
                outside.append(_describe(e))
    assert not outside, f"{len(outside)} outside the bounds; " + "; ".join(outside[:5])


def test_bounded_is_never_further_from_the_truth_than_promql() -> None:
    worse = [_describe(e) for e in _estimates() for exact in (e.exact, e.exact_nearest)
             if abs(e.bounded - exact) > abs(e.promql - exact) + 2 * TOLERANCE]
    assert not worse, f"{len(worse)} further; " + "; ".join(worse[:5])
    assert all(e.lower is not None and e.upper is not None and e.lower <= e.bounded <= e.upper
               for e in _estimates())


def test_bounded_is_within_the_bucket_resolution() -> None:
    """The nearest-rank value and PromQL's both lie in the bucket where the cumulative count first reaches
    q n; clamping into the bounds keeps the estimate there."""
    wide = [_describe(e) for e in _estimates() if abs(e.bounded - e.exact_nearest) > e.bucket_width + TOLERANCE]
    assert not wide, "; ".join(wide[:5])


def test_bounds_bite_on_queue_time_and_are_far_better_there() -> None:
    """Where vLLM's first queue-time bucket (0, 0.3 s] holds a whole window, PromQL reads 0.3 q s whatever
    the truth (150 ms at the median); there the bounds bite in every window, and the bounded estimate is at
    least FAR_BETTER times closer to the truth in the median window, at every q."""
    for q in QUANTILES:
        first_bucket = [e for e in all_windows() if e.family == "queue_time" and e.q == q and e.in_first_bucket]
        assert len(first_bucket) >= 60, q  # the steady run: a queue that never waits
        assert all(e.bites for e in first_bucket), q
        ratio = statistics.median(abs(e.promql - e.exact) / max(abs(e.bounded - e.exact), TOLERANCE)
                                  for e in first_bucket)
        assert ratio >= FAR_BETTER, (q, ratio)


def test_client_and_server_views_pair_up() -> None:
    """Client TTFT and e2e contain the server's (start no later, end no earlier), request by request."""
    for run in runs():
        for paired in views(run):
            assert paired.inconsistent <= len(paired.differences) // 100, (run.name, paired.label, paired.inconsistent)
            assert statistics.median(paired.differences) > 0, (run.name, paired.label)


def test_the_docs_tables_are_generated_from_the_fixtures() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name, render in BLOCKS.items():
        assert block(text, name) == render(), "run: python -m tools.accuracy_table --write"


def test_the_readme_quotes_the_recorded_hook() -> None:
    readme = (TRUTH / "README.md").read_text(encoding="utf-8")
    quoted = re.search(r"```python\n(\"\"\"Record every prometheus_client.*?)```", readme, re.S)
    assert quoted is not None and quoted.group(1) == HOOK


def test_fixtures_stay_small() -> None:
    """A budget for the checked-in truth (1.76 MB for the four runs as recorded)."""
    total = sum(p.stat().st_size for p in Path(TRUTH).rglob("*") if p.is_file())
    assert total < 3_000_000, total
