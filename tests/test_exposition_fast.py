"""The exposition parser's fast path gives exactly what prometheus_client's text parser gives.

``parse`` reads plain bodies (every engine fixture) with a regular-expression fast path and sends
anything else to prometheus_client. These tests compare the fast path with that parser on every
fixture and on the structured fuzzer's bodies (tests/test_fuzz.py), which mix counters with and
without ``_total``, TYPE lines before and after their samples, escapes, odd spacing, timestamps,
NaN/Inf and garbage.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from prometheus_client.parser import text_string_to_metric_families

from exporter.sources import SourceError, exposition
from exporter.sources.engines import adapters
from exporter.sources.exposition import Guard, _parse_plain, parse, select_families
from tests.test_fuzz import ENGINE_FIXTURES, expositions, fuzz

Normal = dict[str, list[tuple[tuple[tuple[str, str], ...], object]]]


def normal(samples: dict[str, list[tuple[dict[str, str], float]]]) -> Normal:
    return {name: [(tuple(sorted(labels.items())), "nan" if math.isnan(v) else v) for labels, v in values]
            for name, values in samples.items()}


def reference(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


@pytest.mark.parametrize("path", ENGINE_FIXTURES, ids=lambda p: Path(p).name)
def test_every_engine_fixture_takes_the_fast_path_and_agrees(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for bases in (None, *(a.families for a in adapters())):
        body = select_families(text, bases) if bases is not None else text
        fast = _parse_plain(body)
        assert fast is not None, f"{path.name}: an engine body fell back to the slow parser"
        assert normal(fast) == normal(reference(body))


def test_a_counter_without_total_gets_it_even_when_its_type_line_comes_late() -> None:
    body = ("# HELP nv_inference_count Number of inferences\n"
            'nv_inference_count{model="m"} 3\n'
            "# TYPE nv_inference_count counter\n"
            'nv_inference_count{model="n"} 4\n'
            "other 1\n"
            "nv_inference_count 9\n")
    fast = _parse_plain(body)
    assert fast is not None and normal(fast) == normal(reference(body))
    assert [v for _, v in fast["nv_inference_count_total"]] == [3.0, 4.0]
    assert fast["nv_inference_count"] == [({}, 9.0)]  # after another family: a new, untyped one


@pytest.mark.parametrize("line", ['x{__x="1"} 1', 'x{a="b\\"c"} 1', 'x{a="b",a="c"} 1', 'x{__name__="y"} 1', "x 1_000",
                                  "x  1", "x 1 2 3", '{__name__="x"} 1', "x{a = \"b\"} 1", "# HELP"])
def test_anything_unusual_goes_to_the_full_parser(line: str) -> None:
    assert _parse_plain(line + "\n") is None


@fuzz(300)
@given(expositions())
def test_fuzzed_bodies_the_fast_path_accepts_parse_as_prometheus_client_does(text: str) -> None:
    fast = _parse_plain(text)
    if fast is None:
        return
    assert normal(fast) == normal(reference(text))  # and the reference accepted it too


def guarded_reference(text: str) -> Normal | None:
    """prometheus_client's parse of ``text``, None where it fails or where its samples, in its order, break
    a cap or repeat a series (exposition.Guard): what parse() must give on either path."""
    try:
        families = list(text_string_to_metric_families(text))
    except Exception:  # the reference raises ValueError, IndexError, TypeError on garbage
        return None
    guard = Guard()
    try:
        for family in families:
            for sample in family.samples:
                guard.check(sample.name, sample.labels)
    except SourceError:
        return None
    return normal(reference(text))


def parsed(text: str) -> Normal | None:
    try:
        return normal({k: [(dict(lbl), v) for lbl, v in vs] for k, vs in parse(text).samples.items()})
    except SourceError:
        return None


@fuzz(150)
@given(expositions())
def test_parse_accepts_and_rejects_what_prometheus_client_does(text: str) -> None:
    assert parsed(text) == guarded_reference(text)


# Bodies each path must refuse the same way: the first is plain (the fast path), the second has an
# escaped quote, which sends the whole body to prometheus_client's parser.
PLAIN_AND_ESCAPED = [pytest.param("", id="plain"), pytest.param('other{a="x\\"y"} 1\n', id="escaped")]


@pytest.mark.parametrize("extra", PLAIN_AND_ESCAPED)
@pytest.mark.parametrize("body", [
    '# TYPE x counter\nx_total{a="1"} 3\nx_total{a="1"} 7\n',  # the same series twice
    '# TYPE x counter\nx_total{b="2",a="1"} 3\nx_total{a="1",b="2"} 7\n',  # label order does not matter
    "# TYPE x counter\nx 3\nx_total 7\n",  # the parser names both x_total: one series twice
    "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_bucket{le=\"1.0\"} 1\n"
    'h_bucket{le="+Inf"} 2\n',  # a bucket twice (as written: 1 and 1.0 are different label values)
], ids=["repeated", "reordered-labels", "with-and-without-total", "histogram-bucket"])
def test_a_series_served_twice_fails_the_read_on_both_paths(body: str, extra: str) -> None:
    assert guarded_reference(extra + body) is None  # the rule, applied to the reference parser's samples
    with pytest.raises(SourceError, match=r"^duplicate series .*twice in one exposition$"):
        parse(extra + body)


@pytest.mark.parametrize("extra", PLAIN_AND_ESCAPED)
@pytest.mark.parametrize(("cap", "body", "message"), [
    ("MAX_SAMPLES", "".join(f"g{i} 1\n" for i in range(11)), "more than 10 samples"),
    ("MAX_SERIES_PER_FAMILY", "# TYPE g gauge\n" + "".join(f'g{{i="{i}"}} 1\n' for i in range(11)),
     "metric family g has more than 10 series"),
    ("MAX_SERIES_PER_FAMILY", "".join(f'g{{i="{i}"}} 1\n' for i in range(11)),
     "metric family g has more than 10 series"),
    ("MAX_LABELS_PER_SERIES", "g{" + ",".join(f'l{i}="v"' for i in range(11)) + "} 1\n", "g has a series with 11"),
    ("MAX_LABEL_CHARS", 'g{a="' + "v" * 11 + '"} 1\n', "g has a label longer than 10 characters"),
])
def test_caps_fail_the_read_on_both_paths(monkeypatch: pytest.MonkeyPatch, cap: str, body: str, message: str,
                                          extra: str) -> None:
    monkeypatch.setattr(exposition, cap, 10)
    assert parsed(extra + body) is None and guarded_reference(extra + body) is None
    with pytest.raises(SourceError, match=message) as caught:
        parse(extra + body)
    assert len(str(caught.value).splitlines()) == 1
    monkeypatch.setattr(exposition, cap, 12)  # within the cap the body is read (the escaped line is one more sample)
    assert parsed(extra + body) is not None


def test_a_label_at_the_cap_is_quoted_short_in_the_error() -> None:
    body = 'vllm:num_requests_running{model_name="' + "m" * 100_000 + '"} 1\n'
    with pytest.raises(SourceError) as caught:
        parse(body)
    assert len(str(caught.value)) < 200 and "4096" in str(caught.value)


def test_every_engine_fixture_is_within_the_caps_with_a_wide_margin() -> None:
    for path in ENGINE_FIXTURES:
        body = path.read_text(encoding="utf-8")
        samples = reference(body)
        per_family: dict[str, int] = {}
        for name, values in samples.items():
            family = exposition.family_base(name)
            per_family[family] = per_family.get(family, 0) + len(values)
            assert all(len(labels) * 3 <= exposition.MAX_LABELS_PER_SERIES for labels, _ in values), path.name
            assert all(len(v) * 100 <= exposition.MAX_LABEL_CHARS for labels, _ in values for v in labels.values())
        assert sum(len(v) for v in samples.values()) * 10 <= exposition.MAX_SAMPLES, path.name
        assert max(per_family.values()) * 9 <= exposition.MAX_SERIES_PER_FAMILY, path.name
        latency = {n + "_bucket" for a in adapters() for names in a.names.histograms.values() for n in names}
        buckets = Counter((name, tuple(sorted((k, v) for k, v in labels.items() if k != "le")))
                          for name, values in samples.items() if name in latency for labels, _ in values)
        assert max(buckets.values(), default=0) * 6 <= exposition.MAX_BUCKETS, path.name
        parse(body)  # and the whole body is read
