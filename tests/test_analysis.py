"""The analytic model, cost and right-sizing, on hand-worked examples (the arithmetic is in the comments).

GPU: "NVIDIA H100 80GB HBM3" from the catalogue: 3.35e12 B/s, 989.4e12 dense bf16 FLOP/s,
1978.9e12 fp8, 85,520,809,984 bytes (81559 MiB).
"""

from __future__ import annotations

import math

import pytest

from exporter.derive import roofline
from exporter.derive.analysis import Deployment, analyse, observed_load
from exporter.derive.cost import costs, engine_prompt_share
from exporter.derive.engine import EngineStats, LatencySummary
from exporter.facts.gpus import find
from exporter.facts.models import ModelSpec, builtin

H100 = find("NVIDIA H100 80GB HBM3")
assert H100 is not None
BW, BF16, FP8, H100_MEMORY = 3.35e12, 989.4e12, 1978.9e12, 85_520_809_984
GIB = 1024**3


def model(name: str) -> ModelSpec:
    spec = builtin(name)
    assert spec is not None, name
    return spec


def test_the_catalogue_figures_these_examples_use() -> None:
    assert H100.memory_bandwidth_bytes_per_second == BW
    assert H100.flops_for("bf16") == BF16 and H100.flops_for("fp8") == FP8
    assert H100.memory_bytes == H100_MEMORY


def test_llama_3_1_8b_bf16_on_one_h100() -> None:
    llama = model("meta-llama/Llama-3.1-8B-Instruct")
    # KV per token: 2 (K, V) x 32 layers x 8 KV heads x 128 head dim x 2 bytes = 131,072
    assert roofline.kv_bytes_per_token(llama, 2.0) == 131_072
    # weights: 8,030,261,248 params x 2 bytes = 16,060,522,496 bytes (~16 GB)
    assert llama.params_total == 8_030_261_248
    assert llama.weight_bytes == 16_060_522_496

    # decode at batch 1, empty context. A step reads every weight once except the input embedding
    # table (128,256 x 4096 x 2 = 1,050,673,152 bytes), of which it reads one 8,192-byte row:
    # 16,060,522,496 - 1,050,673,152 + 8,192 = 15,009,857,536 bytes / 3.35e12 = 4.4806 ms
    # (counting the whole table too gives the often-quoted ~4.8 ms: 16,060,522,496 / 3.35e12 = 4.794 ms);
    # compute: 2 FLOPs per multiplied weight; the embedding lookup multiplies nothing:
    # 2 x (8,030,261,248 - 525,336,576) / 989.4e12 = 2 x 7,504,924,672 / 989.4e12 = 0.01517 ms -> memory-bound
    step = roofline.decode_step(llama, H100, 1, batch=1, context=0, kv_bytes=2.0)
    assert step is not None
    assert step.memory_seconds == pytest.approx(4.4806e-3, rel=1e-4)
    assert step.compute_seconds == pytest.approx(1.5170e-5, rel=1e-3)
    assert step.bound == "memory" and step.seconds == step.memory_seconds

    # batch 32 at context 1024: KV read 32 x 1024 x 131,072 = 4,294,967,296 bytes; weights
    # 16,060,522,496 - 1,050,673,152 + 32 x 8,192 = 15,010,111,488 bytes;
    # memory (15,010,111,488 + 4,294,967,296) / 3.35e12 = 5.7627 ms;
    # compute per token 2 x 7,504,924,672 + 4 x 32 layers x 32 heads x 128 x 1024 = 15,546,720,256 FLOPs,
    # x 32 / 989.4e12 = 0.5028 ms -> still memory-bound
    step = roofline.decode_step(llama, H100, 1, batch=32, context=1024, kv_bytes=2.0)
    assert step is not None
    assert step.memory_seconds == pytest.approx(5.7627e-3, rel=1e-4)
    assert step.compute_seconds == pytest.approx(5.028e-4, rel=1e-3)

    # prefill of 1000 tokens: 2 x 7,504,924,672 x 1000 + 2 x 32 x 32 x 128 x 1000^2 = 1.52720e13 FLOPs
    # / 989.4e12 = 15.435 ms (compute-bound; one read of the weights would take 4.48 ms)
    first = roofline.prefill(llama, H100, 1, 1000)
    assert first is not None
    assert first.seconds == pytest.approx(15.435e-3, rel=1e-3) and first.bound == "compute"

    # KV capacity at gpu_memory_utilization 0.9 and 2 GiB overhead:
    # 85,520,809,984 x 0.9 - 2,147,483,648 - 16,060,522,496 = 58,760,722,841.6 bytes / 131,072 = 448,308.7 tokens
    capacity = roofline.kv_capacity_tokens(llama, 1, H100_MEMORY, 2.0)
    assert capacity == pytest.approx(448_308.7, rel=1e-6)
    # an fp8 KV cache halves the bytes per token and doubles the tokens
    assert roofline.kv_capacity_tokens(llama, 1, H100_MEMORY, 1.0) == pytest.approx(2 * capacity)


