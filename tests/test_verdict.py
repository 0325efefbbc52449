"""The right-sizing state from evidence (exporter.derive.verdict) on hand-built windows of samples.

Every window here is a list of EngineSamples one second apart, as an engine's window holds them; the
evidence is counted by hand in the comments. Thresholds are checked on both sides.
"""

from __future__ import annotations

import pytest

from exporter.derive import verdict
from exporter.derive.verdict import Evidence, StateHold, candidate, gather
from exporter.samples import EngineSample


def sample(t: float, running: float = 0.0, waiting: float = 0.0, kv: float | None = None,
           preemptions: float | None = None, sleep: float | None = None) -> EngineSample:
    gauges = {"requests_running": running, "requests_waiting": waiting}
    if kv is not None:
        gauges["kv_cache_usage_ratio"] = kv
    if sleep is not None:
        gauges["sleep_level"] = sleep
    counters = {"preemptions": preemptions} if preemptions is not None else {}
    return EngineSample(timestamp=t, kind="vllm", counters=counters, gauges=gauges)


def idle(start: float, count: int, kv: float = 0.0) -> list[EngineSample]:
    return [sample(start + i, kv=kv) for i in range(count)]


def loaded(start: float, count: int, running: float = 8.0, waiting: float = 0.0, kv: float = 0.3) -> list[EngineSample]:
    return [sample(start + i, running=running, waiting=waiting, kv=kv) for i in range(count)]


def state(samples: list[EngineSample], batch_limit: int | None = 100, bandwidth: float | None = 0.0,
          fewer: bool = False, replicas: int = 1) -> str:
    return candidate(gather(samples, {}, batch_limit, replicas), bandwidth, fewer)


# --- the evidence period and loaded samples -----------------------------------------------------------


def test_only_loaded_samples_count_so_idle_time_before_or_after_does_not_dilute() -> None:
    # 10 s of load with a request waiting in every sample, inside 50 s of idling (20 before, 20 after):
    # over all 50 samples requests wait 20 % of the time, over the 10 loaded ones 100 %
    window = [*idle(0, 20), *loaded(20, 10, running=90, waiting=3, kv=0.5), *idle(30, 20)]
    evidence = gather(window, {}, 100)
    assert evidence.loaded_ratio == pytest.approx(10 / 50)
    assert evidence.queueing_ratio == 1.0
    assert evidence.waiting_requests == 3.0
    assert evidence.kv_usage == 0.5  # the mean over loaded samples: the idle ones' 0 is not in it
    assert evidence.batch_ratio == pytest.approx(90 / 100)
    assert candidate(evidence, 0.0, False) == "compute_bound"


def test_the_evidence_is_the_last_60_seconds_only() -> None:
    # 100 s: a queue for the first 30 s, then 70 s served without one. The period is t >= 99 - 60 = 39:
    # 61 samples, all loaded, none waiting
    window = [*loaded(0, 30, running=90, waiting=5), *loaded(30, 70, running=90, waiting=0)]
    evidence = gather(window, {}, 100)
    assert evidence.seconds == 60.0
    assert evidence.loaded_ratio == 1.0 and evidence.queueing_ratio == 0.0
    # the same window over its last 80 s (t >= 19) holds 11 queued samples of 81
    wider = gather(window, {}, 100, seconds=80)
    assert wider.queueing_ratio == pytest.approx(11 / 81)
    # a window shorter than a minute is all evidence
    assert gather(loaded(0, 20), {}, 100).seconds == 19.0


def test_gpu_busy_is_the_mean_over_loaded_samples_and_shown_only() -> None:
    window = [*idle(0, 2), *loaded(2, 2)]
    busy = {0.0: 0.0, 1.0: 0.0, 2.0: 1.0, 3.0: 0.5}
    evidence = gather(window, busy, 100)
    assert evidence.gpu_busy_ratio == 0.75  # (1.0 + 0.5) / 2, the idle samples' 0 left out
    # NVML at 100 % with no queue and a small batch: still overprovisioned (utilisation does not decide)
    assert candidate(gather(loaded(0, 10, running=2, kv=0.05), {float(t): 1.0 for t in range(10)}, 100),
                     0.0, False) == "overprovisioned"


