"""Which model and GPU facts an engine gets, and the one log line when there are none."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from exporter.config import Config
from exporter.resolve import FactsResolver

MODELS = Path(__file__).resolve().parent.parent / "exporter" / "facts" / "models"


def test_model_from_the_directory_vllm_reports(tmp_path: Path) -> None:
    shutil.copy(MODELS / "mistralai--Mixtral-8x7B-v0.1.json", tmp_path / "config.json")
    spec = FactsResolver(Config()).model("e", "my-finetune", str(tmp_path))
    assert spec is not None and spec.architecture == "MixtralForCausalLM"
    assert spec.source.startswith(str(tmp_path))


def test_configured_file_wins_over_the_directory_and_the_catalogue(tmp_path: Path) -> None:
    shutil.copy(MODELS / "mistralai--Mixtral-8x7B-v0.1.json", tmp_path / "config.json")
    llama = MODELS / "meta-llama--Llama-3.1-70B.json"
    for paths in ({"e": str(llama)}, {"": str(llama)}):
        spec = FactsResolver(Config(model_configs=paths)).model("e", "meta-llama/Llama-3.1-8B", str(tmp_path))
        assert spec is not None and spec.layers == 80


def test_builtin_catalogue_by_served_name_or_directory_name() -> None:
    facts = FactsResolver(Config())
    by_name = facts.model("e", "meta-llama/Llama-3.1-8B-Instruct", None)
    assert by_name is not None and by_name.layers == 32
    by_dir = facts.model("e", "served-as-something-else", "/models/Meta-Llama-3.1-70B-Instruct")
    assert by_dir is not None and by_dir.layers == 80


def test_unknown_model_and_gpu_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    facts = FactsResolver(Config())
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert facts.model("e", "acme/secret-model", None) is None
            assert facts.gpu("NVIDIA GeForce RTX 3090") is None
    assert caplog.text.count("no architecture known for model 'acme/secret-model'") == 1
    assert caplog.text.count("GPU 'NVIDIA GeForce RTX 3090' is not in infermeter's catalogue") == 1


def test_a_broken_model_directory_falls_back_to_the_catalogue(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with caplog.at_level(logging.WARNING):
        spec = FactsResolver(Config()).model("e", "meta-llama/Llama-3.1-8B", str(tmp_path))
    assert spec is not None and spec.layers == 32
    assert "cannot use the model directory" in caplog.text


def test_prices_by_pricing_model_and_the_flag() -> None:
    facts = FactsResolver(Config(pricing="on-demand"))
    h100 = facts.gpu("NVIDIA H100 80GB HBM3")
    assert h100 is not None and facts.price(h100) == h100.prices["on-demand"]
    assert FactsResolver(Config(pricing="spot")).price(h100) is None  # the catalogue ships no spot prices
    assert FactsResolver(Config(pricing="spot", gpu_hourly_cost=1.5)).price(h100) == 1.5
