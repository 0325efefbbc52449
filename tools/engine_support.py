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
from exporter.sources.engines import adapters, detect, vllm
from exporter.sources.exposition import Exposition, family_base, parse

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
    # vLLM 0.34 with speculative decoding and CPU offloading on; without --enable-mfu-metrics it serves the
    # estimates at 0, which reads as not served (dropped here)
    "vllm": (Setup("vllm-0.34.0-a.txt", drop=tuple(family_base(n) for n in vllm.PER_GPU.values())),
             Setup("vllm-0.34.0-a.txt", needs="`--enable-mfu-metrics`")),
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
    ("`infermeter_request_outcomes_per_second`", counters("requests_finished", "requests_aborted")),
    ("`infermeter_prefix_cache_hit_ratio`",
     either(counters("prefix_cache_queries", "prefix_cache_hits"), gauge("prefix_cache_hit_ratio"))),
    ("`infermeter_prefix_cache_tier_hit_ratio`", counters("prefix_cache_queries", "prefix_cache_hits_device")),
    ("`infermeter_spec_decode_acceptance_ratio` (with speculative decoding)",
     either(counters("spec_decode_draft_tokens", "spec_decode_accepted_tokens"),
            gauge("spec_decode_acceptance_ratio"))),
    ("`infermeter_spec_decode_mean_acceptance_length_tokens` (with speculative decoding)",
     counters("spec_decode_drafts", "spec_decode_accepted_tokens")),
    *((f"`infermeter_{name}`", gauge(name))
      for name in ("requests_running", "requests_waiting", "kv_cache_usage_ratio", "kv_cache_capacity_tokens")),
    ("`infermeter_requests_waiting_by_reason`", gauge("requests_waiting_capacity")),
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


# vLLM versions with fixtures, oldest first: (column, fixtures); a field counts where any of them has it
VLLM_VERSIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("0.6 (V0)", ("vllm-v0-0.6.txt",)),
    ("0.10", ("vllm-v1-0.10.txt",)),
    ("0.12 era", ("vllm-v1-dp2.txt",)),
    ("0.32", ("vllm-0.32.0-real-mfu.txt", "vllm-0.32.0-specdecode.txt")),
    ("0.33", ("vllm-0.33.0-a.txt", "vllm-0.33.0-hybrid.txt")),
    ("0.34", ("vllm-0.34.0-a.txt", "vllm-0.34.0-hybrid.txt")),
)
# canonical field -> what infermeter derives from it (docs/analytic-model.md for the analytic ones)
DERIVES: Mapping[str, str] = {
    "prompt_tokens": "`prompt_tokens_per_second`; mean prompt (KV context, planned prompt tokens)",
    "prompt_tokens_computed": "`prompt_tokens_computed_per_second`; analytic MFU, expected TTFT, prompt/generation "
                              "cost split, the planner's prefill",
    "generation_tokens": "`generation_tokens_per_second`; MFU, cost per million tokens, planned output tokens",
    "requests_finished": "`requests_per_second`; mean request size; the planner's demand",
    "requests_aborted": "`request_outcomes_per_second{outcome=\"aborted\"}`; cost per (completed) request",
    "requests_failed": "`request_outcomes_per_second{outcome=\"failed\"}`; cost per (completed) request",
    "admission_rejections": "`admission_rejections_per_second`; the planner's demand",
    "preemptions": "`preemptions_per_second`; right-sizing evidence (memory_bound)",
    "prefix_cache_queries": "`prefix_cache_hit_ratio`, `prefix_cache_tier_hit_ratio` (denominator)",
    "prefix_cache_hits": "`prefix_cache_hit_ratio`",
    "prefix_cache_hit_ratio": "`prefix_cache_hit_ratio` (latest value)",
    **{f"prefix_cache_hits_{tier}": f"`prefix_cache_tier_hit_ratio{{tier=\"{tier}\"}}`" for tier in vllm.CACHE_TIERS},
    "prefill_seconds": "cost split by GPU time; prefill calibration",
    "decode_seconds": "cost split by GPU time",
    "spec_decode_drafts": "`spec_decode_mean_acceptance_length_tokens`",
    "spec_decode_draft_tokens": "`spec_decode_acceptance_ratio`",
    "spec_decode_accepted_tokens": "`spec_decode_acceptance_ratio`, `spec_decode_mean_acceptance_length_tokens`",
    "spec_decode_acceptance_ratio": "`spec_decode_acceptance_ratio` (latest value)",
    "engine_flops_per_gpu": "`model_flops_utilization_ratio{source=\"engine\"}`",
    "engine_read_bytes_per_gpu": "`memory_bandwidth_utilization_ratio{source=\"engine\"}` (read + write)",
    "engine_write_bytes_per_gpu": "`memory_bandwidth_utilization_ratio{source=\"engine\"}` (read + write)",
    "requests_running": "`requests_running`; batch, right-sizing evidence",
    "requests_waiting": "`requests_waiting`; right-sizing evidence where the reason is not served",
    "requests_waiting_capacity": "`requests_waiting_by_reason`; right-sizing evidence (queueing)",
    "requests_waiting_deferred": "`requests_waiting_by_reason`",
    "kv_cache_usage_ratio": "`kv_cache_usage_ratio`; analytic MBU, right-sizing evidence",
    "kv_cache_capacity_tokens": "`kv_cache_capacity_tokens`; KV tokens in use, memory breakdown",
    "sleep_level": "right-sizing state `sleeping`",
    "data_parallel_ranks": "replicas of the analytic model and the planner",
    "time_to_first_token": "`time_to_first_token_seconds`; prefill calibration where prefill time is absent",
    "time_per_output_token": "`time_per_output_token_seconds`; TPOT efficiency",
    "inter_token_latency": "`inter_token_latency_seconds`; decode step (analytic MBU)",
    "e2e_request_latency": "`e2e_request_latency_seconds`; requests in the window (calibration)",
    "queue_time": "`queue_time_seconds`",
}


