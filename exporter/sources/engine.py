"""Read one inference server: its /metrics and its identity endpoint, within a deadline."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from exporter import untrusted
from exporter.config import EngineTarget
from exporter.samples import EngineIdentity, EngineSample
from exporter.sources import SourceError, http
from exporter.sources.engines import Adapter, check_sample, detect
from exporter.sources.exposition import parse

log = logging.getLogger(__name__)

ACCEPT_TEXT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"
IDENTITY_TTL_SECONDS = 60.0
IDENTITY_MAX_BYTES = 1024 * 1024  # one identity document (/v1/models, /version, /info, /server_info)


@dataclass(frozen=True)
class EngineReading:
    """One successful read of an engine."""

    sample: EngineSample
    identity: EngineIdentity


class EngineSource:
    """Reads one engine; keeps its identity and refreshes it after a restart, a kind change or 60 s."""

    def __init__(self, target: EngineTarget, timeout: float, max_body_bytes: int,
                 session: requests.Session | None = None, clock: Callable[[], float] = time.time,
                 token: str | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.max_body_bytes = max_body_bytes
        self._session = session or requests.Session()
        # Like Prometheus, ignore HTTP(S)_PROXY and .netrc: the engine is local, and a proxy variable
        # meant for downloads must not reroute (or authenticate) scrapes.
        self._session.trust_env = False
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers["User-Agent"] = "infermeter"
        self._clock = clock
        self._identity = EngineIdentity()
        self._identity_kind: str | None = None
        self._identity_at = -float("inf")
        self._last: EngineSample | None = None
        self._noted: set[str] = set()  # identity fields already logged as cut or refused (a few names)

    def read(self) -> EngineReading:
        deadline = time.monotonic() + self.timeout
        response = http.get(self._session, self.target.url + "/metrics", deadline, self.max_body_bytes,
                            ACCEPT_TEXT)
        if response.status in (401, 403):
            raise SourceError(f"HTTP {response.status} from {self.target.url}/metrics: the engine wants a bearer "
                              "token (--engine-token-file, INFERMETER_ENGINE_TOKEN)")
        if response.status != 200:
            raise SourceError(f"HTTP {response.status} from {self.target.url}/metrics")
        text = response.body.decode("utf-8", errors="replace")
        adapter = detect(text)
        exposition = parse(text, adapter.families)
        now = self._clock()
        sample = adapter.adapt(exposition, now, self._identity, model=self.target.model)
        check_sample(sample)
        restarted = self._last is not None and counters_went_back(self._last, sample)
        if restarted or adapter.kind != self._identity_kind or now - self._identity_at > IDENTITY_TTL_SECONDS:
            self._identity = self._bounded(self._read_identity(adapter, deadline))
            self._identity_kind, self._identity_at = adapter.kind, now
            sample = adapter.adapt(exposition, now, self._identity, model=self.target.model)
            check_sample(sample)
        if sample.model_label is not None:
            bounded = untrusted.label(sample.model_label)
            if bounded != sample.model_label:
                self._note("model label", sample.model_label, f"exported as {bounded!r}")
                sample = dataclasses.replace(sample, model_label=bounded)
        self._last = sample
        return EngineReading(sample, self._identity)

    def _read_identity(self, adapter: Adapter, deadline: float) -> EngineIdentity:
        documents: dict[str, Any] = {}
        for path in adapter.identity_paths:
            try:
                response = http.get(self._session, self.target.url + path, deadline, IDENTITY_MAX_BYTES,
                                    "application/json")
                if response.status == 200:
                    documents[path] = json.loads(response.body)
            except (SourceError, ValueError, RecursionError) as err:  # RecursionError: JSON nested too deep
                log.debug("engine %s: identity %s unavailable: %s", self.target.name, path,
                          untrusted.short(str(err), 200))
        return adapter.identity(documents)

    def _bounded(self, identity: EngineIdentity) -> EngineIdentity:
        """The identity with the model name fit for a label (cut, with a digest), and a version or a model
        directory that cannot be one refused (see exporter.untrusted)."""
        model = untrusted.label(identity.model) if identity.model is not None else None
        if model != identity.model:
            self._note("model", identity.model, f"exported as {model!r}")
        version = untrusted.version(identity.version)
        if identity.version is not None and version is None:
            self._note("version", identity.version, 'not a version: infermeter_engine_info has version=""')
        root = untrusted.path(identity.model_root)
        if identity.model_root is not None and root is None:
            self._note("model directory", identity.model_root, "not a path: not read")
        return dataclasses.replace(identity, model=model, version=version, model_root=root)

    def _note(self, field: str, value: object, outcome: str) -> None:
        """Log, once per field, that the engine supplied a value that had to be cut or refused."""
        if field not in self._noted:
            self._noted.add(field)
            log.warning("engine %s: its %s %s is too long or not printable; %s", self.target.name, field,
                        untrusted.short(value), outcome)

    def close(self) -> None:
        self._session.close()


def counters_went_back(previous: EngineSample, current: EngineSample) -> bool:
    """True when any counter decreased: the engine restarted (its identity may have changed)."""
    return any(current.counters.get(k, v) < v for k, v in previous.counters.items())
