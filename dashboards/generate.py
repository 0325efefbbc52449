"""Grafana dashboards for infermeter, as code.

``python3 dashboards/generate.py`` writes ``dashboards/*.json`` (sorted keys, 2-space indent, trailing
newline, so a regeneration diffs cleanly); ``--check`` writes nothing and exits 1 when a committed file
differs from what this script generates.

Every query reads raw ``infermeter_*`` series (no recording rules), so each panel works against a single
exporter. Ratios across engines are computed from sums (``sum(cost) / sum(tokens)``), never by averaging
per-engine ratios. Plain Python and the standard library only: no dashboard SDK.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39  # Grafana 10.4 and 11
GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["infermeter"]

# --- units (Grafana unit ids) ---
SECONDS = "s"
RATIO = "percentunit"
USD = "currencyUSD"
BYTES = "bytes"
WATTS = "watt"
JOULES = "joule"
CELSIUS = "celsius"
HERTZ = "hertz"
REQUESTS_PER_SECOND = "reqps"
TOKENS_PER_SECOND = "count:tok/s"
TOKENS = "count:tok"
PER_SECOND = "count:/s"
COUNT = "short"
NONE = "none"

# --- selectors: the one place that says which series a dashboard reads ---
ENGINE_MATCHERS = 'instance=~"$instance", engine=~"$engine", model=~"$model"'
GPU_MATCHERS = 'instance=~"$instance", gpu=~"$gpu"'
NODE_MATCHERS = 'instance=~"$instance"'
ENGINE_KEY = "job, instance, engine"  # identifies one engine across its series
BY_ENGINE = "instance, engine, model"  # one table row or series per engine, with its model

# --- legends ---
ENGINE_LEGEND = "{{engine}} ({{model}}, {{instance}})"
GPU_LEGEND = "GPU {{gpu}} ({{instance}})"

# Right-sizing states (exporter/derive/verdict.py STATES; docs/analytic-model.md), each with the code a
# state timeline query gives it (from idle to saturated) and its colour.
STATES: dict[str, tuple[int, str]] = {
    "sleeping": (1, "blue"), "overprovisioned": (2, "orange"), "balanced": (3, "green"),
    "engine_limited": (4, "purple"), "compute_bound": (5, "red"), "memory_bound": (6, "dark-red")}
# The exporter's thresholds the evidence panels draw (exporter/derive/verdict.py)
QUEUEING_SHARE = 0.5  # of loaded samples with a request waiting: a queue
COMPUTE_BATCH_SHARE = 0.5  # of B*: at or above, a queue is compute_bound; below, engine_limited

# Grafana variables and the values PromQL checks use in their place (see ``substitute``).
VARIABLE_VALUES = {
    "__rate_interval": "5m",
    "__range": "1h",
    "__interval": "1m",
    "instance": ".*",
    "engine": ".*",
    "model": ".*",
    "gpu": ".*",
}


def engine(metric: str, *matchers: str) -> str:
    """``metric`` restricted to the selected instances, engines and models."""
    return metric + "{" + ", ".join((ENGINE_MATCHERS, *matchers)) + "}"


def gpu(metric: str, *matchers: str) -> str:
    """A per-GPU ``metric`` restricted to the selected instances and GPUs."""
    return metric + "{" + ", ".join((GPU_MATCHERS, *matchers)) + "}"


def node(metric: str) -> str:
    """A per-exporter ``metric`` (no engine or GPU label) on the selected instances."""
    return metric + "{" + NODE_MATCHERS + "}"


TOKENS_PER_SECOND_EXPR = (f"{engine('infermeter_prompt_tokens_per_second')}"
                          f" + {engine('infermeter_generation_tokens_per_second')}")


def engine_gpus(by: str = "") -> str:
    """GPUs the selected engines use, counted ``by`` labels (or all of them); ``engine_gpu_info`` has no
    ``model`` label, so it comes from ``engine_up``."""
    gpus = (f"infermeter_engine_gpu_info{{{NODE_MATCHERS}, engine=~\"$engine\"}}"
            f" * on ({ENGINE_KEY}) group_left (model) {engine('infermeter_engine_up')}")
    return f"count by ({by}) ({gpus})" if by else f"count({gpus})"


def total(expr: str, by: str = "") -> str:
    """``sum by (by) (expr)``, or ``sum(expr)`` over everything when ``by`` is empty."""
    return f"sum by ({by}) ({expr})" if by else f"sum({expr})"


def per_million_tokens(by: str = "") -> str:
    """Dollars per million tokens from sums: hourly cost over tokens per hour."""
    return (f"{total(engine('infermeter_cost_dollars_per_hour'), by)} * 1e6"
            f" / (3600 * {total(TOKENS_PER_SECOND_EXPR, by)} > 0)")


def achievable_per_million_tokens(by: str = "") -> str:
    """Achievable $/Mtok from sums: the engines' achievable cost weighted by their tokens per second."""
    achievable = engine("infermeter_achievable_cost_per_million_tokens_dollars")
    return (f"{total(f'{achievable} * ({TOKENS_PER_SECOND_EXPR})', by)}"
            f" / ({total(f'({TOKENS_PER_SECOND_EXPR}) and {achievable}', by)} > 0)")


def per_request(by: str = "") -> str:
    """Dollars per request from sums: hourly cost over requests per hour."""
    return (f"{total(engine('infermeter_cost_dollars_per_hour'), by)}"
            f" / (3600 * {total(engine('infermeter_requests_per_second'), by)} > 0)")


def state_code(by: str) -> str:
    """One series per ``by`` label set whose value is the code (STATES) of its right-sizing state: each
    engine serves 1 for its state and 0 for the others, so the sum of code x value is its state's code."""
    terms = " or ".join(engine("infermeter_rightsizing_state", f'state="{name}"') + f" * {code}"
                        for name, (code, _) in STATES.items())
    return f"sum by ({by}) ({terms})"


def state_code_mappings() -> list[dict[str, Any]]:
    """Value mappings from a state code to the state's name and colour."""
    return [{"type": "value", "options": {str(code): {"text": name, "color": color, "index": i}
                                          for i, (name, (code, color)) in enumerate(STATES.items())}}]


