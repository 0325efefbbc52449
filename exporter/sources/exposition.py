"""Parse a Prometheus text exposition body into samples indexed by their wire name.

Samples are those prometheus_client's own text parser gives, indexed by their sample name
(``vllm:prompt_tokens_total``, ``tgi_request_duration_bucket``; the parser adds ``_total`` to a
counter's samples that lack it). Plain bodies, which is what engines serve, are read by a fast path
that gives exactly the same (tests/test_exposition_fast.py compares the two); anything else goes to
the parser itself.

An engine decides how much it serves, so a read is capped (the caps are far above what real engines
serve: tests/fixtures/engines, docs/engines.md "Limits"); beyond a cap, and on a series that appears
twice, the read fails with one line (SourceError), as Prometheus fails a scrape beyond its
sample_limit and label limits (scrape/scrape.go, scrapeLoopAppender.append).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from exporter.samples import Histogram
from exporter.sources import SourceError
from exporter.untrusted import short

Labels = Mapping[str, str]

# Caps on one read of the families infermeter reads. Real engines (tests/fixtures/engines): at most 356
# samples, 103 series in a family (TGI tgi_request_input_length, 1,027 in tgi_batch_next_size, which is
# not read), 37 labels on a series (vLLM cache_config_info), label values of 40 characters, and 37
# buckets in a latency histogram (SGLang queue_time_seconds).
MAX_SAMPLES = 50_000
MAX_SERIES_PER_FAMILY = 10_000  # each bucket is a series, as in Prometheus
MAX_LABELS_PER_SERIES = 128
MAX_LABEL_CHARS = 4096  # a label's name or value
# Buckets per series of a histogram infermeter reads (its latency histograms, which the window keeps
# one copy of per sample: docs/engines.md has the memory arithmetic).
MAX_BUCKETS = 256


@dataclass(frozen=True)
class Exposition:
    """Every sample of one scrape: wire name -> [(labels, value)], in exposition order."""

    samples: Mapping[str, tuple[tuple[Labels, float], ...]]

    def names(self) -> Iterable[str]:
        return self.samples.keys()

    def series(self, name: str) -> tuple[tuple[Labels, float], ...]:
        return self.samples.get(name, ())

    def has(self, name: str) -> bool:
        return name in self.samples

    def total(self, name: str) -> float | None:
        """Sum of every series of ``name`` (data-parallel engines, finish reasons); None if absent or
        not finite (huge values can overflow the sum)."""
        values = [v for _, v in self.series(name) if math.isfinite(v)]
        return finite_sum(values) if values else None

    def histogram(self, name: str) -> Histogram | None:
        """The histogram ``name`` summed over its series (same bucket layout); None if absent or broken.

        Series whose bounds differ from the first series' are left out (they cannot be added). Raises
        SourceError when a series has more than MAX_BUCKETS buckets.
        """
        by_series: dict[tuple[tuple[str, str], ...], dict[float, float]] = defaultdict(dict)
        for labels, value in self.series(name + "_bucket"):
            try:
                bound = float(labels["le"])
            except (KeyError, ValueError):
                continue
            if math.isnan(bound):
                continue
            key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            buckets = by_series[key]
            buckets[bound] = value
            if len(buckets) > MAX_BUCKETS:
                raise SourceError(f"histogram {name} has more than {MAX_BUCKETS} buckets in one series "
                                  f"(infermeter reads at most {MAX_BUCKETS})")
        if not by_series:
            return None
        sums = {_key(labels): v for labels, v in self.series(name + "_sum")}
        counts = {_key(labels): v for labels, v in self.series(name + "_count")}
        layout: tuple[float, ...] | None = None
        total = None
        total_sum = 0.0
        total_count = 0.0
        for key, buckets in by_series.items():
            bounds = tuple(sorted(buckets))
            if not bounds or bounds[-1] != math.inf:
                continue
            values = [buckets[b] for b in bounds]
            if not all(math.isfinite(v) for v in values):
                continue
            if layout is None:
                layout, total = bounds, values
            elif bounds == layout and total is not None:
                total = [a + b for a, b in zip(total, values, strict=True)]
            else:
                continue
            total_sum += sums.get(key, 0.0) if math.isfinite(sums.get(key, 0.0)) else 0.0
            count = counts.get(key, values[-1])
            total_count += count if math.isfinite(count) else values[-1]
        if layout is None or total is None:
            return None
        cumulative = list(itertools.accumulate(total, max))  # as histogram_quantile's monotonicity fix
        if not all(math.isfinite(v) for v in (*cumulative, total_sum, total_count)):
            return None  # overflowed: nothing sound to report
        return Histogram(bounds=layout, cumulative_counts=tuple(cumulative), sum=total_sum, count=total_count)


def finite_sum(values: list[float]) -> float | None:
    """The sum of finite values, or None when it overflows."""
    total = sum(values)
    return total if math.isfinite(total) else None


def _key(labels: Labels) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def family_base(name: str) -> str:
    """A wire name without its sample suffix and ``_total``: ``vllm:ttft_seconds_bucket`` -> ``vllm:ttft_seconds``."""
    for suffix in SUFFIXES[:3]:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.removesuffix("_total")


def _line_name(line: str) -> str:
    if line.startswith("#"):
        parts = line.split(None, 3)
        return parts[2] if len(parts) > 2 and parts[1] in {"HELP", "TYPE"} else ""
    end = len(line)
    for stop in ("{", " ", "\t"):
        position = line.find(stop)
        if position != -1:
            end = min(end, position)
    return line[:end]


def select_families(text: str, bases: frozenset[str]) -> str:
    """Only the lines of the families in ``bases`` (by family_base): the parser is the collection's
    main cost, and an engine serves many families infermeter never reads (process_*, http_*, *_created).

    Raises SourceError as soon as the sample lines kept break MAX_SAMPLES or MAX_SERIES_PER_FAMILY: each
    one is a sample of that family for the parser (or the body is invalid), so the parse would fail on
    the same cap, only later."""
    kept: list[str] = []
    per_family: dict[str, int] = {}
    samples = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        family = family_base(_line_name(line))
        if family not in bases:
            continue
        kept.append(line)
        if line[0] != "#":
            samples += 1
            count = per_family[family] = per_family.get(family, 0) + 1
            if count > MAX_SERIES_PER_FAMILY:
                raise SourceError(f"metric family {family} has more than {MAX_SERIES_PER_FAMILY} series")
            if samples > MAX_SAMPLES:
                raise SourceError(f"more than {MAX_SAMPLES} samples in the families infermeter reads")
    return "\n".join(kept) + "\n"


def parse(text: str, bases: frozenset[str] | None = None) -> Exposition:
    """Parse exposition text (only the families in ``bases``, when given); raise SourceError (one line)
    when it is not valid, repeats a series or breaks a cap (MAX_SAMPLES, MAX_SERIES_PER_FAMILY,
    MAX_LABELS_PER_SERIES, MAX_LABEL_CHARS).

    Plain bodies (what engines serve) take a fast path that gives exactly what prometheus_client's
    parser gives; any line it does not recognise sends the whole body to that parser instead."""
    if bases is not None:
        text = select_families(text, bases)
    fast = _parse_plain(text, Guard())
    if fast is not None:
        return Exposition({name: tuple(values) for name, values in fast.items()})
    samples: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
    guard = Guard()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = dict(sample.labels)
                guard.check(sample.name, labels)
                samples[sample.name].append((labels, float(sample.value)))
    except SourceError:
        raise
    except Exception as err:  # the parser raises ValueError, IndexError, TypeError on garbage
        detail = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise SourceError(f"invalid Prometheus exposition: {detail}") from None
    return Exposition({name: tuple(values) for name, values in samples.items()})


class Guard:
    """The caps and the duplicate check, fed every sample of one parse under its final name (both parse
    paths feed it the same samples, so they accept and refuse the same bodies)."""

    def __init__(self) -> None:
        self._samples = 0
        self._seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self._per_family: dict[str, int] = {}
        self._family: dict[str, str] = {}

    def check(self, name: str, labels: Labels) -> None:
        """Raise SourceError (one line) when this sample breaks a cap or repeats a series."""
        self._samples += 1
        if self._samples > MAX_SAMPLES:
            raise SourceError(f"more than {MAX_SAMPLES} samples in the families infermeter reads")
        if len(labels) > MAX_LABELS_PER_SERIES:
            raise SourceError(f"{name} has a series with {len(labels)} labels (at most {MAX_LABELS_PER_SERIES})")
        for key, value in labels.items():
            if len(key) > MAX_LABEL_CHARS or len(value) > MAX_LABEL_CHARS:
                raise SourceError(f"{name} has a label longer than {MAX_LABEL_CHARS} characters: {short(key)}="
                                  f"{short(value, 40)}")
        series = (name, tuple(sorted(labels.items())))
        if series in self._seen:
            raise SourceError(f"duplicate series {name}{{{_labels_text(labels)}}}: the engine serves it twice "
                              "in one exposition")
        self._seen.add(series)
        family = self._family.get(name)
        if family is None:
            family = self._family[name] = family_base(name)
        count = self._per_family[family] = self._per_family.get(family, 0) + 1
        if count > MAX_SERIES_PER_FAMILY:
            raise SourceError(f"metric family {family} has more than {MAX_SERIES_PER_FAMILY} series")


def _labels_text(labels: Labels) -> str:
    text = ",".join(f"{k[:40]}={short(v, 40)}" for k, v in sorted(labels.items())[:8])
    return text if len(labels) <= 8 else text + ",..."


# The plain sample line: a legacy name, optional labels without escapes or braces, a number, an
# optional integer timestamp, single spaces (prometheus_client, the Rust and Go clients write this).
_PLAIN_SAMPLE = re.compile(
    r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="[^"\\{}]*",?)*)\})? '
    r'([-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))(?: -?[0-9]+)?')
_PLAIN_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"\\{}]*)"')
_PLAIN_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_ALLOWED_SUFFIXES = {"summary": ("_count", "_sum", ""), "histogram": ("_count", "_sum", "_bucket")}
# the types prometheus_client's Metric accepts (it refuses any other)
_TYPES = frozenset({"counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "untyped", "info",
                    "stateset"})


def _parse_plain(text: str, guard: Guard | None = None) -> dict[str, list[tuple[Labels, float]]] | None:
    """``text`` parsed as prometheus_client's text parser would (its family state machine: a counter
    family's samples without ``_total`` get it, whatever the order of its TYPE line and its samples), or
    None when a line is anything but plain. ``guard`` checks each sample under its final name."""
    samples: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
    family, kind = "", "untyped"
    allowed: tuple[str, ...] = ("",)
    pending: list[tuple[str, Labels, float]] = []  # the current family's samples, named when it ends

    def close() -> None:
        rename = kind == "counter" and not family.endswith("_total")
        for name, labels, value in pending:
            final = name + "_total" if rename else name
            if guard is not None:
                guard.check(final, labels)
            samples[final].append((labels, value))
        pending.clear()

    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line[0] == "#":
            parts = line.split(None, 3)
            if len(parts) < 2 or parts[1] not in ("HELP", "TYPE"):
                continue  # a plain comment
            if len(parts) < 3 or not _PLAIN_NAME.fullmatch(parts[2]) or (parts[1] == "TYPE" and len(parts) < 4):
                return None
            if parts[2] != family:
                close()
                family, kind, allowed = parts[2], "untyped", (parts[2],)
            if parts[1] == "TYPE":
                if parts[3] not in _TYPES:
                    return None
                kind = parts[3]
                allowed = tuple(family + suffix for suffix in _ALLOWED_SUFFIXES.get(kind, ("",)))
            continue
        match = _PLAIN_SAMPLE.fullmatch(line)
        if match is None:
            return None
        name, label_text, value = match.groups()
        labels: dict[str, str] = {}
        if label_text:
            pairs = _PLAIN_LABEL.findall(label_text)
            labels = dict(pairs)
            if len(labels) != len(pairs) or any(key.startswith("__") for key in labels):
                return None  # duplicates, and names prometheus_client reserves
        if family and name in allowed:
            pending.append((name, labels, float(value)))
            if guard is not None and len(pending) > MAX_SERIES_PER_FAMILY:  # fail before the family ends
                raise SourceError(f"metric family {family_base(name)} has more than {MAX_SERIES_PER_FAMILY} series")
        else:  # a sample of no declared family stands alone, untyped
            close()
            family, kind, allowed = "", "untyped", ("",)
            if guard is not None:
                guard.check(name, labels)
            samples[name].append((labels, float(value)))
    close()
    return samples
