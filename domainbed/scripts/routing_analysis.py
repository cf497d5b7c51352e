"""How expert choice depends on domain and on class, on the runs a sweep's model selection picks:
``python -m domainbed.scripts.routing_analysis --input_dir SWEEP --dataset RotatedDigits
--algorithm SFMOE --output_dir OUT``.

For each (trial, held-out domain) group, the checkpoint that training-domain validation selects
(``--selection``) is loaded (the model file the run kept for it, as ``export_selected`` finds it;
the run's model.pkl, with a note, if it kept none), every environment's images are routed in eval
mode (batches of one environment, seeded order, as ``vis_experts``), and the normalised mutual
information of each MoE layer's top-1 expert with the domain and with the class is written to
OUT/specialisation.json with a figure, OUT/specialisation.png.

Baselines: ``--model init`` analyses the same runs' models at their initialisation (architecture
and seed of the run, untrained): how much of the specialisation training added. ``--kmeans K``
replaces experts by K k-means clusters of the tokens entering the FFN of ``--blocks`` (default: the
blocks a GMoE makes sparse), for any ViT, dense ones included: how much of it the token features
carry without a router.
"""

from __future__ import annotations

import argparse
import sys

from ..results.records import label_methods, load_records
from ..moe.config import MoEConfig
from ..results.selection import SELECTION_METHODS, selected_checkpoints
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
    parser.add_argument("--model", default="selected", choices=["selected", "init"],
                        help="the selected checkpoint, or the same run's model at its initialisation")
    parser.add_argument("--kmeans", type=int, default=0, metavar="K",
                        help="baseline: K k-means clusters of FFN-input tokens instead of experts")
    parser.add_argument("--blocks", type=int, nargs="+", help="with --kmeans: the blocks (default: a GMoE's)")
    return parser


def main(argv: list[str] | None = None):
    from ..checkpoints import load_checkpoint
    from ..run.folder import RunFolder
    from ..visualize.specialisation import RunSpecialisation, save_specialisation
    from ..visualize.usage import dataset_cluster_usage, dataset_usage
    from .export_selected import model_of_checkpoint

    args = build_parser().parse_args(argv)
    records = label_methods(load_records(args.input_dir).records)
    method = SELECTION_METHODS[SELECTIONS[args.selection]]
    selected = {key: selection for key, selection in selected_checkpoints(records, method).items()
                if key[1] == args.dataset}
    row = table_row(args.algorithm, {key[2] for key in selected})
    if row is None:
        raise ValueError(f"no {args.algorithm} run on {args.dataset} in {args.input_dir} can be selected "
                         f"({method.name}); rows there: {', '.join(sorted({key[2] for key in selected})) or 'none'}")
    chosen = {key: selection for key, selection in selected.items() if key[2] == row}
    seeds = {r["args"]["output_dir"]: r["args"]["seed"] for r in records}
    runs = []
    for (trial_seed, _, _, test_env), selection in sorted(chosen.items()):
        model_file, reason = model_of_checkpoint(selection)
        if model_file is None:
            print(f"note: {reason}; using {RunFolder(selection.run_dir).model} (the last step)", file=sys.stderr)
            model_file = RunFolder(selection.run_dir).model
        algorithm = load_checkpoint(model_file, args.device)
        if args.model == "init":
            algorithm = initial_model(algorithm, seeds[selection.run_dir]).to(args.device)
        if args.kmeans:
            blocks = args.blocks or MoEConfig().block_indices(len(algorithm.evaluation_model().featurizer.blocks))
            usage = dataset_cluster_usage(algorithm, args.dataset, args.data_dir, blocks, args.kmeans,
                                          args.max_per_env, args.batch_size, args.device, seed=trial_seed)
        else:
            usage = dataset_usage(algorithm, args.dataset, args.data_dir, args.max_per_env, args.batch_size,
                                  args.device)
        runs.append(RunSpecialisation(selection.run_dir, trial_seed, test_env, usage))
        print(f"trial {trial_seed}, held out {test_env}: {runs[-1].nmi()}", flush=True)
    paths = save_specialisation(runs, args.output_dir,
                                title=f"{args.algorithm} on {args.dataset} ({method.name})")
    for path in paths:
        print(path)
    return runs


def initial_model(algorithm, seed: int):
    """The algorithm as its run built it before the first step: same class, hparams and seed."""
    from ..algorithms import get_algorithm_class
    from ..seeding import seed_everything

    seed_everything(seed)
    return get_algorithm_class(type(algorithm).__name__)(algorithm.input_shape, algorithm.num_classes,
                                                          algorithm.num_domains, algorithm.hparams)


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
