"""``infermeter report``: a short right-sizing report per engine, from a running exporter or Prometheus.

    infermeter report --url http://gpu-node-1:9416
    infermeter report --prometheus http://prometheus:9090 [--engine NAME] [--format json]
    infermeter report --from URL          # either: Prometheus' query API is tried first

It only reads what the exporter serves (its /metrics, or the same series stored in Prometheus), so
what it prints is what the dashboards and alerts see.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from exporter import remote
from exporter.config import DEFAULT_PORT
from exporter.formatting import dollars

Sample = remote.Sample
# the flags this command reads a URL with, for the "pass this instead" hints
FLAGS = remote.Flags(auto="--from", exporter="--url", prometheus="--prometheus")
# what the report prints for a value the exporter does not serve (idle, or no model or GPU facts)
MISSING = "n/a"
# Prometheus target labels that tell one exporter from another
INSTANCE_LABELS = ("instance", "job")


@dataclass
class EngineReport:
    """Everything the exporter says about one engine: metric name (and a label value) -> value."""

    engine: str
    instance: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    gpus: list[str] = field(default_factory=list)

    def get(self, name: str, key: str = "") -> float | None:
        return self.values.get(f"{name}{{{key}}}" if key else name)


# a sample's labels beyond these become the key of its value (quantile="0.5", state="balanced", ...)
ENGINE_LABELS = {"engine", "kind", "model", *INSTANCE_LABELS}


def group(samples: Iterable[Sample]) -> list[EngineReport]:
    """Per (instance, engine): the engine's values, and the names of the GPUs it uses."""
    reports: dict[tuple[str, str], EngineReport] = {}
    gpu_names: dict[tuple[str, str], str] = {}
    engine_gpus: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, labels, value in samples:
        instance = "/".join(labels.get(k, "") for k in INSTANCE_LABELS if labels.get(k))
        if name == "infermeter_gpu_info":
            gpu_names[(instance, labels.get("gpu", ""))] = labels.get("name", "")
        if "engine" not in labels:
            continue
        if name == "infermeter_engine_gpu_info":
            engine_gpus[(instance, labels["engine"])].append(labels.get("gpu", ""))
            continue
        report = reports.setdefault((instance, labels["engine"]), EngineReport(labels["engine"], instance))
        report.labels.update({k: v for k, v in labels.items() if k in {"kind", "model"} and v})
        if name == "infermeter_rightsizing_plan_info":  # its labels must not mix with the what-if's best shape
            report.labels.update({f"plan_{k}": v for k, v in labels.items() if k not in ENGINE_LABELS})
            continue
        if name == "infermeter_rightsizing_calibration_info":  # one per phase: "calibrated" or why not
            report.labels[f"calibration_{labels.get('phase', '')}"] = labels.get("reason") or labels.get("basis", "")
            continue
        if name.endswith("_info"):
            report.labels.update({k: v for k, v in labels.items() if k not in ENGINE_LABELS})
            continue
        extra = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ENGINE_LABELS)
        report.values[f"{name}{{{extra}}}" if extra else name] = value
    for (instance, engine), report in reports.items():
        report.gpus = [gpu_names.get((instance, gpu), f"GPU {gpu}") for gpu in engine_gpus[(instance, engine)]]
    return sorted(reports.values(), key=lambda r: (r.instance, r.engine))


def _money(value: float | None, per: str = "") -> str:
    return MISSING if value is None else dollars(value) + per


