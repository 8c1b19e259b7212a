#!/bin/sh
# The reduced Fu (2020) study of docs/estimators.md: 1,000 steps per setting, one thread per run.
# Run from the repository root: sh docs/estimators/fu2020/run.sh (one seed, one run at a time);
# SEEDS=3 JOBS=2 for what docs/estimators.md shows (three seeds, two runs at a time: about 40 minutes
# on a quiet 2-core machine; resumable); REPORT=--report rewrites the tables and plots of what has finished.
set -e
D=docs/estimators/fu2020
run() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 python -m zoo.lab.compare --config $D/base.yaml \
  --seeds "${SEEDS:-1}" --jobs "${JOBS:-1}" --max_steps 1000 --threads 1 $REPORT "$@"; }
run --out lightning_logs/compare/fu2020-soft --estimators \
  $D/soft-t0.1.yaml $D/soft-t0.5.yaml $D/soft-t1.yaml $D/soft-t2.yaml $D/soft-t5.yaml $D/soft-annealed.yaml
run --out lightning_logs/compare/fu2020-st --estimators \
  $D/st-t0.1.yaml $D/st-t0.5.yaml $D/st-t1.yaml $D/st-t2.yaml $D/st-t5.yaml $D/st-annealed.yaml
run --out lightning_logs/compare/fu2020-reinforce --estimators \
  $D/reinforce-none-s1.yaml $D/reinforce-ema-s1.yaml $D/reinforce-learned-s1.yaml \
  $D/reinforce-none-s4.yaml $D/reinforce-loo-s4.yaml $D/reinforce-none-s16.yaml $D/reinforce-loo-s16.yaml \
  $D/reinforce-ema-s4.yaml $D/reinforce-learned-s4.yaml $D/reinforce-ema-s16.yaml $D/reinforce-learned-s16.yaml
