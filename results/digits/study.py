"""The digits study's design and its sweeps: ``python results/digits/study.py {pilot,main} [--sweep_dir D]``.

One place says what is run (README.md says why):

- rows: ERM on the dense micro ViT, SF-MoE on its GMoE twin, ERM on the parameter-matched wide
  ViT, Fish on the dense ViT and Fish on the GMoE twin; the ablations (design "ablations", after the
  main study) are SF-MoE with one MoE setting changed each (top-2, linear router, every-two blocks,
  12 experts), to be paired with the main study's SF-MoE row trial by trial;
- RotatedDigits at 16 px (4 px patches: 16 patch tokens; the 8x8 digits lose no pixel), batch 16
  images per training domain, Adam;
- the hparams search is a learning-rate grid: hparams_seed h trains with ``LR_GRID[h]`` and every
  other hparam at its default (pinned explicitly, so that DomainBed's random draws for h >= 1 do
  not move them); selection then picks the learning rate per (trial, held-out domain), as
  DomainBed picks a draw;
- trials draw their own assignment of images to domains (``environment_shuffle_seed`` =
  trial_seed), so trials are independent and rows are paired within a trial.

Each (trial, h, row) is one ``sweep launch`` (trials first: an interrupted study holds complete
trials; within a trial the grid's middle first); sweeps skip finished runs and resume interrupted
ones, so this script can be stopped and started again at will, and two copies started side by side
share the jobs (a job folder is trained by one process at a time). One core each:
``OMP_NUM_THREADS=1``. Finished runs' records go to ``results/digits/runs/`` (``publish.sh``); a
later session copies them back into the sweep folder and goes on where the study stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass

DATASET = "RotatedDigits"
IMAGE_SIZE = 16
BATCH_SIZE = 16
DENSE, GMOE, WIDE = "vit_micro_patch4_32", "gmoe_micro_patch4_32", "vit_micro_wide_patch4_32"
# hparams never pinned: the one searched, the ones the study sets, and the trial's own draw of the data
NOT_PINNED = ("lr", "image_size", "batch_size", "environment_shuffle_seed", "backbone")


@dataclass(frozen=True)
class Row:
    algorithm: str
    backbone: str
    moe: tuple[tuple[str, object], ...] = ()  # MoE hparams set apart from the paper's GMoE (ablations)

    @property
    def label(self) -> str:
        """The row's name in the tables of the study's runs (``records.label_methods``)."""
        sys.path.insert(0, os.getcwd())
        from domainbed.results.records import method_label

        return method_label(self.algorithm, self.backbone, dict(self.moe))


ROWS = (Row("ERM", DENSE), Row("SFMOE", GMOE), Row("ERM", WIDE), Row("Fish", DENSE), Row("Fish", GMOE))
# The paper's ablations, one change each from SF-MoE on the GMoE twin (top-1, cosine router, blocks
# 2 and 4 of 6, 6 experts): that row of the main study is their baseline (same trials, same data).
ABLATION_ROWS = (Row("SFMOE", GMOE, (("top_k", 2),)), Row("SFMOE", GMOE, (("router", "linear"),)),
                 Row("SFMOE", GMOE, (("moe_blocks", "every2"),)), Row("SFMOE", GMOE, (("num_experts", 12),)))


@dataclass(frozen=True)
class Design:
    name: str
    lr_grid: tuple[float, ...]
    steps: int
    checkpoint_freq: int
    n_trials: int
    test_envs: tuple[int, ...] | None  # None: every domain held out in turn
    sweep_dir: str
    trial_major: bool = False  # launch trial by trial (each trial complete before the next starts)
    order: tuple[int, ...] | None = None  # grid indices in launch order (default: the middle first)
    rows: tuple[Row, ...] = ROWS


DESIGNS = {
    # learning curves to choose the budget and the grid: 2 held-out angles (extrapolation, interpolation);
    # 1e-4 was added (as hparams_seed 3) once 3e-4 beat 1e-3 for most rows, to find where the optimum is
    "pilot": Design("pilot", (3e-4, 1e-3, 3e-3, 1e-4), steps=3000, checkpoint_freq=150, n_trials=1, test_envs=(0, 3),
                    sweep_dir="results/digits/pilot_sweep", order=(1, 0, 3, 2)),
    # the study: the pilot's best learning rate (3e-4 for most rows) inside the grid, 2000 steps
    # (every row fits its training domains and held-out accuracy has stopped moving by then)
    "main": Design("main", (1e-4, 3e-4, 1e-3), steps=2000, checkpoint_freq=100, n_trials=5, test_envs=None,
                   sweep_dir="results/digits/sweep", trial_major=True),
    # the ablations: the main study's budget, grid and trials (so each pairs with its SF-MoE row)
    "ablations": Design("ablations", (1e-4, 3e-4, 1e-3), steps=2000, checkpoint_freq=100, n_trials=5, test_envs=None,
                        sweep_dir="results/digits/ablations_sweep", trial_major=True, rows=ABLATION_ROWS),
}


def pinned_hparams(row: Row) -> dict:
    """Every hparam of ``row`` that a DomainBed random draw could move, at its default."""
    sys.path.insert(0, os.getcwd())
    from domainbed.hparams_registry import resolve_hparams

    base = {"backbone": row.backbone, "image_size": IMAGE_SIZE, "batch_size": BATCH_SIZE, **dict(row.moe)}
    defaults = resolve_hparams(row.algorithm, DATASET, 0, 0, base)
    moved = set()
    for seed in range(1, 6):
        draw = resolve_hparams(row.algorithm, DATASET, seed, 0, base)
        moved |= {name for name in defaults if draw[name] != defaults[name]}
    return {name: defaults[name] for name in sorted(moved) if name not in NOT_PINNED}


def launches(design: Design) -> list[list[str]]:
    """The ``sweep launch`` argument lists: trial by trial when ``trial_major`` (a launch with
    ``--n_trials t + 1`` skips the earlier, finished trials), the grid's middle learning rate first
    (the likeliest winner), every row at one rate before the next."""
    commands = []
    middle_first = design.order or sorted(range(len(design.lr_grid)), key=lambda h: abs(h - (len(design.lr_grid) - 1) / 2))
    trial_counts = range(1, design.n_trials + 1) if design.trial_major else [design.n_trials]
    for n_trials in trial_counts:
        commands += _launches_of(design, middle_first, n_trials)
    return commands


def _launches_of(design: Design, order: list[int], n_trials: int) -> list[list[str]]:
    commands = []
    for h in order:
        lr = design.lr_grid[h]
        for row in design.rows:
            hparams = {"backbone": row.backbone, "image_size": IMAGE_SIZE, "batch_size": BATCH_SIZE, "lr": lr,
                       **dict(row.moe), **pinned_hparams(row)}
            command = ["launch", "--datasets", DATASET, "--algorithms", row.algorithm,
                       "--hparams", json.dumps(hparams, sort_keys=True),
                       "--n_hparams_from", str(h), "--n_hparams", str(h + 1), "--n_trials", str(n_trials),
                       "--steps", str(design.steps), "--checkpoint_freq", str(design.checkpoint_freq),
                       "--single_test_envs", "--output_dir", design.sweep_dir,
                       "--command_launcher", "local", "--skip_confirmation"]
            if design.test_envs is not None:
                command += ["--test_envs", *map(str, design.test_envs)]
            commands.append(command)
    return commands


def runs_per_trial(design: Design) -> int:
    sys.path.insert(0, os.getcwd())
    from domainbed.data.catalog import num_environments

    n_envs = len(design.test_envs) if design.test_envs is not None else num_environments(DATASET)
    return len(design.rows) * len(design.lr_grid) * n_envs


def finished_runs(design: Design, sweep_dir: str) -> dict[str, list[str]]:
    """The sweep's finished run folders, split into those of complete trials (every row, learning
    rate and held-out domain done: what the tables report) and those of trials still running."""
    sys.path.insert(0, os.getcwd())
    from domainbed.run.folder import RunFolder

    by_trial: dict[int, list[str]] = {}
    for name in sorted(os.listdir(sweep_dir)):
        run = os.path.join(sweep_dir, name)
        folder = RunFolder(run)
        if not folder.is_done:
            continue
        with open(folder.results) as records:
            trial = json.loads(records.readline())["args"]["trial_seed"]
        by_trial.setdefault(trial, []).append(run)
    expected = runs_per_trial(design)
    complete = {t for t, runs in by_trial.items() if len(runs) == expected}
    return {"complete": [run for t in sorted(complete) for run in by_trial[t]],
            "pending": [run for t in sorted(set(by_trial) - complete) for run in by_trial[t]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("design", choices=sorted(DESIGNS))
    parser.add_argument("--sweep_dir", help="default: the design's")
    parser.add_argument("--print", action="store_true", help="print the sweep commands instead of running them")
    parser.add_argument("--finished", choices=["complete", "pending"],
                        help="print the finished runs of complete trials (or of trials still running) instead")
    args = parser.parse_args(argv)
    design = DESIGNS[args.design]
    if args.sweep_dir:
        design = Design(**{**design.__dict__, "sweep_dir": args.sweep_dir})
    if args.finished:
        for run in finished_runs(design, design.sweep_dir)[args.finished]:
            print(run)
        return 0
    status = 0
    for command in launches(design):
        full = [sys.executable, "-m", "domainbed.scripts.sweep", *command]
        if args.print:
            print(" ".join(f"'{part}'" if " " in part or "{" in part else part for part in full))
            continue
        status |= subprocess.call(full, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return status


if __name__ == "__main__":
    raise SystemExit(main())
