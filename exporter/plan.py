"""``infermeter plan``: a ranked, priced capacity plan for serving a model at a rate (docs/planning.md).

    infermeter plan --model meta-llama/Llama-3.1-70B --rate 2 --prompt-tokens 1000 --output-tokens 250
    infermeter plan --from http://gpu-node-1:9416 [--engine NAME]      # load, model and efficiency observed

The arithmetic is exporter.derive.plan; this module reads the inputs (flags, a config file's GPU
prices, a running exporter or Prometheus) and renders the table or the JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

from exporter import remote, report
from exporter.config import PRICING_MODELS, ConfigError, load_config
from exporter.derive import plan as planner
from exporter.derive import roofline
from exporter.facts import gpus as gpu_facts
from exporter.facts import models as model_facts
from exporter.facts.gpus import GpuSpec
from exporter.formatting import dollars
from exporter.report import positive_number

PROG = "infermeter plan"
P = "infermeter_"


class UsageError(Exception):
    """A bad input: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        print(f"{PROG}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="A ranked, priced capacity plan for serving a model at a request rate, "
                                        "from the roofline or calibrated by a watched deployment "
                                        "(docs/planning.md).")
    what = p.add_argument_group("what to serve (required unless --from supplies it)")
    what.add_argument("--model", metavar="CONFIG.json|NAME",
                      help="a Hugging Face config.json (or its directory), or a built-in model name")
    what.add_argument("--rate", type=positive_number, metavar="REQUESTS_PER_S", help="requests per second to serve")
    what.add_argument("--prompt-tokens", type=positive_number, metavar="N", help="mean prompt tokens per request")
    what.add_argument("--output-tokens", type=positive_number, metavar="N", help="mean generated tokens per request")
    how = p.add_argument_group("targets and options")
    how.add_argument("--slo-ttft", "--slo-ttft-seconds", dest="slo_ttft", type=positive_number, metavar="S",
                     help=f"time-to-first-token target (default {planner.DEFAULT_TTFT_SECONDS:g} s)")
    how.add_argument("--slo-tpot", "--slo-tpot-seconds", dest="slo_tpot", type=positive_number, metavar="S",
                     help=f"time-per-output-token target (default {planner.DEFAULT_TPOT_SECONDS:g} s)")
    how.add_argument("--gpu", action="append", metavar="NAME",
                     help="only this GPU model (NVML name, e.g. 'NVIDIA H100 80GB HBM3'); repeatable")
    how.add_argument("--dtype", choices=planner.WEIGHT_DTYPES,
                     help="serve the weights in this precision (default: the checkpoint's own)")
    how.add_argument("--kv-cache-dtype", choices=planner.KV_CACHE_DTYPES, default=None,
                     help="KV cache precision (vLLM --kv-cache-dtype; auto = the model's activation dtype); "
                          "default: what --from planned with, else auto")
    how.add_argument("--pricing", choices=PRICING_MODELS,
                     help="which price per GPU-hour (default: the --config file's pricing, else on-demand)")
    how.add_argument("--config", metavar="FILE",
                     help="an infermeter config file: its gpus: table (your prices, extra GPUs) and pricing")
    how.add_argument("--format", choices=("table", "json"), default="table")
    calibrate = p.add_argument_group("calibration (docs/planning.md)")
    calibrate.add_argument("--from", dest="source", metavar="URL",
                           help="a running exporter or a Prometheus server: read the load, model, SLO targets "
                                "and observed efficiency of one engine (flags given here win)")
    calibrate.add_argument("--engine", metavar="NAME",
                           help="with --from: the engine to read (needed when there are several)")
    calibrate.add_argument("--decode-efficiency", type=positive_number, metavar="RATIO",
                           help="observed decode step efficiency (MBU): roofline step / real step, (0, 1]")
    calibrate.add_argument("--prefill-efficiency", type=positive_number, metavar="RATIO",
                           help="observed prefill efficiency: roofline prefill / real prefill, (0, 1]")
    calibrate.add_argument("--roofline", action="store_true",
                           help="ignore the efficiency --from observed: plan on the roofline alone")
    calibrate.add_argument("--timeout", type=positive_number, default=10.0, metavar="S", help="--from read timeout")
    return p


