"""Reading what a running exporter serves, directly or through Prometheus (``report``, ``plan --from``).

A URL is checked before it is used, and what answers is identified: an infermeter exporter, a
Prometheus server (or one that speaks its query API), an inference engine, or something else. Every
failure is a :class:`ReadError` of one line: the URL, what went wrong (not a URL, refused, timed out,
an HTTP status, the wrong kind of server) and what to pass instead. Credentials in a URL are never
shown.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import DEFAULT_PORT

Sample = tuple[str, dict[str, str], float]

AUTO, EXPORTER, PROMETHEUS = "auto", "exporter", "prometheus"
QUERY = '{__name__=~"infermeter_.+"}'
PREFIX = "infermeter_"
# an engine kind (exporter.sources.engines) -> how people write its name
ENGINE_NAMES = {"vllm": "vLLM", "tgi": "TGI", "triton": "Triton", "sglang": "SGLang"}
EXAMPLE = f"http://gpu-node-1:{DEFAULT_PORT}"


class ReadError(Exception):
    """The URL could not be read, or is not what was asked for; the message is one line."""


@dataclass(frozen=True)
class Flags:
    """The flags a command reads URLs with, for the "pass this instead" hints (None: it has none)."""

    auto: str | None = "--from"
    exporter: str | None = None
    prometheus: str | None = None

    def hint(self, kind: str, url: str, want: str) -> str:
        """``--url URL``: how to pass a ``kind`` URL, keeping to --from when that is what was used."""
        flag = self.auto if want == AUTO else (self.exporter if kind == EXPORTER else self.prometheus) or self.auto
        return f"{flag} {url}"


def base_url(url: str) -> str:
    """``url`` checked (http or https, a host, a valid port), without a trailing /metrics, query or fragment."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f"did you mean http://{text}?" if text and "://" not in text else f"such as {EXAMPLE}"
        raise ReadError(f"{shown(text)!r} is not an http(s) URL: {hint}")
    try:
        _ = parts.port  # raises ValueError for a port that is not 0-65535
    except ValueError:
        raise ReadError(f"{shown(text)!r} is not a valid URL: bad port") from None
    path = parts.path.rstrip("/")
    if path.endswith("/metrics"):  # the metrics URL pasted whole: the base is what is needed
        path = path[: -len("/metrics")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def shown(url: str) -> str:
    """``url`` with any password replaced by ***, for messages."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _causes(err: BaseException) -> list[BaseException]:
    """``err`` and what it wraps (urllib3's ``reason``, ``__cause__``, ``__context__``), outermost first."""
    chain: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and cause not in chain and len(chain) < 10:
        chain.append(cause)
        reason = getattr(cause, "reason", None)
        cause = reason if isinstance(reason, BaseException) else (cause.__cause__ or cause.__context__)
    return chain


def _problem(err: requests.RequestException) -> str:
    """What a request that got no HTTP answer met, in a few words."""
    for cause in _causes(err):
        if type(cause).__name__ == "NameResolutionError":
            return "host not found"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (is it running, on that port?)"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"TLS error: {cause.verify_message or 'certificate not trusted'} (trust its CA with "
                    "REQUESTS_CA_BUNDLE=ca.crt)")
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {str(cause.reason or 'handshake failed').lower().replace('_', ' ')}"
        if isinstance(cause, OSError) and cause.strerror:
            return str(cause.strerror).lower()
        if type(cause).__name__ == "ReadTimeoutError":
            return "timed out while reading the answer"
        if type(cause).__name__ == "RemoteDisconnected":
            return "the server closed the connection without answering"
    text = str(err).splitlines()[0] if str(err) else ""
    return text or type(err).__name__


def get(url: str, timeout: float, params: Mapping[str, str] | None = None, where: str | None = None) -> \
        requests.Response:
    """GET ``url``; a ReadError of one line naming ``where`` (default ``url``) for anything but an HTTP answer."""
    where = shown(where or url)
    try:
        return requests.get(url, params=params, timeout=timeout)
    except requests.Timeout:
        raise ReadError(f"cannot read {where}: no answer within {timeout:g} s") from None
    except requests.RequestException as err:
        raise ReadError(f"cannot read {where}: {_problem(err)}") from None


def _status_error(response: requests.Response, url: str) -> ReadError:
    hint = (" (it asks for credentials: put USER:PASSWORD@ in the URL)"
            if response.status_code in (401, 403) else "")
    return ReadError(f"cannot read {shown(url)}: HTTP {response.status_code} {response.reason or ''}".rstrip()
                     + hint)


def _has_metric(text: str, prefix: str) -> bool:
    return text.startswith(prefix) or f"\n{prefix}" in text or f"# TYPE {prefix}" in text


def _engine_kind(text: str) -> str | None:
    """``vLLM (vllm:* metrics)`` for an engine's exposition, else None."""
    from exporter.sources.engines import adapters

    for adapter in adapters():
        if adapter.serves(text):
            return f"{ENGINE_NAMES.get(adapter.kind, adapter.kind)}, {adapter.names.prefix}* metrics"
    return None


def _not_an_exporter(base: str, text: str, content_type: str, flags: Flags, want: str) -> ReadError:
    """What ``base`` is, since its /metrics serves no infermeter_* metric, and what to pass instead."""
    url = shown(base)
    engine = _engine_kind(text)
    if engine is not None:
        host = urlsplit(base).hostname or "HOST"
        beside = f"http://{f'[{host}]' if ':' in host else host}:{DEFAULT_PORT}"  # the exporter's usual place
        instead = flags.hint(EXPORTER, beside, want)
        return ReadError(f"{url} is an inference engine ({engine}), not an infermeter exporter: run `infermeter "
                         f"--engine {url}` beside it and pass the exporter's URL ({instead})")
    if _has_metric(text, "prometheus_build_info") or _has_metric(text, "prometheus_tsdb_"):
        if want == AUTO:  # its query API was tried first and did not answer as Prometheus does
            return ReadError(f"{url} serves Prometheus' own metrics, but its query API (/api/v1/query) did not "
                             "answer: is it a Prometheus server, and is the URL its root?")
        return ReadError(f"{url} is a Prometheus server, not an infermeter exporter: pass "
                         f"{flags.hint(PROMETHEUS, url, want)}")
    try:
        names = [family.name for family in text_string_to_metric_families(text)]
    except ValueError:
        names = []
    if not names:
        kind = content_type.split(";", maxsplit=1)[0].strip() or "no content type"
        return ReadError(f"{url}/metrics does not serve Prometheus metrics ({kind}): not an infermeter exporter")
    return ReadError(f"{url}/metrics serves {len(names)} metric families but no infermeter_* one (e.g. "
                     f"{names[0]}): not an infermeter exporter, whose default port is {DEFAULT_PORT}")


def exporter_samples(base: str, timeout: float, flags: Flags, want: str = EXPORTER) -> list[Sample]:
    """Every sample the exporter at ``base`` serves on /metrics."""
    url = base + "/metrics"
    response = get(url, timeout, where=base)
    if response.status_code != 200:
        raise _status_error(response, url)
    text = response.text
    if not _has_metric(text, PREFIX):
        raise _not_an_exporter(base, text, response.headers.get("Content-Type", ""), flags, want)
    try:
        return [(s.name, dict(s.labels), float(s.value))
                for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as err:
        raise ReadError(f"{shown(url)} is not valid Prometheus text: {str(err).splitlines()[0]}") from None


def _prometheus_body(response: requests.Response) -> dict[str, Any] | None:
    """The query API's JSON answer, or None when this is not one (not JSON, or no "status")."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and body.get("status") in ("success", "error") else None


def prometheus_samples(base: str, timeout: float) -> list[Sample] | None:
    """The latest value of every infermeter_* series Prometheus at ``base`` holds; None if it is no Prometheus."""
    url = base + "/api/v1/query"
    response = get(url, timeout, params={"query": QUERY}, where=base)
    body = _prometheus_body(response)
    if body is None:
        if response.status_code in (401, 403):
            raise _status_error(response, url)
        return None
    if body["status"] != "success":
        raise ReadError(f"Prometheus at {shown(base)} answered {body.get('errorType', 'error')}: "
                        f"{' '.join(str(body.get('error', '')).split())}")
    try:
        samples = []
        for series in body["data"]["result"]:
            labels = {str(k): str(v) for k, v in series["metric"].items()}
            name = labels.pop("__name__")
            samples.append((name, labels, float(series["value"][1])))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise ReadError(f"Prometheus at {shown(base)} answered in an unexpected shape (not an instant vector)") \
            from None
    if not samples:
        raise ReadError(f"Prometheus at {shown(base)} holds no infermeter_* series: does it scrape an exporter "
                        f"(a target on port {DEFAULT_PORT})?")
    return samples


def read(url: str, timeout: float, want: str = AUTO, flags: Flags | None = None) -> list[Sample]:
    """The samples at ``url``: a Prometheus server (tried first unless ``want`` is EXPORTER) or an exporter."""
    flags = flags or Flags()
    base = base_url(url)
    if want != EXPORTER:
        samples = prometheus_samples(base, timeout)
        if samples is not None:
            return samples
        if want == PROMETHEUS:
            try:
                exporter_samples(base, timeout, flags, want)
            except ReadError as err:
                raise ReadError(f"{shown(base)} has no Prometheus query API (/api/v1/query); {err}") from None
            raise ReadError(f"{shown(base)} is an infermeter exporter, not a Prometheus server: pass "
                            f"{flags.hint(EXPORTER, shown(base), want)}")
    return exporter_samples(base, timeout, flags, want)
