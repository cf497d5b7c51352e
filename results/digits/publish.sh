#!/usr/bin/env bash
# From the study's sweep folders to the committed results: each finished run's records and log (no
# model files), the tables (text and LaTeX), the figures, the statistics, the cost; the pilot's
# records, learning curves and budget summary. Runs of complete trials are merged into runs/ (what
# the tables report; a later session adds its trials to those of earlier ones); finished runs of a
# trial still running go to pending/, so that the next session need not train them again.
#
#   results/digits/publish.sh [SWEEP_DIR] [PILOT_SWEEP_DIR] [ABLATIONS_SWEEP_DIR]
#       (defaults: results/digits/sweep, results/digits/pilot_sweep, results/digits/ablations_sweep)
#
# The ablations (study.py's "ablations" design) go the same way to ablations/: runs/, pending/, their
# tables, statistics.txt that pairs each with the main study's SF-MoE row, and costs.txt.
#
# To continue the study in a new checkout: copy the committed runs back into the sweep folder (their
# folder names are the jobs' hashes, so the sweep skips them) and start the sweep again:
#   mkdir -p results/digits/sweep && cp -r results/digits/runs/* results/digits/sweep/   # and pending/*, if there is one
#   OMP_NUM_THREADS=1 python results/digits/study.py main &   # one copy per core
set -euo pipefail
SWEEP=${1:-results/digits/sweep}
PILOT=${2:-results/digits/pilot_sweep}
ABLATIONS=${3:-results/digits/ablations_sweep}
HERE=results/digits
PYTHON=${PYTHON:-python}

copy_run() {  # copy_run RUN_DIR DEST_DIR
  mkdir -p "$2/$(basename "$1")"
  cp "$1/results.jsonl" "$1/done" "$1/out.txt" "$2/$(basename "$1")/"
}

copy_finished() {  # copy_finished SWEEP_DIR DEST_DIR
  for run in "$1"/*/; do
    [ -f "$run/done" ] && copy_run "${run%/}" "$2"
  done
  return 0
}

if [ -d "$PILOT" ]; then
  copy_finished "$PILOT" "$HERE/pilot/runs"
  "$PYTHON" "$HERE/pilot_report.py" --input_dir "$HERE/pilot/runs" --output_dir "$HERE/pilot" > /dev/null
fi
publish_design() {  # publish_design DESIGN SWEEP_DIR DEST: complete trials to DEST/runs, the rest to DEST/pending
  rm -rf "$3/pending"
  for part in complete pending; do
    dest=$3/runs; [ $part = pending ] && dest=$3/pending
    "$PYTHON" "$HERE/study.py" "$1" --sweep_dir "$2" --finished $part |
      while read -r run; do copy_run "$run" "$dest"; done
  done
}

[ -d "$SWEEP" ] && publish_design main "$SWEEP" "$HERE"
if [ -d "$ABLATIONS" ]; then
  publish_design ablations "$ABLATIONS" "$HERE/ablations"
  if [ -d "$HERE/ablations/runs" ]; then
    "$PYTHON" -m domainbed.scripts.collect_results --input_dir "$HERE/ablations/runs" > "$HERE/ablations/tables.txt"
    rm -f "$HERE/ablations/runs/results.txt"
    "$PYTHON" "$HERE/study_statistics.py" --input_dir "$HERE/runs" "$HERE/ablations/runs" \
      > "$HERE/ablations/statistics.txt"
    "$PYTHON" "$HERE/run_costs.py" --input_dir "$HERE/ablations/runs" > "$HERE/ablations/costs.txt"
  fi
fi

"$PYTHON" -m domainbed.scripts.collect_results --input_dir "$HERE/runs" > "$HERE/tables.txt"
"$PYTHON" -m domainbed.scripts.collect_results --input_dir "$HERE/runs" --latex > "$HERE/tables.tex"
rm -f "$HERE/runs/results.txt" "$HERE/runs/results.tex"  # collect_results' own copies
rm -rf "$HERE/figures"
"$PYTHON" -m domainbed.scripts.collect_results --input_dir "$HERE/runs" --plots "$HERE/figures" > /dev/null
rm -f "$HERE/runs/results.txt"
"$PYTHON" "$HERE/angle_figure.py" --input_dir "$HERE/runs" --output "$HERE/figures/accuracy_by_angle.png"
"$PYTHON" "$HERE/study_statistics.py" --input_dir "$HERE/runs" > "$HERE/statistics.txt"
"$PYTHON" "$HERE/run_costs.py" --input_dir "$HERE/runs" > "$HERE/costs.txt"