# ------------------------------------------------------------------------------------------ model


def model_config(spec: str) -> tuple[dict[str, Any], str, str]:
    """(parsed config.json, name, source) for a path to a config.json (or its directory) or a built-in name."""
    path = Path(spec)
    if path.exists():
        file = path / "config.json" if path.is_dir() else path
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except OSError as err:
            raise UsageError(f"cannot read model config {file}: {err.strerror or err}") from None
        except json.JSONDecodeError as err:
            raise UsageError(f"model config {file} is not valid JSON: {err.msg} at line {err.lineno}") from None
        if not isinstance(config, dict):
            raise UsageError(f"model config {file} is not a JSON object")
        name = file.parent.name if file.name == "config.json" else file.stem
        return config, name, str(file)
    builtin = model_facts.builtin(spec)
    if builtin is None:
        raise UsageError(f"unknown model {spec!r}: not a file, and not a built-in model "
                         f"({', '.join(model_facts.builtin_names())})")
    file_name = builtin.name.replace("/", "--", 1) + ".json"
    text = resources.files("exporter.facts").joinpath("models").joinpath(file_name).read_text(encoding="utf-8")
    return json.loads(text), builtin.name, builtin.source


# ------------------------------------------------------------------------------------------ GPUs


@dataclass(frozen=True)
class Prices:
    gpus: tuple[GpuSpec, ...]     # every GPU known: the catalogue with the config's overrides, then its new rows
    pricing: str
    from_config: bool


def gpu_table(config_file: str | None, pricing: str | None) -> Prices:
    rows = dict(gpu_facts.catalogue())
    file_pricing = None
    if config_file is not None:
        try:
            config = load_config(["--config", config_file], {})
        except ConfigError as err:
            raise UsageError(str(err)) from None
        file_pricing = config.pricing
        for name, fields in (config.gpu_specs or {}).items():
            base = gpu_facts.find(name)
            spec = gpu_facts.spec_from_mapping(name, fields, base)  # validated by load_config
            rows[base.name if base else name] = replace(spec, name=base.name) if base else spec
    return Prices(tuple(rows.values()), pricing or file_pricing or "on-demand", config_file is not None)


def choose_gpus(table: Sequence[GpuSpec], names: Sequence[str] | None) -> list[GpuSpec]:
    if not names:
        return list(table)
    extra = {spec.name: spec for spec in table}
    chosen: list[GpuSpec] = []
    for name in names:
        spec = gpu_facts.find(name, extra)
        if spec is None:
            raise UsageError(f"unknown GPU {name!r}; known: {', '.join(extra)}")
        if spec not in chosen:
            chosen.append(spec)
    return chosen


# ------------------------------------------------------------------------------------------ --from


@dataclass(frozen=True)
class Observed:
    """What --from read about one engine."""

    url: str
    engine: report.EngineReport
    model: str | None                # a built-in name or a readable config path
    requests_per_second: float | None
    prompt_tokens: float | None
    output_tokens: float | None
    slo_ttft_seconds: float | None
    slo_tpot_seconds: float | None
    decode_efficiency: float | None
    prefill_efficiency: float | None
    kv_cache_dtype: str | None = None
    computed_prompt_tokens: float | None = None  # where a prefix cache serves part of the prompt

    def describe(self) -> dict[str, Any]:
        e = self.engine
        return {"url": self.url, "engine": e.engine, "instance": e.instance, "model": e.labels.get("model"),
                "gpus": e.gpus, "dollars_per_hour": e.get(P + "cost_dollars_per_hour"),
                "requests_per_second": self.requests_per_second}


def _instance(labels: Mapping[str, str]) -> str:
    return "/".join(labels.get(k, "") for k in report.INSTANCE_LABELS if labels.get(k))


