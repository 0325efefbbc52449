"""Settings, declared once as data: each has a flag, an environment variable and a config-file key.

Precedence: flag > environment (``INFERMETER_<FLAG_NAME>``) > config file (``--config``, YAML or
TOML) > default. Every value is validated at start; a bad one raises :class:`ConfigError` with one
line naming the setting, where it came from and what to fix.
Run ``python -m exporter.config`` to print the README's CLI reference.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter import __version__

DEFAULT_PORT = 9416
# The window holds one sample per engine per interval; every cycle derives over all of them.
MAX_WINDOW_SAMPLES = 1000


class ConfigError(Exception):
    """A setting is invalid; the message is one line that says which and how to fix it."""


@dataclass(frozen=True)
class EngineTarget:
    """An inference server to read: its name (a label value), base URL and pinned model (--engine-model)."""

    name: str
    url: str
    model: str | None = None


@dataclass(frozen=True)
class Config:
    """The validated configuration the exporter runs with."""

    engines: tuple[EngineTarget, ...] = ()
    engine_gpus: Mapping[str, tuple[int, ...]] | None = None
    listen_host: str = "0.0.0.0"
    listen_port: int = DEFAULT_PORT
    interval: float = 5.0
    window: float = 300.0
    timeout: float = 10.0
    max_body_bytes: int = 16 * 1024 * 1024
    nvml: bool = True
    log_level: str = "info"
    # pricing and the analytic model
    gpu_hourly_cost: float | None = None
    pricing: str = "on-demand"
    # engine name ("" = every engine) -> path of a Hugging Face config.json or its directory
    model_configs: Mapping[str, str] | None = None
    slo_ttft_seconds: float | None = None
    slo_tpot_seconds: float | None = None
    budget_cost_per_request_dollars: float | None = None
    # NVML product name -> spec or price fields (the config file's `gpus` table), validated at start
    gpu_specs: Mapping[str, Mapping[str, Any]] | None = None
    # exporter-toolkit style web config (TLS, basic auth), validated at start
    web_config_file: str | None = None
    demo: bool = False
    # --demo: engine name -> simulated scenario (set by exporter.demo)
    demo_engines: Mapping[str, str] | None = None
    # engine name ("" = every engine) -> bearer token; never logged or shown
    engine_tokens: Mapping[str, str] | None = field(default=None, repr=False)
    # live what-if advice: on/off, the GPU models it considers (empty: the whole catalogue) and the
    # savings share the InfermeterCheaperGPUAvailable alert waits for
    whatif: bool = True
    whatif_gpus: tuple[str, ...] = ()
    whatif_savings_threshold_ratio: float = 0.25


# --- value parsers: each takes the raw value and returns it typed, or raises ValueError(what's wrong) ---

def _finite(raw: object, what: str, allowed: Callable[[float], bool], wanted: str) -> float:
    """``raw`` as a finite float for which ``allowed`` holds; ValueError naming ``what`` or ``wanted``."""
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected {what}, got {str(raw)[:40]!r}") from None
    if not math.isfinite(value) or not allowed(value):
        raise ValueError(f"expected {wanted}, got {raw!r}")
    return value


def _positive_seconds(raw: object) -> float:
    return _finite(raw, "a number of seconds", lambda v: v > 0, "a positive number of seconds")


def _positive_int(raw: object) -> int:
    try:
        value = int(str(raw))
    except ValueError:
        raise ValueError(f"expected a positive whole number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"expected a positive whole number, got {raw!r}")
    return value


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _log_level(raw: object) -> str:
    text = str(raw).strip().lower()
    if text not in {"debug", "info", "warning", "error"}:
        raise ValueError(f"expected one of debug, info, warning, error; got {raw!r}")
    return text


def _listen(raw: object) -> tuple[str, int]:
    text = str(raw).strip()
    match = re.fullmatch(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)", text)
    if not match:
        raise ValueError(f"expected HOST:PORT such as 0.0.0.0:{DEFAULT_PORT} or [::]:{DEFAULT_PORT}, got {raw!r}")
    host = match.group("v6") or match.group("host") or "0.0.0.0"
    if match.group("v6"):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    port = int(match.group("port"))
    if port > 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host, port


def _engine(raw: object) -> EngineTarget:
    text = str(raw).strip()
    name, sep, url = text.partition("=")
    if not sep or "://" in name:
        name, url = "", text
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"expected [NAME=]URL with an http(s) URL such as http://127.0.0.1:8000, got {raw!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url!r}") from None
    path = parts.path.rstrip("/")
    if path.endswith("/metrics"):  # a user pasted the metrics URL: the base is what we need
        path = path[: -len("/metrics")]
    base = f"{parts.scheme}://{parts.netloc}{path}"
    if not name:
        name = f"{parts.hostname}:{port or (443 if parts.scheme == 'https' else 80)}"
    if not re.fullmatch(r"[A-Za-z0-9_.:\-\[\]/]+", name):
        raise ValueError(f"engine name {name!r} may only hold letters, digits and _ . : - / [ ]")
    return EngineTarget(name=name, url=base)


def _engine_gpus(raw: object) -> tuple[str, tuple[int, ...]]:
    text = str(raw).strip()
    name, sep, indices = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"expected NAME=0,1 (engine name, GPU indices), got {raw!r}")
    try:
        gpus = tuple(int(i) for i in indices.split(",") if i.strip())
    except ValueError:
        raise ValueError(f"GPU indices must be whole numbers, got {indices!r}") from None
    if not gpus or any(i < 0 for i in gpus):
        raise ValueError(f"expected one or more GPU indices (0, 1, ...), got {indices!r}")
    return name.strip(), gpus


def _engine_model(raw: object) -> tuple[str, str]:
    engine, sep, model = str(raw).strip().partition("=")
    if not sep or not engine.strip() or not model.strip():
        raise ValueError(f"expected ENGINE=NAME (an engine name, the model to follow), got {raw!r}")
    return engine.strip(), model.strip()


def _path(raw: object) -> str:
    return str(raw)


def _gpu_name(raw: object) -> str:
    text = str(raw).strip()
    if not text:
        raise ValueError("expected a GPU model as NVML names it, e.g. 'NVIDIA H100 80GB HBM3'")
    return text


def _share(raw: object) -> float:
    return _finite(raw, "a share between 0 and 1 such as 0.25", lambda v: 0 < v < 1,
                   "a share between 0 and 1 (exclusive) such as 0.25")


def _dollars(raw: object) -> float:
    return _finite(raw, "dollars per GPU-hour such as 2.49", lambda v: v >= 0,
                   "a non-negative number of dollars per GPU-hour")


PRICING_MODELS = ("on-demand", "spot", "reserved")


def _pricing(raw: object) -> str:
    text = str(raw).strip().lower()
    if text not in PRICING_MODELS:
        raise ValueError(f"expected one of {', '.join(PRICING_MODELS)}; got {raw!r}")
    return text


def _model_config(raw: object) -> tuple[str, str]:
    text = str(raw).strip()
    engine, sep, path = text.partition("=")
    if not sep:
        engine, path = "", text
    if not path:
        raise ValueError(f"expected [ENGINE=]PATH to a config.json or a model directory, got {raw!r}")
    from exporter.facts.models import load

    try:
        load(path)
    except (OSError, ValueError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path!r}: {detail}") from None
    return engine.strip(), path


def _web_config(raw: object) -> str:
    from exporter.webconfig import load_web_config

    try:
        load_web_config(str(raw))  # raises ValueError naming the key
    except ValueError as err:  # keep it one line whatever the path holds
        raise ValueError(" ".join(str(err).split())) from None
    return str(raw)


def _token_file(raw: object) -> tuple[str, str]:
    text = str(raw).strip()
    engine, sep, path = text.partition("=")
    if not sep:
        engine, path = "", text
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path!r}: {getattr(err, 'strerror', None) or err}") from None
    if not token or "\n" in token:
        raise ValueError(f"{path!r} must hold one bearer token on one line")
    return engine.strip(), token


def _gpu_specs(raw: object) -> dict[str, Mapping[str, Any]]:
    if not isinstance(raw, Mapping):
        raise ValueError("expected a table of NVML GPU names, each with spec or price fields")
    from exporter.facts.gpus import find, spec_from_mapping

    specs: dict[str, Mapping[str, Any]] = {}
    for name, fields in raw.items():
        if not isinstance(fields, Mapping):
            raise ValueError(f"gpu {name!r}: expected a table of fields")
        spec_from_mapping(str(name), fields, find(str(name)))  # raises ValueError naming the field
        specs[str(name)] = dict(fields)
    return specs


@dataclass(frozen=True)
class Setting:
    """One setting: ``--NAME`` flag, ``INFERMETER_<NAME>`` variable, ``NAME`` key in the config file."""

    name: str
    help: str
    parse: Callable[[object], Any]
    default: object = None
    metavar: str = ""
    repeatable: bool = False
    boolean: bool = False
    # only in the config file (structured values): no flag, no environment variable
    file_only: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name

    @property
    def env(self) -> str:
        return "INFERMETER_" + re.sub(r"[^A-Z0-9]", "_", self.name.upper())


SETTINGS: tuple[Setting, ...] = (
    Setting("engine", "Base URL of an inference server, e.g. http://127.0.0.1:8000; repeatable. NAME (a label "
            "value) defaults to host:port. Reads URL/metrics and the identity endpoint (vLLM /v1/models, "
            "TGI /info, SGLang /v1/models and /server_info; Triton has none); the engine kind (vLLM, TGI, Triton, "
            "SGLang) is detected from the metric names.",
            _engine, (), "[NAME=]URL", repeatable=True),
    Setting("engine-gpus", "GPU indices an engine uses (tensor parallel); repeatable. Without it one engine owns "
            "every GPU, and several engines split the GPUs in order.",
            _engine_gpus, (), "NAME=0,1", repeatable=True),
    Setting("engine-model", "Model to follow on an engine that serves several (Triton), e.g. trt=tensorrt_llm; "
            "repeatable. Default: the model with the largest cumulative request duration. A read fails while the "
            "model is absent; vLLM, TGI and SGLang serve one model and only check it (docs/engines.md).",
            _engine_model, (), "ENGINE=NAME", repeatable=True),
    Setting("listen", "Address to serve /metrics on.", _listen, f"0.0.0.0:{DEFAULT_PORT}", "HOST:PORT"),
    Setting("interval", "Collection period in seconds.", _positive_seconds, 5.0, "SECONDS"),
    Setting("window", "Sliding window in seconds for rates and quantiles.", _positive_seconds, 300.0, "SECONDS"),
    Setting("timeout", "Deadline in seconds for reading one source (engine or NVML), as Prometheus' default "
            "scrape timeout; may exceed --interval: a read still running when a cycle ends is pending (the "
            "source shows what it showed last) until it answers or the deadline passes.", _positive_seconds, 10.0,
            "SECONDS"),
    Setting("max-body-bytes", "Largest engine response read; longer bodies count as an error.",
            _positive_int, 16 * 1024 * 1024, "BYTES"),
    Setting("collector.nvml", "Read GPUs through NVML; --no-collector.nvml turns it off (e.g. beside "
            "dcgm-exporter).", _boolean, True, boolean=True),
    Setting("log-level", "debug, info, warning or error.", _log_level, "info", "LEVEL"),
    Setting("gpu-hourly-cost", "Price of one GPU-hour in dollars, for every GPU; overrides the GPU catalogue's "
            "price.", _dollars, None, "DOLLARS"),
    Setting("pricing", "Which catalogue price to use: on-demand, spot or reserved.", _pricing, "on-demand",
            "MODEL"),
    Setting("model-config", "Hugging Face config.json (or the model directory) of an engine's model; repeatable. "
            "Without ENGINE= it applies to every engine. Default: the directory vLLM reports in /v1/models "
            "when readable, else the built-in catalogue by model name.", _model_config, (), "[ENGINE=]PATH",
            repeatable=True),
    Setting("slo-ttft-seconds", "Time-to-first-token target for right-sizing (and exported for alerts).",
            _positive_seconds, None, "SECONDS"),
    Setting("slo-tpot-seconds", "Time-per-output-token target for right-sizing (and exported for alerts).",
            _positive_seconds, None, "SECONDS"),
    Setting("engine-token-file", "File holding a bearer token sent to an engine (Authorization: Bearer); "
            "repeatable; without ENGINE= for every engine. INFERMETER_ENGINE_TOKEN holds one directly. Tokens "
            "never appear in logs, labels or pages.", _token_file, (), "[ENGINE=]PATH", repeatable=True),
    Setting("budget-cost-per-request-dollars", "What a request may cost; exported for the "
            "InfermeterCostPerRequestHigh alert.", _dollars, None, "DOLLARS"),
    Setting("whatif", "Live what-if advice: plan each engine's observed load on every candidate GPU model "
            "(infermeter_whatif_*, docs/planning.md).", _boolean, True, boolean=True),
    Setting("whatif-gpu", "A GPU model (its NVML name) the what-if advice considers; repeatable. Default: every GPU "
            "in the catalogue and the config's gpus: table.", _gpu_name, (), "NAME", repeatable=True),
    Setting("whatif-savings-threshold-ratio", "Share of an engine's hourly cost another GPU model must save for "
            "InfermeterCheaperGPUAvailable; exported for the alert.", _share, 0.25, "RATIO"),
    Setting("gpus", "Specs or prices for GPUs by NVML name, e.g. a GPU the catalogue lacks, or your negotiated "
            "price (see docs/analytic-model.md).", _gpu_specs, None, file_only=True),
    Setting("web.config.file", "TLS and basic-auth settings for /metrics, in the format of Prometheus' "
            "exporter-toolkit (tls_server_config, basic_auth_users with bcrypt hashes).", _web_config, None,
            "FILE"),
    Setting("demo", "Run against three built-in simulated vLLM engines on simulated GPUs (clearly marked as "
            "such), to see every metric move without a GPU. Refused with --engine or --model-config.",
            _boolean, False, boolean=True),
    Setting("config", "YAML or TOML file with any of these settings as keys.", _path, None, "FILE"),
)

BY_NAME = {s.name: s for s in SETTINGS}


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infermeter",
        description="Prometheus exporter for GPU nodes serving LLMs (NVML + vLLM/TGI/Triton/SGLang). "
                    "Every flag also reads INFERMETER_<FLAG> and a key in --config. "
                    "Also: `infermeter report --help` (a right-sizing report from a running exporter).",
        argument_default=argparse.SUPPRESS,
    )
    for s in SETTINGS:
        if s.file_only:
            continue
        if s.boolean:
            parser.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction,
                                help=f"{s.help} (default: {'on' if s.default else 'off'}; env {s.env})")
        else:
            default = "" if s.default in (None, ()) else f"; default {s.default}"
            parser.add_argument(s.flag, dest=s.name, metavar=s.metavar or None,
                                action="append" if s.repeatable else "store",
                                help=f"{s.help} (env {s.env}{default})")
    parser.add_argument("--version", action="version", version=f"infermeter {__version__}")
    return parser


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and full.replace("_", "-") not in BY_NAME:
            flat.update(_flatten(value, full + "."))
        else:
            flat[full.replace("_", "-")] = value
    return flat


def _parse_problem(err: Exception) -> str:
    """Where and what a YAML or TOML parser found wrong, on one line: `` at line 3, column 7: problem``.

    PyYAML's marks count from 0 and its message spans lines (with the offending text); tomllib's message
    already ends with "(at line L, column C)".
    """
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or (str(err).splitlines()[0] if str(err) else type(err).__name__)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
        problem += f" ({context} that starts at line {context_mark.line + 1})"
    elif context:
        problem += f" ({context})"
    return f"{where}: {' '.join(str(problem).split())}"


def load_file(path: str) -> dict[str, Any]:
    """Read a YAML or TOML config file into {setting name: raw value}."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config: {path!r} is not UTF-8 text (byte {err.start})") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise ConfigError(f"--config: cannot read {path!r}: {getattr(err, 'strerror', None) or err}") from None
    kind = "TOML" if file.suffix.lower() == ".toml" else "YAML"
    try:
        if kind == "TOML":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
            data: Any = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as err:  # both parsers raise their own error types
        raise ConfigError(f"--config: {path!r} is not valid {kind}{_parse_problem(err)}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"--config: {path!r} must hold a mapping of setting names to values")
    flat = _flatten(data)
    unknown = sorted(set(flat) - set(BY_NAME) - {"config"})
    if unknown:
        raise ConfigError(f"--config: {path!r}: unknown setting {unknown[0]!r}; known: {', '.join(BY_NAME)}")
    return flat


def _split_env_list(text: str) -> list[str]:
    return [part for part in re.split(r"[\s;]+", text.strip()) if part]


def _file_list(setting: Setting, value: object) -> list[object]:
    if setting.name == "engine-model" and isinstance(value, Mapping):
        return [f"{name}={model}" for name, model in value.items()]
    if setting.name == "engine-gpus" and isinstance(value, Mapping):
        return [f"{name}={','.join(str(i) for i in (gpus if isinstance(gpus, list) else [gpus]))}"
                for name, gpus in value.items()]
    if isinstance(value, list):
        return list(value)
    return [value]


def _raw_values(args: Mapping[str, Any], env: Mapping[str, str],
                file_values: Mapping[str, Any]) -> dict[str, tuple[object, str]]:
    """Pick each setting's raw value by precedence, with a description of where it came from."""
    chosen: dict[str, tuple[object, str]] = {}
    for s in SETTINGS:
        if s.name in args:
            chosen[s.name] = (args[s.name], f"{s.flag}")
        elif not s.file_only and s.env in env and env[s.env].strip() != "":
            raw_env = env[s.env]
            chosen[s.name] = (_split_env_list(raw_env) if s.repeatable else raw_env, f"{s.env}")
        elif s.name in file_values:
            value = file_values[s.name]
            chosen[s.name] = (_file_list(s, value) if s.repeatable else value, f"{s.name} in --config")
        else:
            chosen[s.name] = (s.default, "default")
    return chosen


def _parse(setting: Setting, raw: object, origin: str) -> Any:
    try:
        if setting.repeatable:
            items = raw if isinstance(raw, (list, tuple)) else [raw]
            return [setting.parse(item) for item in items]
        return None if raw is None else setting.parse(raw)
    except ValueError as err:
        label = setting.name if setting.file_only else setting.flag
        raise ConfigError(f"{label} ({origin}): {err}") from None


# settings --demo would replace with its own: refused beside it rather than dropped in silence
DEMO_REPLACES = ("engine", "model-config")


def _check_demo(values: Mapping[str, Any], raw: Mapping[str, tuple[object, str]]) -> None:
    if not values["demo"]:
        return
    for name in DEMO_REPLACES:
        if values[name]:
            raise ConfigError(f"--demo ({raw['demo'][1]}) cannot be combined with {BY_NAME[name].flag} "
                              f"({raw[name][1]}): the demo reads only its simulated engines and models; drop "
                              f"--demo to read yours")


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Build the validated Config from flags, environment, the optional file and defaults."""
    env = dict(environ) if environ is not None else {}
    args = vars(_argument_parser().parse_args(argv))
    config_path = args.get("config") or env.get(BY_NAME["config"].env) or None
    file_values = load_file(config_path) if config_path else {}
    raw = _raw_values(args, env, file_values)
    values = {name: _parse(BY_NAME[name], value, origin) for name, (value, origin) in raw.items()}

    _check_demo(values, raw)
    engines: list[EngineTarget] = values["engine"]
    names = [e.name for e in engines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--engine ({raw['engine'][1]}): engine name {duplicates[0]!r} is used twice; "
                          "give each engine its own NAME=URL")
    gpu_map: dict[str, tuple[int, ...]] = {}
    for name, gpus in values["engine-gpus"]:
        if name not in names:
            raise ConfigError(f"--engine-gpus ({raw['engine-gpus'][1]}): no engine named {name!r}; "
                              f"engines are: {', '.join(names) or 'none (add --engine)'}")
        gpu_map[name] = gpus
    pins: dict[str, str] = {}
    for name, model in values["engine-model"]:
        if name not in names:
            raise ConfigError(f"--engine-model ({raw['engine-model'][1]}): no engine named {name!r}; "
                              f"engines are: {', '.join(names) or 'none (add --engine)'}")
        if pins.setdefault(name, model) != model:
            raise ConfigError(f"--engine-model ({raw['engine-model'][1]}): engine {name!r} is pinned to two models, "
                              f"{pins[name]!r} and {model!r}")
    engines = [replace(e, model=pins.get(e.name)) for e in engines]

    interval: float = values["interval"]
    window: float = values["window"]
    if window < 2 * interval:
        raise ConfigError(f"--window ({raw['window'][1]}): {window:g}s is too short; it must be at least twice "
                          f"--interval ({interval:g}s) so that a rate has two samples")
    if window / interval > MAX_WINDOW_SAMPLES:
        raise ConfigError(f"--window ({raw['window'][1]}): {window:g}s at --interval {interval:g}s keeps "
                          f"{window / interval:.0f} samples per engine (at most {MAX_WINDOW_SAMPLES}); shorten the "
                          "window or lengthen the interval")
    timeout: float = values["timeout"]
    host, port = values["listen"]
    tokens = dict(values["engine-token-file"])
    if env.get("INFERMETER_ENGINE_TOKEN", "").strip() and "" not in tokens:
        tokens[""] = env["INFERMETER_ENGINE_TOKEN"].strip()
    unknown_token_engines = sorted(set(tokens) - set(names) - {""})
    if unknown_token_engines:
        raise ConfigError(f"--engine-token-file ({raw['engine-token-file'][1]}): no engine named "
                          f"{unknown_token_engines[0]!r}; engines are: {', '.join(names) or 'none'}")
    model_configs = dict(values["model-config"])
    unknown_engines = sorted(set(model_configs) - set(names) - {""})
    if unknown_engines:
        raise ConfigError(f"--model-config ({raw['model-config'][1]}): no engine named {unknown_engines[0]!r}; "
                          f"engines are: {', '.join(names) or 'none (add --engine)'}")
    whatif_gpus = tuple(dict.fromkeys(values["whatif-gpu"]))
    if whatif_gpus:
        from exporter.facts.gpus import find, spec_from_mapping
        user = {name: spec_from_mapping(name, fields, find(name)) for name, fields in (values["gpus"] or {}).items()}
        unknown = [name for name in whatif_gpus if find(name, user) is None]
        if unknown:
            raise ConfigError(f"--whatif-gpu ({raw['whatif-gpu'][1]}): {unknown[0]!r} is neither in the GPU catalogue "
                              "(exporter/facts/gpus.toml) nor under gpus: in the config file")
    return Config(
        engines=tuple(engines),
        engine_gpus=gpu_map or None,
        listen_host=host,
        listen_port=port,
        interval=interval,
        window=window,
        timeout=timeout,
        max_body_bytes=values["max-body-bytes"],
        nvml=values["collector.nvml"],
        log_level=values["log-level"],
        gpu_hourly_cost=values["gpu-hourly-cost"],
        pricing=values["pricing"],
        model_configs=model_configs or None,
        slo_ttft_seconds=values["slo-ttft-seconds"],
        slo_tpot_seconds=values["slo-tpot-seconds"],
        budget_cost_per_request_dollars=values["budget-cost-per-request-dollars"],
        gpu_specs=values["gpus"],
        engine_tokens=tokens or None,
        web_config_file=values["web.config.file"],
        demo=values["demo"],
        whatif=values["whatif"],
        whatif_gpus=whatif_gpus,
        whatif_savings_threshold_ratio=values["whatif-savings-threshold-ratio"],
    )


def markdown_reference() -> str:
    """The README's CLI reference table."""
    rows = ["| Flag | Environment | Config key | Default | Description |", "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        flag = f"`{s.flag}` / `--no-{s.name}`" if s.boolean else f"`{s.flag} {s.metavar}`"
        default = "on" if s.default is True else ("" if s.default in (None, ()) else f"`{s.default}`")
        key = "" if s.name == "config" else f"`{s.name}`"
        env = f"`{s.env}`"
        if s.file_only:
            flag, env = "(config file only)", ""
        rows.append(f"| {flag} | {env} | {key} | {default} | {s.help} |")
    return "\n".join(rows) + "\n"


def describe(config: Config) -> str:
    """A one-line JSON summary of the effective configuration, for the start-up log."""
    return json.dumps({
        "engines": "simulated (--demo)" if config.demo else {e.name: e.url for e in config.engines},
        "engine_gpus": config.engine_gpus,
        "listen": f"{config.listen_host}:{config.listen_port}",
        "interval": config.interval, "window": config.window, "timeout": config.timeout,
        "nvml": config.nvml,
    }, default=list)


if __name__ == "__main__":
    sys.stdout.write(markdown_reference())
