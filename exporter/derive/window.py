"""A sliding window of one engine's samples, stored compactly.

The window holds up to config.MAX_WINDOW_SAMPLES samples per engine, each with up to five latency
histograms of up to exposition.MAX_BUCKETS buckets. Stored as read, a bucket costs 32 bytes for its count
(a float object and its pointer) and 32 more for its bound: 1000 x 5 x 256 x 64 bytes = 82 MB for one
engine. So a sample is stored with its histogram counts in an ``array('d')`` (8 bytes a bucket) and its
bounds, model label and engine config shared with the sample before it when they are equal (they are,
but across an engine restart or upgrade): 1000 x 5 x 256 x 8 bytes = 10 MB at the caps, about 13 MB
with everything else a sample holds (docs/engines.md, "Limits").
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import replace

from exporter.samples import EngineSample, Histogram


class SampleWindow:
    """Keeps the samples of the last ``seconds``; a change of engine kind starts it afresh."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._samples: deque[EngineSample] = deque()
        self._since: float | None = None  # when the exporter began watching this engine (its first sample)

    def add(self, sample: EngineSample) -> None:
        if self._samples and (self._samples[-1].kind != sample.kind
                              or sample.timestamp <= self._samples[-1].timestamp):
            self.clear()  # another engine behind the URL, or the clock went back
        if self._since is None:
            self._since = sample.timestamp
        self._samples.append(compact(sample, self._samples[-1] if self._samples else None))
        oldest = sample.timestamp - self.seconds
        while self._samples and self._samples[0].timestamp < oldest:
            self._samples.popleft()

    def samples(self) -> tuple[EngineSample, ...]:
        return tuple(self._samples)

    def clear(self) -> None:
        self._samples.clear()
        self._since = None

    def watched_since(self, now: float) -> float | None:
        """Where the window begins at ``now``: its start, or when the engine was first seen if later (the
        time since counts whether the engine could be read or not)."""
        return None if self._since is None else max(self._since, now - self.seconds)


def compact(sample: EngineSample, previous: EngineSample | None) -> EngineSample:
    """``sample`` with its histogram counts in arrays, and what equals ``previous``'s shared with it."""
    histograms = {}
    for name, histogram in sample.histograms.items():
        before = previous.histograms.get(name) if previous is not None else None
        bounds = before.bounds if before is not None and before.bounds == histogram.bounds else histogram.bounds
        histograms[name] = Histogram(bounds, array("d", histogram.cumulative_counts), histogram.sum, histogram.count)
    model_label, config = sample.model_label, sample.config
    if previous is not None:
        model_label = previous.model_label if previous.model_label == model_label else model_label
        config = previous.config if previous.config == config else config
    return replace(sample, histograms=histograms, model_label=model_label, config=config)