def observe(url: str, engine: str | None, samples: Sequence[report.Sample]) -> Observed:
    engines = [e for e in report.group(samples) if engine in (None, e.engine)]
    if not engines:
        raise UsageError(f"no engine {'named ' + repr(engine) + ' ' if engine else ''}at {url}")
    if len(engines) > 1:
        names = ", ".join(f"{e.instance}/{e.engine}" if e.instance else e.engine for e in engines)
        raise UsageError(f"{url} has several engines ({names}): pick one with --engine NAME")
    (e,) = engines
    if e.get(P + "engine_up") != 1:
        raise UsageError(f"engine {e.engine} at {url} is down: nothing observed to plan from")
    source = e.labels.get("spec_source", "")
    model: str | None = None
    if source.startswith("built-in: "):
        model = source[len("built-in: "):]
    elif source and Path(source).exists():
        model = source
    elif e.labels.get("model") and model_facts.builtin(e.labels["model"]) is not None:
        model = e.labels["model"]
    slo: dict[str, float] = {}
    for name, value in ((n, v) for n, labels, v in samples
                        if n.startswith(P + "slo_") and _instance(labels) == e.instance):
        slo[name] = value
    # what the exporter's own planner was given (exporter.derive.rightsizing), so that this plan's row for
    # the engine's GPU model is the exporter's infermeter_rightsizing_gpus_needed
    return Observed(
        url=url, engine=e, model=model, requests_per_second=e.get(P + "rightsizing_planned_requests_per_second"),
        prompt_tokens=e.get(P + "rightsizing_planned_prompt_tokens"),
        output_tokens=e.get(P + "rightsizing_planned_output_tokens"),
        slo_ttft_seconds=slo.get(P + "slo_time_to_first_token_seconds"),
        slo_tpot_seconds=slo.get(P + "slo_time_per_output_token_seconds"),
        decode_efficiency=e.get(P + "rightsizing_efficiency_ratio", "phase=decode"),
        prefill_efficiency=e.get(P + "rightsizing_efficiency_ratio", "phase=prefill"),
        kv_cache_dtype=e.labels.get("plan_kv_cache_dtype"),
        computed_prompt_tokens=e.get(P + "rightsizing_planned_computed_prompt_tokens"))


# ------------------------------------------------------------------------------------------ rendering


