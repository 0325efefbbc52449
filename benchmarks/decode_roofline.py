"""Measure real decode on a GPU and hold it against infermeter's analytic (roofline) prediction.

    python3 benchmarks/decode_roofline.py [--model meta-llama/Llama-3.1-8B] [--context 1024]
                                          [--batches 1,8,32] [--out accuracy.md]

Needs an NVIDIA GPU and PyTorch. It builds a model of the built-in config's shape (Llama-3.1-8B by
default) with random bf16 weights directly on the GPU (nothing is downloaded), and a static KV
cache filled to ``--context`` tokens; one decode step (RMSNorm, QKV, RoPE, grouped-query attention
over the cache with PyTorch's scaled_dot_product_attention, output projection, gated MLP, for every
layer, then the LM head) is captured in a CUDA graph, as serving engines do, and replayed; CUDA
events time it. Beside each measurement: infermeter's expected step time for the same shape on the
GPU NVML names (exporter.derive.roofline.decode_step), whether it is memory- or compute-bound, and
the MBU the measured time implies. A measured time below the roofline would mean a formula is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.derive import roofline
from exporter.facts.gpus import GpuSpec, find
from exporter.facts.models import ModelSpec, builtin


class Decoder:
    """One decode step of a Llama-shaped model with a static KV cache (random weights)."""

    def __init__(self, spec: ModelSpec, batch: int, context: int, device: str = "cuda") -> None:
        d, h, kv, hd, inter = spec.hidden_size, spec.heads, spec.kv_heads, spec.head_dim, spec.intermediate_size
        dt = torch.bfloat16
        scale = 0.02

        def w(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, device=device, dtype=dt) * scale

        self.spec, self.batch, self.context = spec, batch, context
        self.layers = [{
            "norm1": torch.ones(d, device=device, dtype=dt), "norm2": torch.ones(d, device=device, dtype=dt),
            "qkv": w((h + 2 * kv) * hd, d), "o": w(d, h * hd), "gate_up": w(2 * inter, d), "down": w(d, inter),
            "k": torch.randn(batch, kv, context + 1, hd, device=device, dtype=dt),
            "v": torch.randn(batch, kv, context + 1, hd, device=device, dtype=dt),
        } for _ in range(spec.layers)]
        self.embed = w(spec.vocab_size, d)
        self.lm_head = self.embed if spec.tied_embeddings else w(spec.vocab_size, d)
        self.final_norm = torch.ones(d, device=device, dtype=dt)
        self.tokens = torch.randint(0, spec.vocab_size, (batch,), device=device)
        inv = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        angles = context * inv
        self.cos = torch.cat([angles.cos(), angles.cos()]).to(dt)
        self.sin = torch.cat([angles.sin(), angles.sin()]).to(dt)
        self.position = torch.tensor([context], device=device)

    @staticmethod
    def _norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + 1e-5)).to(x.dtype) * weight

    def _rope(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * self.cos + rotated * self.sin

    def matmuls_only(self) -> torch.Tensor:
        """The step's weight matrix products alone (no norms, RoPE, attention): what the GEMM library
        reaches on the weight reads, to separate it from the rest of the step."""
        x = self.embed[self.tokens]
        for layer in self.layers:
            x = x + (x @ layer["qkv"].t())[:, : x.shape[1]] @ layer["o"].t()[: x.shape[1]] * 0
            x = x + (x @ layer["gate_up"].t())[:, : layer["down"].shape[1]] @ layer["down"].t()
        return (x @ self.lm_head.t()).argmax(-1)

    def step(self) -> torch.Tensor:
        spec, b = self.spec, self.batch
        h, kv, hd = spec.heads, spec.kv_heads, spec.head_dim
        x = self.embed[self.tokens]  # [B, d]
        for layer in self.layers:
            y = self._norm(x, layer["norm1"])
            qkv = y @ layer["qkv"].t()
            q, k, v = qkv.split([h * hd, kv * hd, kv * hd], dim=-1)
            q = self._rope(q.view(b, h, 1, hd))
            k = self._rope(k.view(b, kv, 1, hd))
            layer["k"].index_copy_(2, self.position, k)
            layer["v"].index_copy_(2, self.position, v.view(b, kv, 1, hd))
            attention = F.scaled_dot_product_attention(q, layer["k"], layer["v"], enable_gqa=True)
            x = x + attention.reshape(b, h * hd) @ layer["o"].t()
            y = self._norm(x, layer["norm2"])
            gate, up = (y @ layer["gate_up"].t()).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer["down"].t()
        logits = self._norm(x, self.final_norm) @ self.lm_head.t()
        return logits.argmax(-1)


def measure(spec: ModelSpec, batch: int, context: int, steps: int, part: str = "step") -> float:
    decoder = Decoder(spec, batch, context)
    run = getattr(decoder, part)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up: kernels chosen, memory pooled
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / steps
    del graph, decoder
    torch.cuda.empty_cache()
    return seconds


def bandwidth_ceiling() -> float:
    """Bytes per second a large device-to-device copy reaches (read + write counted)."""
    src = torch.empty(4 * 1024**3, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    rate = 2 * src.numel() * 10 / (start.elapsed_time(end) / 1000)
    del src, dst
    torch.cuda.empty_cache()
    return rate


def gpu_spec() -> tuple[str, GpuSpec | None]:
    import pynvml

    pynvml.nvmlInit()
    name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
    name = name.decode() if isinstance(name, bytes) else name
    return name, find(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "accuracy.md"))
    args = parser.parse_args()
    spec = builtin(args.model)
    if spec is None:
        raise SystemExit(f"no built-in config for {args.model}")
    name, gpu = gpu_spec()
    if gpu is None:
        raise SystemExit(f"GPU {name!r} is not in infermeter's catalogue")
    ceiling = bandwidth_ceiling()
    lines = [f"GPU: {name} (catalogue: {gpu.memory_bandwidth_bytes_per_second / 1e12:.2f} TB/s, "
             f"{gpu.flops_for('bf16') or 0:.4g} bf16 FLOP/s); measured copy bandwidth {ceiling / 1e12:.2f} TB/s "
             f"(read + write). Model: {spec.name} shape, bf16, random weights; context {args.context} tokens; "
             f"PyTorch {torch.__version__}; CUDA graph replays timed with CUDA events, mean of {args.steps}.", "",
             "| batch | measured step | infermeter expected | bound | expected / measured | MBU (measured) "
             "| weight matmuls alone | their MBU |",
             "|---|---|---|---|---|---|---|---|"]
    for batch in (int(b) for b in args.batches.split(",")):
        seconds = measure(spec, batch, args.context, args.steps)
        expected = roofline.decode_step(spec, gpu, 1, batch, args.context + 1, 2.0)
        assert expected is not None
        moved = roofline.decode_bytes_per_step(spec, batch, batch * (args.context + 1), 2.0)
        mbu = roofline.memory_bandwidth_utilization(moved, seconds, gpu, 1) or 0.0
        matmuls = measure(spec, batch, args.context, args.steps, "matmuls_only")
        weights = roofline.weight_bytes_read(spec, batch)
        lines.append(f"| {batch} | {seconds * 1e3:.3f} ms | {expected.seconds * 1e3:.3f} ms | {expected.bound} | "
                     f"{expected.seconds / seconds:.3f} | {mbu:.3f} | {matmuls * 1e3:.3f} ms | "
                     f"{weights / matmuls / gpu.memory_bandwidth_bytes_per_second:.3f} |")
        if seconds < expected.seconds:
            lines.append(f"| | measured is FASTER than the roofline at batch {batch}: a formula is wrong | | | | | | |")
    report = "\n".join(lines) + "\n"
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
