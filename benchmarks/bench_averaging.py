"""What weight averaging costs per training step: SWAD's and SMA's ``after_step`` against ``update``.

The averages are kept in place (one fused ``torch._foreach_lerp_`` over the weights per step, no
per-step copies), so a step of SWAD/SMA should cost at most a few percent more than ERM's. For
each backbone, the same algorithm object runs ``update`` then ``after_step`` on a fixed batch,
both timed; reported: the median ``after_step`` time as a share of the median ``update`` time.

    .venv/bin/python benchmarks/bench_averaging.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

CONFIGS = {  # name -> (algorithm's hparam overrides, input shape, images per domain, domains)
    "micro GMoE, digits (32 px, 32 x 5 images)": ({"backbone": "gmoe_micro_patch4_32"}, (1, 32, 32), 32, 5),
    "GMoE-S/16 (224 px, 8 x 3 images)": ({"backbone": "gmoe_small_patch16_224", "pretrained": False},
                                         (3, 224, 224), 8, 3),
}


def measure(name: str, overrides: dict, input_shape, per_domain: int, domains: int, repeats: int) -> dict:
    from domainbed.algorithms import get_algorithm_class
    from domainbed.hparams_registry import resolve_hparams

    dataset = "RotatedDigits" if input_shape[-1] == 32 else "PACS"
    results = {}
    for algorithm_name in ("SMA", "SWAD"):
        hparams = resolve_hparams(algorithm_name, dataset, 0, 0, {**overrides, "batch_size": per_domain})
        torch.manual_seed(0)
        algorithm = get_algorithm_class(algorithm_name)(input_shape, 10, domains, hparams)
        batch = [(torch.randn(per_domain, *input_shape), torch.randint(0, 10, (per_domain,))) for _ in range(domains)]
        updates, averages = [], []
        for step in range(repeats + 2):
            start = time.perf_counter()
            algorithm.update(batch)
            middle = time.perf_counter()
            algorithm.after_step(step + hparams.get("sma_start_iter", 0))  # past SMA's start: averaging
            end = time.perf_counter()
            if step >= 2:  # warm-up
                updates.append(middle - start)
                averages.append(end - middle)
        update, average = statistics.median(updates), statistics.median(averages)
        results[algorithm_name] = (update, average)
        print(f"{name:<44} {algorithm_name:<5} update {update * 1000:9.1f} ms  after_step {average * 1000:7.2f} ms "
              f" = {100 * average / update:5.2f}% of a step", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, (overrides, shape, per_domain, domains) in CONFIGS.items():
        measure(name, overrides, shape, per_domain, domains, args.repeats)


if __name__ == "__main__":
    main()