def test_no_samples_and_an_idle_window() -> None:
    assert gather([], {}, 100) == Evidence(0.0)
    evidence = gather(idle(0, 10), {}, 100)
    assert evidence.loaded_ratio == 0.0
    assert evidence.queueing_ratio is None and evidence.batch_ratio is None and evidence.kv_usage is None
    assert candidate(evidence, None, False) == "overprovisioned"  # nothing ran: quiet


def test_batch_ratio_is_per_replica_and_unknown_without_b_star() -> None:
    # 4 data-parallel replicas running 80 requests: 20 each, against B* = 40
    assert gather(loaded(0, 5, running=80), {}, 40, replicas=4).batch_ratio == 0.5
    assert gather(loaded(0, 5, running=80), {}, None).batch_ratio is None
    # B* = 0: not even batch 1 meets the TPOT target; any batch is past it
    assert gather(loaded(0, 5, running=1), {}, 0).batch_ratio == float("inf")


# --- sleeping ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [1.0, 2.0])
def test_sleeping_from_the_vllm_sleep_gauge_in_the_latest_sample(level: float) -> None:
    # preempting and queueing before it slept: the latest sample decides
    window = [sample(t, running=50, waiting=9, kv=0.99, preemptions=t) for t in range(10)]
    window.append(sample(10, sleep=level))
    assert state(window) == "sleeping"
    awake = [*window[:-1], sample(10, running=50, waiting=9, kv=0.99, preemptions=10, sleep=0.0)]
    assert state(awake) == "memory_bound"
    # asleep earlier in the window but awake now: not sleeping
    woke = [sample(0, sleep=1.0), *loaded(1, 5, running=2, kv=0.05)]
    assert gather(woke, {}, 100).sleeping is False


# --- memory_bound ----------------------------------------------------------------------------------------


def test_any_preemption_in_the_evidence_period_is_memory_bound() -> None:
    # one preemption in 60 s, the KV cache not even full, no queue
    window = [sample(t, running=20, kv=0.5, preemptions=0.0 if t < 30 else 1.0) for t in range(61)]
    evidence = gather(window, {}, 100)
    assert evidence.preemptions_per_second == pytest.approx(1 / 60)
    assert candidate(evidence, 0.0, False) == "memory_bound"
    # the same preemption before the evidence period: out of it (t >= 100 - 60 = 40)
    earlier = [sample(t, running=20, kv=0.5, preemptions=0.0 if t < 30 else 1.0) for t in range(101)]
    assert gather(earlier, {}, 100).preemptions_per_second == 0.0
    assert state(earlier) == "balanced"
    # a counter that stays still: no preemption
    assert state([sample(t, running=20, kv=0.5, preemptions=7.0) for t in range(10)]) == "balanced"


def test_kv_at_its_ceiling_with_waiting_on_a_quarter_of_loaded_samples_is_memory_bound() -> None:
    # 1 of 4 loaded samples full (>= 0.9) with a request waiting: 25 % >= 25 %
    window = [*loaded(0, 3, running=40, kv=0.6), *loaded(3, 1, running=40, waiting=2, kv=0.9)]
    evidence = gather(window, {}, 100)
    assert evidence.kv_full_waiting_ratio == 0.25 and evidence.kv_full_ratio == 0.25
    assert candidate(evidence, 0.0, False) == "memory_bound"
    # 1 of 5: 20 % < 25 % (and 20 % queueing < 50 %): balanced
    window = [*loaded(0, 4, running=40, kv=0.6), *loaded(4, 1, running=40, waiting=2, kv=0.9)]
    assert state(window) == "balanced"
    # KV just below the ceiling (0.89) with waiting everywhere: a queue with room, not memory
    assert state(loaded(0, 10, running=60, waiting=2, kv=0.89)) == "compute_bound"
    # KV full all along but nothing waiting: full of useful work, not memory bound
    full = loaded(0, 10, running=60, kv=0.95)
    assert gather(full, {}, 100).kv_full_ratio == 1.0
    assert state(full) == "balanced"


