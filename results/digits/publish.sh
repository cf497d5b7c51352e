#!/usr/bin/env bash
# From the study's sweep folder (run_study.sh) to the committed results: each run's records and
# log (no model files), the tables (text and LaTeX), the figures, the cost and the routing analysis.
#
#   results/digits/publish.sh [SWEEP_DIR]       (default: results/digits/sweep)
set -euo pipefail
SWEEP=${1:-results/digits/sweep}
HERE=results/digits
PYTHON=${PYTHON:-python}

rm -rf "$HERE/runs" && mkdir -p "$HERE/runs"
for run in "$SWEEP"/*/; do
  [ -f "$run/done" ] || continue
  mkdir -p "$HERE/runs/$(basename "$run")"
  cp "$run/results.jsonl" "$run/done" "$run/out.txt" "$HERE/runs/$(basename "$run")/"
done

"$PYTHON" -m domainbed.scripts.collect_results --input_dir "$HERE/runs" > "$HERE/tables.txt"
"$PYTHON" -m domainbed.scripts.collect_results --input_dir "$HERE/runs" --latex > "$HERE/tables.tex"
rm -f "$HERE/runs/results.txt" "$HERE/runs/results.tex"  # collect_results' own copies
rm -rf "$HERE/figures"
"$PYTHON" -m domainbed.scripts.collect_results --input_dir "$HERE/runs" --plots "$HERE/figures" > /dev/null
rm -f "$HERE/runs/results.txt"
"$PYTHON" "$HERE/angle_figure.py" --input_dir "$HERE/runs" --output "$HERE/figures/accuracy_by_angle.png"
"$PYTHON" "$HERE/run_costs.py" --sweep_dir "$SWEEP" > "$HERE/costs.txt"  # needs the sweep's lock files

# which experts the selected GMoE runs use, by domain and by class (needs the sweep's model files)
for dataset in RotatedDigits ColoredDigits; do
  for algorithm in SFMOE Fish; do
    "$PYTHON" -m domainbed.scripts.routing_analysis --input_dir "$SWEEP" --dataset "$dataset" \
        --algorithm "$algorithm (gmoe_micro_patch4_32)" --output_dir "$HERE/routing/$dataset-$algorithm"
  done
done
