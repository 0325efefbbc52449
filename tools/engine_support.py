"""The README's engine table: which engine-level metrics each engine provides, derived by running each adapter
over the exposition fixtures in tests/fixtures/engines (a tool: the exporter never reads tests/).

Each fixture stands for one configuration of an engine. A *base* fixture is what the engine serves without
extra options; engines with several backends (Triton) have one base fixture per backend (``variant``). Other
fixtures show what an engine option adds (``needs``). A cell says:

- ``yes`` / ``mean only`` (a latency with ``_sum`` and ``_count`` but no buckets, so no quantile): in every base
  fixture of the engine;
- ``<variant> only``: in the base fixtures of those variants only;
- ``needs <option>``: only in fixtures served with that option;
- ``no``: in none.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from exporter.catalog import CATALOG
from exporter.derive.engine import RATES
from exporter.samples import EngineSample
from exporter.sources.engines import adapters, detect
from exporter.sources.exposition import parse

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "engines"


@dataclass(frozen=True)
class Setup:
    """One fixture (plus identity documents) standing for one configuration of an engine."""

    fixture: str
    variant: str | None = None  # a backend, for engines with several (Triton)
    needs: str | None = None  # the engine option this fixture was served with; None: a base fixture
    identity: tuple[tuple[str, str], ...] = ()  # (endpoint path, fixture file) the adapter's identity reads
    drop: tuple[str, ...] = ()  # families the engine does not serve without the option another setup needs


HISTOGRAM_LATENCIES = "`--metrics-config histogram_latencies=true`"
SETUPS: Mapping[str, tuple[Setup, ...]] = {
    # vLLM 0.32 with speculative decoding on (default flags otherwise); --enable-mfu-metrics fills the estimates
    "vllm": (Setup("vllm-0.32.0-specdecode.txt"),
             Setup("vllm-0.32.0-real-mfu.txt", needs="`--enable-mfu-metrics`")),
    # TGI 3.x's /info has no max_batch_total_tokens; 1.x's has
    "tgi": (Setup("tgi-3.x.txt", identity=(("/info", "tgi-3.x.info.json"),)),
            Setup("tgi-3.x.txt", needs="`max_batch_total_tokens` in `/info` (TGI 1.x)",
                  identity=(("/info", "tgi-1.4.info.json"),))),
    # Triton serves the first-response histogram only with histogram_latencies=true (server
    # docs/user_guide/metrics.md, "Histograms"); the TensorRT-LLM fixture was made with it on
    "triton": (Setup("triton-trtllm.txt", variant="TRT-LLM", drop=("nv_inference_first_response_histogram_ms",)),
               Setup("triton-onnx.txt", variant="other backends"),
               Setup("triton-trtllm.txt", variant="TRT-LLM", needs=HISTOGRAM_LATENCIES)),
    # SGLang with --enable-metrics and EAGLE3 speculative decoding
    "sglang": (Setup("sglang.txt"),),
}

# A check says how a sample provides a metric: "yes", "mean only" or None (absent).
Check = Callable[[EngineSample], str | None]


def histogram(name: str) -> Check:
    def check(sample: EngineSample) -> str | None:
        found = sample.histograms.get(name)
        if found is None:
            return None
        return "mean only" if all(math.isinf(b) for b in found.bounds) else "yes"
    return check


def counters(*names: str) -> Check:
    return lambda sample: "yes" if all(n in sample.counters for n in names) else None


def gauge(name: str) -> Check:
    return lambda sample: "yes" if name in sample.gauges else None


def either(*checks: Check) -> Check:
    return lambda sample: next((found for check in checks if (found := check(sample)) is not None), None)


TOKENS = either(counters("prompt_tokens"), counters("generation_tokens"))
ROWS: tuple[tuple[str, Check], ...] = (
    *((f"`infermeter_{name}_seconds`", histogram(name))
      for name in ("time_to_first_token", "time_per_output_token", "inter_token_latency", "e2e_request_latency",
                   "queue_time")),
    *((f"`infermeter_{exported}`", counters(counter)) for counter, exported in RATES.items()),
    ("`infermeter_prefix_cache_hit_ratio`",
     either(counters("prefix_cache_queries", "prefix_cache_hits"), gauge("prefix_cache_hit_ratio"))),
    ("`infermeter_spec_decode_acceptance_ratio` (with speculative decoding)",
     either(counters("spec_decode_draft_tokens", "spec_decode_accepted_tokens"),
            gauge("spec_decode_acceptance_ratio"))),
    *((f"`infermeter_{name}`", gauge(name))
      for name in ("requests_running", "requests_waiting", "kv_cache_usage_ratio", "kv_cache_capacity_tokens")),
    ("`infermeter_cost_per_request_dollars`", counters("requests_finished")),
    ('`infermeter_cost_per_million_tokens_dollars{token_type="total"}`', TOKENS),
    ('`infermeter_memory_bandwidth_utilization_ratio{source="engine"}`', counters("engine_read_bytes_per_gpu")),
    ('`infermeter_model_flops_utilization_ratio{source="engine"}`', counters("engine_flops_per_gpu")),
)


def sample(setup: Setup) -> EngineSample:
    """What the adapter makes of a setup's fixture, as EngineSource would (detect, parse, identity, adapt)."""
    text = (FIXTURES / setup.fixture).read_text(encoding="utf-8")
    adapter = detect(text)
    exposition = parse(text, adapter.families - set(setup.drop))
    documents = {path: json.loads((FIXTURES / name).read_text(encoding="utf-8")) for path, name in setup.identity}
    return adapter.adapt(exposition, 0.0, adapter.identity(documents))


def cell(check: Check, samples: list[tuple[Setup, EngineSample]]) -> str:
    found = [(setup, result) for setup, s in samples if (result := check(s)) is not None]
    value = "yes" if any(result == "yes" for _, result in found) else "mean only"
    base = {setup.variant for setup, _ in found if setup.needs is None}
    variants = {setup.variant for setup, _ in samples if setup.needs is None}
    if base and base == variants:
        return value
    if base:
        only = " / ".join(sorted(v for v in base if v)) + " only"
        return only if value == "yes" else f"{value}, {only}"
    needs = sorted({setup.needs for setup, _ in found if setup.needs})
    return "needs " + " or ".join(needs) if needs else "no"


def markdown_support() -> str:
    """The README's table: a row per engine-level metric, a column per engine kind."""
    known = {m.name for m in CATALOG}
    kinds = [a.kind for a in adapters()]
    if set(SETUPS) != set(kinds):
        raise ValueError(f"SETUPS must name fixtures for every engine kind: {', '.join(kinds)}")
    samples = {kind: [(setup, sample(setup)) for setup in SETUPS[kind]] for kind in kinds}
    rows = ["| Metric | " + " | ".join(kinds) + " |", "| --- | " + " | ".join("---" for _ in kinds) + " |"]
    for label, check in ROWS:
        name = re.search(r"infermeter_\w+", label)
        if name is None or name.group() not in known:
            raise ValueError(f"{label}: no such metric in exporter/catalog.py")
        rows.append(f"| {label} | " + " | ".join(cell(check, samples[kind]) for kind in kinds) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_support(), end="")
