"""Windowed engine statistics: latency quantiles, throughput rates, cache hit ratios, request outcomes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exporter.derive.quantiles import bounded_quantiles, quantile_bounds
from exporter.derive.rates import counter_increase, counter_rate, histogram_increase
from exporter.samples import EngineSample

# canonical counter -> exported rate
RATES: Mapping[str, str] = {
    "prompt_tokens": "prompt_tokens_per_second",
    "generation_tokens": "generation_tokens_per_second",
    "requests_finished": "requests_per_second",
    "preemptions": "preemptions_per_second",
    "prompt_tokens_computed": "prompt_tokens_computed_per_second",
    "admission_rejections": "admission_rejections_per_second",
}
# prefix-cache hit tokens per tier (vLLM prompt_tokens_cached_by_source): counter prefix_cache_hits_<tier>
CACHE_TIERS = ("device", "host", "disk", "p2p", "external_unspecified")
# how a finished request ended: completed (stop, length, repetition: the client got its answer), aborted (the
# client went away), failed (an engine error); completed is what is left of requests_finished
OUTCOMES = ("completed", "aborted", "failed")


@dataclass(frozen=True)
class LatencySummary:
    """Quantiles over the window (empty when nothing finished in it) and the engine's cumulative count/sum."""

    quantiles: Mapping[float, float]
    count: float
    sum: float
    # the mean of the observations that happened in the window (None when none did), and how many there were
    window_mean: float | None = None
    window_count: float = 0.0
    # q -> (lower, upper): the interval the window's quantile is known to lie in (quantile_bounds)
    bounds: Mapping[float, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineStats:
    latency: Mapping[str, LatencySummary] = field(default_factory=dict)
    # exported rate name -> per second (see RATES)
    rates: Mapping[str, float] = field(default_factory=dict)
    prefix_cache_hit_ratio: float | None = None
    # draft tokens accepted per draft token proposed (speculative decoding)
    spec_decode_acceptance_ratio: float | None = None
    # the latest value of each gauge
    gauges: Mapping[str, float] = field(default_factory=dict)
    # every canonical counter -> per second over the window
    counter_rates: Mapping[str, float] = field(default_factory=dict)
    # each gauge's mean and maximum over the window
    gauge_means: Mapping[str, float] = field(default_factory=dict)
    gauge_max: Mapping[str, float] = field(default_factory=dict)
    # tier -> prefix-cache hit tokens from that tier per token queried (CACHE_TIERS; vLLM 0.32 on)
    prefix_cache_tier_hit_ratios: Mapping[str, float] = field(default_factory=dict)
    # speculative decoding: 1 + accepted tokens per draft (vLLM's mean acceptance length, bonus token included)
    spec_decode_mean_acceptance_length: float | None = None
    # outcome (OUTCOMES) -> finished requests per second, where the engine tells them apart (vLLM)
    outcome_rates: Mapping[str, float] = field(default_factory=dict)

    def requests_completed_per_second(self) -> float:
        """Requests that completed (not aborted, not failed) per second; every finished request where the
        engine does not tell outcomes apart."""
        return self.outcome_rates.get("completed", self.counter_rates.get("requests_finished", 0.0))

    def prompt_tokens_computed_per_second(self) -> float:
        """Prompt tokens the engine computed per second (prefix-cache hits and transferred KV left out) where
        it reports them, else every prompt token. vLLM computes at least a prompt's last token even on a full
        prefix hit, so a computed count that stands still while prompt tokens flow is not a count: then every
        prompt token too."""
        rates = self.counter_rates
        computed, prompt = rates.get("prompt_tokens_computed"), rates.get("prompt_tokens", 0.0)
        return computed if computed is not None and (computed > 0 or prompt <= 0) else prompt


def _counter_series(samples: Sequence[EngineSample], key: str) -> tuple[list[float], list[float]]:
    times = [s.timestamp for s in samples if key in s.counters]
    values = [s.counters[key] for s in samples if key in s.counters]
    return times, values


# PromQL's extrapolatedRate extrapolates to the range's start when the first sample is within this many
# average sample intervals of it (promql/functions.go); further away, the time before it had no samples
EXTRAPOLATION_THRESHOLD = 1.1


def engine_stats(samples: Sequence[EngineSample], qs: Sequence[float],
                 watched_since: float | None = None) -> EngineStats:
    """Statistics of a window of samples of one engine, oldest first.

    ``watched_since``: where the window begins for rates, the later of the window's start and when the
    exporter began watching the engine (None: the first sample). A counter's rate is its increase over the
    window's samples divided by the time they span, as PromQL's ``rate`` does when samples reach the
    window's start; when they begin later than one sample interval after it (the engine could not be read
    then: an outage), the time from the window's start counts too, as time without work, so an outage never
    makes the rate read as the rate while the engine was up.
    """
    if not samples:
        return EngineStats()
    latest = samples[-1]
    latency: dict[str, LatencySummary] = {}
    for name, current in latest.histograms.items():
        window = [s.histograms[name] for s in samples if name in s.histograms]
        delta = histogram_increase(window)
        mean = delta.sum / delta.count if delta is not None and delta.count > 0 else None
        if delta is None:
            latency[name] = LatencySummary({}, current.count, current.sum)
            continue
        known = {q: interval for q in qs if (interval := quantile_bounds(q, delta)) is not None}
        latency[name] = LatencySummary(bounded_quantiles(qs, delta), current.count, current.sum, mean, delta.count,
                                       known)
    counter_rates: dict[str, float] = {}
    for counter in latest.counters:
        times, values = _counter_series(samples, counter)
        rate = counter_rate(times, values)
        if rate is not None and watched_since is not None:
            step = (times[-1] - times[0]) / (len(times) - 1)  # the mean sample interval
            if times[0] - watched_since > EXTRAPOLATION_THRESHOLD * step:
                rate = counter_increase(values) / (times[-1] - watched_since)
        if rate is not None:
            counter_rates[counter] = rate
    rates = {exported: counter_rates[c] for c, exported in RATES.items() if c in counter_rates}
    means: dict[str, float] = {}
    highest: dict[str, float] = {}
    for gauge in latest.gauges:
        values = [s.gauges[gauge] for s in samples if gauge in s.gauges]
        means[gauge] = sum(values) / len(values)
        highest[gauge] = max(values)
    tiers = {tier: ratio for tier in CACHE_TIERS
             if (ratio := _ratio(samples, "prefix_cache_queries", f"prefix_cache_hits_{tier}", "")) is not None}
    drafted = _ratio(samples, "spec_decode_drafts", "spec_decode_accepted_tokens", "", cap=False)
    return EngineStats(latency, rates, _prefix_hit_ratio(samples), _ratio(samples, "spec_decode_draft_tokens",
                       "spec_decode_accepted_tokens", "spec_decode_acceptance_ratio"), dict(latest.gauges),
                       counter_rates, means, highest, tiers, 1.0 + drafted if drafted is not None else None,
                       outcome_rates(counter_rates))


def outcome_rates(counter_rates: Mapping[str, float]) -> dict[str, float]:
    """Finished requests per second by outcome (OUTCOMES), where the engine counts aborted requests (vLLM);
    completed is the rest of requests_finished (never below 0)."""
    finished = counter_rates.get("requests_finished")
    aborted = counter_rates.get("requests_aborted")
    if finished is None or aborted is None:
        return {}
    failed = counter_rates.get("requests_failed", 0.0)
    return {"completed": max(finished - aborted - failed, 0.0), "aborted": aborted, "failed": failed}


def _prefix_hit_ratio(samples: Sequence[EngineSample]) -> float | None:
    return _ratio(samples, "prefix_cache_queries", "prefix_cache_hits", "prefix_cache_hit_ratio")


def _ratio(samples: Sequence[EngineSample], whole: str, part: str, gauge: str, cap: bool = True) -> float | None:
    """Increase of counter ``part`` over increase of counter ``whole`` in the window (capped at 1 unless not
    ``cap``); engines that report only a ratio gauge give its latest value. None when nothing happened in the
    window."""
    latest = samples[-1]
    if whole in latest.counters and part in latest.counters:
        with_both = [s for s in samples if whole in s.counters and part in s.counters]
        total = counter_increase([s.counters[whole] for s in with_both])
        hits = counter_increase([s.counters[part] for s in with_both])
        if len(with_both) < 2 or total <= 0:
            return None
        return min(hits / total, 1.0) if cap else hits / total
    return latest.gauges.get(gauge)
