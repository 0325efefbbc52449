"""The bounded GET every engine read goes through: deadline and size cap hold whatever the server does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from exporter.sources import SourceError, http
from tests.fakes.engine import FakeEngine, FakeEngineServer

VLLM = Path(__file__).parent / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"


@pytest.fixture
def engine() -> Iterator[tuple[FakeEngine, str]]:
    fake = FakeEngine(VLLM)
    with FakeEngineServer(fake) as server:
        yield fake, server.url


def test_a_whole_body_is_read(engine: tuple[FakeEngine, str]) -> None:
    _, url = engine
    response = http.get(requests.Session(), url + "/metrics", time.monotonic() + 5, 1 << 24)
    assert response.status == 200
    assert b"vllm:prompt_tokens_total" in response.body


def test_a_trickling_body_is_cut_at_the_deadline_not_at_the_next_chunk(engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    # 7 bytes every 20 ms: 64 KiB (one read chunk) would take about 3 minutes to arrive
    fake.set_endless(b"# slow\n", 0.02)
    began = time.monotonic()
    with pytest.raises(SourceError, match="deadline"):
        http.get(requests.Session(), url + "/metrics", began + 0.5, 1 << 24)
    # the deadline is checked after every socket read, each at most one 20 ms pause long
    assert time.monotonic() - began < 5.0


def test_an_endless_fast_body_stops_at_the_size_cap(engine: tuple[FakeEngine, str]) -> None:
    fake, url = engine
    fake.set_endless(b"# more\n" * 1000, 0.0)
    with pytest.raises(SourceError, match="--max-body-bytes"):
        http.get(requests.Session(), url + "/metrics", time.monotonic() + 30, 256 * 1024)


def test_no_time_left_is_an_error_before_any_request() -> None:
    with pytest.raises(SourceError, match="no time left"):
        http.get(requests.Session(), "http://127.0.0.1:9/metrics", time.monotonic() - 1, 1024)
