"""GMoE-S/16 vs ViT-S/16 training step: time (forward + backward + Adam step) and peak memory.

Every (round, model) runs in a fresh Python subprocess, so each peak-memory figure belongs to one
model alone. On CPU, torch's allocations are invisible to tracemalloc and torch.cuda's counters
do not exist, so peak memory is the process's peak resident set size (getrusage ru_maxrss)
minus the resident size right after imports: weights, gradients, Adam state, activations and
allocator slack of the step. Rounds run the models one after the other (ViT, GMoE k=1, GMoE
k=2, then again), and time ratios are medians of per-round ratios, so load from other processes
on the machine hits all models alike.

    .venv/bin/python benchmarks/bench_gmoe_step.py                 # batch 32 at 224, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # name -> (timm model, extra kwargs)
    "vit_small_patch16_224": ("vit_small_patch16_224", {}),
    "gmoe_small k=1": ("gmoe_small_patch16_224", {"top_k": 1}),
    "gmoe_small k=2": ("gmoe_small_patch16_224", {"top_k": 2}),
}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def worker(config: str, batch: int, img: int, warmup: int, steps: int, threads: int) -> dict:
    import timm
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    import domainbed.models.gmoe  # noqa: F401
    from domainbed.moe import collect_aux_loss

    if threads:
        torch.set_num_threads(threads)
    base_mb = _maxrss_mb()
    torch.manual_seed(0)
    name, kwargs = CONFIGS[config]
    model = timm.create_model(name, num_classes=7, drop_path_rate=0.1, **kwargs).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-5)
    images = torch.randn(batch, 3, img, img)
    labels = torch.randint(0, 7, (batch,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels) + 0.01 * collect_aux_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"config": config, "step_s": statistics.median(times), "peak_mb": _maxrss_mb() - base_mb,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per subprocess")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.img, args.warmup, args.steps, args.threads)))
        return 0

    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for r in range(args.rounds):
        for name in CONFIGS:
            cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch), "--img", str(args.img),
                   "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {name}: {results[name][-1]}", file=sys.stderr)

    dense = results["vit_small_patch16_224"]
    targets = {"gmoe_small k=1": 1.05, "gmoe_small k=2": 1.15}
    rows = []
    for name, runs in results.items():
        time_ratio = statistics.median(run["step_s"] / d["step_s"] for run, d in zip(runs, dense))
        mem_ratio = statistics.median(run["peak_mb"] / d["peak_mb"] for run, d in zip(runs, dense))
        rows.append((name, runs[0]["params_m"], statistics.median(r["step_s"] for r in runs),
                     statistics.median(r["peak_mb"] for r in runs), time_ratio, mem_ratio, targets.get(name)))

    header = (f"threads={dense[0]['threads']} batch={args.batch} img={args.img} {args.rounds} rounds x "
              f"{args.steps} timed steps (after {args.warmup} warmup), Adam, 7 classes, drop_path 0.1")
    print(header)
    print(f"{'model':>22} {'params M':>9} {'step s':>8} {'peak MB':>9} {'time x':>7} {'mem x':>6}")
    for name, params, step, peak, tr, mr, _ in rows:
        print(f"{name:>22} {params:9.1f} {step:8.2f} {peak:9.0f} {tr:7.3f} {mr:6.3f}")
    print("\nmarkdown:\n")
    print(f"({header})\n")
    print("| model | params (M) | step time (s) | peak memory (MB) | time vs ViT-S | target | memory vs ViT-S | target |")
    print("|---|---|---|---|---|---|---|---|")
    for name, params, step, peak, tr, mr, target in rows:
        if target is None:
            print(f"| {name} | {params:.1f} | {step:.2f} | {peak:.0f} | 1 | | 1 | |")
        else:
            print(f"| {name} | {params:.1f} | {step:.2f} | {peak:.0f} | {tr:.3f}x | <= {target}x "
                  f"({'met' if tr <= target else 'MISSED'}) | {mr:.3f}x | <= 1.2x ({'met' if mr <= 1.2 else 'MISSED'}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
