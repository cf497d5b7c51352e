"""Held-out accuracy against the held-out rotation angle on RotatedDigits, one line per algorithm
(training-domain validation; mean and DomainBed's standard error over trials).

    python results/digits/angle_figure.py --input_dir results/digits/runs --output results/digits/figures/accuracy_by_angle.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from matplotlib.figure import Figure

from domainbed.results.records import label_methods, load_records
from domainbed.results.selection import IIDAccuracySelectionMethod
from domainbed.results.tables import mean_and_error, ordered_algorithms, sweep_results, trial_accuracies

DATASET = "RotatedDigits"
ANGLES = [0, 15, 30, 45, 60, 75]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    records = [r for r in label_methods(load_records(args.input_dir).records)
               if r["args"]["dataset"] == DATASET]
    results = sweep_results(records, IIDAccuracySelectionMethod)
    figure = Figure(figsize=(6.0, 3.8))
    ax = figure.add_subplot()
    for algorithm in ordered_algorithms(records):
        cells = [mean_and_error(trial_accuracies(results, DATASET, algorithm, env)) for env in range(len(ANGLES))]
        points = [(angle, cell) for angle, cell in zip(ANGLES, cells) if cell is not None]
        ax.errorbar([a for a, _ in points], [c[0] for _, c in points], yerr=[c[1] for _, c in points],
                    marker="o", capsize=3, label=algorithm)
    ax.set_xticks(ANGLES, [f"{a}°" for a in ANGLES])
    ax.set_xlabel("held-out domain (rotation angle)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"{DATASET}: training-domain validation, mean ± s.e. over trials", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=120)


if __name__ == "__main__":
    main()
