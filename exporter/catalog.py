"""Every metric infermeter exports, declared once as data.

The catalogue drives the collector's ``describe()``, the README metric table and the tests:
nothing is exported that is not declared here, with exactly these labels.
Run ``python -m exporter.catalog`` to print the README table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter", "summary", "info"]

PREFIX = "infermeter_"
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)

GPU_LABELS = ("gpu", "uuid")
ENGINE_LABELS = ("engine", "kind", "model")


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric family.

    ``name`` is the family name as exposed; counters are declared with ``_total`` and info
    metrics with ``_info``. ``unit`` is the base unit the name ends in (for the docs).
    """

    name: str
    type: MetricType
    unit: str
    help: str
    labels: tuple[str, ...]
    group: str


def _gpu(name: str, type_: MetricType, unit: str, help_: str) -> MetricSpec:
    return MetricSpec(PREFIX + name, type_, unit, help_, GPU_LABELS, "gpu")


def _engine(name: str, type_: MetricType, unit: str, help_: str,
            labels: tuple[str, ...] = ENGINE_LABELS) -> MetricSpec:
    return MetricSpec(PREFIX + name, type_, unit, help_, labels, "engine")


def _self(name: str, type_: MetricType, unit: str, help_: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    return MetricSpec(PREFIX + name, type_, unit, help_, labels, "self")


WINDOW_NOTE = "over the last {window} (--window)"
RATE_NOTE = (WINDOW_NOTE + ": the counter's increase over the window divided by its length, time the engine "
             "could not be read counting as time without work (PromQL's rate over the same range, without its "
             "extrapolation); since the exporter began watching the engine, if that is shorter")
LATENCY_NOTE = ("Quantiles from the engine histogram's bucket increase " + WINDOW_NOTE
                + ": PromQL's histogram_quantile, held to the bounds the window's buckets and sum imply "
                  "(infermeter_latency_quantile_bound_seconds; docs/accuracy.md); _count and _sum are the "
                  "engine's cumulative values, so rate(_sum)/rate(_count) is the mean.")

CATALOG: tuple[MetricSpec, ...] = (
    # --- GPUs, read through NVML ---
    MetricSpec(PREFIX + "gpu_info", "info", "", "GPU identity from NVML; value 1.",
               ("gpu", "uuid", "name", "driver_version"), "gpu"),
    _gpu("gpu_utilization_ratio", "gauge", "ratio",
         "Fraction of the last sample period in which a kernel ran on the GPU (NVML utilization.gpu)."),
    _gpu("gpu_memory_bandwidth_utilization_ratio", "gauge", "ratio",
         "Fraction of the last sample period in which device memory was read or written "
         "(NVML utilization.memory)."),
    _gpu("gpu_memory_used_bytes", "gauge", "bytes", "Device memory in use (NVML memory info)."),
    _gpu("gpu_memory_total_bytes", "gauge", "bytes", "Device memory installed (NVML memory info)."),
    _gpu("gpu_power_watts", "gauge", "watts", "Power draw (NVML power usage)."),
    _gpu("gpu_power_limit_watts", "gauge", "watts", "Enforced power limit (NVML enforced power limit)."),
    _gpu("gpu_temperature_celsius", "gauge", "celsius", "GPU core temperature."),
    _gpu("gpu_sm_clock_hertz", "gauge", "hertz", "Streaming multiprocessor clock."),
    _gpu("gpu_energy_joules_total", "counter", "joules",
         "Energy consumed since the driver was loaded (NVML total energy consumption)."),
    MetricSpec(PREFIX + "gpu_peak_flops", "gauge", "FLOP/s",
               "Dense tensor peak by data type, from infermeter's GPU catalogue (or the config).",
               ("gpu", "uuid", "dtype"), "gpu"),
    _gpu("gpu_memory_bandwidth_bytes_per_second", "gauge", "bytes per second",
         "Peak memory bandwidth, from infermeter's GPU catalogue (or the config)."),
    _gpu("gpu_cost_dollars_per_hour", "gauge", "dollars per hour",
         "Price of this GPU per hour (--gpu-hourly-cost, the config, or the catalogue's --pricing price)."),
    # --- engines ---
    _engine("engine_up", "gauge", "",
            "1 if the engine's /metrics was read and parsed in the last collection, else 0."),
    _engine("engine_info", "info", "", "Engine identity from its metrics and identity endpoint; value 1.",
            ("engine", "kind", "model", "version")),
    _engine("engine_gpu_info", "info", "",
            "GPUs an engine uses (--engine-gpus, or the default split); value 1.", ("engine", "gpu", "uuid")),
    _engine("engine_gpu_memory_used_bytes", "gauge", "bytes",
            "Device memory used by the processes NVML lists on the engine's GPUs."),
    _engine("time_to_first_token_seconds", "summary", "seconds",
            "Time to first token. " + LATENCY_NOTE),
    _engine("time_per_output_token_seconds", "summary", "seconds",
            "Mean time per output token of each finished request (vLLM request_time_per_output_token, "
            "older vLLM time_per_output_token, TGI mean_time_per_token). " + LATENCY_NOTE),
    _engine("inter_token_latency_seconds", "summary", "seconds",
            "Time between consecutive streamed outputs (engines that report it). " + LATENCY_NOTE),
    _engine("e2e_request_latency_seconds", "summary", "seconds",
            "End-to-end request latency in the engine. " + LATENCY_NOTE),
    _engine("queue_time_seconds", "summary", "seconds",
            "Time requests waited in the engine's queue. " + LATENCY_NOTE),
    _engine("request_render_duration_seconds", "summary", "seconds",
            "Time the engine's API server spent rendering a request before scheduling it: request checks, chat "
            "template, tokenisation, multimodal preprocessing (vLLM 0.34+ request_render_duration_seconds). The "
            "engine's TTFT starts inside this span, so it already holds most of it; what neither includes is "
            "the network, HTTP handling and the stream (docs/accuracy.md). " + LATENCY_NOTE),
    _engine("latency_quantile_bound_seconds", "gauge", "seconds",
            "The interval each exported latency quantile is known to lie in, from the window's buckets and sum "
            "(q: the quantile; bound=lower|upper; histogram names the latency, e.g. time_to_first_token): a "
            "quantile whose lower bound is 0 and upper bound a bucket bound is only known to be at most that.",
            (*ENGINE_LABELS, "histogram", "q", "bound")),
    _engine("prompt_tokens_per_second", "gauge", "tokens per second",
            "Prompt (prefill) tokens processed per second " + RATE_NOTE + "; every prompt token, prefix-cache hits "
            "and KV transferred from elsewhere included (vLLM prompt_tokens_total)."),
    _engine("prompt_tokens_computed_per_second", "gauge", "tokens per second",
            "Prompt tokens the engine computed per second " + RATE_NOTE + ": prefix-cache hits and KV transferred "
            "from elsewhere left out (vLLM prompt_tokens_by_source, source local_compute); the prefill work "
            "the analytic model, the cost split and the planner use."),
    _engine("generation_tokens_per_second", "gauge", "tokens per second",
            "Generated (decode) tokens per second " + RATE_NOTE + "."),
    _engine("requests_per_second", "gauge", "requests per second",
            "Requests finished per second " + RATE_NOTE + ", whatever their outcome (aborted and failed included; "
            "infermeter_request_outcomes_per_second splits them)."),
    _engine("request_outcomes_per_second", "gauge", "requests per second",
            "Finished requests per second by outcome " + RATE_NOTE + " (vLLM request_success_total's "
            "finished_reason): completed (stop, length, repetition: an answer was delivered), aborted (the client "
            "went away), failed (an engine error); they add up to infermeter_requests_per_second.",
            (*ENGINE_LABELS, "outcome")),
    _engine("admission_rejections_per_second", "gauge", "requests per second",
            "Requests the engine turned away at admission per second " + RATE_NOTE + " (vLLM "
            "admission_rejections_total, every reason: --max-num-queued-reqs or --max-num-queued-tokens); demand "
            "that never got in, counted in the planner's requests per second."),
    _engine("preemptions_per_second", "gauge", "preemptions per second",
            "Requests preempted per second " + RATE_NOTE + " (KV cache pressure)."),
    _engine("prefix_cache_hit_ratio", "gauge", "ratio",
            "Prefix cache hits per query token " + WINDOW_NOTE + ": the engine's own (GPU) prefix cache; vLLM's "
            "offloaded and remote tiers are in infermeter_prefix_cache_tier_hit_ratio."),
    _engine("prefix_cache_tier_hit_ratio", "gauge", "ratio",
            "Prompt tokens whose KV one cache tier supplied, per prompt token queried " + WINDOW_NOTE + " (vLLM "
            "prompt_tokens_cached_by_source over prefix_cache_queries; tier: device (GPU memory, the same as "
            "infermeter_prefix_cache_hit_ratio), host (offloaded to CPU memory), disk, p2p (another instance), "
            "external_unspecified); the sum over tiers is the share any cache served.", (*ENGINE_LABELS, "tier")),
    _engine("spec_decode_acceptance_ratio", "gauge", "ratio",
            "Speculative decoding: draft tokens accepted per draft token proposed " + WINDOW_NOTE + " (engines that "
            "report only a ratio: its latest value)."),
    _engine("spec_decode_mean_acceptance_length_tokens", "gauge", "tokens",
            "Speculative decoding: tokens each draft step yields, 1 + accepted draft tokens per draft "
            + WINDOW_NOTE + " (vLLM's mean acceptance length, the bonus token included; "
            "vllm:spec_decode_num_drafts_total)."),
    _engine("requests_running", "gauge", "requests", "Requests in the running batch."),
    _engine("requests_waiting", "gauge", "requests",
            "Requests waiting in the engine's queue (vLLM: for capacity and deferred alike; "
            "infermeter_requests_waiting_by_reason splits them)."),
    _engine("requests_waiting_by_reason", "gauge", "requests",
            "Requests waiting, by reason (vLLM num_requests_waiting_by_reason): capacity (for room in the batch "
            "or the KV cache) or deferred (for a LoRA slot, a KV transfer or a blocked state); they add up to "
            "infermeter_requests_waiting. Right-sizing counts capacity only.", (*ENGINE_LABELS, "reason")),
    _engine("kv_cache_usage_ratio", "gauge", "ratio",
            "Fraction of the KV cache in use (vLLM kv_cache_usage_perc; TGI current batch max tokens over "
            "max batch total tokens)."),
    _engine("kv_cache_capacity_tokens", "gauge", "tokens",
            "Tokens the KV cache holds (vLLM cache_config_info kv_cache_size_tokens, which counts every KV cache "
            "group of a hybrid model, else num_gpu_blocks x block_size; TGI max_batch_total_tokens)."),
    # --- analytic expectations (docs/analytic-model.md) ---
    _engine("model_info", "info", "", "The model architecture the analytic model uses and where it came from; "
            "value 1.", ("engine", "kind", "model", "architecture", "weight_dtype", "spec_source")),
    _engine("model_weight_bytes", "gauge", "bytes", "Bytes of the model's weights (dtype and quantisation included)."),
    _engine("kv_cache_bytes_per_token", "gauge", "bytes",
            "KV cache bytes per token: 2 x layers x KV heads x head dim x KV dtype bytes."),
    _engine("expected_kv_cache_capacity_tokens", "gauge", "tokens",
            "KV cache tokens that should fit: (GPU memory x gpu_memory_utilization - weights - overhead) / "
            "KV bytes per token."),
    _engine("expected_time_per_output_token_seconds", "gauge", "seconds",
            "Roofline time per output token at the observed batch and context " + WINDOW_NOTE + "."),
    _engine("expected_time_to_first_token_seconds", "gauge", "seconds",
            "Roofline prefill time of the observed mean prompt's computed tokens " + WINDOW_NOTE + " (prefix-cache "
            "hits left out where the engine reports them), without queueing."),
    _engine("tpot_efficiency_ratio", "gauge", "ratio",
            "Expected time per output token over the observed median (1 = at the roofline); the median "
            "inter-token latency where the engine has no time-per-output-token histogram (SGLang)."),
    _engine("memory_bandwidth_utilization_ratio", "gauge", "ratio",
            "MBU: bytes moved per second over the GPUs' peak bandwidth (source=analytic from the model and the "
            "observed step time; source=engine from vLLM's own estimate of bytes read plus bytes written).",
            (*ENGINE_LABELS, "source")),
    _engine("model_flops_utilization_ratio", "gauge", "ratio",
            "MFU: FLOPs per second over the GPUs' dense peak (source=analytic: 2 x active params x tokens/s, "
            "counting the prompt tokens the engine computed and the generated ones; source=engine: vLLM's own "
            "estimate).", (*ENGINE_LABELS, "source")),
    _engine("gpu_memory_breakdown_bytes", "gauge", "bytes",
            "The engine's GPU memory: weights and KV cache (analytic sizes) and the rest NVML reports as used.",
            (*ENGINE_LABELS, "component")),
    # --- cost ---
    _engine("cost_dollars_per_hour", "gauge", "dollars per hour", "What the engine's GPUs cost per hour."),
    _engine("cost_dollars_total", "counter", "dollars",
            "Money spent on the engine's GPUs since the exporter started."),
    _engine("cost_per_request_dollars", "gauge", "dollars",
            "Hourly cost over requests completed per hour " + WINDOW_NOTE + ": the cost is spread over the "
            "requests that got an answer (stop, length, repetition), so aborted and failed requests' GPU time "
            "raises it; every finished request where the engine does not tell outcomes apart."),
    _engine("cost_per_million_tokens_dollars", "gauge", "dollars",
            "Cost of a million tokens " + WINDOW_NOTE + "; prompt and generation split the hourly cost by their "
            "share of GPU time.", (*ENGINE_LABELS, "token_type")),
    _engine("idle_cost_dollars_per_hour", "gauge", "dollars per hour",
            "The share of the hourly cost the GPUs spend idle (1 - GPU utilisation)."),
    _engine("achievable_cost_per_million_tokens_dollars", "gauge", "dollars",
            "Cost of a million tokens " + WINDOW_NOTE + " on the recommended shape "
            "(infermeter_rightsizing_gpus_needed)."),
    # --- right-sizing: the state with its evidence, and one planner call (docs/analytic-model.md) ---
    _engine("rightsizing_state", "gauge", "",
            "1 for the engine's state: overprovisioned, memory_bound, compute_bound, engine_limited, sleeping or "
            "balanced, decided by the evidence of the last minute's loaded samples; a state is taken once it has "
            "been the candidate for 3 cycles and 15 s, the first one included (sleeping, which the engine "
            "declares, at once; rules in docs/analytic-model.md).", (*ENGINE_LABELS, "state")),
    _engine("rightsizing_state_changes_total", "counter", "",
            "Changes of infermeter_rightsizing_state since the exporter started (flapping shows here)."),
    _engine("rightsizing_evidence_window_seconds", "gauge", "seconds",
            "Span of the samples the state's evidence comes from (the last minute of the window)."),
    _engine("rightsizing_loaded_ratio", "gauge", "ratio",
            "Share of the evidence samples in which a request was running or waiting."),
    _engine("rightsizing_queueing_ratio", "gauge", "ratio",
            "Share of the loaded evidence samples in which a request was waiting for capacity (vLLM: "
            "reason=capacity, deferred requests left out)."),
    _engine("rightsizing_kv_cache_full_ratio", "gauge", "ratio",
            "Share of the loaded evidence samples in which KV cache usage was at least 0.9."),
    _engine("rightsizing_preemptions_per_second", "gauge", "",
            "Preemptions (SGLang: retractions) per second over the evidence samples; any means the KV cache "
            "ran out."),
    _engine("rightsizing_waiting_requests", "gauge", "",
            "Mean requests waiting for capacity over the loaded evidence samples (vLLM: reason=capacity)."),
    _engine("rightsizing_gpu_busy_ratio", "gauge", "ratio",
            "Mean NVML utilisation of the engine's GPUs over the loaded evidence samples (shown, not decisive: "
            "it counts any kernel running)."),
    _engine("rightsizing_batch_ratio", "gauge", "ratio",
            "Mean running requests per replica over the loaded evidence samples, over the largest batch whose "
            "decode step meets the TPOT target on the engine's current shape."),
    _engine("rightsizing_gpus_needed", "gauge", "GPUs",
            "GPUs of the engine's GPU model in the cheapest tensor-parallel shape that serves its load "
            + WINDOW_NOTE + " within the SLO targets (one planner call: infermeter report and plan --from give "
            "the same); an engine that finished nothing is planned for one default request."),
    _engine("rightsizing_plan_info", "info", "",
            "The recommended shape: tensor_parallel, basis=calibrated when the engine's observed efficiency "
            "was applied (roofline otherwise), and the KV cache dtype planned with (auto or fp8, from the engine's "
            "cache_dtype); value 1.", (*ENGINE_LABELS, "tensor_parallel", "basis", "kv_cache_dtype")),
    _engine("rightsizing_savings_dollars_per_hour", "gauge", "dollars per hour",
            "What the engine costs per hour now minus the recommended shape of its GPU model (never below 0)."),
    _engine("rightsizing_planned_requests_per_second", "gauge", "",
            "Requests per second the planner was given: finished plus rejected at admission over the window (two "
            "significant digits; 1e-06 with a default request when nothing finished in the window)."),
    _engine("rightsizing_planned_prompt_tokens", "gauge", "tokens",
            "Mean prompt tokens per request the planner was given (all of them: the KV cache holds them)."),
    _engine("rightsizing_planned_computed_prompt_tokens", "gauge", "tokens",
            "Mean prompt tokens per request the planner times the prefill on: the ones the engine computed, "
            "prefix-cache hits left out (absent where the engine does not report them: the whole prompt)."),
    _engine("rightsizing_planned_output_tokens", "gauge", "tokens",
            "Mean output tokens per request the planner was given."),
    _engine("rightsizing_efficiency_ratio", "gauge", "ratio",
            "Observed share of the roofline the planner applied, per phase (decode: analytic MBU; prefill: "
            "roofline prefill of the mean prompt over the mean prefill time); absent: that phase is on the roofline.",
            (*ENGINE_LABELS, "phase")),
    _engine("rightsizing_calibration_info", "info", "",
            "Per phase, whether the planner is calibrated, and if not why (reason: no_requests, "
            "too_few_requests, not_observed, not_positive); value 1.", (*ENGINE_LABELS, "phase", "basis", "reason")),
    # --- what-if: the observed load on other GPU models (docs/planning.md) ---
    _engine("whatif_gpus_needed", "gauge", "GPUs",
            "GPUs of this model, in whole replicas of its cheapest tensor-parallel shape, that would serve the "
            "engine's observed load " + WINDOW_NOTE + " within the SLO targets (absent: it cannot).",
            (*ENGINE_LABELS, "gpu_model")),
    _engine("whatif_cost_dollars_per_hour", "gauge", "dollars per hour",
            "What those GPUs would cost per hour at the --pricing price.", (*ENGINE_LABELS, "gpu_model")),
    _engine("whatif_best_gpu_info", "info", "",
            "The cheapest GPU model and tensor-parallel size that would serve the observed load within the SLO "
            "targets; basis=calibrated applies the engine's observed efficiency, roofline does not; value 1.",
            (*ENGINE_LABELS, "gpu_model", "tensor_parallel", "basis")),
    _engine("whatif_savings_dollars_per_hour", "gauge", "dollars per hour",
            "What the engine costs per hour now minus the cheapest option over GPU models (never below 0)."),
    # --- the exporter itself ---
    _self("collector_success", "gauge", "",
          "1 if the collector's last run succeeded, else 0 (collector = nvml or engine/NAME).", ("collector",)),
    _self("collector_duration_seconds", "gauge", "seconds",
          "Wall time of the collector's last run.", ("collector",)),
    _self("collector_errors_total", "counter", "",
          "Failed collector runs since the exporter started.", ("collector",)),
    _self("last_collect_timestamp_seconds", "gauge", "seconds",
          "Unix time at which the snapshot being served was collected."),
    _self("window_seconds", "gauge", "seconds", "Sliding window for rates and quantiles (--window)."),
    _self("slo_time_to_first_token_seconds", "gauge", "seconds", "Time-to-first-token target (--slo-ttft-seconds)."),
    _self("slo_time_per_output_token_seconds", "gauge", "seconds",
          "Time-per-output-token target (--slo-tpot-seconds)."),
    _self("budget_cost_per_request_dollars", "gauge", "dollars",
          "What a request may cost (--budget-cost-per-request-dollars)."),
    _self("whatif_savings_threshold_ratio", "gauge", "ratio",
          "Share of an engine's hourly cost another GPU model must save for InfermeterCheaperGPUAvailable "
          "(--whatif-savings-threshold-ratio)."),
    _self("build_info", "info", "", "infermeter build; value 1.", ("version",)),
    _self("demo_info", "info", "", "Present only with --demo: this engine and its GPUs are simulated; value 1.",
          ("engine", "scenario")),
)

BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOG}


def spec(name: str) -> MetricSpec:
    """The catalogue entry for ``name`` (with or without the ``infermeter_`` prefix)."""
    return BY_NAME[name if name.startswith(PREFIX) else PREFIX + name]


def help_text(metric: MetricSpec, window_seconds: float) -> str:
    """HELP text with the configured window filled in."""
    return metric.help.format(window=f"{window_seconds:g}s")


def markdown_table() -> str:
    """The README metric table."""
    rows = ["| Metric | Type | Labels | Description |", "| --- | --- | --- | --- |"]
    for m in CATALOG:
        labels = ", ".join(f"`{label}`" for label in m.labels)
        rows.append(f"| `{m.name}` | {m.type} | {labels} | {m.help.format(window='window')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
