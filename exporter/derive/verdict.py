"""The right-sizing state of an engine, decided by evidence, with the evidence kept (docs/analytic-model.md).

Evidence is judged over the **evidence period**, the last EVIDENCE_SECONDS of the window, and there over
the **loaded** samples only (a request running or waiting), so that idle time before or after a burst
never dilutes it. "Waiting" below means waiting for capacity (vLLM's reason="capacity"; a request vLLM
deferred for a LoRA slot or a KV transfer is load, but not a queue). The states, first match wins:

- ``sleeping``: the engine says it sleeps (vLLM sleep mode);
- ``memory_bound``: it preempted in the evidence period (vLLM and SGLang preempt or retract only when KV
  blocks run out), or requests waited while the KV cache stood at its ceiling;
- ``compute_bound``: requests waited (on at least half the loaded samples: a queue, not an arrival caught
  between two steps) while the KV cache had room, and the batch stood at the largest one
  the TPOT target allows (B*): a bigger batch would break the target;
- ``engine_limited``: requests waited while the KV cache had room and the batch stayed well below B*: the
  engine's own caps (--max-num-seqs, --max-num-batched-tokens), not the hardware;
- ``overprovisioned``: no request waited, nothing was preempted, and the engine is quiet or the planner
  needs fewer GPUs than it has;
- ``balanced``: anything else.

NVML utilisation is shown as evidence but does not decide: it counts the time any kernel runs, so a
decode loop at batch 8 reads near 100 % on a real GPU while the engine could take 30 times the batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter.derive.rates import counter_rate
from exporter.samples import EngineSample

EVIDENCE_SECONDS = 60.0
# a new state must be the candidate this many cycles in a row, and for this long
HOLD_CYCLES = 3
HOLD_SECONDS = 15.0
KV_FULL = 0.9
KV_LOW = 0.25
QUEUEING_SHARE = 0.5  # of loaded samples with a request waiting: a queue, not an arrival between steps
KV_FULL_WAITING_SHARE = 0.25  # of loaded samples with a request waiting and the KV cache at its ceiling
COMPUTE_BATCH_SHARE = 0.5  # of B*: at or above, the batch is at the TPOT target's limit
QUIET_BATCH_SHARE = 0.25
BANDWIDTH_LOW = 0.25
STATES = ("overprovisioned", "memory_bound", "compute_bound", "engine_limited", "sleeping", "balanced")


@dataclass(frozen=True)
class Evidence:
    """What the state rests on; None where the engine or the period does not tell."""

    seconds: float  # span of the evidence period
    loaded_ratio: float | None = None  # of the period's samples
    queueing_ratio: float | None = None  # of the loaded samples, with a request waiting
    kv_full_ratio: float | None = None  # of the loaded samples, with KV usage >= KV_FULL
    kv_full_waiting_ratio: float | None = None  # of the loaded samples, both
    preemptions_per_second: float | None = None
    waiting_requests: float | None = None  # mean over the loaded samples
    kv_usage: float | None = None  # mean over the loaded samples
    gpu_busy_ratio: float | None = None  # mean NVML utilisation over the loaded samples
    batch_ratio: float | None = None  # mean running per replica over the loaded samples / B*
    sleeping: bool = False


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def waiting_for_capacity(sample: EngineSample) -> float:
    """Requests waiting for room in the batch or the KV cache: vLLM's reason="capacity" where it tells
    (vllm/v1/metrics/loggers.py 0.32-0.34: requests deferred for a LoRA slot, a KV transfer or a blocked state
    wait for something else, and are not a queue the hardware could clear), else every waiting request."""
    gauges = sample.gauges
    return gauges.get("requests_waiting_capacity", gauges.get("requests_waiting", 0.0))


def gather(samples: Sequence[EngineSample], gpu_busy: Mapping[float, float], batch_limit: int | None,
           replicas: int = 1, seconds: float = EVIDENCE_SECONDS) -> Evidence:
    """The evidence over the last ``seconds`` of ``samples`` (a window, oldest first). ``gpu_busy``: the mean
    NVML utilisation of the engine's GPUs by sample timestamp; ``batch_limit``: B* per replica (None: unknown)."""
    if not samples:
        return Evidence(0.0)
    latest = samples[-1]
    period = [s for s in samples if s.timestamp >= latest.timestamp - seconds]
    loaded = [s for s in period if s.gauges.get("requests_running", 0) > 0 or s.gauges.get("requests_waiting", 0) > 0]
    waiting = [waiting_for_capacity(s) > 0 for s in loaded]
    with_kv = [s for s in loaded if "kv_cache_usage_ratio" in s.gauges]
    full = [s.gauges["kv_cache_usage_ratio"] >= KV_FULL for s in with_kv]
    full_waiting = [s.gauges["kv_cache_usage_ratio"] >= KV_FULL and waiting_for_capacity(s) > 0 for s in with_kv]
    with_preemptions = [s for s in period if "preemptions" in s.counters]
    preemptions = counter_rate([s.timestamp for s in with_preemptions],
                               [s.counters["preemptions"] for s in with_preemptions])
    running = [s.gauges.get("requests_running", 0.0) / max(replicas, 1) for s in loaded]
    mean_running = _mean(running)
    batch_ratio = None
    if mean_running is not None and batch_limit is not None:
        batch_ratio = mean_running / batch_limit if batch_limit > 0 else float("inf")
    return Evidence(
        seconds=period[-1].timestamp - period[0].timestamp,
        loaded_ratio=len(loaded) / len(period),
        queueing_ratio=_share(waiting),
        kv_full_ratio=_share(full),
        kv_full_waiting_ratio=_share(full_waiting),
        preemptions_per_second=preemptions,
        waiting_requests=_mean([waiting_for_capacity(s) for s in loaded]),
        kv_usage=_mean([s.gauges["kv_cache_usage_ratio"] for s in with_kv]),
        gpu_busy_ratio=_mean([gpu_busy[s.timestamp] for s in loaded if s.timestamp in gpu_busy]),
        batch_ratio=batch_ratio,
        sleeping=latest.gauges.get("sleep_level", 0.0) > 0)


