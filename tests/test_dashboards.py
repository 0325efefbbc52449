"""The Grafana dashboards: committed JSON is what the generator writes, every panel is well formed, and every
query names only metrics and labels the exporter serves and parses as PromQL (promtool)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import generate
from exporter.catalog import BY_NAME, MetricSpec
from exporter.derive import verdict
from tests.prometheus_server import prometheus_binary

DASHBOARDS = Path(generate.__file__).resolve().parent
BOARDS = {name: json.loads((DASHBOARDS / name).read_text(encoding="utf-8")) for name in generate.DASHBOARDS}
TARGET_LABELS = ("instance", "job")  # added by Prometheus at scrape time

# PromQL words that are not metric names.
FUNCTIONS_AND_KEYWORDS = {
    "sum", "min", "max", "avg", "count", "quantile", "topk", "bottomk", "stddev", "stdvar", "group",
    "count_values", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "rate", "irate", "increase", "delta", "idelta", "deriv", "clamp", "clamp_min",
    "clamp_max", "abs", "absent", "label_replace", "label_join", "vector", "scalar", "time",
    "histogram_quantile", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "changes",
    "resets", "sort", "sort_desc", "round", "ceil", "floor", "inf", "nan",
}
IDENTIFIER = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)")
SELECTOR = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def exposed_names() -> dict[str, MetricSpec]:
    """Sample names as /metrics shows them: counters and info metrics as declared, summaries also with
    ``_count`` and ``_sum``."""
    names = dict(BY_NAME)
    for spec in BY_NAME.values():
        if spec.type == "summary":
            names[spec.name + "_count"] = spec
            names[spec.name + "_sum"] = spec
    return names


EXPOSED = exposed_names()


def all_panels() -> list[tuple[str, dict[str, Any]]]:
    return [(name, p) for name, board in BOARDS.items() for p in generate.panels(board)]


def all_targets() -> list[tuple[str, str, dict[str, Any]]]:
    return [(name, p["title"], t) for name, p in all_panels() for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """Metric names referenced in ``expr``: identifiers outside strings, label matchers, label lists and
    ranges that are not PromQL functions or keywords."""
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", stripped)
    names = set()
    for match in IDENTIFIER.finditer(stripped):
        word = match.group(1)
        if word.lower() in FUNCTIONS_AND_KEYWORDS:
            continue
        names.add(word)
    return names


def test_metric_name_extraction() -> None:
    expr = ('sum by (model) (increase(infermeter_cost_dollars_total{engine=~"$engine", x="a b"}[$__range])) * 1e6'
            " / on (job, instance) group_left (model) infermeter_engine_up and rate(foo_total[5m]) > 0")
    assert metric_names(expr) == {"infermeter_cost_dollars_total", "infermeter_engine_up", "foo_total"}


def test_committed_json_is_what_the_generator_writes() -> None:
    generated = generate.generated()
    for name, text in generated.items():
        assert (DASHBOARDS / name).read_text(encoding="utf-8") == text, (
            f"dashboards/{name} is out of date: run python3 dashboards/generate.py")
    assert {p.name for p in DASHBOARDS.glob("*.json")} == set(generated), "a dashboard JSON the generator lacks"
    assert generate.main(["--check"]) == 0


def test_generation_is_deterministic() -> None:
    assert generate.generated() == generate.generated()
    for text in generate.generated().values():
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_dashboard_has_stable_uid_tags_and_variables(name: str) -> None:
    board = BOARDS[name]
    assert re.fullmatch(r"infermeter-[a-z0-9-]+", board["uid"]) and len(board["uid"]) <= 40
    assert board["tags"] == ["infermeter"]
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in ("instance", "engine", "model"):
        v = variables[var]
        assert v["type"] == "query" and v["multi"] and v["includeAll"], var
        assert v["datasource"]["uid"] == "${datasource}"
        assert re.fullmatch(r"label_values\((infermeter_\w+)(\{.*\})?, " + var + r"\)", v["definition"]), var
        (metric,) = metric_names(v["definition"].removeprefix("label_values(").rsplit(",", 1)[0])
        assert var in (*EXPOSED[metric].labels, *TARGET_LABELS), var


def test_uids_and_titles_are_unique() -> None:
    assert len({b["uid"] for b in BOARDS.values()}) == len(BOARDS)
    assert len({b["title"] for b in BOARDS.values()}) == len(BOARDS)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_layout_ids_and_grid(name: str) -> None:
    panels = BOARDS[name]["panels"]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not area & cells, f"{p['title']!r} overlaps another panel"
        cells |= area


def test_every_panel_has_a_title_a_unit_and_targets_on_the_datasource_variable() -> None:
    for name, p in all_panels():
        where = f"{name}: {p.get('title')!r}"
        assert p.get("title"), where
        assert p["fieldConfig"]["defaults"].get("unit"), where
        assert p["datasource"]["uid"] == "${datasource}", where
        assert p["targets"], where
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert t["expr"].strip(), where
        if p["type"] == "timeseries":
            for t in p["targets"]:
                assert t["legendFormat"] != "__auto", f"{where}: every series needs a readable legend"
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), where


def test_rates_use_grafana_intervals() -> None:
    for name, title, t in all_targets():
        for window in re.findall(r"\[([^\]]+)\]", t["expr"]):
            assert window in ("$__rate_interval", "$__range"), f"{name}: {title!r}: [{window}]"
        if re.search(r"\b(rate|irate)\(", t["expr"]):
            assert "$__rate_interval" in t["expr"], f"{name}: {title!r}"


def test_every_metric_and_label_is_in_the_catalogue() -> None:
    seen = set()
    for name, title, t in all_targets():
        expr = t["expr"]
        for metric in metric_names(expr):
            assert metric in EXPOSED, f"{name}: {title!r}: {metric} is not exported (exporter/catalog.py)"
            seen.add(metric)
        for metric, matchers in SELECTOR.findall(expr):
            spec = EXPOSED[metric]
            allowed = {*spec.labels, *TARGET_LABELS, *(("quantile",) if spec.type == "summary" else ())}
            for label in MATCHER_LABEL.findall(matchers):
                assert label in allowed, f"{name}: {title!r}: {metric} has no label {label!r}"
    assert seen, "no metric found in any query"


def test_no_recording_rules_are_needed() -> None:
    for name, title, t in all_targets():
        for metric in metric_names(t["expr"]):
            assert metric.startswith("infermeter_") and ":" not in metric, f"{name}: {title!r}: {metric}"


def test_substitute_replaces_every_grafana_variable() -> None:
    assert generate.substitute('rate(x{a=~"$engine", b=~"${model}"}[$__rate_interval])') == (
        'rate(x{a=~".*", b=~".*"}[5m])')
    with pytest.raises(KeyError):
        generate.substitute("x{a=~\"$nope\"}")
    queries = generate.all_queries()
    assert len(queries) == len(all_targets())
    for board, panel, expr in queries:
        assert "$" not in expr, f"{board}: {panel!r}: {expr}"


def test_queries_parse_with_promtool(tmp_path: Path) -> None:
    tool = prometheus_binary("promtool")
    queries = generate.all_queries()
    rules = [{"record": f"dashboard_query_{i}", "expr": expr} for i, (_, _, expr) in enumerate(queries)]
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_provisioning_files() -> None:
    provisioning = DASHBOARDS / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards.yaml").read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    sources = yaml.safe_load((provisioning / "datasource.yaml").read_text(encoding="utf-8"))
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus" and source["url"].startswith("http")


def test_the_state_panels_know_every_state_and_the_exporters_thresholds() -> None:
    """The state timeline's codes and the tables' colours cover the exporter's states, one code each, and
    the evidence panels draw the exporter's own thresholds."""
    assert set(generate.STATES) == set(verdict.STATES)
    codes = [code for code, _ in generate.STATES.values()]
    assert len(set(codes)) == len(codes) and 0 not in codes  # 0 would read as "no state"
    assert (generate.QUEUEING_SHARE, generate.COMPUTE_BATCH_SHARE) == (verdict.QUEUEING_SHARE,
                                                                       verdict.COMPUTE_BATCH_SHARE)
    timeline = next(p for _, p in all_panels() if p["type"] == "state-timeline")
    (mapping,) = timeline["fieldConfig"]["defaults"]["mappings"]
    assert {v["text"] for v in mapping["options"].values()} == set(verdict.STATES)
    for board, title in (("fleet-cost.json", "Deployments"), ("deployment.json", "State and evidence")):
        panel = next(p for p in generate.panels(BOARDS[board]) if p["title"] == title)
        (override,) = [o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == "state"]
        (colours,) = [p["value"] for p in override["properties"] if p["id"] == "mappings"]
        assert set(colours[0]["options"]) == set(verdict.STATES), (board, title)


