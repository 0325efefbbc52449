"""Fuzzing of the engine exposition parser/adapters and of the config loader (issue 6).

Properties:

* exposition: any text goes through ``detect`` -> ``parse`` -> ``adapter.adapt`` and either succeeds
  or raises ``SourceError``; every counter/gauge of the EngineSample is finite, and every histogram has
  strictly increasing bounds ending at +Inf with finite, cumulative (non-decreasing) counts.
* config: a random YAML/TOML file, environment or argv gives a ``Config`` or a ``ConfigError`` whose
  message is one line starting with a setting name (or its flag) or ``--config``; argparse may exit
  with ``SystemExit(2)`` on malformed flags.

CI runs a small, derandomized number of examples. For a longer, randomized run::

    HYPOTHESIS_PROFILE=fuzz-exhaustive pytest tests/test_fuzz.py

Bugs the fuzzers found are kept as inputs under ``tests/fixtures/fuzz/`` (``bug-*``) and replayed as
``xfail(strict=True)`` tests: the property tests tolerate exactly those known failure classes
(``KNOWN_*`` below), so once a bug is fixed its xfail test passes, fails the run, and the tolerance
must be dropped with it (``FUZZ_STRICT=1`` drops every tolerance, to see what the fuzzers still find).
``ok-*`` inputs are hand-picked nasty cases that must keep working.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import BY_NAME, SETTINGS, Config, ConfigError, load_config
from exporter.samples import EngineIdentity, EngineSample
from exporter.sources import SourceError
from exporter.sources.engines import adapters, detect
from exporter.sources.exposition import parse

FIXTURES = Path(__file__).parent / "fixtures"
ENGINE_FIXTURES = sorted((FIXTURES / "engines").glob("*.txt"))
ENGINE_FIXTURES = [p for p in ENGINE_FIXTURES if not p.name.endswith(".headers.txt")]
FUZZ_DIR = FIXTURES / "fuzz"

# --- profiles: CI is small and deterministic; the exhaustive one is opt-in -----------------------------

_HEALTH = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
settings.register_profile("fuzz-ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=_HEALTH, print_blob=True)
settings.register_profile("fuzz-exhaustive", max_examples=3000, deadline=None, derandomize=False,
                          suppress_health_check=_HEALTH, print_blob=True)
# Only this module's tests use these profiles (other modules keep hypothesis' defaults).
FUZZ = settings.get_profile("fuzz-exhaustive" if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz-exhaustive"
                            else "fuzz-ci")


def fuzz(max_examples: int) -> settings:
    """The profile, with a per-test example count in CI (the exhaustive profile keeps its own)."""
    if FUZZ.derandomize:
        return settings(FUZZ, max_examples=max_examples)
    return FUZZ


# --- exposition invariants --------------------------------------------------------------------------------

# Violation classes the fuzzers found (each replayed by an xfail(strict=True) test below).
# All fixed since (their inputs are replayed as tests/fixtures/fuzz/ok-fixed-*): overflowing sums across
# series, an infinite KV usage, non-cumulative buckets, a NaN bucket bound, infinite histogram totals.
KNOWN_EXPOSITION_BUGS: frozenset[str] = frozenset()

TGI_IDENTITY = EngineIdentity(model="m", version="3.0", max_batch_total_tokens=4096.0)


def violations(sample: EngineSample) -> set[str]:
    """The invariants ``sample`` breaks (empty when it is sound)."""
    found: set[str] = set()
    for table in (sample.counters, sample.gauges):
        for key, value in table.items():
            if not isinstance(value, float | int) or not math.isfinite(value):
                found.add("nonfinite-gauge" if key == "kv_cache_usage_ratio" else f"nonfinite:{key}")
    for histogram in sample.histograms.values():
        bounds, counts = histogram.bounds, histogram.cumulative_counts
        if not bounds or bounds[-1] != math.inf or len(bounds) != len(counts):
            found.add("histogram-shape")
        if any(not (a < b) for a, b in itertools.pairwise(bounds)):
            found.add("bad-bounds")
        if not all(math.isfinite(c) for c in counts) or not math.isfinite(histogram.sum) \
                or not math.isfinite(histogram.count):
            found.add("nonfinite-histogram")
        if any(b < a for a, b in itertools.pairwise(counts)):
            found.add("noncumulative")
    return found


def check_exposition(text: str, identity: EngineIdentity | None = None, *,
                     tolerate: frozenset[str] = KNOWN_EXPOSITION_BUGS) -> EngineSample | None:
    """Run text through detect/parse/adapt; assert the invariants (but those in ``tolerate``)."""
    try:
        parse(text)  # every family, as `python -m exporter.sources.engines` reads it
    except SourceError as err:
        assert len(str(err).splitlines()) == 1
    try:
        adapter = detect(text)
    except SourceError:
        return None
    try:
        exposition = parse(text, adapter.families)
    except SourceError as err:
        assert len(str(err).splitlines()) == 1
        return None
    try:
        sample = adapter.adapt(exposition, 1.0, identity if identity is not None else
                               (TGI_IDENTITY if adapter.kind == "tgi" else None))
    except SourceError as err:  # the engine's error (a negative counter, too many buckets): one line
        assert len(str(err).splitlines()) == 1
        return None
    except (OverflowError, ValueError) as err:
        if "fsum" in str(err) and "fsum-error" in tolerate:
            return None
        raise
    assert sample.kind == adapter.kind
    broken = violations(sample) - tolerate
    assert not broken, f"{sorted(broken)}: {sample}"
    return sample


# --- (a) arbitrary text -------------------------------------------------------------------------------

PREFIXES = st.sampled_from(["", "vllm:", "tgi_", "# TYPE vllm:", "# TYPE tgi_", "\nvllm:"])


@fuzz(150)
@given(PREFIXES, st.text(max_size=800))
def test_arbitrary_text(prefix: str, text: str) -> None:
    check_exposition(prefix + text)


@fuzz(100)
@given(PREFIXES, st.binary(max_size=800))
def test_arbitrary_bytes(prefix: str, body: bytes) -> None:
    check_exposition(prefix + body.decode("utf-8", errors="replace"))


# --- (b) structured expositions ---------------------------------------------------------------------------

def _fixture_names() -> list[str]:
    names: set[str] = set()
    for path in ENGINE_FIXTURES:
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)", line)
            if match and match.group(1).startswith(("vllm:", "tgi_")):
                names.add(match.group(1))
    return sorted(names)


FIXTURE_NAMES = _fixture_names()
FAMILIES = {a.kind: sorted(a.families) for a in adapters()}
HISTOGRAMS = {a.kind: sorted({n for names in a.names.histograms.values() for n in names}) for a in adapters()}

SPECIAL_VALUES = ["NaN", "+Inf", "-Inf", "Inf", "inf", "nan", "0", "-0", "-1", "1e308", "-1e308",
                  "1.7976931348623157e308", "1e400", "5e-324", "18446744073709551616", "0x10", "1_000", "",
                  "1.0.0", "+1", "1e", "Infinity"]
VALUES = st.one_of(
    st.sampled_from(SPECIAL_VALUES),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
LABEL_TEXT = st.text(alphabet=st.sampled_from('ab0_ "\\\n{}=,é€\U0001f600\t#'), max_size=12)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def label_sets(draw: st.DrawFn) -> str:
    pairs = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["model_name", "engine", "le", "method", "num_gpu_blocks", "block_size",
                                     "kv_cache_size_tokens", "a", "__x", "0bad", "é"]))
        raw = draw(st.one_of(LABEL_TEXT, VALUES, st.integers(0, 10**6).map(str)))
        escaped = draw(st.booleans())
        pairs.append(f'{name}="{_escape(raw) if escaped else raw}"')
    if not pairs and draw(st.booleans()):
        return ""
    return "{" + draw(st.sampled_from([",", ", ", ",,"])).join(pairs) + draw(st.sampled_from(["}", ",}", ""])) + "}"


@st.composite
def sample_lines(draw: st.DrawFn, kind: str) -> list[str]:
    base = draw(st.sampled_from(FAMILIES[kind] + FIXTURE_NAMES))
    name = base + draw(st.sampled_from(["", "", "_total", "_sum", "_count", "_bucket", "_created"]))
    value = draw(VALUES)
    timestamp = draw(st.sampled_from(["", "", " 1700000000000", " -1", " x"]))
    sep = draw(st.sampled_from([" ", " ", "\t", "  ", ""]))
    line = f"{name}{draw(label_sets())}{sep}{value}{timestamp}"
    return [line] * draw(st.sampled_from([1, 1, 1, 2]))  # duplicated series


@st.composite
def histogram_lines(draw: st.DrawFn, kind: str) -> list[str]:
    base = draw(st.sampled_from(HISTOGRAMS[kind]))
    bounds = draw(st.lists(st.one_of(st.floats(min_value=-1e3, max_value=1e6).map(repr),
                                     st.sampled_from(["+Inf", "Inf", "NaN", "-Inf", "1e400", "x", ""])),
                           max_size=6))
    if draw(st.booleans()):
        bounds.append("+Inf")  # usually, but not always, an +Inf bucket
    labels = draw(st.sampled_from(["", 'engine="0",', 'engine="1",', 'model_name="m",engine="0",']))
    counts = sorted(draw(st.lists(st.integers(0, 1000), min_size=len(bounds), max_size=len(bounds))))
    if draw(st.booleans()):  # non-monotone or special counts
        counts = [draw(st.one_of(VALUES, st.just(str(c)))) for c in counts]
    lines = [f'{base}_bucket{{{labels}le="{b}"}} {c}' for b, c in zip(bounds, counts, strict=True)]
    lines = draw(st.permutations(lines)) if draw(st.booleans()) else lines  # buckets out of order
    bare = "{" + labels.rstrip(",") + "}" if labels else ""
    if draw(st.booleans()):
        lines.append(f"{base}_sum{bare} {draw(VALUES)}")
    if draw(st.booleans()):  # _count may disagree with the +Inf bucket
        lines.append(f"{base}_count{bare} {draw(st.one_of(VALUES, st.just(str(counts[-1] if counts else 0))))}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), f"# TYPE {base} histogram")
    return lines


@st.composite
def expositions(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(sorted(FAMILIES)))
    blocks = draw(st.lists(st.one_of(sample_lines(kind), histogram_lines(kind),
                                     st.sampled_from(FAMILIES[kind]).flatmap(lambda n: st.sampled_from([
                                         [f"# TYPE {n} counter"], [f"# TYPE {n} gauge"], [f"# HELP {n} h\\n"],
                                         [f"# TYPE {n} histogram"], [f"# TYPE {n} bogus"], ["# EOF"], [""],
                                         ["#"]]))),
                           min_size=1, max_size=12))
    lines = [line for block in blocks for line in block]
    ending = draw(st.sampled_from(["\n", "", "\r\n", "\n\n"]))
    return ("\r\n" if ending == "\r\n" else "\n").join(lines) + ending


@fuzz(150)
@given(expositions())
def test_structured_expositions(text: str) -> None:
    check_exposition(text)


@fuzz(60)
@given(expositions(), st.one_of(st.none(), st.floats(min_value=1e-300, max_value=1e300)))
def test_structured_tgi_identity(text: str, capacity: float | None) -> None:
    check_exposition(text, EngineIdentity(max_batch_total_tokens=capacity))


# --- (c) mutations of the real fixtures ----------------------------------------------------------------

FIXTURE_TEXT = {p.name: p.read_text(encoding="utf-8") for p in ENGINE_FIXTURES}


def test_fixtures_hold_the_invariants_fully() -> None:
    for name, text in FIXTURE_TEXT.items():
        assert check_exposition(text, tolerate=frozenset()) is not None, name


OPERATIONS = st.tuples(st.sampled_from(["delete", "duplicate", "swap", "truncate", "insert", "replace"]),
                       st.integers(0, 10**6), st.integers(0, 10**6),
                       st.sampled_from(["\\", '"', "\n", "{", "}", "NaN", "+Inf", " ", "1e308", "# TYPE ", "\x00"]))


def mutate(text: str, operations: list[tuple[str, int, int, str]]) -> str:
    lines = text.splitlines()
    for op, i, j, junk in operations:
        if not lines:
            break
        a, b = i % len(lines), j % len(lines)
        if op == "delete":
            del lines[a]
        elif op == "duplicate":
            lines.insert(b, lines[a])
        elif op == "swap":
            lines[a], lines[b] = lines[b], lines[a]
        elif op == "truncate":
            joined = "\n".join(lines)
            lines = joined[: i % (len(joined) + 1)].splitlines()
        elif op == "insert":
            line = lines[a]
            at = j % (len(line) + 1)
            lines[a] = line[:at] + junk + line[at:]
        else:  # replace the value of a sample
            head, _, _ = lines[a].rpartition(" ")
            if head and not lines[a].startswith("#"):
                lines[a] = f"{head} {junk}"
    return "\n".join(lines) + "\n"


@fuzz(70)
@given(st.sampled_from(sorted(FIXTURE_TEXT)), st.lists(OPERATIONS, min_size=1, max_size=8))
def test_mutated_fixtures(name: str, operations: list[tuple[str, int, int, str]]) -> None:
    check_exposition(mutate(FIXTURE_TEXT[name], operations))


# --- saved exposition inputs ------------------------------------------------------------------------------

EXPOSITION_BUGS = {
    "fsum-overflow": "Exposition.total (exposition.py) and vllm.adapt call math.fsum, which raises "
                     "OverflowError on huge finite values summed over series",
    "kv-usage-inf": "vllm.kv_usage (vllm.py): usage x capacity from cache_config_info overflows, "
                    "kv_cache_usage_ratio is inf",
    "noncumulative": "Exposition.histogram (exposition.py) passes non-monotone bucket counts through",
    "nan-bound": "Exposition.histogram (exposition.py) keeps le=\"NaN\" as a bound (bounds not increasing)",
    "histogram-inf": "Exposition.histogram (exposition.py) sums huge per-series buckets/_sum/_count to inf",
}


def _saved(kind: str, suffixes: tuple[str, ...]) -> list[Any]:
    params = []
    for path in sorted(FUZZ_DIR.glob(f"{kind}-*")):
        if path.suffix not in suffixes:
            continue
        marks = []
        if kind == "bug":
            reason = next((r for key, r in {**EXPOSITION_BUGS, **CONFIG_BUGS}.items() if key in path.stem), None)
            assert reason, f"{path.name}: no reason in EXPOSITION_BUGS/CONFIG_BUGS"
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(pytest.param(path, marks=marks, id=path.name))
    return params


CONFIG_BUGS = {
    "float-overflow": "config._positive_seconds/_dollars and facts.gpus._positive call float() on a huge "
                      "YAML/TOML integer: OverflowError instead of ConfigError",
    "path-newline": "config.py _model_config/_token_file/_web_config/load_file put a path with a newline "
                    "into the ConfigError unquoted: the message is not one line",
}


@pytest.mark.parametrize("path", _saved("ok", (".prom",)) + _saved("bug", (".prom",)))
def test_saved_exposition(path: Path) -> None:
    text = path.read_bytes().decode("utf-8", errors="replace")
    check_exposition(text, tolerate=frozenset())


# --- config invariants ------------------------------------------------------------------------------------

PREFIXES_OK = tuple(sorted({s.flag for s in SETTINGS} | {s.name for s in SETTINGS} | {"--config"},
                           key=len, reverse=True))
PATH_FLAGS = ("--model-config", "--engine-token-file", "--web.config.file", "--config")


def check_config(call: Callable[[], Config], *, tolerant: bool = False) -> None:
    """``call`` returns a Config or raises a one-line ConfigError naming the setting (or SystemExit(2))."""
    try:
        config = call()
    except ConfigError as err:
        message = str(err)
        assert message.startswith(PREFIXES_OK), message
        name = next(p for p in PREFIXES_OK if message.startswith(p))
        assert message[len(name):][:1] in {" ", ":", ""}, message
        if tolerant and name in PATH_FLAGS:  # known bug "path-newline"
            return
        assert len(message.splitlines()) == 1, message
        return
    except SystemExit as exit_:
        assert exit_.code == 2
        return
    except OverflowError:
        if tolerant:  # known bug "float-overflow"
            return
        raise
    except ValueError as err:
        if tolerant and "null byte" in str(err):  # known bug "config-nul", see test_config_path_with_nul
            return
        raise
    assert isinstance(config, Config)
    assert config.window >= 2 * config.interval
    assert config.timeout > 0 and math.isfinite(config.timeout)  # it may exceed the interval (pending reads)


SETTING_KEYS = sorted({s.name for s in SETTINGS} | {s.name.replace("-", "_") for s in SETTINGS})
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
PLAUSIBLE = st.sampled_from(["http://127.0.0.1:8000", "a=http://h:1/metrics", "https://[::1]:99", "a=0,1",
                             "0.0.0.0:9416", "[::]:1", ":99999", "5", "0.5", "-1", "1e400", "nan", "true",
                             "off", "debug", "spot", "x=y", "", " ", "a=", "=b", "http://h:x", "http://[::1",
                             str(10**400), "1" * 5000])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
                    st.floats(), TEXT, PLAUSIBLE)
VALUES_TREE = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from([*SETTING_KEYS, "H100", "memory_bytes", "prices", "on-demand",
                                                              "peak_flops", "bf16", "nvml"]), TEXT),
                    inner, max_size=3)), max_leaves=8)
DOCUMENTS = st.dictionaries(st.one_of(st.sampled_from([*SETTING_KEYS, "collector"]), TEXT), VALUES_TREE,
                            max_size=5)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()
                               if v is not None) + "}"
    return '""'  # None: TOML has no null


def to_toml(document: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(str(k))} = {_toml_value(v)}\n" for k, v in document.items() if v is not None)


@fuzz(100)
@given(DOCUMENTS, st.sampled_from(["yaml", "toml", "yml"]))
def test_config_file_documents(tmp_path_factory: pytest.TempPathFactory, document: dict[str, Any],
                               suffix: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / f"config.{suffix}"
    text = to_toml(document) if suffix == "toml" else yaml.safe_dump(document, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    check_config(lambda: load_config(["--config", str(path)], {}))


@fuzz(80)
@given(st.text(max_size=300), st.sampled_from(["yaml", "toml"]))
def test_config_file_arbitrary_text(tmp_path_factory: pytest.TempPathFactory, text: str, suffix: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / f"config.{suffix}"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    check_config(lambda: load_config(["--config", str(path)], {}))


ENV_NAMES = sorted({s.env for s in SETTINGS if not s.file_only} | {"INFERMETER_ENGINE_TOKEN", "INFERMETER_X"})
ENV_TEXT = st.one_of(PLAUSIBLE, st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                               blacklist_characters="\x00"), max_size=20))


@fuzz(150)
@given(st.dictionaries(st.sampled_from(ENV_NAMES), ENV_TEXT, max_size=5))
def test_config_environment(environ: dict[str, str]) -> None:
    environ.pop("INFERMETER_CONFIG", None)  # a random path; the file loader has its own tests above
    check_config(lambda: load_config([], environ))


FLAGS = sorted({s.flag for s in SETTINGS if not s.file_only and s.name != "config"}
               | {f"--no-{s.name}" for s in SETTINGS if s.boolean} | {"--bogus", "-x", "--"})


@fuzz(150)
@given(st.lists(st.tuples(st.sampled_from(FLAGS), st.one_of(st.none(), PLAUSIBLE, TEXT)), max_size=5))
def test_config_argv(pairs: list[tuple[str, str | None]]) -> None:
    argv = [part for flag, value in pairs for part in ((flag,) if value is None else (flag, value))]
    check_config(lambda: load_config(argv, {}))


# --- saved config inputs and known config bugs ------------------------------------------------------------

@pytest.mark.parametrize("path", _saved("ok", (".yaml", ".toml")) + _saved("bug", (".yaml", ".toml")))
def test_saved_config(path: Path) -> None:
    check_config(lambda: load_config(["--config", str(path)], {}), tolerant=False)


@pytest.mark.parametrize("how", ["argv", "env"])
def test_config_path_with_nul(how: str) -> None:
    path = "config\x00.yaml"
    check_config(lambda: load_config(["--config", path] if how == "argv" else [], {"INFERMETER_CONFIG": path}
                                     if how == "env" else {}), tolerant=False)


@pytest.mark.parametrize("argv", [["--config", "missing\nfile.yaml"], ["--model-config", "missing\ndir"],
                                  ["--engine-token-file", "missing\nfile"], ["--web.config.file", "missing\nfile"]],
                         ids=["config", "model-config", "engine-token-file", "web.config.file"])
def test_config_path_with_newline(argv: list[str]) -> None:
    check_config(lambda: load_config(argv, {}), tolerant=False)


def test_flag_names_cover_every_setting() -> None:
    assert set(BY_NAME) == {s.name for s in SETTINGS}
    assert all(c in string.ascii_lowercase + "-." for s in SETTINGS for c in s.name)

