"""How many GPUs, of which shape, and what it saves: one planner call per engine (exporter.derive.rightsizing,
exporter.resolve.Planner), exported as infermeter_rightsizing_* and replayed by ``plan --from`` and ``report``.

Facts these examples use (exporter/facts): Llama-3.1-8B weighs 16,060,522,496 bytes, fits one H100
(74.8 GB usable beside vLLM's reservations) and one A100 80GB; the H100 catalogue price is $3/GPU-hour.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter import plan as plan_command
from exporter import report
from exporter.catalog import BY_NAME
from exporter.collection import Collection, EngineView, Snapshot
from exporter.collector import SnapshotCollector
from exporter.config import Config, EngineTarget
from exporter.config import load_config as load
from exporter.derive import plan, rightsizing, whatif
from exporter.derive.analysis import DEFAULT_CONTEXT_TOKENS, Analysis
from exporter.derive.engine import EngineStats, LatencySummary
from exporter.derive.rightsizing import (
    IDLE_OUTPUT_TOKENS,
    IDLE_REQUESTS_PER_SECOND,
    MIN_CALIBRATION_REQUESTS,
    plan_inputs,
    savings,
)
from exporter.facts import gpus as gpu_facts
from exporter.facts import models as model_facts
from exporter.resolve import FactsResolver, Planner
from exporter.sources.engine import EngineSource
from exporter.sources.nvml import NvmlSource
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node, load_fake_pynvml
from tests.process import ROOT, ExporterProcess, Samples, value, wait_for

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
LLAMA_8B = model_facts.builtin("meta-llama/Llama-3.1-8B")
LLAMA_8B_FILE = ROOT / "exporter" / "facts" / "models" / "meta-llama--Llama-3.1-8B.json"
LLAMA_70B_FILE = ROOT / "exporter" / "facts" / "models" / "meta-llama--Llama-3.1-70B.json"
FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"
assert LLAMA_8B is not None


def spec(name: str) -> gpu_facts.GpuSpec:
    found = gpu_facts.find(name)
    assert found is not None
    return found


def latency(count: float, mean: float | None) -> LatencySummary:
    return LatencySummary({}, count, (mean or 0.0) * count, mean, count)


def stats(rps: float = 0.0, prompt_tps: float = 0.0, generation_tps: float = 0.0, finished: float = 0.0,
          ttft: float | None = None, queue: float | None = None, prefill_tps: float | None = None) -> EngineStats:
    """A window in which ``finished`` requests ended (the e2e histogram's count over the window)."""
    rates = {"requests_finished": rps, "prompt_tokens": prompt_tps, "generation_tokens": generation_tps}
    if prefill_tps is not None:
        rates["prefill_seconds"] = prefill_tps
    summaries = {"e2e_request_latency": latency(finished, 1.0 if finished else None)}
    if ttft is not None:
        summaries["time_to_first_token"] = latency(finished, ttft)
    if queue is not None:
        summaries["queue_time"] = latency(finished, queue)
    return EngineStats(latency=summaries, counter_rates=rates)


def analysis(mbu: float | None = None, expected_ttft: float | None = None) -> Analysis:
    assert LLAMA_8B is not None
    return Analysis(model=LLAMA_8B, kv_bytes_per_token=131_072, model_weight_bytes=LLAMA_8B.weight_bytes,
                    expected_kv_capacity_tokens=0.0, expected_ttft_seconds=expected_ttft,
                    mbu={"analytic": mbu} if mbu is not None else {})


# --- the planner's inputs --------------------------------------------------------------------------------


def test_the_workload_is_the_mean_request_in_two_significant_digits() -> None:
    # 3.14159 requests/s; 3,141.59 prompt tokens/s = 1,000 a request; 777.7 generated/s = 247.55 a request
    # 4 requests/s of 4,000 prompt and 800 generated tokens a second: the mean request is 1,000 + 200 tokens
    assert plan_inputs(stats(4.0, 4000.0, 800.0), analysis()).workload == plan.Workload(4.0, 1000.0, 200.0)
    inputs = plan_inputs(stats(3.14159, 3141.59, 777.7), analysis())
    assert inputs.workload == plan.Workload(3.1, 1000.0, 250.0)
    assert not inputs.idle
    # a load that moves by a few percent is the same plan input
    assert plan_inputs(stats(3.12, 3120.0, 780.0), analysis()).workload == inputs.workload
    # at least one token each way
    assert plan_inputs(stats(4.0, 0.4, 0.4), analysis()).workload == plan.Workload(4.0, 1.0, 1.0)


@pytest.mark.parametrize("rates", [(0.0, 0.0, 0.0), (2.0, 0.0, 100.0), (2.0, 100.0, 0.0)])
def test_an_idle_engine_is_planned_for_one_default_request(rates: tuple[float, float, float]) -> None:
    inputs = plan_inputs(stats(*rates), analysis())
    assert inputs.idle
    assert inputs.workload == plan.Workload(IDLE_REQUESTS_PER_SECOND, DEFAULT_CONTEXT_TOKENS, IDLE_OUTPUT_TOKENS)
    assert (IDLE_REQUESTS_PER_SECOND, DEFAULT_CONTEXT_TOKENS, IDLE_OUTPUT_TOKENS) == (1e-6, 1024.0, 256.0)


def test_decode_efficiency_is_the_analytic_mbu_in_two_digits() -> None:
    inputs = plan_inputs(stats(2.0, 2000.0, 400.0, finished=20), analysis(mbu=0.4567))
    assert inputs.calibration.decode == 0.46 and inputs.reasons["decode"] == ""
    assert inputs.basis == "calibrated"
    # above the roofline: capped at 1 (the model undercounts the work)
    assert plan_inputs(stats(2.0, 2000.0, 400.0, finished=20), analysis(mbu=1.3)).calibration.decode == 1.0


def test_prefill_efficiency_uses_the_engines_own_prefill_time_first() -> None:
    # 2 requests/s spent 0.1 s of prefill per second: 0.05 s each; the roofline prefill is 20 ms: 0.02 / 0.05
    window = stats(2.0, 2000.0, 400.0, finished=20, ttft=0.5, queue=0.1, prefill_tps=0.1)
    inputs = plan_inputs(window, analysis(expected_ttft=0.02))
    assert rightsizing.mean_prefill_seconds(window) == pytest.approx(0.05)
    assert inputs.calibration.prefill == 0.4 and inputs.reasons["prefill"] == ""


def test_prefill_efficiency_from_ttft_minus_queue_means_without_the_engines_prefill_time() -> None:
    # mean TTFT 80 ms less a mean queue of 30 ms: 50 ms in prefill; 0.02 / 0.05 = 0.4
    window = stats(2.0, 2000.0, 400.0, finished=20, ttft=0.08, queue=0.03)
    assert rightsizing.mean_prefill_seconds(window) == pytest.approx(0.05)
    assert plan_inputs(window, analysis(expected_ttft=0.02)).calibration.prefill == 0.4
    # no queue histogram: the whole TTFT, 0.02 / 0.08 = 0.25
    assert plan_inputs(stats(2.0, 2000.0, 400.0, finished=20, ttft=0.08),
                       analysis(expected_ttft=0.02)).calibration.prefill == 0.25


@pytest.mark.parametrize(("finished", "reason"), [
    (0, "no_requests"),
    (MIN_CALIBRATION_REQUESTS - 1, "too_few_requests"),
    (MIN_CALIBRATION_REQUESTS, ""),
])
def test_calibration_needs_enough_finished_requests(finished: int, reason: str) -> None:
    assert MIN_CALIBRATION_REQUESTS == 10
    window = stats(2.0, 2000.0, 400.0, finished=finished, ttft=0.08, queue=0.03)
    inputs = plan_inputs(window, analysis(mbu=0.5, expected_ttft=0.02))
    assert inputs.reasons == {"decode": reason, "prefill": reason}
    calibrated = reason == ""
    assert (inputs.calibration.decode, inputs.calibration.prefill) == ((0.5, 0.4) if calibrated else (None, None))
    assert inputs.basis == ("calibrated" if calibrated else "roofline")


@pytest.mark.parametrize(("ttft", "queue"), [(0.05, 0.08), (0.05, 0.05)])
def test_a_prefill_time_that_is_not_positive_stays_on_the_roofline(ttft: float, queue: float) -> None:
    # the mean queue time at or above the mean TTFT: a spent time of -30 ms or 0 calibrates nothing
    window = stats(2.0, 2000.0, 400.0, finished=20, ttft=ttft, queue=queue)
    inputs = plan_inputs(window, analysis(mbu=0.5, expected_ttft=0.02))
    assert inputs.reasons == {"decode": "", "prefill": "not_positive"}
    assert inputs.calibration.prefill is None and inputs.calibration.decode == 0.5
    # a decode efficiency of 0 is not one either
    assert plan_inputs(window, analysis(mbu=0.0)).reasons["decode"] == "not_positive"


def test_every_reason_is_one_the_catalogue_documents() -> None:
    help_text = BY_NAME["infermeter_rightsizing_calibration_info"].help
    reasons = [r for r in rightsizing.CALIBRATION_REASONS if r]
    assert reasons and all(reason in help_text for reason in reasons), (reasons, help_text)


def test_a_busy_engine_without_an_mbu_is_not_said_to_have_no_requests() -> None:
    """40 requests finished, but the engine reports no inter-token latency or KV usage (no analytic MBU) and no
    TTFT: the phases stay on the roofline, and the reason must not claim that nothing finished (exporter bug:
    plan_inputs files every missing measurement under no_requests; the reason: not_observed)."""
    inputs = plan_inputs(stats(2.0, 2000.0, 400.0, finished=40), analysis())
    assert inputs.calibration == plan.Calibration(None, None, "observed")
    assert inputs.reasons == {"decode": "not_observed", "prefill": "not_observed"}


# --- the recommendation: the engine's own GPU model at every tensor-parallel size ----------------------------


def planner(whatif_gpus: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> Planner:
    config = load([*(a for name in whatif_gpus for a in ("--whatif-gpu", name)), *extra], {})
    return Planner(FactsResolver(config), config)


def test_an_8b_model_on_a_tp8_engine_is_told_one_gpu() -> None:
    # 0.4 requests/s of 1,000 + 200 tokens: one H100 holds the 16 GB of weights and serves it (1 replica)
    window = stats(0.4, 400.0, 80.0)
    inputs, own, _ = planner().advise(window, analysis(), {}, spec(H100), 2.5, 8, 20.0)
    assert inputs.workload == plan.Workload(0.4, 1000.0, 200.0)
    recommended = own.recommended
    assert recommended is not None
    assert (recommended.tensor_parallel, recommended.replicas, recommended.gpus) == (1, 1, 1)
    assert recommended.dollars_per_hour == 2.5
    # its B* is the current shape's (TP8), not the recommended one's
    assert own.current is not None and own.current.tensor_parallel == 8
    assert own.batch_limit == own.current.batch
    # the same call as plan.evaluate at every size, ranked
    expected = plan.rank([plan.evaluate(LLAMA_8B, spec(H100), tp, inputs.workload, plan.Slo(), price_per_gpu_hour=2.5)
                          for tp in plan.TENSOR_PARALLEL_SIZES])
    assert list(own.ranked) == expected


def test_a_tpot_target_no_batch_meets_gives_no_recommendation_and_b_star_zero() -> None:
    # 0.4 ms per output token is below Llama-3.1-8B's decode floor on every H100 shape: even at TP8 each GPU
    # reads its 2.0 GB of weights a step, 2,007,565,312 / 3.35e12 B/s = 0.60 ms
    assert LLAMA_8B is not None and LLAMA_8B.weight_bytes / 8 / 3.35e12 > 0.0004
    config = load(["--slo-tpot-seconds", "0.0004"], {})
    _, own, _ = Planner(FactsResolver(config), config).advise(stats(1.0, 1000.0, 200.0), analysis(), {},
                                                             spec(H100), 3.0, 1, 3.0)
    assert own.recommended is None and own.batch_limit == 0
    assert {c.ruled_out for c in own.ranked} == {"tpot_unreachable"}


def test_an_engine_shape_outside_the_planned_sizes_is_evaluated_for_its_b_star() -> None:
    # an engine on 3 GPUs at tensor parallel 3: 32 heads do not split in 3, so no batch is known
    _, own, _ = planner().advise(stats(1.0, 1000.0, 200.0), analysis(), {}, spec(H100), 3.0, 3, 9.0)
    assert own.current is not None and own.current.ruled_out == "tensor_parallel"
    assert own.batch_limit is None
    assert own.recommended is not None and own.recommended.tensor_parallel in plan.TENSOR_PARALLEL_SIZES


# --- savings: what the engine costs now minus the option ----------------------------------------------------


def test_savings_are_the_current_cost_minus_the_option_never_below_zero() -> None:
    assert savings(20.0, 2.5) == 17.5
    assert savings(3.0, 15.0) == 0.0
    assert savings(None, 2.5) is None and savings(20.0, None) is None


def test_a_3_dollar_engine_never_shows_12_dollars_of_savings() -> None:
    """The issue's complaint: an overloaded engine on one H100 ($3/h) was told it could save $12/h, because the
    old savings compared what its GPU model would need (5 H100s, $15/h) with the cheapest option."""
    load_ = plan.Workload(130.0, 1000.0, 200.0)
    h100 = whatif.shapes(LLAMA_8B, spec(H100), 3.0, load_, plan.Slo(), plan.ROOFLINE)
    a100 = whatif.shapes(LLAMA_8B, spec(A100), 0.25, load_, plan.Slo(), plan.ROOFLINE)
    # H100 TP1 serves 38.10 requests/s at full load: ceil(130 / (0.8 x 38.10)) = ceil(4.27) = 5 GPUs, $15/h
    h100_best = plan.rank(h100)[0]
    assert h100_best.requests_per_second_per_replica == pytest.approx(38.10, abs=0.01)
    assert h100_best.gpus == math.ceil(130 / (0.8 * h100_best.requests_per_second_per_replica)) == 5
    # A100 TP1 serves 14.99: ceil(130 / (0.8 x 14.99)) = ceil(10.84) = 11 GPUs at $0.25 = $2.75/h
    a100_best = plan.rank(a100)[0]
    assert a100_best.gpus == math.ceil(130 / (0.8 * (a100_best.requests_per_second_per_replica or 0))) == 11
    advice = whatif.what_if({H100: h100, A100: a100}, 3.0, "roofline")
    assert advice.best is not None and advice.best.gpu_model == A100
    assert advice.best.dollars_per_hour == pytest.approx(2.75)
    # the old definition: $15 - $2.75 = $12.25 an hour, four times what the engine costs
    assert (h100_best.dollars_per_hour or 0) - 2.75 == pytest.approx(12.25)
    # the new one: $3 - $2.75 = $0.25
    assert advice.savings_per_hour == pytest.approx(0.25)
    # and right-sizing on the H100 itself: it needs $15/h, more than it costs: nothing to save
    assert savings(3.0, h100_best.dollars_per_hour) == 0.0


def test_the_whatif_row_for_the_own_gpu_model_is_the_recommendation() -> None:
    window = stats(30.0, 30_000.0, 6000.0, finished=300, ttft=0.05, queue=0.01)
    inputs, own, advice = planner((A100,)).advise(window, analysis(mbu=0.5, expected_ttft=0.02), {}, spec(H100), 2.5,
                                                  1, 2.5)
    assert inputs.basis == "calibrated" and advice is not None and advice.basis == "calibrated"
    recommended = own.recommended
    assert recommended is not None
    (row,) = [o for o in advice.options if o.gpu_model == H100]
    assert (row.gpus, row.tensor_parallel, row.dollars_per_hour) == (
        recommended.gpus, recommended.tensor_parallel, recommended.dollars_per_hour)
    # the what-if savings: what the engine costs now ($2.50) minus the cheapest option, here at least 0
    assert advice.best is not None and advice.best.dollars_per_hour is not None
    assert advice.savings_per_hour == max(2.5 - advice.best.dollars_per_hour, 0.0)


def test_the_planner_rounds_the_load_and_caches_each_gpu_models_shapes() -> None:
    advisor = planner((A100,))
    first = advisor.advise(stats(3.01, 3010.0, 602.0), analysis(), {}, spec(H100), 3.0, 1, 3.0)
    again = advisor.advise(stats(3.02, 3020.0, 604.0), analysis(), {}, spec(H100), 3.0, 1, 3.0)
    # 3.01 and 3.02 requests/s both round to 3.0: the same evaluated candidates, not a new plan
    assert first[0] == again[0]
    assert all(a is b for a, b in zip(first[1].ranked, again[1].ranked, strict=True))
    other = advisor.advise(stats(300.0, 300_000.0, 60_000.0), analysis(), {}, spec(H100), 3.0, 1, 3.0)
    assert (other[1].recommended.gpus or 0) > (first[1].recommended.gpus or 0)  # type: ignore[union-attr]
    # --whatif-gpu limits the candidates; the engine's own GPU model always takes part at its own price
    assert first[2] is not None and {o.gpu_model for o in first[2].options} == {A100, H100}
    # nothing finished: one default request at a negligible rate, the smallest shape that holds the model
    idle_inputs, idle_own, idle_advice = advisor.advise(stats(), analysis(), {}, spec(H100), 3.0, 1, 3.0)
    assert idle_inputs.idle and idle_advice is not None and idle_own.recommended is not None
    assert (idle_own.recommended.gpus, idle_own.recommended.tensor_parallel) == (1, 1)
    # --no-whatif: the recommendation without the what-if
    _, own, advice = planner(extra=("--no-whatif",)).advise(stats(3.0, 3000.0, 600.0), analysis(), {}, spec(H100),
                                                            3.0, 1, 3.0)
    assert advice is None and own.recommended is not None


# --- in the collection: fake engines over HTTP, fake NVML ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine() -> Iterator[tuple[FakeEngine, str]]:
    fake = FakeEngine(FIXTURE)
    fake.zero()
    with FakeEngineServer(fake) as server:
        yield fake, server.url


def serve(fake: FakeEngine, requests: int = 2) -> None:
    """``requests`` requests of 1,000 prompt and 200 generated tokens each, 4 running, decoded at 10 ms a token,
    with 40 ms of prefill and a 50 ms TTFT each."""
    fake.set("vllm:num_requests_running", 4)
    fake.set("vllm:kv_cache_usage_perc", 0.01)
    fake.observe("vllm:inter_token_latency_seconds", 0.01, times=200 * requests)
    fake.observe("vllm:time_to_first_token_seconds", 0.05, times=requests)
    fake.observe("vllm:e2e_request_latency_seconds", 2.0, times=requests)
    fake.observe("vllm:request_prefill_time_seconds", 0.04, times=requests)
    fake.inc("vllm:prompt_tokens_total", 1000 * requests)
    fake.inc("vllm:generation_tokens_total", 200 * requests)
    fake.inc("vllm:request_success_total", requests, {"finished_reason": "stop"})


def eight_gpu_collection(url: str, clock: Clock) -> Collection:
    nvml = load_fake_pynvml()
    nvml.configure(h100_node(8))
    config = Config(engines=(EngineTarget("e", url),), interval=5.0, window=60.0, timeout=2.0, gpu_hourly_cost=2.5,
                    model_configs={"e": str(LLAMA_8B_FILE)}, whatif_gpus=(A100,),
                    gpu_specs={A100: {"prices": {"on-demand": 1.0}}})
    return Collection(config, NvmlSource(nvml), [EngineSource(config.engines[0], 2.0, 1 << 24, clock=clock)],
                      clock=clock)


def scrape(view: EngineView) -> Samples:
    snapshot = Snapshot(timestamp=0.0, window_seconds=60, engines=(view,))
    return [(s.name, s.labels, s.value) for f in SnapshotCollector(lambda: snapshot).collect() for s in f.samples]


def test_an_8b_engine_on_8_gpus_with_light_load_is_told_one_gpu(
        engine: tuple[FakeEngine, str], caplog: pytest.LogCaptureFixture) -> None:
    fake, url = engine
    clock = Clock()
    collection = eight_gpu_collection(url, clock)
    views = []
    with caplog.at_level(logging.INFO, logger="exporter.collection"):
        for _ in range(7):
            serve(fake)
            views.append(collection.run_once().engines[0])
            clock.now += 5
    first, last = views[0], views[-1]
    # one data-parallel rank on 8 GPUs: one TP8 replica; $2.50 x 8 = $20/h
    assert len(last.gpus) == 8 and last.costs is not None and last.costs.per_hour == 20.0
    for view in views:
        sizing = view.rightsizing
        assert sizing is not None
        # reshaped: one GPU at tensor parallel 1 serves it, from the first cycle (an idle default request) on
        assert (sizing.gpus_needed, sizing.tensor_parallel) == (1, 1)
        assert sizing.savings_per_hour == 17.5  # $20 - 1 x $2.50
        # the what-if: the engine's own GPU model planned by the same call; savings $20 - the cheapest option
        assert view.whatif is not None and view.whatif.best is not None
        (row,) = [o for o in view.whatif.options if o.gpu_model == H100]
        assert (row.gpus, row.tensor_parallel) == (sizing.gpus_needed, sizing.tensor_parallel)
        assert view.whatif.savings_per_hour == pytest.approx(20.0 - (view.whatif.best.dollars_per_hour or 0))
    assert first.rightsizing is not None and first.rightsizing.inputs.idle
    # the state: the planner needs 1 of the 8 GPUs, nothing waits: overprovisioned, once held 3 cycles and 15 s
    # (cycles every 5 s: t = 0, 5, 10, 15 -> the fourth)
    assert [v.rightsizing.state for v in views if v.rightsizing] == [None] * 3 + ["overprovisioned"] * 4
    samples = scrape(last)
    labels = {"engine": "e", "kind": "vllm", "model": "tinyllama"}
    assert value(samples, "infermeter_rightsizing_gpus_needed", **labels) == 1
    assert value(samples, "infermeter_rightsizing_plan_info", tensor_parallel="1", **labels) == 1
    assert value(samples, "infermeter_rightsizing_savings_dollars_per_hour", **labels) == 17.5
    # at that size: $2.50 / (0.4 x 1,200 = 480 tokens/s x 3,600) x 1e6 = $1.45 a million tokens
    assert value(samples, "infermeter_achievable_cost_per_million_tokens_dollars", **labels) == pytest.approx(
        2.5 / (480 * 3600) * 1e6)
    assert value(samples, "infermeter_whatif_gpus_needed", gpu_model=H100, **labels) == 1
    assert value(samples, "infermeter_rightsizing_state", state="overprovisioned", **labels) == 1
    assert value(samples, "infermeter_rightsizing_state_changes_total", **labels) == 0
    # evidence: 4 running of B* at TP8 (1,024, the batch cap) on every loaded sample
    assert value(samples, "infermeter_rightsizing_batch_ratio", **labels) == pytest.approx(4 / 1024)
    assert value(samples, "infermeter_rightsizing_loaded_ratio", **labels) == 1.0
    assert value(samples, "infermeter_rightsizing_queueing_ratio", **labels) == 0.0
    # the fake node's GPUs are 87 % .. 80 % busy: 83.5 % on average
    assert value(samples, "infermeter_rightsizing_gpu_busy_ratio", **labels) == pytest.approx(0.835)
    assert value(samples, "infermeter_rightsizing_evidence_window_seconds", **labels) == 30.0
    # the planner's inputs: 2 requests every 5 s = 0.4/s of 1,000 + 200 tokens
    assert value(samples, "infermeter_rightsizing_planned_requests_per_second", **labels) == 0.4
    assert value(samples, "infermeter_rightsizing_planned_prompt_tokens", **labels) == 1000
    assert value(samples, "infermeter_rightsizing_planned_output_tokens", **labels) == 200

    # calibration: no request at first, then too few (2 a cycle, counted from the second sample on: 2, 4, 6, 8),
    # then 10 -> calibrated; each (engine, phase, reason) is logged once
    reasons = [dict(v.rightsizing.inputs.reasons) for v in views if v.rightsizing]
    assert [r["decode"] for r in reasons] == ["no_requests"] + ["too_few_requests"] * 4 + ["", ""]
    lines = [r.getMessage() for r in caplog.records if "efficiency not calibrated" in r.getMessage()]
    assert sorted(lines) == sorted(f"engine e: {phase} efficiency not calibrated ({reason}): planning that phase on "
                                   "the roofline" for phase in ("decode", "prefill")
                                   for reason in ("no_requests", "too_few_requests"))
    calibration = {labels_["phase"]: (labels_["basis"], labels_["reason"]) for name, labels_, _ in samples
                   if name == "infermeter_rightsizing_calibration_info"}
    assert calibration == {"decode": ("calibrated", ""), "prefill": ("calibrated", "")}
    efficiency = last.rightsizing.inputs.calibration  # type: ignore[union-attr]
    assert value(samples, "infermeter_rightsizing_efficiency_ratio", phase="decode", **labels) == efficiency.decode
    # prefill: the roofline prefill of 1,000 tokens on the TP8 shape over the engine's own 40 ms
    assert last.analysis is not None and last.analysis.expected_ttft_seconds is not None
    assert efficiency.prefill == rightsizing.sig2(last.analysis.expected_ttft_seconds / 0.04)
    assert value(samples, "infermeter_rightsizing_efficiency_ratio", phase="prefill", **labels) == efficiency.prefill
    assert value(samples, "infermeter_rightsizing_plan_info", tensor_parallel="1", basis="calibrated", **labels) == 1


def test_two_data_parallel_ranks_are_two_replicas_of_one_gpu(tmp_path: Path) -> None:
    """vLLM --data-parallel-size 2 on 2 H100s at $3: two TP1 replicas. One serves the light load: $6 - $3 = $3 an
    hour to save; the batch is judged per replica against the TP1 shape's B*."""
    fake = FakeEngine(FIXTURE.parent / "vllm-v1-dp2.txt")
    fake.zero()
    nvml = load_fake_pynvml()
    nvml.configure(h100_node(2))
    with FakeEngineServer(fake) as server:
        clock = Clock()
        config = Config(engines=(EngineTarget("e", server.url),), interval=5.0, window=60.0, timeout=2.0,
                        gpu_hourly_cost=3.0, model_configs={"e": str(LLAMA_8B_FILE)}, whatif=False)
        collection = Collection(config, NvmlSource(nvml), [EngineSource(config.engines[0], 2.0, 1 << 24,
                                                                         clock=clock)], clock=clock)
        for _ in range(4):
            for rank in ("0", "1"):  # 8 running on each rank
                fake.set("vllm:num_requests_running", 8, {"engine": rank})
            fake.inc("vllm:prompt_tokens_total", 2000, {"engine": "0"})
            fake.inc("vllm:generation_tokens_total", 400, {"engine": "0"})
            fake.inc("vllm:request_success_total", 2, {"engine": "0", "finished_reason": "stop"})
            view = collection.run_once().engines[0]
            clock.now += 5
    sizing = view.rightsizing
    assert sizing is not None and view.costs is not None and view.costs.per_hour == 6.0
    assert (sizing.gpus_needed, sizing.tensor_parallel, sizing.savings_per_hour) == (1, 1, 3.0)
    # 0.4 requests/s of 1,000 + 200 tokens = 480 tokens/s; on 1 GPU at $3/h: 3 / (480 x 3600) x 1e6 = $1.74 a
    # million tokens
    assert sizing.achievable_cost_per_million_tokens == pytest.approx(3.0 / (480 * 3600) * 1e6)
    assert sizing.achievable_cost_per_million_tokens == pytest.approx(1.736, abs=1e-3)
    b_star = plan.evaluate(LLAMA_8B, spec(H100), 1, sizing.inputs.workload, plan.Slo(), price_per_gpu_hour=3.0,
                           calibration=sizing.inputs.calibration).batch
    assert b_star is not None and sizing.evidence is not None
    assert sizing.evidence.batch_ratio == pytest.approx(8 / b_star)  # 16 running over 2 replicas


def test_calibration_reasons_are_logged_once_each_and_exported_while_on_the_roofline(
        engine: tuple[FakeEngine, str], caplog: pytest.LogCaptureFixture) -> None:
    fake, url = engine
    clock = Clock()
    collection = eight_gpu_collection(url, clock)
    with caplog.at_level(logging.INFO, logger="exporter.collection"):
        for _ in range(4):  # 2 requests a cycle: too few all along
            serve(fake)
            view = collection.run_once().engines[0]
            clock.now += 5
        samples = scrape(view)
        calibration = {labels["phase"]: (labels["basis"], labels["reason"]) for name, labels, _ in samples
                       if name == "infermeter_rightsizing_calibration_info"}
        assert calibration == {"decode": ("roofline", "too_few_requests"), "prefill": ("roofline", "too_few_requests")}
        assert not [n for n, _, _ in samples if n == "infermeter_rightsizing_efficiency_ratio"]
        assert value(samples, "infermeter_rightsizing_plan_info", basis="roofline", engine="e") == 1
        # the load stops: once the window holds no finished request, the reason is no_requests again, and it is
        # not logged twice (it was logged at the first cycle)
        for _ in range(14):
            fake.set("vllm:num_requests_running", 0)
            view = collection.run_once().engines[0]
            clock.now += 5
    assert view.rightsizing is not None and view.rightsizing.inputs.reasons["decode"] == "no_requests"
    assert view.rightsizing.inputs.idle
    messages = [r.getMessage() for r in caplog.records if "efficiency not calibrated" in r.getMessage()]
    assert len(messages) == len(set(messages)) == 4  # 2 phases x (no_requests, too_few_requests)


def test_a_vllm_engine_put_to_sleep_turns_sleeping_at_once(engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    clock = Clock()
    collection = eight_gpu_collection(url, clock)
    states = []
    for cycle in range(9):
        if cycle == 4:  # POST /sleep?level=1: the weights go to CPU memory
            fake.set("vllm:engine_sleep_state", 0, {"sleep_state": "awake"})
            fake.set("vllm:engine_sleep_state", 1, {"sleep_state": "weights_offloaded"})
        if cycle < 4:
            serve(fake)
        else:
            fake.set("vllm:num_requests_running", 0)
        view = collection.run_once().engines[0]
        assert view.rightsizing is not None
        states.append(view.rightsizing.state)
        clock.now += 5
    # overprovisioned from t = 15 s (the fourth cycle, the hold met); asleep from t = 20 s, which the engine
    # declares: taken at that very sample, without the hold
    assert states == [None] * 3 + ["overprovisioned"] + ["sleeping"] * 5
    assert view.rightsizing is not None and view.rightsizing.state_changes == 1


@contextlib.contextmanager
def serving(snapshot: Snapshot) -> Iterator[str]:
    """``snapshot`` frozen behind /metrics as the exporter serves it (the collector's exposition), on 127.0.0.1."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snapshot))
    body = generate_latest(registry)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.split("?")[0] == "/metrics"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def in_process(main: Callable[[list[str]], int], *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == 0
    return out.getvalue()


def test_plan_from_replays_the_exporters_planner_call(engine: tuple[FakeEngine, str]) -> None:
    """``plan --from`` reads the planner's inputs back from the exported series: its row for the engine's GPU
    model is infermeter_rightsizing_gpus_needed, at a calibrated load that needs several GPUs."""
    fake, url = engine
    clock = Clock()
    collection = eight_gpu_collection(url, clock)
    for _ in range(7):
        serve(fake, requests=400)  # 80 requests/s
        snapshot = collection.run_once()
        clock.now += 5
    (view,) = snapshot.engines
    sizing = view.rightsizing
    assert sizing is not None and sizing.gpus_needed is not None and sizing.gpus_needed > 1
    assert sizing.inputs.workload == plan.Workload(80.0, 1000.0, 200.0) and sizing.inputs.basis == "calibrated"
    with serving(snapshot) as exporter_url:
        data = json.loads(in_process(plan_command.main, "--from", exporter_url, "--gpu", H100, "--format", "json"))
        text = in_process(report.main, "--url", exporter_url)
    inputs = data["inputs"]
    workload = sizing.inputs.workload
    assert (inputs["requests_per_second"], inputs["prompt_tokens"], inputs["output_tokens"]) == (
        workload.requests_per_second, workload.prompt_tokens, workload.output_tokens)
    assert (data["calibration"]["decode_efficiency"], data["calibration"]["prefill_efficiency"]) == (
        sizing.inputs.calibration.decode, sizing.inputs.calibration.prefill)
    best = data["candidates"][0]
    assert (best["gpus"], best["tensor_parallel"]) == (sizing.gpus_needed, sizing.tensor_parallel)
    (line,) = [line for line in text.splitlines() if line.startswith("  recommendation")]
    assert line.startswith(f"  recommendation   {sizing.gpus_needed} GPU(s) at tensor parallel "
                           f"{sizing.tensor_parallel} would serve this load within the SLOs (it has 8)"), line
    assert sizing.savings_per_hour == max(20.0 - 2.5 * sizing.gpus_needed, 0.0)


def test_plan_from_replays_an_fp8_kv_cache(engine: tuple[FakeEngine, str], tmp_path: Path) -> None:
    """An engine with --kv-cache-dtype fp8: the exporter plans with 1-byte KV entries, and ``plan --from`` must
    too (exporter bug: nothing exported says the KV cache dtype, so plan --from plans with "auto", 2 bytes, and
    needs 12 H100s where the exporter says 8). Llama-3.1-70B on 8 H100s, 5 requests/s of 4,000 + 500 tokens."""
    for fixture in FIXTURE.parent.glob("vllm-0.32.0-real-a.*"):
        shutil.copy(fixture, tmp_path / fixture.name.replace("real-a", "fp8"))
    fp8 = tmp_path / "vllm-0.32.0-fp8.txt"
    fp8.write_text(fp8.read_text().replace('cache_dtype="auto"', 'cache_dtype="fp8"'))
    fake = FakeEngine(fp8)
    fake.zero()
    nvml = load_fake_pynvml()
    nvml.configure(h100_node(8))
    with FakeEngineServer(fake) as server:
        clock = Clock()
        config = Config(engines=(EngineTarget("e", server.url),), interval=5.0, window=60.0, timeout=2.0,
                        gpu_hourly_cost=3.0, model_configs={"e": str(LLAMA_70B_FILE)}, whatif=False)
        collection = Collection(config, NvmlSource(nvml), [EngineSource(config.engines[0], 2.0, 1 << 24,
                                                                         clock=clock)], clock=clock)
        for _ in range(4):
            n = 25  # a cycle of 5 s
            fake.set("vllm:num_requests_running", 4)
            fake.set("vllm:kv_cache_usage_perc", 0.01)
            fake.observe("vllm:inter_token_latency_seconds", 0.01, times=500 * n)
            fake.observe("vllm:time_to_first_token_seconds", 0.2, times=n)
            fake.observe("vllm:e2e_request_latency_seconds", 6.0, times=n)
            fake.observe("vllm:request_prefill_time_seconds", 0.1, times=n)
            fake.inc("vllm:prompt_tokens_total", 4000 * n)
            fake.inc("vllm:generation_tokens_total", 500 * n)
            fake.inc("vllm:request_success_total", n, {"finished_reason": "stop"})
            snapshot = collection.run_once()
            clock.now += 5
    sizing = snapshot.engines[0].rightsizing
    assert sizing is not None and sizing.inputs.workload == plan.Workload(5.0, 4000.0, 500.0)
    model = model_facts.load(str(LLAMA_70B_FILE))
    calibration = sizing.inputs.calibration
    by_dtype = {kv: plan.rank([plan.evaluate(model, spec(H100), tp, sizing.inputs.workload, plan.Slo(),
                                             price_per_gpu_hour=3.0, calibration=calibration, kv_cache_dtype=kv)
                               for tp in plan.TENSOR_PARALLEL_SIZES])[0].gpus for kv in ("auto", "fp8")}
    assert by_dtype["fp8"] == sizing.gpus_needed != by_dtype["auto"]  # the KV dtype matters at this load
    with serving(snapshot) as exporter_url:
        data = json.loads(in_process(plan_command.main, "--from", exporter_url, "--gpu", H100, "--format", "json"))
    assert data["inputs"]["kv_cache_dtype"] == "fp8"
    assert data["candidates"][0]["gpus"] == sizing.gpus_needed


# --- the real process: plan --from and report say what the metrics say ---------------------------------------


def command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


def test_plan_from_and_report_agree_with_a_running_exporter(tmp_path: Path, engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    exporter = ExporterProcess(["--interval", "1", "--window", "10", "--engine", f"llama={url}",
                                "--model-config", f"llama={LLAMA_8B_FILE}", "--gpu-hourly-cost", "2.5",
                                "--whatif-gpu", A100], tmp_path, nvml_spec=h100_node(8))
    labels = {"engine": "llama"}

    def planned(light: bool) -> Samples | None:
        """The exporter's series once it planned for the burst (``light``) or, after it, for one default request."""
        samples = exporter.samples()
        rate = value(samples, "infermeter_rightsizing_planned_requests_per_second", **labels)
        return samples if rate is not None and (rate > 1e-6) == light else None

    def h100_row() -> tuple[int, int, float]:
        """plan --from's cheapest H100 shape (GPUs, tensor parallel) and the request rate it planned for."""
        result = command("plan", "--from", exporter.url, "--gpu", H100, "--format", "json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        best = next(c for c in data["candidates"] if c["gpu"] == H100 and c["feasible"])
        return best["gpus"], best["tensor_parallel"], data["inputs"]["requests_per_second"]

    try:
        exporter.wait_ready()
        wait_for(lambda: value(exporter.samples(), "infermeter_engine_up", **labels) == 1)  # read before the load
        # light load: 6 requests of 1,000 + 200 tokens (too few to calibrate: the roofline), seen over at most the
        # 10 s window, so 0.6 to 12 requests/s; one H100 at TP1 serves up to 30 a second on the roofline
        serve(fake, requests=6)
        samples = wait_for(lambda: planned(light=True), timeout=10)
        (shape,) = [lab["tensor_parallel"] for n, lab, _ in samples if n == "infermeter_rightsizing_plan_info"]
        assert shape == "1"
        assert value(samples, "infermeter_rightsizing_gpus_needed", **labels) == 1
        assert value(samples, "infermeter_rightsizing_savings_dollars_per_hour", **labels) == 17.5  # $20 - $2.50
        gpus, tp, rate = h100_row()
        assert (gpus, tp) == (1, 1) and rate > 1e-6
        # report prints the same recommendation as the metrics: 1 GPU at TP1 of the 8, $20 - $2.50 = $17.50 to save
        text = command("report", "--url", exporter.url)
        assert text.returncode == 0, text.stderr
        (line,) = [line for line in text.stdout.splitlines() if line.startswith("  recommendation")]
        assert line.startswith("  recommendation   1 GPU(s) at tensor parallel 1 would serve this load within the "
                               "SLOs (it has 8): save $17.50/h"), line
        assert "[decode too_few_requests, prefill too_few_requests]" in line
        # the table's first row prints the same shape and count: "1  H100 80GB HBM3   1   1   1 ..." (# GPU TP
        # replicas GPUs)
        table = command("plan", "--from", exporter.url, "--gpu", H100)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#  GPU"))
        cells = lines[header + 2].split()
        assert cells[:4] == ["1", "H100", "80GB", "HBM3"] and (cells[4], cells[6]) == ("1", "1"), lines[header + 2]
        # once the burst leaves the window the inputs stand still (one default request): plan --from reads exactly
        # what the exporter planned for, and gives its GPU count and shape
        wait_for(lambda: planned(light=False), timeout=20)
        gpus, tp, rate = h100_row()
        samples = wait_for(lambda: planned(light=False))
        assert rate == value(samples, "infermeter_rightsizing_planned_requests_per_second", **labels) == 1e-6
        assert (gpus, str(tp)) == (value(samples, "infermeter_rightsizing_gpus_needed", **labels), shape)
    finally:
        exporter.stop()


def test_report_keeps_the_recommended_shape_apart_from_the_whatif_best_gpu() -> None:
    """rightsizing_plan_info and whatif_best_gpu_info both carry tensor_parallel: the recommendation is the
    former's (exporter bug: report.group merges every _info label into one dict, so the what-if's shape, here
    TP2 on an A100, overwrote the recommended TP1)."""
    engine_labels = {"engine": "e", "kind": "vllm", "model": "m"}
    samples: Samples = [
        ("infermeter_engine_up", engine_labels, 1.0),
        ("infermeter_rightsizing_gpus_needed", engine_labels, 1.0),
        ("infermeter_rightsizing_plan_info", {**engine_labels, "tensor_parallel": "1", "basis": "calibrated"}, 1.0),
        ("infermeter_whatif_best_gpu_info", {**engine_labels, "gpu_model": A100, "tensor_parallel": "2",
                                             "basis": "calibrated"}, 1.0),
    ]
    for ordered in (samples, [samples[0], samples[1], samples[3], samples[2]]):
        (only,) = report.group(ordered)
        assert report.recommendation(only).startswith("1 GPU(s) at tensor parallel 1 would serve"), ordered