def test_every_latency_quantile_panel_shows_the_mean_and_what_is_known() -> None:
    """Wherever a latency quantile is drawn, the panel also draws the mean (rate of the summary's _sum over
    rate of its _count) and the interval the p50 and p99 are known to lie in (both bounds of each, for that
    latency), so that a reader can tell a measured value from one only known to be at most a bucket bound."""
    summaries = {spec.name: spec for spec in BY_NAME.values() if spec.type == "summary"}
    bound = generate.QUANTILE_BOUND
    assert BY_NAME[bound].labels[-3:] == ("histogram", "q", "bound")
    checked = 0
    for name, p in all_panels():
        exprs = [t["expr"] for t in p["targets"]]
        drawn = {s for s in summaries for e in exprs if re.search(rf"{s}\{{[^}}]*quantile=", e)}
        for summary in drawn:
            where = f"{name}: {p['title']!r}: {summary}"
            histogram = summary.removeprefix("infermeter_").removesuffix("_seconds")
            assert any(re.search(rf"rate\({summary}_sum\{{[^}}]*\}}\[\$__rate_interval\]\)\s*/\s*"
                                 rf"\(rate\({summary}_count\{{[^}}]*\}}\[\$__rate_interval\]\) > 0\)", e)
                       for e in exprs), f"{where}: no mean"
            for q in ("0.5", "0.99"):
                for side in ("lower", "upper"):
                    wanted = (f'q="{q}"', f'bound="{side}"')
                    assert any(bound in e and all(w in e for w in wanted)
                               and (f'histogram="{histogram}"' in e or "histogram)" in e) for e in exprs), (
                        f"{where}: no {side} bound of the {q} quantile")
            checked += 1
    # the deployment dashboard's five latency panels and its table, which covers every latency
    assert checked == 5 + len(generate.LATENCIES), checked


def test_the_state_code_query_sums_one_code_per_state() -> None:
    expr = generate.state_code(generate.BY_ENGINE)
    assert expr.startswith(f"sum by ({generate.BY_ENGINE}) (")
    for name, (code, _) in generate.STATES.items():
        assert f'state="{name}"}} * {code}' in expr, name
