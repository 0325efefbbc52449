"""The alert and recording rules in alerts/ are valid, conventional, tested and use only real metrics.

promtool (Debian's `prometheus` package) checks and unit-tests the rules; the structural checks
below run without it: kubernetes-mixin conventions for every alert, a runbook section for each,
every metric and label an expression names is one infermeter serves (exporter/catalog.py), an
engine's own metric or a recording rule defined here, and every rule has a promtool test.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.catalog import BY_NAME, MetricSpec
from exporter.sources.engines import adapters
from exporter.sources.exposition import family_base
from tests.prometheus_server import prometheus_binary

ROOT = Path(__file__).resolve().parent.parent
ALERTS_DIR = ROOT / "alerts"
RULE_FILES = sorted(ALERTS_DIR.glob("*.yaml"))
TEST_FILES = sorted((ALERTS_DIR / "tests").glob("*.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/infermeter/infermeter/blob/main/docs/runbooks.md#"

SEVERITIES = {"info", "warning", "critical"}
# Metrics the engines serve themselves (scraped by Prometheus directly), by the prefix each engine
# adapter detects its kind by (exporter/sources/engines/): vllm:, tgi_, nv_inference_, sglang:.
ENGINE_FAMILIES = {adapter.names.prefix: adapter.families for adapter in adapters()}
ENGINE_PREFIXES = tuple(ENGINE_FAMILIES)
QUANTILES = {"0.5", "0.9", "0.99"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

PROMQL_WORDS = {
    # aggregations and functions
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear",
    "histogram_quantile", "abs", "absent", "absent_over_time", "avg_over_time", "max_over_time",
    "min_over_time", "sum_over_time", "count_over_time", "last_over_time", "quantile_over_time",
    "clamp", "clamp_min", "clamp_max", "ceil", "floor", "round", "exp", "ln", "log2", "log10", "sqrt",
    "label_replace", "label_join", "scalar", "vector", "time", "timestamp", "changes", "resets", "sort",
    "sort_desc",
    # keywords
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan",
}
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


# --- loading -----------------------------------------------------------------------------------

def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _groups() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in RULE_FILES:
        for group in _load(path)["groups"]:
            yield path, group


def _rules() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path, group in _groups():
        for rule in group["rules"]:
            yield path, rule


ALERTS = [rule for _, rule in _rules() if "alert" in rule]
RECORDS = [rule for _, rule in _rules() if "record" in rule]
RECORDED_NAMES = {rule["record"] for rule in RECORDS}


def _duration(text: str) -> int:
    """Seconds in a Prometheus duration such as 1h30m."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"not a duration: {text!r}"
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return round(sum(int(n) * unit[u] for n, u in parts))


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


# --- reading PromQL ----------------------------------------------------------------------------

