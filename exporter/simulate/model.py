"""The simulator's queueing model: a continuous-batching inference engine, timed by the roofline.

This is a small discrete-event model of a vLLM- or TGI-like engine. It is deterministic for a
given seed, and it is not a benchmark: its only job is to make an engine's ``/metrics`` move the
way a real engine's would under a known load, so that infermeter (and its alerts) can be watched
end to end without a GPU.

Time
    The simulation advances in ticks of ``TICK_SECONDS`` (0.1 s) of simulated time
    (``Simulation.advance(seconds)`` / ``Simulation.tick()``, no threads needed; the HTTP server calls it from a
    background thread, 10 ticks per second of wall time times ``--speed``). Inside a tick the
    engine runs back-to-back *engine steps* on its own clock, as a real engine does.

Arrivals
    Requests arrive as a Poisson process at the scenario's rate. A request has a prompt length
    (log-normal around the scenario's mean, at most ``max_input_tokens``), an output length
    (log-normal, capped by its ``max_tokens``: a capped request finishes with reason ``length``,
    the others with ``stop``) and, for a share of requests, a shared prefix that hits the prefix
    cache. A request still waiting for its first scheduling after the scenario's client timeout
    is aborted (the client gave up), which keeps an overloaded queue bounded as in real life.

Engine step (vLLM V1's unified scheduler, simplified)
    1. Running requests first: each needs room for one more token in the KV cache. While the cache
       (capacity ``exporter.derive.roofline.kv_capacity_tokens`` for the model, GPU and GPU count at
       gpu_memory_utilization 0.9, rounded down to blocks of 16 tokens) cannot hold that, the
       newest running request is preempted (vLLM: ``num_preemptions``): its KV is freed and it
       goes back to the front of the queue, to be recomputed (prompt + tokens so far) later.
    2. If nothing was preempted, waiting requests are admitted in order while the batch is below
       ``max_num_seqs`` (256), the step's prefill budget (8192 tokens) lasts, and the cache has
       room for their prompts. TGI instead reserves prompt + max_new_tokens per request in
       ``max_batch_total_tokens`` and never preempts.
    3. The step takes ``prefill(new prompt tokens) / efficiency + decode_step(batch, mean
       context) / efficiency`` (``exporter.derive.roofline``; each term only when there is such
       work; efficiency 0.6: real engines reach about 60 % of the roofline) with +-5 % jitter.
       Every running request gets one token (an inter-token gap of one step); every admitted
       request gets its first token at the end of the step (its TTFT); requests that reached
       their output length finish.

Observations are reported to recorders (``Recorder``): the vLLM and TGI expositions turn them
into the engine's own metric families (``exporter.simulate.exposition``). Gauges (running,
waiting, KV usage) are read from the model when ``/metrics`` is rendered.

Scenarios (``SCENARIOS``; the load is set relative to what the chosen model/GPU/GPU count can
serve, so each scenario keeps its character on any hardware) and what an infermeter exporter
pointed at the simulator shows (checked with Llama-3.1-8B on H100s, fake NVML, ``--interval 1
--window 30``; alert names from alerts/alerts.yaml):

``balanced``
    Load at 60 % of the requests per second the engine serves at its largest batch (KV cache or
    ``max_num_seqs``, whichever binds first) and the step time the roofline gives there.
    infermeter: ``rightsizing_state{state="balanced"}``, ~11 req/s, ~40-60 running, waiting 0, no
    preemptions, KV usage 0.1-0.25, TTFT p95 ~0.1-0.2 s, ``tpot_efficiency_ratio`` ~0.37 (vLLM) /
    ~0.5 (TGI): each decode step runs at 0.6 of the roofline, but prefills share the steps and
    vLLM's TPOT buckets are coarse. No right-sizing or latency alert.
``overprovisioned`` (default ``--gpus 4``)
    6 short requests per minute. On vLLM the engine runs one data-parallel rank per GPU
    (``engine="0"``..``"3"``, each with its own KV cache), the usual shape for a model that fits one
    GPU; TGI shards one engine over the 4 GPUs.
    infermeter: ``state="overprovisioned"``, KV usage and running 0, ``idle_cost_dollars_per_hour``
    near the whole cost. vLLM: ``rightsizing_gpus_needed`` 1 and ``rightsizing_savings_dollars_per_hour``
    > 0, so InfermeterDeploymentOverProvisioned fires; TGI (one 4-GPU shard group, which cannot
    shrink in whole replicas): gpus_needed 4, savings 0, the state only, no alert.
``memory-bound``
    Long prompts and outputs (3000 + 1500 tokens on average) arriving at 1.5 times what the engine
    serves with its KV cache full: after ~100 simulated seconds the cache is full, vLLM preempts
    (TGI, which reserves max_new_tokens up front, queues instead) and the queue grows until clients
    give up (30 s).
    infermeter: ``state="memory_bound"``, KV usage ~0.99, ``preemptions_per_second`` ~0.7-0.8
    (vLLM), waiting tens, TTFT p95 tens of seconds; InfermeterDeploymentMemoryBound fires (and
    InfermeterTTFTSLOBreach with an SLO).
``slo-breach``
    Short requests (500 + 200 tokens) at 1.25 times the engine's capacity at ``max_num_seqs``: the
    batch is full (256) and requests queue (clients give up after 15 s), while the KV cache stays
    below 0.9.
    infermeter: ``state="compute_bound"``, waiting in the hundreds, TTFT p95 ~10-20 s (vLLM; TGI
    has no TTFT, its queue time shows it), KV ~0.35 (vLLM) / ~0.6 (TGI); with
    ``--slo-ttft-seconds 1`` InfermeterTTFTSLOBreach fires. ``tpot_efficiency_ratio`` is ~0.3 here,
    near InfermeterDecodeFarBelowRoofline's 0.3 (that alert needs an hour).
``engine-restart``
    ``balanced``, but every 60 simulated seconds the engine restarts: every counter and histogram
    starts again from zero (vLLM: a new registry, so ``_created`` moves), in-flight requests are
    lost, running and waiting drop to 0, and for 5 s it accepts no requests (``/health`` 503).
    infermeter: the same as ``balanced`` (rates and quantiles stay continuous: a counter that goes
    down counts as a restart, as PromQL's ``rate`` does; the identity is re-read), with running
    and waiting dipping to 0 for a few seconds each minute; no alert (not InfermeterEngineDown:
    the engine keeps answering).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Protocol

from exporter.derive import roofline
from exporter.facts import gpus as gpu_facts
from exporter.facts import models as model_facts
from exporter.facts.gpus import GpuSpec
from exporter.facts.models import ModelSpec

TICK_SECONDS = 0.1
MAX_NUM_SEQS = 256
BLOCK_SIZE = 16
EFFICIENCY = 0.6
GPU_MEMORY_UTILIZATION = 0.9
MAX_MODEL_LEN = 8192
MAX_INPUT_TOKENS = 8000          # TGI's max_input_tokens for MAX_MODEL_LEN (as in the tgi-3.x fixture)
MAX_NUM_BATCHED_TOKENS = 8192    # prefill tokens one step may take (chunked-prefill budget)
JITTER = 0.05
DEFAULT_MODEL = "meta-llama/Llama-3.1-8B"
DEFAULT_GPU = "NVIDIA H100 80GB HBM3"
ENGINE_KINDS = ("vllm", "tgi", "triton", "sglang")


# ------------------------------------------------------------------------------------------ engine


@dataclass(frozen=True)
class Engine:
    """What the simulated engine runs: model, GPU, GPU count, engine kind and its limits."""

    kind: str
    model: ModelSpec
    gpu: GpuSpec
    gpus: int
    served_name: str
    efficiency: float = EFFICIENCY
    max_num_seqs: int = MAX_NUM_SEQS
    block_size: int = BLOCK_SIZE
    max_model_len: int = MAX_MODEL_LEN
    gpu_memory_utilization: float = GPU_MEMORY_UTILIZATION

    @property
    def kv_bytes(self) -> float:
        return roofline.kv_dtype_bytes("auto", self.model)

    @property
    def num_gpu_blocks(self) -> int:
        tokens = roofline.kv_capacity_tokens(self.model, self.gpus, self.gpu.memory_bytes, self.kv_bytes,
                                             self.gpu_memory_utilization)
        return int(tokens // self.block_size)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size

    def prefill_seconds(self, tokens: float) -> float:
        step = roofline.prefill(self.model, self.gpu, self.gpus, tokens)
        return step.seconds / self.efficiency if step is not None else 0.0

    def decode_seconds(self, batch: float, context: float) -> float:
        step = roofline.decode_step(self.model, self.gpu, self.gpus, batch, context, self.kv_bytes)
        return step.seconds / self.efficiency if step is not None else 0.0

    def requests_per_second(self, prompt: float, output: float, batch: float) -> float:
        """Requests per second the engine serves at ``batch`` running requests of mean ``prompt`` and
        ``output`` tokens: a share ``rate x prefill time`` of the time goes to prompts, the rest to decode
        steps of ``batch`` tokens each."""
        batch = max(1.0, batch)
        step = self.decode_seconds(batch, prompt + output / 2)
        tokens_per_second = batch / step if step > 0 else 0.0
        if tokens_per_second <= 0:
            return 0.0
        return tokens_per_second / (output + self.prefill_seconds(prompt) * tokens_per_second)

    def largest_batch(self, prompt: float, output: float) -> float:
        """The largest batch the KV cache holds at the mean peak context, at most max_num_seqs."""
        per_request = prompt + output + self.block_size / 2
        return float(max(1, min(self.max_num_seqs, int(self.kv_capacity_tokens // per_request))))


def find_engine(kind: str, model_name: str, gpu_name: str, gpus: int) -> Engine:
    """The Engine for names from the command line; ValueError (one line) when one is unknown."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine kind {kind!r} (one of {', '.join(ENGINE_KINDS)})")
    model = model_facts.builtin(model_name)
    if model is None:
        raise ValueError(f"unknown model {model_name!r}; built in: {', '.join(model_facts.builtin_names())}")
    gpu = gpu_facts.find(gpu_name)
    if gpu is None:
        raise ValueError(f"unknown GPU {gpu_name!r}; known: {', '.join(gpu_facts.catalogue())}")
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {gpus}")
    engine = Engine(kind=kind, model=model, gpu=gpu, gpus=gpus, served_name=model_name)
    if engine.kv_capacity_tokens < engine.max_model_len:
        # vLLM refuses to start then too ("max seq len is larger than ... can be stored in KV cache")
        raise ValueError(f"{model_name} leaves room for {engine.kv_capacity_tokens} KV cache tokens on {gpus} x "
                         f"{gpu.name} at gpu_memory_utilization {GPU_MEMORY_UTILIZATION}, fewer than one "
                         f"{engine.max_model_len}-token sequence (try more --gpus)")
    return engine


