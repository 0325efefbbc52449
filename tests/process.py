"""Start a real ``infermeter`` process for tests, with NVML faked at the pynvml boundary."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
FAKE_PYNVML = ROOT / "tests" / "fakes" / "pynvml_fake"

Samples = list[tuple[str, dict[str, str], float]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExporterProcess:
    """``python -m exporter`` on a free port; ``nvml_spec`` (a fake pynvml spec) or None for the real one."""

    def __init__(self, args: Sequence[str], tmp_path: Path, nvml_spec: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"exporter-{self.port}.log"
        environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        pythonpath = [str(ROOT)]
        if nvml_spec is not None:
            spec_file = tmp_path / f"nvml-{self.port}.json"
            spec_file.write_text(json.dumps(nvml_spec))
            environment["INFERMETER_FAKE_NVML"] = str(spec_file)
            pythonpath.insert(0, str(FAKE_PYNVML))
        environment["PYTHONPATH"] = os.pathsep.join(pythonpath)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [*self.command(), "--listen", f"127.0.0.1:{self.port}", *args],
            cwd=ROOT, env=environment, stdout=self._log, stderr=subprocess.STDOUT)

    @staticmethod
    def command() -> list[str]:
        return [sys.executable, "-m", "exporter"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200 and json.load(response)["last_collect_age_seconds"] is not None:
                        return
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"exporter not ready after {timeout}s:\n{self.log()}")

    def get(self, path: str = "/metrics") -> tuple[int, str, dict[str, str]]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), dict(err.headers)

    def metrics_text(self) -> str:
        status, body, _ = self.get("/metrics")
        assert status == 200
        return body

    def samples(self) -> Samples:
        return [(s.name, s.labels, s.value)
                for family in text_string_to_metric_families(self.metrics_text()) for s in family.samples]

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        stop_process(self.proc)
        self._log.close()
        return self.proc.returncode


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` whose labels include ``labels``; None if absent."""
    found = [v for n, got, v in samples if n == name and all(got.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    result = None
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
