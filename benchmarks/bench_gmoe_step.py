"""GMoE-S/16 vs ViT-S/16 training step: time (forward + backward + Adam step) and peak memory.

Memory: every (round, model) runs in a fresh Python subprocess, so each peak belongs to one model
alone. On CPU, torch's allocations are invisible to tracemalloc and there are no CUDA memory
counters, so peak memory is the process's peak resident set size (getrusage ru_maxrss) minus
its size right after imports: weights, gradients, Adam state, activations of the step. glibc is
told to mmap every block >= 1 MiB (MALLOC_MMAP_THRESHOLD_), so freed tensors go back to the OS
and the peak RSS follows the peak of live memory instead of heap fragmentation.

Time: measured separately, in this process with normal malloc settings (the mmap setting adds
page-fault cost to every big allocation), all models built once and their steps alternated
round by round, so load from other processes hits all alike; ratios are medians of per-round
ratios, of wall-clock time and of process CPU time (on a loaded machine with --threads 1, CPU
time excludes waiting for a core).

    .venv/bin/python benchmarks/bench_gmoe_step.py --threads 1       # batch 32 at 224
"""

from __future__ import annotations

import argparse
import json
import os
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


# glibc keeps freed large blocks in its heap unless they were mmap'ed, so the peak RSS would
# depend on fragmentation; a fixed 1 MiB mmap threshold returns every large tensor to the OS
# when freed, and the peak RSS then follows the peak of live memory.
WORKER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def worker(config: str, batch: int, img: int, warmup: int, steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional  # noqa: F401  (imported before the memory baseline)

    sys.path.insert(0, str(ROOT))
    import domainbed.moe  # noqa: F401  (imported before the memory baseline)

    if threads:
        torch.set_num_threads(threads)
    base_mb = _maxrss_mb()
    torch.manual_seed(0)
    model, optimizer = build(config, img)
    images = torch.randn(batch, 3, img, img)
    labels = torch.randint(0, 7, (batch,))
    times, cpu_times = [], []
    for i in range(warmup + steps):
        wall, cpu = train_step(model, optimizer, images, labels)
        if i >= warmup:
            times.append(wall)
            cpu_times.append(cpu)
    return {"config": config, "step_s": statistics.median(times), "cpu_s": statistics.median(cpu_times),
            "peak_mb": _maxrss_mb() - base_mb,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "threads": torch.get_num_threads()}


def train_step(model, optimizer, images, labels) -> tuple[float, float]:
    """One forward + backward + Adam step; (wall, process CPU) seconds."""
    import torch.nn.functional as F

    from domainbed.moe import collect_aux_loss

    start, start_cpu = time.perf_counter(), time.process_time()
    loss = F.cross_entropy(model(images), labels) + 0.01 * collect_aux_loss(model)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, time.process_time() - start_cpu


def build(config: str, img: int):
    import timm
    import torch

    sys.path.insert(0, str(ROOT))
    import domainbed.models.gmoe  # noqa: F401

    name, kwargs = CONFIGS[config]
    model = timm.create_model(name, num_classes=7, drop_path_rate=0.1, img_size=img, **kwargs).train()
    return model, torch.optim.Adam(model.parameters(), lr=3e-5)


def time_steps(batch: int, img: int, warmup: int, rounds: int, threads: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per step, models alternating step by step."""
    import torch

    sys.path.insert(0, str(ROOT))

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {name: build(name, img) for name in CONFIGS}
    images, labels = torch.randn(batch, 3, img, img), torch.randint(0, 7, (batch,))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    for r in range(warmup + rounds):
        for name, (model, optimizer) in models.items():
            step_times = train_step(model, optimizer, images, labels)
            if r >= warmup:
                times[name].append(step_times)
                print(f"timing round {r - warmup + 1}/{rounds} {name}: {times[name][-1]}", file=sys.stderr)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1, help="steps after warmup per memory subprocess")
    parser.add_argument("--rounds", type=int, default=2, help="memory rounds (one subprocess per model each)")
    parser.add_argument("--timing-rounds", type=int, default=3, help="alternating timed steps per model")
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
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=WORKER_ENV).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {name}: {results[name][-1]}", file=sys.stderr)

    times = time_steps(args.batch, args.img, args.warmup, args.timing_rounds, args.threads)
    dense = results["vit_small_patch16_224"]
    targets = {"gmoe_small k=1": 1.05, "gmoe_small k=2": 1.15}
    rows = []
    med = statistics.median
    for name, runs in results.items():
        steps, dense_steps = times[name], times["vit_small_patch16_224"]
        time_ratio = med(t[0] / d[0] for t, d in zip(steps, dense_steps))
        cpu_ratio = med(t[1] / d[1] for t, d in zip(steps, dense_steps))
        mem_ratio = med(run["peak_mb"] / d["peak_mb"] for run, d in zip(runs, dense))
        rows.append((name, runs[0]["params_m"], med(t[0] for t in steps), med(t[1] for t in steps),
                     med(r["peak_mb"] for r in runs), time_ratio, cpu_ratio, mem_ratio, targets.get(name)))

    header = (f"threads={dense[0]['threads']} batch={args.batch} img={args.img}, Adam, 7 classes, drop_path 0.1; "
              f"time: median of {args.timing_rounds} alternating rounds after {args.warmup} warmup; "
              f"memory: median of {args.rounds} fresh subprocesses per model")
    print(header)
    print(f"{'model':>22} {'params M':>9} {'step s':>8} {'cpu s':>8} {'peak MB':>9} {'time x':>7} {'cpu x':>6} {'mem x':>6}")
    for name, params, step, cpu, peak, tr, cr, mr, _ in rows:
        print(f"{name:>22} {params:9.1f} {step:8.2f} {cpu:8.2f} {peak:9.0f} {tr:7.3f} {cr:6.3f} {mr:6.3f}")
    print("\nmarkdown:\n")
    print(f"({header})\n")
    print("| model | params (M) | step wall (s) | step CPU (s) | peak memory (MB) | wall vs ViT-S | CPU time vs ViT-S | time target | memory vs ViT-S | memory target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, params, step, cpu, peak, tr, cr, mr, target in rows:
        if target is None:
            print(f"| {name} | {params:.1f} | {step:.2f} | {cpu:.2f} | {peak:.0f} | 1 | 1 | | 1 | |")
        else:
            print(f"| {name} | {params:.1f} | {step:.2f} | {cpu:.2f} | {peak:.0f} | {tr:.3f}x | {cr:.3f}x | <= {target}x "
                  f"({'met' if tr <= target else 'MISSED'}, wall) | {mr:.3f}x | <= 1.2x ({'met' if mr <= 1.2 else 'MISSED'}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
