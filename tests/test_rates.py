"""Counter increases/rates and histogram increases, checked against independent computations.

The reset rule is PromQL's (prometheus/prometheus ``promql/functions.go``, ``extrapolatedRate``):
a lower value means the counter restarted from zero. No extrapolation: the window is our
own samples.
"""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exporter.derive.rates import counter_increase, counter_rate, histogram_increase
from exporter.samples import Histogram

INF = math.inf


def sum_of_steps(values: list[float]) -> float:
    """Independent increase: add each step up, or the new value itself after a drop."""
    total = 0.0
    for i in range(1, len(values)):
        step = values[i] - values[i - 1]
        total += step if step >= 0 else values[i]
    return total


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 10_000).map(float), max_size=30))
def test_counter_increase_is_the_sum_of_positive_steps(values: list[float]) -> None:
    # integer-valued floats: both computations are exact, whatever the order of additions
    assert counter_increase(values) == sum_of_steps(values)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 100), st.none() | st.floats(0.0, 1.0, exclude_max=True)),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 1000),
)
def test_counter_increase_recovers_true_increments_across_restarts(
    steps: list[tuple[int, float | None]], start: int
) -> None:
    # Simulate a counter: between samples it gains `inc`, or (restart given as a fraction)
    # restarts from 0 and gains a fraction of its old value, so that the restart is visible
    # as a drop (PromQL cannot see a restart that ends at or above the previous value).
    values, value, true_increase = [float(start)], start, 0
    for inc, restart in steps:
        if restart is not None and value > 0:
            gained = math.floor(value * restart)  # < value
            value = gained
        else:
            gained = inc
            value += inc
        values.append(float(value))
        true_increase += gained
    assert counter_increase(values) == true_increase


def test_counter_increase_worked_example() -> None:
    # 10 -> 15 (+5) -> 3 (reset: +3) -> 8 (+5) -> 2 (reset: +2) -> 2 (+0) -> 0 (reset: +0)
    assert counter_increase([10, 15, 3, 8, 2, 2, 0]) == 15
    # PromQL's form: last - first + value before each drop = 0 - 10 + (15 + 8 + 2) = 15
    assert counter_increase([]) == 0.0
    assert counter_increase([7]) == 0.0


def test_counter_rate() -> None:
    # increase 15 over 60 s, exactly: no extrapolation to any window edge
    assert counter_rate([0, 10, 20, 30, 40, 50, 60], [10, 15, 3, 8, 2, 2, 0]) == pytest.approx(15 / 60)
    assert counter_rate([100.0, 115.0], [1.0, 4.0]) == pytest.approx(0.2)
    assert counter_rate([], []) is None
    assert counter_rate([5.0], [1.0]) is None
    assert counter_rate([5.0, 5.0], [1.0, 2.0]) is None  # zero span
    assert counter_rate([6.0, 5.0], [1.0, 2.0]) is None  # negative span
    with pytest.raises(ValueError, match="one timestamp per value"):
        counter_rate([1.0, 2.0], [1.0])


# ---------------------------------------------------------------------------------------------
# histogram_increase
# ---------------------------------------------------------------------------------------------


def bucketed(observations: list[float], bounds: tuple[float, ...]) -> Histogram:
    """An independent classic histogram of raw observations (le is inclusive)."""
    return Histogram(
        bounds=bounds,
        cumulative_counts=tuple(float(sum(1 for x in observations if x <= le)) for le in bounds),
        sum=float(sum(observations)),
        count=float(len(observations)),
    )


def assert_same_histogram(got: Histogram | None, want: Histogram) -> None:
    assert got is not None
    assert got.bounds == want.bounds
    assert got.cumulative_counts == pytest.approx(want.cumulative_counts)
    assert got.count == pytest.approx(want.count)
    assert got.sum == pytest.approx(want.sum, abs=1e-9)


B = (0.1, 0.5, 1.0, INF)


def test_fewer_than_two_samples() -> None:
    assert histogram_increase([]) is None
    assert histogram_increase([bucketed([0.2], B)]) is None


def test_no_reset_is_last_minus_first() -> None:
    before = [0.05, 0.3, 2.0]
    during = [0.2, 0.7, 0.7, 5.0]
    snaps = [bucketed(before, B), bucketed(before + during[:1], B), bucketed(before + during, B)]
    assert_same_histogram(histogram_increase(snaps), bucketed(during, B))


def test_reset_in_the_middle() -> None:
    # s0 = {0.05, 0.3, 2.0}; s1 adds 0.2; the engine restarts; s2 = {0.7}; s3 adds 0.05, 5.0.
    s0 = bucketed([0.05, 0.3, 2.0], B)
    s1 = bucketed([0.05, 0.3, 2.0, 0.2], B)
    s2 = bucketed([0.7], B)
    s3 = bucketed([0.7, 0.05, 5.0], B)
    got = histogram_increase([s0, s1, s2, s3])
    # increase = (s1 - s0) + s2 + (s3 - s2) = {0.2} + {0.7} + {0.05, 5.0}
    assert_same_histogram(got, bucketed([0.2, 0.7, 0.05, 5.0], B))
    assert got is not None
    assert got.cumulative_counts == (1.0, 2.0, 3.0, 4.0)


