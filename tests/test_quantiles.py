"""histogram_quantile against an independent reference, raw observations and edge cases.

The reference semantics are PromQL ``histogram_quantile`` on classic buckets
(prometheus/prometheus ``promql/quantile.go``, ``BucketQuantile``); the worked examples with
Prometheus' own expected values come from ``promql/promqltest/testdata/histograms.test``.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exporter.derive.quantiles import bounded_quantiles, histogram_quantile, quantile_bounds, quantiles
from exporter.samples import Histogram

INF = math.inf


# ---------------------------------------------------------------------------------------------
# (a) An independent, deliberately plain reference, written from the algorithm's description:
#     merge equal bounds, sort, require +Inf, flatten float-noise differences and take the
#     envelope, then walk the buckets linearly (no binary search) to the first one whose
#     cumulative count reaches rank = q * total, and interpolate.
# ---------------------------------------------------------------------------------------------


def _noise(a: float, b: float) -> bool:
    """|a - b| is float noise relative to |a| + |b| (Prometheus' 1e-12 tolerance)."""
    tiny = sys.float_info.min
    if a == 0 or b == 0 or abs(a) + abs(b) < tiny:
        return abs(a - b) < 1e-12 * tiny
    return abs(a - b) / (abs(a) + abs(b)) < 1e-12


def reference_quantile(q: float, bounds: list[float], counts: list[float]) -> float:
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -INF
    if q > 1:
        return INF
    per_bound: dict[float, float] = {}
    for le, c in zip(bounds, counts, strict=True):
        per_bound[le] = per_bound.get(le, 0.0) + c
    les = sorted(per_bound)
    if not les or les[-1] != INF:
        return math.nan
    cum = [per_bound[le] for le in les]
    level = cum[0]
    for i in range(1, len(cum)):
        if cum[i] != level and (_noise(level, cum[i]) or cum[i] < level):
            cum[i] = level  # noise or a decrease: hold the level
        else:
            level = cum[i]
    if len(les) < 2 or cum[-1] == 0:
        return math.nan
    rank = q * cum[-1]
    idx = len(les) - 1
    for i in range(len(les) - 1):
        if cum[i] >= rank:
            idx = i
            break
    if idx == len(les) - 1:  # the +Inf bucket: the highest finite bound
        return les[-2]
    if idx == 0:
        if les[0] <= 0:
            return les[0]
        lower, below = 0.0, 0.0
    else:
        lower, below = les[idx - 1], cum[idx - 1]
    inside = cum[idx] - below
    if inside == 0:
        # Only when rank == 0 (q == 0) and the lowest bucket is empty: Go's 0/0 is NaN.
        return math.nan
    return lower + (les[idx] - lower) * ((rank - below) / inside)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


_FINITE_BOUNDS = st.sampled_from([-5.0, -1.0, -0.25, 0.0, 0.001, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 1e4])


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    """Bucket layouts with counts: usually valid, sometimes unsorted, duplicated, broken."""
    finite = sorted(draw(st.sets(_FINITE_BOUNDS, max_size=8)))
    bounds = [*finite, INF] if draw(st.integers(0, 9)) else finite  # 10% lack +Inf
    kind = draw(st.sampled_from(["cumulative", "cumulative", "rates", "non_monotonic", "zero"]))
    n = len(bounds)
    if kind == "zero":
        counts = [0.0] * n
    elif kind == "non_monotonic":
        counts = [float(c) for c in draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))]
    else:
        steps = draw(st.lists(st.integers(0, 30), min_size=n, max_size=n))
        acc, counts = 0, []
        for s in steps:
            acc += s
            counts.append(float(acc))
        if kind == "rates":  # per-second rates over a 5-minute window, as rate() would give
            counts = [c / 300.0 for c in counts]
    duplicate = draw(st.booleans())
    if bounds and duplicate:  # a duplicate bound with its own count
        j = draw(st.integers(0, n - 1))
        bounds.append(bounds[j])
        counts.append(float(draw(st.integers(0, 5))))
    order = draw(st.permutations(range(len(bounds))))  # order must not matter
    return [bounds[i] for i in order], [counts[i] for i in order]


_QS = st.one_of(
    st.floats(0.0, 1.0),
    st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0, -0.1, 1.1, math.nan]),
)


