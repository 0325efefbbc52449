"""A source that fails every cycle must leave memory flat (issue 12, defect 1).

Before the fix each failed read's exception stayed reachable from the next cycle (through the futures and
the previous cycle's locals), with its traceback's frames and whatever they held: ~28 KB per failed read,
and the whole body read so far when a response went over --max-body-bytes (16 MiB per cycle). Here every
failure kind runs hundreds of in-process collection cycles; live exceptions, traced memory and threads
must not grow.
"""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import pytest

from exporter.collection import NVML, Collection, engine_collector
from exporter.config import Config, EngineTarget
from exporter.sources.engine import EngineSource
from exporter.sources.nvml import NvmlSource
from tests.fakes.bodies import FixedResponseServer, gzip_bomb
from tests.fakes.engine import FakeEngine, FakeEngineServer
from tests.fakes.nvml_specs import load_fake_pynvml, missing_library
from tests.process import ROOT, free_port

FIXTURE = ROOT / "tests" / "fixtures" / "engines" / "vllm-0.32.0-real-a.txt"
CAP = 1 << 20  # --max-body-bytes for these runs
WARM_UP = 30
CYCLES = 300
# what may legitimately appear between the two measurements (interning, caches that fill once); the
# leak was ~28 KB per cycle (8 MB here), and CAP per cycle over the cap
GROWTH_BYTES = 256 * 1024
BOMB = gzip_bomb(64)  # 64 KiB that inflate to 64 MiB


@dataclass(frozen=True)
class Rig:
    collection: Collection
    collector: str


def _engine_rig(url: str) -> Rig:
    config = Config(engines=(EngineTarget("e", url),), interval=1.0, window=60.0, timeout=2.0, max_body_bytes=CAP)
    return Rig(Collection(config, None, [EngineSource(config.engines[0], 2.0, CAP)]), engine_collector("e"))


@contextmanager
def engine_down() -> Iterator[Rig]:
    yield _engine_rig(f"http://127.0.0.1:{free_port()}")  # nothing listens there: connection refused


@contextmanager
def faulty_engine(fault: Callable[[FakeEngine], None]) -> Iterator[Rig]:
    engine = FakeEngine(FIXTURE)
    fault(engine)
    with FakeEngineServer(engine) as server:
        yield _engine_rig(server.url)


@contextmanager
def gzip_bomb_engine() -> Iterator[Rig]:
    with FixedResponseServer(BOMB, {"Content-Encoding": "gzip"}) as url:
        yield _engine_rig(url)


@contextmanager
def nvml_init_failure() -> Iterator[Rig]:
    nvml = load_fake_pynvml()
    nvml.configure(missing_library())
    config = Config(interval=1.0, window=60.0, timeout=2.0)
    yield Rig(Collection(config, NvmlSource(nvml), []), NVML)


def _http_500(engine: FakeEngine) -> None:
    engine.set_response(500, b"internal error\n")


def _over_cap_declared(engine: FakeEngine) -> None:
    engine.set_response(200, b"# padding\n" * (2 * CAP // 10))  # Content-Length says 2 MiB


def _over_cap_streamed(engine: FakeEngine) -> None:
    engine.set_endless(b"# padding padding padding padding padding padding\n" * 1300, pause=0)  # no length


FAULTS: dict[str, Callable[[], AbstractContextManager[Rig]]] = {
    "engine down": engine_down,
    "engine HTTP 500": lambda: faulty_engine(_http_500),
    "body over the cap, declared": lambda: faulty_engine(_over_cap_declared),
    "body over the cap, streamed": lambda: faulty_engine(_over_cap_streamed),
    "gzip bomb": gzip_bomb_engine,
    "NVML init failure": nvml_init_failure,
}


def _live_exceptions() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, BaseException))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_failing_source_leaves_memory_flat(fault: str) -> None:
    with FAULTS[fault]() as rig:
        for _ in range(WARM_UP):
            snapshot = rig.collection.run_once()
        assert not snapshot.collectors[rig.collector].success  # the fault really fails every read
        gc.collect()
        tracemalloc.start()
        try:
            before_bytes = tracemalloc.get_traced_memory()[0]
            before_exceptions, before_threads = _live_exceptions(), threading.active_count()
            for _ in range(CYCLES):
                snapshot = rig.collection.run_once()
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - before_bytes
        finally:
            tracemalloc.stop()
        status = snapshot.collectors[rig.collector]
        assert not status.success and status.errors_total == WARM_UP + CYCLES
        assert _live_exceptions() <= before_exceptions, "failed reads leave exceptions behind"
        assert threading.active_count() <= before_threads + 1  # at most one read still finishing
        assert growth < GROWTH_BYTES, f"{CYCLES} failed cycles kept {growth / 1024:.0f} KiB"