def test_llama_3_1_70b_on_four_h100_with_tensor_parallel() -> None:
    llama = model("meta-llama/Llama-3.1-70B")
    # 70,553,706,496 params x 2 bytes = 141,107,412,992 bytes; KV per token 2 x 80 x 8 x 128 x 2 = 327,680
    assert llama.weight_bytes == 141_107_412_992
    assert roofline.kv_bytes_per_token(llama, 2.0) == 327_680
    # decode at batch 1: (141,107,412,992 - 128,256 x 8192 x 2 + 16,384) = 139,006,083,072 bytes
    # / (4 x 3.35e12) = 10.374 ms per token
    step = roofline.decode_step(llama, H100, 4, 1, 0, 2.0)
    assert step is not None and step.seconds == pytest.approx(10.3736e-3, rel=1e-4)
    # capacity: 4 x (85,520,809,984 x 0.9 - 2,147,483,648) - 141,107,412,992 = 158,177,568,358.4 bytes
    # / 327,680 = 482,719.6 tokens
    assert roofline.kv_capacity_tokens(llama, 4, H100_MEMORY, 2.0) == pytest.approx(482_719.6, rel=1e-6)
    # on one H100 the weights alone do not fit: no KV cache at all
    assert roofline.kv_capacity_tokens(llama, 1, H100_MEMORY, 2.0) == 0


def test_mixtral_reads_only_the_experts_a_batch_touches() -> None:
    mixtral = model("mistralai/Mixtral-8x7B-v0.1")
    # one expert: 32 layers x 3 x 4096 x 14,336 = 5,637,144,576 params; 8 experts, 2 per token
    assert mixtral.expert_params == 5_637_144_576 and (mixtral.experts, mixtral.experts_per_token) == (8, 2)
    shared = mixtral.params_total - 8 * mixtral.expert_params  # attention, embeddings, norms, routers
    assert mixtral.params_active == pytest.approx(shared + 2 * mixtral.expert_params)
    assert mixtral.params_total == pytest.approx(46.70e9, rel=1e-3)
    assert mixtral.params_active == pytest.approx(12.88e9, rel=1e-3)
    # one token touches exactly its 2 experts; 64 tokens touch 8 x (1 - (6/8)^64) ~ all 8
    assert roofline.experts_touched(8, 2, 1) == pytest.approx(2.0)
    assert roofline.experts_touched(8, 2, 64) == pytest.approx(8 * (1 - 0.75**64))
    # decode at batch 1 on 2 x H100: (shared + 2 experts) x 2 bytes, less the embedding table but one row
    # (32,000 x 4096 x 2 = 262,144,000 bytes; a row 8,192), / (2 x 3.35e12)
    # = ((1,605,636,096 + 11,274,289,152) x 2 - 262,135,808) / 6.7e12 = 25,497,714,688 / 6.7e12 = 3.8056 ms
    table = 32_000 * 4096 * 2
    step = roofline.decode_step(mixtral, H100, 2, 1, 0, 2.0)
    assert step is not None
    assert step.memory_seconds == pytest.approx(((shared + 2 * mixtral.expert_params) * 2 - table + 8192) / 6.7e12)
    assert step.memory_seconds == pytest.approx(3.8056e-3, rel=1e-4)
    # at batch 64 nearly every expert is read: close to all 93.4 GB of weights (less the table)
    big = roofline.decode_step(mixtral, H100, 2, 64, 0, 2.0)
    assert big is not None
    assert big.memory_seconds == pytest.approx((mixtral.weight_bytes - table + 64 * 8192) / 6.7e12, rel=1e-6)
    # compute uses the active parameters less the embedding lookup: 2 x (12.88e9 - 32,000 x 4096) x 64 / (2 x 989.4e12)
    assert big.compute_seconds == pytest.approx(2 * (mixtral.params_active - 32_000 * 4096) * 64 / (2 * BF16))