def state_name_colors() -> dict[str, Any]:
    """A table override that colours a ``state`` label column by state."""
    return override_by_name("state", [
        ("custom.cellOptions", {"type": "color-text"}),
        ("mappings", [{"type": "value", "options": {
            name: {"color": color, "index": i} for i, (name, (_, color)) in enumerate(STATES.items())}}]),
    ])


def substitute(expr: str) -> str:
    """``expr`` with Grafana's variables replaced by values PromQL accepts (for checks, not dashboards)."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in VARIABLE_VALUES:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return VARIABLE_VALUES[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


# --- panel helpers ---

def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> dict[str, Any]:
    """A Prometheus query; ``refId`` is assigned by the panel."""
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto",
            "instant": instant or table, "range": not (instant or table),
            "format": "table" if table else "time_series", "editorMode": "code"}


def _panel(kind: str, title: str, unit: str, targets: Iterable[dict[str, Any]], *, description: str,
           w: int, h: int, defaults: dict[str, Any], options: dict[str, Any],
           overrides: Iterable[dict[str, Any]] = (), **extra: Any) -> dict[str, Any]:
    targets = [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "gridPos": {"w": w, "h": h}, "targets": targets, "options": options,
            "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": list(overrides)}, **extra}


def _thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"value": value, "color": color} for value, color in steps]}


def timeseries(title: str, unit: str, targets: Iterable[dict[str, Any]], *, description: str = "",
               w: int = 12, h: int = 8, stack: bool = False, min_: float | None = 0, max_: float | None = None,
               threshold: float | None = None, overrides: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """A time series panel with infermeter's legend, tooltip and line style."""
    defaults: dict[str, Any] = {
        "color": {"mode": "palette-classic"},
        "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 25 if stack else 5, "showPoints": "never",
                   "spanNulls": False, "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                   "thresholdsStyle": {"mode": "off" if threshold is None else "dashed"}},
        "thresholds": _thresholds((None, "green"), *(() if threshold is None else ((threshold, "red"),))),
    }
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    options = {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                          "calcs": ["mean", "max", "lastNotNull"]},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return _panel("timeseries", title, unit, targets, description=description, w=w, h=h, defaults=defaults,
                  options=options, overrides=overrides)


def stat(title: str, unit: str, targets: Iterable[dict[str, Any]], *, description: str = "", w: int = 4,
         h: int = 4, decimals: int | None = None, mappings: Iterable[dict[str, Any]] = (),
         thresholds: Iterable[tuple[float | None, str]] = ((None, "blue"),)) -> dict[str, Any]:
    """A single-value panel showing the last value of each target."""
    defaults: dict[str, Any] = {"color": {"mode": "thresholds"}, "mappings": list(mappings),
                                "thresholds": _thresholds(*thresholds)}
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
               "textMode": "auto"}
    return _panel("stat", title, unit, targets, description=description, w=w, h=h, defaults=defaults,
                  options=options)


def bargauge(title: str, unit: str, targets: Iterable[dict[str, Any]], *, description: str = "", w: int = 12,
             h: int = 8) -> dict[str, Any]:
    """Horizontal bars, one per series (for instant totals such as money spent over the range)."""
    defaults = {"color": {"mode": "palette-classic"}, "min": 0, "thresholds": _thresholds((None, "blue"))}
    options = {"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True,
               "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return _panel("bargauge", title, unit, targets, description=description, w=w, h=h, defaults=defaults,
                  options=options)


def state_timeline(title: str, targets: Iterable[dict[str, Any]], *, mappings: Iterable[dict[str, Any]],
                   description: str = "", w: int = 24, h: int = 6) -> dict[str, Any]:
    """One row per series, coloured by its value through ``mappings`` (a state over time)."""
    defaults = {"color": {"mode": "thresholds"}, "mappings": list(mappings),
                "thresholds": _thresholds((None, "text")), "custom": {"fillOpacity": 80, "lineWidth": 0}}
    options = {"mergeValues": True, "showValue": "auto", "alignValue": "left", "rowHeight": 0.9,
               "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
               "tooltip": {"mode": "single", "sort": "none"}}
    return _panel("state-timeline", title, NONE, targets, description=description, w=w, h=h, defaults=defaults,
                  options=options)


@dataclass(frozen=True)
class Column:
    """A table column: the instant query giving its value and the unit it is shown in. A column without a
    title contributes only its labels (for example ``state`` from ``rightsizing_state == 1``)."""

    title: str
    unit: str
    expr: str


def table(title: str, key: Iterable[str], columns: Iterable[Column], *, description: str = "", w: int = 24,
          h: int = 8, unit: str = COUNT, overrides: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """One row per ``key`` label set, one column per instant query, merged on the labels."""
    columns = list(columns)
    values = {f"Value #{chr(ord('A') + i)}": c for i, c in enumerate(columns)}
    rename = {value: c.title for value, c in values.items() if c.title}
    hidden = {value: True for value, c in values.items() if not c.title}
    order = {name: i for i, name in enumerate([*key, *rename])}
    organize = {"excludeByName": {"Time": True, "job": True, **hidden}, "indexByName": order,
                "renameByName": rename}
    unit_overrides = [override_by_name(c.title, [("unit", c.unit)]) for c in columns if c.title]
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}}
    return _panel("table", title, unit, [target(c.expr, table=True) for c in columns], description=description,
                  w=w, h=h, defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
                  options=options, overrides=[*unit_overrides, *overrides],
                  transformations=[{"id": "merge", "options": {}}, {"id": "organize", "options": organize}])


def override_by_name(name: str, properties: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": key, "value": value} for key, value in properties]}


def dashed(pattern: str, color: str | None = None) -> dict[str, Any]:
    """Series whose name matches ``pattern`` drawn dashed (expectations, limits, targets)."""
    properties: list[dict[str, Any]] = [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                                        {"id": "custom.fillOpacity", "value": 0},
                                        {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}}]
    if color is not None:
        properties.append({"id": "color", "value": {"mode": "fixed", "fixedColor": color}})
    return {"matcher": {"id": "byRegexp", "options": pattern}, "properties": properties}


