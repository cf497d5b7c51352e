"""Train one model: ``python -m domainbed.scripts.train --dataset PACS --algorithm SFMOE --test_env 2``.

DomainBed's flags, plus ``--test_env`` (the seed README's spelling), ``--precision``, ``--compile``,
``--num_workers``, ``--device`` and ``--deterministic``. Rerunning an interrupted command resumes it.
"""

from __future__ import annotations

import argparse
import sys

from ..run.numerics import reexec_deterministic
from ..run.trainer import RunError, TrainConfig, run
from ._cli import run_main


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description="Domain generalization: train one run",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", default=defaults.data_dir,
                        help="data root (holding PACS/, office_home/...) or the dataset's own folder")
    parser.add_argument("--dataset", default=defaults.dataset,
                        help="a built-in dataset, or the name of a folder <data_dir>/<name>/<domain>/<class>/")
    parser.add_argument("--algorithm", default=defaults.algorithm, help="a DomainBed algorithm, or SFMOE/GMOE")
    parser.add_argument("--task", default=defaults.task, choices=["domain_generalization", "domain_adaptation"],
                        help="domain_adaptation also trains on unlabeled test-domain images")
    parser.add_argument("--hparams", help="JSON-serialized hparams dict overriding the defaults")
    parser.add_argument("--hparams_seed", type=int, default=0, help="0 = default hparams, else a random draw")
    parser.add_argument("--trial_seed", type=int, default=0, help="seed of the data splits and random hparams")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything else")
    parser.add_argument("--steps", type=int, default=None, help="default: the dataset's N_STEPS")
    parser.add_argument("--checkpoint_freq", type=int, default=None, help="default: the dataset's")
    parser.add_argument("--test_envs", "--test_env", dest="test_envs", type=int, nargs="+", default=[0],
                        help="the held-out environments (indices)")
    parser.add_argument("--output_dir", default=defaults.output_dir,
                        help="the run folder: records, logs, model; rerun the command to resume it")
    parser.add_argument("--holdout_fraction", type=float, default=defaults.holdout_fraction,
                        help="share of each environment held out for validation (its 'out' split)")
    parser.add_argument("--uda_holdout_fraction", type=float, default=defaults.uda_holdout_fraction,
                        help="share of the test environments' 'in' split given unlabeled to domain adaptation")
    parser.add_argument("--skip_model_save", action="store_true", help="write no model.pkl")
    parser.add_argument("--save_model_every_checkpoint", action="store_true",
                        help="also write model_step<N>.pkl at every checkpoint")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="DataLoader workers (default: 0 for in-memory data, else the dataset's)")
    parser.add_argument("--eval_batch_size", type=int, default=defaults.eval_batch_size,
                        help="images per evaluation batch (predictions do not depend on it)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: on a terminal)")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="on CUDA, fp32 matmuls and convolutions on tensor cores (TF32); --deterministic turns it off")
    parser.add_argument("--augment_on", default="auto", choices=["auto", "loader", "device"],
                        help="where DomainBed's colour jitter and grayscale are computed: in the loader's "
                             "workers, or on the training device from the loader's random draws (same "
                             "draws, float instead of 8-bit arithmetic); auto: the device on CUDA")
    parser.add_argument("--deterministic", action="store_true",
                        help="portable kernels: the same numbers on any x86 CPU at the same thread count "
                             "(about 2x the CPU time; see BENCHMARKS.md)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    return run(TrainConfig(**vars(args)))


if __name__ == "__main__":
    if "--deterministic" in sys.argv[1:]:
        reexec_deterministic("domainbed.scripts.train", sys.argv[1:])
    run_main(main, (RunError,))