def test_fp8_and_awq_int4_checkpoints_move_the_decode_floor() -> None:
    bf16 = model("meta-llama/Llama-3.1-8B")
    fp8 = model("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8")
    awq = model("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4")
    # fp8: the 32 layers' linear weights at 1 byte (plus per-channel scales), embeddings and lm_head
    # (2 x 128,256 x 4096 = 1,050,673,152 params) stay bf16: 9,081,201,536 bytes; a step reads them less
    # the embedding table but one row: 9,081,201,536 - 1,050,673,152 + 8,192 = 8,030,536,576 -> 2.3972 ms
    assert fp8.weight_dtype == "fp8" and fp8.weight_bytes == pytest.approx(9.081e9, rel=1e-3)
    step = roofline.decode_step(fp8, H100, 1, 1, 0, 2.0)
    assert step is not None and step.seconds == pytest.approx((fp8.weight_bytes - 1_050_673_152 + 8192) / BW)
    assert step.seconds == pytest.approx(2.3972e-3, rel=1e-4)
    # its compute runs at the fp8 peak: 2 x 7,504,924,672 x 256 / 1978.9e12
    assert roofline.decode_step(fp8, H100, 1, 256, 0, 2.0).compute_seconds == pytest.approx(  # type: ignore[union-attr]
        2 * 7_504_924_672 * 256 / FP8)
    # AWQ int4 (group size 128): 0.5 byte per linear weight plus fp16 scales and packed zeros,
    # embeddings and lm_head in fp16: 5,727,854,592 bytes; read per step 5,727,854,592 - 1,050,673,152 + 8,192
    # = 4,677,189,632 -> 1.3962 ms
    assert awq.weight_dtype == "int4" and awq.weight_bytes == pytest.approx(5.728e9, rel=1e-3)
    assert roofline.decode_step(awq, H100, 1, 1, 0, 2.0).seconds == pytest.approx(1.3962e-3, rel=1e-4)  # type: ignore[union-attr]
    # the bf16 floor is the highest
    assert bf16.weight_bytes > fp8.weight_bytes > awq.weight_bytes


def stats(*, running: float = 0.0, waiting: float = 0.0, waiting_max: float | None = None, kv_usage: float = 0.0,
          capacity: float = 448_308.0, prompt_tps: float = 0.0, generation_tps: float = 0.0, rps: float = 0.0,
          preemptions: float = 0.0, itl: float | None = None, tpot_median: float | None = None,
          extra_rates: dict[str, float] | None = None) -> EngineStats:
    gauges = {"requests_running": running, "requests_waiting": waiting, "kv_cache_usage_ratio": kv_usage,
              "kv_cache_capacity_tokens": capacity}
    latency = {}
    if itl is not None:
        latency["inter_token_latency"] = LatencySummary({0.5: itl}, 10, 10 * itl, itl)
    if tpot_median is not None:
        latency["time_per_output_token"] = LatencySummary({0.5: tpot_median}, 10, 10 * tpot_median, tpot_median)
    return EngineStats(
        latency=latency, gauges=gauges, gauge_means=gauges,
        gauge_max={**gauges, "requests_waiting": waiting if waiting_max is None else waiting_max},
        counter_rates={"prompt_tokens": prompt_tps, "generation_tokens": generation_tps,
                       "requests_finished": rps, "preemptions": preemptions, **(extra_rates or {})})