def _serves(exposition: Exposition, source: str) -> bool:
    """Whether the exposition has what a mapping source names: ``vllm:x_total``, ``vllm:x_total{label="v"}``
    (a series with that label value) or ``vllm:cache_config_info label`` (a series with that label set)."""
    match = re.match(r'([\w:]+)(?:\{(\w+)="([^"]*)"\})?(?: (\w+)(?: |$))?', source)
    if match is None:
        return False
    name, label, value, info_label = match.groups()
    series = [labels for suffix in ("", "_sum") for labels, _ in exposition.series(name + suffix)]
    if label is not None:
        return any(labels.get(label) == value for labels in series)
    if info_label is not None and name == vllm.CACHE_CONFIG:
        return any(labels.get(info_label, "None") != "None" for labels in series)
    return bool(series)


def markdown_vllm_versions() -> str:
    """docs/engines.md's table: per canonical field, the vLLM name it is read from in each version with a
    fixture (the first of the adapter's names that version serves; "-": the field is absent there) and what
    infermeter derives from it."""
    tables = {"counter": vllm.NAMES.counters, "gauge": vllm.NAMES.gauges, "histogram": vllm.NAMES.histograms}
    sources: dict[str, tuple[str, ...]] = {}
    for kind, table in tables.items():
        sources.update(table)
        sources.update(vllm.COMPUTED.get(kind, {}))
    read = []
    for _, fixtures in VLLM_VERSIONS:
        texts = [(FIXTURES / f).read_text(encoding="utf-8") for f in fixtures]
        read.append([(parse(text), sample(Setup(f))) for f, text in zip(fixtures, texts, strict=True)])
    rows = ["| Field | " + " | ".join(column for column, _ in VLLM_VERSIONS) + " | Derives (`infermeter_*`) |",
            "| --- | " + " | ".join("---" for _ in VLLM_VERSIONS) + " | --- |"]
    for field in sorted(sources):
        cells = []
        for version in read:
            present = any(field in {**s.counters, **s.gauges, **s.histograms} for _, s in version)
            name = next((source for exposition, _ in version for source in sources[field]
                         if _serves(exposition, source)), None)
            if not present:
                cells.append("-")
            else:
                cells.append(f"`{name.split(' (')[0].removeprefix('vllm:')}`" if name else "0 (no such series yet)")
        rows.append(f"| {field} | " + " | ".join(cells) + f" | {DERIVES.get(field, '')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_support(), end="")
