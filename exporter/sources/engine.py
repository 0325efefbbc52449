"""Read one inference server: its /metrics and its identity endpoint, within a deadline."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from exporter.config import EngineTarget
from exporter.samples import EngineIdentity, EngineSample
from exporter.sources import SourceError, http
from exporter.sources.engines import Adapter, detect
from exporter.sources.exposition import parse

log = logging.getLogger(__name__)

ACCEPT_TEXT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"
IDENTITY_TTL_SECONDS = 60.0


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
        restarted = self._last is not None and counters_went_back(self._last, sample)
        if restarted or adapter.kind != self._identity_kind or now - self._identity_at > IDENTITY_TTL_SECONDS:
            self._identity = self._read_identity(adapter, deadline)
            self._identity_kind, self._identity_at = adapter.kind, now
            sample = adapter.adapt(exposition, now, self._identity, model=self.target.model)
        self._last = sample
        return EngineReading(sample, self._identity)

    def _read_identity(self, adapter: Adapter, deadline: float) -> EngineIdentity:
        documents: dict[str, Any] = {}
        for path in adapter.identity_paths:
            try:
                response = http.get(self._session, self.target.url + path, deadline, 1024 * 1024,
                                    "application/json")
                if response.status == 200:
                    documents[path] = json.loads(response.body)
            except (SourceError, ValueError) as err:
                log.debug("engine %s: identity %s unavailable: %s", self.target.name, path, err)
        return adapter.identity(documents)

    def close(self) -> None:
        self._session.close()


def counters_went_back(previous: EngineSample, current: EngineSample) -> bool:
    """True when any counter decreased: the engine restarted (its identity may have changed)."""
    return any(current.counters.get(k, v) < v for k, v in previous.counters.items())