def deployment(gpus: int = 1, price: float | None = 3.0, slo_tpot: float | None = 0.05,
               replicas: int = 1) -> Deployment:
    return Deployment(model=model("meta-llama/Llama-3.1-8B"), gpu=H100, gpus=gpus, memory_bytes_per_gpu=H100_MEMORY,
                      price_per_gpu_hour=price, slo_tpot_seconds=slo_tpot, slo_ttft_seconds=1.0, replicas=replicas)


def test_cost_per_request_and_per_million_tokens_to_the_cent() -> None:
    # 8 GPUs at $4.00 = $32.00 an hour; 0.5 requests/s = 1,800 requests/hour -> $0.017778 = 1.78 cents each
    window = stats(rps=0.5, prompt_tps=750, generation_tps=250, running=3,
                   extra_rates={"prefill_seconds": 0.25, "decode_seconds": 2.25})
    # vLLM's summed per-request times: 0.25 s of prefill and 2.25 s of decode per second; 3 requests decode
    # together, so the GPU spent 2.25 / 3 = 0.75 s decoding: prompt share 0.25 / (0.25 + 0.75) = 25 %
    share = engine_prompt_share(window)
    assert share == pytest.approx(0.25)
    cost = costs(32.0, window, [0.5] * 8, share)
    assert cost.per_hour == 32.0
    assert cost.per_request is not None and round(cost.per_request * 100, 2) == 1.78
    per_million = cost.per_million_tokens
    # total: $32 / (1,000 tokens/s x 3,600 s) x 1e6 = $8.89 per million tokens
    assert per_million["total"] == pytest.approx(8.8889, rel=1e-4)
    # prompts 32 x 0.25 / (750 x 3600) x 1e6 = $2.96, generation 32 x 0.75 / (250 x 3600) x 1e6 = $26.67
    assert per_million["prompt"] == pytest.approx(2.9630, rel=1e-4)
    assert per_million["generation"] == pytest.approx(26.667, rel=1e-4)
    # both at once cost what the total says: 750 x 2.963 + 250 x 26.667 = 1000 x 8.889
    assert 750 * per_million["prompt"] + 250 * per_million["generation"] == pytest.approx(1000 * per_million["total"])
    # GPUs busy half the time: half of the hourly cost is idle
    assert cost.idle_per_hour == 16.0


def test_no_requests_no_cost_per_request_and_no_split_without_times() -> None:
    window = stats(rps=0.0, generation_tps=0.0)
    cost = costs(3.0, window, [0.1], None)
    assert cost.per_request is None and cost.per_million_tokens == {}
    busy = stats(rps=1.0, generation_tps=100.0, prompt_tps=100.0)
    assert engine_prompt_share(busy) is None  # the engine reports no prefill/decode times
    assert set(costs(3.0, busy, [], None).per_million_tokens) == {"total"}
    assert costs(3.0, busy, [], None).idle_per_hour is None  # no utilisation known


def test_analytic_prompt_share_when_the_engine_reports_no_times() -> None:
    # Llama-3.1-8B on one H100, 8 running, 1000-token prompts at 2 requests/s, 400 generated tokens/s:
    # prefill of 1000 tokens takes 15.435 ms (compute-bound); decode at batch 8 about 4.8 ms a step.
    # Prompt GPU time per second: 2000 tok/s x 15.435 ms / 1000 tok = 30.9 ms; generation
    # 400 tok/s x step / 8 -> the prompt share is the first over the sum
    window = stats(running=8, kv_usage=0.02, prompt_tps=2000, generation_tps=400, rps=2)
    result = analyse(window, deployment(), [0.5], None)
    load = observed_load(window)
    first = roofline.prefill(model("meta-llama/Llama-3.1-8B"), H100, 1, 1000)
    step = roofline.decode_step(model("meta-llama/Llama-3.1-8B"), H100, 1, 8, load.context, 2.0)
    assert first is not None and step is not None and load.mean_prompt_tokens == 1000
    prompt_time = 2000 * first.seconds / 1000
    assert result.prompt_time_share == pytest.approx(prompt_time / (prompt_time + 400 * step.seconds / 8))


