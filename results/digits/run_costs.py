"""What the study cost: training seconds per run for each row of the tables, and the total in core-hours.

Read from the committed records (so it can be recomputed from ``runs/`` in any later session): each
record's ``step_time`` is the mean seconds per step since the previous checkpoint, so a run's
training time is the sum over its records of ``step_time`` x the steps of that interval (data
loading included; evaluations at checkpoints, about 0.5 s each at 16 px, excluded). One core per
run (the study ran with OMP_NUM_THREADS=1), so seconds are core-seconds.

    python results/digits/run_costs.py --input_dir results/digits/runs > results/digits/costs.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from domainbed.results.records import label_methods, load_records  # noqa: E402


def training_seconds(run_records: list[dict]) -> float:
    total, previous = 0.0, None
    for record in sorted(run_records, key=lambda r: r["step"]):
        steps = record["step"] + 1 if previous is None else record["step"] - previous
        total += record["step_time"] * steps
        previous = record["step"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input_dir", required=True)
    args = parser.parse_args()
    records = label_methods(load_records(args.input_dir).records)
    runs = defaultdict(list)
    for record in records:
        runs[(record["args"]["algorithm"], record["args"]["dataset"], record["args"]["output_dir"])].append(record)
    seconds = defaultdict(list)
    for (algorithm, dataset, _), run_records in runs.items():
        seconds[(algorithm, dataset)].append(training_seconds(run_records))
    print(f"{'algorithm':<32} {'dataset':<14} {'runs':>4} {'median min/run':>14} {'core-hours':>10}")
    for (algorithm, dataset), values in sorted(seconds.items()):
        print(f"{algorithm:<32} {dataset:<14} {len(values):>4} {statistics.median(values) / 60:>14.2f} "
              f"{sum(values) / 3600:>10.2f}")
    total = sum(sum(values) for values in seconds.values())
    print(f"total: {sum(map(len, seconds.values()))} runs, {total / 3600:.1f} core-hours of training steps "
          "(one core per run; evaluation excluded)")


if __name__ == "__main__":
    main()
