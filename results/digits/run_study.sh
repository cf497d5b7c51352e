#!/usr/bin/env bash
# The digits study (results/digits/README.md): ERM, SF-MoE, ERM on a parameter-matched wide ViT, and
# Fish on the GMoE twin; RotatedDigits and ColoredDigits; every domain held out; 3 trials; 3 hparam
# draws (hparams_seed 0 = the defaults, 1-2 = DomainBed random draws); 400 steps of 8 images per
# training domain, a checkpoint every 100 steps.
#
# The draws go in order (all defaults first), so an interrupted study already holds complete
# tables for the draws done; rerunning this script resumes (finished runs are skipped, interrupted
# ones continue from their checkpoint). One core: OMP_NUM_THREADS=1 (the measured costs assume it).
#
#   OMP_NUM_THREADS=1 results/digits/run_study.sh [SWEEP_DIR]       (default: results/digits/sweep)
#   python -m domainbed.scripts.collect_results --input_dir SWEEP_DIR
OUT=${1:-results/digits/sweep}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--datasets RotatedDigits ColoredDigits --n_trials 3 --single_test_envs --steps 400 --checkpoint_freq 100
        --output_dir "$OUT" --command_launcher local --skip_confirmation)
status=0
for hp in 0 1 2; do
  draw=(--n_hparams_from "$hp" --n_hparams "$((hp + 1))")
  "$PYTHON" -m domainbed.scripts.sweep launch "${COMMON[@]}" "${draw[@]}" --algorithms ERM SFMOE \
      --hparams '{"batch_size": 8}' || status=1
  "$PYTHON" -m domainbed.scripts.sweep launch "${COMMON[@]}" "${draw[@]}" --algorithms ERM \
      --hparams '{"backbone": "vit_micro_wide_patch4_32", "batch_size": 8}' || status=1
  "$PYTHON" -m domainbed.scripts.sweep launch "${COMMON[@]}" "${draw[@]}" --algorithms Fish \
      --hparams '{"backbone": "gmoe_micro_patch4_32", "batch_size": 8}' || status=1
done
exit $status