def test_efficiency_mbu_and_mfu() -> None:
    # batch 32, KV usage 0.25 of 448,308 tokens = 112,077 tokens cached;
    # observed step (ITL mean) 12 ms, TPOT median 12 ms
    window = stats(running=32, kv_usage=0.25, generation_tps=32 / 0.012, prompt_tps=0.0, rps=2, itl=0.012,
                   tpot_median=0.012)
    result = analyse(window, deployment(), [0.9], None)
    load = observed_load(window)
    # context per sequence = 112,077 / 32 = 3,502.4 tokens
    assert load.context == pytest.approx(0.25 * 448_308 / 32)
    expected = roofline.decode_step(model("meta-llama/Llama-3.1-8B"), H100, 1, 32, load.context, 2.0)
    assert expected is not None and result.expected_tpot_seconds == expected.seconds
    # efficiency = expected / observed; it cannot beat the roofline on real hardware (<= 1)
    assert result.tpot_efficiency_ratio == pytest.approx(expected.seconds / 0.012)
    # MBU = (15,010,111,488 weights read at batch 32 + 112,077 x 131,072) / 0.012 s / 3.35e12
    mbu = (15_010_111_488 + 0.25 * 448_308 * 131_072) / 0.012 / 3.35e12
    assert result.mbu["analytic"] == pytest.approx(mbu)
    # MFU = 2 x 7,504,924,672 multiplied weights x 2,666.7 tokens/s / 989.4e12
    assert result.mfu["analytic"] == pytest.approx(2 * 7_504_924_672 * (32 / 0.012) / BF16)
    assert "engine" not in result.mbu  # vLLM's own estimate only where it reports it


def test_without_a_tpot_histogram_the_inter_token_median_stands_in() -> None:
    # SGLang serves inter-token latency but no per-request TPOT histogram: the ITL median (15 ms) is used
    window = stats(running=32, kv_usage=0.25, generation_tps=2000, rps=2, itl=0.015)
    result = analyse(window, deployment(), [0.9], None)
    assert result.expected_tpot_seconds is not None
    assert result.tpot_efficiency_ratio == pytest.approx(result.expected_tpot_seconds / 0.015)
    # with both, the per-request TPOT wins (18 ms)
    both = analyse(stats(running=32, kv_usage=0.25, generation_tps=2000, rps=2, itl=0.015, tpot_median=0.018),
                   deployment(), [0.9], None)
    assert both.tpot_efficiency_ratio == pytest.approx(both.expected_tpot_seconds / 0.018)  # type: ignore[operator]


def test_engine_reported_flops_and_bytes_beside_the_analytic_estimate() -> None:
    window = stats(running=8, kv_usage=0.1, generation_tps=1000, rps=1, itl=0.008,
                   extra_rates={"engine_flops_per_gpu": 2.0e13, "engine_read_bytes_per_gpu": 1.675e12})
    result = analyse(window, deployment(), [0.9], None)
    assert result.mfu["engine"] == pytest.approx(2.0e13 / BF16)
    assert result.mbu["engine"] == pytest.approx(0.5)  # 1.675e12 / 3.35e12
    assert set(result.mbu) == {"analytic", "engine"}


def test_memory_breakdown_from_nvml_used_memory() -> None:
    # 448,308 KV tokens (the engine's capacity in these stats) x 131,072 = 58,760,626,176 bytes; NVML says
    # 80e9 used -> other = 80e9 - 16,060,522,496 - 58,760,626,176 = 5,178,851,328
    result = analyse(stats(), deployment(), [0.0], 80e9)
    assert result.memory_breakdown == {"weights": 16_060_522_496, "kv_cache": 448_308 * 131_072,
                                       "other": pytest.approx(80e9 - 16_060_522_496 - 448_308 * 131_072)}
    assert "other" not in analyse(stats(), deployment(), [0.0], None).memory_breakdown


