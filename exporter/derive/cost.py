"""What an engine costs: per hour, per request, per million tokens, and the idle share.

Needs only the price of the engine's GPUs and the observed load; the model is needed only to split
the cost between prompt and generation tokens when the engine does not report its own times.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from exporter.derive.engine import EngineStats


@dataclass(frozen=True)
class Costs:
    per_hour: float
    per_request: float | None = None
    # token_type ("prompt" | "generation" | "total") -> dollars per million tokens
    per_million_tokens: Mapping[str, float] = field(default_factory=dict)
    idle_per_hour: float | None = None


def engine_prompt_share(stats: EngineStats) -> float | None:
    """Share of GPU time spent on prompts, from vLLM's own per-request prefill and decode times.

    Requests decode together, so the summed decode seconds count each step once per running request:
    divided by the mean number running, they approximate the GPU's decode time (prefills are taken as
    running one at a time).
    """
    prefill = stats.counter_rates.get("prefill_seconds")
    decode = stats.counter_rates.get("decode_seconds")
    if prefill is None or decode is None:
        return None
    running = max(stats.gauge_means.get("requests_running", 1.0), 1.0)
    wall = prefill + decode / running
    return prefill / wall if wall > 0 else None


def costs(hourly: float, stats: EngineStats, gpu_utilization: Sequence[float],
          prompt_share: float | None) -> Costs:
    """Costs at ``hourly`` dollars for the load in ``stats``; ``prompt_share`` splits them by token type (the
    prompt part is then spread over every prompt token, prefix-cache hits included: the tokens a request
    sends, whichever of them the engine had to compute)."""
    rates = stats.counter_rates
    # a request's cost is spread over the requests that completed (stop, length, repetition): the GPU time
    # spent on aborted and failed requests is paid for by the answers that were delivered
    rps = stats.requests_completed_per_second()
    prompt, generation = rates.get("prompt_tokens", 0.0), rates.get("generation_tokens", 0.0)
    per_million: dict[str, float] = {}
    if prompt + generation > 0:
        per_million["total"] = hourly / ((prompt + generation) * 3600) * 1e6
        if prompt_share is not None:
            if prompt > 0:
                per_million["prompt"] = hourly * prompt_share / (prompt * 3600) * 1e6
            if generation > 0:
                per_million["generation"] = hourly * (1 - prompt_share) / (generation * 3600) * 1e6
    idle = None
    if gpu_utilization:
        busy = min(max(sum(gpu_utilization) / len(gpu_utilization), 0.0), 1.0)
        idle = hourly * (1 - busy)
    return Costs(per_hour=hourly, per_request=hourly / (rps * 3600) if rps > 0 else None,
                 per_million_tokens=per_million, idle_per_hour=idle)
