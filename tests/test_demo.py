"""``infermeter --demo``: simulated engines on simulated GPUs, clearly marked, every metric moving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config
from exporter.facts.gpus import find
from tests.process import ROOT, ExporterProcess, Samples, value, wait_for

LLAMA_8B = ROOT / "exporter" / "facts" / "models" / "meta-llama--Llama-3.1-8B.json"

ENGINES = {"demo-balanced": "balanced", "demo-memory-bound": "memory-bound",
           "demo-overprovisioned": "overprovisioned"}


def test_demo_serves_every_kind_of_metric_and_says_it_is_a_demo(tmp_path: Path) -> None:
    exporter = ExporterProcess(["--demo", "--interval", "1", "--window", "20"], tmp_path)
    try:
        exporter.wait_ready()
        # each scenario shows its own state once it has held 3 cycles and 15 s (the demo's engines start with
        # 120 simulated seconds behind them, so the memory-bound one is full and preempting already)
        expected = {"demo-balanced": "balanced", "demo-memory-bound": "memory_bound",
                    "demo-overprovisioned": "overprovisioned"}

        def settled() -> Samples | None:
            samples = exporter.samples()
            states = {labels["engine"]: labels["state"] for name, labels, v in samples
                      if name == "infermeter_rightsizing_state" and v == 1}
            return samples if states == expected else None

        samples = wait_for(settled, timeout=60)
        for engine in expected:
            assert value(samples, "infermeter_rightsizing_state_changes_total", engine=engine) == 0  # no flapping
        for engine, scenario in ENGINES.items():
            assert value(samples, "infermeter_demo_info", engine=engine, scenario=scenario) == 1
            assert value(samples, "infermeter_engine_up", engine=engine, model="meta-llama/Llama-3.1-8B") == 1
        uuids = {labels["uuid"] for name, labels, _ in samples if name == "infermeter_gpu_info"}
        assert len(uuids) == 6 and all(u.startswith("GPU-simulated-") for u in uuids)
        h100 = find("NVIDIA H100 80GB HBM3")
        assert h100 is not None
        # four simulated H100s at the catalogue's on-demand price
        assert value(samples, "infermeter_cost_dollars_per_hour", engine="demo-overprovisioned") == \
            4 * h100.prices["on-demand"]
        assert value(samples, "infermeter_expected_time_per_output_token_seconds", engine="demo-balanced")
        spent = value(samples, "infermeter_cost_dollars_total", engine="demo-balanced")
        assert spent is not None
        wait_for(lambda: (value(exporter.samples(), "infermeter_cost_dollars_total", engine="demo-balanced") or 0)
                 > spent)
        assert "DEMO MODE" in exporter.log()
    finally:
        exporter.proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code = exporter.proc.wait(timeout=10)
        took = time.monotonic() - began
        exporter.stop()
    assert code == 0 and took < 2.0


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--demo", "--engine", "http://127.0.0.1:8000"], {},
     "--demo (--demo) cannot be combined with --engine (--engine)"),
    (["--engine", "http://127.0.0.1:8000"], {"INFERMETER_DEMO": "true"},
     "--demo (INFERMETER_DEMO) cannot be combined with --engine (--engine)"),
    (["--demo", "--model-config", str(LLAMA_8B)], {},
     "--demo (--demo) cannot be combined with --model-config (--model-config)"),
])
def test_demo_refuses_the_settings_it_would_drop(argv: list[str], env: dict[str, str], expected: str) -> None:
    """The demo serves only its simulated engines on simulated GPUs: a real engine beside them would be priced
    and measured on GPUs that do not exist, so the combination is a configuration error, not a silent drop."""
    with pytest.raises(ConfigError) as raised:
        load_config(argv, env)
    assert str(raised.value).startswith(expected) and "\n" not in str(raised.value)


def test_demo_with_an_engine_exits_2_with_one_line_before_starting() -> None:
    result = subprocess.run([sys.executable, "-m", "exporter", "--demo", "--engine", "http://127.0.0.1:8000",
                             "--listen", "127.0.0.1:0"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("infermeter: configuration error: --demo (--demo) cannot be combined with --engine")