# ------------------------------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Scenario:
    """A workload: request shapes and an arrival rate (relative to the engine's capacity or absolute)."""

    name: str
    summary: str
    prompt_tokens: float
    output_tokens: float
    max_tokens: int
    # requests per second = load x Engine.requests_per_second at the largest batch, unless
    # rate_per_minute is set
    load: float = 0.6
    rate_per_minute: float | None = None
    prefix_share: float = 0.3        # share of requests that start with a cached shared prefix
    prefix_tokens: int = 256
    client_timeout_seconds: float = 60.0
    default_gpus: int = 1
    # vLLM: one data-parallel rank per GPU (when the model fits one GPU) instead of tensor parallel
    data_parallel: bool = False
    restart_every_seconds: float | None = None
    restart_downtime_seconds: float = 5.0

    def rate(self, engine: Engine) -> float:
        """Arrivals per simulated second on ``engine``."""
        if self.rate_per_minute is not None:
            return self.rate_per_minute / 60.0
        batch = engine.largest_batch(self.prompt_tokens, self.output_tokens)
        return self.load * engine.requests_per_second(self.prompt_tokens, self.output_tokens, batch)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("balanced", "60 % of what the engine serves at its largest batch; no queue",
             prompt_tokens=1000, output_tokens=250, max_tokens=1024, load=0.6),
    Scenario("overprovisioned", "a handful of requests per minute on 4 GPUs",
             prompt_tokens=400, output_tokens=150, max_tokens=512, rate_per_minute=6.0, default_gpus=4,
             data_parallel=True),
    Scenario("memory-bound", "long prompts and outputs at 1.5x what the KV cache holds: full cache, "
             "preemptions, a growing queue", prompt_tokens=3000, output_tokens=1500, max_tokens=4096,
             load=1.5, prefix_share=0.1, client_timeout_seconds=30.0),
    Scenario("slo-breach", "short requests at 1.25x the engine's capacity: queueing, TTFT p95 of seconds",
             prompt_tokens=500, output_tokens=200, max_tokens=512, load=1.25, client_timeout_seconds=15.0),
    Scenario("engine-restart", "balanced, with an engine restart every 60 s (counters reset)",
             prompt_tokens=1000, output_tokens=250, max_tokens=1024, load=0.6, restart_every_seconds=60.0),
)}