def _seconds(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _ratio(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _by_source(values: dict[str, float | None], idle: bool) -> str:
    """``0.49 (analytic) / 0.52 (engine)``, or n/a when no source reports it (saying so when idle)."""
    known = " / ".join(f"{_ratio(v)} ({s})" for s, v in values.items() if v is not None)
    return known or (f"{MISSING} (idle)" if idle else MISSING)


def render(report: EngineReport) -> str:
    r, p = report, "infermeter_"
    state = next((key.split("=", 1)[1] for key, value in r.values.items()
                  if key.startswith(p + "rightsizing_state{") and value == 1), None)
    up = r.get(p + "engine_up")
    gpus = f"{len(r.gpus)} x {r.gpus[0]}" if r.gpus and len(set(r.gpus)) == 1 else ", ".join(r.gpus) or "no GPU"
    where = f" [{r.instance}]" if r.instance else ""
    lines = [f"engine {r.engine} ({r.labels.get('kind', '?')}, {r.labels.get('model', '?')}) on {gpus}{where}"]
    if up != 1:
        lines.append("  DOWN: the exporter could not read this engine in its last collection")
        return "\n".join(lines)
    verdict = evidence(state.rstrip("}"), r) if state else "unknown (no model or GPU facts, or too little evidence yet)"
    lines.append(f"  state            {verdict}")
    rps, waiting = r.get(p + "requests_per_second"), r.get(p + "requests_waiting")
    prompt, generated = r.get(p + "prompt_tokens_per_second"), r.get(p + "generation_tokens_per_second")
    running, usage = r.get(p + "requests_running"), r.get(p + "kv_cache_usage_ratio")
    idle = not any((rps, prompt, generated, running, waiting))  # every one zero or not served
    load = ("idle: no requests or tokens in the window" if idle else
            f"{rps or 0:.2f} req/s, {prompt or 0:,.0f} prompt + {generated or 0:,.0f} generated tok/s, "
            f"{running or 0:.0f} running, {waiting or 0:.0f} waiting")
    lines.append(f"  load             {load}" + (f", KV cache {usage:.0%} full" if usage is not None else ""))
    ttft = {q: r.get(p + "time_to_first_token_seconds", f"quantile={q}") for q in ("0.5", "0.95")}
    tpot = r.get(p + "time_per_output_token_seconds", "quantile=0.5")
    lines.append(f"  latency          TTFT p50 {_seconds(ttft['0.5'])}, p95 {_seconds(ttft['0.95'])}; "
                 f"TPOT p50 {_seconds(tpot)} (roofline {_seconds(r.get(p + 'expected_time_per_output_token_seconds'))},"
                 f" efficiency {_ratio(r.get(p + 'tpot_efficiency_ratio'))})")
    mbu = {s: r.get(p + "memory_bandwidth_utilization_ratio", f"source={s}") for s in ("analytic", "engine")}
    mfu = {s: r.get(p + "model_flops_utilization_ratio", f"source={s}") for s in ("analytic", "engine")}
    lines.append(f"  utilisation      MBU {_by_source(mbu, idle)}, MFU {_by_source(mfu, idle)}")
    per_million = {t: r.get(p + "cost_per_million_tokens_dollars", f"token_type={t}")
                   for t in ("total", "prompt", "generation")}
    per_request = r.get(p + "cost_per_request_dollars")
    if per_request is None and all(v is None for v in per_million.values()):
        priced = f"{MISSING} per request and per million tokens" + (" (idle)" if idle else "")
    else:
        priced = (f"{_money(per_request)} per request, {_money(per_million['total'])} per million tokens (prompt "
                  f"{_money(per_million['prompt'])}, generation {_money(per_million['generation'])})")
    lines.append(f"  cost             {_money(r.get(p + 'cost_dollars_per_hour'), '/h')}, {priced}; idle "
                 f"{_money(r.get(p + 'idle_cost_dollars_per_hour'), '/h')}")
    lines.append(f"  recommendation   {recommendation(r)}")
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return MISSING if value is None else f"{value:.0%}"


# the settings that cap an engine's batch, by kind (docs/runbooks.md, InfermeterDeploymentEngineLimited)
ENGINE_CAPS = {
    "vllm": "--max-num-seqs, --max-num-batched-tokens",
    "sglang": "--max-running-requests, --chunked-prefill-size, --max-prefill-tokens",
    "tgi": "--max-batch-total-tokens, --max-batch-prefill-tokens, --max-concurrent-requests",
    "triton": "max_batch_size, max_num_tokens in the model config",
}


def evidence(state: str, r: EngineReport) -> str:
    """``memory_bound: 1.13 preemptions/s, ...``: the state and what it rests on (docs/analytic-model.md)."""
    p = "infermeter_rightsizing_"
    preemptions, full = r.get(p + "preemptions_per_second"), r.get(p + "kv_cache_full_ratio")
    queueing, waiting = r.get(p + "queueing_ratio"), r.get(p + "waiting_requests")
    batch, busy, loaded = r.get(p + "batch_ratio"), r.get(p + "gpu_busy_ratio"), r.get(p + "loaded_ratio")
    seconds = r.get(p + "evidence_window_seconds")
    queue = f"requests waiting in {_share(queueing)} of loaded samples ({waiting or 0:.1f} on average)"
    batch_text = f"batch at {_share(batch)} of the largest the TPOT target allows"
    facts = {
        "memory_bound": f"{preemptions or 0:.2f} preemptions/s, KV cache full in {_share(full)} of loaded samples, "
                        + queue,
        "compute_bound": f"{queue}, {batch_text}",
        "engine_limited": f"{queue} with KV cache room, {batch_text}: the engine's own caps "
                          f"({ENGINE_CAPS.get(r.labels.get('kind', ''), 'its batch and token limits')}), "
                          f"GPUs {_share(busy)} busy",
        "overprovisioned": f"no queue, loaded in {_share(loaded)} of samples, {batch_text}",
        "sleeping": "the engine sleeps (vLLM sleep mode): its GPUs hold no work",
        "balanced": f"no sustained queue or preemption, {batch_text}",
    }
    detail = facts.get(state)
    span = f" (last {seconds:.0f} s)" if seconds is not None and state != "sleeping" else ""
    return f"{state}: {detail}{span}" if detail else state


def recommendation(r: EngineReport) -> str:
    """The planner's answer for the engine's GPU model, as infermeter_rightsizing_* says it."""
    p = "infermeter_rightsizing_"
    needed = r.get(p + "gpus_needed")
    if needed is None:
        return "no recommendation (unknown model or GPU, or no shape meets the SLO targets)"
    shape = r.labels.get("plan_tensor_parallel")
    savings = r.get(p + "savings_dollars_per_hour") or 0.0
    achievable = r.get("infermeter_achievable_cost_per_million_tokens_dollars")
    calibration = ", ".join(f"{phase} {r.labels[f'calibration_{phase}']}" for phase in ("decode", "prefill")
                            if f"calibration_{phase}" in r.labels)
    return (f"{needed:.0f} GPU(s)" + (f" at tensor parallel {shape}" if shape else "")
            + f" would serve this load within the SLOs (it has {len(r.gpus)})"
            + (f": save {_money(savings, '/h')}" if savings > 0 else "")
            + (f"; at that size {_money(achievable)} per million tokens" if achievable is not None else "")
            + (f" [{calibration}]" if calibration else ""))


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0 (a timeout, a rate, a token count, an efficiency)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infermeter report", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", metavar="URL",
                        help="a running exporter or a Prometheus server that scrapes one (whichever answers)")
    source.add_argument("--url", metavar="URL", help=f"a running exporter (default http://127.0.0.1:{DEFAULT_PORT})")
    source.add_argument("--prometheus", metavar="URL", help="a Prometheus server that scrapes infermeter")
    parser.add_argument("--engine", help="only this engine")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--timeout", type=positive_number, default=10.0, metavar="S", help="read timeout (default 10)")
    args = parser.parse_args(argv)
    if args.source:
        where, want = args.source, remote.AUTO
    elif args.prometheus:
        where, want = args.prometheus, remote.PROMETHEUS
    else:
        where, want = args.url or f"http://127.0.0.1:{DEFAULT_PORT}", remote.EXPORTER
    try:
        reports = group(remote.read(where, args.timeout, want, FLAGS))
    except remote.ReadError as err:
        print(f"infermeter report: {err}", file=sys.stderr)
        return 1
    found = [r for r in reports if args.engine in (None, r.engine)]
    if not found:
        at = remote.shown(where)
        message = (f"no engine found named {args.engine!r} at {at} (engines: "
                   f"{', '.join(r.engine for r in reports) or 'none'})" if args.engine
                   else f"no engine found at {at}: the exporter reads none (start it with --engine URL)")
        print(f"infermeter report: {message}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps([r.__dict__ for r in found], indent=2, sort_keys=True))
    else:
        print("\n\n".join(render(r) for r in found))
    return 0
