"""``infermeter report``: a short right-sizing report per engine, from a running exporter or Prometheus.

    infermeter report --url http://gpu-node-1:9416
    infermeter report --prometheus http://prometheus:9090 [--engine NAME] [--format json]

It only reads what the exporter serves (its /metrics, or the same series stored in Prometheus), so
what it prints is what the dashboards and alerts see.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import DEFAULT_PORT

Sample = tuple[str, dict[str, str], float]
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


def exporter_samples(url: str, timeout: float = 10.0) -> list[Sample]:
    """Every sample a running exporter serves on URL/metrics."""
    response = requests.get(url.rstrip("/") + "/metrics", timeout=timeout)
    response.raise_for_status()
    return [(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(response.text) for s in family.samples]


def from_exporter(url: str, timeout: float = 10.0) -> list[EngineReport]:
    return group(exporter_samples(url, timeout))


def prometheus_samples(url: str, timeout: float = 10.0) -> list[Sample]:
    """The latest value of every infermeter_* series a Prometheus server holds."""
    response = requests.get(url.rstrip("/") + "/api/v1/query", params={"query": '{__name__=~"infermeter_.+"}'},
                            timeout=timeout)
    response.raise_for_status()
    body = response.json()
    if body.get("status") != "success":
        raise ValueError(f"Prometheus answered {body.get('status')}: {body.get('error', '')}")
    samples = []
    for series in body["data"]["result"]:
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        samples.append((name, labels, float(series["value"][1])))
    return samples


def from_prometheus(url: str, timeout: float = 10.0) -> list[EngineReport]:
    return group(prometheus_samples(url, timeout))


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
        if name.endswith("_info"):
            report.labels.update({k: v for k, v in labels.items() if k not in ENGINE_LABELS})
            continue
        extra = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ENGINE_LABELS)
        report.values[f"{name}{{{extra}}}" if extra else name] = value
    for (instance, engine), report in reports.items():
        report.gpus = [gpu_names.get((instance, gpu), f"GPU {gpu}") for gpu in engine_gpus[(instance, engine)]]
    return sorted(reports.values(), key=lambda r: (r.instance, r.engine))


def _money(value: float | None, per: str = "") -> str:
    if value is None:
        return "?"
    text = f"${value:,.2f}" if value >= 0.1 else f"${value:.3g}"
    return text + per


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _ratio(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


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
    lines.append(f"  state            {state.rstrip('}') if state else 'unknown (no model or GPU facts)'}")
    waiting = r.get(p + "requests_waiting")
    usage = r.get(p + "kv_cache_usage_ratio")
    lines.append(
        f"  load             {r.get(p + 'requests_per_second') or 0:.2f} req/s, "
        f"{r.get(p + 'prompt_tokens_per_second') or 0:,.0f} prompt + "
        f"{r.get(p + 'generation_tokens_per_second') or 0:,.0f} generated tok/s, "
        f"{r.get(p + 'requests_running') or 0:.0f} running, {waiting or 0:.0f} waiting"
        + (f", KV cache {usage:.0%} full" if usage is not None else ""))
    ttft = {q: r.get(p + "time_to_first_token_seconds", f"quantile={q}") for q in ("0.5", "0.95")}
    tpot = r.get(p + "time_per_output_token_seconds", "quantile=0.5")
    lines.append(f"  latency          TTFT p50 {_seconds(ttft['0.5'])}, p95 {_seconds(ttft['0.95'])}; "
                 f"TPOT p50 {_seconds(tpot)} (roofline {_seconds(r.get(p + 'expected_time_per_output_token_seconds'))},"
                 f" efficiency {_ratio(r.get(p + 'tpot_efficiency_ratio'))})")
    mbu = {s: r.get(p + "memory_bandwidth_utilization_ratio", f"source={s}") for s in ("analytic", "engine")}
    mfu = {s: r.get(p + "model_flops_utilization_ratio", f"source={s}") for s in ("analytic", "engine")}
    lines.append("  utilisation      MBU " + " / ".join(f"{_ratio(v)} ({s})" for s, v in mbu.items() if v is not None)
                 + ", MFU " + " / ".join(f"{_ratio(v)} ({s})" for s, v in mfu.items() if v is not None))
    per_million = {t: r.get(p + "cost_per_million_tokens_dollars", f"token_type={t}")
                   for t in ("total", "prompt", "generation")}
    lines.append(f"  cost             {_money(r.get(p + 'cost_dollars_per_hour'), '/h')}, "
                 f"{_money(r.get(p + 'cost_per_request_dollars'))} per request, "
                 f"{_money(per_million['total'])} per million tokens (prompt {_money(per_million['prompt'])}, "
                 f"generation {_money(per_million['generation'])}); idle "
                 f"{_money(r.get(p + 'idle_cost_dollars_per_hour'), '/h')}")
    needed = r.get(p + "rightsizing_gpus_needed")
    if needed is not None:
        savings = r.get(p + "rightsizing_savings_dollars_per_hour") or 0.0
        advice = (f"{needed:.0f} GPU(s) would serve this load within the SLOs (it has {len(r.gpus)})"
                  + (f": save {_money(savings, '/h')}" if savings > 0 else "")
                  + f"; at that size {_money(r.get(p + 'achievable_cost_per_million_tokens_dollars'))} per million "
                    "tokens")
    else:
        advice = "no recommendation (unknown model or GPU, or no batch meets the SLO targets)"
    lines.append(f"  recommendation   {advice}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infermeter report", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--url", default=f"http://127.0.0.1:{DEFAULT_PORT}",
                        help=f"a running exporter (default http://127.0.0.1:{DEFAULT_PORT})")
    source.add_argument("--prometheus", metavar="URL", help="a Prometheus server that scrapes infermeter")
    parser.add_argument("--engine", help="only this engine")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    try:
        reports = from_prometheus(args.prometheus) if args.prometheus else from_exporter(args.url)
    except (requests.RequestException, ValueError, KeyError) as err:
        where = args.prometheus or args.url
        print(f"infermeter report: cannot read {where}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    reports = [r for r in reports if args.engine in (None, r.engine)]
    if not reports:
        print("infermeter report: no engine found" + (f" named {args.engine!r}" if args.engine else ""),
              file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps([r.__dict__ for r in reports], indent=2, sort_keys=True))
    else:
        print("\n\n".join(render(r) for r in reports))
    return 0
