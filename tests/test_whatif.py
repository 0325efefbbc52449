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


# --- the advice ----------------------------------------------------------------------------------
# (The workload a window implies, and the planner that calls these per engine, are in tests/test_rightsizing.py.)


DEFAULT_SLO = plan.Slo()


def evaluated(prices: dict[str, float | None], load_: plan.Workload, model: model_facts.ModelSpec | None = LLAMA_8B,
              slo: plan.Slo = DEFAULT_SLO, calibration: plan.Calibration = plan.ROOFLINE,
              ) -> dict[str, list[plan.Candidate]]:
    """Each GPU model's shapes for ``load_`` at its price, as the planner evaluates them."""
    assert model is not None
    return {name: whatif.shapes(model, spec(name), price, load_, slo, calibration) for name, price in prices.items()}


def test_shapes_are_every_tensor_parallel_size_evaluated() -> None:
    load_ = plan.Workload(3.0, 1000.0, 200.0)
    assert LLAMA_8B is not None
    shapes = whatif.shapes(LLAMA_8B, spec(H100), 3.0, load_, plan.Slo(), plan.ROOFLINE)
    assert shapes == [plan.evaluate(LLAMA_8B, spec(H100), tp, load_, plan.Slo(), price_per_gpu_hour=3.0)
                      for tp in plan.TENSOR_PARALLEL_SIZES]
    assert [c.tensor_parallel for c in whatif.shapes(LLAMA_8B, spec(H100), 3.0, load_, plan.Slo(), plan.ROOFLINE,
                                                     sizes=(1, 8))] == [1, 8]


def test_each_gpu_model_gets_its_cheapest_shape_and_the_best_is_the_cheapest_of_them() -> None:
    load_ = plan.Workload(3.0, 1000.0, 200.0)
    prices = {H100: 3.0, A100: 1.6, L4: 0.7}
    # the engine costs $12/h now (say four H100s at $3)
    advice = whatif.what_if(evaluated(prices, load_), 12.0, "roofline")
    by_gpu = {o.gpu_model: o for o in advice.options}
    assert set(by_gpu) == set(prices)
    for name, option in by_gpu.items():
        # independently: every tensor-parallel size of that GPU, the feasible one with the lowest $/h
        feasible = [c for tp in plan.TENSOR_PARALLEL_SIZES
                    if (c := plan.evaluate(LLAMA_8B, spec(name), tp, load_, plan.Slo(),  # type: ignore[arg-type]
                                           price_per_gpu_hour=prices[name])).feasible]
        cheapest = min(c.dollars_per_hour or math.inf for c in feasible)
        assert option.dollars_per_hour == pytest.approx(cheapest)
        assert option.dollars_per_hour == pytest.approx(option.gpus * prices[name])
    best = min(advice.options, key=lambda o: o.dollars_per_hour or math.inf)
    assert advice.best == best
    # savings: what the engine costs now ($12/h) minus the best option (was: the engine's own GPU model planned
    # the same way minus the best, which could exceed what the engine costs)
    assert best.dollars_per_hour is not None
    assert advice.savings_per_hour == pytest.approx(12.0 - best.dollars_per_hour)
    assert advice.basis == "roofline"


def test_a_gpu_model_that_cannot_hold_the_model_has_no_option() -> None:
    # Llama-3.1-70B bf16 weighs about 141 GB; eight T4s hold 8 x (16 GB x 0.9 - 2 GiB), about 98 GB
    usable = 8 * (spec(T4).memory_bytes * 0.9 - 2 * 2**30)
    assert LLAMA_70B is not None and LLAMA_70B.weight_bytes > usable
    load_ = plan.Workload(1.0, 500.0, 100.0)
    options = evaluated({H100: 3.0, T4: 0.4}, load_, LLAMA_70B)
    assert {c.ruled_out for c in options[T4]} == {"does_not_fit"}
    h100 = plan.rank(options[H100])[0]
    assert h100.tensor_parallel >= 2  # 141 GB does not fit on one 80 GB GPU
    # an engine that costs what the H100 option does: nothing to save
    advice = whatif.what_if(options, h100.dollars_per_hour, "roofline")
    assert [o.gpu_model for o in advice.options] == [H100]
    assert advice.best == advice.options[0] and advice.savings_per_hour == 0.0
    # one that costs less than the best option (an overloaded engine): never a negative saving
    assert whatif.what_if(options, 1.0, "roofline").savings_per_hour == 0.0


def test_without_a_price_there_are_no_savings() -> None:
    load_ = plan.Workload(1.0, 500.0, 100.0)
    advice = whatif.what_if(evaluated({H100: None, A100: 1.6}, load_), None, "roofline")
    assert advice.best is not None and advice.best.gpu_model == A100
    assert advice.savings_per_hour is None  # what the engine costs now is not known
    assert {o.gpu_model for o in advice.options} == {H100, A100}  # GPUs needed even without a price
    # no priced option: no best, no savings, although the engine's cost is known
    unpriced = whatif.what_if(evaluated({H100: None}, load_), 6.0, "roofline")
    assert unpriced.best is None and unpriced.savings_per_hour is None and len(unpriced.options) == 1


def test_a_lower_observed_efficiency_needs_more_gpus() -> None:
    load_ = plan.Workload(20.0, 1000.0, 300.0)
    slo = plan.Slo(2.0, 0.05)
    roofline = whatif.what_if(evaluated({H100: 3.0}, load_, slo=slo), 3.0, "roofline")
    slower = whatif.what_if(evaluated({H100: 3.0}, load_, slo=slo, calibration=plan.Calibration(0.4, 0.5)), 3.0,
                            "calibrated")
    assert slower.basis == "calibrated"
    assert slower.options[0].gpus > roofline.options[0].gpus


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
        # savings: what the engine costs now (4 H100s at the catalogue's $3 = $12/h) minus the cheapest option
        now = value(samples, "infermeter_cost_dollars_per_hour", engine="sim")
        assert now == 4 * spec(H100).prices["on-demand"] == 12.0
        savings = value(samples, "infermeter_whatif_savings_dollars_per_hour", engine="sim")
        assert savings == pytest.approx(now - cheapest)
        # the H100 row is the engine's own right-sizing: the same planner call
        assert value(samples, "infermeter_whatif_gpus_needed", engine="sim", gpu_model=H100) == \
            value(samples, "infermeter_rightsizing_gpus_needed", engine="sim")
        assert h100 == pytest.approx(3.0 * (value(samples, "infermeter_rightsizing_gpus_needed", engine="sim") or 0))
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
