"""``infermeter --demo``: simulated engines on simulated GPUs, clearly marked, every metric moving."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from exporter.facts.gpus import find
from tests.process import ExporterProcess, Samples, value, wait_for

ENGINES = {"demo-balanced": "balanced", "demo-memory-bound": "memory-bound",
           "demo-overprovisioned": "overprovisioned"}


def test_demo_serves_every_kind_of_metric_and_says_it_is_a_demo(tmp_path: Path) -> None:
    exporter = ExporterProcess(["--demo", "--interval", "1", "--window", "20"], tmp_path)
    try:
        exporter.wait_ready()
        def overprovisioned() -> Samples | None:
            samples = exporter.samples()
            state = value(samples, "infermeter_rightsizing_state", state="overprovisioned",
                          engine="demo-overprovisioned")
            return samples if state == 1 else None

        samples = wait_for(overprovisioned, timeout=30)
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
