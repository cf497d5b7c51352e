"""The statistics behind the digits study's sentences: ``python results/digits/study_statistics.py
--input_dir results/digits/runs [MORE_DIRS] [--dataset RotatedDigits] > results/digits/statistics.txt``.

Model selection is DomainBed's training-domain validation (the checkpoint and learning rate with the
best accuracy on the training domains' held-out splits). Everything is computed per trial first:
a row's trial score is its mean selected held-out accuracy over the held-out domains, and only
trials in which a row has every held-out domain count (with one trial there is no standard error:
"n/a"). Then:

1. **Rows**: mean +/- standard error over trials (sample standard deviation / sqrt(n): the usual
   standard error, slightly larger than DomainBed's, which uses the population deviation), with
   the selected checkpoints' training-domain accuracy (the training splits: the fit) and
   training-domain validation accuracy beside the held-out accuracy.
2. **Paired comparisons**: for each pair of rows (the study's questions, and each ablation, a row
   whose MoE configuration is not the paper's, against the row of the paper's configuration), the
   per-trial differences (trials are independent draws of the benchmark and both rows of a pair saw
   the same domains in a trial), their mean, a 95% t-interval and a two-sided paired t-test (its p
   also Holm-adjusted over all the tests printed, since a table of ten tests gives one p < 0.05 by
   chance far more often than one in twenty); and the per-domain differences.
3. **Held-out accuracy at equal fit**: one straight line, fitted over every checkpoint of every
   run of every row, predicts held-out accuracy from training-domain validation accuracy; a row's
   residual (held-out minus that prediction, at its selected checkpoints) says whether it
   generalises better than its validation accuracy predicts. Residuals compare paired by trial too.
4. **Learning rates selected**: how often each learning rate of the grid won, per row.
5. **Trained to a plateau?** Per row, over every run: the median training-domain accuracy at the
   last checkpoint and the median change of held-out accuracy between the last two checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from domainbed.results.records import (backbone_of, base_algorithm, label_methods, load_records,  # noqa: E402
                                       model_variant)
from domainbed.results.selection import IIDAccuracySelectionMethod, selected_checkpoints  # noqa: E402

COMPARISONS = (  # (row, baseline): the study's questions
    ("SFMOE (gmoe_micro_patch4_32)", "ERM (vit_micro_patch4_32)"),
    ("SFMOE (gmoe_micro_patch4_32)", "ERM (vit_micro_wide_patch4_32)"),
    ("Fish (gmoe_micro_patch4_32)", "Fish (vit_micro_patch4_32)"),
    ("Fish (vit_micro_patch4_32)", "ERM (vit_micro_patch4_32)"),
    ("Fish (gmoe_micro_patch4_32)", "SFMOE (gmoe_micro_patch4_32)"),
)


def split_accuracies(record: dict) -> dict[str, float]:
    test_env = record["args"]["test_envs"][0]
    n_envs = sum(key.endswith("_out_acc") and key.startswith("env") for key in record)
    train = [i for i in range(n_envs) if i != test_env]
    return {"train": float(np.mean([record[f"env{i}_in_acc"] for i in train])),
            "val": float(np.mean([record[f"env{i}_out_acc"] for i in train])),
            "held_out": float(record[f"env{test_env}_in_acc"])}


def mean_se(values) -> tuple[float, float, int]:
    values = np.asarray(values, dtype=float)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se), len(values)


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """Per-trial differences a - b over the trials both have: mean, 95% CI, paired t-test."""
    trials = sorted(set(a) & set(b))
    if len(trials) < 2:
        return None
    diffs = np.array([a[t] - b[t] for t in trials])
    mean, se, n = mean_se(diffs)
    half = stats.t.ppf(0.975, n - 1) * se
    p = float(stats.ttest_rel([a[t] for t in trials], [b[t] for t in trials]).pvalue) if se > 0 else float("nan")
    return {"trials": trials, "diffs": diffs.tolist(), "mean": mean, "low": mean - half, "high": mean + half, "p": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error over all the tests given), in the given order:
    the i-th smallest p times (m - i), made non-decreasing, capped at 1."""
    order = np.argsort(p_values, kind="stable")
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def ablation_comparisons(records: list[dict]) -> list[tuple[str, str]]:
    """(ablation row, its baseline) for every labelled row whose MoE configuration is not the paper's:
    the baseline is the row of the same algorithm and backbone in the paper's configuration."""
    kinds = {r["args"]["algorithm"]: (base_algorithm(r["args"]["algorithm"]), backbone_of(r), bool(model_variant(r)))
             for r in records}
    baselines = {(algorithm, backbone): row for row, (algorithm, backbone, varied) in kinds.items() if not varied}
    return [(row, baselines[(algorithm, backbone)]) for row, (algorithm, backbone, varied) in sorted(kinds.items())
            if varied and (algorithm, backbone) in baselines]