@settings(max_examples=120, deadline=None)
@given(layouts(), _QS)
def test_matches_independent_reference(layout: tuple[list[float], list[float]], q: float) -> None:
    bounds, counts = layout
    assert _same(histogram_quantile(q, bounds, counts), reference_quantile(q, bounds, counts))


# ---------------------------------------------------------------------------------------------
# (b) Raw observations: bucket them and compare with numpy's empirical quantile.
#     With method="inverted_cdf", numpy returns x_(k), the k-th smallest observation, where
#     k = ceil(q * n). histogram_quantile picks the first bucket b with C[b] >= q*n; C[b] is an
#     integer, so C[b] >= k, i.e. x_(k) <= le[b]; and C[b-1] < q*n <= k, i.e. x_(k) > le[b-1].
#     So numpy's value lies in (le[b-1], le[b]] and ours, interpolated, in [le[b-1], le[b]]
#     (lowest bucket: [0, le[0]]); in the +Inf bucket ours is le[-2] and numpy's is above it.
# ---------------------------------------------------------------------------------------------

_POSITIVE_BOUNDS = st.sampled_from([0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0])


def bucket(observations: list[float], bounds: list[float]) -> list[float]:
    """Cumulative counts: how many observations are <= each upper bound (le is inclusive)."""
    return [float(sum(1 for x in observations if x <= le)) for le in bounds]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_POSITIVE_BOUNDS, min_size=1, max_size=7, unique=True).map(sorted),
    st.data(),
    st.floats(0.0, 1.0, exclude_min=True),
)
def test_lies_in_the_bucket_of_the_empirical_quantile(finite: list[float], data: st.DataObject, q: float) -> None:
    bounds = [*finite, INF]
    # Observations drawn both from the bounds themselves (ties: le is inclusive) and freely.
    obs = data.draw(
        st.lists(
            st.one_of(st.sampled_from(finite), st.floats(0.0, 20.0, allow_subnormal=False)),
            min_size=1,
            max_size=60,
        )
    )
    n = len(obs)
    # Keep clear of q*n landing a hair off an integer, where rounding decides k.
    assume(q * n == round(q * n) or abs(q * n - round(q * n)) > 1e-9)
    ours = histogram_quantile(q, bounds, bucket(obs, bounds))
    empirical = float(np.quantile(np.array(obs), q, method="inverted_cdf"))
    b = next(i for i, le in enumerate(bounds) if empirical <= le)
    if b == len(bounds) - 1:
        assert empirical > bounds[-2]
        assert ours == bounds[-2]
    else:
        lower = 0.0 if b == 0 else bounds[b - 1]
        assert lower <= ours <= bounds[b]


def test_worked_example_from_raw_observations() -> None:
    obs = [0.05, 0.15, 0.15, 0.3, 0.7, 2.0, 5.0, 12.0]  # n = 8
    bounds = [0.1, 0.5, 1.0, 10.0, INF]
    counts = bucket(obs, bounds)
    assert counts == [1, 4, 5, 7, 8]
    # q=0.5: rank = 0.5*8 = 4; first C >= 4 is le=0.5 (C=4); below it le=0.1 with C=1:
    #        0.1 + (0.5-0.1) * (4-1)/(4-1) = 0.5
    assert histogram_quantile(0.5, bounds, counts) == pytest.approx(0.5)
    # q=0.25: rank = 2; bucket le=0.5: 0.1 + 0.4 * (2-1)/3 = 0.1 + 0.4/3 = 0.23333...
    assert histogram_quantile(0.25, bounds, counts) == pytest.approx(0.1 + 0.4 / 3)
    # q=0.1: rank = 0.8; lowest bucket le=0.1 (C=1), interpolated from 0: 0.1 * 0.8/1 = 0.08
    assert histogram_quantile(0.1, bounds, counts) == pytest.approx(0.08)
    # q=0.8: rank = 6.4; bucket le=10 (C=7), below le=1 (C=5): 1 + 9 * (6.4-5)/2 = 7.3
    assert histogram_quantile(0.8, bounds, counts) == pytest.approx(7.3)
    # q=0.9: rank = 7.2 > C(le=10) = 7 -> +Inf bucket -> the second-highest bound, 10
    assert histogram_quantile(0.9, bounds, counts) == 10.0
    # numpy's inverted_cdf median is x_(ceil(0.5*8)) = x_(4) = 0.3, inside (0.1, 0.5] like ours.
    assert float(np.quantile(obs, 0.5, method="inverted_cdf")) == 0.3


