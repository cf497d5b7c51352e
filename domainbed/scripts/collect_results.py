"""Result tables of a sweep: ``python -m domainbed.scripts.collect_results --input_dir D``.

Prints DomainBed's tables for the three model selection methods and writes them to
D/results.txt (D/results.tex with ``--latex``); ``--plots DIR`` also writes figures that compare
the algorithms, per dataset (``results.plots.save_plots``); ``--per_run_curves`` adds one figure per
run.
Notes about incomplete runs and skipped lines go to stderr, so stdout is the report alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..results.records import load_records
from ..results.tables import format_results
from ._cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Domain generalization: collect sweep results")
    parser.add_argument("--input_dir", required=True,
                        help="the sweep's output_dir (run folders holding results.jsonl)")
    parser.add_argument("--latex", action="store_true", help="print a LaTeX document instead")
    parser.add_argument("--plots", metavar="DIR",
                        help="also write PNG figures into DIR, per dataset: bars_<dataset>.png (the tables' "
                             "cells as bars, a panel per selection method), curves_<dataset>.png (held-out "
                             "accuracy over training per algorithm), routing_<dataset>.png (MoE runs)")
    parser.add_argument("--per_run_curves", action="store_true",
                        help="with --plots: also one figure per run (DIR/per_run/, every environment's "
                             "accuracy against the step; thousands in a full sweep)")
    return parser


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    if args.per_run_curves and not args.plots:
        raise ValueError("--per_run_curves draws into the --plots directory; pass --plots DIR too")
    loaded = load_records(args.input_dir)
    if loaded.n_incomplete_runs:
        print(f"note: {loaded.n_incomplete_runs} of {loaded.n_runs} runs are not done "
              "(no 'done' file); their records are included", file=sys.stderr)
    for path, n_lines in loaded.skipped_by_file.items():
        print(f"warning: skipped {n_lines} unreadable or incomplete record line{'s' if n_lines > 1 else ''} "
              f"in {path}", file=sys.stderr)

    report = format_results(loaded.records, latex=args.latex)
    sys.stdout.write(report)
    out_file = Path(args.input_dir) / ("results.tex" if args.latex else "results.txt")
    out_file.write_text(report, encoding="utf-8")

    if args.plots:
        from ..results.plots import save_plots  # matplotlib only when figures are asked for

        paths = save_plots(loaded.records, args.plots, per_run_curves=args.per_run_curves)
        print(f"wrote {len(paths)} figures to {args.plots}", file=sys.stderr)
    return report


if __name__ == "__main__":
    run_main(main, (FileNotFoundError, ValueError, OSError))
