"""Live what-if: an engine's observed load planned on other GPU models (infermeter_whatif_*)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.collection import EngineView, Snapshot
from exporter.collector import SnapshotCollector
from exporter.config import ConfigError
from exporter.config import load_config as load
from exporter.derive import plan, whatif
from exporter.derive.engine import EngineStats
from exporter.facts import gpus as gpu_facts
from exporter.facts import models as model_facts
from exporter.simulate import SimulatorServer, exposition_for, simulation
from tests.fakes.nvml_specs import h100_node
from tests.process import ExporterProcess, value, wait_for

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
L4 = "NVIDIA L4"
T4 = "Tesla T4"
LLAMA_8B = model_facts.builtin("meta-llama/Llama-3.1-8B")
LLAMA_70B = model_facts.builtin("meta-llama/Llama-3.1-70B")


def spec(name: str) -> gpu_facts.GpuSpec:
    found = gpu_facts.find(name)
    assert found is not None
    return found


def stats(rps: float, prompt_tps: float, generation_tps: float) -> EngineStats:
    return EngineStats(counter_rates={"requests_finished": rps, "prompt_tokens": prompt_tps,
                                      "generation_tokens": generation_tps})


# --- the workload the window implies -------------------------------------------------------------

def test_the_workload_is_the_mean_request_over_the_window() -> None:
    load_ = whatif.workload(stats(4.0, 4000.0, 800.0))
    assert load_ == plan.Workload(4.0, 1000.0, 200.0)


@pytest.mark.parametrize("rates", [(0.0, 0.0, 0.0), (2.0, 0.0, 100.0), (2.0, 100.0, 0.0)])
def test_no_finished_requests_or_no_tokens_means_nothing_to_plan(rates: tuple[float, float, float]) -> None:
    assert whatif.workload(stats(*rates)) is None


# --- the advice ----------------------------------------------------------------------------------

def candidates(prices: dict[str, float | None]) -> dict[str, tuple[gpu_facts.GpuSpec, float | None]]:
    return {name: (spec(name), price) for name, price in prices.items()}


def test_each_gpu_model_gets_its_cheapest_shape_and_the_best_is_the_cheapest_of_them() -> None:
    load_ = plan.Workload(3.0, 1000.0, 200.0)
    prices = {H100: 3.0, A100: 1.6, L4: 0.7}
    advice = whatif.what_if(LLAMA_8B, candidates(prices), load_, plan.Slo(), plan.ROOFLINE, H100)
    by_gpu = {o.gpu_model: o for o in advice.options}
    assert set(by_gpu) == set(prices)
    for name, option in by_gpu.items():
        # independently: every tensor-parallel size of that GPU, the feasible one with the lowest $/h
        feasible = [c for tp in plan.TENSOR_PARALLEL_SIZES
                    if (c := plan.evaluate(LLAMA_8B, spec(name), tp, load_, plan.Slo(),
                                           price_per_gpu_hour=prices[name])).feasible]
        cheapest = min(c.dollars_per_hour or math.inf for c in feasible)
        assert option.dollars_per_hour == pytest.approx(cheapest)
        assert option.dollars_per_hour == pytest.approx(option.gpus * prices[name])
    best = min(advice.options, key=lambda o: o.dollars_per_hour or math.inf)
    assert advice.best == best
    # savings compare the engine's own GPU model, planned the same way, with the best
    assert advice.savings_per_hour == pytest.approx(by_gpu[H100].dollars_per_hour - best.dollars_per_hour)
    assert advice.basis == "roofline"


def test_a_gpu_model_that_cannot_hold_the_model_has_no_option() -> None:
    # Llama-3.1-70B bf16 weighs about 141 GB; eight T4s hold 8 x (16 GB x 0.9 - 2 GiB), about 98 GB
    usable = 8 * (spec(T4).memory_bytes * 0.9 - 2 * 2**30)
    assert LLAMA_70B.weight_bytes > usable
    advice = whatif.what_if(LLAMA_70B, candidates({H100: 3.0, T4: 0.4}), plan.Workload(1.0, 500.0, 100.0),
                            plan.Slo(), plan.ROOFLINE, H100)
    assert [o.gpu_model for o in advice.options] == [H100]
    assert advice.options[0].tensor_parallel >= 2  # 141 GB does not fit on one 80 GB GPU
    assert advice.best == advice.options[0] and advice.savings_per_hour == 0.0


def test_without_a_price_for_the_current_gpu_model_there_are_no_savings() -> None:
    advice = whatif.what_if(LLAMA_8B, candidates({H100: None, A100: 1.6}), plan.Workload(1.0, 500.0, 100.0),
                            plan.Slo(), plan.ROOFLINE, H100)
    assert advice.best is not None and advice.best.gpu_model == A100
    assert advice.savings_per_hour is None
    assert {o.gpu_model for o in advice.options} == {H100, A100}  # GPUs needed even without a price


def test_a_lower_observed_efficiency_needs_more_gpus() -> None:
    load_ = plan.Workload(20.0, 1000.0, 300.0)
    slo = plan.Slo(2.0, 0.05)
    roofline = whatif.what_if(LLAMA_8B, candidates({H100: 3.0}), load_, slo, plan.ROOFLINE, H100)
    slower = whatif.what_if(LLAMA_8B, candidates({H100: 3.0}), load_, slo, plan.Calibration(0.4, 0.5), H100)
    assert slower.basis == "calibrated"
    assert slower.options[0].gpus > roofline.options[0].gpus


# --- the advisor in the collection: rounding and the cache ------------------------------------------

def analysis_for(model: model_facts.ModelSpec) -> object:
    from exporter.derive.analysis import Analysis

    return Analysis(model=model, kv_bytes_per_token=0.0, model_weight_bytes=model.weight_bytes,
                    expected_kv_capacity_tokens=0.0)


def test_the_advisor_rounds_the_load_and_caches_the_answer(tmp_path: Path) -> None:
    from exporter.resolve import FactsResolver, WhatIfAdvisor

    config = load(["--whatif-gpu", A100], {})
    advisor = WhatIfAdvisor(FactsResolver(config), config)
    analysis = analysis_for(LLAMA_8B)
    first = advisor.advise(stats(3.01, 3010.0, 602.0), analysis, {}, spec(H100), 3.0)  # type: ignore[arg-type]
    again = advisor.advise(stats(3.02, 3020.0, 604.0), analysis, {}, spec(H100), 3.0)  # type: ignore[arg-type]
    other = advisor.advise(stats(60.0, 60000.0, 12000.0), analysis, {}, spec(H100), 3.0)  # type: ignore[arg-type]
    assert first is again  # 3.01 and 3.02 requests/s both round to 3.0
    assert first is not None and other is not None
    assert sum(o.gpus for o in other.options) > sum(o.gpus for o in first.options)  # twenty times the load
    # --whatif-gpu limits the candidates, and the engine's own GPU model always takes part at its own price
    assert {o.gpu_model for o in first.options} == {A100, H100}
    assert next(o for o in first.options if o.gpu_model == H100).dollars_per_hour == pytest.approx(
        3.0 * next(o for o in first.options if o.gpu_model == H100).gpus)
    assert advisor.advise(stats(0.0, 0.0, 0.0), analysis, {}, spec(H100), 3.0) is None  # type: ignore[arg-type]


def test_unknown_whatif_gpu_fails_at_start_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"--whatif-gpu .*'NVIDIA Z9000'.*catalogue"):
        load(["--whatif-gpu", "NVIDIA Z9000"], {})
    with pytest.raises(ConfigError, match="--whatif-savings-threshold-ratio"):
        load(["--whatif-savings-threshold-ratio", "1.5"], {})


# --- what the collector serves ----------------------------------------------------------------------

def test_the_collector_serves_one_series_per_gpu_model_and_the_best() -> None:
    advice = whatif.WhatIf(
        options=(whatif.GpuOption(H100, 1, 2, 6.0), whatif.GpuOption(A100, 2, 2, 3.2),
                 whatif.GpuOption(L4, 1, 9, None)),
        best=whatif.GpuOption(A100, 2, 2, 3.2), savings_per_hour=2.8, basis="calibrated")
    view = EngineView(name="e", up=True, kind="vllm", model="m", whatif=advice)
    snapshot = Snapshot(timestamp=1.0, window_seconds=60, engines=(view,), whatif_savings_threshold_ratio=0.25)
    families = {f.name: f for f in SnapshotCollector(lambda: snapshot).collect()}
    needed = {s.labels["gpu_model"]: s.value for s in families["infermeter_whatif_gpus_needed"].samples}
    assert needed == {H100: 2, A100: 2, L4: 9}
    cost = {s.labels["gpu_model"]: s.value for s in families["infermeter_whatif_cost_dollars_per_hour"].samples}
    assert cost == {H100: 6.0, A100: 3.2}  # no price, no cost series
    (best,) = families["infermeter_whatif_best_gpu"].samples
    assert best.labels == {"engine": "e", "kind": "vllm", "model": "m", "gpu_model": A100, "tensor_parallel": "2",
                           "basis": "calibrated"}
    assert families["infermeter_whatif_savings_dollars_per_hour"].samples[0].value == 2.8
    assert families["infermeter_whatif_savings_threshold_ratio"].samples[0].value == 0.25


# --- end to end ----------------------------------------------------------------------------------------

@pytest.fixture
def simulated_vllm() -> Iterator[str]:
    sim = simulation("vllm", "overprovisioned", model="meta-llama/Llama-3.1-8B", gpu=H100, gpus=4, seed=1)
    with SimulatorServer(sim, exposition_for(sim), speed=4).start() as server:
        yield server.url


def test_a_running_exporter_advises_a_cheaper_gpu_model(tmp_path: Path, simulated_vllm: str) -> None:
    # prices: the H100s this node has at $3, and an A100 that would serve the same load at $1
    config = tmp_path / "infermeter.yaml"
    config.write_text(f'gpus:\n  "{A100}":\n    prices: {{"on-demand": 1.0}}\n')
    exporter = ExporterProcess(["--interval", "0.5", "--window", "20", "--engine", f"sim={simulated_vllm}",
                                "--config", str(config), "--whatif-gpu", A100, "--whatif-gpu", L4],
                               tmp_path, nvml_spec=h100_node(4))
    try:
        exporter.wait_ready()
        best = wait_for(lambda: [labels for name, labels, _ in exporter.samples()
                                 if name == "infermeter_whatif_best_gpu_info"], timeout=30)
        samples = exporter.samples()
        gpu_models = {labels["gpu_model"] for name, labels, _ in samples if name == "infermeter_whatif_gpus_needed"}
        assert gpu_models <= {A100, L4, H100} and {A100, H100} <= gpu_models
        h100 = value(samples, "infermeter_whatif_cost_dollars_per_hour", engine="sim", gpu_model=H100)
        a100 = value(samples, "infermeter_whatif_cost_dollars_per_hour", engine="sim", gpu_model=A100)
        assert h100 is not None and a100 is not None
        cheapest = min(v for n, labels, v in samples if n == "infermeter_whatif_cost_dollars_per_hour")
        (chosen,) = best
        assert value(samples, "infermeter_whatif_cost_dollars_per_hour", engine="sim",
                     gpu_model=chosen["gpu_model"]) == cheapest
        savings = value(samples, "infermeter_whatif_savings_dollars_per_hour", engine="sim")
        assert savings == pytest.approx(h100 - cheapest)
        assert value(samples, "infermeter_whatif_savings_threshold_ratio") == 0.25
    finally:
        exporter.stop()


def test_no_whatif_serves_no_whatif_series(tmp_path: Path, simulated_vllm: str) -> None:
    exporter = ExporterProcess(["--interval", "0.5", "--window", "20", "--engine", f"sim={simulated_vllm}",
                                "--no-whatif"], tmp_path, nvml_spec=h100_node(4))
    try:
        exporter.wait_ready()
        wait_for(lambda: value(exporter.samples(), "infermeter_rightsizing_gpus_needed", engine="sim"), timeout=30)
        assert not [n for n, _, _ in exporter.samples() if n.startswith("infermeter_whatif_")]
    finally:
        exporter.stop()
