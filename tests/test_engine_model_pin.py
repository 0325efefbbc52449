"""--engine-model ENGINE=NAME: the setting, the Triton adapter following the pinned model alone, the one-model
engines checking it, and a real exporter process whose pinned model is absent (engine_up 0, errors counted).

Expected values are read from the fixture text by the naive line reader of tests/test_engines.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from exporter.config import ConfigError, EngineTarget, load_config, markdown_reference
from exporter.samples import EngineIdentity, EngineSample
from exporter.sources import SourceError
from exporter.sources.engine import EngineSource
from exporter.sources.engines import MODELS_SHOWN, detect
from exporter.sources.exposition import parse
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import h100_node
from tests.process import ExporterProcess, value, wait_for
from tests.test_engines import naive, naive_sum

FIXTURES = Path(__file__).parent / "fixtures" / "engines"
TRTLLM, ONNX = FIXTURES / "triton-trtllm.txt", FIXTURES / "triton-onnx.txt"
VLLM, SGLANG, TGI = (FIXTURES / "vllm-0.32.0-specdecode.txt", FIXTURES / "sglang.txt",
                     FIXTURES / "tgi-3.x.txt")


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def read(body: str, model: str | None = None, identity: EngineIdentity | None = None) -> EngineSample:
    adapter = detect(body)
    return adapter.adapt(parse(body, adapter.families), 1.0, identity, model=model)


def models_in(body: str) -> list[str]:
    return sorted({labels["model"] for labels, _ in naive(body, "nv_inference_request_success")})


# ------------------------------------------------------------------------------------------ the setting


def test_flag_env_and_file_pin_a_model_per_engine(tmp_path: Path) -> None:
    engines = ["--engine", "trt=http://127.0.0.1:8002", "--engine", "other=http://127.0.0.1:8003"]
    config = load_config([*engines, "--engine-model", "trt=tensorrt_llm"], {})
    assert config.engines == (EngineTarget("trt", "http://127.0.0.1:8002", "tensorrt_llm"),
                              EngineTarget("other", "http://127.0.0.1:8003"))
    env = load_config(engines, {"INFERMETER_ENGINE_MODEL": "trt=tensorrt_llm other=densenet_onnx"})
    assert [e.model for e in env.engines] == ["tensorrt_llm", "densenet_onnx"]
    file = tmp_path / "infermeter.yaml"
    file.write_text("engine: [trt=http://127.0.0.1:8002]\nengine-model: {trt: ensemble}\n")
    assert load_config(["--config", str(file)], {}).engines[0].model == "ensemble"
    listed = tmp_path / "infermeter.toml"
    listed.write_text('engine = ["trt=http://127.0.0.1:8002"]\nengine-model = ["trt=postprocessing"]\n')
    assert load_config(["--config", str(listed)], {}).engines[0].model == "postprocessing"
    # the same pin twice is harmless
    assert load_config([*engines, "--engine-model", "trt=a", "--engine-model", "trt=a"], {}).engines[0].model == "a"
    assert "| `--engine-model ENGINE=NAME` | `INFERMETER_ENGINE_MODEL` | `engine-model` |" in markdown_reference()


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--engine", "a=http://h:1", "--engine-model", "b=m"], {},
     "--engine-model (--engine-model): no engine named 'b'; engines are: a"),
    ([], {"INFERMETER_ENGINE_MODEL": "trt=m"},
     "--engine-model (INFERMETER_ENGINE_MODEL): no engine named 'trt'; engines are: none (add --engine)"),
    (["--engine", "a=http://h:1", "--engine-model", "tensorrt_llm"], {}, "expected ENGINE=NAME"),
    (["--engine", "a=http://h:1", "--engine-model", "a="], {}, "expected ENGINE=NAME"),
    (["--engine", "a=http://h:1", "--engine-model", "a=x", "--engine-model", "a=y"], {},
     "engine 'a' is pinned to two models, 'x' and 'y'"),
])
def test_bad_pins_stop_the_start_with_one_line(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(argv, env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ Triton


def test_pinning_the_tensorrt_llm_step_instead_of_the_ensemble() -> None:
    body = text(TRTLLM)
    default, pinned = read(body), read(body, "tensorrt_llm")
    assert default.model_label == "ensemble" and pinned.model_label == "tensorrt_llm"
    llm = {"model": "tensorrt_llm"}
    assert pinned.counters["requests_finished"] == naive_sum(body, "nv_inference_request_success", **llm)
    for field, wire in (("e2e_request_latency", "nv_inference_request_duration_us"),
                        ("queue_time", "nv_inference_queue_duration_us")):
        assert pinned.histograms[field].sum == pytest.approx(naive_sum(body, wire, **llm) / 1e6)
        assert pinned.histograms[field].sum != default.histograms[field].sum  # not the ensemble's
        assert pinned.histograms[field].bounds == (math.inf,)
    ttft = pinned.histograms["time_to_first_token"]
    assert ttft.count == naive_sum(body, "nv_inference_first_response_histogram_ms_count", **llm)
    assert ttft.sum == pytest.approx(naive_sum(body, "nv_inference_first_response_histogram_ms_sum", **llm) / 1000)
    # the TensorRT-LLM families are this model's own: the same as the default read takes them from
    assert pinned.gauges == default.gauges
    assert pinned.counters["generation_tokens"] == naive_sum(body, "nv_llm_output_token_len_sum", **llm)


def test_a_pinned_model_is_followed_even_when_another_is_busier() -> None:
    body = text(TRTLLM)
    post = {"model": "postprocessing"}
    sample = read(body, "postprocessing")
    assert sample.model_label == "postprocessing"
    assert sample.counters["requests_finished"] == naive_sum(body, "nv_inference_request_success", **post)
    assert sample.histograms["e2e_request_latency"].sum == pytest.approx(
        naive_sum(body, "nv_inference_request_duration_us", **post) / 1e6)
    # everything comes from the pinned model alone: postprocessing serves no TensorRT-LLM family
    assert "generation_tokens" not in sample.counters
    assert not {"requests_running", "kv_cache_usage_ratio", "kv_cache_capacity_tokens"} & set(sample.gauges)
    assert sample.gauges["requests_waiting"] == naive_sum(body, "nv_inference_pending_request_count", **post)


def test_pinning_the_ensemble_keeps_its_requests_but_not_its_steps_families() -> None:
    body = text(TRTLLM)
    default, pinned = read(body), read(body, "ensemble")
    assert pinned.model_label == default.model_label == "ensemble"
    assert pinned.histograms == default.histograms
    assert pinned.counters["requests_finished"] == default.counters["requests_finished"]
    # the ensemble serves no TensorRT-LLM family and nothing says which model it calls: absent, not borrowed
    assert "kv_cache_usage_ratio" in default.gauges and "kv_cache_usage_ratio" not in pinned.gauges
    assert "prompt_tokens" in default.counters and "prompt_tokens" not in pinned.counters
    assert pinned.gauges["requests_waiting"] == naive_sum(body, "nv_inference_pending_request_count",
                                                          model="ensemble")


@pytest.mark.parametrize("path", [TRTLLM, ONNX])
def test_an_absent_pinned_model_fails_the_read_naming_the_models_there(path: Path) -> None:
    body = text(path)
    with pytest.raises(SourceError) as err:
        read(body, "llama-3-70b")
    message = str(err.value)
    assert "\n" not in message and "'llama-3-70b' (--engine-model)" in message
    assert message.endswith("models there: " + ", ".join(repr(m) for m in models_in(body)))


def test_the_error_names_a_bounded_number_of_models() -> None:
    lines = ["# TYPE nv_inference_request_success counter"]
    lines += [f'nv_inference_request_success{{model="m{i:03d}",version="1"}} {i}' for i in range(MODELS_SHOWN + 5)]
    with pytest.raises(SourceError, match=rf"'m{MODELS_SHOWN - 1:03d}' and 5 more$") as err:
        read("\n".join(lines) + "\n", "absent")
    assert f"'m{MODELS_SHOWN:03d}'" not in str(err.value)


def test_pinning_the_only_model_changes_nothing() -> None:
    body = text(ONNX)
    assert read(body, "densenet_onnx") == read(body)


# ------------------------------------------------------------------------------------------ one-model engines


@pytest.mark.parametrize("path", [VLLM, SGLANG])
def test_one_model_engines_check_the_pin_against_their_model_label(path: Path) -> None:
    body = text(path)
    served = naive(body, "vllm:prompt_tokens_total" if path == VLLM else "sglang:prompt_tokens_total")[0][0][
        "model_name"]
    assert read(body, served) == read(body)  # nothing to choose: the pin only has to match
    with pytest.raises(SourceError, match=rf"'other/model' \(--engine-model\).*models there: '{served}'$"):
        read(body, "other/model")


def test_tgi_checks_the_pin_against_the_model_id_from_info() -> None:
    body = text(TGI)
    info = json.loads(text(FIXTURES / "tgi-3.x.info.json"))
    identity = detect(body).identity({"/info": info})
    assert identity.model == info["model_id"]
    assert read(body, info["model_id"], identity) == read(body, None, identity)
    assert read(body, "other/model", None) == read(body)  # before /info is read there is nothing to compare
    with pytest.raises(SourceError, match=rf"models there: '{info['model_id']}'$"):
        read(body, "other/model", identity)


def test_the_engine_source_passes_the_pin_to_the_adapter() -> None:
    with FakeEngineServer(FakeEngine(TRTLLM)) as server:
        pinned = EngineSource(EngineTarget("trt", server.url, "tensorrt_llm"), 5.0, 1 << 24)
        absent = EngineSource(EngineTarget("trt", server.url, "llama"), 5.0, 1 << 24)
        try:
            assert pinned.read().sample.model_label == "tensorrt_llm"
            with pytest.raises(SourceError, match="'llama' \\(--engine-model\\)"):
                absent.read()
        finally:
            pinned.close()
            absent.close()


# ------------------------------------------------------------------------------------------ end to end


def test_exporter_follows_the_pinned_model_and_reports_an_absent_one(tmp_path: Path) -> None:
    body = text(TRTLLM)
    with FakeEngineServer(FakeEngine(TRTLLM)) as server:
        exporter = ExporterProcess(["--interval", "0.5", "--window", "30",
                                    "--engine", f"llm={server.url}", "--engine-model", "llm=tensorrt_llm",
                                    "--engine", f"gone={server.url}", "--engine-model", "gone=llama"],
                                   tmp_path, nvml_spec=h100_node(2))
        try:
            exporter.wait_ready()
            labels = {"engine": "llm", "kind": "triton", "model": "tensorrt_llm"}
            samples = wait_for(lambda: (s := exporter.samples()) and value(s, "infermeter_engine_up", **labels) == 1
                               and (value(s, "infermeter_collector_errors_total", collector="engine/gone") or 0) >= 2
                               and s)
            assert value(samples, "infermeter_e2e_request_latency_seconds_count", **labels) == naive_sum(
                body, "nv_inference_request_success", model="tensorrt_llm")
            assert value(samples, "infermeter_e2e_request_latency_seconds_sum", **labels) == pytest.approx(
                naive_sum(body, "nv_inference_request_duration_us", model="tensorrt_llm") / 1e6)
            assert not [s for s in samples if s[1].get("model") == "ensemble"]  # never the default choice
            assert value(samples, "infermeter_engine_up", engine="gone") == 0
            assert value(samples, "infermeter_collector_success", collector="engine/gone") == 0
            assert not [s for s in samples if s[0] == "infermeter_requests_per_second" and s[1]["engine"] == "gone"]
            expected = ("model 'llama' (--engine-model) is not in the engine's metrics; models there: "
                        + ", ".join(repr(m) for m in models_in(body)))
            assert expected in exporter.log()
        finally:
            exporter.stop()
