"""Command-line arguments shared by the MoE layer benchmarks (one FFN-sized token batch)."""

from __future__ import annotations

import argparse

import torch


def layer_benchmark_args(description: str, warmup: int, repeats: int,
                         argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the token-batch shape, repetition and thread flags; apply ``--threads``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