def _money(value: float | None) -> str:
    return "-" if value is None else dollars(value)


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _count(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# the table fits 100 columns; the JSON keeps what it leaves out (KV tokens, the decode bound, $/request)
COLUMNS = ("#", "GPU", "TP", "replicas", "GPUs", "batch", "TPOT", "TTFT", "req/s/rep", "$/h", "$/M tok")
RIGHT = {"#", "TP", "replicas", "GPUs", "batch", "TPOT", "TTFT", "req/s/rep", "$/h", "$/M tok"}
# what limits the batch, as the table's batch column says it
LIMITS = {"kv_cache": "kv", "tpot": "tpot", "max_batch": "max"}
MAX_WIDTH = 100
# GPU names longer than this are cut (only names a config file adds; the catalogue's are shorter)
GPU_WIDTH = 16


def table(rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS) -> list[str]:
    """Columns padded to their widest cell; numbers right-aligned."""
    widths = [max(len(columns[i]), *(len(r[i]) for r in rows)) if rows else len(columns[i])
              for i in range(len(columns))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if columns[i] in RIGHT else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(columns), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def short(gpu: str) -> str:
    """A GPU's name without the vendor prefix, for the table."""
    return gpu[len("NVIDIA "):] if gpu.startswith("NVIDIA ") else gpu


def _cell_gpu(gpu: str) -> str:
    name = short(gpu)
    return name if len(name) <= GPU_WIDTH else name[:GPU_WIDTH - 2] + ".."


def _batch(candidate: planner.Candidate) -> str:
    """B* and what limits it: ``23 kv``, ``879 tpot``, ``1,024 max``."""
    if candidate.batch is None:
        return "-"
    limit = LIMITS.get(candidate.batch_limit or "", candidate.batch_limit or "")
    return f"{candidate.batch:,} {limit}".rstrip()


_NUMBER_UNIT = re.compile(r"(\d) (bytes|GB|GiB|MB|ms|s|x|tokens?|requests?/s)\b")


def _fill(text: str, indent: int) -> list[str]:
    """``text`` wrapped to MAX_WIDTH columns, continuation lines indented by ``indent``."""
    if len(text) <= MAX_WIDTH:
        return [text]
    # textwrap breaks only at ASCII spaces: "74.8 GB" and "--slo-ttft / --slo-tpot" stay whole
    glued = _NUMBER_UNIT.sub("\\1\u00a0\\2", text).replace(" / ", "\u00a0/\u00a0")
    return [line.replace("\u00a0", " ") for line in textwrap.wrap(
        glued, MAX_WIDTH, subsequent_indent=" " * indent, break_long_words=False, break_on_hyphens=False)]


def render(result: planner.Plan, notes: Sequence[str]) -> str:
    m, w, slo = result.model, result.workload, result.slo
    kv = roofline.kv_bytes_per_token(m, roofline.kv_dtype_bytes(result.kv_cache_dtype, m))
    label = len("  targets  ")  # where the header's values start
    lines = [
        *_fill(f"plan for {m.name} ({m.architecture}, {m.weight_dtype} weights {m.weight_bytes / 1e9:,.1f} GB; "
               f"KV cache {result.kv_cache_dtype}, {kv:,.0f} bytes per token)", 2),
        f"  load     {w.requests_per_second:g} requests/s of {w.prompt_tokens:,.0f} prompt + "
        f"{w.output_tokens:,.0f} output tokens",
        f"  targets  TTFT {_time(slo.ttft_seconds)}, TPOT {_time(slo.tpot_seconds)} (mean request; queueing not "
        "modelled)",
        f"  prices   {result.pricing}, per GPU-hour",
    ]
    if result.basis == "calibrated":
        cal = result.calibration
        lines += _fill(f"  basis    calibrated: decode at {_ratio(cal.decode)} and prefill at {_ratio(cal.prefill)} "
                       f"of the roofline ({cal.source})", label)
    else:
        lines.append("  basis    roofline: an upper bound on speed, so a lower bound on cost (calibrate: --from)")
    for note in notes:
        lines += _fill(f"  note     {note}", label)
    feasible = [c for c in result.candidates if c.feasible]
    rows = [[str(i), _cell_gpu(c.gpu), str(c.tensor_parallel), _count(c.replicas), _count(c.gpus), _batch(c),
             _time(c.tpot_seconds), _time(c.ttft_seconds), _count(c.requests_per_second_per_replica, 2),
             _money(c.dollars_per_hour), _money(c.dollars_per_million_tokens)] for i, c in enumerate(feasible, 1)]
    lines.append("")
    lines.extend(table(rows) if rows else ["no GPU in the list can serve this load within the targets"])
    per_gpu_notes = sorted({f"{c.gpu}: {note}" for c in feasible for note in c.notes})
    if per_gpu_notes:
        lines += ["", "notes"]
        for note in per_gpu_notes:
            lines += _fill(f"  {note}", 4)
    ruled_out = [c for c in result.candidates if not c.feasible]
    if ruled_out:
        width = max(len(short(c.gpu)) for c in ruled_out)
        tp = max(len(f"TP{c.tensor_parallel}") for c in ruled_out)
        lines += ["", "ruled out"]
        for c in ruled_out:
            lines += _fill(f"  {short(c.gpu).ljust(width)}  {f'TP{c.tensor_parallel}'.ljust(tp)}  {c.reason}",
                           2 + width + 2 + tp + 2)
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "1 (roofline)" if value is None else f"{value:.2f}"


# ------------------------------------------------------------------------------------------ main


def build(args: argparse.Namespace) -> tuple[planner.Plan, dict[str, Any], list[str]]:
    """The plan, the extra JSON inputs and the header notes for parsed arguments (raises UsageError)."""
    observed: Observed | None = None
    notes: list[str] = []
    if args.source:
        samples = remote.read(args.source, args.timeout, remote.AUTO, remote.Flags(auto="--from"))
        observed = observe(remote.shown(args.source), args.engine, samples)
    elif args.engine:
        raise UsageError("--engine needs --from")

    def pick(flag: float | str | None, seen: float | str | None, what: str) -> Any:
        if flag is not None:
            return flag
        if seen is not None:
            return seen
        where = f" and {observed.engine.engine} at {observed.url} did not report it" if observed else ""
        raise UsageError(f"{what} is required{where}")

    model_name = pick(args.model, observed.model if observed else None, "--model")
    config, name, source = model_config(model_name)
    try:
        model = planner.with_weight_dtype(config, name, source, args.dtype)
        workload = planner.Workload(
            pick(args.rate, observed.requests_per_second if observed else None, "--rate"),
            pick(args.prompt_tokens, observed.prompt_tokens if observed else None, "--prompt-tokens"),
            pick(args.output_tokens, observed.output_tokens if observed else None, "--output-tokens"),
            observed.computed_prompt_tokens if observed is not None and args.prompt_tokens is None else None)
    except ValueError as err:
        raise UsageError(str(err)) from None
    ttft = args.slo_ttft or (observed.slo_ttft_seconds if observed else None)
    tpot = args.slo_tpot or (observed.slo_tpot_seconds if observed else None)
    defaults = [f"{label} {value:g} s" for label, value, given in (
        ("TTFT", planner.DEFAULT_TTFT_SECONDS, ttft), ("TPOT", planner.DEFAULT_TPOT_SECONDS, tpot)) if given is None]
    if defaults:
        notes.append(f"default target {', '.join(defaults)} (MLPerf Inference Server scenario, Llama-3.1-8B); "
                     "set --slo-ttft / --slo-tpot")
    slo = planner.Slo(ttft or planner.DEFAULT_TTFT_SECONDS, tpot or planner.DEFAULT_TPOT_SECONDS)

    decode = args.decode_efficiency
    prefill = args.prefill_efficiency
    where = []
    if observed and not args.roofline:
        seen = observed.engine.gpus
        on = f" on {len(seen)} x {seen[0]}" if seen and len(set(seen)) == 1 else ""
        if decode is None and observed.decode_efficiency is not None:
            decode = observed.decode_efficiency
            where.append("decode: analytic MBU")
        if prefill is None and observed.prefill_efficiency is not None:
            prefill = observed.prefill_efficiency
            where.append("prefill: expected TTFT / observed mean prefill time")
        source_text = f"engine {observed.engine.engine}{on} at {observed.url}"
    else:
        source_text = ""
    if args.decode_efficiency is not None or args.prefill_efficiency is not None:
        where.append("flags")
    try:
        calibration = planner.Calibration(decode, prefill, "; ".join(filter(None, [source_text, ", ".join(where)])))
    except ValueError as err:
        raise UsageError(str(err)) from None

    prices = gpu_table(args.config, args.pricing)
    gpus = choose_gpus(prices.gpus, args.gpu)
    if not prices.from_config:
        notes.append("catalogue prices are placeholders (exporter/facts/gpus.toml); put yours under gpus: in --config")
    result = planner.plan(model, gpus, workload, slo, pricing=prices.pricing, calibration=calibration,
                          kv_cache_dtype=args.kv_cache_dtype or (observed.kv_cache_dtype if observed else None)
                          or "auto")
    extra: dict[str, Any] = {"gpus": [g.name for g in gpus], "config_file": args.config,
                             "observed": observed.describe() if observed else None}
    if observed is not None:
        own = own_gpu_model(result, observed)
        if own is not None:
            notes.append(own)
    return result, extra, notes


def own_gpu_model(result: planner.Plan, observed: Observed) -> str | None:
    """The line that says what this plan gives for the engine's own GPU model: the same as the exporter's
    infermeter_rightsizing_gpus_needed, since the plan replays the exporter's planner inputs."""
    seen = set(observed.engine.gpus)
    if len(seen) != 1:
        return None
    (name,) = seen
    best = next((c for c in result.candidates if c.gpu == name and c.feasible), None)  # ranked: first is best
    if best is None:
        return f"the engine's GPU model, {name}: no shape serves this load within the targets"
    return (f"the engine's GPU model, {name}: {best.gpus} GPU(s) at tensor parallel {best.tensor_parallel} "
            f"(it has {len(observed.engine.gpus)}; the exporter's infermeter_rightsizing_gpus_needed)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result, extra, notes = build(args)
    except UsageError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    except remote.ReadError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(result.to_json(extra), indent=2))
    else:
        print(render(result, notes))
    return 0
