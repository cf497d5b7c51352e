"""The hyperparameters a sweep's model selection ranks best, per trial (DomainBed's script):
``python -m domainbed.scripts.list_top_hparams --input_dir D --dataset VLCS --algorithm ERM --test_env 0``.

For each selection method and trial, every hparams draw of that (dataset, algorithm, test env),
best validation accuracy first, with its hparams and run folders. The output follows DomainBed's
line for line; a run's accuracies print as DomainBed's ``{'val_acc': ..., 'test_acc': ...}`` plus
the ``step`` of the checkpoint they were measured at (the one the method selects in that run).
"""

from __future__ import annotations

import argparse
import sys

from ..results.records import base_algorithm, label_methods, load_records, selection_groups
from ..results.selection import SELECTION_METHODS
from ._cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Domain generalization: list the top hparams of a sweep")
    parser.add_argument("--input_dir", required=True, help="the sweep's output_dir")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--algorithm", required=True)
    parser.add_argument("--test_env", type=int, required=True)
    return parser


def top_hparams_report(records: list[dict], dataset: str, algorithm: str, test_env: int) -> list[str]:
    """DomainBed's report. When the records span several backbones or MoE configurations,
    ``algorithm`` matches each of its rows ("ALGORITHM (backbone)", ``label_methods``), and each
    group names its row."""
    lines = [f"Total records: {len(records)}"]
    labelled = label_methods(records)
    groups = [(key, group) for key, group in selection_groups(labelled).items()
              if key[1] == dataset and key[3] == test_env and algorithm in (key[2], base_algorithm(key[2]))]
    for method in SELECTION_METHODS:
        lines.append(f"Model selection: {method.name}")
        for (trial_seed, _, label, _), group in groups:
            if label != algorithm:
                lines.append(f"algorithm: {label}")
            lines.append(f"trial_seed: {trial_seed}")
            for accuracy, run_records in method.hparams_accs(group):
                lines.append(f"\t{ {'val_acc': accuracy.val_acc, 'test_acc': accuracy.test_acc, 'step': accuracy.step} }")
                lines.append("\t\thparams:")
                lines += [f"\t\t\t{key}: {value}" for key, value in sorted(run_records[0]["hparams"].items())]
                lines.append("\t\toutput_dirs:")
                output_dirs = dict.fromkeys(r["args"].get("output_dir") for r in run_records)
                lines += [f"\t\t\t{output_dir}" for output_dir in output_dirs]
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    args = build_parser().parse_args(argv)
    loaded = load_records(args.input_dir)
    lines = top_hparams_report(loaded.records, args.dataset, args.algorithm, args.test_env)
    sys.stdout.write("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    run_main(main, (FileNotFoundError, ValueError, OSError))
