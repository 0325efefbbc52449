"""A fake inference engine at the HTTP boundary, driven by recorded-shape exposition fixtures.

The fixture text (tests/fixtures/engines/*.txt) is parsed into an editable, line-preserving model:
family order, HELP/TYPE lines, blank lines, label order, sample order and ``_created`` families are kept,
so ``render()`` of an untouched fixture returns the fixture byte for byte. Mutations re-format only the
touched values, in the engine's own style: prometheus_client's ``floatToGoString`` for vLLM, Rust
``Display`` (u64 for counters/bucket counts, shortest f64 for gauges and sums) for TGI's
metrics-exporter-prometheus.

    python -m tests.fakes.engine --fixture tests/fixtures/engines/vllm-v1-0.10.txt --port 8000 --traffic
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.utils import floatToGoString

from exporter.simulate.server import send_body

VLLM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# TGI serves /metrics from an axum handler returning String (router/src/server.rs `async fn metrics`),
# which axum labels text/plain; charset=utf-8. (Its separate prometheus port, 9000, says "text/plain".)
TGI_CONTENT_TYPE = "text/plain; charset=utf-8"

_SAMPLE_RE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+(?P<ts>-?\d+))?\s*$"
)
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_HIST_SUFFIXES = ("_bucket", "_sum", "_count")
# Deprecated/renamed vLLM families that the engine itself feeds with the same observations
# (vllm/v1/metrics/loggers.py, 0.9.2 .. 0.11): a write to one is mirrored to the other when both exist.
KNOWN_TWINS = (
    ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"),
    ("vllm:gpu_prefix_cache_queries", "vllm:prefix_cache_queries"),
    ("vllm:gpu_prefix_cache_hits", "vllm:prefix_cache_hits"),
    ("vllm:time_per_output_token_seconds", "vllm:inter_token_latency_seconds"),
)
# Gauges that describe configuration, not load: a restart re-emits them unchanged.
_CONFIG_GAUGE_SUFFIXES = ("_info",)
_CONFIG_GAUGES = frozenset({"tgi_batch_max_total_tokens", "process_max_fds"})


def _unescape(v: str) -> str:
    return v.replace(r"\\", "\x00").replace(r"\"", '"').replace(r"\n", "\n").replace("\x00", "\\")


def _escape(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _parse_float(s: str) -> float:
    s2 = s.strip()
    if s2 in ("+Inf", "Inf"):
        return math.inf
    if s2 == "-Inf":
        return -math.inf
    if s2 == "NaN":
        return math.nan
    return float(s2)


def rust_f64(x: float) -> str:
    """Rust's `Display` for f64: shortest round-trip digits, never an exponent, no trailing `.0`."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e16:
        return str(int(x))
    r = repr(x)
    if "e" in r:
        r = format(Decimal(r), "f")
    return r


class _Line:
    """One line of the exposition. kind: 'help', 'type', 'comment', 'blank', 'sample'."""

    __slots__ = ("dirty", "kind", "labels", "name", "raw", "ts", "value")

    def __init__(self, kind: str, raw: str, name: str = "", labels: list[tuple[str, str]] | None = None,
                 value: float = 0.0, *, ts: str | None = None) -> None:
        self.kind = kind
        self.raw = raw
        self.name = name
        self.labels = labels or []
        self.value = value
        self.ts = ts
        self.dirty = False

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


class _Family:
    """A logical metric family: its HELP/TYPE block plus, for prometheus_client, the `<base>_created`
    gauge block that text format 0.0.4 emits right after it."""

    def __init__(self, base: str, mtype: str) -> None:
        self.base = base
        self.type = mtype
        self.lines: list[_Line] = []  # header + samples (+ attached _created block) + trailing blanks

    def samples(self) -> list[_Line]:
        return [ln for ln in self.lines if ln.kind == "sample"]


def _family_base(wire_name: str, mtype: str) -> str:
    if mtype == "counter" and wire_name.endswith("_total"):
        return wire_name[: -len("_total")]
    return wire_name