EXPECTED_DASHED = dashed(".*expected.*")
SLO_RED = dashed("SLO.*", "red")


# --- layout ---

@dataclass(frozen=True)
class Row:
    title: str
    panels: list[dict[str, Any]] = field(default_factory=list)


def row(title: str, *panels: dict[str, Any]) -> Row:
    return Row(title, list(panels))


def layout(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Flatten rows into Grafana's panel list: a row header, then its panels left to right, wrapping at 24
    columns; every panel gets an ``id`` and a ``gridPos``."""
    panels: list[dict[str, Any]] = []
    y = 0
    for r in rows:
        panels.append({"type": "row", "title": r.title, "collapsed": False, "panels": [],
                       "gridPos": {"x": 0, "y": y, "w": GRID_WIDTH, "h": 1}})
        y += 1
        x, line_height = 0, 0
        for p in r.panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append({**p, "gridPos": {"x": x, "y": y, "w": w, "h": h}})
            x += w
            line_height = max(line_height, h)
        y += line_height
    return [{**p, "id": i} for i, p in enumerate(panels, start=1)]


# --- dashboards ---

def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value variable from ``label_values``; "All" is ``.*`` so it also matches absent labels."""
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE, "definition": query,
            "query": {"query": query, "refId": f"{name}-variable"}, "refresh": 2, "sort": 1, "regex": "",
            "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "options": [], "hide": 0}


DATASOURCE_VARIABLE = {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                       "regex": "", "current": {}, "options": [], "hide": 0, "refresh": 1,
                       "multi": False, "includeAll": False}
STANDARD_VARIABLES = [
    DATASOURCE_VARIABLE,
    query_variable("instance", "Instance", "label_values(infermeter_build_info, instance)"),
    query_variable("engine", "Engine", 'label_values(infermeter_engine_up{instance=~"$instance"}, engine)'),
    query_variable("model", "Model",
                   'label_values(infermeter_engine_up{instance=~"$instance", engine=~"$engine"}, model)'),
]


def dashboard(uid: str, title: str, description: str, rows: Iterable[Row],
              variables: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": TAGS,
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "refresh": "30s", "time": {"from": "now-6h", "to": "now"}, "timezone": "", "timepicker": {},
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "annotations": {"list": []},
        "links": [{"type": "dashboards", "title": "infermeter", "tags": TAGS, "asDropdown": True,
                   "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": [*STANDARD_VARIABLES, *variables]},
        "panels": layout(rows),
    }


def fleet_cost() -> dict[str, Any]:
    cost = engine("infermeter_cost_dollars_per_hour")
    idle = engine("infermeter_idle_cost_dollars_per_hour")
    savings = engine("infermeter_rightsizing_savings_dollars_per_hour")
    needed = engine("infermeter_rightsizing_gpus_needed")
    spent = engine("infermeter_cost_dollars_total")
    by_engine = BY_ENGINE
    per_mtok_total = engine("infermeter_cost_per_million_tokens_dollars", 'token_type="total"')
    overview = row(
        "Overview",
        stat("Spend per hour", USD, [target(f"sum({cost})")], decimals=2,
             description="What the selected engines' GPUs cost per hour now."),
        stat("Spent over the range", USD, [target(f"sum(increase({spent}[$__range]))", instant=True)], decimals=2,
             description="Money spent on the selected engines' GPUs over the dashboard's time range."),
        stat("Idle spend per hour", USD, [target(f"sum({idle})")], decimals=2,
             description="The share of the hourly cost spent while the GPUs ran no kernel (a lower bound)."),
        stat("Right-sizing savings per hour", USD, [target(f"sum({savings})")], decimals=2,
             thresholds=((None, "green"), (0.01, "orange")),
             description="What the selected engines cost per hour now minus the recommended shape of each "
                         "one's own GPU model, summed (engines with a plan: known model, GPU and price)."),
        stat("Cost per million tokens", USD, [target(per_million_tokens())],
             decimals=2, description="Hourly cost over prompt + generated tokens per hour, all selected engines."),
        stat("GPUs: current and recommended", COUNT,
             [target(engine_gpus(), "current"), target(f"sum({needed})", "recommended")],
             description="GPUs the engines use, and the GPUs of their recommended shapes: one planner call "
                         "per engine over its own GPU model at every tensor-parallel size, for the observed load "
                         "within the SLO targets (recommended covers only engines with a plan)."),
    )
    spend = row(
        "Spend by model",
        timeseries("Spend per hour by model", USD, [target(f"sum by (model) ({cost})", "{{model}}")], stack=True,
                   description="Sum of infermeter_cost_dollars_per_hour by model, stacked."),
        bargauge("Spent over the range by model", USD,
                 [target(f"sum by (model) (increase({spent}[$__range]))", "{{model}}", instant=True)],
                 description="Increase of infermeter_cost_dollars_total over the dashboard's time range."),
        timeseries("Idle spend per hour by model", USD, [target(f"sum by (model) ({idle})", "{{model}}")],
                   stack=True, description="The idle share of the hourly cost (1 - GPU utilisation), by model."),
        timeseries("Right-sizing savings per hour by model", USD,
                   [target(f"sum by (model) ({savings})", "{{model}}")], stack=True,
                   description="What the engines cost now minus their recommended shapes, per hour, by model."),
    )
    unit_cost = row(
        "Unit cost by model",
        timeseries("Cost per million tokens by model", USD,
                   [target(per_million_tokens("model"), "{{model}}"),
                    target(achievable_per_million_tokens("model"), "{{model}} achievable (expected)")],
                   overrides=[EXPECTED_DASHED],
                   description="Hourly cost over prompt + generated tokens per hour, from sums by model; dashed: "
                               "the cost on the recommended shapes (engines with a plan)."),
        timeseries("Cost per request by model", USD, [target(per_request("model"), "{{model}}")],
                   description="Hourly cost over requests finished per hour, from sums by model."),
        timeseries("Cost per million tokens by token type", USD,
                   [target(engine("infermeter_cost_per_million_tokens_dollars", 'token_type=~"prompt|generation"'),
                           ENGINE_LEGEND + " {{token_type}}")],
                   description="Each engine's prompt and generation cost per million tokens (the hourly cost "
                               "split by their share of GPU time)."),
        timeseries("Cost per request by deployment", USD,
                   [target(engine("infermeter_cost_per_request_dollars"), ENGINE_LEGEND),
                    target(f"max({node('infermeter_budget_cost_per_request_dollars')})", "SLO budget")],
                   overrides=[SLO_RED],
                   description="Each engine's cost per request, against --budget-cost-per-request-dollars."),
    )
    state = engine("infermeter_rightsizing_state")
    rightsizing = row(
        "Right-sizing",
        bargauge("Engines per state", COUNT,
                 [target(f"sum by (state) ({state})", "{{state}}", instant=True)],
                 description="Selected engines in each right-sizing state now (docs/analytic-model.md, "
                             "\"Right-sizing state\"); every state is listed, 0 where no engine is."),
        timeseries("Engines per state over time", COUNT,
                   [target(f"sum by (state) ({state})", "{{state}}")], stack=True,
                   description="Selected engines in each right-sizing state, stacked."),
        timeseries("GPUs: current and recommended by model", COUNT,
                   [target(engine_gpus("model"), "{{model}} current"),
                    target(f"sum by (model) ({needed})", "{{model}} recommended (expected)")],
                   overrides=[EXPECTED_DASHED],
                   description="GPUs the engines use against the GPUs of their recommended shapes (the engine's "
                               "own GPU model, any tensor-parallel size) for the observed load within the SLO "
                               "targets, calibrated where the engine's efficiency is known."),
        timeseries("Right-sizing savings per hour by deployment", USD,
                   [target(savings, ENGINE_LEGEND)],
                   description="What each engine costs per hour now minus the recommended shape of its own GPU "
                               "model (never below 0)."),
        table("Deployments", ["instance", "engine", "model", "state"], [
            Column("", NONE, f"max by ({by_engine}, state) ({state} == 1)"),
            Column("GPUs", COUNT, engine_gpus(by_engine)),
            Column("GPUs needed", COUNT, f"max by ({by_engine}) ({needed})"),
            Column("$/hour", USD, f"sum by ({by_engine}) ({cost})"),
            Column("savings $/hour", USD, f"sum by ({by_engine}) ({savings})"),
            Column("$/Mtok", USD, f"max by ({by_engine}) ({per_mtok_total})"),
            Column("achievable $/Mtok", USD,
                   f"max by ({by_engine}) ({engine('infermeter_achievable_cost_per_million_tokens_dollars')})"),
            Column("$/request", USD, f"max by ({by_engine}) ({engine('infermeter_cost_per_request_dollars')})"),
        ], h=10, overrides=[state_name_colors()],
            description="Right-sizing state per engine (docs/analytic-model.md, \"Right-sizing state\"), its "
                        "GPUs and those of its recommended shape, and its cost, one row per engine."),
    )
    whatif_cost = engine("infermeter_whatif_cost_dollars_per_hour")
    whatif_best = engine("infermeter_whatif_best_gpu_info")
    whatif_savings = engine("infermeter_whatif_savings_dollars_per_hour")
    by_gpu_model = f"{by_engine}, gpu_model"
    what_if = row(
        "What if we ran this on another GPU model",
        table("What if we ran this on …", ["instance", "engine", "model", "gpu_model", "tensor_parallel"], [
            Column("GPUs needed", COUNT, f"max by ({by_gpu_model}) ({engine('infermeter_whatif_gpus_needed')})"),
            Column("$/hour", USD, f"max by ({by_gpu_model}) ({whatif_cost})"),
            Column("advice", NONE, f"max by ({by_gpu_model}, tensor_parallel, basis) ({whatif_best})"),
        ], h=10, overrides=[override_by_name("advice", [
            ("custom.cellOptions", {"type": "color-text"}),
            ("mappings", [{"type": "value", "options": {"1": {"text": "cheapest", "color": "green", "index": 0}}}]),
        ])], description="Each engine's observed load over the window, planned on every candidate GPU model "
                             "within the SLO targets, with the engine's observed efficiency where known "
                             "(docs/planning.md). A GPU model that cannot serve the load is missing."),
        timeseries("Savings from the cheapest GPU model per hour", USD, [target(whatif_savings, ENGINE_LEGEND)],
                   description="What the engine costs per hour now minus the cheapest option over GPU models, its "
                               "own included (InfermeterCheaperGPUAvailable fires when that is more than "
                               "--whatif-savings-threshold-ratio of what it costs now for 6 hours)."),
    )
    return dashboard("infermeter-fleet-cost", "infermeter / Fleet cost and right-sizing",
                     "What the GPUs serving LLMs cost, per model and per request or token, what right-sizing "
                     "would save, and what another GPU model would cost.",
                     [overview, spend, unit_cost, rightsizing, what_if])


# The latency summaries, by the `histogram` label infermeter_latency_quantile_bound_seconds gives each
LATENCIES = {name: f"infermeter_{name}_seconds" for name in (
    "time_to_first_token", "time_per_output_token", "inter_token_latency", "e2e_request_latency", "queue_time")}
QUANTILE_BOUND = "infermeter_latency_quantile_bound_seconds"
KNOWN_DASHED = dashed(".* known to be .*")
KNOWN_NOTE = ("Dashed, \"known to be below/above\": the interval the window's buckets and sum prove the p50 or "
              "p99 lies in (infermeter_latency_quantile_bound_seconds); the quantile drawn is PromQL's "
              "interpolation held to it, so where above is 0 and below a bucket bound, all that is known is "
              "that the quantile is at most that bound. ")
MEAN_NOTE = ("Mean: rate(_sum) / rate(_count) over the rate interval, from the engine's cumulative sum and "
             "count (the quantiles are over the exporter's --window).")


def window_mean(summary: str) -> str:
    """The mean of what finished in the rate interval, from a summary's cumulative _sum and _count (absent
    when nothing finished)."""
    return (f"rate({engine(summary + '_sum')}[$__rate_interval])"
            f" / (rate({engine(summary + '_count')}[$__rate_interval]) > 0)")


def quantile_bound(q: str, bound: str, *matchers: str) -> str:
    """The ``bound`` (lower or upper) of the interval the ``q`` quantile is known to lie in."""
    return engine(QUANTILE_BOUND, *matchers, f'q="{q}"', f'bound="{bound}"')


def latency_panel(title: str, summary: str, expected: str | None = None, slo: str | None = None,
                  description: str = "") -> dict[str, Any]:
    """p50/p95/p99 of an infermeter summary with the mean and the interval the p50 and p99 are known to lie
    in, and the roofline expectation and the SLO when there are (engines without buckets, such as Triton's
    duration counters, give only the mean)."""
    histogram = next(name for name, family in LATENCIES.items() if family == summary)
    targets = [target(engine(summary, f'quantile="{q}"'), f"{ENGINE_LEGEND} p{p}")
               for q, p in (("0.5", 50), ("0.95", 95), ("0.99", 99))]
    targets.append(target(window_mean(summary), f"{ENGINE_LEGEND} mean"))
    for q, p in (("0.5", 50), ("0.99", 99)):
        for bound, word in (("upper", "below"), ("lower", "above")):
            targets.append(target(quantile_bound(q, bound, f'histogram="{histogram}"'),
                                  f"{ENGINE_LEGEND} p{p} known to be {word}"))
    if expected is not None:
        targets.append(target(engine(expected), ENGINE_LEGEND + " expected"))
    if slo is not None:
        targets.append(target(f"max({node(slo)})", "SLO"))
    return timeseries(title, SECONDS, targets, overrides=[EXPECTED_DASHED, SLO_RED, KNOWN_DASHED],
                      description=description + " " + KNOWN_NOTE + MEAN_NOTE)


def per_latency(expr: Callable[[str], str]) -> str:
    """``expr(summary)`` for every latency summary, labelled with its ``histogram``, one series per engine
    and latency."""
    parts = [f'label_replace({expr(summary)}, "histogram", "{name}", "", "")' for name, summary in LATENCIES.items()]
    return f"max by ({BY_ENGINE}, histogram) ({' or '.join(parts)})"


def known_ranges() -> dict[str, Any]:
    """One row per engine and latency: the p50 and p99 with the interval each is known to lie in, and the
    mean (a quantile whose range is 0 to a bucket bound is only known to be at most that bound)."""
    columns = []
    for q, p in (("0.5", 50), ("0.99", 99)):
        columns += [
            Column(f"p{p}", SECONDS, per_latency(lambda summary, q=q: engine(summary, f'quantile="{q}"'))),
            Column(f"p{p} known ≥", SECONDS, f"max by ({BY_ENGINE}, histogram) ({quantile_bound(q, 'lower')})"),
            Column(f"p{p} known ≤", SECONDS, f"max by ({BY_ENGINE}, histogram) ({quantile_bound(q, 'upper')})"),
        ]
    columns.append(Column("mean", SECONDS, per_latency(window_mean)))
    return table("Latency: what is known", ["instance", "engine", "model", "histogram"], columns, w=12, h=8,
                 description="Per engine and latency, the p50 and p99 over the exporter's window and the interval "
                             "the window's buckets and sum prove each lies in: known ≥ 0 and known ≤ 10 ms means "
                             "the quantile is only known to be at most 10 ms, whatever the interpolated value "
                             "says. " + MEAN_NOTE)


def deployment() -> dict[str, Any]:
    up = engine("infermeter_engine_up")
    overview = row(
        "Overview",
        stat("Engines up", NONE, [target(up, "{{engine}} ({{instance}})")],
             mappings=[{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                                     "1": {"text": "UP", "color": "green", "index": 1}}}],
             thresholds=((None, "red"), (1, "green")),
             description="1 if the exporter read and parsed the engine's /metrics in its last collection."),
        stat("Requests per second", REQUESTS_PER_SECOND, [target(f"sum({engine('infermeter_requests_per_second')})")],
             description="Requests finished per second, all selected engines."),
        stat("Generated tokens per second", TOKENS_PER_SECOND,
             [target(f"sum({engine('infermeter_generation_tokens_per_second')})")],
             description="Decode tokens per second, all selected engines."),
        stat("Prompt tokens per second", TOKENS_PER_SECOND,
             [target(f"sum({engine('infermeter_prompt_tokens_per_second')})")],
             description="Prefill tokens per second, all selected engines."),
        stat("Running and waiting", COUNT, [target(f"sum({engine('infermeter_requests_running')})", "running"),
                                            target(f"sum({engine('infermeter_requests_waiting')})", "waiting")],
             description="Requests in the running batch and in the engines' queues."),
        stat("Lowest TPOT efficiency", RATIO, [target(f"min({engine('infermeter_tpot_efficiency_ratio')})")],
             thresholds=((None, "red"), (0.5, "orange"), (0.7, "green")),
             description="The least efficient engine's expected TPOT / observed TPOT p50 (1 = at the roofline)."),
    )
    latency = row(
        "Latency",
        latency_panel("Time to first token", LATENCIES["time_to_first_token"],
                      "infermeter_expected_time_to_first_token_seconds", "infermeter_slo_time_to_first_token_seconds",
                      "Quantiles over the exporter's window; dashed: the roofline prefill of the mean prompt "
                      "(no queueing) and the --slo-ttft-seconds target. Absent for TGI."),
        latency_panel("Time per output token", LATENCIES["time_per_output_token"],
                      "infermeter_expected_time_per_output_token_seconds",
                      "infermeter_slo_time_per_output_token_seconds",
                      "Quantiles over the exporter's window; dashed: the roofline decode step at the observed "
                      "batch and context, and the --slo-tpot-seconds target."),
        latency_panel("Inter-token latency", LATENCIES["inter_token_latency"],
                      description="Quantiles of the time between consecutive streamed outputs over the exporter's "
                                  "window (vLLM and SGLang; TGI and Triton report none)."),
        latency_panel("End-to-end request latency", LATENCIES["e2e_request_latency"],
                      description="Quantiles of the engine's request latency over the exporter's window (Triton "
                                  "reports only the mean, and so only the interval its sum implies)."),
        latency_panel("Queue time", LATENCIES["queue_time"],
                      description="Quantiles of the time requests waited in the engine's queue (Triton reports "
                                  "only the mean, and so only the interval its sum implies)."),
        known_ranges(),
    )
    throughput = row(
        "Throughput",
        timeseries("Tokens per second", TOKENS_PER_SECOND,
                   [target(engine("infermeter_prompt_tokens_per_second"), ENGINE_LEGEND + " prompt"),
                    target(engine("infermeter_generation_tokens_per_second"), ENGINE_LEGEND + " generation")],
                   w=8, description="Prompt (prefill) and generated (decode) tokens per second over the window."),
        timeseries("Requests per second", REQUESTS_PER_SECOND,
                   [target(engine("infermeter_requests_per_second"), ENGINE_LEGEND)], w=8,
                   description="Requests finished per second over the window."),
        timeseries("Running and waiting requests", COUNT,
                   [target(engine("infermeter_requests_running"), ENGINE_LEGEND + " running"),
                    target(engine("infermeter_requests_waiting"), ENGINE_LEGEND + " waiting")], w=8,
                   description="Requests in the running batch, and waiting in the engine's queue."),
    )
    kv_cache = row(
        "KV cache",
        timeseries("KV cache usage", RATIO, [target(engine("infermeter_kv_cache_usage_ratio"), ENGINE_LEGEND)],
                   w=6, max_=1, threshold=0.9,
                   description="Fraction of the KV cache in use; at 0.9 with preemptions or waiting requests the "
                               "state is memory_bound."),
        timeseries("KV cache capacity", TOKENS,
                   [target(engine("infermeter_kv_cache_capacity_tokens"), ENGINE_LEGEND),
                    target(engine("infermeter_expected_kv_cache_capacity_tokens"), ENGINE_LEGEND + " expected")],
                   w=6, overrides=[EXPECTED_DASHED],
                   description="Tokens the engine reports its KV cache holds; dashed: what should fit by the "
                               "memory model."),
        timeseries("Preemptions per second", PER_SECOND,
                   [target(engine("infermeter_preemptions_per_second"), ENGINE_LEGEND)], w=6,
                   description="Requests preempted per second (KV cache pressure). Absent for TGI."),
        timeseries("Prefix cache hit ratio", RATIO,
                   [target(engine("infermeter_prefix_cache_hit_ratio"), ENGINE_LEGEND)], w=6, max_=1,
                   description="Prefix cache hits per query token over the window. Absent for TGI."),
    )
    efficiency = row(
        "Efficiency against the roofline",
        timeseries("Memory bandwidth utilisation (MBU)", RATIO,
                   [target(engine("infermeter_memory_bandwidth_utilization_ratio"), ENGINE_LEGEND + " {{source}}")],
                   w=8, description="Bytes moved per second over the GPUs' peak bandwidth; source=analytic from "
                                    "the model, source=engine from vLLM's own estimate."),
        timeseries("Model FLOPs utilisation (MFU)", RATIO,
                   [target(engine("infermeter_model_flops_utilization_ratio"), ENGINE_LEGEND + " {{source}}")],
                   w=8, description="FLOPs per second over the GPUs' dense peak, by source."),
        timeseries("TPOT efficiency", RATIO,
                   [target(engine("infermeter_tpot_efficiency_ratio"), ENGINE_LEGEND)], w=8,
                   description="Expected TPOT over observed TPOT p50 (1 = at the roofline; 0.5-0.8 is typical)."),
    )
    health = row(
        "Engine health",
        timeseries("Engine up", NONE, [target(up, ENGINE_LEGEND)], max_=1,
                   description="1 while the exporter reads the engine, 0 while it is down, slow or unparseable."),
        timeseries("Collector errors per second", PER_SECOND,
                   [target(f"rate({node('infermeter_collector_errors_total')}[$__rate_interval])",
                           "{{collector}} ({{instance}})")],
                   description="Failed collector runs (nvml, engine/NAME) per second."),
    )
    return dashboard("infermeter-deployment", "infermeter / Deployment performance",
                     "The right-sizing state with its evidence and the recommendation, latency against the "
                     "roofline and the SLO, throughput, KV cache and efficiency per engine.",
                     [overview, rightsizing_state(), recommendation(), latency, throughput, kv_cache, efficiency,
                      health])



def _per_engine(metric: str, *matchers: str) -> str:
    return f"max by ({BY_ENGINE}) ({engine(metric, *matchers)})"


def rightsizing_state() -> Row:
    """The state over time and now, with the evidence the exporter decided it on (the loaded samples of the
    last minute: docs/analytic-model.md, "Right-sizing state")."""
    p = "infermeter_rightsizing_"
    return row(
        "Right-sizing state and its evidence",
        state_timeline("Right-sizing state", [target(state_code(BY_ENGINE), ENGINE_LEGEND)],
                       mappings=state_code_mappings(),
                       description="The engine's right-sizing state over time: sleeping, overprovisioned, balanced, "
                                   "engine_limited (a queue below the batch the TPOT target allows: the engine's "
                                   "caps), compute_bound (a queue at that batch) or memory_bound (preemptions, or a "
                                   "queue on a full KV cache). A state is taken after 3 cycles and 15 s."),
        table("State and evidence", ["instance", "engine", "model", "state"], [
            Column("", NONE, f"max by ({BY_ENGINE}, state) ({engine(p + 'state')} == 1)"),
            Column("evidence period", SECONDS, _per_engine(p + "evidence_window_seconds")),
            Column("loaded", RATIO, _per_engine(p + "loaded_ratio")),
            Column("queueing", RATIO, _per_engine(p + "queueing_ratio")),
            Column("waiting", COUNT, _per_engine(p + "waiting_requests")),
            Column("KV full", RATIO, _per_engine(p + "kv_cache_full_ratio")),
            Column("preemptions/s", PER_SECOND, _per_engine(p + "preemptions_per_second")),
            Column("batch / B*", RATIO, _per_engine(p + "batch_ratio")),
            Column("GPU busy (NVML)", RATIO, _per_engine(p + "gpu_busy_ratio")),
            Column("state changes", COUNT, _per_engine(p + "state_changes_total")),
        ], h=6, overrides=[state_name_colors()],
            description="The state now and its evidence over the last minute: loaded = samples with a request "
                        "running or waiting; queueing, KV full and the means are over the loaded samples; batch / "
                        "B* = mean running requests per replica over the largest batch whose decode step meets the "
                        "TPOT target; preemptions are absent for engines that report none (TGI, TensorRT-LLM)."),
        timeseries("Evidence: queueing and loaded share", RATIO,
                   [target(engine(p + "queueing_ratio"), ENGINE_LEGEND + " queueing"),
                    target(engine(p + "loaded_ratio"), ENGINE_LEGEND + " loaded")],
                   w=8, max_=1, threshold=QUEUEING_SHARE,
                   description="Share of the loaded samples with a request waiting (at 0.5 or more: a queue, "
                               "the state is memory_bound, compute_bound or engine_limited), and share of all "
                               "samples with a request running or waiting."),
        timeseries("Evidence: KV cache full share", RATIO,
                   [target(engine(p + "kv_cache_full_ratio"), ENGINE_LEGEND)], w=8, max_=1,
                   description="Share of the loaded samples with KV cache usage at least 0.9. With a request "
                               "waiting on 25 % of them, or any preemption, the state is memory_bound."),
        timeseries("Evidence: preemptions per second", PER_SECOND,
                   [target(engine(p + "preemptions_per_second"), ENGINE_LEGEND)], w=8,
                   description="Preemptions (SGLang: retractions) per second over the last minute: any means the "
                               "KV cache ran out (memory_bound). Absent for TGI and TensorRT-LLM, and for SGLang "
                               "until its first retraction."),
        timeseries("Evidence: batch against B*", RATIO,
                   [target(engine(p + "batch_ratio"), ENGINE_LEGEND)], w=8, threshold=COMPUTE_BATCH_SHARE,
                   description="Mean running requests per replica over the loaded samples, over B*, the largest "
                               "batch whose decode step meets the TPOT target on the current shape. With a queue: "
                               "compute_bound at 0.5 or more, engine_limited below."),
        timeseries("Evidence: GPU busy share (NVML)", RATIO,
                   [target(engine(p + "gpu_busy_ratio"), ENGINE_LEGEND)], w=8, max_=1,
                   description="Mean NVML utilisation of the engine's GPUs over the loaded samples. Shown, not "
                               "decisive: it counts the time any kernel ran, so a small decode batch reads near "
                               "100 % on a real GPU."),
        timeseries("State changes", COUNT,
                   [target(f"increase({engine(p + 'state_changes_total')}[$__rate_interval])", ENGINE_LEGEND)],
                   w=8, description="Right-sizing state changes per interval; more than 4 an hour for 30 minutes "
                                    "fires InfermeterDeploymentStateFlapping."),
    )


def recommendation() -> Row:
    """One planner call per engine: the recommended shape of its own GPU model, what it saves, and what the
    planner was given (docs/analytic-model.md, "One planner call")."""
    p = "infermeter_rightsizing_"
    savings = engine(p + "savings_dollars_per_hour")
    whatif_savings = engine("infermeter_whatif_savings_dollars_per_hour")
    return row(
        "Right-sizing recommendation",
        table("Recommendation", ["instance", "engine", "model", "tensor_parallel", "basis"], [
            Column("", NONE, f"max by ({BY_ENGINE}, tensor_parallel, basis) ({engine(p + 'plan_info')})"),
            Column("GPUs now", COUNT, engine_gpus(BY_ENGINE)),
            Column("GPUs needed", COUNT, _per_engine(p + "gpus_needed")),
            Column("$/hour now", USD, _per_engine("infermeter_cost_dollars_per_hour")),
            Column("savings $/hour", USD, f"max by ({BY_ENGINE}) ({savings})"),
            Column("cheapest GPU model saves $/hour", USD, f"max by ({BY_ENGINE}) ({whatif_savings})"),
            Column("planned req/s", REQUESTS_PER_SECOND, _per_engine(p + "planned_requests_per_second")),
            Column("planned prompt tokens", TOKENS, _per_engine(p + "planned_prompt_tokens")),
            Column("planned output tokens", TOKENS, _per_engine(p + "planned_output_tokens")),
        ], h=6, description="The planner's answer for the engine's own GPU model: the cheapest tensor-parallel "
                            "shape (tensor_parallel; it may differ from the engine's) and its GPUs, for the load it "
                            "was given (planned: the window's rate and mean request, two significant digits); "
                            "basis=calibrated applies the engine's observed efficiency. Savings = what the engine "
                            "costs now minus that shape; the cheapest GPU model's saving is the same over every "
                            "GPU model. infermeter report and infermeter plan --from give the same numbers."),
        table("Planner calibration", ["instance", "engine", "model", "phase", "basis", "reason"], [
            Column("", NONE, f"max by ({BY_ENGINE}, phase, basis, reason) ({engine(p + 'calibration_info')})"),
            Column("efficiency", RATIO, f"max by ({BY_ENGINE}, phase) ({engine(p + 'efficiency_ratio')})"),
        ], w=12, h=6, description="Per phase, the share of the roofline the planner applied (decode: analytic MBU; "
                                  "prefill: roofline prefill of the mean prompt over the mean prefill time), or why "
                                  "that phase stays on the roofline (reason: no_requests, too_few_requests, "
                                  "not_positive; blank when calibrated)."),
        timeseries("Planner efficiency by phase", RATIO,
                   [target(engine(p + "efficiency_ratio"), ENGINE_LEGEND + " {{phase}}")], w=12, max_=1,
                   description="The observed efficiency the planner applied, per phase; a gap means that phase "
                               "was on the roofline."),
        timeseries("GPUs: current and recommended", COUNT,
                   [target(engine_gpus(BY_ENGINE), ENGINE_LEGEND + " current"),
                    target(engine(p + "gpus_needed"), ENGINE_LEGEND + " recommended (expected)")],
                   overrides=[EXPECTED_DASHED],
                   description="GPUs the engine uses; dashed: the GPUs of its recommended shape."),
        timeseries("Savings per hour", USD,
                   [target(savings, ENGINE_LEGEND + " right-sizing"),
                    target(whatif_savings, ENGINE_LEGEND + " cheapest GPU model")],
                   description="What the engine costs now minus the recommended shape of its own GPU model "
                               "(right-sizing) and minus the cheapest option over GPU models."),
    )


def gpu_node() -> dict[str, Any]:
    gpu_variable = query_variable("gpu", "GPU", 'label_values(infermeter_gpu_info{instance=~"$instance"}, gpu)')
    overview = row(
        "Overview",
        stat("GPUs", COUNT, [target(f"count({gpu('infermeter_gpu_info')})")], description="GPUs NVML lists."),
        stat("Mean GPU utilisation", RATIO, [target(f"avg({gpu('infermeter_gpu_utilization_ratio')})")],
             description="Mean over the selected GPUs of the time a kernel ran."),
        stat("Memory used", RATIO, [target(f"sum({gpu('infermeter_gpu_memory_used_bytes')})"
                                           f" / sum({gpu('infermeter_gpu_memory_total_bytes')})")],
             thresholds=((None, "green"), (0.95, "orange")), description="Device memory in use over installed."),
        stat("Power draw", WATTS, [target(f"sum({gpu('infermeter_gpu_power_watts')})")],
             description="Sum of the selected GPUs' power draw."),
        stat("Hottest GPU", CELSIUS, [target(f"max({gpu('infermeter_gpu_temperature_celsius')})")],
             thresholds=((None, "green"), (80, "orange"), (90, "red")), description="Highest core temperature."),
        stat("GPU cost per hour", USD, [target(f"sum({gpu('infermeter_gpu_cost_dollars_per_hour')})")], decimals=2,
             description="Sum of the selected GPUs' price per hour."),
    )
    utilisation = row(
        "Utilisation",
        timeseries("GPU utilisation", RATIO, [target(gpu("infermeter_gpu_utilization_ratio"), GPU_LEGEND)], max_=1,
                   description="Fraction of the sample period in which a kernel ran (NVML utilization.gpu)."),
        timeseries("Memory bandwidth utilisation", RATIO,
                   [target(gpu("infermeter_gpu_memory_bandwidth_utilization_ratio"), GPU_LEGEND)], max_=1,
                   description="Fraction of the sample period in which device memory was read or written "
                               "(NVML utilization.memory; a time share, not MBU)."),
    )
    memory = row(
        "Memory",
        timeseries("Memory used and total", BYTES,
                   [target(gpu("infermeter_gpu_memory_used_bytes"), GPU_LEGEND + " used"),
                    target(gpu("infermeter_gpu_memory_total_bytes"), GPU_LEGEND + " total")],
                   overrides=[dashed(".* total")], description="Device memory in use; dashed: installed."),
        timeseries("Memory breakdown per engine", BYTES,
                   [target(engine("infermeter_gpu_memory_breakdown_bytes"), ENGINE_LEGEND + " {{component}}"),
                    target(engine("infermeter_engine_gpu_memory_used_bytes"), ENGINE_LEGEND + " used (NVML)")],
                   stack=True, overrides=[dashed(r".*used \(NVML\)")],
                   description="Weights and KV cache (analytic sizes) and the rest NVML reports, stacked; dashed: "
                               "memory of the processes NVML lists on the engine's GPUs."),
    )
    power = row(
        "Power, temperature and clocks",
        timeseries("Power draw and limit", WATTS,
                   [target(gpu("infermeter_gpu_power_watts"), GPU_LEGEND),
                    target(gpu("infermeter_gpu_power_limit_watts"), GPU_LEGEND + " limit")],
                   w=8, overrides=[dashed(".* limit")], description="Power draw; dashed: the enforced limit."),
        timeseries("Energy (average power)", WATTS,
                   [target(f"rate({gpu('infermeter_gpu_energy_joules_total')}[$__rate_interval])", GPU_LEGEND)],
                   w=8, description="Rate of NVML's energy counter: joules per second, i.e. mean watts."),
        stat("Energy over the range", JOULES,
             [target(f"sum(increase({gpu('infermeter_gpu_energy_joules_total')}[$__range]))", instant=True)],
             w=8, h=8, description="Energy the selected GPUs used over the dashboard's time range."),
        timeseries("Temperature", CELSIUS, [target(gpu("infermeter_gpu_temperature_celsius"), GPU_LEGEND)],
                   min_=None, description="GPU core temperature."),
        timeseries("SM clock", HERTZ, [target(gpu("infermeter_gpu_sm_clock_hertz"), GPU_LEGEND)],
                   description="Streaming multiprocessor clock."),
    )
    cost = row(
        "Cost",
        timeseries("GPU cost per hour", USD, [target(gpu("infermeter_gpu_cost_dollars_per_hour"), GPU_LEGEND)],
                   stack=True, description="The price used for each GPU (--gpu-hourly-cost, config or catalogue)."),
        timeseries("Engine cost and idle cost per hour", USD,
                   [target(engine("infermeter_cost_dollars_per_hour"), ENGINE_LEGEND),
                    target(engine("infermeter_idle_cost_dollars_per_hour"), ENGINE_LEGEND + " idle")],
                   overrides=[dashed(".* idle")],
                   description="What each engine's GPUs cost per hour; dashed: the share spent idle."),
    )
    return dashboard("infermeter-gpu-node", "infermeter / GPU node",
                     "What the GPUs are doing (NVML): utilisation, memory, power, temperature, clocks, energy and "
                     "price. The engine and model variables filter the per-engine panels.",
                     [overview, utilisation, memory, power, cost], variables=[gpu_variable])


DASHBOARDS = {"fleet-cost.json": fleet_cost, "deployment.json": deployment, "gpu-node.json": gpu_node}


def render(board: dict[str, Any]) -> str:
    """Deterministic JSON: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(board, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def generated() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, including those inside collapsed rows."""
    for p in board["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, PromQL with Grafana variables substituted) for every panel target."""
    return [(board["title"], p["title"], substitute(t["expr"]))
            for board in (build() for build in DASHBOARDS.values())
            for p in panels(board) for t in p["targets"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generated().items():
        path = HERE / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run python3 dashboards/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
