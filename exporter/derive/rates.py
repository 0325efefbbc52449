"""Counter increases and rates over infermeter's own samples, with PromQL's reset rule.

Counter resets follow ``extrapolatedRate`` in prometheus/prometheus ``promql/functions.go``:
for float counters, whenever a sample is lower than the one before it the counter is taken to
have restarted from zero, so the increase over the range is ``last - first`` plus the value
held just before every such drop. Unlike PromQL ``rate``/``increase`` there is no
extrapolation towards the edges of a range: the window is exactly the samples we took, so the
result is the increase between the first and the last sample.

For histograms the reset test follows ``FloatHistogram.DetectReset`` in
``model/histogram/float_histogram.go`` (a lower observation count or any lower bucket count is
a reset; the sum is not consulted, since negative observations may lower it), applied to the
whole classic histogram at once rather than to each ``_bucket`` series on its own as PromQL
does for classic buckets, so all buckets of one result come from the same pairs of samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from exporter.samples import Histogram

__all__ = ["counter_increase", "counter_rate", "histogram_increase"]


def counter_increase(values: Sequence[float]) -> float:
    """The increase of a counter over consecutive samples, counting resets, not extrapolated.

    Computed as PromQL does (``extrapolatedRate``, promql/functions.go): ``values[-1] -
    values[0]``, plus, for every sample lower than its predecessor, the predecessor's value
    (the counter restarted from zero, so the new value itself is increase). Equivalently the
    sum over consecutive pairs of ``curr - prev``, or ``curr`` where ``curr < prev``.
    Fewer than two samples give ``0.0``.
    """
    if len(values) < 2:
        return 0.0
    result = values[-1] - values[0]
    for prev, curr in pairwise(values):
        if curr < prev:
            result += prev
    return result


def counter_rate(times: Sequence[float], values: Sequence[float]) -> float | None:
    """Per-second rate of a counter: :func:`counter_increase` over ``times[-1] - times[0]``.

    ``times`` are the samples' timestamps in seconds, in order. ``None`` with fewer than two
    samples or a span that is not positive. Unlike PromQL ``rate``, the increase is not
    extrapolated to the edges of a range window: our window is our own samples, so this is
    exactly the average rate between the first and the last sample. Raises ``ValueError``
    when the sequences differ in length.
    """
    if len(times) != len(values):
        raise ValueError("counter_rate needs one timestamp per value")
    if len(values) < 2:
        return None
    span = times[-1] - times[0]
    if not span > 0:
        return None
    return counter_increase(values) / span


def _is_reset(prev: Histogram, curr: Histogram) -> bool:
    """Whether ``curr`` restarted from zero since ``prev`` (same bucket layout assumed)."""
    if curr.count < prev.count:
        return True
    return any(c < p for p, c in zip(prev.cumulative_counts, curr.cumulative_counts, strict=True))


def histogram_increase(hists: Sequence[Histogram]) -> Histogram | None:
    """The histogram of the observations made between the first and the last sample.

    ``hists`` are successive samples of one cumulative histogram, oldest first (their counts any
    sequence: a window keeps them in arrays, exporter.derive.window). For each
    consecutive pair the increase is the difference of every cumulative bucket count, of the
    sum and of the count, unless there was a reset between them, in which case the later
    sample's own values are the increase for that pair (it restarted from zero). A reset is:

    * the observation count went down, or any cumulative bucket count went down (PromQL's
      rule, ``FloatHistogram.DetectReset`` in model/histogram/float_histogram.go); a lower sum
      alone is not a reset;
    * the bucket bounds differ (e.g. the engine was upgraded or reconfigured). Then everything
      accumulated so far, which is in the old layout, is dropped: the result uses the newest
      layout and only counts what it can place in it, i.e. the observations recorded by the
      first sample in that layout and the increases after it. (PromQL would instead reconcile
      native custom-bucket histograms; classic ``_bucket`` series of an unknown ``le`` simply
      start a new series.)

    Like PromQL, the increase of a run without resets is taken as ``last - first`` of that
    run rather than as a sum of small steps. Returned counts are cumulative and monotone:
    values below 0 from float noise or inconsistent input are clamped to 0, and any decrease
    between successive buckets is raised to the running maximum (the same envelope
    ``histogram_quantile`` applies). ``None`` with fewer than two samples.
    """
    if len(hists) < 2:
        return None
    bounds = hists[0].bounds
    counts = [0.0] * len(bounds)
    total_sum = 0.0
    total_count = 0.0
    start = 0  # first sample of the current run without resets
    from_zero = False  # whether that run began with a reset (its first sample counts in full)
    for i in range(1, len(hists) + 1):
        layout_changed = False
        if i < len(hists):
            layout_changed = hists[i].bounds is not hists[i - 1].bounds and hists[i].bounds != hists[i - 1].bounds
            if not layout_changed and not _is_reset(hists[i - 1], hists[i]):
                continue
        # A reset before hists[i], or the end: close the run hists[start .. i-1].
        last = hists[i - 1]
        base = None if from_zero else hists[start]
        counts = [
            a + c - (0.0 if base is None else base.cumulative_counts[k])
            for k, (a, c) in enumerate(zip(counts, last.cumulative_counts, strict=True))
        ]
        total_sum += last.sum - (0.0 if base is None else base.sum)
        total_count += last.count - (0.0 if base is None else base.count)
        if layout_changed:
            bounds = hists[i].bounds
            counts = [0.0] * len(bounds)
            total_sum = 0.0
            total_count = 0.0
        start = i
        from_zero = True
    monotone: list[float] = []
    running = 0.0
    for c in counts:
        # Clamp below 0 and take the running maximum; a NaN count stays NaN (and so does
        # everything above it) rather than being silently replaced.
        if not math.isnan(running):
            running = c if math.isnan(c) else max(running, c)
        monotone.append(running)
    return Histogram(
        bounds=tuple(bounds),
        cumulative_counts=tuple(monotone),
        sum=total_sum,
        count=max(total_count, 0.0),
    )