# Prometheus' own expectations (promql/promqltest/testdata/histograms.test, at 50m, i.e. the
# series' 10th increment): testhistogram{start="positive"} and {start="negative"}.
POSITIVE = ([0.1, 0.2, 1.0, INF], [50.0, 70.0, 110.0, 120.0])
NEGATIVE = ([-0.2, -0.1, 0.3, INF], [10.0, 20.0, 20.0, 30.0])


@pytest.mark.parametrize(
    ("layout", "q", "expected"),
    [
        # rank 0: lowest bucket, interpolated from 0: 0 + 0.1 * 0/50 = 0
        (POSITIVE, 0.0, 0.0),
        # rank 24: lowest bucket: 0.1 * 24/50 = 0.048
        (POSITIVE, 0.2, 0.048),
        # rank 60: le=0.2 (C=70): 0.1 + 0.1 * (60-50)/20 = 0.15
        (POSITIVE, 0.5, 0.15),
        # rank 96: le=1 (C=110): 0.2 + 0.8 * (96-70)/40 = 0.72
        (POSITIVE, 0.8, 0.72),
        # rank 120 > 110: +Inf bucket -> 1
        (POSITIVE, 1.0, 1.0),
        # lowest bucket with le <= 0 returns its bound
        (NEGATIVE, 0.0, -0.2),
        (NEGATIVE, 0.2, -0.2),
        # rank 15: le=-0.1 (C=20): -0.2 + 0.1 * (15-10)/10 = -0.15
        (NEGATIVE, 0.5, -0.15),
        # rank 24 > 20: +Inf bucket -> 0.3
        (NEGATIVE, 0.8, 0.3),
        (NEGATIVE, 1.0, 0.3),
    ],
)
def test_prometheus_testdata(layout: tuple[list[float], list[float]], q: float, expected: float) -> None:
    assert histogram_quantile(q, *layout) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_non_monotonic_counts_are_fixed_up_like_prometheus() -> None:
    # histograms.test "nonmonotonic_bucket": [2, 1, 5, 4, 9, 8] x 10 -> envelope [20,20,50,50,90,90]
    bounds = [0.1, 1.0, 10.0, 100.0, 1000.0, INF]
    counts = [20.0, 10.0, 50.0, 40.0, 90.0, 80.0]
    # total 90. q=0.01: rank 0.9 -> 0.1 * 0.9/20 = 0.0045
    assert histogram_quantile(0.01, bounds, counts) == pytest.approx(0.0045)
    # q=0.5: rank 45 -> le=10: 1 + 9 * (45-20)/30 = 8.5
    assert histogram_quantile(0.5, bounds, counts) == pytest.approx(8.5)
    # q=0.99: rank 89.1 -> le=1000: 100 + 900 * (89.1-50)/40 = 979.75
    assert histogram_quantile(0.99, bounds, counts) == pytest.approx(979.75)


# ---------------------------------------------------------------------------------------------
# (c) Edge cases.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "expected"), [(-0.01, -INF), (-INF, -INF), (1.01, INF), (INF, INF)])
def test_q_outside_unit_interval(q: float, expected: float) -> None:
    assert histogram_quantile(q, *POSITIVE) == expected
    # checked before anything about the buckets, as in Prometheus
    assert histogram_quantile(q, [], []) == expected


def test_nan_q() -> None:
    assert math.isnan(histogram_quantile(math.nan, *POSITIVE))


def test_needs_a_plus_inf_bucket() -> None:
    assert math.isnan(histogram_quantile(0.5, [0.1, 0.2, 1.0], [5.0, 7.0, 11.0]))


def test_fewer_than_two_buckets() -> None:
    assert math.isnan(histogram_quantile(0.5, [INF], [10.0]))
    assert math.isnan(histogram_quantile(0.5, [], []))
    # two spellings of +Inf coalesce into one bucket (histograms.test "mixed", instance ins2)
    assert math.isnan(histogram_quantile(0.5, [INF, INF], [3.0, 4.0]))


def test_zero_observations() -> None:
    assert math.isnan(histogram_quantile(0.5, [0.1, 0.2, INF], [0.0, 0.0, 0.0]))


