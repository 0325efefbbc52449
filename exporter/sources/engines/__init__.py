"""Engine adapters: map one engine's exposition onto infermeter's canonical fields.

Each adapter is mostly data: for every canonical field, the engine's wire names in order of
preference. During a deprecation window an engine serves the old and the new name with the same
values; the first name present wins, so nothing is counted twice.

``--engine-model ENGINE=NAME`` pins the model an engine is followed for: Triton (several models per
server) reads that model alone; the one-model engines check that the model they serve is the pinned
one. Either way a pinned model that is not there fails the read (``pinned_model_absent``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.samples import EngineIdentity, EngineSample, Histogram
from exporter.sources import SourceError
from exporter.sources.exposition import Exposition, family_base, finite_sum
from exporter.untrusted import short


@dataclass(frozen=True)
class EngineNames:
    """Canonical field -> wire sample names (counters, gauges) or histogram names, preferred first."""

    kind: str
    prefix: str
    counters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    gauges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    histograms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Label carrying the model name on the engine's series, if any.
    model_label: str | None = None

    def first_total(self, exposition: Exposition, candidates: tuple[str, ...], *,
                    counter: bool = False) -> float | None:
        """The total of the first of ``candidates`` the engine serves. For a ``counter``, a series below zero
        fails the read (check_sample says why)."""
        for name in candidates:
            if counter:
                negative = next((v for _, v in exposition.series(name) if v < 0), None)
                if negative is not None:
                    raise SourceError(f"counter {name} has a negative series ({negative:g}): the engine's metrics "
                                      "are broken")
            value = exposition.total(name)
            if value is not None:
                return value
        return None

    def first_histogram(self, exposition: Exposition, candidates: tuple[str, ...]) -> Histogram | None:
        for name in candidates:
            histogram = exposition.histogram(name)
            if histogram is not None:
                return histogram
        return None

    def model_in_labels(self, exposition: Exposition) -> str | None:
        if self.model_label is None:
            return None
        for name in exposition.names():
            if name.startswith(self.prefix):
                for labels, _ in exposition.series(name):
                    if labels.get(self.model_label):
                        return labels[self.model_label]
        return None

    def models_in_labels(self, exposition: Exposition) -> frozenset[str]:
        """Every model named by the model label on the engine's series."""
        if self.model_label is None:
            return frozenset()
        label = self.model_label
        return frozenset(labels[label] for name in exposition.names() if name.startswith(self.prefix)
                         for labels, _ in exposition.series(name) if labels.get(label))

    def families(self, *extra: str) -> frozenset[str]:
        """Family base names the adapter reads (what parse() keeps)."""
        names = [*extra, *(n for table in (self.counters, self.gauges, self.histograms)
                           for candidates in table.values() for n in candidates)]
        return frozenset(family_base(n) for n in names)

    def sample(self, exposition: Exposition, timestamp: float) -> EngineSample:
        """The canonical sample from the name tables alone (adapters add engine-specific fields)."""
        counters = {k: v for k, names in self.counters.items()
                    if (v := self.first_total(exposition, names, counter=True)) is not None}
        gauges = {k: v for k, names in self.gauges.items()
                  if (v := self.first_total(exposition, names)) is not None}
        histograms = {k: h for k, names in self.histograms.items()
                      if (h := self.first_histogram(exposition, names)) is not None}
        return EngineSample(timestamp=timestamp, kind=self.kind, counters=counters, gauges=gauges,
                            histograms=histograms, model_label=self.model_in_labels(exposition))


MODELS_SHOWN = 20  # an error line names at most this many models
MODEL_CHARS_SHOWN = 60  # and each in at most about this many characters


def pinned_model_absent(model: str, present: Iterable[str]) -> SourceError:
    """The one-line error of a read whose pinned model (--engine-model) is not in the engine's metrics."""
    names = sorted(set(present))
    shown = ", ".join(short(n, MODEL_CHARS_SHOWN) for n in names[:MODELS_SHOWN])
    more = f" and {len(names) - MODELS_SHOWN} more" if len(names) > MODELS_SHOWN else ""
    return SourceError(f"model {model!r} (--engine-model) is not in the engine's metrics; models there: "
                       f"{shown or 'none'}{more}")


def check_sample(sample: EngineSample) -> None:
    """Raise SourceError (one line) when the engine's counters or histogram counts are negative: a counter
    only goes up from zero (the OpenMetrics counter; client libraries refuse a negative increment), and
    Prometheus refuses a native histogram with a negative count (model/histogram/float_histogram.go,
    FloatHistogram.Validate). A rate over such values would come out negative."""
    for name, value in sample.counters.items():
        if value < 0:
            raise SourceError(f"counter {name} is negative ({value:g}): the engine's metrics are broken")
    for name, histogram in sample.histograms.items():
        if histogram.count < 0 or (histogram.cumulative_counts and histogram.cumulative_counts[0] < 0):
            raise SourceError(f"histogram {name} has a negative count: the engine's metrics are broken")


def label_totals(exposition: Exposition, name: str, label: str, *, counter: bool = True) -> dict[str, float] | None:
    """``name``'s series summed per value of ``label`` (over data-parallel ranks and any other label), for the
    label values the engine serves; None when no series of ``name`` carries ``label``. Values that are not
    finite are left out; for a ``counter``, a series below zero fails the read (it only goes up from zero).

    Shared by the adapters (vLLM ``request_success_total{finished_reason}``,
    ``prompt_tokens_by_source_total{source}``, ``num_requests_waiting_by_reason{reason}``)."""
    totals: dict[str, list[float]] = {}
    for labels, value in exposition.series(name):
        key = labels.get(label)
        if key is None:
            continue
        if counter and value < 0:
            raise SourceError(f"{name}{{{label}={short(key, MODEL_CHARS_SHOWN)}}} is negative ({value:g}): the "
                              "engine's metrics are broken")
        totals.setdefault(key, []).append(value)
    if not totals:
        return None
    return {key: total for key, values in totals.items()
            if (total := finite_sum([v for v in values if math.isfinite(v)])) is not None}


