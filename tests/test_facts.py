"""Facts as data: the GPU catalogue and model parameter/weight-byte counts, checked by hand.

Every expected number below is worked out in the comments from the config fields, so a change to
a formula in exporter/facts/models.py shows up as a wrong sum here, not as a silently moved number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from exporter.facts import gpus, models

# ----------------------------------------------------------------------------------------- models


def test_llama_3_1_8b_params_and_bf16_bytes() -> None:
    spec = models.builtin("meta-llama/Llama-3.1-8B")
    assert spec is not None
    # d=4096, L=32, H=32, Hkv=8, hd=128, I=14336, V=128256, untied
    # embed_tokens        V·d = 128256·4096                      =   525,336,576
    # per layer  q        d·H·hd = 4096·4096                     =    16,777,216
    #            k, v     2·d·Hkv·hd = 2·4096·1024               =     8,388,608
    #            o        H·hd·d                                 =    16,777,216
    #            mlp      3·d·I = 3·4096·14336                   =   176,160,768
    #            norms    2·d                                    =         8,192
    #            layer total                                     =   218,112,000
    # 32 layers                                                  = 6,979,584,000
    # final norm d                                               =         4,096
    # lm_head V·d                                                =   525,336,576
    # total = 525,336,576 + 6,979,584,000 + 4,096 + 525,336,576  = 8,030,261,248
    assert spec.params_total == 8_030_261_248
    assert spec.params_active == spec.params_total
    assert spec.weight_dtype == "bf16"
    assert spec.weight_bytes == 2 * 8_030_261_248 == 16_060_522_496  # ≈ 16.06e9
    assert (spec.layers, spec.kv_heads, spec.head_dim, spec.experts, spec.expert_params) == (32, 8, 128, 1, 0)
    # KV cache per token in bf16: 2 (K,V)·32 layers·8 heads·128·2 bytes = 131,072
    assert spec.kv_cache_bytes_per_token() == 131_072


def test_llama_3_1_70b_params() -> None:
    spec = models.builtin("meta-llama/Llama-3.1-70B")
    assert spec is not None
    # d=8192, L=80, H=64, Hkv=8, hd=128, I=28672, V=128256
    # per layer: q 67,108,864 + k,v 2·8192·1024 = 16,777,216 + o 67,108,864
    #            + mlp 3·8192·28672 = 704,643,072 + norms 16,384   = 855,654,400
    # 80 layers = 68,452,352,000; embed + lm_head 2·128256·8192 = 2,101,346,304; final norm 8,192
    # total = 68,452,352,000 + 2,101,346,304 + 8,192 = 70,553,706,496
    assert spec.params_total == 70_553_706_496


def test_llama_3_1_405b_params() -> None:
    spec = models.builtin("meta-llama/Llama-3.1-405B")
    assert spec is not None
    # d=16384, L=126, H=128, Hkv=8, hd=128, I=53248, V=128256
    # per layer: q 268,435,456 + k,v 2·16384·1024 = 33,554,432 + o 268,435,456
    #            + mlp 3·16384·53248 = 2,617,245,696 + norms 32,768 = 3,187,703,808
    # 126 layers = 401,650,679,808; embed + lm_head 2·128256·16384 = 4,202,692,608; final norm 16,384
    # total = 405,853,388,800
    assert spec.params_total == 405_853_388_800


def test_mixtral_8x7b_total_active_and_expert_params() -> None:
    spec = models.builtin("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert spec is not None
    # d=4096, L=32, H=32, Hkv=8, hd=128, I=14336, V=32000, E=8, k=2
    # per layer: attention 41,943,040 (as Llama 8B) + router d·E = 32,768
    #            + experts 8·3·4096·14336 = 8·176,160,768 = 1,409,286,144 + norms 8,192
    #            = 1,451,270,144; 32 layers = 46,440,644,608
    # embed + lm_head 2·32000·4096 = 262,144,000; final norm 4,096
    # total = 46,440,644,608 + 262,144,000 + 4,096 = 46,702,792,704
    assert spec.params_total == 46_702_792_704
    # one expert in all layers: 32·176,160,768 = 5,637,144,576
    assert spec.expert_params == 5_637_144_576
    # active = total - (8 - 2)·5,637,144,576 = 46,702,792,704 - 33,822,867,456 = 12,879,925,248
    assert spec.params_active == 12_879_925_248
    assert (spec.experts, spec.experts_per_token) == (8, 2)


def test_gemma_2_9b_tied_embeddings_and_four_norms() -> None:
    spec = models.builtin("google/gemma-2-9b-it")
    assert spec is not None
    assert spec.tied_embeddings
    # d=3584, L=42, H=16, Hkv=8, hd=256 (H·hd = 4096 ≠ d), I=14336, V=256000, tied
    # per layer: q 3584·4096 = 14,680,064; k,v 2·3584·2048 = 14,680,064; o 4096·3584 = 14,680,064
    #            mlp 3·3584·14336 = 154,140,672; norms 4·3584 = 14,336  → 198,195,200
    # 42 layers = 8,324,198,400; embed (shared with lm_head) 256000·3584 = 917,504,000; final norm 3,584
    # total = 9,241,705,984
    assert spec.params_total == 9_241_705_984
    # the base config says float32; served in bf16 (vLLM dtype=auto, Gemma 2 overflows in fp16)
    assert spec.weight_dtype == "bf16"
    assert spec.weight_bytes == 2 * 9_241_705_984
    assert models.builtin("google/gemma-2-27b") is not None


def test_qwen2_5_7b_has_qkv_bias() -> None:
    spec = models.builtin("Qwen/Qwen2.5-7B")
    assert spec is not None
    # d=3584, L=28, H=28, Hkv=4, hd=128, I=18944, V=152064, untied
    # per layer: q 3584·3584 = 12,845,056 (+ bias 3,584); k,v 2·3584·512 = 3,670,016 (+ bias 2·512)
    #            o 12,845,056; mlp 3·3584·18944 = 203,685,888; norms 7,168
    #            = 29,360,128 + 4,608 + 203,685,888 + 7,168 = 233,057,792
    # 28 layers = 6,525,618,176; embed + lm_head 2·152064·3584 = 1,089,994,752; final norm 3,584
    # total = 7,615,616,512
    assert spec.params_total == 7_615_616_512
    no_bias = dict(json.loads((Path(models.__file__).parent / "models" / "Qwen--Qwen2.5-7B-Instruct.json").read_text()))
    no_bias["model_type"] = "llama"  # Llama attention: no bias unless attention_bias
    assert models.from_config(no_bias, "x", "test").params_total == 7_615_616_512 - 28 * 4_608


def test_fp8_model_is_about_one_byte_per_linear_weight() -> None:
    spec = models.builtin("RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8")
    assert spec is not None and spec.weight_dtype == "fp8"
    # linear weights: 32 layers · (41,943,040 + 176,160,768) = 6,979,321,856 → 1 byte each
    # per-tensor static scales: 7 linears · 32 layers · (weight_scale + input_scale) · 2 bytes = 896
    # embed + lm_head (ignored: "lm_head") + norms stay bf16:
    #   (2·525,336,576 + 32·8,192 + 4,096) · 2 = 1,050,939,392 · 2 = 2,101,878,784
    # total = 6,979,321,856 + 896 + 2,101,878,784 = 9,081,201,536
    assert spec.weight_bytes == 9_081_201_536
    assert spec.params_total == 8_030_261_248  # quantisation does not change the count


def test_awq_int4_model_bytes() -> None:
    spec = models.builtin("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4")
    assert spec is not None and spec.weight_dtype == "int4"
    # linear weights 6,979,321,856 at 4 bits                       = 3,489,660,928 bytes
    # group scales fp16 (2 B) + packed zeros (0.5 B) per 128 inputs per output:
    #   6,979,321,856 / 128 = 54,525,952 groups · 2.5             =   136,314,880 bytes
    # embed + lm_head + norms in fp16 (torch_dtype float16): 1,050,939,392 · 2 = 2,101,878,784 bytes
    # total = 3,489,660,928 + 136,314,880 + 2,101,878,784         = 5,727,854,592
    assert spec.weight_bytes == 5_727_854_592


def test_gptq_and_block_fp8_and_unsupported_method() -> None:
    base = json.loads((Path(models.__file__).parent / "models" / "meta-llama--Llama-3.1-8B.json").read_text())
    gptq = base | {"torch_dtype": "float16", "quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}}
    # as AWQ plus g_idx: 4 bytes per input row of every linear:
    #   per layer inputs q,k,v 3·4096 + o 4096 + gate,up 2·4096 + down 14336 = 38,912 → ·4·32 = 4,980,736
    assert models.from_config(gptq, "g", "t").weight_bytes == 5_727_854_592 + 4_980_736
    block = base | {"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic",
                                            "weight_block_size": [128, 128]}}
    # scale blocks per layer: Σ ceil(out/128)·ceil(in/128) = q 32·32 + k,v 2·8·32 + o 32·32
    #   + gate,up 2·112·32 + down 32·112 = 1024 + 512 + 1024 + 7168 + 3584 = 13,312 → ·4 B ·32 = 1,703,936
    assert models.from_config(block, "f", "t").weight_bytes == 6_979_321_856 + 1_703_936 + 2_101_878_784
    with pytest.raises(ValueError, match=r"^model config t: quantization_config.quant_method 'bitsandbytes'"):
        models.from_config(base | {"quantization_config": {"quant_method": "bitsandbytes"}}, "b", "t")


def test_from_config_errors_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"^model config my.json: missing hidden_size$"):
        models.from_config({"num_hidden_layers": 2}, "m", "my.json")
    with pytest.raises(ValueError, match=r"num_hidden_layers must be a positive integer"):
        models.from_config({"hidden_size": 8, "num_hidden_layers": 0}, "m", "my.json")


def test_load_file_and_directory(tmp_path: Path) -> None:
    src = Path(models.__file__).parent / "models" / "meta-llama--Llama-3.1-8B.json"
    (tmp_path / "config.json").write_text(src.read_text())
    by_dir = models.load(tmp_path)
    assert by_dir.params_total == 8_030_261_248 and by_dir.source == str(tmp_path / "config.json")
    assert models.load(tmp_path / "config.json", dtype="fp32").weight_bytes == 4 * 8_030_261_248
    with pytest.raises(ValueError, match=r"cannot read"):
        models.load(tmp_path / "missing")


@pytest.mark.parametrize(
    ("served", "repo_id"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B"),
        ("/models/Meta-Llama-3.1-70B-Instruct", "meta-llama/Llama-3.1-70B"),
        ("llama-3.3-70b", "meta-llama/Llama-3.1-70B"),
        ("meta-llama/Llama-3.3-70B-Instruct", "meta-llama/Llama-3.1-70B"),
        ("MISTRALAI/mistral-7b-instruct-v0.3", "mistralai/Mistral-7B-v0.3"),
        ("Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B-Instruct"),
        ("google/gemma-2-27b-it", "google/gemma-2-27b"),
        ("/root/.cache/huggingface/hub/models--meta-llama--Llama-3.1-405B-Instruct/snapshots/0abc/",
         "meta-llama/Llama-3.1-405B"),
    ],
)
def test_builtin_matches(served: str, repo_id: str) -> None:
    spec = models.builtin(served)
    assert spec is not None and spec.name == repo_id and spec.source == f"built-in: {repo_id}"


@pytest.mark.parametrize("served", ["llama-3.2-3b", "Llama-3.1-7B", "qwen2.5-14b", "gpt2", "", "/"])
def test_builtin_never_guesses_another_size(served: str) -> None:
    assert models.builtin(served) is None


def test_every_builtin_config_loads() -> None:
    names = models.builtin_names()
    folder = Path(models.__file__).parent / "models"
    assert len(names) == len(list(folder.glob("*.json"))) >= 11
    sources = (folder / "SOURCES.md").read_text()
    for repo_id in names:
        spec = models.builtin(repo_id)
        assert spec is not None, repo_id
        assert spec.params_total > 1e9 and spec.weight_bytes > 1e9
        assert repo_id.replace("/", "--") + ".json" in sources  # every file has its provenance row


# ------------------------------------------------------------------------------------------- GPUs


def test_lookup_by_exact_nvml_name() -> None:
    spec = gpus.find("NVIDIA H100 80GB HBM3")
    assert spec is not None
    assert spec.memory_bandwidth_bytes_per_second == 3.35e12
    assert spec.flops_for("bf16") == 989.4e12 and spec.flops_for("fp8") == 1978.9e12
    assert spec.memory_bytes == 81559 * 1024**2


def test_lookup_by_normalised_name() -> None:
    assert gpus.find("  nvidia   l4 ") is gpus.find("NVIDIA L4") is not None
    assert gpus.find("T4") is gpus.find("Tesla T4") is not None
    assert gpus.find("a100-sxm4-80gb") is gpus.catalogue()["NVIDIA A100-SXM4-80GB"]


def test_unknown_gpu_is_none() -> None:
    assert gpus.find("NVIDIA GeForce RTX 4090") is None


def test_flops_for_fallbacks() -> None:
    a100, t4, h100 = gpus.find("NVIDIA A100-SXM4-80GB"), gpus.find("Tesla T4"), gpus.find("NVIDIA H100 PCIe")
    assert a100 is not None and t4 is not None and h100 is not None
    assert a100.flops_for("fp8") == 312e12  # no fp8 tensor cores: weight-only fp8 computes in 16 bits
    assert a100.flops_for("int4") == 312e12 and h100.flops_for("int4") == 756.5e12  # W4A16
    assert h100.flops_for("int8") == 1513e12
    assert t4.flops_for("bf16") == 65e12 and t4.flops_for("fp32") == 65e12  # no bf16 on Turing: fp16
    assert "bf16" not in t4.peak_flops and "fp8" not in a100.peak_flops


def test_user_override_of_a_price_only() -> None:
    base = gpus.find("NVIDIA H100 80GB HBM3")
    assert base is not None
    mine = gpus.spec_from_mapping(base.name, {"prices": {"on-demand": 2.1, "spot": 1.2}}, base=base)
    assert mine.prices == {"on-demand": 2.1, "spot": 1.2} and mine.price_source == "user config"
    assert mine.peak_flops == base.peak_flops and mine.source == base.source
    assert mine.memory_bandwidth_bytes_per_second == base.memory_bandwidth_bytes_per_second
    assert gpus.find(base.name, extra={base.name: mine}) is mine
    assert gpus.find("nvidia h100 80gb hbm3", extra={base.name: mine}) is mine
    assert base.prices["on-demand"] == 3.00  # the catalogue itself is untouched


def test_user_spec_for_a_new_gpu() -> None:
    spec = gpus.spec_from_mapping("NVIDIA RTX 6000 Ada Generation", {
        "memory_bytes": 48e9, "memory_bandwidth_bytes_per_second": 960e9,
        "peak_flops": {"bf16": 364e12, "fp8": 728e12}, "prices": {"on-demand": 0.9}})
    assert spec.flops_for("int8") == 364e12 and spec.tdp_watts is None and spec.source == "user config"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"memory_bandwidth_bytes_per_second": 1e12, "peak_flops": {"bf16": 1e14}, "prices": {"on-demand": 1}},
         "gpu 'X': memory_bytes: missing"),
        ({"memory_bytes": 1e9, "memory_bandwidth_bytes_per_second": "fast", "peak_flops": {"bf16": 1e14},
          "prices": {"on-demand": 1}}, "gpu 'X': memory_bandwidth_bytes_per_second: must be a number, got 'fast'"),
        ({"memory_bytes": 1e9, "memory_bandwidth_bytes_per_second": 1e12, "peak_flops": {"fp4": 1e14},
          "prices": {"on-demand": 1}}, "gpu 'X': peak_flops.fp4: unknown key (expected one of bf16, fp16, fp8, int8)"),
        ({"memory_bytes": 1e9, "memory_bandwidth_bytes_per_second": 1e12, "peak_flops": {"bf16": 1e14},
          "prices": {"spot": 1}}, "gpu 'X': prices.on-demand: missing (a dollars-per-GPU-hour number is required)"),
        ({"memory_bytes": -1}, "gpu 'X': memory_bytes: must be a finite number > 0, got -1"),
        ({"memroy_bytes": 1}, "gpu 'X': memroy_bytes: unknown key"),
    ],
)
def test_invalid_user_spec_is_one_line_naming_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        gpus.spec_from_mapping("X", data)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_every_catalogue_row_is_complete() -> None:
    rows = gpus.catalogue()
    assert len(rows) >= 15
    for name, spec in rows.items():
        assert spec.name == name
        assert spec.memory_bytes > 0 and spec.memory_bandwidth_bytes_per_second > 0, name
        assert spec.source and spec.price_source, name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", spec.as_of), name
        assert spec.prices["on-demand"] > 0, name
        assert spec.flops_for("bf16") is not None and spec.flops_for("int4") is not None, name
        assert set(spec.peak_flops) <= set(gpus.DTYPES) and set(spec.prices) <= set(gpus.PRICING_MODELS), name
        assert spec.tdp_watts is not None and spec.tdp_watts > 0, name
    required = ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
                "NVIDIA A100-SXM4-80GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-40GB",
                "NVIDIA L4", "NVIDIA A10G", "NVIDIA A10", "NVIDIA L40S", "Tesla T4", "NVIDIA B200"]
    assert all(name in rows for name in required)


def test_catalogue_is_loaded_once() -> None:
    assert gpus.catalogue() is gpus.catalogue()