def test_q_zero_with_empty_lowest_bucket_is_nan_as_in_go() -> None:
    # rank 0 lands in the lowest (empty) bucket: 0 + 0.1 * (0/0) -> NaN in Go's float math.
    assert math.isnan(histogram_quantile(0.0, [0.1, 0.2, INF], [0.0, 4.0, 4.0]))


def test_lowest_bucket() -> None:
    # upper bound > 0: interpolate from 0 -> rank 2 of 4 in [0, 2]: 2 * 2/4 = 1
    assert histogram_quantile(0.5, [2.0, INF], [4.0, 4.0]) == 1.0
    # upper bound <= 0: the bound itself
    assert histogram_quantile(0.5, [0.0, INF], [4.0, 4.0]) == 0.0
    assert histogram_quantile(0.5, [-3.0, INF], [4.0, 4.0]) == -3.0
    # ... even when empty and q == 0 (no 0/0 interpolation happens for a bound <= 0)
    assert histogram_quantile(0.0, [0.0, 1.0, INF], [0.0, 2.0, 2.0]) == 0.0


def test_plus_inf_bucket_returns_second_highest_bound() -> None:
    assert histogram_quantile(0.99, [1.0, 5.0, INF], [1.0, 2.0, 100.0]) == 5.0


def test_unsorted_and_duplicated_bounds() -> None:
    # histograms.test "mixed_bucket": le 0.1, 0.2, 2e-1, 2.0e-1, +Inf, each +1 per 5m, so the
    # three 0.2 buckets coalesce: cumulative [r, 3r, 4r] with r = 1/300.
    r = 1 / 300
    bounds = [0.2, INF, 0.1, 0.2, 0.2]
    counts = [r, 4 * r, r, r, r]
    # q=0.5: rank 2r -> le=0.2 (3r): 0.1 + 0.1 * (2r - r)/(2r) = 0.15
    assert histogram_quantile(0.5, bounds, counts) == pytest.approx(0.15)
    assert histogram_quantile(0.75, bounds, counts) == pytest.approx(0.2)
    assert histogram_quantile(1.0, bounds, counts) == pytest.approx(0.2)


def test_float_noise_between_buckets_is_ignored() -> None:
    # le=2 is 1 above le=1 at 1e13: relative delta 5e-14 < 1e-12, so it is flattened to 1e13.
    bounds, counts = [1.0, 2.0, INF], [1e13, 1e13 + 1, 2e13]
    q = (1e13 + 0.5) / 2e13  # rank ~ 1e13 + 0.5: not reached by le=2 once flattened
    assert histogram_quantile(q, bounds, counts) == 2.0  # +Inf bucket, not 1.5
    # the same shape at a normal scale is a real increase: 1 + 1 * 0.5/1 = 1.5
    assert histogram_quantile(0.5, [1.0, 2.0, INF], [10.0, 11.0, 21.0]) == pytest.approx(1.5)


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="one cumulative count per bound"):
        histogram_quantile(0.5, [1.0, INF], [1.0])


def test_quantiles_convenience_omits_nan() -> None:
    h = Histogram(bounds=(0.1, 0.2, 1.0, INF), cumulative_counts=(50, 70, 110, 120), sum=1, count=120)
    out = quantiles([0.5, 0.8, math.nan, 1.5], h)
    assert out.keys() == {0.5, 0.8, 1.5}
    assert out[0.5] == pytest.approx(0.15)
    assert out[1.5] == INF
    empty = Histogram(bounds=(0.1, INF), cumulative_counts=(0, 0), sum=0, count=0)
    assert quantiles([0.5, 0.99], empty) == {}


# ---------------------------------------------------------------------------------------------
# (c) Quantiles held to the bounds the data implies (quantile_bounds, bounded_quantiles).
# ---------------------------------------------------------------------------------------------

VLLM_QUEUE_BOUNDS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                     240.0, 480.0, 960.0, 1920.0, 7680.0, INF]  # vllm/v1/metrics/loggers.py request_queue_time


def _histogram(values: list[float], bounds: list[float]) -> Histogram:
    counts = tuple(float(sum(1 for v in values if v <= b)) for b in bounds)
    return Histogram(tuple(bounds), counts, math.fsum(values), float(len(values)))