def analyse(records: list[dict], dataset: str) -> list[str]:
    records = [r for r in label_methods(records) if r["args"]["dataset"] == dataset]
    n_envs = sum(key.endswith("_out_acc") and key.startswith("env") for key in records[0])
    by_run_step = {(r["args"]["output_dir"], r["step"]): r for r in records}
    selected = selected_checkpoints(records, IIDAccuracySelectionMethod)

    # one straight line: held-out accuracy from training-domain validation accuracy, every checkpoint
    points = np.array([[split_accuracies(r)["val"], split_accuracies(r)["held_out"]] for r in records])
    slope, intercept = np.polyfit(points[:, 0], points[:, 1], 1)

    cells: dict[str, dict[int, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    lr_wins: dict[str, Counter] = defaultdict(Counter)
    for (trial, _, row, env), selection in selected.items():
        record = by_run_step[(selection.run_dir, selection.step)]
        accuracies = split_accuracies(record)
        accuracies["residual"] = accuracies["held_out"] - (intercept + slope * accuracies["val"])
        accuracies["last_step"] = selection.step == selection.last_step
        cells[row][trial][env] = accuracies
        lr_wins[row][record["hparams"]["lr"]] += 1

    def trial_scores(row: str, measure: str) -> dict[int, float]:
        return {trial: float(np.mean([cell[measure] for cell in envs.values()]))
                for trial, envs in cells[row].items() if len(envs) == n_envs}

    rows = sorted(cells)
    width = max(34, *map(len, rows))
    out = [f"{dataset}: training-domain validation selection; {len(records)} records. Mean +/- standard error over "
           "complete trials (sample s.d./sqrt(n)); accuracies in %.", ""]
    out.append(f"{'row':{width}s} {'trials':>6s} {'held-out':>14s} {'train (fit)':>14s} {'train-val':>14s} "
               f"{'residual':>12s} {'last ckpt':>9s}")
    for row in rows:
        parts = []
        for measure in ("held_out", "train", "val", "residual"):
            mean, se, n = mean_se(list(trial_scores(row, measure).values()) or [float("nan")])
            error = "n/a" if np.isnan(se) else (f"{100 * se:4.1f}" if measure != "residual" else f"{100 * se:3.1f}")
            parts.append(f"{100 * mean:6.1f} +/- {error:>4s}" if measure != "residual"
                         else f"{100 * mean:+5.1f} +/- {error:>3s}")
        last = np.mean([cell["last_step"] for envs in cells[row].values() for cell in envs.values()])
        out.append(f"{row:{width}s} {n:6d} {parts[0]:>14s} {parts[1]:>14s} {parts[2]:>14s} {parts[3]:>12s} "
                   f"{100 * last:8.0f}%")
    out += ["", f"equal fit: held-out = {intercept:.3f} + {slope:.3f} x training-domain validation, fitted over "
                f"{len(points)} checkpoints (every run, every row); residual = held-out minus this line at the "
                "selected checkpoint", ""]

    pairs = [(a, b) for a, b in [*COMPARISONS, *ablation_comparisons(records)] if a in cells and b in cells]
    measures = (("held_out", "held-out"), ("residual", "at equal fit"))
    results = {(a, b, measure): paired(trial_scores(a, measure), trial_scores(b, measure))
               for a, b in pairs for measure, _ in measures}
    tested = [key for key, result in results.items() if result is not None and not np.isnan(result["p"])]
    adjusted = dict(zip(tested, holm([results[key]["p"] for key in tested])))
    out.append(f"Paired comparisons (per-trial differences of the rows' trial scores, in points; Holm: the p "
               f"adjusted for the {len(tested)} tests below):")
    for a, b in pairs:
        for measure, label in measures:
            result = results[(a, b, measure)]
            if result is None:  # no interval or test yet; still say what the common trial (if any) shows
                scores_a, scores_b = trial_scores(a, measure), trial_scores(b, measure)
                so_far = "".join(f"; trial {t}: {100 * (scores_a[t] - scores_b[t]):+.1f} points"
                                 for t in sorted(set(scores_a) & set(scores_b)))
                out.append(f"  {a} - {b} ({label}): fewer than 2 common complete trials, no interval or test{so_far}")
                continue
            diffs = ", ".join(f"{100 * d:+.1f}" for d in result["diffs"])
            holm_p = f", Holm p = {adjusted[(a, b, measure)]:.3f}" if (a, b, measure) in adjusted else ""
            out.append(f"  {a} - {b} ({label}): {100 * result['mean']:+.1f} points, 95% CI "
                       f"[{100 * result['low']:+.1f}, {100 * result['high']:+.1f}], paired t-test p = {result['p']:.3f}"
                       f"{holm_p}, n = {len(result['trials'])} trials; per trial: {diffs}")
        per_domain = []
        for env in range(n_envs):
            diffs = [cells[a][t][env]["held_out"] - cells[b][t][env]["held_out"]
                     for t in cells[a] if t in cells[b] and env in cells[a][t] and env in cells[b][t]]
            if diffs:
                mean, se, n = mean_se(diffs)
                per_domain.append(f"env{env} {100 * mean:+.1f}" + ("" if np.isnan(se) else f" +/- {100 * se:.1f}"))
        out.append(f"    per held-out domain (mean +/- s.e. over trials): {'; '.join(per_domain)}")
    out += ["", "Learning rate selected (count over trials x held-out domains):"]
    for row in rows:
        out.append(f"  {row:{width}s} " + ", ".join(f"{lr:g}: {n}" for lr, n in sorted(lr_wins[row].items())))
    out += ["", "Trained to a plateau? Over every run (all learning rates): median training-domain accuracy at the "
                "last checkpoint, and median |change| of held-out accuracy between the last two checkpoints:"]
    runs: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:  # labelled: args.algorithm is the row ("ALGORITHM (backbone)")
        runs[record["args"]["algorithm"]][record["args"]["output_dir"]].append(record)
    for row in rows:
        finals, changes = [], []
        for run_records in runs[row].values():
            ordered = sorted(run_records, key=lambda r: r["step"])
            finals.append(split_accuracies(ordered[-1])["train"])
            if len(ordered) > 1:
                changes.append(abs(split_accuracies(ordered[-1])["held_out"] - split_accuracies(ordered[-2])["held_out"]))
        out.append(f"  {row:{width}s} {len(finals):4d} runs: training-domain accuracy {100 * np.median(finals):.1f}%, "
                   f"held-out change {100 * np.median(changes):.1f} points (largest {100 * max(changes):.1f})")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dir", required=True, nargs="+",
                        help="run folders; the ablations' with the main study's (their baseline row)")
    parser.add_argument("--dataset", default="RotatedDigits")
    args = parser.parse_args(argv)
    records = [record for folder in args.input_dir for record in load_records(folder).records]
    print("\n".join(analyse(records, args.dataset)))


if __name__ == "__main__":
    main()
