"""How expert choice depends on domain and on class, on the runs a sweep's model selection picks:
``python -m domainbed.scripts.routing_analysis --input_dir SWEEP --dataset RotatedDigits
--algorithm SFMOE --output_dir OUT``.

For each (trial, held-out domain) group, the run of the hparams draw that training-domain
validation selects (``--selection``) is loaded (its final model.pkl), every environment's images
are routed in eval mode (batches of one environment, seeded order, as ``vis_experts``), and the
normalised mutual information of each MoE layer's top-1 expert with the domain and with the class
is written to OUT/specialisation.json with a figure, OUT/specialisation.png.
"""

from __future__ import annotations

import argparse

from ..results.records import label_algorithms_by_backbone, load_records
from ..results.selection import SELECTION_METHODS, selected_runs
from ._cli import run_main

SELECTIONS = {"training-domain": 0, "leave-one-out": 1, "oracle": 2}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dir", required=True, help="the sweep's output folder (with model.pkl files)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--algorithm", required=True,
                        help="an algorithm (SFMOE) or, when it ran on several backbones, a row of the tables "
                             "('Fish (gmoe_micro_patch4_32)')"),
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--selection", default="training-domain", choices=list(SELECTIONS))
    parser.add_argument("--data_dir", default="./domainbed/data")
    parser.add_argument("--max_per_env", type=int, default=100000, help="images per environment (default: all)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    return parser


def main(argv: list[str] | None = None):
    from ..checkpoints import load_checkpoint
    from ..run.folder import RunFolder
    from ..visualize.specialisation import RunSpecialisation, save_specialisation
    from ..visualize.usage import dataset_usage

    args = build_parser().parse_args(argv)
    records = label_algorithms_by_backbone(load_records(args.input_dir).records)
    method = SELECTION_METHODS[SELECTIONS[args.selection]]
    selected = {key: run_dir for key, run_dir in selected_runs(records, method).items() if key[1] == args.dataset}
    row = table_row(args.algorithm, {key[2] for key in selected})
    if row is None:
        raise ValueError(f"no {args.algorithm} run on {args.dataset} in {args.input_dir} can be selected "
                         f"({method.name}); rows there: {', '.join(sorted({key[2] for key in selected})) or 'none'}")
    chosen = {key: run_dir for key, run_dir in selected.items() if key[2] == row}
    runs = []
    for (trial_seed, _, _, test_env), run_dir in sorted(chosen.items()):
        algorithm = load_checkpoint(RunFolder(run_dir).model, args.device)
        usage = dataset_usage(algorithm, args.dataset, args.data_dir, args.max_per_env, args.batch_size, args.device)
        runs.append(RunSpecialisation(run_dir, trial_seed, test_env, usage))
        print(f"trial {trial_seed}, held out {test_env}: {runs[-1].nmi()}", flush=True)
    paths = save_specialisation(runs, args.output_dir,
                                title=f"{args.algorithm} on {args.dataset} ({method.name})")
    for path in paths:
        print(path)
    return runs


def table_row(algorithm: str, rows: set[str]) -> str | None:
    """The table row ``algorithm`` names: the row itself, or the one row of that algorithm (its
    label is ``NAME (backbone)`` when a sweep ran it on several backbones). Several: ValueError."""
    if algorithm in rows:
        return algorithm
    matches = sorted(row for row in rows if row.split(" (")[0] == algorithm)
    if len(matches) > 1:
        raise ValueError(f"{algorithm} ran on several backbones here; name the row: {', '.join(matches)}")
    return matches[0] if matches else None


if __name__ == "__main__":
    run_main(main, (FileNotFoundError, ValueError))
