"""Hugging Face TGI: the router's metrics (``router/src/server.rs``) and ``GET /info``.

TGI's Rust exporter names counters without ``_total``; histograms have no unit suffix and are
real Prometheus histograms. TGI has no time-to-first-token histogram, so TTFT is absent, not
guessed. Prompt and generated token throughput come from the ``_sum`` of the per-request
length histograms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from exporter import untrusted
from exporter.samples import EngineIdentity, EngineSample
from exporter.sources.engines import Adapter, EngineNames, check_pin
from exporter.sources.exposition import Exposition

NAMES = EngineNames(
    kind="tgi",
    prefix="tgi_",
    counters={
        "prompt_tokens": ("tgi_request_input_length_sum",),
        "generation_tokens": ("tgi_request_generated_tokens_sum",),
        "requests_finished": ("tgi_request_success", "tgi_request_success_total"),
    },
    gauges={
        "requests_running": ("tgi_batch_current_size",),
        "requests_waiting": ("tgi_queue_size",),
    },
    histograms={
        "time_per_output_token": ("tgi_request_mean_time_per_token_duration",),
        "e2e_request_latency": ("tgi_request_duration",),
        "queue_time": ("tgi_request_queue_duration",),
    },
)

BATCH_TOKENS = "tgi_batch_current_max_tokens"


def adapt(exposition: Exposition, timestamp: float, identity: EngineIdentity | None, *,
          model: str | None = None) -> EngineSample:
    # one model per server and no model label: a pin is checked against /info's model_id once it is read
    # (the identity's model is cut to fit a label: the pin is compared in the same form)
    check_pin(untrusted.label(model) if model is not None else None,
              (identity.model,) if identity is not None and identity.model else ())
    base = NAMES.sample(exposition, timestamp)
    gauges = dict(base.gauges)
    capacity = identity.max_batch_total_tokens if identity else None
    if capacity:
        gauges["kv_cache_capacity_tokens"] = capacity
        in_use = exposition.total(BATCH_TOKENS)
        if in_use is not None:
            gauges["kv_cache_usage_ratio"] = min(max(in_use / capacity, 0.0), 1.0)
    return EngineSample(timestamp=base.timestamp, kind=base.kind, counters=base.counters, gauges=gauges,
                        histograms=base.histograms, model_label=None)


IDENTITY_PATHS = ("/info",)


def identity(documents: Mapping[str, Any]) -> EngineIdentity:
    info = documents.get("/info")
    if not isinstance(info, Mapping):
        return EngineIdentity()
    model = info.get("model_id")
    version = info.get("version")
    tokens = info.get("max_batch_total_tokens")
    capacity = float(tokens) if isinstance(tokens, (int, float)) and math.isfinite(tokens) and tokens > 0 else None
    return EngineIdentity(model=model if isinstance(model, str) else None,
                          version=version if isinstance(version, str) else None,
                          max_batch_total_tokens=capacity)


ADAPTER = Adapter(NAMES, NAMES.families(BATCH_TOKENS), IDENTITY_PATHS, identity, adapt)