# ------------------------------------------------------------------------------------------ requests


@dataclass(eq=False)
class Request:
    """One request's lifecycle (times are simulated seconds since the simulation started)."""

    id: int
    arrival: float
    prompt: int
    output: int                 # tokens it will generate
    max_tokens: int
    cached: int                 # prompt tokens served by the prefix cache (first admission)
    scheduled: float | None = None
    first_token: float | None = None
    generated: int = 0          # tokens generated before start_step (see Rank)
    start_step: int = 0
    preemptions: int = 0
    version: int = 0            # bumped on preemption: stale finish-heap entries are skipped
    prefill_tokens: int = 0     # tokens the current admission computes

    @property
    def finish_reason(self) -> str:
        return "length" if self.output >= self.max_tokens else "stop"


@dataclass(frozen=True)
class StepReport:
    """One engine step, as recorders see it."""

    start: float
    seconds: float
    prefill_seconds: float
    decode_seconds: float
    prefill_tokens: int
    decode_tokens: int          # = running requests that decoded one token
    admitted: int               # requests that entered the batch (their prefill ran)


class Recorder(Protocol):
    """What an engine exposition is told about the simulation."""

    def arrived(self, request: Request, now: float) -> None: ...
    def step(self, report: StepReport) -> None: ...
    def first_token(self, request: Request, now: float) -> None: ...
    def prefilled(self, request: Request, first_admission: bool) -> None: ...
    def preempted(self, request: Request) -> None: ...
    def finished(self, request: Request, now: float) -> None: ...
    def aborted(self, request: Request, now: float) -> None: ...
    def restarted(self, now: float) -> None: ...