def _truths(values: list[float], q: float) -> tuple[float, float]:
    """numpy's linear interpolation (what vllm bench serve reports) and the nearest rank."""
    ordered = sorted(values)
    return float(np.percentile(values, q * 100)), ordered[max(math.ceil(q * len(values)), 1) - 1]


@settings(max_examples=400, deadline=None)
@given(values=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=60),
       bounds=st.lists(st.floats(0.001, 50, allow_nan=False), min_size=1, max_size=12, unique=True),
       q=st.sampled_from([0.5, 0.9, 0.95, 0.99]))
def test_the_true_quantile_lies_in_the_bounds_and_the_estimate_is_never_further(
        values: list[float], bounds: list[float], q: float) -> None:
    h = _histogram(values, [*sorted(bounds), INF])
    interval = quantile_bounds(q, h)
    promql = histogram_quantile(q, h.bounds, h.cumulative_counts)
    estimate = bounded_quantiles([q], h)[q]
    for truth in _truths(values, q):
        if interval is not None:
            low, high = interval
            assert low - 1e-9 * (1 + abs(low)) <= truth <= high + 1e-9 * (1 + abs(high))
        assert abs(estimate - truth) <= abs(promql - truth) + 1e-9 * (1 + abs(truth))


def test_a_wide_first_bucket_no_longer_reads_as_half_of_it() -> None:
    # 1,000 queue times of ~0.02 ms (what the issue saw on vLLM): all in (0, 0.3 s]; PromQL interpolates
    # the median to 0.3 / 2 = 150 ms. The median sits between the 500th and the 501st smallest (numpy
    # interpolates between them); the sum, 1,000 x 2e-5 = 0.02 s, allows the 501st at most 0.02 / 500 = 40 us
    # (the 500 values from it on are at least it, the others at least 0).
    values = [2e-5] * 1000
    h = _histogram(values, VLLM_QUEUE_BOUNDS)
    assert histogram_quantile(0.5, h.bounds, h.cumulative_counts) == pytest.approx(0.15)
    low, high = quantile_bounds(0.5, h) or (math.nan, math.nan)
    assert low == 0.0 and high == pytest.approx(0.02 / 500)
    bounded = bounded_quantiles([0.5, 0.99], h)
    assert bounded[0.5] == pytest.approx(0.02 / 500)
    # p99: between the 990th (nearest rank) and the 991st (numpy: 0.99 x 999 + 1 = 990.01); the 991st is at
    # most 0.02 / 10 = 2 ms, against PromQL's 0.99 x 0.3 = 297 ms
    assert bounded[0.99] == pytest.approx(0.02 / 10)


def test_where_the_bounds_do_not_bite_the_value_is_promqls_to_the_bit() -> None:
    # spread over many buckets, mean near the middle: interpolation stays inside every bound
    values = [0.05 * i for i in range(1, 200)]
    h = _histogram(values, [0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, INF])
    for q in (0.5, 0.9, 0.95, 0.99):
        assert bounded_quantiles([q], h)[q] == histogram_quantile(q, h.bounds, h.cumulative_counts)


def test_the_lower_bound_lifts_an_underestimate() -> None:
    # 10 values of 0.299 s in (0, 0.3]: interpolation reads p50 as 0.15 s, but the sum 2.99 s leaves the
    # 5 smallest (at most the median each) and 5 others (at most 0.3 each) 2.99 - 5 x 0.3 = 1.49 s: the
    # median is at least 1.49 / 5 = 0.298 s.
    h = _histogram([0.299] * 10, [0.3, 1.0, INF])
    low, _ = quantile_bounds(0.5, h) or (math.nan, math.nan)
    assert low == pytest.approx(0.298)
    assert bounded_quantiles([0.5], h)[0.5] == pytest.approx(0.298)


def test_no_bound_from_an_inconsistent_or_empty_histogram() -> None:
    assert quantile_bounds(0.5, Histogram((1.0, INF), (0.0, 0.0), 0.0, 0.0)) is None
    # a sum far above what the buckets allow (a broken engine): no bound, PromQL's value stays
    broken = Histogram((1.0, 2.0, INF), (5.0, 10.0, 10.0), 500.0, 10.0)
    assert quantile_bounds(0.5, broken) is None
    assert bounded_quantiles([0.5], broken)[0.5] == histogram_quantile(0.5, broken.bounds, broken.cumulative_counts)
