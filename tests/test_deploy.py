"""Static checks of the container image recipe and the deployment manifests (no network, no containers)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import SETTINGS, load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose" / "docker-compose.yaml"
PORT = 9416
SECRET_WORDS = ("PASSWORD", "PASSWD", "TOKEN", "SECRET", "KEY", "CREDENTIAL")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    result = []
    for line in lines:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def _args(name: str) -> list[str]:
    return [rest for word, rest in _instructions() if word == name]


def _key_values(text: str) -> dict[str, str]:
    """KEY=VALUE pairs of an ENV / ARG / LABEL instruction (and the legacy `ENV KEY VALUE` form)."""
    tokens = shlex.split(text)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.partition("=")[::2] for token in tokens)


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------

def test_every_base_image_is_pinned_to_a_version_tag() -> None:
    froms = _args("FROM")
    assert froms, "no FROM"
    stages = set()
    for text in froms:
        tokens = text.split()
        image = next(t for t in tokens if not t.startswith("--"))
        if "as" in (t.lower() for t in tokens):
            stages.add(tokens[-1].lower())
        if image.lower() in stages or image.lower() == "scratch":
            continue
        name, _, digest = image.partition("@")
        assert ":" in name.rsplit("/", 1)[-1], f"{image}: no tag"
        tag = name.rsplit(":", 1)[1]
        assert tag != "latest", image
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{image}: tag is not an exact version"
        assert "$" not in image, f"{image}: base image from a build argument cannot be checked"
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), image


def test_runs_as_a_numeric_non_root_user() -> None:
    users = _args("USER")
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, users[-1]
    assert not group or (group.isdigit() and int(group) != 0), users[-1]


def test_exposes_the_exporter_port_and_has_the_entrypoint() -> None:
    exposed = {p.split("/")[0] for text in _args("EXPOSE") for p in text.split()}
    assert str(PORT) in exposed
    assert _args("ENTRYPOINT") == ['["infermeter"]']


def test_healthcheck_probes_healthz_without_curl() -> None:
    checks = _args("HEALTHCHECK")
    assert len(checks) == 1
    assert f"127.0.0.1:{PORT}/healthz" in checks[0]
    assert "urllib" in checks[0] and "curl" not in checks[0]


def test_oci_labels() -> None:
    labels: dict[str, str] = {}
    for text in _args("LABEL"):
        labels.update(_key_values(text))
    for key in ("title", "description", "source", "licenses", "version"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_python_runtime_environment() -> None:
    env: dict[str, str] = {}
    for text in _args("ENV"):
        env.update(_key_values(text))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_no_secrets_and_no_remote_add() -> None:
    for word, text in _instructions():
        if word in {"ENV", "ARG", "LABEL"}:
            for key, value in _key_values(text).items():
                if any(s in key.upper() for s in SECRET_WORDS):
                    assert not value, f"{word} {key} carries a value"
        if word == "ADD":
            assert not re.search(r"\b(https?|ftp)://", text), f"ADD of a URL: {text}"
        if word == "RUN":
            assert "--mount=type=secret" in text or not re.search(r"(PASSWORD|TOKEN)=\S", text), text


def test_build_installs_wheels_only() -> None:
    runs = " ".join(_args("RUN"))
    assert "pip wheel --no-deps --wheel-dir /wheels ." in runs
    assert "--no-index --find-links /wheels infermeter" in runs
    assert len(_args("FROM")) >= 2, "multi-stage build expected"


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `*` and `?` stop at `/`, `**` crosses it."""
    out = ""
    for part in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        if part.startswith("**"):
            out += "(.*/)?" if part.endswith("/") else ".*"
        elif part == "*":
            out += "[^/]*"
        elif part == "?":
            out += "[^/]"
        else:
            out += re.escape(part)
    return re.compile(out)


