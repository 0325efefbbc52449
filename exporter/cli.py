"""The ``infermeter`` command: parse settings, wire sources -> collection -> collector -> server."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.collection import NVML, Collection, NvmlReader
from exporter.collector import SnapshotCollector
from exporter.config import Config, ConfigError, describe, load_config
from exporter.scheduler import start_scheduler
from exporter.server import Server, make_app
from exporter.sources import SourceError
from exporter.sources.engine import EngineSource

log = logging.getLogger("infermeter")


def _nvml_source(config: Config) -> tuple[NvmlReader | None, bool]:
    """The NVML source (None when disabled) and whether its first read worked."""
    if not config.nvml:
        log.info("NVML collector disabled (--no-collector.nvml): no GPU metrics")
        return None, False
    from exporter.sources.nvml import NvmlSource

    source = NvmlSource()
    try:
        reading = source.read()
    except SourceError as err:
        log.warning("NVML unavailable: %s. GPU metrics are off until it appears (retried every %gs; "
                    "--no-collector.nvml silences this)", err, config.interval)
        return source, False
    names = ", ".join(sorted({g.name for g in reading.gpus})) or "none"
    log.info("NVML: driver %s, %d GPU(s): %s", reading.driver_version or "?", len(reading.gpus), names)
    return source, True


def run(config: Config, stop: threading.Event) -> int:
    """Run until ``stop`` is set."""
    stop_demo: Callable[[], None] | None = None
    nvml: NvmlReader | None
    if config.demo:
        from exporter import demo

        config, nvml, stop_demo = demo.start(config, time.time)
        nvml_ok = True
    else:
        nvml, nvml_ok = _nvml_source(config)
    tokens = config.engine_tokens or {}
    engines = [EngineSource(t, config.timeout, config.max_body_bytes, token=tokens.get(t.name) or tokens.get(""))
               for t in config.engines]
    if not engines:
        log.warning("no engine configured (--engine URL): only GPU and infermeter's own metrics are served")
    collection = Collection(config, nvml, engines)
    if nvml is not None and not nvml_ok:
        collection.known_failing(NVML)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(lambda: collection.snapshot))
    app, ssl_context = make_app(registry, lambda: collection.snapshot, config.interval), None
    if config.web_config_file is not None:
        from exporter.webconfig import load_web_config

        web = load_web_config(config.web_config_file)  # checked at start by load_config
        app, ssl_context = web.protect(app), web.ssl_context()
        log.info("web config %s: %s", config.web_config_file, web.describe())
    try:
        server = Server(config.listen_host, config.listen_port, app, ssl_context)
    except OSError as err:
        log.error("cannot listen on %s:%d: %s (--listen)", config.listen_host, config.listen_port,
                  err.strerror or err)
        collection.close()
        return 1
    server.start()
    log.info("infermeter %s serving http://%s:%d/metrics (interval %gs, window %gs)", __version__,
             config.listen_host, server.port, config.interval, config.window)
    scheduler = start_scheduler(collection, config.interval)
    stop.wait()
    log.info("stopping")
    scheduler.shutdown(wait=False)
    server.stop()
    collection.close()
    if stop_demo is not None:
        stop_demo()
    close_nvml = getattr(nvml, "close", None)
    if close_nvml is not None:
        close_nvml()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["report"]:
        from exporter import report

        return report.main(args[1:])
    if args[:1] == ["plan"]:
        from exporter import plan

        return plan.main(args[1:])
    if args[:1] == ["simulate"]:
        from exporter import simulate

        return simulate.main(args[1:])
    try:
        config = load_config(args, os.environ)
    except ConfigError as err:
        print(f"infermeter: configuration error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    log.info("configuration: %s", describe(config))
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return run(config, stop)
