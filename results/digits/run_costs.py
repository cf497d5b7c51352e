"""What the study cost: wall time per run for each row of the tables, and the total in core-hours.

A run's wall time is read from its folder in the sweep: from the job's lock file (made when the
launcher starts the job) to its ``done`` file. Runs that were interrupted and resumed span the
pause, so each row reports the median over its runs, and the total is the sum of medians times
runs (one core per run: the study ran with OMP_NUM_THREADS=1).

    python results/digits/run_costs.py --sweep_dir /path/to/sweep > results/digits/costs.txt
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from domainbed.results.records import label_algorithms_by_backbone, load_records
from domainbed.run.folder import RunFolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep_dir", required=True)
    args = parser.parse_args()
    records = label_algorithms_by_backbone(load_records(args.sweep_dir).records)
    folders = {(r["args"]["output_dir"], r["args"]["algorithm"], r["args"]["dataset"]) for r in records}
    seconds = defaultdict(list)
    for folder, algorithm, dataset in folders:
        folder = RunFolder(Path(args.sweep_dir) / Path(folder).name)
        if folder.lock.exists() and folder.done.exists():
            seconds[(algorithm, dataset)].append(folder.done.stat().st_mtime - folder.lock.stat().st_mtime)
    total = 0.0
    print(f"{'algorithm':<32} {'dataset':<14} {'runs':>4} {'median min/run':>14}")
    for (algorithm, dataset), values in sorted(seconds.items()):
        median = statistics.median(values)
        total += median * len(values)
        print(f"{algorithm:<32} {dataset:<14} {len(values):>4} {median / 60:>14.2f}")
    print(f"total: {sum(map(len, seconds.values()))} runs, {total / 3600:.1f} core-hours "
          "(median wall time x runs, one core per run)")


if __name__ == "__main__":
    main()
