"""The main job on the embedded data: SF-MoE beside ERM with the same small ViT on RotatedDigits.

``make demo`` runs this: both algorithms train on five rotation domains, the sixth is held out, and
a table prints held-out and in-domain accuracy. Finished runs in the output folder are reused, so a
second ``make demo`` only prints (``--fresh`` trains again).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from pathlib import Path

from ..data.registry import get_dataset_class
from ..run.folder import RunFolder
from ..run.trainer import RunError, TrainConfig, run
from ._cli import run_main

ALGORITHMS = ("ERM", "SFMOE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--dataset", default="RotatedDigits", choices=["RotatedDigits", "ColoredDigits"],
                        help="embedded data, no download")
    parser.add_argument("--test_env", type=int, default=5, help="held-out environment")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--checkpoint_freq", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=32, help="per training domain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="delete earlier demo runs first")
    return parser


def summarize(record: dict, test_env: int, n_envs: int) -> tuple[float, float]:
    """(held-out accuracy, in-domain accuracy): the test domain's "in" split, and the mean of the
    training domains' held-out ("out") splits."""
    train_envs = [e for e in range(n_envs) if e != test_env]
    in_domain = sum(record[f"env{e}_out_acc"] for e in train_envs) / len(train_envs)
    return record[f"env{test_env}_in_acc"], in_domain


def machine(record: dict) -> str:
    """What decided the numbers, from the record: CPU, instruction set, threads (or the GPU)."""
    env = record.get("environment", {})
    if env.get("gpu"):
        return f"{env['gpu']}, torch {env.get('torch')}"
    return (f"{env.get('cpu', '?')} ({env.get('cpu_capability', '?')}), {env.get('threads', '?')} threads, "
            f"torch {env.get('torch', '?')}")


def last_record(run_dir: Path) -> dict:
    return RunFolder(run_dir).read_records()[-1]


def main(argv: list[str] | None = None) -> list[tuple]:
    args = build_parser().parse_args(argv)
    root = Path(args.output_dir)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    environments = get_dataset_class(args.dataset).ENVIRONMENTS
    rows = []
    for algorithm in ALGORITHMS:
        run_dir = root / algorithm
        if RunFolder(run_dir).is_done:
            print(f"Reusing the finished {algorithm} run in {run_dir} (--fresh to train again)")
        else:
            print(f"Training {algorithm} on {args.dataset}, holding out environment "
                  f"{args.test_env} ({environments[args.test_env]}); log: {run_dir / 'out.txt'}", flush=True)
            with contextlib.redirect_stdout(io.StringIO()):  # the run's table goes to its out.txt
                run(TrainConfig(dataset=args.dataset, algorithm=algorithm, test_envs=[args.test_env],
                                steps=args.steps, checkpoint_freq=args.checkpoint_freq, seed=args.seed,
                                hparams=json.dumps({"batch_size": args.batch_size}),
                                output_dir=str(run_dir)))
        record = last_record(run_dir)
        held_out, in_domain = summarize(record, args.test_env, len(environments))
        rows.append((algorithm, record["hparams"]["backbone"], held_out, in_domain, record["step_time"]))

    print(f"\n{args.dataset}, held-out domain {environments[args.test_env]}, "
          f"{args.steps} steps, last checkpoint, one seed, {machine(record)}:")
    print(f"{'algorithm':<10} {'backbone':<22} {'held-out acc':>12} {'in-domain acc':>13} {'s/step':>7}")
    for algorithm, backbone, held_out, in_domain, step_time in rows:
        print(f"{algorithm:<10} {backbone:<22} {100 * held_out:>11.1f}% {100 * in_domain:>12.1f}% "
              f"{step_time:>7.3f}")
    print("These numbers repeat bit for bit on this machine with these settings; another CPU type or\n"
          "thread count prints other ones (README, Reproducibility). One seed is a demonstration, not\n"
          "evidence: results/digits/ has the multi-trial study.")
    print(f"\nRecords, models and TensorBoard logs: {root}/ "
          f"(python -m domainbed.scripts.collect_results --input_dir {root})")
    figures = draw_figures(RunFolder(root / "SFMOE").model, args.dataset, args.test_env, root / "figures")
    print("Attention and expert maps of SF-MoE on held-out images:")
    for path in figures:
        print(f"  {path}")
    return rows


def draw_figures(checkpoint: Path, dataset_name: str, test_env: int, output_dir: Path,
                 n_images: int = 3) -> list[Path]:
    """The last block's CLS attention and the per-patch experts of the MoE blocks, for the first
    few images of the held-out domain."""
    import torch

    from ..checkpoints import load_checkpoint
    from ..visualize import save_attention_maps, save_expert_maps

    algorithm = load_checkpoint(checkpoint)
    dataset = get_dataset_class(dataset_name)("", [test_env], algorithm.hparams)
    held_out = dataset[test_env]
    images = torch.stack([dataset.eval_transform(held_out[i][0]) for i in range(n_images)])
    names = [f"heldout{i}_label{held_out[i][1]}" for i in range(n_images)]
    return (save_attention_maps(algorithm, images, output_dir, names=names)
            + save_expert_maps(algorithm, images, output_dir, names=names))


if __name__ == "__main__":
    run_main(main, (RunError,))