# --- compute_bound and engine_limited ------------------------------------------------------------------------


def test_queueing_share_threshold_is_half_the_loaded_samples() -> None:
    # 5 of 10 loaded samples with a request waiting: 0.5 >= QUEUEING_SHARE
    assert verdict.QUEUEING_SHARE == 0.5
    window = [*loaded(0, 5, running=60, waiting=1, kv=0.5), *loaded(5, 5, running=60, kv=0.5)]
    assert gather(window, {}, 100).queueing_ratio == 0.5
    assert state(window) == "compute_bound"
    # 4 of 10: an arrival caught between two steps now and then, not a queue
    window = [*loaded(0, 4, running=60, waiting=1, kv=0.5), *loaded(4, 6, running=60, kv=0.5)]
    assert state(window) == "balanced"


def test_a_queue_with_the_batch_at_half_b_star_is_compute_bound_below_it_engine_limited() -> None:
    # B* = 100: a mean batch of 50 is 0.5 B* (a bigger batch would break the TPOT target)
    assert state(loaded(0, 10, running=50, waiting=4, kv=0.4), batch_limit=100) == "compute_bound"
    # 49 running: 0.49 B*, the engine's own caps hold the batch down while requests wait
    evidence = gather(loaded(0, 10, running=49, waiting=4, kv=0.4), {}, 100)
    assert evidence.batch_ratio == pytest.approx(0.49)
    assert candidate(evidence, 0.9, False) == "engine_limited"
    # B* unknown: the queue is real, its reason cannot be told
    assert state(loaded(0, 10, running=8, waiting=4, kv=0.4), batch_limit=None) == "compute_bound"
    # B* = 0 (no batch meets the TPOT target): any queue is compute bound
    assert state(loaded(0, 10, running=1, waiting=4, kv=0.4), batch_limit=0) == "compute_bound"


# --- overprovisioned and balanced -----------------------------------------------------------------------------


def test_quiet_means_low_kv_low_batch_and_low_bandwidth_on_both_sides() -> None:
    # KV 0.24 < 0.25, batch 24 / 100 < 0.25, bandwidth 0.24 < 0.25: quiet
    assert state(loaded(0, 10, running=24, kv=0.24), bandwidth=0.24) == "overprovisioned"
    # each at its threshold breaks the quiet
    assert state(loaded(0, 10, running=24, kv=0.25), bandwidth=0.24) == "balanced"
    assert state(loaded(0, 10, running=25, kv=0.24), bandwidth=0.24) == "balanced"
    assert state(loaded(0, 10, running=24, kv=0.24), bandwidth=0.25) == "balanced"


def test_the_planner_needing_fewer_gpus_is_overprovisioned_but_not_with_a_queue_or_preemption() -> None:
    busy = loaded(0, 10, running=60, kv=0.6)
    assert state(busy, bandwidth=0.5) == "balanced"
    assert state(busy, bandwidth=0.5, fewer=True) == "overprovisioned"
    # any waiting at all (here 1 of 10 samples) rules overprovisioned out
    some = [*loaded(0, 9, running=60, kv=0.6), *loaded(9, 1, running=60, waiting=1, kv=0.6)]
    assert state(some, bandwidth=0.5, fewer=True) == "balanced"
    preempted = [sample(t, running=60, kv=0.6, preemptions=float(t > 5)) for t in range(10)]
    assert state(preempted, bandwidth=0.5, fewer=True) == "memory_bound"


def test_every_state_is_one_of_the_exported_states() -> None:
    assert set(verdict.STATES) == {"overprovisioned", "memory_bound", "compute_bound", "engine_limited", "sleeping",
                                   "balanced"}


# --- StateHold -----------------------------------------------------------------------------------------------


def run(hold: StateHold, candidates: list[str], interval: float, start: float = 0.0) -> list[str | None]:
    return [hold.update(c, start + i * interval) for i, c in enumerate(candidates)]