def test_a_single_lower_bucket_is_a_reset() -> None:
    # count went up (3 -> 4) but le=0.1 went down (2 -> 0): a restart, s1 counts in full
    s0 = bucketed([0.05, 0.05, 0.3], B)
    s1 = bucketed([0.3, 0.7, 0.7, 2.0], B)
    assert_same_histogram(histogram_increase([s0, s1]), s1)


def test_lower_sum_alone_is_not_a_reset() -> None:
    # a negative observation lowers the sum; buckets and count only grow
    bounds = (0.0, 1.0, INF)
    s0 = bucketed([0.5], bounds)
    s1 = bucketed([0.5, -3.0], bounds)
    assert_same_histogram(histogram_increase([s0, s1]), bucketed([-3.0], bounds))


def test_bounds_change_drops_the_old_layout() -> None:
    old, new = (0.1, 1.0, INF), (0.05, 0.1, 0.5, 1.0, INF)
    s0 = bucketed([0.3], old)
    s1 = bucketed([0.3, 0.09, 4.0], old)  # +{0.09, 4.0}: in the old layout, dropped below
    s2 = bucketed([0.2], new)  # upgraded engine, restarted with the new buckets
    s3 = bucketed([0.2, 0.04, 0.6], new)
    got = histogram_increase([s0, s1, s2, s3])
    # newest layout; counts what it can place in it: s2 in full plus s3 - s2
    assert_same_histogram(got, bucketed([0.2, 0.04, 0.6], new))


def test_output_is_cumulative_monotone_and_non_negative() -> None:
    # inconsistent input (a racy scrape: le=0.5 read before le=0.1 was updated) gives
    # deltas [2, 1, 3, 3]; the result takes the envelope [2, 2, 3, 3]
    s0 = Histogram(bounds=B, cumulative_counts=(0, 1, 1, 1), sum=0.5, count=1)
    s1 = Histogram(bounds=B, cumulative_counts=(2, 2, 4, 4), sum=1.0, count=4)
    got = histogram_increase([s0, s1])
    assert got is not None
    assert got.cumulative_counts == (2.0, 2.0, 3.0, 3.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 3), st.integers(0, 2)),
        min_size=2,
        max_size=4,
    ).map(lambda rows: [Histogram(B, tuple(float(c) for c in _cum(r)), 1.0, float(sum(r))) for r in rows])
)
def test_arbitrary_sequences_give_valid_histograms(hists: list[Histogram]) -> None:
    got = histogram_increase(hists)
    assert got is not None
    cc = got.cumulative_counts
    assert all(c >= 0 for c in cc)
    assert all(a <= b for a, b in pairwise(cc))
    assert got.count >= 0


def _cum(per_bucket: tuple[int, ...]) -> list[int]:
    out, acc = [], 0
    for c in per_bucket:
        acc += c
        out.append(acc)
    return out


# Equivalence with bucketing the raw observations made inside the window. An engine observes
# a stream; we scrape it several times. It may restart (losing everything) or be upgraded to a
# new layout right after a scrape, before it observes anything else.
_OBS = st.one_of(st.sampled_from([0.1, 0.5, 1.0, 2.0]), st.floats(0.0, 3.0, allow_subnormal=False))
_LAYOUTS = [(0.1, 0.5, 1.0, INF), (0.25, 0.5, 2.0, INF)]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(_OBS, max_size=8),  # observed before the first scrape
    st.lists(
        st.tuples(st.lists(_OBS, max_size=6), st.sampled_from(["none", "restart", "upgrade"])), min_size=1, max_size=5
    ),
)
def test_equals_bucketing_the_observations_in_the_window(
    before: list[float], intervals: list[tuple[list[float], str]]
) -> None:
    layout = 0
    engine = list(before)  # what the running engine has observed since it started
    snaps = [bucketed(engine, _LAYOUTS[layout])]
    window: list[float] = []  # observations between the first and the last scrape
    for obs, event in intervals:
        if event != "none":
            engine = []
            if event == "upgrade":
                layout = 1 - layout
                window = []  # earlier increments were in the old layout: dropped
        engine.extend(obs)
        window.extend(obs)
        snap = bucketed(engine, _LAYOUTS[layout])
        if event == "restart":
            # PromQL sees a restart only as a drop in the count or some bucket
            prev = snaps[-1]
            assume(
                snap.count < prev.count
                or any(c < p for c, p in zip(snap.cumulative_counts, prev.cumulative_counts, strict=True))
            )
        snaps.append(snap)
    assert_same_histogram(histogram_increase(snaps), bucketed(window, _LAYOUTS[layout]))