def capacity_weighted_mean(usage: Sequence[tuple[str, float]], capacity: Mapping[str, float]) -> float | None:
    """KV cache usage over data-parallel ranks: (rank, usage) pairs weighted by each rank's capacity in
    tokens when every rank has a positive one, else their plain mean; None when empty or not finite."""
    if not usage:
        return None
    weights = [capacity.get(rank) for rank, _ in usage]
    if all(w is not None and w > 0 for w in weights):
        total = finite_sum([w for w in weights if w is not None])
        weighted = finite_sum([v * w for (_, v), w in zip(usage, weights, strict=True) if w is not None])
        mean = weighted / total if total and weighted is not None else None
    else:
        plain = finite_sum([v for _, v in usage])
        mean = plain / len(usage) if plain is not None else None
    return mean if mean is not None and math.isfinite(mean) else None


def served_model(models: object) -> tuple[str | None, str | None]:
    """(model, root) from an OpenAI-style /v1/models document: the first base model (not a LoRA adapter,
    which has a ``parent``), else the first entry, and the ``root`` it was loaded from where given."""
    if not isinstance(models, Mapping) or not isinstance(models.get("data"), list):
        return None, None
    entries = [m for m in models["data"] if isinstance(m, Mapping) and isinstance(m.get("id"), str)]
    chosen = next((m for m in entries if not m.get("parent")), entries[0] if entries else None)
    if chosen is None:
        return None, None
    root = chosen.get("root")
    return chosen["id"], root if isinstance(root, str) else None


def check_pin(model: str | None, present: Iterable[str]) -> None:
    """For engines that serve one model: raise when a pin names another model than the one they report.
    Nothing is checked while the engine's metrics name no model."""
    names = frozenset(present)
    if model is not None and names and model not in names:
        raise pinned_model_absent(model, names)


class Adapt(Protocol):
    """An adapter's mapping of one exposition to a canonical sample.

    ``identity`` is the engine's last identity (empty before the first read of it); ``model`` is the model
    pinned with --engine-model (None: the adapter's own choice).
    """

    def __call__(self, exposition: Exposition, timestamp: float, identity: EngineIdentity | None, /, *,
                 model: str | None = None) -> EngineSample: ...


@dataclass(frozen=True)
class Adapter:
    """Everything infermeter knows about one engine kind."""

    names: EngineNames
    # family base names the adapter reads (parse() keeps only these)
    families: frozenset[str]
    identity_paths: tuple[str, ...]
    identity: Callable[[Mapping[str, Any]], EngineIdentity]
    adapt: Adapt

    @property
    def kind(self) -> str:
        return self.names.kind

    def serves(self, text: str) -> bool:
        """True when an exposition body holds this engine's metric names."""
        prefix = self.names.prefix
        return text.startswith(prefix) or f"\n{prefix}" in text or f"# TYPE {prefix}" in text


def adapters() -> tuple[Adapter, ...]:
    """Every engine adapter, in detection order."""
    from exporter.sources.engines import sglang, tgi, triton, vllm

    return (vllm.ADAPTER, tgi.ADAPTER, triton.ADAPTER, sglang.ADAPTER)


def detect(text: str) -> Adapter:
    """The adapter for an exposition body, from its metric names; SourceError when none matches."""
    for adapter in adapters():
        if adapter.serves(text):
            return adapter
    known = ", ".join(f"{a.kind} ({a.names.prefix}*)" for a in adapters())
    raise SourceError(f"no metrics of a known engine in the response ({known}); is this an inference "
                      "server's /metrics?")


def markdown_mapping() -> str:
    """docs/engines.md's table: which engine names feed each canonical field, preferred first."""
    from exporter.sources.engines import sglang, tgi, triton, vllm

    engines = tuple(a.names for a in adapters())
    # fields an adapter computes beyond its name tables: field kind -> field -> engine kind -> sources
    computed: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
        "gauge": {
            "kv_cache_usage_ratio": {"tgi": (f"{tgi.BATCH_TOKENS} / /info max_batch_total_tokens",)},
            "kv_cache_capacity_tokens": {"tgi": ("/info max_batch_total_tokens",)},
        },
    }
    for module in (vllm, triton, sglang):
        for kind, fields in module.COMPUTED.items():
            for name, sources in fields.items():
                computed.setdefault(kind, {}).setdefault(name, {})[module.NAMES.kind] = sources
    rows = ["| Field | Kind | " + " | ".join(e.kind for e in engines) + " |",
            "| --- | --- | " + " | ".join("---" for _ in engines) + " |"]
    for kind, table in (("counter", "counters"), ("gauge", "gauges"), ("histogram", "histograms")):
        extra = computed.get(kind, {})
        fields = sorted({f for e in engines for f in getattr(e, table)} | set(extra))
        for name in fields:
            cells = []
            for e in engines:
                mapping: Mapping[str, tuple[str, ...]] = getattr(e, table)
                names = mapping.get(name) or extra.get(name, {}).get(e.kind) or ()
                cells.append(", ".join(f"`{n}`" for n in names) or "absent")
            rows.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"
