"""The pilot's learning curves and the budget they support: ``python results/digits/pilot_report.py
--input_dir results/digits/pilot/runs --output_dir results/digits/pilot``.

For every (row, learning rate, held-out domain) of the pilot: training-domain accuracy (the
training domains' "in" splits, the data trained on), training-domain validation accuracy (their
"out" splits) and held-out accuracy (the held-out domain's "in" split, the tables' test accuracy)
at every checkpoint. Writes ``curves.png`` (one panel per held-out domain and measure) and
``summary.txt``: per row and learning rate, the first checkpoint where training-domain accuracy
reaches 0.90, and at the checkpoints of a candidate budget, the training-domain accuracy and the
change of held-out accuracy over the last ``--window`` steps.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from domainbed.results.records import load_records  # noqa: E402


def measures(record: dict) -> dict[str, float]:
    test_env = record["args"]["test_envs"][0]
    n_envs = sum(key.endswith("_out_acc") for key in record)
    train = [i for i in range(n_envs) if i != test_env]
    return {"train": float(np.mean([record[f"env{i}_in_acc"] for i in train])),
            "validation": float(np.mean([record[f"env{i}_out_acc"] for i in train])),
            "held-out": record[f"env{test_env}_in_acc"]}


def row_label(record: dict) -> str:
    return f"{record['args']['algorithm']} ({record['hparams']['backbone']})"


def curves(records: list[dict]) -> dict[tuple, dict[str, list[tuple[int, float]]]]:
    """(row, lr, test_env) -> measure -> [(step, value)] sorted by step."""
    out: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        key = (row_label(record), record["hparams"]["lr"], record["args"]["test_envs"][0])
        for name, value in measures(record).items():
            out[key][name].append((record["step"], value))
    for series in out.values():
        for name in series:
            series[name].sort()
    return out


def value_at(series: list[tuple[int, float]], step: int) -> float:
    """The value at the last checkpoint at or before ``step``."""
    earlier = [value for s, value in series if s <= step]
    return earlier[-1] if earlier else float("nan")


def summary(data: dict, budgets: list[int], window: int) -> list[str]:
    lines = [f"Checkpoint where training-domain accuracy first reaches 0.90, and at each candidate budget S: "
             f"training-domain accuracy | held-out accuracy | held-out change over the last {window} steps "
             "(points); per row and learning rate, mean over the held-out domains (each domain's value in brackets)."]
    rows = sorted({key[0] for key in data})
    lrs = sorted({key[1] for key in data})
    envs = sorted({key[2] for key in data})
    for row in rows:
        for lr in lrs:
            keys = [(row, lr, env) for env in envs if (row, lr, env) in data]
            if not keys:
                continue
            reached = [next((s for s, v in data[k]["train"] if v >= 0.90), None) for k in keys]
            last = max(data[k]["train"][-1][0] for k in keys)
            lines.append(f"{row}  lr {lr:g}  (trained to step {last})  train >= 0.90 at step "
                         + ", ".join("never" if r is None else str(r) for r in reached))
            for budget in budgets:
                if budget > last:
                    continue
                train = [value_at(data[k]["train"], budget) for k in keys]
                held = [value_at(data[k]["held-out"], budget) for k in keys]
                change = [100 * (value_at(data[k]["held-out"], budget) - value_at(data[k]["held-out"], budget - window))
                          for k in keys]
                lines.append(f"    S={budget:5d}: train {np.mean(train):.3f} {np.round(train, 3).tolist()} | held-out "
                             f"{np.mean(held):.3f} {np.round(held, 3).tolist()} | change {np.mean(change):+.1f} "
                             f"{np.round(change, 1).tolist()}")
    return lines


def figure(data: dict, path: Path, budget: int | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({key[2] for key in data})
    rows = sorted({key[0] for key in data})
    lrs = sorted({key[1] for key in data})
    names = ("train", "validation", "held-out")
    fig, axes = plt.subplots(len(envs), len(names), figsize=(4.2 * len(names), 3.2 * len(envs)), squeeze=False)
    colours = dict(zip(rows, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    styles = dict(zip(lrs, (":", "-", "--", "-.")))
    for i, env in enumerate(envs):
        for j, name in enumerate(names):
            ax = axes[i][j]
            for (row, lr, e), series in sorted(data.items()):
                if e != env:
                    continue
                steps, values = zip(*series[name])
                ax.plot(steps, values, styles.get(lr, "-"), color=colours[row], lw=1.2,
                        label=f"{row}, lr {lr:g}" if i == 0 and j == 0 else None)
            ax.set_title(f"held out env {env}: {name} accuracy", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.grid(alpha=0.3)
            if name == "train":
                ax.axhline(0.9, color="grey", lw=0.8)
            if budget:
                ax.axvline(budget, color="black", lw=0.8, ls="--")
    fig.legend(loc="lower center", ncol=len(lrs), fontsize=7, bbox_to_anchor=(0.5, -0.02 - 0.02 * len(rows)))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--budgets", type=int, nargs="+", default=[600, 900, 1200, 1500, 2000, 3000])
    parser.add_argument("--window", type=int, default=300)
    parser.add_argument("--chosen", type=int, default=2000, help="the budget chosen, marked on the curves")
    args = parser.parse_args(argv)
    data = curves(load_records(args.input_dir).records)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = summary(data, args.budgets, args.window)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    figure(data, out / "curves.png", args.chosen)


if __name__ == "__main__":
    main()