def test_kv_dtype_from_vllm_cache_config() -> None:
    llama = model("meta-llama/Llama-3.1-8B")
    assert roofline.kv_dtype_bytes("auto", llama) == 2.0
    assert roofline.kv_dtype_bytes("fp8_e4m3", llama) == 1.0
    assert roofline.kv_dtype_bytes(None, llama) == 2.0
    fp8_cache = Deployment(model=llama, gpu=H100, gpus=1, memory_bytes_per_gpu=H100_MEMORY, price_per_gpu_hour=None,
                           engine_config={"cache_dtype": "fp8", "gpu_memory_utilization": "0.95"})
    result = analyse(stats(), fp8_cache, [], None)
    assert result.kv_bytes_per_token == 65_536
    # (85,520,809,984 x 0.95 - 2,147,483,648 - 16,060,522,496) / 65,536 = 961,864.7 tokens
    assert result.expected_kv_capacity_tokens == pytest.approx(961_864.7, rel=1e-6)
    assert result.expected_kv_capacity_tokens == pytest.approx(
        (H100_MEMORY * 0.95 - 2 * GIB - 16_060_522_496) / 65_536)
    assert math.isfinite(result.expected_kv_capacity_tokens)


def test_data_parallel_replicas_hold_a_copy_of_the_weights_each() -> None:
    dp2 = Deployment(model=model("meta-llama/Llama-3.1-8B"), gpu=H100, gpus=2, memory_bytes_per_gpu=H100_MEMORY,
                     price_per_gpu_hour=3.0, replicas=2)
    result = analyse(stats(capacity=2 * 448_308), dp2, [0.5, 0.5], 150e9)
    assert result.memory_breakdown["weights"] == 2 * 16_060_522_496
    # each rank: 448,308.7 tokens; two ranks
    assert result.expected_kv_capacity_tokens == pytest.approx(2 * 448_308.7, rel=1e-6)


def test_bandwidth_share_counts_idle_time_unlike_mbu() -> None:
    """The right-sizing state's "quiet" test reads bandwidth_share (exporter.derive.verdict)."""
    # 800 generated tokens/s at a batch of 8: 100 decode steps a second. KV cache 0.2 x 448,308 = 89,661.6 tokens.
    # A step reads the weights less the embedding table plus 8 rows (15,009,914,880 bytes) and every cached
    # token (89,661.6 x 131,072 = 11,752,018,739 bytes): 26,761,933,619 bytes; x 100 / 3.35e12 = 0.7989
    window = stats(running=8, kv_usage=0.2, generation_tps=800, rps=2, prompt_tps=2000)
    weights = 16_060_522_496 - 1_050_673_152 + 8 * 8_192
    moved = weights + 0.2 * 448_308.0 * 131_072
    share = analyse(window, deployment(), [0.9], None).bandwidth_share
    assert share == pytest.approx(100 * moved / BW) and share == pytest.approx(0.7989, rel=1e-4)
    # a tenth of the tokens at the same batch: a tenth of the steps, a tenth of the share
    quiet = analyse(stats(running=8, kv_usage=0.2, generation_tps=80, rps=0.2, prompt_tps=200), deployment(), [0.9],
                    None).bandwidth_share
    assert quiet == pytest.approx(share / 10)
    # 4 data-parallel GPUs: each replica's steps over four GPUs' bandwidth (batch 2 and a quarter of the KV
    # cache each, 400 steps a second in all)
    spread = analyse(window, deployment(gpus=4, replicas=4), [0.9] * 4, None).bandwidth_share
    per_replica = 16_060_522_496 - 1_050_673_152 + 2 * 8_192 + 0.2 * 448_308.0 / 4 * 131_072
    assert spread == pytest.approx(400 * per_replica / (4 * BW))
