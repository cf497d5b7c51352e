"""SparseMoE vs the `mixture-of-experts` package (lucidrains), top-2, nothing dropped on either side.

Matched settings: 6 experts, top-2 for every token, linear router, no gate noise, bias-free GELU
experts (that package's experts have no biases), same tokens, forward+backward in train mode.

"No token dropped" needs different knobs on the two sides:
- ours: ``capacity_factor=None`` (dropless, exact-size expert blocks);
- theirs: capacity is per sequence, C = min(N, int(N * cf / E)), and each expert gets every slot
  of its padded [E, B*C, D] block computed. ``second_policy="all"`` keeps every second choice.
  * "guaranteed": cf = E gives C = N, enough for any routing (an expert takes at most one
    choice per token) - the only setting that can never drop;
  * "this batch": the smallest cf whose C covers the busiest (sequence, expert) pair of this
    very batch (checked: every token keeps both choices) - their best case, data dependent.

    .venv/bin/python benchmarks/bench_vs_mixture_of_experts.py
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from mixture_of_experts import MoE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_args import layer_benchmark_args  # noqa: E402
from domainbed.moe import SparseMoE  # noqa: E402


class TheirLayer(nn.Module):
    """Their MoE returns (output, loss); add the loss like a training step would."""

    def __init__(self, moe: MoE):
        super().__init__()
        self.moe = moe

    def forward(self, x):
        out, loss = self.moe(x)
        return out + 0 * loss


def fwd_bwd_seconds(layer, x, grad) -> tuple[float, float]:
    """(wall-clock, process CPU) seconds of one forward+backward."""
    layer.zero_grad(set_to_none=True)
    start, start_cpu = time.perf_counter(), time.process_time()
    layer(x).backward(grad)
    return time.perf_counter() - start, time.process_time() - start_cpu


def min_capacity_factor(moe: MoE, x: torch.Tensor) -> float:
    """Smallest cf for which their per-sequence capacity holds every top-2 choice of this batch."""
    with torch.no_grad():
        probs = torch.einsum("bnd,de->bne", x, moe.gate.w_gating).softmax(-1)
        top2 = probs.topk(2, dim=-1).indices                       # [B, N, 2]
        counts = torch.nn.functional.one_hot(top2, moe.num_experts).sum(dim=(1, 2))  # [B, E]
        need = int(counts.max())
    n, e = x.shape[1], moe.num_experts
    cf = need * e / n
    while int(n * cf / e) < need:  # float rounding
        cf = math.nextafter(cf, math.inf)
    return cf


def nothing_dropped(moe: MoE, x: torch.Tensor) -> bool:
    with torch.no_grad():
        dispatch, _, _ = moe.gate(x)
    return bool((dispatch.sum(dim=(-2, -1)) == 2).all())


def main(argv: list[str] | None = None) -> int:
    args = layer_benchmark_args(__doc__.splitlines()[0], warmup=2, repeats=7, argv=argv)

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.tokens, args.dim, requires_grad=True)
    grad = torch.randn_like(x)
    ours = SparseMoE(args.dim, args.hidden, num_experts=args.experts, top_k=2, router="linear",
                     capacity_factor=None, gate_noise=0.0, bias=False).train()
    rows = []
    for label in ("guaranteed", "this batch"):
        torch.manual_seed(0)
        theirs = MoE(args.dim, num_experts=args.experts, hidden_dim=args.hidden, activation=nn.GELU,
                     second_policy_train="all", second_policy_eval="all")
        cf = float(args.experts) if label == "guaranteed" else min_capacity_factor(theirs, x.detach())
        theirs.gate.capacity_factor_train = theirs.gate.capacity_factor_eval = cf
        theirs.train()
        if not nothing_dropped(theirs, x.detach()):
            raise RuntimeError(f"their layer drops tokens at capacity_factor={cf}")
        their_layer = TheirLayer(theirs)
        for _ in range(args.warmup):
            fwd_bwd_seconds(ours, x, grad), fwd_bwd_seconds(their_layer, x, grad)
        ours_t, theirs_t, speedups, cpu_speedups = [], [], [], []
        for _ in range(args.repeats):
            (o, o_cpu), (t, t_cpu) = fwd_bwd_seconds(ours, x, grad), fwd_bwd_seconds(their_layer, x, grad)
            ours_t.append(o), theirs_t.append(t), speedups.append(t / o), cpu_speedups.append(t_cpu / o_cpu)
        capacity = min(args.tokens, int(args.tokens * cf / args.experts))
        med = statistics.median
        rows.append((label, cf, capacity, med(ours_t) * 1e3, med(theirs_t) * 1e3, med(speedups), med(cpu_speedups)))
    assert not ours.last_routing.dropped.any()

    header = (f"threads={torch.get_num_threads()} tokens={args.batch}x{args.tokens} D={args.dim} "
              f"H={args.hidden} E={args.experts} top-2")
    print(header)
    print(f"{'their capacity':>16} {'cf':>6} {'C/seq':>6} {'ours ms':>9} {'theirs ms':>10} {'speedup':>8} {'cpu speedup':>11}")
    for label, cf, cap, o, t, s, sc in rows:
        print(f"{label:>16} {cf:6.3f} {cap:>6} {o:9.1f} {t:10.1f} {s:8.2f} {sc:11.2f}")
    print("\nmarkdown:\n")
    print(f"({header}; median of {args.repeats} alternating rounds after {args.warmup} warmup)\n")
    print("| their capacity setting | their capacity_factor | their slots per expert per sequence | ours fwd+bwd (ms) | mixture-of-experts fwd+bwd (ms) | our speedup (wall) | our speedup (CPU time) | target >= 1.2x |")
    print("|---|---|---|---|---|---|---|---|")
    for label, cf, cap, o, t, s, sc in rows:
        print(f"| {label} | {cf:.3f} | {cap} | {o:.1f} | {t:.1f} | {s:.2f}x | {sc:.2f}x | {'met' if s >= 1.2 else 'MISSED'} (wall) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
