"""A real exporter with basic auth under a flood of wrong passwords from two addresses (127.0.0.2 and
127.0.0.3) while a scraper with the right password keeps scraping from 127.0.0.1: bcrypt runs at most what
each attacker's budget allows, the scraper always gets 200, and oversized passwords are plain 401s.
CPU and latency figures are in benchmarks/attack_auth.py, not here."""

from __future__ import annotations

import base64
import http.client
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import bcrypt
import pytest

from exporter.auth_limits import DEFAULT_LIMITS
from tests.process import ROOT, ExporterProcess

USER = "prometheus"
PASSWORD = "s3cret-Pa55word-7781"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()  # cheap: the cost is not the subject
ATTACKERS = ("127.0.0.2", "127.0.0.3")
FLOOD_SECONDS = 2.0


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _loopback_aliases_work() -> bool:
    try:
        with socket.socket() as s:
            s.bind((ATTACKERS[0], 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _loopback_aliases_work(), reason="cannot bind 127.0.0.2 (not Linux?)")


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    tmp = tmp_path_factory.mktemp("auth-flood")
    web = tmp / "web.yml"
    web.write_text(f"basic_auth_users:\n  {USER}: '{HASH}'\n")
    process = ExporterProcess(["--no-collector.nvml", "--interval", "0.5", "--web.config.file", str(web)], tmp)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _get(port: int, header: str, source: str = "127.0.0.1") -> tuple[int, str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        connection.request("GET", "/metrics", headers={"Authorization": header})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Retry-After")
    finally:
        connection.close()


def test_passwords_over_72_bytes_are_401_with_nothing_in_the_log(exporter: ExporterProcess) -> None:
    long_passwords = ["x" * 73, PASSWORD + "!" * 100, "é" * 2000]
    for password in long_passwords:
        assert _get(exporter.port, _basic(USER, password), source="127.0.0.5")[0] == 401
    assert _get(exporter.port, _basic(USER, PASSWORD))[0] == 200  # still serving
    log = exporter.log()
    assert "Traceback" not in log and "ValueError" not in log
    assert not any(password in log for password in long_passwords)


def test_a_two_address_flood_runs_bcrypt_within_budget_and_the_scraper_keeps_getting_200(
        exporter: ExporterProcess) -> None:
    port = exporter.port
    assert _get(port, _basic(USER, PASSWORD)) == (200, None)  # the scraper's credentials are now cached
    outcomes: dict[str, Counter[int]] = {address: Counter() for address in ATTACKERS}
    retry_afters: list[str | None] = []
    scrapes: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def attack(address: str, worker: int) -> None:
        n = 0
        while not stop.is_set():
            status, retry_after = _get(port, _basic(USER, f"guess-{worker}-{n}"), source=address)
            n += 1
            with lock:
                outcomes[address][status] += 1
                if status == 429:
                    retry_afters.append(retry_after)

    def scrape() -> None:
        while not stop.is_set():
            status, _ = _get(port, _basic(USER, PASSWORD))
            with lock:
                scrapes[status] += 1
            time.sleep(0.05)

    threads = [threading.Thread(target=attack, args=(address, worker))
               for address in ATTACKERS for worker in range(2)]
    threads.append(threading.Thread(target=scrape))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(FLOOD_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(15)
    elapsed = time.monotonic() - started

    budget = DEFAULT_LIMITS.client_burst + DEFAULT_LIMITS.client_per_second * elapsed
    for address, statuses in outcomes.items():
        # every 401 to a well-formed header is one bcrypt check; 429s are answered without one
        assert set(statuses) <= {401, 429}, statuses
        assert statuses[401] <= budget, f"{address}: {statuses[401]} checks, budget {budget:.1f} in {elapsed:.1f} s"
        assert statuses[429] > statuses[401], statuses  # it really was a flood, and it was refused
    assert retry_afters and all(value is not None and int(value) >= 1 for value in retry_afters)
    assert set(scrapes) == {200} and scrapes[200] >= 5, scrapes
    log = exporter.log()
    for address in ATTACKERS:
        assert log.count(f"too many failed logins from {address}") == 1, log[-2000:]
    assert "guess-" not in log and PASSWORD not in log and "Traceback" not in log


def test_the_flood_benchmark_runs_and_prints_its_table() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attack_auth.py"), "--seconds", "1",
                           "--scrapes", "4", "--cost", "4", "--attackers", "1", "--workers", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    quiet = re.search(r"^\| quiet \| (\d+) % \| [\d.]+ / [\d.]+ / [\d.]+ \| 0 \| - \|$", done.stdout, re.M)
    attack = re.search(r"^\| 1 attackers \| \d+ % \| .* \| 0 \| (\d+) / (\d+) / 0 \(", done.stdout, re.M)
    assert quiet and attack, done.stdout
    assert int(attack.group(1)) <= DEFAULT_LIMITS.client_burst + 2 * DEFAULT_LIMITS.client_per_second
    assert "0 tracebacks" in done.stdout