@dataclass
class Totals:
    """Running totals since the last restart (for tests and the log line)."""

    arrived: int = 0
    finished: int = 0
    aborted: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    steps: int = 0


# ------------------------------------------------------------------------------------------ simulation


@dataclass
class Rank:
    """One engine (a data-parallel rank) under its share of the load: queue, batch, KV cache."""

    engine: Engine
    scenario: Scenario
    rate: float                   # arrivals per simulated second at this rank
    seed: int = 0
    index: int = 0                # vLLM's ``engine`` label
    recorders: list[Recorder] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed * 1009 + self.index)
        self.now = 0.0                # simulated time at the end of the last tick
        self.clock = 0.0              # the engine's own clock (the end of its last step)
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}   # admission order: the last is the newest
        self.totals = Totals()
        self.restarts = 0
        self._ids = 0
        self._steps = 0               # decode steps so far: a running request's tokens grow with it
        self._finish: list[tuple[int, int, int, Request]] = []
        self._context_base = 0        # sum over running of prompt + generated - start_step
        self._reserved = 0            # TGI: sum over running of prompt + max_tokens
        self._down_until = -1.0
        self._next_restart = self.scenario.restart_every_seconds or math.inf
        self._next_arrival = self._draw_gap() if self.rate > 0 else math.inf

    # ---------------------------------------------------------------------------- public state

    @property
    def running_count(self) -> int:
        return len(self.running)

    @property
    def waiting_count(self) -> int:
        return len(self.waiting)

    @property
    def context_tokens(self) -> int:
        """Tokens in the KV cache of the running requests (prompt + generated)."""
        return self._context_base + len(self.running) * self._steps

    @property
    def kv_used_tokens(self) -> float:
        """KV cache tokens in use: the running contexts plus half a block each (the last block's
        expected unused part); TGI: what its admission reserved (prompt + max_new_tokens)."""
        if self.engine.kind == "tgi":
            return float(self._reserved)
        return self.context_tokens + len(self.running) * self.engine.block_size / 2

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_used_tokens / self.engine.kv_capacity_tokens)

    @property
    def down(self) -> bool:
        """True while the engine is restarting (no requests accepted)."""
        return self.now < self._down_until

    def generated(self, request: Request) -> int:
        """Tokens ``request`` has generated so far."""
        if request.id in self.running:
            return request.generated + self._steps - request.start_step
        return request.generated

    # ---------------------------------------------------------------------------- driving

    def advance(self, seconds: float) -> None:
        """Run ``seconds`` of simulated time (rounded to whole ticks)."""
        for _ in range(max(0, round(seconds / TICK_SECONDS))):
            self.tick()

    def tick(self) -> None:
        """One tick: arrivals, engine steps up to the tick's end, timeouts, restarts."""
        end = self.now + TICK_SECONDS
        if end >= self._next_restart:
            self._restart(self._next_restart)
        while self.clock < end:
            self._arrive(self.clock)
            if not self._engine_step():
                # idle: jump to the next arrival (or the end of the tick)
                self.clock = min(end, max(self.clock, self._next_arrival))
                if self.clock >= end:
                    break
        self.now = end
        self._arrive(end)
        self._abort_timed_out(end)

    # ---------------------------------------------------------------------------- internals

    def _draw_gap(self) -> float:
        return self.rng.expovariate(self.rate)

    def _lognormal(self, mean: float, sigma: float) -> float:
        # a log-normal with the given mean: mu = ln(mean) - sigma^2 / 2
        return self.rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)

    def _arrive(self, until: float) -> None:
        while self._next_arrival <= until:
            at = self._next_arrival
            self._next_arrival = at + self._draw_gap()
            if at < self._down_until:
                continue   # the engine is restarting: the client's connection is refused
            self._new_request(at)

    def _new_request(self, at: float) -> None:
        scenario, engine = self.scenario, self.engine
        max_tokens = min(scenario.max_tokens, engine.max_model_len - 1)
        prompt_limit = min(MAX_INPUT_TOKENS, engine.max_model_len - max_tokens)
        prompt = int(min(prompt_limit, max(16.0, self._lognormal(scenario.prompt_tokens, 0.5))))
        output = int(min(max_tokens, max(1.0, self._lognormal(scenario.output_tokens, 0.6))))
        cached = 0
        if self.rng.random() < scenario.prefix_share:
            cached = min(scenario.prefix_tokens, prompt - 1) // engine.block_size * engine.block_size
        self._ids += 1
        request = Request(id=self._ids, arrival=at, prompt=prompt, output=output, max_tokens=max_tokens,
                          cached=cached)
        self.waiting.append(request)
        self.totals.arrived += 1
        for recorder in self.recorders:
            recorder.arrived(request, at)

    def _abort_timed_out(self, now: float) -> None:
        limit = self.scenario.client_timeout_seconds
        if not self.waiting:
            return
        kept: deque[Request] = deque()
        for request in self.waiting:
            if request.scheduled is None and now - request.arrival > limit:
                self.totals.aborted += 1
                for recorder in self.recorders:
                    recorder.aborted(request, now)
            else:
                kept.append(request)
        self.waiting = kept

    def _preempt_newest(self) -> None:
        request_id = next(reversed(self.running))
        request = self.running.pop(request_id)
        self._context_base -= request.prompt + request.generated - request.start_step
        request.generated = request.generated + self._steps - request.start_step
        self._reserved -= request.prompt + request.max_tokens
        request.version += 1
        request.preemptions += 1
        self.waiting.appendleft(request)
        self.totals.preemptions += 1
        for recorder in self.recorders:
            recorder.preempted(request)

    def _schedule(self) -> list[Request]:
        """Make room for the running requests' next tokens, then admit waiting ones (vLLM V1 order)."""
        engine = self.engine
        capacity = engine.kv_capacity_tokens
        preempted = False
        if engine.kind in ("vllm", "sglang"):  # SGLang "retracts" (preempts) the same way
            while self.running and self.kv_used_tokens + len(self.running) > capacity:
                self._preempt_newest()
                preempted = True
        admitted: list[Request] = []
        if preempted:
            return admitted
        budget = MAX_NUM_BATCHED_TOKENS
        used = self.kv_used_tokens + len(self.running)
        while self.waiting and len(self.running) + len(admitted) < engine.max_num_seqs:
            request = self.waiting[0]
            first = request.scheduled is None
            tokens = request.prompt + request.generated - (request.cached if first else 0)
            if engine.kind == "tgi":
                need = float(request.prompt + request.max_tokens)
            else:
                need = request.prompt + request.generated + 1 + engine.block_size / 2
            if used + need > capacity or (admitted and tokens > budget):
                break
            self.waiting.popleft()
            request.prefill_tokens = tokens
            budget -= tokens
            used += need
            admitted.append(request)
        return admitted

    def _engine_step(self) -> bool:
        """One engine step from ``self.clock``; False when there was nothing to do."""
        start = self.clock
        admitted = self._schedule()
        batch = len(self.running)
        if not admitted and batch == 0:
            return False
        engine = self.engine
        prefill_tokens = sum(r.prefill_tokens for r in admitted)
        prefill = engine.prefill_seconds(prefill_tokens) if admitted else 0.0
        decode = engine.decode_seconds(batch, self.context_tokens / batch) if batch else 0.0
        jitter = 1.0 + JITTER * (2 * self.rng.random() - 1)
        prefill, decode = prefill * jitter, decode * jitter
        seconds = prefill + decode
        end = start + seconds
        for request in admitted:
            if request.scheduled is None:
                request.scheduled = start
        # the running requests decode one token each
        self._steps += 1
        report = StepReport(start=start, seconds=seconds, prefill_seconds=prefill, decode_seconds=decode,
                            prefill_tokens=prefill_tokens, decode_tokens=batch, admitted=len(admitted))
        self.totals.steps += 1
        self.totals.generation_tokens += batch
        for recorder in self.recorders:
            recorder.step(report)
        # the admitted requests get their (first or next) token at the end of their prefill
        for request in admitted:
            first = request.first_token is None
            request.generated += 1
            self.totals.generation_tokens += 1
            if first:
                request.first_token = end
                self.totals.prompt_tokens += request.prompt
            for recorder in self.recorders:
                recorder.prefilled(request, first)
            if first:
                for recorder in self.recorders:
                    recorder.first_token(request, end)
            request.start_step = self._steps
            self.running[request.id] = request
            self._context_base += request.prompt + request.generated - request.start_step
            self._reserved += request.prompt + request.max_tokens
            finish_step = self._steps + max(0, request.output - request.generated)
            heapq.heappush(self._finish, (finish_step, request.id, request.version, request))
        while self._finish and self._finish[0][0] <= self._steps:
            _, request_id, version, request = heapq.heappop(self._finish)
            if version != request.version or request_id not in self.running:
                continue
            del self.running[request_id]
            self._context_base -= request.prompt + request.generated - request.start_step
            request.generated = request.generated + self._steps - request.start_step
            self._reserved -= request.prompt + request.max_tokens
            self.totals.finished += 1
            for recorder in self.recorders:
                recorder.finished(request, end)
        self.clock = end
        return True

    def _restart(self, at: float) -> None:
        """The engine restarts: in-flight requests are lost, every metric starts again from zero."""
        self.waiting.clear()
        self.running.clear()
        self._finish.clear()
        self._context_base = 0
        self._reserved = 0
        self.totals = Totals()
        self.restarts += 1
        self._down_until = at + self.scenario.restart_downtime_seconds
        self._next_restart = at + (self.scenario.restart_every_seconds or math.inf)
        self.clock = max(self.clock, self._down_until)
        for recorder in self.recorders:
            recorder.restarted(at)


