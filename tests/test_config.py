"""Settings: precedence flag > env > file > default, and one-line errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import BY_NAME, SETTINGS, ConfigError, EngineTarget, load_config


def test_defaults() -> None:
    config = load_config([], {})
    assert config.engines == ()
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9416)
    assert config.interval == 5.0 and config.window == 300.0
    assert config.timeout == 10.0  # Prometheus' default scrape timeout, whatever the interval
    assert config.nvml is True and config.log_level == "info"


def test_engine_names_default_to_host_port_and_metrics_path_is_stripped() -> None:
    config = load_config(["--engine", "http://127.0.0.1:8000/", "--engine", "tgi=http://gpu-1:3000/metrics"], {})
    assert config.engines == (EngineTarget("127.0.0.1:8000", "http://127.0.0.1:8000"),
                              EngineTarget("tgi", "http://gpu-1:3000"))


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    file = tmp_path / "infermeter.yaml"
    file.write_text("interval: 2\nwindow: 60\nlog-level: debug\nlisten: 127.0.0.1:9000\n")
    env = {"INFERMETER_CONFIG": str(file), "INFERMETER_WINDOW": "120", "INFERMETER_INTERVAL": "3"}
    config = load_config(["--interval", "4"], env)
    assert config.interval == 4.0  # flag beats env and file
    assert config.window == 120.0  # env beats file
    assert config.log_level == "debug"  # file beats default
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9000)
    assert config.max_body_bytes == BY_NAME["max-body-bytes"].default  # default


def test_toml_file_with_nested_collector_table_and_engine_gpus_mapping(tmp_path: Path) -> None:
    file = tmp_path / "infermeter.toml"
    file.write_text('engine = ["a=http://127.0.0.1:8000", "b=http://127.0.0.1:8001"]\n'
                    "[collector]\nnvml = false\n"
                    "[engine-gpus]\na = [0, 1]\nb = [2, 3]\n")
    config = load_config(["--config", str(file)], {})
    assert [e.name for e in config.engines] == ["a", "b"]
    assert config.nvml is False
    assert config.engine_gpus == {"a": (0, 1), "b": (2, 3)}


def test_env_lists_and_booleans() -> None:
    env = {"INFERMETER_ENGINE": "a=http://h:1 b=http://h:2;c=http://h:3", "INFERMETER_COLLECTOR_NVML": "false",
           "INFERMETER_ENGINE_GPUS": "a=0,1 b=2"}
    config = load_config([], env)
    assert [e.name for e in config.engines] == ["a", "b", "c"]
    assert config.nvml is False
    assert config.engine_gpus == {"a": (0, 1), "b": (2,)}


def test_no_collector_flag_beats_env() -> None:
    assert load_config(["--collector.nvml"], {"INFERMETER_COLLECTOR_NVML": "0"}).nvml is True
    assert load_config(["--no-collector.nvml"], {}).nvml is False


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["--interval", "abc"], {}, "--interval (--interval): expected a number of seconds, got 'abc'"),
    ([], {"INFERMETER_INTERVAL": "-1"}, "--interval (INFERMETER_INTERVAL): expected a positive number"),
    (["--engine", "localhost:8000"], {}, "--engine (--engine): expected [NAME=]URL with an http(s) URL"),
    (["--listen", "9416"], {}, "--listen (--listen): expected HOST:PORT"),
    (["--listen", "0.0.0.0:99999"], {}, "--listen (--listen): port must be 0-65535"),
    (["--log-level", "loud"], {}, "--log-level (--log-level): expected one of debug, info, warning, error"),
    (["--engine", "a=http://h:1", "--engine", "a=http://h:2"], {}, "engine name 'a' is used twice"),
    (["--engine", "a=http://h:1", "--engine-gpus", "b=0"], {}, "--engine-gpus (--engine-gpus): no engine named 'b'"),
    (["--engine-gpus", "a=x"], {}, "GPU indices must be whole numbers"),
    (["--interval", "5", "--window", "6"], {}, "--window (--window): 6s is too short"),
    (["--interval", "0.1", "--window", "3600"], {}, "keeps 36000 samples per engine (at most 1000)"),
    (["--timeout", "0"], {}, "--timeout (--timeout): expected a positive number of seconds"),
    ([], {"INFERMETER_COLLECTOR_NVML": "maybe"},
     "--collector.nvml (INFERMETER_COLLECTOR_NVML): expected true or false"),
])
def test_invalid_values_fail_with_one_line_naming_the_setting(argv: list[str], env: dict[str, str],
                                                              expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(argv, env)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message


def test_config_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="--config: cannot read"):
        load_config(["--config", str(missing)], {})
    bad = tmp_path / "bad.toml"
    bad.write_text("interval = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(["--config", str(bad)], {})
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("intervall: 5\n")
    with pytest.raises(ConfigError, match="unknown setting 'intervall'"):
        load_config(["--config", str(unknown)], {})
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("interval: fast\n")
    with pytest.raises(ConfigError, match=r"--interval \(interval in --config\)"):
        load_config(["--config", str(wrong)], {})


def test_every_setting_has_an_env_var_and_help() -> None:
    for setting in SETTINGS:
        assert setting.env.startswith("INFERMETER_") and setting.help
    assert BY_NAME["collector.nvml"].env == "INFERMETER_COLLECTOR_NVML"
    assert BY_NAME["engine-gpus"].env == "INFERMETER_ENGINE_GPUS"


def test_gpus_table_overrides_prices_and_adds_a_gpu(tmp_path: Path) -> None:
    file = tmp_path / "infermeter.yaml"
    file.write_text('pricing: spot\ngpus:\n  "NVIDIA H100 80GB HBM3":\n    prices: {on-demand: 2.10, spot: 1.25}\n'
                    '  "NVIDIA RTX 6000 Ada Generation":\n    memory_bytes: 51527024640\n'
                    "    memory_bandwidth_bytes_per_second: 960e9\n    peak_flops: {bf16: 364.2e12}\n"
                    "    prices: {on-demand: 1.10, spot: 0.70}\n")
    config = load_config(["--config", str(file)], {})
    assert config.pricing == "spot"
    from exporter.resolve import FactsResolver

    facts = FactsResolver(config)
    h100 = facts.gpu("NVIDIA H100 80GB HBM3")
    assert h100 is not None and facts.price(h100) == 1.25 and h100.memory_bandwidth_bytes_per_second == 3.35e12
    ada = facts.gpu("NVIDIA RTX 6000 Ada Generation")
    assert ada is not None and ada.memory_bandwidth_bytes_per_second == 960e9 and facts.price(ada) == 0.70
    assert load_config(["--config", str(file), "--gpu-hourly-cost", "3"], {}).gpu_hourly_cost == 3.0


@pytest.mark.parametrize(("text", "expected"), [
    ('gpus:\n  "New GPU":\n    memory_bytes: 1e10\n', "gpus (gpus in --config): gpu 'New GPU': "
                                                     "memory_bandwidth_bytes_per_second: missing"),
    ('gpus:\n  "NVIDIA L4":\n    prices: {hourly: 1}\n', "gpu 'NVIDIA L4': prices"),
    ("pricing: cheap\n", "--pricing (pricing in --config): expected one of on-demand, spot, reserved"),
    ("gpu-hourly-cost: -1\n", "--gpu-hourly-cost (gpu-hourly-cost in --config): expected a non-negative number"),
])
def test_bad_pricing_and_gpu_settings(tmp_path: Path, text: str, expected: str) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(["--config", str(file)], {})
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_model_config_is_checked_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "config.json"
    with pytest.raises(ConfigError, match=r"--model-config \(--model-config\): .*nope"):
        load_config(["--model-config", str(missing)], {})
    broken = tmp_path / "config.json"
    broken.write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(ConfigError, match="--model-config"):
        load_config(["--model-config", str(broken)], {})
    with pytest.raises(ConfigError, match="no engine named 'b'"):
        load_config(["--engine", "a=http://h:1", "--model-config",
                     "b=" + str(Path(__file__).resolve().parent.parent / "exporter/facts/models/"
                                "meta-llama--Llama-3.1-8B.json")], {})


@pytest.mark.parametrize(("text", "expected"), [
    # a flow sequence left open: the problem is where the parser gave up, the context where it began
    ("interval: 2\nengine: [http://a:1\nwindow: 60\n",
     "is not valid YAML at line 3, column 7: expected ',' or ']', but got ':' "
     "(while parsing a flow sequence that starts at line 2)"),
    ("interval: 2\n  window: 60\n", "is not valid YAML at line 2, column 9: mapping values are not allowed here"),
    ("interval: 2\n\twindow: 60\n", "is not valid YAML at line 2, column 1: found character '\\t' that cannot "
                                    "start any token (while scanning for the next token)"),
    ('engine: "http://a:1\n', "is not valid YAML at line 2, column 1: found unexpected end of stream "
                              "(while scanning a quoted scalar that starts at line 1)"),
])
def test_yaml_errors_keep_line_column_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    file = tmp_path / "infermeter.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(["--config", str(file)], {})
    message = str(raised.value)
    assert message == f"--config: {str(file)!r} {expected}"
    assert "\n" not in message


def test_toml_errors_keep_line_and_column(tmp_path: Path) -> None:
    file = tmp_path / "infermeter.toml"
    file.write_text("interval = 2\nwindow: 60\n")
    with pytest.raises(ConfigError) as raised:
        load_config(["--config", str(file)], {})
    assert str(raised.value) == (f"--config: {str(file)!r} is not valid TOML: Expected '=' after a key in a "
                                 "key/value pair (at line 2, column 7)")


def test_a_config_file_that_is_not_utf8_says_so(tmp_path: Path) -> None:
    file = tmp_path / "infermeter.yaml"
    file.write_bytes(b"interval: 2\n\xff\n")
    with pytest.raises(ConfigError) as raised:
        load_config(["--config", str(file)], {})
    assert str(raised.value) == f"--config: {str(file)!r} is not UTF-8 text (byte 12)"
