"""A sliding window of one engine's samples."""

from __future__ import annotations

from collections import deque

from exporter.samples import EngineSample


class SampleWindow:
    """Keeps the samples of the last ``seconds``; a change of engine kind starts it afresh."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._samples: deque[EngineSample] = deque()

    def add(self, sample: EngineSample) -> None:
        if self._samples and (self._samples[-1].kind != sample.kind
                              or sample.timestamp <= self._samples[-1].timestamp):
            self._samples.clear()  # another engine behind the URL, or the clock went back
        self._samples.append(sample)
        oldest = sample.timestamp - self.seconds
        while self._samples and self._samples[0].timestamp < oldest:
            self._samples.popleft()

    def samples(self) -> tuple[EngineSample, ...]:
        return tuple(self._samples)

    def clear(self) -> None:
        self._samples.clear()
