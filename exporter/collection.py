"""One collection cycle: read every source concurrently within a deadline, derive, and build the
immutable snapshot that scrapes serve.

A source still busy from an earlier cycle (a hung engine or NVML call) is not started again; it
counts as failed until it returns, and never delays the others.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Protocol

from exporter.catalog import QUANTILES
from exporter.config import Config
from exporter.derive import verdict
from exporter.derive.analysis import Analysis, Deployment, analyse
from exporter.derive.assignment import StableAssignment
from exporter.derive.cost import Costs, costs, engine_prompt_share
from exporter.derive.engine import EngineStats, engine_stats
from exporter.derive.rightsizing import PlanInputs, Rightsizing, Shapes, savings
from exporter.derive.whatif import WhatIf
from exporter.derive.window import SampleWindow
from exporter.facts.gpus import GpuSpec
from exporter.resolve import FactsResolver, Planner
from exporter.samples import GpuSample, NvmlReading
from exporter.sources import SourceError
from exporter.sources.engine import EngineReading, EngineSource

log = logging.getLogger(__name__)

NVML = "nvml"
# a cycle waits for its reads at most this share of the interval (the rest builds and serves the snapshot)
CYCLE_WAIT_SHARE = 0.8
# a read counts as hung this long after its own deadline (--timeout), which the sources enforce themselves
DEADLINE_SLACK_SECONDS = 0.5
# after a failed read the engine's series that come from its window (rates, quantiles and what derives from
# them) stay as they were for this many failed reads in a row, so that one missed read leaves no gap on a
# dashboard; infermeter_engine_up turns 0 at once and the engine's latest gauges are not repeated
STALE_READS = 3


def engine_collector(name: str) -> str:
    """The ``collector`` label value of an engine."""
    return f"engine/{name}"


class NvmlReader(Protocol):
    def read(self) -> NvmlReading: ...


@dataclass(frozen=True)
class CollectorStatus:
    success: bool
    duration_seconds: float
    errors_total: int


@dataclass(frozen=True)
class EngineView:
    """What the collector exports for one engine."""

    name: str
    up: bool
    kind: str = ""
    model: str = ""
    version: str = ""
    stats: EngineStats | None = None
    gpus: tuple[GpuSample, ...] = ()
    gpu_memory_used_bytes: float | None = None
    analysis: Analysis | None = None
    costs: Costs | None = None
    # dollars spent on the engine's GPUs since the exporter started (None: no price known yet)
    cost_dollars_total: float | None = None
    # the observed load planned on every candidate GPU model (--whatif)
    whatif: WhatIf | None = None
    # the state with its evidence, and the planner's answer on the engine's own GPU model
    rightsizing: Rightsizing | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape serves; replaced whole after each cycle, never mutated."""

    timestamp: float | None
    window_seconds: float
    nvml: NvmlReading | None = None
    engines: tuple[EngineView, ...] = ()
    collectors: Mapping[str, CollectorStatus] = field(default_factory=dict)
    # GPU index -> catalogue spec and the price used, where known
    gpu_specs: Mapping[int, GpuSpec] = field(default_factory=dict)
    gpu_prices: Mapping[int, float] = field(default_factory=dict)
    slo_ttft_seconds: float | None = None
    slo_tpot_seconds: float | None = None
    budget_cost_per_request_dollars: float | None = None
    whatif_savings_threshold_ratio: float | None = None
    # --demo: engine name -> simulated scenario
    demo_engines: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Identity:
    kind: str = ""
    model: str = ""
    version: str = ""