class Simulation:
    """The engine behind one URL under a scenario's load; ``advance()`` moves it without threads.

    Usually one rank. The ``overprovisioned`` scenario on vLLM runs one data-parallel rank per GPU
    (``--data-parallel-size``, the usual shape for a model that fits one GPU), each with its share
    of the requests (random routing, so each rank's arrivals are Poisson too).
    """

    def __init__(self, engine: Engine, scenario: Scenario, seed: int = 0, ranks: int = 1) -> None:
        self.scenario = scenario
        self.seed = seed
        self.gpus = engine.gpus
        per_rank = engine if ranks == 1 else replace(engine, gpus=engine.gpus // ranks)
        if scenario.rate_per_minute is not None:
            rate = scenario.rate_per_minute / 60.0 / ranks
        else:
            rate = scenario.rate(per_rank)
        self.ranks = [Rank(per_rank, scenario, rate, seed=seed, index=i) for i in range(ranks)]

    @property
    def engine(self) -> Engine:
        """One rank's engine (all ranks are alike)."""
        return self.ranks[0].engine

    @property
    def rate(self) -> float:
        return sum(r.rate for r in self.ranks)

    @property
    def now(self) -> float:
        return self.ranks[0].now

    @property
    def down(self) -> bool:
        return self.ranks[0].down

    @property
    def restarts(self) -> int:
        return self.ranks[0].restarts

    @property
    def kv_capacity_tokens(self) -> int:
        return sum(r.engine.kv_capacity_tokens for r in self.ranks)

    @property
    def running_count(self) -> int:
        return sum(r.running_count for r in self.ranks)

    @property
    def waiting_count(self) -> int:
        return sum(r.waiting_count for r in self.ranks)

    @property
    def kv_usage(self) -> float:
        return sum(r.kv_used_tokens for r in self.ranks) / self.kv_capacity_tokens

    @property
    def totals(self) -> Totals:
        total = Totals()
        for rank in self.ranks:
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(rank.totals, name))
        return total

    def tick(self) -> None:
        for rank in self.ranks:
            rank.tick()

    def advance(self, seconds: float) -> None:
        """Run ``seconds`` of simulated time (rounded to whole ticks)."""
        for _ in range(max(0, round(seconds / TICK_SECONDS))):
            self.tick()