def test_no_state_until_the_first_one_held_three_cycles_and_fifteen_seconds() -> None:
    assert (verdict.HOLD_CYCLES, verdict.HOLD_SECONDS) == (3, 15.0)
    # every 10 s: at t = 0, 10, 20 the third cycle is 20 s after the first
    assert run(StateHold(), ["balanced"] * 3, 10.0) == [None, None, "balanced"]
    # every 5 s: the third cycle (t = 10) is 10 s in, the fourth (t = 15) is 15 s in
    assert run(StateHold(), ["balanced"] * 4, 5.0) == [None, None, None, "balanced"]
    # every 0.5 s: 15 s takes the 31st cycle (t = 15.0)
    states = run(StateHold(), ["balanced"] * 31, 0.5)
    assert states[29] is None and states[30] == "balanced"
    # every 20 s: three cycles (t = 40) although 15 s passed at the second
    assert run(StateHold(), ["balanced"] * 3, 20.0) == [None, None, "balanced"]


def test_a_flickering_first_candidate_gives_no_state() -> None:
    hold = StateHold()
    assert set(run(hold, ["balanced", "compute_bound"] * 10, 10.0)) == {None}
    assert hold.changes == 0


def test_a_short_excursion_changes_nothing_and_a_held_one_is_one_change() -> None:
    hold = StateHold()
    run(hold, ["balanced"] * 3, 10.0)
    assert hold.state == "balanced" and hold.changes == 0  # the first state is not a change
    # two cycles of compute_bound, then balanced again: no change, and the streak is forgotten
    assert run(hold, ["compute_bound", "compute_bound", "balanced"], 10.0, start=30) == ["balanced"] * 3
    # so the next compute_bound starts from one again
    assert run(hold, ["compute_bound", "compute_bound"], 10.0, start=60) == ["balanced"] * 2
    assert run(hold, ["compute_bound"], 10.0, start=80) == ["compute_bound"]
    assert hold.changes == 1
    # a streak broken by a third state restarts
    assert run(hold, ["memory_bound", "memory_bound", "balanced", "memory_bound", "memory_bound"], 10.0,
               start=90) == ["compute_bound"] * 5
    assert run(hold, ["memory_bound"], 10.0, start=140) == ["memory_bound"]
    assert hold.changes == 2


def test_three_quick_cycles_are_not_enough_after_the_first_state_either() -> None:
    hold = StateHold()
    run(hold, ["balanced"] * 31, 0.5)
    assert hold.state == "balanced"
    # 1 s cycles: memory_bound must hold 15 s (16 cycles), not 3
    states = run(hold, ["memory_bound"] * 16, 1.0, start=20)
    assert states[:15] == ["balanced"] * 15 and states[15] == "memory_bound"
    assert hold.changes == 1


def test_state_transitions_as_load_changes() -> None:
    """A minute quiet, two busy, one preempting, then busy again; one sample a second, a cycle every 5 s. The
    state follows the load, each change once its candidate held 15 s, and preemptions count for the minute of
    evidence after the last one."""
    window: list[EngineSample] = []
    preempted = 0.0
    hold = StateHold()
    taken: list[tuple[float, str]] = []
    for t in range(400):
        if t < 60:
            window.append(sample(t, running=1, kv=0.02, preemptions=preempted))
        elif 180 <= t < 240:
            preempted += 0.5
            window.append(sample(t, running=200, waiting=2, kv=0.97, preemptions=preempted))
        else:
            window.append(sample(t, running=60, kv=0.55, preemptions=preempted))
        if t % 5 == 0:
            bandwidth = 0.05 if t < 60 else 0.5  # the window's decode bandwidth share (analysis.bandwidth_share)
            state = hold.update(candidate(gather(window, {}, 400), bandwidth, False), float(t))
            if state is not None and (not taken or taken[-1][1] != state):
                taken.append((float(t), state))
    # quiet from the start: taken at t = 15 (cycles 0, 5, 10, 15); busy from t = 60: taken at 75; the first
    # preemption at t = 180: taken at 195; the last at 239 stays in the evidence until t = 299, so balanced
    # is the candidate from t = 300 and taken at 315
    assert taken == [(15.0, "overprovisioned"), (75.0, "balanced"), (195.0, "memory_bound"), (315.0, "balanced")]
    assert hold.changes == 3