def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names matched) for each vector selector in a PromQL expression."""
    text = _strip_strings(expr)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    for match in re.finditer(rf"(?<![\w.:]){NAME}(\s*\{{[^}}]*\}})?", text):
        token = match.group(0)
        name = re.match(NAME, token)
        assert name is not None
        metric = name.group(0)
        if metric in PROMQL_WORDS or re.fullmatch(r"[eE]\d*|x", metric):
            continue
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", token[len(metric):]))
        yield metric, labels


def template_queries(annotation: str) -> Iterator[str]:
    """The PromQL in `printf "..." ... | query` pipelines of an alert annotation."""
    for match in re.finditer(r'printf\s+"((?:[^"\\]|\\.)*)"([^}]*?)\|\s*query', annotation):
        yield match.group(1).replace('\\"', '"')


def _expressions() -> Iterator[tuple[str, str]]:
    for _, rule in _rules():
        name = rule.get("alert") or rule["record"]
        yield name, rule["expr"]
        for annotation in rule.get("annotations", {}).values():
            for query in template_queries(annotation):
                yield f"{name} (annotation query)", query


def _spec(metric: str) -> MetricSpec | None:
    if metric in BY_NAME:
        return BY_NAME[metric]
    for suffix in HISTOGRAM_SUFFIXES:
        base = metric.removesuffix(suffix)
        if base != metric and base in BY_NAME and BY_NAME[base].type == "summary":
            return BY_NAME[base]
    return None


# --- promtool ----------------------------------------------------------------------------------

def _promtool() -> str:
    return prometheus_binary("promtool")


def test_promtool_check_rules() -> None:
    result = subprocess.run([_promtool(), "check", "rules", *map(str, RULE_FILES)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests() -> None:
    assert TEST_FILES, "no promtool test files in alerts/tests/"
    result = subprocess.run([_promtool(), "test", "rules", *map(str, TEST_FILES)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- conventions -------------------------------------------------------------------------------

def test_the_rule_files_exist() -> None:
    assert {p.name for p in RULE_FILES} == {"alerts.yaml", "recording-rules.yaml"}
    assert ALERTS and RECORDS


def test_alert_names_are_unique_camel_case_with_the_infermeter_prefix() -> None:
    names = [rule["alert"] for rule in ALERTS]
    assert len(names) == len(set(names)), names
    for name in names:
        assert re.fullmatch(r"Infermeter(?:[A-Z][a-zA-Z0-9]*)+", name), name


@pytest.mark.parametrize("rule", ALERTS, ids=lambda rule: rule["alert"])
def test_alert_follows_the_mixin_conventions(rule: dict[str, Any]) -> None:
    assert _duration(rule["for"]) > 0, "every alert needs a for: duration"
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"missing annotation {key}"
    assert "$value" in annotations["description"], "the description shows the live value"
    assert annotations["runbook_url"] == RUNBOOK_BASE + rule["alert"].lower()


def test_every_alert_has_a_runbook_section_and_every_section_an_alert() -> None:
    text = RUNBOOKS.read_text(encoding="utf-8")
    anchors = _github_anchors(text)
    names = {rule["alert"] for rule in ALERTS}
    for name in names:
        assert name.lower() in anchors, f"docs/runbooks.md has no section {name}"
    sections = set(re.findall(r"^#{2,4}\s+(Infermeter\w+)\s*$", text, re.M))
    assert sections == names
    # links between sections point at real anchors
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors, anchor


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for name in RECORDED_NAMES:
        parts = name.split(":")
        # level:metric:operations; a vLLM or SGLang metric name has a colon of its own (vllm:..., sglang:...)
        assert len(parts) in (3, 4), name
        assert all(parts), name
        assert len(parts) == 3 or parts[1] + ":" in ENGINE_PREFIXES, name


def test_every_engine_has_a_latency_group_with_three_quantiles_per_histogram() -> None:
    """One infermeter-<kind>-latency.rules group per engine adapter; every <level>_le:<histogram>_bucket:rate5m
    rule feeds quantile rules for 0.5, 0.9 and 0.99 (Triton's quantiles are converted from ms to seconds)."""
    groups = {group["name"]: group["rules"] for _, group in _groups()}
    for adapter in adapters():
        assert f"infermeter-{adapter.kind}-latency.rules" in groups, adapter.kind
    buckets = [rule["record"] for rule in RECORDS if rule["record"].endswith("_bucket:rate5m")]
    assert buckets
    for record in buckets:
        quantiles = {str(rule.get("labels", {}).get("quantile")) for rule in RECORDS
                     if re.search(rf"histogram_quantile\(\s*[\d.]+\s*,\s*{re.escape(record)}\s*\)", rule["expr"])}
        assert quantiles == QUANTILES, (record, quantiles)


def _flat(expr: str) -> str:
    return " ".join(expr.split())


def test_every_quantile_rule_is_held_to_the_bound_its_mean_implies() -> None:
    """Each <level>_quantile:<metric>:histogram_quantile rule is the smaller of A = histogram_quantile(q,
    <level>_le:<histogram>_bucket:rate5m) and B = <level>:<metric>:mean5m / (1 - q), written `A <= B or B < A
    or A` with the rule's own q in all five places (the form the promtool tests prove: the bound where it
    bites, A where it does not or where there is no mean); the mean is rate(_sum) / rate(_count) of the same
    histogram over the same 5m and by the same level as its buckets. Triton's histogram is in milliseconds:
    its quantiles and mean are divided by 1000 alike."""
    rules = {rule["record"]: rule for rule in RECORDS}
    quantile_rules = [rule for rule in RECORDS if rule["record"].endswith(":histogram_quantile")]
    assert len(quantile_rules) == 3 * len([name for name in rules if name.endswith("_bucket:rate5m")])
    for rule in quantile_rules:
        q = str(rule["labels"]["quantile"])
        level_quantile, *metric_parts, _ = rule["record"].split(":")
        level, metric = level_quantile.removesuffix("_quantile"), ":".join(metric_parts)
        found = re.search(rf"histogram_quantile\({re.escape(q)}, ({level}_le:(\S+)_bucket:rate5m)\)", rule["expr"])
        assert found, rule["record"]
        buckets, histogram = found.groups()
        scale = "" if histogram == metric else " / 1000"
        assert histogram in (metric, metric.replace("_seconds", "_ms")), (rule["record"], histogram)
        mean = f"{level}:{metric}:mean5m"
        a, b = f"histogram_quantile({q}, {buckets}){scale}", f"{mean} / (1 - {q})"
        assert _flat(rule["expr"]) == f"( {a} <= {b} or {b} < {a} or {a} )", (rule["record"], q)
        assert _flat(rules[buckets]["expr"]) == f"sum by (le, {level}) (rate({histogram}_bucket[5m]))", buckets
        ratio = (f"sum by ({level}) (rate({histogram}_sum[5m])) "
                 f"/ (sum by ({level}) (rate({histogram}_count[5m])) > 0)")
        assert _flat(rules[mean]["expr"]) == (f"( {ratio} ){scale}" if scale else ratio), mean


# --- only real metrics and labels ---------------------------------------------------------------

def test_the_selector_reader_finds_names_and_labels() -> None:
    found = list(selectors('sum by (le, model_name) (rate(vllm:x_bucket{a="b",c=~"d"}[5m])) * 1e6 '
                           '> on (job) group_left () infermeter_y / 3600'))
    assert found == [("vllm:x_bucket", {"a", "c"}), ("infermeter_y", set())]
    assert list(template_queries('{{ with printf "m{a=%q,q=\\"0.5\\"}" $labels.a | query }}')) == ['m{a=%q,q="0.5"}']


def _engine_family(metric: str) -> bool:
    """True when ``metric`` is a family an engine adapter reads (its own names, never from memory)."""
    return any(metric.startswith(prefix) and family_base(metric) in families
               for prefix, families in ENGINE_FAMILIES.items())


def test_every_metric_is_served_by_infermeter_an_engine_or_a_recording_rule() -> None:
    unknown = []
    for where, expr in _expressions():
        for metric, _ in selectors(expr):
            if _spec(metric) or _engine_family(metric) or metric in RECORDED_NAMES:
                continue
            unknown.append(f"{where}: {metric}")
    assert not unknown, unknown


def test_the_engine_family_check_knows_each_engines_names() -> None:
    assert _engine_family("sglang:queue_time_seconds_bucket")
    assert _engine_family("nv_inference_request_duration_us")
    assert _engine_family("nv_inference_request_summary_us_count")
    assert not _engine_family("sglang:time_to_first_token_ms_bucket")  # a name the adapter never reads
    assert not _engine_family("nv_inference_compute_infer_duration_us")


def test_infermeter_selectors_match_only_labels_the_metric_has() -> None:
    wrong = []
    for where, expr in _expressions():
        for metric, labels in selectors(expr):
            spec = _spec(metric)
            if spec is None:
                continue
            allowed = set(spec.labels) | TARGET_LABELS | ({"quantile"} if spec.type == "summary" else set())
            if labels - allowed:
                wrong.append(f"{where}: {metric} has no label {sorted(labels - allowed)}")
    assert not wrong, wrong


# --- every rule is tested -----------------------------------------------------------------------

def _tests() -> Iterator[tuple[int, dict[str, Any]]]:
    for path in TEST_FILES:
        document = _load(path)
        interval = _duration(document.get("evaluation_interval", "1m"))
        for group in document["tests"]:
            yield interval, group


def _series(text: str) -> tuple[str, dict[str, str]]:
    match = re.fullmatch(rf"\s*({NAME})?\s*(?:\{{(.*)\}})?\s*", text, re.S)
    assert match, text
    labels = dict(re.findall(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"', match.group(2) or ""))
    return labels.pop("__name__", match.group(1) or ""), labels


def test_every_test_file_loads_the_rule_files() -> None:
    for path in TEST_FILES:
        loaded = {(path.parent / name).resolve() for name in _load(path)["rule_files"]}
        assert loaded <= {p.resolve() for p in RULE_FILES}, path


# Alerts whose condition cannot hold at the first evaluation of a test (a rate or increase needs
# two samples): seconds from the start of the input series to the first evaluation at which it
# holds. The test group must prove that onset with a promql_expr_test of the alert's expression
# (nothing one evaluation before, a sample at it); the alert is then expected at onset + for.
ONSET_SECONDS = {
    # increase(changes[1h]) of a counter that grows by 1 a minute from 0 is t minutes at t: > 4 at 5m
    "InfermeterDeploymentStateFlapping": 300,
}


def _onset_is_proven(rule: dict[str, Any], group: dict[str, Any], onset: int, interval: int) -> bool:
    cases = {(_duration(case["eval_time"]), bool(case.get("exp_samples")))
             for case in group.get("promql_expr_test", [])
             if " ".join(case["expr"].split()) == " ".join(rule["expr"].split())}
    return {(onset, True), (onset - interval, False)} <= cases


@pytest.mark.parametrize("rule", ALERTS, ids=lambda rule: rule["alert"])
def test_alert_is_tested_on_both_sides_of_its_for(rule: dict[str, Any]) -> None:
    """No alert one evaluation before its condition has held for `for:`, the exact alert at that moment
    (kubernetes-mixin style): the condition holds from the first evaluation, or from ONSET_SECONDS,
    which the same test group proves."""
    onset = ONSET_SECONDS.get(rule["alert"], 0)
    fires = onset + _duration(rule["for"])
    boundary_ok = False
    for interval, group in _tests():
        cases = {(_duration(case["eval_time"]), bool(case["exp_alerts"]))
                 for case in group.get("alert_rule_test", []) if case["alertname"] == rule["alert"]}
        for case in group.get("alert_rule_test", []):
            if case["alertname"] != rule["alert"]:
                continue
            for alert in case["exp_alerts"]:
                assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
                assert "{{" not in alert["exp_annotations"]["description"]
        if {(fires, True), (fires - interval, False)} <= cases and (
                not onset or _onset_is_proven(rule, group, onset, interval)):
            boundary_ok = True
    assert boundary_ok, (f"{rule['alert']}: no test expecting nothing one interval before {fires} s "
                         f"(onset {onset} s + for) and the alert at {fires} s")


def test_onsets_name_real_alerts() -> None:
    assert set(ONSET_SECONDS) <= {rule["alert"] for rule in ALERTS}


@pytest.mark.parametrize("rule", RECORDS, ids=lambda rule: rule["record"] + str(rule.get("labels", "")))
def test_recording_rule_has_an_exact_promql_test(rule: dict[str, Any]) -> None:
    own = {k: str(v) for k, v in rule.get("labels", {}).items()}
    for _, group in _tests():
        for case in group.get("promql_expr_test", []):
            if rule["record"] not in case["expr"]:
                continue
            for sample in case.get("exp_samples") or []:
                name, labels = _series(sample["labels"])
                if name == rule["record"] and own.items() <= labels.items() and "value" in sample:
                    return
    pytest.fail(f"no promql_expr_test expects a sample of {rule['record']} {own or ''}")
