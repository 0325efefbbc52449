"""The exposition parser's fast path gives exactly what prometheus_client's text parser gives.

``parse`` reads plain bodies (every engine fixture) with a regular-expression fast path and sends
anything else to prometheus_client. These tests compare the fast path with that parser on every
fixture and on the structured fuzzer's bodies (tests/test_fuzz.py), which mix counters with and
without ``_total``, TYPE lines before and after their samples, escapes, odd spacing, timestamps,
NaN/Inf and garbage.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from prometheus_client.parser import text_string_to_metric_families

from exporter.sources import SourceError
from exporter.sources.engines import adapters
from exporter.sources.exposition import _parse_plain, parse, select_families
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


@fuzz(150)
@given(expositions())
def test_parse_accepts_and_rejects_what_prometheus_client_does(text: str) -> None:
    try:
        expected: Normal | None = normal(reference(text))
    except Exception:  # the reference raises ValueError, IndexError, TypeError on garbage
        expected = None
    try:
        got: Normal | None = normal({k: [(dict(lbl), v) for lbl, v in vs] for k, vs in parse(text).samples.items()})
    except SourceError:
        got = None
    assert got == expected