class Collection:
    """Owns the sources, their windows and error counts; ``run_once`` makes the next snapshot."""

    def __init__(self, config: Config, nvml: NvmlReader | None, engines: Sequence[EngineSource],
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._nvml = nvml
        self._engines = list(engines)
        self._clock = clock
        self._in_flight: dict[str, Future[_Outcome]] = {}
        self._read_started: dict[str, float] = {}  # source -> when its newest read began (monotonic)
        self._views: dict[str, EngineView] = {}  # engine -> the last view built from a read of it
        self._failed_reads: dict[str, int] = {}  # engine -> failed reads in a row
        self._last_nvml: NvmlReading | None = None
        self._windows = {e.target.name: SampleWindow(config.window) for e in self._engines}
        self._identity = {e.target.name: _Identity() for e in self._engines}
        self._errors: dict[str, int] = {}
        self._failed_gpus: frozenset[int] = frozenset()
        self._assignment = StableAssignment([e.target.name for e in self._engines], config.engine_gpus)
        self._last_price: dict[str, float] = {}  # GPU UUID -> its last known hourly price
        self._facts = FactsResolver(config)
        self._planner = Planner(self._facts, config)
        self._holds = {e.target.name: verdict.StateHold() for e in self._engines}
        # engine -> sample timestamp -> mean NVML utilisation of its GPUs then (evidence for the state)
        self._gpu_busy: dict[str, dict[float, float]] = {e.target.name: {} for e in self._engines}
        self._said: set[tuple[str, str, str]] = set()  # (engine, phase, reason) logged about calibration
        self._spent: dict[str, float] = {}
        self._spent_at: dict[str, float] = {}
        self._ok: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.snapshot = Snapshot(timestamp=None, window_seconds=config.window)

    def known_failing(self, collector: str) -> None:
        """The caller already told the user this collector fails: log its failures at debug only."""
        self._ok[collector] = False

    def _sources(self) -> dict[str, Callable[[], object]]:
        sources: dict[str, Callable[[], object]] = {}
        if self._nvml is not None:
            sources[NVML] = self._nvml.read
        for engine in self._engines:
            sources[engine_collector(engine.target.name)] = engine.read
        return sources

    def run_once(self) -> Snapshot:
        """Read all sources, derive, and swap in a new snapshot (also returned).

        A cycle waits for its reads at most CYCLE_WAIT_SHARE of the interval (and never past --timeout). A
        read still running then is *pending*: its source keeps what it showed last and the read's answer is
        used by the first cycle that finds it done, as long as it comes within --timeout (a busy engine is
        not a down one). Only a read past --timeout, or one that fails, counts as failed.
        """
        with self._lock:  # the scheduler never overlaps runs; this guards direct callers
            started = time.monotonic()
            sources = self._sources()
            late: dict[str, _Outcome] = {}
            fresh: list[Future[_Outcome]] = []
            for name, read in sources.items():
                previous = self._in_flight.get(name)
                if previous is not None and not previous.done():
                    continue  # still running: pending, or hung past its deadline (below)
                if previous is not None:  # finished after the cycle that started it stopped waiting
                    late[name] = previous.result()
                fresh.append(self._start(name, read, started))
            wait(fresh, timeout=max(started + self.cycle_wait - time.monotonic(), 0.0))
            results: dict[str, object] = {}
            statuses: dict[str, CollectorStatus] = {}
            pending: set[str] = set()
            for name in sources:
                future = self._in_flight[name]
                outcome = future.result() if future.done() else late.get(name)
                if outcome is None:
                    running = time.monotonic() - self._read_started[name]
                    if running <= self.config.timeout + DEADLINE_SLACK_SECONDS:
                        pending.add(name)
                        statuses[name] = CollectorStatus(self._ok.get(name) is not False, running,
                                                         self._errors.get(name, 0))
                        continue
                    error: str | None = (f"no answer within {self.config.timeout:g}s (--timeout); the read is "
                                         "still running (a hung source)")
                    duration = running
                else:
                    error, duration = outcome.error, outcome.seconds
                    if error is None:
                        results[name] = outcome.value
                statuses[name] = self._record(name, error, duration)
            # only reads still running are remembered: a finished one's outcome is not kept past its cycle
            self._in_flight = {name: f for name, f in self._in_flight.items() if not f.done()}
            self.snapshot = self._build(results, statuses, pending)
            return self.snapshot

    @property
    def cycle_wait(self) -> float:
        """How long a cycle waits for its reads: never past --timeout, and leaving time for the rest."""
        return min(self.config.timeout, CYCLE_WAIT_SHARE * self.config.interval)

    def _start(self, name: str, read: Callable[[], object], now: float) -> Future[_Outcome]:
        """A new read of ``name``, remembered until it ends."""
        self._read_started[name] = now
        future = self._in_flight[name] = _spawn(name, read)
        return future

    def _record(self, name: str, error: str | None, duration: float) -> CollectorStatus:
        was_ok = self._ok.get(name)
        label = _describe(name, self.config.demo)
        if error is not None:
            self._errors[name] = self._errors.get(name, 0) + 1
            if was_ok is not False:
                consequence = ("GPU metrics absent" if name == NVML
                               else f"infermeter_engine_up 0; its windowed series kept for {STALE_READS} failed "
                                    "reads, then absent")
                log.warning("%s: %s (%s; retrying every %gs, recovery will be logged)", label, error,
                            consequence, self.config.interval)
            else:
                log.debug("%s: still failing: %s", label, error)
        elif was_ok is False:
            log.info("%s: recovered", label)
        elif was_ok is None:
            log.info("%s: ok", label)
        self._ok[name] = error is None
        return CollectorStatus(error is None, duration, self._errors.get(name, 0))

    def _build(self, results: Mapping[str, object], statuses: Mapping[str, CollectorStatus],
               pending: frozenset[str] | set[str] = frozenset()) -> Snapshot:
        now = self._clock()
        nvml = results.get(NVML)
        reading = nvml if isinstance(nvml, NvmlReading) else (self._last_nvml if NVML in pending else None)
        self._last_nvml = reading
        gpus = {g.index: g for g in reading.gpus} if reading else {}
        if reading is not None:
            self._note_failed_gpus(frozenset(reading.failed_gpus))
        specs = {i: spec for i, g in gpus.items() if (spec := self._facts.gpu(g.name)) is not None}
        prices = {i: price for i, spec in specs.items() if (price := self._facts.price(spec)) is not None}
        by_uuid = {g.uuid: g for g in gpus.values()}
        self._last_price.update((gpus[i].uuid, price) for i, price in prices.items())
        owned = self._assignment.owned({g.index: g.uuid for g in gpus.values()},
                                       reading.failed_gpus if reading is not None else ())
        views = []
        for engine in self._engines:
            name = engine.target.name
            engine_gpus = tuple(by_uuid[uuid] for uuid in owned[name] if uuid in by_uuid)
            # an engine keeps paying for a GPU it owns that cannot be read now, at that GPU's last price
            owned_prices = [self._last_price.get(uuid) for uuid in owned[name]]
            memory = _process_memory(engine_gpus)
            result = results.get(engine_collector(name))
            last = self._views.get(name)
            if isinstance(result, EngineReading):
                view = self._derive(name, result, engine_gpus, owned_prices, specs, prices, memory, now)
                self._failed_reads[name] = 0
                if view.up:
                    self._views[name] = view
            elif engine_collector(name) in pending and last is not None:
                # a read still within its deadline: the engine shows what it showed last, still up
                view = dataclasses.replace(last, gpus=engine_gpus, gpu_memory_used_bytes=memory,
                                           cost_dollars_total=self._spend(name, last.costs, now))
            else:
                failed = self._failed_reads[name] = (self._failed_reads.get(name, 0)
                                                     + (engine_collector(name) not in pending))
                identity = self._identity[name]
                view = EngineView(name=name, up=False, kind=identity.kind, model=identity.model,
                                  version=identity.version, gpus=engine_gpus, gpu_memory_used_bytes=memory,
                                  cost_dollars_total=self._spend(name, None, now))
                if last is not None and last.stats is not None and 0 < failed <= STALE_READS:
                    # one missed read leaves no gap in what comes from the window (rates, quantiles and what
                    # derives from them); the engine's latest gauges are not repeated (they are not known now)
                    view = dataclasses.replace(last, up=False, gpus=engine_gpus, gpu_memory_used_bytes=memory,
                                               stats=dataclasses.replace(last.stats, gauges={}),
                                               cost_dollars_total=view.cost_dollars_total)
            views.append(view)
        return Snapshot(timestamp=now, window_seconds=self.config.window, nvml=reading,
                        engines=tuple(views), collectors=dict(statuses), gpu_specs=specs, gpu_prices=prices,
                        slo_ttft_seconds=self.config.slo_ttft_seconds, slo_tpot_seconds=self.config.slo_tpot_seconds,
                        budget_cost_per_request_dollars=self.config.budget_cost_per_request_dollars,
                        whatif_savings_threshold_ratio=(self.config.whatif_savings_threshold_ratio
                                                        if self.config.whatif else None),
                        demo_engines=self.config.demo_engines or {})

    def _derive(self, name: str, result: EngineReading, engine_gpus: tuple[GpuSample, ...],
                owned_prices: Sequence[float | None], specs: Mapping[int, GpuSpec], prices: Mapping[int, float],
                memory: float | None, now: float) -> EngineView:
        """The engine's view from a fresh read: its window, statistics, analysis, costs and right-sizing."""
        identity = self._identity[name]
        stats = analysis = engine_costs = advice = sizing = None
        self._windows[name].add(result.sample)
        self._note_gpu_busy(name, result.sample.timestamp, engine_gpus)
        identity.kind = result.sample.kind
        identity.model = result.identity.model or result.sample.model_label or identity.model
        identity.version = result.identity.version or ""
        try:
            window = self._windows[name]
            stats = engine_stats(window.samples(), QUANTILES, window.watched_since(result.sample.timestamp))
            analysed = self._analyse(name, result, stats, engine_gpus, specs, prices, memory)
            analysis = analysed[0] if analysed is not None else None
            engine_costs = _costs(stats, engine_gpus, owned_prices, analysis)
            if analysed is not None:
                analysis, deployment = analysed
                first = engine_gpus[0].index  # analysis implies a known GPU spec
                current = engine_costs.per_hour if engine_costs is not None else None
                inputs, own, advice = self._planner.advise(
                    stats, analysis, result.sample.config, specs[first], prices.get(first),
                    deployment.replica_gpus, current)
                sizing = self._rightsize(name, stats, analysis, deployment, inputs, own, current, now)
        except Exception:  # a derivation bug must cost this engine's series, not the snapshot
            log.exception("engine %s: deriving windowed statistics failed", name)
            self._windows[name].clear()
            stats = analysis = engine_costs = advice = sizing = None
        return EngineView(
            name=name, up=stats is not None, kind=identity.kind, model=identity.model,
            version=identity.version, stats=stats, gpus=engine_gpus, gpu_memory_used_bytes=memory,
            analysis=analysis, costs=engine_costs, cost_dollars_total=self._spend(name, engine_costs, now),
            whatif=advice, rightsizing=sizing)

    def _analyse(self, name: str, reading: EngineReading, stats: EngineStats, gpus: Sequence[GpuSample],
                 specs: Mapping[int, GpuSpec], prices: Mapping[int, float],
                 memory: float | None) -> tuple[Analysis, Deployment] | None:
        if not gpus or gpus[0].index not in specs:
            return None
        served = reading.identity.model or reading.sample.model_label or ""
        model = self._facts.model(name, served, reading.identity.model_root)
        if model is None:
            return None
        first = gpus[0]
        engine_prices = [prices.get(g.index) for g in gpus]
        price = (sum(p for p in engine_prices if p is not None) / len(gpus)
                 if all(p is not None for p in engine_prices) else None)
        ranks = int(stats.gauges.get("data_parallel_ranks", 1))
        deployment = Deployment(
            model=model, gpu=specs[first.index], gpus=len(gpus),
            replicas=ranks if ranks >= 1 and len(gpus) % ranks == 0 else 1,
            memory_bytes_per_gpu=first.memory_total_bytes or specs[first.index].memory_bytes,
            price_per_gpu_hour=price, engine_config=reading.sample.config,
            slo_ttft_seconds=self.config.slo_ttft_seconds, slo_tpot_seconds=self.config.slo_tpot_seconds)
        utilization = [g.utilization_ratio for g in gpus if g.utilization_ratio is not None]
        used = memory if memory is not None else _used_memory(gpus)
        analysis = analyse(stats, deployment, utilization, used)
        claimed = sum(analysis.memory_breakdown.get(k, 0.0) for k in ("weights", "kv_cache"))  # all replicas
        if claimed > deployment.gpus * deployment.memory_bytes_per_gpu:
            self._facts.warn_once(
                f"mismatch:{name}:{model.source}", "engine %s: model %s (%s) and the KV cache the engine reports "
                "need %.0f GB, more than its %d GPU(s) hold: the model spec does not match what the engine "
                "serves; pass the right --model-config", name, served, model.source, claimed / 1e9, deployment.gpus)
        return analysis, deployment

    def _note_gpu_busy(self, name: str, timestamp: float, gpus: Sequence[GpuSample]) -> None:
        """Keep the mean utilisation of the engine's GPUs beside each sample of its window."""
        busy = self._gpu_busy[name]
        utilization = [g.utilization_ratio for g in gpus if g.utilization_ratio is not None]
        if utilization:
            busy[timestamp] = sum(utilization) / len(utilization)
        oldest = timestamp - self.config.window
        for stale in [t for t in busy if t < oldest]:
            del busy[stale]

    def _rightsize(self, name: str, stats: EngineStats, analysis: Analysis, deployment: Deployment,
                   inputs: PlanInputs, own: Shapes, current_dollars_per_hour: float | None,
                   now: float) -> Rightsizing:
        """The state from the evidence (with hysteresis) and the planner's recommendation on the engine's own
        GPU model, with what it saves."""
        for phase, reason in sorted(inputs.reasons.items()):
            if reason and (name, phase, reason) not in self._said:
                self._said.add((name, phase, reason))
                log.info("engine %s: %s efficiency not calibrated (%s): planning that phase on the roofline", name,
                         phase, reason)
        evidence = verdict.gather(self._windows[name].samples(), self._gpu_busy[name], own.batch_limit,
                                  deployment.replicas)
        recommended = own.recommended
        fewer = recommended is not None and recommended.gpus is not None and recommended.gpus < deployment.gpus
        hold = self._holds[name]
        proposed = verdict.candidate(evidence, analysis.bandwidth_share, fewer)
        state = hold.update(proposed, now, at_once=proposed == "sleeping")
        if recommended is None:
            return Rightsizing(inputs, state, hold.changes, evidence)
        tokens = stats.counter_rates.get("prompt_tokens", 0.0) + stats.counter_rates.get("generation_tokens", 0.0)
        hourly = recommended.dollars_per_hour
        achievable = hourly / (tokens * 3600) * 1e6 if hourly is not None and tokens > 0 else None
        return Rightsizing(inputs, state, hold.changes, evidence, recommended.gpus, recommended.tensor_parallel,
                           savings(current_dollars_per_hour, hourly), achievable)

    def _spend(self, name: str, engine_costs: Costs | None, now: float) -> float | None:
        """Add the money spent since the last cycle at the current hourly cost (a counter)."""
        hourly = engine_costs.per_hour if engine_costs is not None else None
        last = self._spent_at.get(name)
        if hourly is not None:
            if last is not None and now > last:
                self._spent[name] = self._spent.get(name, 0.0) + hourly * (now - last) / 3600.0
            else:
                self._spent.setdefault(name, 0.0)
            self._spent_at[name] = now
        else:
            self._spent_at.pop(name, None)  # no price now: don't bill the gap later
        return self._spent.get(name)

    def _note_failed_gpus(self, failed: frozenset[int]) -> None:
        for index in sorted(failed - self._failed_gpus):
            log.warning("GPU %d could not be read through NVML (lost or fallen off the bus?); its series are "
                        "absent until it answers again", index)
        for index in sorted(self._failed_gpus - failed):
            log.info("GPU %d answers NVML again", index)
        self._failed_gpus = failed

    def close(self) -> None:
        """Nothing to join: reads run on daemon threads, so a hung one cannot hold up exit."""


@dataclass(frozen=True)
class _Outcome:
    """How one read ended: its value, or a one-line error; never an exception object, whose traceback
    would keep the failed read's frames (and a body read so far) alive for as long as the outcome is."""

    value: object
    error: str | None
    seconds: float


ERROR_CHARS = 300  # a source's error line is cut here (its text can come from an engine)


def _spawn(name: str, read: Callable[[], object]) -> Future[_Outcome]:
    """Run ``read`` on a daemon thread; the future always completes with an _Outcome."""
    future: Future[_Outcome] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        started = time.monotonic()
        value: object = None
        error: str | None = "the read ended without an answer"
        try:
            value, error = read(), None
        except SourceError as err:
            error = str(err)
        except Exception as err:  # a bug or an unexpected library error must not stop collection
            log.exception("collector %s failed unexpectedly", name)
            error = f"unexpected {type(err).__name__}: {err}"
        finally:  # also when the thread is torn down by a BaseException: the collection never waits forever
            if error is not None and len(error) > ERROR_CHARS:
                error = error[:ERROR_CHARS] + "…"
            future.set_result(_Outcome(value, error, time.monotonic() - started))

    threading.Thread(target=target, name=f"infermeter-read-{name}", daemon=True).start()
    return future


def _costs(stats: EngineStats, gpus: Sequence[GpuSample], prices: Sequence[float | None],
           analysis: Analysis | None) -> Costs | None:
    """The engine's costs when every GPU it owns (``prices``: readable now or not) has a price; the model
    only refines the split."""
    if not prices or any(p is None for p in prices):
        return None
    share = analysis.prompt_time_share if analysis is not None else engine_prompt_share(stats)
    utilization = [g.utilization_ratio for g in gpus if g.utilization_ratio is not None]
    return costs(sum(p for p in prices if p is not None), stats, utilization, share)


def _used_memory(gpus: Sequence[GpuSample]) -> float | None:
    used = [g.memory_used_bytes for g in gpus if g.memory_used_bytes is not None]
    return sum(used) if len(used) == len(gpus) else None


def _process_memory(gpus: Sequence[GpuSample]) -> float | None:
    used = [p.used_memory_bytes for g in gpus for p in (g.processes or ()) if p.used_memory_bytes is not None]
    return sum(used) if used else None


def _describe(collector: str, demo: bool = False) -> str:
    if collector == NVML:
        return "simulated GPUs (--demo)" if demo else "NVML"
    return collector.replace("engine/", "engine ", 1)
