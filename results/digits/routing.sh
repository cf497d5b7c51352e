#!/usr/bin/env bash
# Routing with baselines on the runs training-domain validation selects in the complete trials (needs
# the sweep's model files, which are not committed): NMI of the top-1 expert with class and with domain for
#   - the trained GMoE (SF-MoE, and Fish on the GMoE twin),
#   - the same GMoE runs at their initialisation (untrained),
#   - k-means (k = 6, the number of experts) of the dense ViT's FFN-input tokens at the MoE blocks (2, 4).
#
#   results/digits/routing.sh [SWEEP_DIR]      (default: results/digits/sweep)
set -euo pipefail
SWEEP=${1:-results/digits/sweep}
OUT=${OUT:-results/digits/routing}
PYTHON=${PYTHON:-python}
# the runs of complete trials only (what the tables report), hard-linked into one folder beside the sweep
RUNS=$(mktemp -d -p "$(dirname "$SWEEP")" .routing_runs.XXXX)
trap 'rm -rf "$RUNS"' EXIT
# (runs restored from the committed records have no model.pkl: their trials are left out, and the
# table's run counts say how many runs it covers)
"$PYTHON" results/digits/study.py main --sweep_dir "$SWEEP" --finished complete | while read -r run; do
  if [ -f "$run/model.pkl" ]; then cp -al "$run" "$RUNS/"; fi
done
analyse() {  # analyse NAME ARGS...
  "$PYTHON" -m domainbed.scripts.routing_analysis --input_dir "$RUNS" --dataset RotatedDigits \
      --output_dir "$OUT/$1" "${@:2}" > /dev/null
}
rm -rf "$OUT"
analyse sfmoe-trained --algorithm "SFMOE (gmoe_micro_patch4_32)"
analyse sfmoe-untrained --algorithm "SFMOE (gmoe_micro_patch4_32)" --model init
analyse fish-gmoe-trained --algorithm "Fish (gmoe_micro_patch4_32)"
analyse erm-dense-kmeans --algorithm "ERM (vit_micro_patch4_32)" --kmeans 6 --blocks 2 4
"$PYTHON" results/digits/routing_table.py --input_dir "$OUT" > "$OUT/nmi.txt"
