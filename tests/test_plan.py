"""``infermeter plan`` (exporter.derive.plan and exporter.plan) on hand-worked examples.

The arithmetic is written out in the comments and recomputed here from the catalogue facts, never
read back from the planner. GPU facts (exporter/facts/gpus.toml, checked in the first test):
H100 SXM 85,520,809,984 bytes, 3.35e12 B/s, 989.4e12 bf16 and 1978.9e12 fp8 FLOP/s.
Llama-3.1-70B: 80 layers, hidden 8192, 64 heads, 8 KV heads, head dim 128, vocab 128,256.

The JSON golden file tests/fixtures/plan/llama-3.1-70b.json is compared field by field; when the
output changes on purpose (or the catalogue's figures do), regenerate it with
``INFERMETER_REGENERATE_GOLDEN=1 python -m pytest tests/test_plan.py -k golden`` and review the diff.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter import plan as command
from exporter.derive import plan as planner
from exporter.derive import roofline
from exporter.derive.analysis import TARGET_BUSY_SHARE
from exporter.facts import gpus as gpu_facts
from exporter.facts.gpus import GpuSpec
from exporter.facts.models import ModelSpec
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node
from tests.process import ROOT, ExporterProcess, free_port, value, wait_for
from tests.prometheus_server import prometheus_scraping

GOLDEN = ROOT / "tests" / "fixtures" / "plan" / "llama-3.1-70b.json"
FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"
LLAMA_8B_FILE = ROOT / "exporter" / "facts" / "models" / "meta-llama--Llama-3.1-8B.json"
H100_NAME = "NVIDIA H100 80GB HBM3"
BW, BF16, FP8, H100_MEMORY = 3.35e12, 989.4e12, 1978.9e12, 85_520_809_984
GIB = 1024**3
USABLE_H100 = H100_MEMORY * 0.9 - 2 * GIB  # 74,821,245,337.6 bytes per GPU beside vLLM's reservations
W70 = 141_107_412_992                       # 70,553,706,496 params x 2 bytes
TABLE_70B = 128_256 * 8192 * 2              # input embedding table, bytes (a step reads one 16,384-byte row per token)
MATMUL_70B = 70_553_706_496 - 128_256 * 8192  # params a token multiplies by (not the embedding lookup)
KV_70B = 2 * 80 * 8 * 128 * 2               # 327,680 bytes per token


def gpu(name: str) -> GpuSpec:
    spec = gpu_facts.find(name)
    assert spec is not None, name
    return spec


def model(name: str, dtype: str | None = None) -> ModelSpec:
    config, repo_id, source = command.model_config(name)
    return planner.with_weight_dtype(config, repo_id, source, dtype)


def run(*args: str) -> tuple[int, str, str]:
    """``infermeter plan ARGS`` in this process: (status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = command.main(list(args))
        except SystemExit as exit_:
            status = int(exit_.code or 0)
    return status, out.getvalue(), err.getvalue()


def candidate(result: planner.Plan, gpu_name: str, tp: int) -> planner.Candidate:
    (found,) = [c for c in result.candidates if c.gpu == gpu_name and c.tensor_parallel == tp]
    return found


def test_the_catalogue_figures_these_examples_use() -> None:
    h100 = gpu(H100_NAME)
    assert (h100.memory_bytes, h100.memory_bandwidth_bytes_per_second) == (H100_MEMORY, BW)
    assert h100.flops_for("bf16") == BF16 and h100.flops_for("fp8") == FP8
    llama = model("meta-llama/Llama-3.1-70B")
    assert (llama.layers, llama.hidden_size, llama.heads, llama.kv_heads, llama.head_dim, llama.vocab_size) == (
        80, 8192, 64, 8, 128, 128_256)
    assert llama.weight_bytes == W70 and llama.weight_dtype == "bf16"


def test_llama_70b_bf16_does_not_fit_one_h100_but_fits_two_with_tensor_parallel() -> None:
    llama = model("meta-llama/Llama-3.1-70B")
    work = planner.Workload(requests_per_second=2, prompt_tokens=1000, output_tokens=250)
    result = planner.plan(llama, [gpu(H100_NAME)], work, planner.Slo(ttft_seconds=2, tpot_seconds=0.1))

    # TP1: 141,107,412,992 bytes of weights > 74,821,245,337.6 usable (85,520,809,984 x 0.9 - 2 GiB)
    assert W70 > USABLE_H100
    one = candidate(result, H100_NAME, 1)
    assert one.ruled_out == "does_not_fit" and one.weights_fit is False
    assert one.reason is not None and "141.1 GB" in one.reason and "74.8 GB" in one.reason

    # TP2: 2 x 74,821,245,337.6 = 149,642,490,675.2 >= 141,107,412,992; the KV cache gets the rest:
    # 8,535,077,683.2 bytes / 327,680 bytes per token = 26,046.99 tokens
    two = candidate(result, H100_NAME, 2)
    assert two.feasible and two.weights_fit and two.weight_bytes_per_gpu == W70 / 2
    kv_tokens = (2 * USABLE_H100 - W70) / KV_70B
    assert two.kv_cache_tokens == pytest.approx(kv_tokens) and kv_tokens == pytest.approx(26_046.99, abs=0.01)
    # mean context while decoding: 1000 + 250 / 2 = 1125 tokens; floor(26,046.99 / 1125) = 23 sequences fit,
    # and the step at 23 meets the 100 ms target, so the KV cache limits the batch
    context = 1000 + 250 / 2
    assert two.batch == math.floor(kv_tokens / context) == 23 and two.batch_limit == "kv_cache"
    # step at batch 23: weights read (all but the embedding table, of which 23 rows) plus 23 x 1125 cached tokens
    memory = (W70 - TABLE_70B + 23 * 16_384 + 23 * context * KV_70B) / (2 * BW)           # 22.013 ms
    compute = (2 * MATMUL_70B + 4 * 80 * 64 * 128 * context) * 23 / (2 * BF16)            # 1.650 ms
    assert memory == pytest.approx(22.013e-3, rel=1e-4) and compute == pytest.approx(1.650e-3, rel=1e-3)
    assert two.tpot_seconds == pytest.approx(memory) and two.bound == "memory"
    # prefill of 1000 tokens: (2 x 69,503,033,344 x 1000 + 2 x 80 x 64 x 128 x 1000^2) / (2 x 989.4e12) = 70.91 ms
    prefill = (2 * MATMUL_70B * 1000 + 2 * 80 * 64 * 128 * 1000**2) / (2 * BF16)
    assert two.ttft_seconds == pytest.approx(prefill) and prefill == pytest.approx(70.91e-3, rel=1e-4)
    # a request costs a replica 250 x 22.013 / 23 + 70.91 = 310.2 ms: 3.224 requests/s at full load;
    # planned 0.8 busy: 2 / (0.8 x 3.224) = 0.78 -> 1 replica of 2 GPUs, $6/h at $3 per GPU-hour
    per_request = 250 * memory / 23 + prefill
    assert two.requests_per_second_per_replica == pytest.approx(1 / per_request)
    assert 1 / per_request == pytest.approx(3.224, rel=1e-3)
    assert (two.replicas, two.gpus) == (1, 2)
    price = gpu(H100_NAME).price("on-demand")
    assert price is not None
    assert two.dollars_per_hour == pytest.approx(2 * price)
    assert two.dollars_per_request == pytest.approx(2 * price / (2 * 3600))           # 7,200 requests an hour
    assert two.dollars_per_million_tokens == pytest.approx(2 * price / (2 * 3600 * 1250) * 1e6)
    # the cheapest feasible candidate comes first, the ruled-out one last
    assert result.candidates[0].feasible and result.candidates[-1] == one

    # at 10 requests/s: 10 / (0.8 x 3.224) = 3.88 -> 4 replicas, 8 GPUs
    busy = planner.plan(llama, [gpu(H100_NAME)], planner.Workload(10, 1000, 250), planner.Slo(2, 0.1))
    assert candidate(busy, H100_NAME, 2).replicas == math.ceil(10 * per_request / TARGET_BUSY_SHARE) == 4


def test_fp8_halves_the_weight_bytes_and_moves_the_decode_floor() -> None:
    bf16 = model("meta-llama/Llama-3.1-70B")
    fp8 = model("meta-llama/Llama-3.1-70B", "fp8")
    # --dtype fp8 quantises the decoder's linear layers to 1 byte per weight plus one fp32 scale per tensor
    # (7 per layer); the embedding, the LM head (2 x 128,256 x 8192) and the norms (2 x 8192 per layer and the
    # final 8192) stay bf16:
    norms = 80 * 2 * 8192 + 8192
    linear = 70_553_706_496 - 2 * 128_256 * 8192 - norms                    # 68,451,041,280
    fp8_bytes = linear * 1 + 80 * 7 * 4 + (2 * 128_256 * 8192 + norms) * 2   # 72,656,373,952
    assert fp8.weight_dtype == "fp8" and fp8.weight_bytes == fp8_bytes
    assert fp8.weight_bytes / bf16.weight_bytes == pytest.approx(0.515, abs=1e-3)  # the linear layers halve
    # the decode floor (batch 1, empty context) on 2 x H100 moves from 20.75 ms to 10.53 ms
    floor = {m.weight_dtype: roofline.decode_step(m, gpu(H100_NAME), 2, 1, 0, 2.0) for m in (bf16, fp8)}
    assert floor["bf16"].seconds == pytest.approx((W70 - TABLE_70B + 16_384) / (2 * BW))  # type: ignore[union-attr]
    assert floor["fp8"].seconds == pytest.approx((fp8_bytes - TABLE_70B + 16_384) / (2 * BW))  # type: ignore[union-attr]
    assert floor["fp8"].seconds == pytest.approx(10.531e-3, rel=1e-4)  # type: ignore[union-attr]

    # so fp8 fits on ONE H100 (72.66 GB <= 74.82 GB), with (74,821,245,337.6 - 72,656,373,952) / 327,680
    # = 6,606.5 KV cache tokens: enough for one 1,250-token request, at most 5 of them at context 1125
    work = planner.Workload(0.5, 1000, 250)
    result = planner.plan(fp8, [gpu(H100_NAME), gpu("NVIDIA A100-SXM4-80GB")], work, planner.Slo(2, 0.1))
    one = candidate(result, H100_NAME, 1)
    assert one.feasible and one.kv_cache_tokens == pytest.approx((USABLE_H100 - fp8_bytes) / KV_70B)
    assert one.batch == math.floor((USABLE_H100 - fp8_bytes) / KV_70B / 1125) == 5
    # its matrix products run at the fp8 peak: the prefill is compute-bound at 1978.9e12 FLOP/s
    assert one.ttft_seconds == pytest.approx((2 * MATMUL_70B * 1000 + 2 * 80 * 64 * 128 * 1000**2) / FP8)
    # an A100 (no fp8 tensor cores) runs fp8 weight-only: the bytes shrink, compute stays at 312e12 bf16
    a100 = candidate(result, "NVIDIA A100-SXM4-80GB", 2)
    assert a100.feasible and any("no fp8 tensor cores" in note for note in a100.notes)
    assert a100.ttft_seconds == pytest.approx((2 * MATMUL_70B * 1000 + 2 * 80 * 64 * 128 * 1000**2) / (2 * 312e12))


def test_int8_and_int4_shrink_further_and_a_quantised_checkpoint_keeps_its_format() -> None:
    bf16, int8, int4 = (model("meta-llama/Llama-3.1-8B", d) for d in (None, "int8", "int4"))
    # int8 (W8A8, per-channel 2-byte scales) ~ fp8; int4 (AWQ g128: 0.5 byte + 2.5 bytes per 128 inputs per output)
    assert bf16.weight_bytes > int8.weight_bytes > int4.weight_bytes
    assert (int8.weight_dtype, int4.weight_dtype) == ("int8", "int4")
    # the AWQ int4 conversion sizes the same as the shipped AWQ checkpoint of the same shape (5,727,854,592 bytes)
    shipped = model("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4")
    assert int4.weight_bytes == shipped.weight_bytes
    assert model("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "fp8").weight_dtype == "fp8"
    status, _, err = run("--model", "neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "--dtype", "int4",
                         "--rate", "1", "--prompt-tokens", "100", "--output-tokens", "10")
    assert status == 2 and "already quantised (fp8)" in err and len(err.strip().splitlines()) == 1


def _cheapest_fitting(weights: float, floor_bytes: float, tpot: float) -> str:
    """The cheapest catalogue GPU whose one card holds the weights and reads them within ``tpot``."""
    fitting = [g for g in gpu_facts.catalogue().values()
               if weights <= g.memory_bytes * 0.9 - 2 * GIB
               and floor_bytes / g.memory_bandwidth_bytes_per_second < tpot]
    return min(fitting, key=lambda g: g.price("on-demand") or math.inf).name


def test_an_8b_model_at_a_low_rate_picks_the_cheapest_single_gpu_that_meets_the_slo() -> None:
    llama = model("meta-llama/Llama-3.1-8B")
    # 16,060,522,496 bytes of weights; a decode step at batch 1 reads 15,009,857,536 of them
    weights, floor_bytes = 16_060_522_496, 16_060_522_496 - 128_256 * 4096 * 2 + 8192
    work = planner.Workload(0.1, 500, 200)  # 0.1 requests/s: one replica anywhere, so the price per hour decides
    loose = planner.plan(llama, list(gpu_facts.catalogue().values()), work, planner.Slo(2.0, 0.1))
    best = loose.candidates[0]
    assert (best.gpu, best.tensor_parallel, best.replicas) == (_cheapest_fitting(weights, floor_bytes, 0.1), 1, 1)
    # with the shipped prices: an A10 (24 GB; 15.01e9 / 600e9 = 25.0 ms floor) at $0.75/h
    assert best.gpu == "NVIDIA A10"
    # a 20 ms TPOT target rules the A10 out at TP1 (floor 25.0 ms > 20 ms) and picks a faster card
    tight = planner.plan(llama, list(gpu_facts.catalogue().values()), work, planner.Slo(2.0, 0.02))
    assert candidate(tight, "NVIDIA A10", 1).ruled_out == "tpot_unreachable"
    assert tight.candidates[0].gpu == _cheapest_fitting(weights, floor_bytes, 0.02)
    assert tight.candidates[0].gpu != "NVIDIA A10" and tight.candidates[0].tensor_parallel == 1


def test_spot_prices_from_a_config_file_change_the_order(tmp_path: Path) -> None:
    # the catalogue ships no spot prices (no dated survey behind one): the user's config file brings them
    config = tmp_path / "infermeter.yaml"
    config.write_text('pricing: spot\ngpus:\n  "NVIDIA A10":\n    prices: {spot: 0.60}\n'
                      '  "NVIDIA L4":\n    prices: {spot: 0.30}\n')
    args = ("--model", "meta-llama/Llama-3.1-8B", "--rate", "0.1", "--prompt-tokens", "500", "--output-tokens", "200",
            "--gpu", "NVIDIA A10", "--gpu", "NVIDIA L4", "--gpu", "NVIDIA A100-PCIE-40GB", "--format", "json")
    on_demand = json.loads(run(*args)[1])
    spot = json.loads(run(*args, "--config", str(config))[1])
    first = [(c["gpu"], c["tensor_parallel"]) for c in on_demand["candidates"]][:2]
    assert first == [("NVIDIA A10", 1), ("NVIDIA L4", 1)]              # $0.75 < $0.80 on demand
    assert spot["inputs"]["pricing"] == "spot"
    ranked = [(c["gpu"], c["tensor_parallel"], c["price_per_gpu_hour"]) for c in spot["candidates"] if c["feasible"]]
    assert ranked[:2] == [("NVIDIA L4", 1, 0.30), ("NVIDIA A10", 1, 0.60)]  # $0.30 < $0.60 on spot
    # a GPU with no spot price stays feasible but unpriced, after the priced ones, and says why
    unpriced = [c for c in spot["candidates"] if c["feasible"] and c["dollars_per_hour"] is None]
    assert unpriced and {c["gpu"] for c in unpriced} == {"NVIDIA A100-PCIE-40GB"}
    assert all(c["dollars_per_hour"] is not None for c in spot["candidates"][:len(ranked) - len(unpriced)])
    assert any("no spot price" in note for note in unpriced[0]["notes"])


def test_calibration_halving_the_decode_efficiency_doubles_the_step_and_adds_replicas() -> None:
    llama = model("meta-llama/Llama-3.1-70B")
    work, slo = planner.Workload(10, 1000, 250), planner.Slo(2.0, 0.1)
    h100 = gpu(H100_NAME)
    roof = planner.evaluate(llama, h100, 2, work, slo, price_per_gpu_hour=3.0)
    half = planner.evaluate(llama, h100, 2, work, slo, price_per_gpu_hour=3.0,
                            calibration=planner.Calibration(decode=0.5))
    # the batch stays KV-bound at 23 (44.0 ms < 100 ms); the step doubles: 22.013 -> 44.03 ms
    assert half.batch == roof.batch == 23
    assert half.tpot_seconds == pytest.approx(2 * roof.tpot_seconds)  # type: ignore[operator]
    assert half.ttft_seconds == pytest.approx(roof.ttft_seconds)
    # a request now costs 250 x 44.03 / 23 + 70.91 = 549.4 ms: 10 x 0.5494 / 0.8 = 6.87 -> 7 replicas (was 4)
    per_request = 250 * 2 * roof.tpot_seconds / 23 + roof.ttft_seconds  # type: ignore[operator]
    assert (roof.replicas, half.replicas) == (4, math.ceil(10 * per_request / 0.8)) == (4, 7)
    # a prefill efficiency of 0.25 quadruples the TTFT
    slow = planner.evaluate(llama, h100, 2, work, slo, price_per_gpu_hour=3.0,
                            calibration=planner.Calibration(prefill=0.25))
    assert slow.ttft_seconds == pytest.approx(4 * roof.ttft_seconds)  # type: ignore[operator]
    # a 30 ms TPOT target is met on the roofline but not at half of it: the step at batch 1 and context 1125
    # reads 139,006,083,072 weight bytes + 1125 x 327,680 = 139,374,723,072 bytes / 6.7e12 = 20.80 ms -> 41.6 ms
    floor = (W70 - TABLE_70B + 16_384 + 1125 * KV_70B) / (2 * BW)
    assert floor == pytest.approx(20.802e-3, rel=1e-4)
    tight = planner.Slo(2.0, 0.03)
    assert planner.evaluate(llama, h100, 2, work, tight, price_per_gpu_hour=3.0).feasible
    out = planner.evaluate(llama, h100, 2, work, tight, price_per_gpu_hour=3.0,
                           calibration=planner.Calibration(decode=0.5))
    assert out.ruled_out == "tpot_unreachable" and f"({2 * floor * 1000:.1f} ms)" in (out.reason or "")
    # the basis says which it is; efficiencies are bounded to (0, 1]
    base = planner.plan(llama, [h100], work, slo)
    calibrated = planner.plan(llama, [h100], work, slo, calibration=planner.Calibration(decode=0.5))
    assert (base.basis, calibrated.basis) == ("roofline", "calibrated")
    assert planner.Calibration(decode=1.7).decode == 1.0
    with pytest.raises(ValueError, match="decode efficiency"):
        planner.Calibration(decode=0.0)


def test_every_reason_a_candidate_is_ruled_out() -> None:
    slo = planner.Slo(2.0, 0.1)
    # Qwen2.5-7B has 28 attention heads: tensor parallel 8 cannot split them
    qwen = model("Qwen/Qwen2.5-7B-Instruct")
    tp8 = planner.evaluate(qwen, gpu(H100_NAME), 8, planner.Workload(1, 100, 10), slo, price_per_gpu_hour=3.0)
    assert tp8.ruled_out == "tensor_parallel" and "28 attention heads" in (tp8.reason or "")
    llama = model("meta-llama/Llama-3.1-8B")
    l4 = gpu("NVIDIA L4")
    # an L4 keeps (24,152,899,584 x 0.9 - 2 GiB - 16,060,522,496) / 131,072 = 26,929 KV tokens: not one
    # 30,000 + 1,000-token request
    kv = (l4.memory_bytes * 0.9 - 2 * GIB - 16_060_522_496) / 131_072
    long = planner.evaluate(llama, l4, 1, planner.Workload(1, 30_000, 1000), slo, price_per_gpu_hour=0.8)
    assert long.ruled_out == "kv_cache_too_small" and long.kv_cache_tokens == pytest.approx(kv)
    assert f"{kv:,.0f} tokens" in (long.reason or "")
    # a 1 ms TPOT target is below the L4's step at batch 1 and context 100 + 10 / 2 = 105:
    # (15,009,857,536 + 105 x 131,072) / 300e9 = 50.08 ms
    fast = planner.evaluate(llama, l4, 1, planner.Workload(1, 100, 10), planner.Slo(2.0, 0.001), price_per_gpu_hour=0.8)
    assert fast.ruled_out == "tpot_unreachable"
    assert "batch 1 and a 105-token context (50.1 ms)" in (fast.reason or "")
    # a 10 ms TTFT target is below the prefill of 8,000 tokens on an L4:
    # (2 x 7,504,924,672 x 8000 + 2 x 32 x 32 x 128 x 8000^2) / 121e12 = 1.13 s
    ttft = planner.evaluate(llama, l4, 1, planner.Workload(1, 8000, 10), planner.Slo(0.01, 0.1),
                            price_per_gpu_hour=0.8)
    assert ttft.ruled_out == "ttft_unreachable"
    assert ttft.ttft_seconds == pytest.approx((2 * 7_504_924_672 * 8000 + 2 * 32 * 32 * 128 * 8000**2) / 121e12)


def test_kv_heads_are_replicated_when_tensor_parallel_exceeds_them() -> None:
    config, name, source = command.model_config("meta-llama/Llama-3.1-8B")
    two_kv = planner.with_weight_dtype({**config, "num_key_value_heads": 2}, name, source, None)
    assert planner.tensor_parallel_problem(two_kv, 4) is None  # 4 is a multiple of 2: each GPU holds one copy
    # over 4 GPUs each stores one KV head: 4 heads' worth per token instead of 2, so half the tokens fit
    stored = planner.kv_sharded_model(two_kv, 4)
    assert roofline.kv_bytes_per_token(stored, 2.0) == 2 * roofline.kv_bytes_per_token(two_kv, 2.0)
    found = planner.evaluate(two_kv, gpu(H100_NAME), 4, planner.Workload(1, 100, 10), planner.Slo(),
                             price_per_gpu_hour=3.0)
    free = 4 * USABLE_H100 - two_kv.weight_bytes
    assert found.kv_cache_tokens == pytest.approx(free / (2 * 32 * 4 * 128 * 2))
    # 24 heads split over 8 GPUs, but 3 KV heads neither split over 8 nor replicate evenly onto them
    three_kv = planner.with_weight_dtype({**config, "num_key_value_heads": 3, "num_attention_heads": 24,
                                          "head_dim": 128}, name, source, None)
    assert "3 KV heads" in (planner.tensor_parallel_problem(three_kv, 8) or "")
    assert planner.tensor_parallel_problem(three_kv, 1) is None


def test_golden_json() -> None:
    """The JSON of a fixed plan, field by field (regenerate: INFERMETER_REGENERATE_GOLDEN=1, see the module doc)."""
    status, out, err = run("--model", "meta-llama/Llama-3.1-70B", "--rate", "2", "--prompt-tokens", "1000",
                           "--output-tokens", "250", "--slo-ttft", "2", "--slo-tpot", "0.05",
                           "--gpu", H100_NAME, "--gpu", "NVIDIA A100-SXM4-80GB", "--format", "json")
    assert status == 0, err
    data = json.loads(out)
    if os.environ.get("INFERMETER_REGENERATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=2) + "\n")
    assert _approx(data, json.loads(GOLDEN.read_text()))
    # the keys are fixed: every candidate has all of them, feasible or not (docs/planning.md lists them)
    keys = {"gpu", "tensor_parallel", "feasible", "ruled_out", "reason", "weight_bytes_per_gpu", "usable_bytes_per_gpu",
            "weights_fit", "kv_cache_tokens", "batch", "batch_limit", "tpot_seconds", "ttft_seconds", "bound",
            "prefill_bound", "decode_tokens_per_second", "requests_per_second_per_replica",
            "generation_tokens_per_second_per_replica", "replicas", "gpus", "price_per_gpu_hour", "dollars_per_hour",
            "dollars_per_request", "dollars_per_million_tokens", "notes"}
    assert all(set(c) == keys for c in data["candidates"])
    assert set(data) == {"schema_version", "inputs", "basis", "calibration", "candidates"}
    assert data["schema_version"] == 1 and data["basis"] == "roofline" and data["calibration"] is None
    docs = (ROOT / "docs" / "planning.md").read_text()
    assert all(f"`{key}`" in docs for key in keys | set(data["inputs"]))


def _approx(got: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and set(got) == set(want) and all(_approx(got[k], want[k]) for k in want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_approx, got, want))
    if isinstance(want, float) and not isinstance(want, bool):
        return isinstance(got, (int, float)) and got == pytest.approx(want, rel=1e-9)
    return bool(got == want)


def test_the_table_is_readable() -> None:
    status, out, err = run("--model", "meta-llama/Llama-3.1-70B", "--rate", "2", "--prompt-tokens", "1000",
                           "--output-tokens", "250", "--gpu", H100_NAME, "--gpu", "NVIDIA A100-SXM4-80GB")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("plan for meta-llama/Llama-3.1-70B (LlamaForCausalLM, bf16 weights 141.1 GB")
    assert any("default target TTFT 2 s, TPOT 0.1 s" in line for line in lines)  # the defaults are printed
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#  GPU"))
    for column in command.COLUMNS:
        assert column in lines[header]
    block = lines[header:lines.index("", header)]
    assert set(lines[header + 1].replace(" ", "")) == {"-"}
    # right-aligned last column: every row ends where the header does; the columns line up
    assert len({len(line) for line in block}) == 1
    assert block[2].split()[:2] == ["1", "A100-SXM4-80GB"]  # 4 x $1.30 = $5.20/h beats 2 x $3.00 = $6.00/h
    assert "ruled out" in lines and any("TP1" in line and "weights need 141.1 GB" in line for line in lines)
    # the batch column says what limits it: 25 sequences fill the A100 TP2's KV cache
    assert block[2].split()[5:7] == ["25", "kv"]
    assert max(len(line) for line in lines) <= 100  # a terminal's width, wrapped prose included


@pytest.mark.parametrize(("model_name", "rate", "prompt", "output"), [
    ("meta-llama/Llama-3.1-70B", "2", "1000", "250"),
    ("meta-llama/Llama-3.1-8B", "50", "200", "100"),     # $0.00000556 a request: 5.56e-06 in the old table
    ("meta-llama/Llama-3.1-8B", "0.01", "8000", "2000"),
    ("meta-llama/Llama-3.1-70B", "200", "8000", "2000"),  # hundreds of GPUs, thousands of dollars an hour
])
def test_every_catalogue_plan_fits_100_columns_and_prints_dollars_as_decimals(
        model_name: str, rate: str, prompt: str, output: str) -> None:
    status, out, err = run("--model", model_name, "--rate", rate, "--prompt-tokens", prompt, "--output-tokens",
                           output)
    assert status == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#  GPU"))
    rows = lines[header + 2:lines.index("", header)]
    assert len(rows) >= 5
    assert not any(re.search(r"\de[-+]\d", row) for row in rows)  # no 8.15e-05
    dollars = [cell for row in rows for cell in row.split() if cell.startswith("$")]
    assert len(dollars) == 2 * len(rows) and all(re.fullmatch(r"\$[\d,]+(\.\d+)?", cell) for cell in dollars)


def test_a_long_gpu_name_from_a_config_file_is_cut_in_the_table_only(tmp_path: Path) -> None:
    config = tmp_path / "infermeter.yaml"
    config.write_text('gpus:\n  "NVIDIA RTX 6000 Ada Generation":\n    memory_bytes: 51527024640\n'
                      "    memory_bandwidth_bytes_per_second: 960e9\n    peak_flops: {bf16: 364.2e12}\n"
                      "    prices: {on-demand: 1.10}\n")
    args = ("--model", "meta-llama/Llama-3.1-8B", "--rate", "1", "--prompt-tokens", "500", "--output-tokens", "200",
            "--gpu", "NVIDIA RTX 6000 Ada Generation", "--config", str(config))
    status, out, err = run(*args)
    assert status == 0, err
    rows = [line for line in out.splitlines() if line.startswith("1  ")]
    assert rows and rows[0].split("  ")[1] == "RTX 6000 Ada G.."  # 16 characters
    assert max(len(line) for line in out.splitlines()) <= 100
    data = json.loads(run(*args, "--format", "json")[1])
    assert data["candidates"][0]["gpu"] == "NVIDIA RTX 6000 Ada Generation"


@pytest.mark.parametrize(("args", "message"), [
    (("--model", "no-such-model", "--rate", "1", "--prompt-tokens", "1", "--output-tokens", "1"),
     "unknown model 'no-such-model'"),
    (("--model", "meta-llama/Llama-3.1-8B", "--rate", "1", "--prompt-tokens", "1", "--output-tokens", "1",
      "--gpu", "Voodoo 3"), "unknown GPU 'Voodoo 3'"),
    (("--model", "meta-llama/Llama-3.1-8B", "--rate", "-1", "--prompt-tokens", "1", "--output-tokens", "1"),
     "must be a finite number > 0"),
    (("--model", "meta-llama/Llama-3.1-8B", "--rate", "x", "--prompt-tokens", "1", "--output-tokens", "1"),
     "not a number"),
    (("--model", "meta-llama/Llama-3.1-8B", "--prompt-tokens", "1", "--output-tokens", "1"), "--rate is required"),
    (("--model", "meta-llama/Llama-3.1-8B", "--rate", "1", "--prompt-tokens", "1", "--output-tokens", "1",
      "--decode-efficiency", "nan"), "must be a finite number > 0"),
])
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    status, out, err = run(*args)
    assert status == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("infermeter plan: ")


def plan_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", "plan", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[ExporterProcess]:
    engine = FakeEngine(FIXTURE)
    engine.zero()
    # 4 running from the start, so that the window's mean batch, and with it the analytic MBU, holds still
    engine.set("vllm:num_requests_running", 4)
    engine.set("vllm:kv_cache_usage_perc", 0.05)
    with FakeEngineServer(engine) as server:
        process = ExporterProcess(["--interval", "0.5", "--window", "30", "--engine", f"llama={server.url}",
                                   "--model-config", str(LLAMA_8B_FILE), "--gpu-hourly-cost", "2.5",
                                   "--slo-ttft-seconds", "1.5", "--slo-tpot-seconds", "0.08"],
                                  tmp_path, nvml_spec=h100_node(1))
        try:
            process.wait_ready()
            wait_for(lambda: value(process.samples(), "infermeter_engine_up", engine="llama") == 1)
            # 12 requests (at least rightsizing.MIN_CALIBRATION_REQUESTS, 10, to calibrate) of 5,000 prompt and 500
            # generated tokens each, decoded at 10 ms per token with 4 running; their TTFTs are 50 ms, of which
            # 40 ms in prefill by the engine's own request_prefill_time
            engine.observe("vllm:inter_token_latency_seconds", 0.01, times=6000)
            engine.observe("vllm:time_to_first_token_seconds", 0.05, times=12)
            engine.observe("vllm:request_prefill_time_seconds", 0.04, times=12)
            engine.observe("vllm:e2e_request_latency_seconds", 5.05, times=12)
            engine.inc("vllm:prompt_tokens_total", 60_000)
            engine.inc("vllm:generation_tokens_total", 6000)
            engine.inc("vllm:request_success_total", 12, {"finished_reason": "stop"})
            wait_for(lambda: value(process.samples(), "infermeter_rightsizing_efficiency_ratio",
                                   engine="llama", phase="prefill"), timeout=20)
            yield process
        finally:
            process.stop()


def test_plan_from_a_running_exporter(exporter: ExporterProcess) -> None:
    result = plan_command("--from", exporter.url, "--gpu", H100_NAME, "--gpu", "NVIDIA L4", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    inputs = data["inputs"]
    # the model the exporter used (its --model-config file), the observed request shape and the SLO targets
    assert inputs["model"]["name"] == "meta-llama--Llama-3.1-8B" and inputs["model"]["weight_bytes"] == 16_060_522_496
    assert inputs["prompt_tokens"] == pytest.approx(5000) and inputs["output_tokens"] == pytest.approx(500)
    assert inputs["requests_per_second"] > 0
    assert inputs["slo"] == {"ttft_seconds": 1.5, "tpot_seconds": 0.08}
    assert inputs["observed"]["engine"] == "llama" and inputs["observed"]["gpus"] == [H100_NAME]
    # calibrated by the engine's own efficiency, as the exporter's planner was: the analytic MBU for decode, the
    # roofline prefill over the engine's own mean prefill time (40 ms) for prefill, both in two digits
    samples = exporter.samples()
    mbu = value(samples, "infermeter_memory_bandwidth_utilization_ratio", engine="llama", source="analytic")
    expected_ttft = value(samples, "infermeter_expected_time_to_first_token_seconds", engine="llama")
    assert data["basis"] == "calibrated" and mbu is not None and expected_ttft is not None
    decode = value(samples, "infermeter_rightsizing_efficiency_ratio", engine="llama", phase="decode")
    prefill = value(samples, "infermeter_rightsizing_efficiency_ratio", engine="llama", phase="prefill")
    assert data["calibration"]["decode_efficiency"] == decode == pytest.approx(min(mbu, 1.0), rel=0.05)
    assert data["calibration"]["prefill_efficiency"] == prefill == float(f"{min(expected_ttft / 0.04, 1.0):.2g}")
    assert data["calibration"]["source"].endswith("decode: analytic MBU, prefill: expected TTFT / observed mean "
                                                  "prefill time")
    assert "engine llama on 1 x NVIDIA H100 80GB HBM3" in data["calibration"]["source"]
    assert any(c["feasible"] for c in data["candidates"])
    # flags win over what was observed; --roofline ignores the efficiency
    flagged = json.loads(plan_command("--from", exporter.url, "--rate", "3", "--roofline", "--gpu", H100_NAME,
                                      "--format", "json").stdout)
    assert flagged["inputs"]["requests_per_second"] == 3 and flagged["basis"] == "roofline"
    table = plan_command("--from", exporter.url, "--gpu", H100_NAME)
    assert table.returncode == 0 and "basis    calibrated" in table.stdout
    missing = plan_command("--from", exporter.url, "--engine", "nope")
    assert missing.returncode == 2 and "no engine named 'nope'" in missing.stderr


def test_plan_from_an_unreachable_url_says_so() -> None:
    result = plan_command("--from", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and result.stderr.startswith("infermeter plan: cannot read http://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_plan_from_a_prometheus_that_scrapes_the_exporter(exporter: ExporterProcess, tmp_path: Path) -> None:
    ready = 'infermeter_rightsizing_efficiency_ratio{phase="decode"}'
    with prometheus_scraping(tmp_path, f"127.0.0.1:{exporter.port}", ready) as url:
        result = plan_command("--from", url, "--gpu", H100_NAME, "--format", "json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        # the same engine, now seen through Prometheus: its target labels name the exporter
        assert data["inputs"]["observed"]["instance"] == f"127.0.0.1:{exporter.port}/infermeter"
        assert data["inputs"]["prompt_tokens"] == pytest.approx(5000)
        assert data["inputs"]["slo"] == {"ttft_seconds": 1.5, "tpot_seconds": 0.08}
        assert data["basis"] == "calibrated"