def _dockerignored(path: str) -> bool:
    """Whether the context drops `path`: a pattern matches the path or one of its parents, the last
    matching pattern wins and `!` re-includes (Docker's rules)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern.lstrip("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("path", [".git/config", ".venv/bin/python", "tests/test_config.py",
                                  "tests/fixtures/engines/SOURCES.md", "benchmarks/gpu_check.py",
                                  ".pytest_cache/README.md", "build/lib/x.py", ".whl/a.whl",
                                  "exporter/__pycache__/cli.cpython-312.pyc"])
def test_dockerignore_keeps_out(path: str) -> None:
    assert _dockerignored(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "LICENSE", "exporter/cli.py",
                                  "exporter/facts/gpus.toml"])
def test_dockerignore_keeps_what_the_wheel_needs(path: str) -> None:
    assert not _dockerignored(path)


def test_dockerfile_copies_only_what_is_in_the_context() -> None:
    for text in _args("COPY"):
        tokens = [t for t in text.split() if not t.startswith("--")]
        if "--from" in text:
            continue
        for source in tokens[:-1]:
            assert (ROOT / source).exists(), source
            assert not _dockerignored(source), f"COPY {source}: excluded by .dockerignore"


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


@cache
def _documents(path: Path) -> tuple[Any, ...]:
    """The documents of a YAML file, parsed once (callers must not change them)."""
    return tuple(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None)


def _k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in _documents(p)]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for path, obj in _k8s_objects():
        template = obj.get("spec", {}).get("template")
        if template:
            specs.append((f"{path.name}:{obj['metadata']['name']}", template["spec"]))
    return specs


def _infermeter_containers() -> list[tuple[str, dict[str, Any]]]:
    found = [(where, c) for where, spec in _pod_specs() for c in spec["containers"] if c["name"] == "infermeter"]
    assert len(found) >= 2, "expected infermeter in the sidecar Deployment and the DaemonSet"
    return found


def test_yaml_files_exist() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {"kubernetes/vllm-with-infermeter-sidecar.yaml", "kubernetes/daemonset.yaml",
            "kubernetes/podmonitor.yaml", "kubernetes/prometheusrule.yaml", "kubernetes/configmap.yaml",
            "compose/docker-compose.yaml", "compose/prometheus.yml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_yaml_parses(path: Path) -> None:
    assert _documents(path)


def test_kubernetes_objects_are_complete() -> None:
    kinds = set()
    for path, obj in _k8s_objects():
        assert obj.get("apiVersion") and obj.get("kind"), path.name
        assert obj.get("metadata", {}).get("name"), path.name
        kinds.add(obj["kind"])
    assert {"Deployment", "DaemonSet", "ConfigMap", "PodMonitor", "PrometheusRule"} <= kinds


def _pinned(image: str) -> bool:
    name = image.split("@", maxsplit=1)[0]
    last = name.rsplit("/", 1)[-1]
    return ("@sha256:" in image) or (":" in last and last.rsplit(":", 1)[1] not in {"latest", ""})


def test_container_images_are_pinned() -> None:
    images = [c["image"] for _, spec in _pod_specs() for c in spec.get("containers", [])]
    compose = _documents(COMPOSE)[0]
    images += [s["image"] for s in compose["services"].values() if "image" in s]
    assert images
    for image in images:
        assert _pinned(image), f"{image}: not pinned to a version"


def test_sidecar_shares_the_pod_with_a_gpu_engine() -> None:
    (spec,) = [s for where, s in _pod_specs() if where.startswith("vllm-with-infermeter-sidecar")]
    by_name = {c["name"]: c for c in spec["containers"]}
    assert by_name["vllm"]["image"].startswith("vllm/vllm-openai:")
    assert by_name["vllm"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model" in by_name["vllm"]["args"]
    assert 8000 in [p["containerPort"] for p in by_name["vllm"]["ports"]]
    args = by_name["infermeter"]["args"]
    assert any(a.endswith("=http://127.0.0.1:8000") for a in args)
    assert "nvidia.com/gpu" not in str(by_name["infermeter"].get("resources", {}))


def test_infermeter_containers_port_probes_and_security() -> None:
    for where, c in _infermeter_containers():
        assert c["ports"] == [{"name": "metrics", "containerPort": PORT}], where
        for probe in ("readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] == "/healthz" and get["port"] in (PORT, "metrics"), (where, probe)
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
        assert sc.get("runAsUser", 1) != 0, where
        assert c["resources"]["requests"] and c["resources"]["limits"], where
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env.get("NVIDIA_DRIVER_CAPABILITIES") == "utility", where


def test_infermeter_args_are_real_flags() -> None:
    known = {s.flag for s in SETTINGS if not s.file_only} | {"--no-collector.nvml", "--version"}
    for where, c in _infermeter_containers():
        args = c.get("args", [])
        flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
        assert flags, where
        for flag in flags:
            assert flag in known, f"{where}: unknown flag {flag}"
        # and they parse, with the config file swapped for none
        argv = [a.replace("$(NODE_IP)", "10.0.0.1") for a in args]
        i = argv.index("--config")
        del argv[i:i + 2]
        load_config(argv, {})


def test_infermeter_reads_the_configmap_at_its_mount() -> None:
    for where, c in _infermeter_containers():
        args = c["args"]
        path = args[args.index("--config") + 1]
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert path == "/etc/infermeter/config.yaml", where
        spec = next(s for w, s in _pod_specs() if w == where)
        volumes = {v["name"]: v for v in spec["volumes"]}
        (name,) = [n for n, mount in mounts.items() if path.startswith(mount + "/")]
        assert volumes[name]["configMap"]["name"] == "infermeter-config", where


def test_configmap_is_a_valid_infermeter_config(tmp_path: Path) -> None:
    (configmap,) = _documents(K8S / "configmap.yaml")
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"] == "infermeter-config"
    text = configmap["data"]["config.yaml"]
    file = tmp_path / "config.yaml"
    file.write_text(text, encoding="utf-8")
    config = load_config(["--config", str(file)], {})
    assert config.slo_ttft_seconds and config.slo_tpot_seconds and config.budget_cost_per_request_dollars
    assert config.gpu_specs and "NVIDIA H100 80GB HBM3" in config.gpu_specs


def test_podmonitor_scrapes_the_metrics_port_and_adds_kubernetes_labels() -> None:
    (monitor,) = _documents(K8S / "podmonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    targets = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert targets["pod"] == ["__meta_kubernetes_pod_name"]
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]
    assert targets["node"] == ["__meta_kubernetes_pod_node_name"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    for where, _spec in _pod_specs():
        obj = next(o for p, o in _k8s_objects() if where == f"{p.name}:{o['metadata']['name']}")
        labels = obj["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{where}: not selected by the PodMonitor"


def test_daemonset_targets_gpu_nodes() -> None:
    (ds,) = _documents(K8S / "daemonset.yaml")
    spec = ds["spec"]["template"]["spec"]
    assert spec.get("hostNetwork", False) is False
    assert spec["nodeSelector"] and spec["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_prometheusrule_groups_equal_the_rule_files() -> None:
    expected: list[Any] = []
    for path in sorted((ROOT / "alerts").glob("*.yaml")):
        expected.extend(yaml.safe_load(path.read_text(encoding="utf-8"))["groups"])
    (rule,) = _documents(K8S / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == expected
    result = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------------

def test_compose_bind_mounts_exist() -> None:
    compose = _documents(COMPOSE)[0]
    base = COMPOSE.parent
    sources = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                sources.append((name, source))
        build = service.get("build")
        if build:
            context = base / (build["context"] if isinstance(build, dict) else build)
            assert (context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict)
                               else "Dockerfile")).is_file(), name
    assert sources
    for name, source in sources:
        assert (base / source).resolve().exists(), f"{name}: {source} does not exist"
        assert (base / source).resolve().is_relative_to(ROOT), f"{name}: {source} is outside the repository"


def test_compose_wires_the_demo() -> None:
    services = _documents(COMPOSE)[0]["services"]
    assert services["engine"]["command"][:1] == ["simulate"]
    command = services["infermeter"]["command"]
    assert "sim=http://engine:8000" in command and "--no-collector.nvml" in command
    load_config(command, {})
    mounts = " ".join(services["grafana"]["volumes"])
    for dashboard in sorted((ROOT / "dashboards").glob("*.json")):
        assert f"dashboards/{dashboard.name}:/var/lib/grafana/dashboards/infermeter/" in mounts, dashboard.name
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/infermeter"
    rules = " ".join(services["prometheus"]["volumes"])
    for path in sorted((ROOT / "alerts").glob("*.yaml")):
        assert f"alerts/{path.name}:/etc/prometheus/rules/" in rules, path.name
    prometheus = yaml.safe_load((COMPOSE.parent / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"infermeter:9416", "engine:8000"} <= targets
