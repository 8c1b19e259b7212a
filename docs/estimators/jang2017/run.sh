#!/bin/sh
# The reduced Jang et al. (2017) Fig. 3 curve of docs/estimators.md: the Bernoulli SBN (392-200-200-392)
# with every estimator that applies, one seed, 1,000 steps, one thread.
# Run from the repository root: sh docs/estimators/jang2017/run.sh (about 20 minutes on 2 shared cores);
# REPORT=--report sh docs/estimators/jang2017/run.sh rewrites the tables and plots of what has finished.
set -e
D=docs/estimators/jang2017
E=configs/estimator
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 python -m zoo.compare \
  --config configs/sbn/bernoulli-straight-through.yaml --seeds 1 --max_steps 1000 --threads 1 \
  --grad_every 250 $REPORT --out lightning_logs/compare/jang2017-sbn --estimators \
  $E/straight-through.yaml $E/st-gumbel.yaml $E/gumbel.yaml $D/gumbel-rao.yaml \
  $E/reinforce-ema.yaml $E/reinforce-learned.yaml $E/reinforce-loo.yaml $D/arm.yaml $D/disarm.yaml \
  -- --trainer.val_check_interval=250 --trainer.limit_val_batches=10 --trainer.log_every_n_steps=25 \
  --model.num_importance_samples=0 --trainer.enable_progress_bar=false --trainer.enable_model_summary=false
