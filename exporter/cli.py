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
from typing import TypeVar

from prometheus_client import CollectorRegistry

from exporter import __version__, logs
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


# what a shell reports for a command killed by SIGPIPE (128 + 13), as `yes | head` shows for `yes`
EXIT_BROKEN_PIPE = 128 + int(getattr(signal, "SIGPIPE", 13))
T = TypeVar("T")


def _report(args: list[str]) -> int:
    from exporter import report

    return report.main(args)


def _plan(args: list[str]) -> int:
    from exporter import plan

    return plan.main(args)


def _simulate(args: list[str]) -> int:
    from exporter import simulate

    return simulate.main(args)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {"report": _report, "plan": _plan, "simulate": _simulate}


def quiet_on_closed_stdout(action: Callable[[], T]) -> T | None:
    """``action()``, with stdout flushed; None, without a traceback, when the reader has gone (``| head``).

    Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError; Unix tools just stop.
    stdout is then pointed at /dev/null so that the interpreter's own flush at exit stays quiet too.
    """
    try:
        try:
            return action()
        finally:  # the end of the text may still sit in the buffer
            sys.stdout.flush()
    except BrokenPipeError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # stdout is not a file (a test's StringIO): nothing left to flush
            pass
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    subcommand = SUBCOMMANDS.get(args[0]) if args else None
    if subcommand is not None:
        status = quiet_on_closed_stdout(lambda: subcommand(args[1:]))
        return EXIT_BROKEN_PIPE if status is None else status
    try:
        config = load_config(args, os.environ)  # --help and --version: argparse ignores a closed stdout itself
    except ConfigError as err:
        print(f"infermeter: configuration error: {err}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)  # every record bounded: engines choose some of what is logged
    log.info("configuration: %s", describe(config))
    stop = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return run(config, stop)
