"""Quantiles of classic (cumulative-bucket) Prometheus histograms.

``histogram_quantile`` reproduces PromQL ``histogram_quantile`` on classic buckets as
implemented by ``BucketQuantile`` in prometheus/prometheus ``promql/quantile.go``
(together with its helpers ``coalesceBuckets`` and ``ensureMonotonicAndIgnoreSmallDeltas``,
and ``Equal`` in ``util/almost/almost.go``), so a value infermeter exports equals what
``histogram_quantile(q, ...)`` would compute in Prometheus from the same buckets.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence

from exporter.samples import Histogram

__all__ = ["bounded_quantiles", "histogram_quantile", "quantile_bounds", "quantiles", "rank_span"]

# promql/quantile.go ``smallDeltaTolerance``: relative differences between neighbouring
# cumulative counts below this are float noise and are flattened (in either direction).
SMALL_DELTA_TOLERANCE = 1e-12

# util/almost/almost.go ``minNormal``: the smallest positive normal float64.
_MIN_NORMAL = sys.float_info.min


def _almost_equal(a: float, b: float, epsilon: float) -> bool:
    """Relative float comparison, as ``almost.Equal`` (util/almost/almost.go).

    True when both are NaN, when equal, or when ``|a-b|`` is below ``epsilon`` times
    ``|a|+|b|`` (below ``epsilon`` times the smallest normal float when either is 0 or the
    sum is subnormal). Prometheus' staleness-marker NaN never occurs here.
    """
    if math.isnan(a) and math.isnan(b):
        return True
    if a == b:
        return True
    abs_sum = abs(a) + abs(b)
    diff = abs(a - b)
    if a == 0 or b == 0 or abs_sum < _MIN_NORMAL:
        return diff < epsilon * _MIN_NORMAL
    return diff / min(abs_sum, sys.float_info.max) < epsilon


def _div(a: float, b: float) -> float:
    """IEEE-754 division as in Go: ``x/0`` is ±Inf and ``0/0`` is NaN instead of raising."""
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _coalesce(bounds: Sequence[float], counts: Sequence[float]) -> tuple[list[float], list[float]]:
    """Sort buckets by upper bound and merge equal bounds by adding their counts.

    Mirrors the sort in ``BucketQuantile`` and ``coalesceBuckets`` (promql/quantile.go),
    which exist because the same bound can arrive spelled differently (``le="0.2"`` and
    ``le="2e-1"``). Bounds are assumed not to be NaN, as Prometheus assumes.
    """
    order = sorted(range(len(bounds)), key=lambda i: bounds[i])
    merged_bounds: list[float] = []
    merged_counts: list[float] = []
    for i in order:
        if merged_bounds and bounds[i] == merged_bounds[-1]:
            merged_counts[-1] += counts[i]
        else:
            merged_bounds.append(bounds[i])
            merged_counts.append(counts[i])
    return merged_bounds, merged_counts


def _ensure_monotonic(counts: list[float]) -> None:
    """Make cumulative counts non-decreasing in place, as ``ensureMonotonicAndIgnoreSmallDeltas``.

    Walking upwards with a running reference ``prev`` (initially the lowest bucket's count):
    a count numerically indistinguishable from ``prev`` (relative tolerance
    :data:`SMALL_DELTA_TOLERANCE`, either direction) is set to ``prev``; a count below
    ``prev`` is raised to ``prev`` (the "envelope"); only a genuine increase moves ``prev``.
    """
    prev = counts[0]
    for i in range(1, len(counts)):
        curr = counts[i]
        if curr == prev:
            continue
        if _almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) or curr < prev:
            counts[i] = prev
            continue
        prev = curr


def _search(n: int, counts: Sequence[float], rank: float) -> int:
    """Smallest ``i`` in ``[0, n)`` with ``counts[i] >= rank``, else ``n``.

    The same binary search as Go's ``sort.Search`` with the predicate ``BucketQuantile`` uses
    (which also fixes where a NaN count sends the search).
    """
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if not counts[mid] >= rank:
            lo = mid + 1
        else:
            hi = mid
    return lo


def histogram_quantile(q: float, bounds: Sequence[float], cumulative_counts: Sequence[float]) -> float:
    """The ``q``-quantile of a classic histogram, exactly as PromQL ``histogram_quantile``.

    ``bounds`` are the buckets' upper bounds (``le``), ``cumulative_counts`` the matching
    cumulative counts (typically per-window increases). Follows ``BucketQuantile`` in
    prometheus/prometheus ``promql/quantile.go``, in the same order:

    * ``q`` NaN → NaN; ``q < 0`` → ``-inf``; ``q > 1`` → ``+inf`` (checked before the buckets);
    * buckets are sorted by bound and equal bounds merged (counts added);
    * the highest bound must be ``+inf``, else NaN;
    * non-monotonic cumulative counts are fixed up: differences below a relative 1e-12 are
      ignored, and any decrease is replaced by the running maximum;
    * fewer than 2 buckets → NaN; zero observations (the +Inf bucket's count) → NaN;
    * ``rank = q * observations``; the bucket is the first (binary search, excluding +Inf)
      whose cumulative count is ``>= rank``, else the +Inf bucket;
    * in the +Inf bucket the upper bound of the second-highest bucket is returned;
    * in the lowest bucket, its upper bound is returned when it is ``<= 0``, otherwise the
      value is interpolated from a natural lower bound of 0;
    * otherwise linear interpolation between the bucket's lower and upper bound:
      ``start + (end - start) * (rank - count_below) / count_in_bucket``.

    Float arithmetic follows Go: e.g. ``q == 0`` with an empty lowest positive bucket gives
    ``0 * (0/0)`` = NaN, as Prometheus does. Raises ``ValueError`` when the two sequences
    differ in length.
    """
    if len(bounds) != len(cumulative_counts):
        raise ValueError("histogram_quantile needs one cumulative count per bound")
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if not bounds:
        return math.nan
    ubs, counts = _coalesce(bounds, [float(c) for c in cumulative_counts])
    if ubs[-1] != math.inf:
        return math.nan
    _ensure_monotonic(counts)
    n = len(counts)
    if n < 2:
        return math.nan
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = _search(n - 1, counts, rank)
    if b == n - 1:
        return ubs[n - 2]
    if b == 0 and ubs[0] <= 0:
        return ubs[0]
    start = 0.0
    end = ubs[b]
    count = counts[b]
    if b > 0:
        start = ubs[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return start + (end - start) * _div(rank, count)


def quantiles(qs: Sequence[float], h: Histogram) -> dict[float, float]:
    """``{q: histogram_quantile(q, h)}`` for each ``q``, leaving out those that come out NaN.

    NaN results (no observations, NaN ``q``) are omitted so the caller emits no series
    for them; ``±inf`` results (``q`` outside ``[0, 1]``) are kept.
    """
    out: dict[float, float] = {}
    for q in qs:
        value = histogram_quantile(q, h.bounds, h.cumulative_counts)
        if not math.isnan(value):
            out[q] = value
    return out


# --- quantiles held to the bounds the data implies (docs/accuracy.md, "The estimator") ----------------


def rank_span(q: float, observations: int) -> tuple[int, int]:
    """The 1-based order statistics a q-quantile of ``observations`` values can sit between, under every
    usual definition: nearest rank ``ceil(q n)`` and the linear interpolation of numpy, pandas and
    vLLM's own benchmark (between ``floor(q (n-1)) + 1`` and ``ceil(q (n-1)) + 1``)."""
    n = observations
    nearest = max(math.ceil(q * n - 1e-9), 1)
    low, high = math.floor(q * (n - 1) + 1e-9) + 1, math.ceil(q * (n - 1) - 1e-9) + 1
    return max(min(nearest, low), 1), min(max(nearest, high), n)


def quantile_bounds(q: float, h: Histogram) -> tuple[float, float] | None:
    """The interval the q-quantile of the observations behind ``h`` must lie in, for non-negative values
    (latencies): each observation lies in its bucket, and together they add up to ``h.sum``.

    With ``n_j`` observations in bucket j = (lo_j, hi_j] (lo_0 = 0), and the quantile the r-th smallest
    observation X_(r), r in :func:`rank_span`, in bucket i:

    * from above: the C_i - r + 1 observations of bucket i from rank r on are at least X_(r), the others
      at least their bucket's lower bound, so
      ``X_(r) <= (sum - sum_{j != i} n_j lo_j - (r - 1 - C_{i-1}) lo_i) / (C_i - r + 1)``, and X_(r) <= hi_i;
    * from below: the r - C_{i-1} observations of bucket i up to rank r are at most X_(r), the others at
      most their bucket's upper bound, so
      ``X_(r) >= (sum - sum_{j != i} n_j hi_j - (C_i - r) hi_i) / (r - C_{i-1})`` (useless when an
      observation is in the +Inf bucket), and X_(r) >= lo_i.

    The first bound is what makes a wide first bucket honest: vLLM's queue time puts nearly every
    request in (0, 0.3 s], where interpolation reads the median as 150 ms while a mean of 0.02 ms allows
    at most about 0.04 ms. None when the histogram is empty, not integral or inconsistent.
    """
    bounds, cumulative = list(h.bounds), [float(c) for c in h.cumulative_counts]
    if not bounds or bounds[-1] != math.inf or bounds[0] < 0 or not 0 <= q <= 1:
        return None
    total = cumulative[-1]
    if total < 1 or any(abs(c - round(c)) > 1e-6 for c in cumulative) or not math.isfinite(h.sum) or h.sum < 0:
        return None
    counts = [round(c) for c in cumulative]
    if any(b < a for a, b in itertools.pairwise(counts)):
        return None
    lows = [0.0, *bounds[:-1]]
    per_bucket = [counts[0], *(b - a for a, b in itertools.pairwise(counts))]
    least = sum(n * lo for n, lo in zip(per_bucket, lows, strict=True))  # every observation at its lower bound
    most = sum(n * hi for n, hi in zip(per_bucket, bounds, strict=True) if n)  # ... at its upper (inf: +Inf)
    first, last = rank_span(q, counts[-1])

    def bucket(rank: int) -> int:
        return next(i for i, c in enumerate(counts) if c >= rank)

    i = bucket(last)
    below_i = counts[i - 1] if i else 0
    above = (h.sum - (least - per_bucket[i] * lows[i]) - (last - 1 - below_i) * lows[i]) / (counts[i] - last + 1)
    upper = min(bounds[i], above)
    i = bucket(first)
    below_i = counts[i - 1] if i else 0
    lower = lows[i]
    if math.isfinite(most):
        lower = max(lower, (h.sum - (most - per_bucket[i] * bounds[i]) - (counts[i] - first) * bounds[i])
                    / (first - below_i))
    if lower > upper * (1 + 1e-9) + 1e-12:
        return None  # the sum contradicts the buckets (float noise or a broken engine): no bound
    return lower, max(upper, lower)


def bounded_quantiles(qs: Sequence[float], h: Histogram) -> dict[float, float]:
    """:func:`quantiles`, each held to :func:`quantile_bounds`: exactly PromQL's value where the bounds do
    not bite, else the nearest bound, which is never further from the true quantile (it lies in the
    bounds, and clamping to an interval that holds a point never moves away from that point)."""
    out = quantiles(qs, h)
    for q, value in out.items():
        interval = quantile_bounds(q, h)
        if interval is not None and math.isfinite(value):
            out[q] = min(max(value, interval[0]), interval[1])
    return out