class FakeEngine:
    def __init__(self, fixture: str | Path, identity: dict[str, object] | None = None) -> None:
        self._lock = threading.RLock()
        self._response: tuple[int, bytes, str] | None = None
        self._delay = 0.0
        self._endless: tuple[bytes, float] | None = None
        self.load(fixture, identity)

    # ------------------------------------------------------------------ loading / parsing
    def load(self, fixture: str | Path, identity: dict[str, object] | None = None) -> None:
        path = Path(fixture)
        text = path.read_text(encoding="utf-8")
        with self._lock:
            self.fixture = path
            self._families: list[_Family] = []
            self._preamble: list[_Line] = []
            self._aliases: dict[str, list[str]] = {}
            self._parse(text)
            self.style = "rust" if any(f.base.startswith("tgi_") for f in self._families) else "python"
            self.content_type = TGI_CONTENT_TYPE if self.style == "rust" else VLLM_CONTENT_TYPE
            headers = path.with_name(path.name[: -len(path.suffix)] + ".headers.txt") if path.suffix else None
            if headers is not None and headers.exists():  # a recorded capture says what was sent
                for hline in headers.read_text(encoding="utf-8").splitlines():
                    if hline.lower().startswith("content-type:"):
                        self.content_type = hline.split(":", 1)[1].strip()
            self._twins: dict[str, list[str]] = {}
            for a, b in KNOWN_TWINS:
                if self._find(a) is not None and self._find(b) is not None:
                    self._twins.setdefault(a, []).append(b)
                    self._twins.setdefault(b, []).append(a)
            self.identity: dict[str, object] = dict(identity) if identity is not None else self._sidecars(path)

    @staticmethod
    def _sidecars(path: Path) -> dict[str, object]:
        stem = path.name[: -len(path.suffix)] if path.suffix else path.name
        out: dict[str, object] = {}
        for suffix, route in ((".models.json", "/v1/models"), (".version.json", "/version"), (".info.json", "/info")):
            p = path.with_name(stem + suffix)
            if p.exists():
                out[route] = json.loads(p.read_text(encoding="utf-8"))
        return out

    def _parse(self, text: str) -> None:
        cur: _Family | None = None
        pending_help: _Line | None = None
        for raw in text.splitlines():
            if not raw.strip():
                line = _Line("blank", raw)
            elif raw.startswith("# HELP "):
                pending_help = _Line("help", raw, name=raw.split(" ", 3)[2])
                continue
            elif raw.startswith("# TYPE "):
                parts = raw.split()
                name, mtype = parts[2], (parts[3] if len(parts) > 3 else "untyped")
                tline = _Line("type", raw, name=name)
                attach = (cur is not None and mtype == "gauge" and name.endswith("_created")
                          and name[: -len("_created")] == cur.base)
                if attach:
                    assert cur is not None
                else:
                    cur = _Family(_family_base(name, mtype), mtype)
                    self._families.append(cur)
                if pending_help is not None:
                    cur.lines.append(pending_help)
                    pending_help = None
                cur.lines.append(tline)
                continue
            elif raw.startswith("#"):
                line = _Line("comment", raw)
            else:
                m = _SAMPLE_RE.match(raw)
                if m is None:
                    raise ValueError(f"unparseable exposition line: {raw!r}")
                labels = [(k, _unescape(v)) for k, v in _LABEL_RE.findall(m.group("labels") or "")]
                line = _Line("sample", raw, m.group("name"), labels, _parse_float(m.group("value")),
                             ts=m.group("ts"))
                if cur is None or not self._belongs(cur, line.name):
                    # untyped sample without a header: a family of its own
                    cur = _Family(line.name, "untyped")
                    self._families.append(cur)
            if pending_help is not None:  # HELP without TYPE (rare)
                cur = _Family(pending_help.name, "untyped")
                self._families.append(cur)
                cur.lines.append(pending_help)
                pending_help = None
            if cur is None:
                self._preamble.append(line)
            else:
                cur.lines.append(line)

    @staticmethod
    def _belongs(fam: _Family, sample: str) -> bool:
        b = fam.base
        return sample == b or (sample.startswith(b + "_") and sample[len(b):] in (
            "_total", "_created", "_bucket", "_sum", "_count", "_info", "_gsum", "_gcount"))

    # ------------------------------------------------------------------ lookup helpers
    def _find(self, name: str) -> _Family | None:
        for fam in self._families:
            if name in (fam.base, fam.base + "_total", fam.base + "_info") and fam.type != "untyped":
                return fam
        for fam in self._families:
            if name == fam.base:
                return fam
        return None

    def _family_of_sample(self, sample: str) -> _Family:
        for fam in self._families:
            if any(ln.name == sample for ln in fam.samples()):
                return fam
        raise KeyError(f"no sample named {sample!r} in {self.fixture.name}")

    @staticmethod
    def _series_key(ln: _Line) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, v) for k, v in ln.labels if k not in ("le", "quantile")))

    @staticmethod
    def _matches(ln: _Line, labels: dict[str, str] | None) -> bool:
        if not labels:
            return True
        d = ln.label_dict()
        return all(d.get(k) == str(v) for k, v in labels.items())

    def _set(self, ln: _Line, value: float) -> None:
        ln.value = float(value)
        ln.dirty = True

    # ------------------------------------------------------------------ mutations
    def observe(self, family: str, value: float, labels: dict[str, str] | None = None, times: int = 1) -> None:
        with self._lock:
            fam = self._find(family)
            if fam is None or fam.type not in ("histogram", "summary"):
                raise KeyError(f"no histogram family {family!r} in {self.fixture.name}")
            for f in [fam, *self._twin_families(fam)]:
                self._observe(f, value, labels, times)

    def _observe(self, fam: _Family, value: float, labels: dict[str, str] | None, times: int) -> None:
        samples = [s for s in fam.samples() if not s.name.endswith("_created")]
        chosen = next((s for s in samples if self._matches(s, labels)), None)
        if chosen is None:
            raise KeyError(f"no series of {fam.base} matches {labels}")
        key = self._series_key(chosen)
        for s in samples:
            if self._series_key(s) != key:
                continue
            if s.name == fam.base + "_bucket":
                if float(value) <= _parse_float(s.label_dict()["le"]):
                    self._set(s, s.value + times)
            elif s.name == fam.base + "_sum":
                self._set(s, s.value + float(value) * times)
            elif s.name == fam.base + "_count":
                self._set(s, s.value + times)

    def inc(self, sample: str, amount: float = 1, labels: dict[str, str] | None = None) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            for ln in self._select(sample, labels, create=True):
                self._set(ln, ln.value + amount)

    def set(self, sample: str, value: float, labels: dict[str, str] | None = None) -> None:
        with self._lock:
            for ln in self._select(sample, labels, create=True):
                self._set(ln, value)

    def _twin_families(self, fam: _Family) -> list[_Family]:
        out = []
        for other in self._twins.get(fam.base, []):
            f = self._find(other)
            if f is not None:
                out.append(f)
        return out

    def _select(self, sample: str, labels: dict[str, str] | None, create: bool) -> list[_Line]:
        fam = self._family_of_sample(sample)
        chosen = next((s for s in fam.samples() if s.name == sample and self._matches(s, labels)), None)
        if chosen is None:
            if not (create and labels):
                raise KeyError(f"no series {sample}{labels or ''}")
            chosen = self._new_series(fam, sample, labels)
        result = [chosen]
        suffix = sample[len(fam.base):]
        for twin in self._twin_families(fam):
            tname = twin.base + suffix
            tl = next((s for s in twin.samples() if s.name == tname
                       and self._series_key(s) == self._series_key(chosen)), None)
            if tl is not None:
                result.append(tl)
        return result

    def _new_series(self, fam: _Family, sample: str, labels: dict[str, str]) -> _Line:
        """A series the engine creates lazily (e.g. a new finished_reason): same label names as the
        family's first series, appended after the last sample of that name."""
        proto_idx = max(i for i, ln in enumerate(fam.lines) if ln.kind == "sample" and ln.name == sample)
        proto = fam.lines[proto_idx]
        names = [k for k, _ in proto.labels]
        if set(labels) - set(names):
            raise KeyError(f"{sample} has labels {names}, not {sorted(labels)}")
        new = _Line("sample", "", sample, [(k, str(labels.get(k, v))) for k, v in proto.labels], 0.0)
        new.dirty = True
        fam.lines.insert(proto_idx + 1, new)
        return new

    def _zero_all(self, bump_created: bool) -> None:
        now = time.time()
        for fam in self._families:
            for ln in fam.samples():
                if ln.name.endswith("_created"):
                    if bump_created:
                        self._set(ln, now)
                    continue
                if fam.type == "gauge":
                    if fam.base == "process_start_time_seconds":
                        if bump_created:
                            self._set(ln, now)
                        continue
                    if fam.base.endswith(_CONFIG_GAUGE_SUFFIXES) or fam.base in _CONFIG_GAUGES:
                        continue
                if ln.value != 0.0:
                    self._set(ln, 0.0)

    def reset(self) -> None:
        """Engine restart: counters, histograms and load gauges drop to 0; `_created` (and
        process_start_time_seconds) move to now. Config/info gauges keep their value."""
        with self._lock:
            self._zero_all(bump_created=True)

    def zero(self) -> None:
        """Like reset() but leaves `_created` alone: a clean, known starting state for tests."""
        with self._lock:
            self._zero_all(bump_created=False)

    def alias(self, old_family: str, new_family: str) -> None:
        """Deprecation window: from now on also render `old_family` under `new_family` (same values).
        End it with drop_family(old_family) (keeps the data under the new name) or drop_family(new_family)."""
        with self._lock:
            fam = self._find(old_family)
            if fam is None:
                raise KeyError(old_family)
            new_base = _family_base(new_family, fam.type)
            if self._find(new_base) is not None:
                raise ValueError(f"{new_family} already exists")
            self._aliases.setdefault(fam.base, []).append(new_base)

    def drop_family(self, family: str) -> None:
        with self._lock:
            for news in self._aliases.values():
                for n in news:
                    if family in (n, n + "_total"):
                        news.remove(n)
                        return
            fam = self._find(family)
            if fam is None:
                raise KeyError(family)
            aliases = self._aliases.pop(fam.base, [])
            if aliases:  # the old name goes, the data lives on under the (first) new name
                self._rename(fam, aliases[0])
                if aliases[1:]:
                    self._aliases[fam.base] = aliases[1:]
            else:
                self._families.remove(fam)
            for lst in self._twins.values():
                if family in lst:
                    lst.remove(family)

    def _rename(self, fam: _Family, new_base: str) -> None:
        for ln in fam.lines:
            ln.raw = self._renamed_raw(ln, fam.base, new_base)
            if ln.kind in ("sample", "help", "type"):
                ln.name = new_base + ln.name[len(fam.base):]
        fam.base = new_base

    @staticmethod
    def _renamed_raw(ln: _Line, old: str, new: str) -> str:
        if ln.kind == "sample":
            return new + ln.raw[len(old):] if ln.raw.startswith(old) else ln.raw
        if ln.kind in ("help", "type"):
            prefix = ln.raw[:7]  # "# HELP " / "# TYPE "
            rest = ln.raw[7:]
            return prefix + new + rest[len(old):] if rest.startswith(old) else ln.raw
        return ln.raw

    # ------------------------------------------------------------------ rendering
    def _fmt(self, fam: _Family, ln: _Line) -> str:
        if self.style == "python":
            return floatToGoString(ln.value)
        integral = fam.type == "counter" or ln.name.endswith(("_bucket", "_count"))
        if integral and ln.value == int(ln.value) and ln.value >= 0:
            return str(int(ln.value))
        return rust_f64(ln.value)

    def _line_text(self, fam: _Family, ln: _Line, name_override: str | None = None) -> str:
        if ln.kind != "sample" or (not ln.dirty and name_override is None):
            return ln.raw
        if not ln.dirty:
            return name_override + ln.raw[len(ln.name):]
        name = name_override or ln.name
        lab = ",".join(f'{k}="{_escape(v)}"' for k, v in ln.labels)
        out = f"{name}{{{lab}}} {self._fmt(fam, ln)}" if ln.labels else f"{name} {self._fmt(fam, ln)}"
        if ln.ts is not None:
            out += f" {ln.ts}"
        return out

    def render(self) -> str:
        with self._lock:
            out = [ln.raw for ln in self._preamble]
            for fam in self._families:
                body = [ln for ln in fam.lines if ln.kind != "blank"]
                trailing = [ln for ln in fam.lines if ln.kind == "blank"]
                out.extend(self._line_text(fam, ln) for ln in fam.lines)
                for new_base in self._aliases.get(fam.base, []):
                    for ln in body:
                        if ln.kind == "sample":
                            out.append(self._line_text(fam, ln, new_base + ln.name[len(fam.base):]))
                        else:
                            out.append(self._renamed_raw(ln, fam.base, new_base))
                    out.extend(ln.raw for ln in trailing)
            return "\n".join(out) + "\n"

    # ------------------------------------------------------------------ introspection
    def families(self) -> list[str]:
        with self._lock:
            return [f.base for f in self._families]

    def value(self, sample: str, labels: dict[str, str] | None = None) -> float:
        with self._lock:
            return self._select(sample, labels, create=False)[0].value

    # ------------------------------------------------------------------ fault injection
    def set_response(self, status: int = 500, body: bytes = b"", content_type: str = "text/plain") -> None:
        with self._lock:
            self._response = (status, body, content_type)

    def clear_response(self) -> None:
        with self._lock:
            self._response = None
            self._endless = None

    def set_endless(self, chunk: bytes = b"# more\n", pause: float = 0.01) -> None:
        """A /metrics body that never ends: the exposition, then ``chunk`` every ``pause`` seconds, with
        no Content-Length, until the client goes away or clear_response() is called."""
        with self._lock:
            self._endless = (chunk, float(pause))

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = float(seconds)

    # ------------------------------------------------------------------ synthetic traffic
    def tick(self, rnd: random.Random | None = None) -> None:
        """One second of plausible traffic (used by --traffic)."""
        rnd = rnd or random.Random()
        with self._lock:
            if self.style == "rust":
                self._tgi_tick(rnd)
            else:
                self._vllm_tick(rnd)

    def _series_labels(self, family: str) -> list[dict[str, str]]:
        fam = self._find(family)
        if fam is None:
            return []
        seen: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        for s in fam.samples():
            if not s.name.endswith("_created"):
                seen.setdefault(self._series_key(s), dict(self._series_key(s)))
        return list(seen.values())

    @staticmethod
    def _maybe(fn: Any, *args: Any, **kw: Any) -> None:
        with contextlib.suppress(KeyError):
            fn(*args, **kw)

    def _vllm_tick(self, rnd: random.Random) -> None:
        for lab in self._series_labels("vllm:num_requests_running") or [{}]:
            sel = {k: v for k, v in lab.items() if k in ("engine", "model_name")}
            for _ in range(rnd.randint(1, 4)):
                p, g = rnd.randint(50, 3000), rnd.randint(16, 600)
                ttft, itl = rnd.uniform(0.03, 0.4), rnd.uniform(0.012, 0.03)
                self._maybe(self.inc, "vllm:prompt_tokens_total", p, sel)
                self._maybe(self.inc, "vllm:generation_tokens_total", g, sel)
                self._maybe(self.observe, "vllm:time_to_first_token_seconds", ttft, sel)
                for fam in ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"):
                    if self._find(fam) is not None:
                        self._maybe(self.observe, fam, itl, sel, g - 1)
                        break
                self._maybe(self.observe, "vllm:request_time_per_output_token_seconds", itl, sel)
                e2e = ttft + itl * (g - 1)
                for fam, v in (("vllm:e2e_request_latency_seconds", e2e), ("vllm:request_queue_time_seconds", 0.01),
                               ("vllm:request_prefill_time_seconds", ttft - 0.01),
                               ("vllm:request_decode_time_seconds", e2e - ttft),
                               ("vllm:request_inference_time_seconds", e2e - 0.01),
                               ("vllm:request_prompt_tokens", p), ("vllm:request_generation_tokens", g)):
                    self._maybe(self.observe, fam, v, sel)
                self._maybe(self.inc, "vllm:request_success_total", 1, {**sel, "finished_reason": "stop"})
                for pre in ("vllm:prefix_cache", "vllm:gpu_prefix_cache"):
                    if self._find(pre + "_queries") is not None:
                        self._maybe(self.inc, pre + "_queries_total", p, sel)
                        self._maybe(self.inc, pre + "_hits_total", p // 3 // 16 * 16, sel)
                        break
            self._maybe(self.set, "vllm:num_requests_running", rnd.randint(4, 24), sel)
            self._maybe(self.set, "vllm:num_requests_waiting", rnd.randint(0, 3), sel)
            for fam in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
                if self._find(fam) is not None:
                    self._maybe(self.set, fam, round(rnd.uniform(0.1, 0.8), 4), sel)
                    break

    def _tgi_tick(self, rnd: random.Random) -> None:
        for _ in range(rnd.randint(1, 4)):
            p, g = rnd.randint(50, 3000), rnd.randint(16, 600)
            q, inf = rnd.uniform(0.001, 0.05), g * rnd.uniform(0.012, 0.03)
            self._maybe(self.inc, "tgi_request_count")
            self._maybe(self.inc, "tgi_request_success")
            for fam, v in (("tgi_request_input_length", p), ("tgi_request_generated_tokens", g),
                           ("tgi_request_max_new_tokens", 1024), ("tgi_request_queue_duration", q),
                           ("tgi_request_inference_duration", inf), ("tgi_request_validation_duration", 0.001),
                           ("tgi_request_duration", q + inf + 0.001),
                           ("tgi_request_mean_time_per_token_duration", inf / g)):
                self._maybe(self.observe, fam, v)
        self._maybe(self.set, "tgi_batch_current_size", rnd.randint(4, 24))
        self._maybe(self.set, "tgi_queue_size", rnd.randint(0, 3))
        self._maybe(self.set, "tgi_batch_current_max_tokens", rnd.randint(8000, 80000))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        engine = self.server.engine
        with engine._lock:
            delay, response = engine._delay, engine._response
        if delay:
            time.sleep(delay)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            if engine._endless is not None:
                self._stream_forever(engine)
            elif response is not None:
                self._send(*response)
            else:
                self._send(200, engine.render().encode("utf-8"), engine.content_type)
        elif path in ("/health", "/healthz"):
            self._send(200, b"", "application/json")
        else:
            with engine._lock:
                doc = engine.identity.get(path)
            if doc is None:
                self._send(404, b'{"detail":"Not Found"}', "application/json")
            else:
                self._send(200, json.dumps(doc).encode(), "application/json")

    def _stream_forever(self, engine: FakeEngine) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", engine.content_type)
            self.end_headers()  # HTTP/1.0, no Content-Length: the body ends only when the connection closes
            self.wfile.write(engine.render().encode("utf-8"))
            while True:
                with engine._lock:
                    endless = engine._endless
                if endless is None:
                    return
                self.wfile.write(endless[0])
                self.wfile.flush()
                time.sleep(endless[1])
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        send_body(self, status, body, ctype)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], engine: FakeEngine) -> None:
        self.engine = engine
        super().__init__(addr, _Handler)


class FakeEngineServer:
    """Serves a FakeEngine on 127.0.0.1 in a daemon thread. Use as a context manager."""

    def __init__(self, engine: FakeEngine, port: int = 0, host: str = "127.0.0.1") -> None:
        self.engine = engine
        self._httpd = _Server((host, port), engine)
        self.port = self._httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> FakeEngineServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="fake-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeEngineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", required=True, help="exposition fixture (.txt); sidecar *.json are served too")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--traffic", action="store_true", help="add plausible observations every second")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    engine = FakeEngine(args.fixture)
    server = FakeEngineServer(engine, port=args.port, host=args.host).start()
    print(f"fake engine ({args.fixture}) on {server.url}", flush=True)
    rnd = random.Random(args.seed)
    try:
        while True:
            time.sleep(1.0)
            if args.traffic:
                engine.tick(rnd)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
