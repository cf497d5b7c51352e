"""Per-environment accuracy of a checkpoint:
``python -m domainbed.scripts.evaluate --checkpoint model.pkl --data_dir D --dataset PACS``.

Works for our model.pkl files and for the authors' (SF-MoE code) ones.
"""

from __future__ import annotations

import argparse
import os

from ..checkpoints import UnsafeCheckpointError
from ..run.evaluation import evaluate_environments
from ._cli import add_checkpoint_arguments, load_checkpoint_from_args, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Per-environment accuracy of a trained model")
    add_checkpoint_arguments(parser)
    parser.add_argument("--data_dir", default=None,
                        help="default: the data folder the model was trained on (stored in the checkpoint), "
                             "else ./domainbed/data")
    parser.add_argument("--dataset", default=None, help="default: the dataset the model was trained on")
    parser.add_argument("--batch_size", type=int, default=64)
    return parser


def _trained_data_dir(trained_args: dict) -> str | None:
    """The data folder of the training run, if it still exists here."""
    data_dir = trained_args.get("data_dir")
    return data_dir if data_dir and os.path.isdir(data_dir) else None


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    algorithm, device = load_checkpoint_from_args(args)
    trained = algorithm.checkpoint_args
    dataset = args.dataset or trained.get("dataset")
    if dataset is None:
        raise ValueError("the checkpoint does not name its dataset; pass --dataset")
    data_dir = args.data_dir or _trained_data_dir(trained) or "./domainbed/data"
    results = evaluate_environments(algorithm, dataset, data_dir, algorithm.hparams, args.batch_size, device)
    test_envs = trained.get("test_envs", []) if dataset == trained.get("dataset") else []
    print(f"{'env':>3}  {'name':<14} {'images':>7}  {'accuracy':>8}")
    for result in results:
        role = "  (test)" if result.index in test_envs else ""
        print(f"{result.index:>3}  {result.name:<14} {result.n:>7}  {100 * result.accuracy:>7.2f}%{role}")
    return results


if __name__ == "__main__":
    run_main(main, (FileNotFoundError, ValueError, UnsafeCheckpointError))
