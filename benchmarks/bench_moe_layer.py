"""SparseMoE forward+backward time relative to the dense timm Mlp it replaces.

Both layers see the same [B, N, D] tokens and an upstream gradient; measurements alternate
between the two layers round by round so that load from other processes hits both alike, and
the reported ratios are medians of per-round ratios, of wall-clock time and of process CPU time
(CPU time is what to trust on a loaded machine with --threads 1: it excludes time spent waiting
for a core).

    .venv/bin/python benchmarks/bench_moe_layer.py            # 32 x 197 tokens, 384 -> 1536
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from timm.layers import Mlp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_args import layer_benchmark_args  # noqa: E402
from domainbed.moe import SparseMoE, routing_stats  # noqa: E402


def fwd_bwd_seconds(layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one forward+backward."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    start, start_cpu = time.perf_counter(), time.process_time()
    out = layer(x)
    out.backward(grad)
    return time.perf_counter() - start, time.process_time() - start_cpu


def compare(dense: torch.nn.Module, moe: torch.nn.Module, x, grad, warmup: int, repeats: int):
    for _ in range(warmup):
        fwd_bwd_seconds(dense, x, grad), fwd_bwd_seconds(moe, x, grad)
    dense_t, moe_t, ratios, cpu_ratios = [], [], [], []
    for _ in range(repeats):
        (d, d_cpu), (m, m_cpu) = fwd_bwd_seconds(dense, x, grad), fwd_bwd_seconds(moe, x, grad)
        dense_t.append(d), moe_t.append(m), ratios.append(m / d), cpu_ratios.append(m_cpu / d_cpu)
    med = statistics.median
    return med(dense_t), med(moe_t), med(ratios), med(cpu_ratios)


def main(argv: list[str] | None = None) -> int:
    args = layer_benchmark_args(__doc__.splitlines()[0], warmup=3, repeats=11, argv=argv)

    torch.manual_seed(0)
    dense = Mlp(args.dim, args.hidden).train()
    x = torch.randn(args.batch, args.tokens, args.dim, requires_grad=True)
    grad = torch.randn(args.batch, args.tokens, args.dim)
    rows = []
    for top_k in (1, 2):
        for capacity_factor in (1.5, None):
            torch.manual_seed(1)
            moe = SparseMoE.from_mlp(dense, num_experts=args.experts, top_k=top_k,
                                     capacity_factor=capacity_factor).train()
            d, m, ratio, cpu_ratio = compare(dense, moe, x, grad, args.warmup, args.repeats)
            dropped = routing_stats(moe)[""]["dropped_share"]
            target = 1.1 * top_k
            rows.append((top_k, "dropless" if capacity_factor is None else capacity_factor,
                         d * 1e3, m * 1e3, ratio, cpu_ratio, target, dropped))

    header = f"threads={torch.get_num_threads()} tokens={args.batch}x{args.tokens} D={args.dim} H={args.hidden} E={args.experts}"
    print(header)
    print(f"{'k':>2} {'capacity':>9} {'dense ms':>9} {'moe ms':>9} {'ratio':>6} {'cpu ratio':>9} {'target':>7} {'dropped':>8}")
    for k, cap, d, m, ratio, cpu_ratio, target, dropped in rows:
        print(f"{k:>2} {cap!s:>9} {d:9.1f} {m:9.1f} {ratio:6.2f} {cpu_ratio:9.2f} {'<=' + format(target, '.2f'):>7} {dropped:8.3f}")
    print("\nmarkdown:\n")
    print(f"({header}; median of {args.repeats} alternating rounds after {args.warmup} warmup)\n")
    print("| top-k | capacity factor | dense Mlp fwd+bwd (ms) | SparseMoE fwd+bwd (ms) | wall-clock ratio | CPU-time ratio | target | met (wall) | tokens dropped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, cap, d, m, ratio, cpu_ratio, target, dropped in rows:
        print(f"| {k} | {cap} | {d:.1f} | {m:.1f} | {ratio:.2f}x | {cpu_ratio:.2f}x | <= {target:.2f}x | "
              f"{'yes' if ratio <= target else 'NO'} | {dropped:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
