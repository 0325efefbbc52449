"""A real Prometheus server (Debian's `prometheus` package) scraping given targets, for tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.process import free_port, stop_process, wait_for


def prometheus_binary(name: str = "prometheus") -> str:
    """The path of ``prometheus`` or ``promtool`` (Debian's `prometheus` package); fails under CI, which
    installs it, and skips elsewhere when it is missing."""
    binary = shutil.which(name)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run installs Debian's prometheus package")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return binary


@contextmanager
def prometheus_scraping(tmp_path: Path, target: str, ready_query: str) -> Iterator[str]:
    """Prometheus scraping ``target`` (host:port, job ``infermeter``) every second; yields its URL once
    ``ready_query`` returns data, and stops it afterwards."""
    binary = prometheus_binary()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                      f"scrape_configs:\n  - job_name: infermeter\n"
                      f"    static_configs: [{{targets: ['{target}']}}]\n")
    log = (tmp_path / "prometheus.log").open("w")
    server = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                               f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def scraped() -> bool:
        try:
            answer = requests.get(url + "/api/v1/query", params={"query": ready_query}, timeout=2).json()
        except (requests.RequestException, ValueError):
            return False
        return bool(answer.get("data", {}).get("result"))

    try:
        wait_for(scraped, timeout=30, interval=0.5)
        yield url
    finally:
        stop_process(server, timeout=10)
        log.close()