def candidate(evidence: Evidence, bandwidth_share: float | None, fewer_gpus_planned: bool) -> str:
    """The state the evidence points to now (before StateHold's hysteresis)."""
    e = evidence
    if e.sleeping:
        return "sleeping"
    if (e.preemptions_per_second or 0.0) > 0 or (e.kv_full_waiting_ratio or 0.0) >= KV_FULL_WAITING_SHARE:
        return "memory_bound"
    queueing = e.queueing_ratio or 0.0
    if queueing >= QUEUEING_SHARE:
        if e.batch_ratio is not None:
            return "compute_bound" if e.batch_ratio >= COMPUTE_BATCH_SHARE else "engine_limited"
        return "compute_bound"  # B* unknown: the queue is real, the reason cannot be told
    if queueing == 0:
        quiet = ((e.kv_usage or 0.0) < KV_LOW and (e.batch_ratio or 0.0) < QUIET_BATCH_SHARE
                 and (bandwidth_share or 0.0) < BANDWIDTH_LOW)
        if quiet or fewer_gpus_planned:
            return "overprovisioned"
    return "balanced"


class StateHold:
    """Hysteresis: a state, the first one included, must be the candidate ``cycles`` cycles in a row and
    for ``seconds`` before it is taken (None until then: one sample is no evidence). ``changes`` counts
    the changes after the first state."""

    def __init__(self, cycles: int = HOLD_CYCLES, seconds: float = HOLD_SECONDS) -> None:
        self.cycles, self.seconds = cycles, seconds
        self.state: str | None = None
        self.changes = 0
        self._next: str | None = None
        self._streak = 0
        self._since = 0.0

    def update(self, proposed: str, now: float, at_once: bool = False) -> str | None:
        """The state after this cycle's candidate ``proposed``, at ``now`` (seconds); ``at_once`` skips the
        hold (a state the engine declares, such as sleeping, needs no evidence to build up)."""
        if at_once and proposed != self.state:
            self.changes += self.state is not None
            self.state, self._next, self._streak = proposed, None, 0
            return self.state
        if proposed == self.state:
            self._next, self._streak = None, 0
            return self.state
        if proposed != self._next:
            self._next, self._streak, self._since = proposed, 0, now
        self._streak += 1
        if self._streak >= self.cycles and now - self._since >= self.seconds:
            self.changes += self.state is not None
            self.state, self._next, self._streak = proposed, None, 0
        return self.state
