"""How many GPUs, of which shape, and what it saves: one planner call per engine (docs/analytic-model.md).

Pure. The engine's observed load and efficiency become the planner's inputs (:func:`plan_inputs`); the
planner (exporter.derive.plan) evaluates the engine's own GPU model at every tensor-parallel size, and the
cheapest feasible shape is the recommendation, which may reshape the engine (an 8B model on TP8 can be
told "1 GPU"). The same inputs serve the what-if over other GPU models, ``infermeter report`` and
``infermeter plan --from`` (which reads the inputs back from the exported metrics), so all of them give
one answer.

Calibration is honest: a phase the observations cannot calibrate stays on the roofline, and says why
(CALIBRATION_REASONS).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.derive import plan
from exporter.derive.analysis import DEFAULT_CONTEXT_TOKENS, Analysis
from exporter.derive.engine import EngineStats
from exporter.derive.verdict import Evidence

# Fewer finished requests than this in the window calibrate nothing (one slow request is not an efficiency).
MIN_CALIBRATION_REQUESTS = 10
# An engine that finished nothing in the window is planned for this request at a negligible rate: the
# smallest shape that holds the model and one request.
IDLE_REQUESTS_PER_SECOND = 1e-6
IDLE_OUTPUT_TOKENS = 256.0
PHASES = ("decode", "prefill")
# why a phase stays on the roofline ("" when it is calibrated)
CALIBRATION_REASONS = ("", "no_requests", "too_few_requests", "not_observed", "not_positive")


@dataclass(frozen=True)
class PlanInputs:
    """What the planner is given for one engine: the load (two significant digits, so that a steady load
    gives the same answer every cycle), the efficiency per phase and why a phase is not calibrated."""

    workload: plan.Workload
    calibration: plan.Calibration
    reasons: Mapping[str, str]
    idle: bool = False
    kv_cache_dtype: str = "auto"  # one of plan.KV_CACHE_DTYPES

    @property
    def basis(self) -> str:
        return "calibrated" if self.calibration.applies else "roofline"


def sig2(value: float) -> float:
    """Two significant digits: a load that moves by a few percent gives the same plan."""
    return float(f"{value:.2g}")


def planned_kv_cache_dtype(cache_dtype: str | None) -> str:
    """The planner's KV dtype (plan.KV_CACHE_DTYPES) for an engine's own (vLLM cache_config cache_dtype):
    fp8 for any 1-byte format, else auto (the model's activation dtype)."""
    return "fp8" if (cache_dtype or "").lower().startswith("fp8") else "auto"


def plan_inputs(stats: EngineStats, analysis: Analysis, cache_dtype: str | None = None) -> PlanInputs:
    """The planner's inputs from the window: the demand (finished plus rejected requests per second), the
    mean request (its prompt, the part of it the engine computed, its output) and the observed efficiency.

    Decode efficiency is the analytic MBU (the roofline step over the observed mean inter-token step);
    prefill efficiency is the roofline prefill of the mean prompt over the observed mean prefill time
    (:func:`mean_prefill_seconds`), where both time the computed part of the prompt.
    """
    rates = stats.counter_rates
    rps = rates.get("requests_finished", 0.0)
    prompt, output = rates.get("prompt_tokens", 0.0), rates.get("generation_tokens", 0.0)
    computed = stats.prompt_tokens_computed_per_second() if "prompt_tokens_computed" in rates else None
    finished = _finished(stats)
    if rps > 0 and prompt > 0 and output > 0:
        # demand: every finished request and every one the engine turned away (vLLM admission rejections),
        # the rejected ones taken to be of the mean finished request's size
        demand = rps + rates.get("admission_rejections", 0.0)
        mean_prompt = sig2(max(prompt / rps, 1.0))
        # the computed part only where it is less than the whole prompt (a prefix cache served the rest)
        mean_computed = sig2(max(computed / rps, 1.0)) if computed is not None else None
        if mean_computed is not None and mean_computed >= mean_prompt:
            mean_computed = None
        workload = plan.Workload(sig2(demand), mean_prompt, sig2(max(output / rps, 1.0)), mean_computed)
        idle = False
    else:
        workload = plan.Workload(IDLE_REQUESTS_PER_SECOND, DEFAULT_CONTEXT_TOKENS, IDLE_OUTPUT_TOKENS)
        idle = True
    reasons: dict[str, str] = {}
    decode = _calibrate(analysis.mbu.get("analytic"), finished, reasons, "decode")
    spent = mean_prefill_seconds(stats)
    prefill_ratio = None
    if analysis.expected_ttft_seconds and spent is not None:
        prefill_ratio = analysis.expected_ttft_seconds / spent if spent > 0 else -1.0
    prefill = _calibrate(prefill_ratio, finished, reasons, "prefill")
    return PlanInputs(workload, plan.Calibration(decode, prefill, "observed"), reasons, idle,
                      planned_kv_cache_dtype(cache_dtype))


def mean_prefill_seconds(stats: EngineStats) -> float | None:
    """The mean time a request spent in prefill over the window: the engine's own prefill time where it
    reports one (vLLM request_prefill_time_seconds: scheduled to first token), else the mean time to first
    token less the mean queue time. Means, exact from the histograms' sums, where a median inside a wide
    first bucket is not; and the engine's own figure, because under preemption a request's time to first
    token also counts its waits after each preemption."""
    rates = stats.counter_rates
    if rates.get("prefill_seconds") is not None and rates.get("requests_finished", 0.0) > 0:
        return rates["prefill_seconds"] / rates["requests_finished"]
    ttft, queue = stats.latency.get("time_to_first_token"), stats.latency.get("queue_time")
    if ttft is None or ttft.window_mean is None:
        return None
    queued = queue.window_mean if queue is not None and queue.window_mean is not None else 0.0
    return ttft.window_mean - queued


def _finished(stats: EngineStats) -> float:
    """Requests finished in the window, by the histogram that counts each request once."""
    for name in ("e2e_request_latency", "time_to_first_token"):
        summary = stats.latency.get(name)
        if summary is not None:
            return summary.window_count
    return 0.0


def _calibrate(ratio: float | None, finished: float, reasons: dict[str, str], phase: str) -> float | None:
    """``ratio`` rounded to two digits when it can calibrate ``phase``; else None with the reason noted:
    no_requests (nothing finished in the window), too_few_requests, not_observed (the engine reports nothing
    that times this phase), not_positive (the observation makes no sense, e.g. a queue longer than the time
    to first token)."""
    if finished <= 0:
        reasons[phase] = "no_requests"
        return None
    if finished < MIN_CALIBRATION_REQUESTS:
        reasons[phase] = "too_few_requests"
        return None
    if ratio is None:
        reasons[phase] = "not_observed"
        return None
    if not math.isfinite(ratio) or ratio <= 0:
        reasons[phase] = "not_positive"
        return None
    reasons[phase] = ""
    return sig2(ratio)


@dataclass(frozen=True)
class Shapes:
    """The engine's own GPU model at every tensor-parallel size, ranked (plan.rank): the first feasible one
    is the recommendation; ``current`` is the shape the engine runs now (for its batch limit B*)."""

    ranked: tuple[plan.Candidate, ...]
    current: plan.Candidate | None

    @property
    def recommended(self) -> plan.Candidate | None:
        first = self.ranked[0] if self.ranked else None
        return first if first is not None and first.feasible else None

    @property
    def batch_limit(self) -> int | None:
        """B*: the largest batch the current shape takes within the TPOT target (0: not even 1); None when
        the current shape was not evaluated past its fit."""
        current = self.current
        if current is None:
            return None
        if current.ruled_out == "tpot_unreachable":
            return 0
        return current.batch


def shapes(candidates: Sequence[plan.Candidate], current_tensor_parallel: int) -> Shapes:
    current = next((c for c in candidates if c.tensor_parallel == current_tensor_parallel), None)
    return Shapes(tuple(plan.rank(candidates)), current)


@dataclass(frozen=True)
class Rightsizing:
    """The verdict and the plan for one engine, as exported (infermeter_rightsizing_*)."""

    inputs: PlanInputs
    state: str | None = None
    state_changes: int = 0
    evidence: Evidence | None = None
    gpus_needed: int | None = None
    tensor_parallel: int | None = None
    savings_per_hour: float | None = None
    achievable_cost_per_million_tokens: float | None = None


def savings(current_dollars_per_hour: float | None, option_dollars_per_hour: float | None) -> float | None:
    """What the engine costs now minus the option (never below 0); None when either is unknown."""
    if current_dollars_per_hour is None or option_dollars_per_hour is None:
        return None
    return max(current_dollars_per_hour - option_dollars_per_hour, 0.0)
