#!/bin/sh
# The reduced Jang et al. (2017) Fig. 3-4 curves of docs/estimators.md: the categorical VAE (20 x 10-way
# latents) and the Bernoulli SBN (392-200-200-392), each with every estimator that applies, one thread,
# validation every 250 steps on 1,000 images, then the test loss (-ELBO) on the 10,000 test images.
# Run from the repository root: sh docs/estimators/jang2017/run.sh (one seed of 1,000 steps: about 12
# minutes on a quiet 2-core machine); SEEDS=3 STEPS=5000 for the longer study (resumable: finished runs
# are kept; the output folder is per step count); REPORT=--report rewrites the tables and plots of what has finished.
# Perturb-and-MAP (configs/estimator/perturb-and-map.yaml) is left out of the VAE: with the straight-through
# gradient on categorical latents it is ST Gumbel-Softmax draw for draw (identical numbers at 1,000 steps).
# VIMCO (5 samples) trains the 5-sample bound (test/neg_bound) and logs the ELBO of its samples
# (test/neg_elbo); neither ranks it against the ELBO-trained rows (an importance-sampled test/nll_iw
# would). Its grad/ columns measure the gradient of its own bound (its bias is 0 in expectation).
set -e
E=configs/estimator
run() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 python -m zoo.lab.compare \
  --seeds "${SEEDS:-1}" --max_steps "${STEPS:-1000}" --threads 1 --grad_every 250 --test $REPORT "$@" \
  -- --trainer.val_check_interval=250 --trainer.limit_val_batches=10 --trainer.log_every_n_steps=25 \
  --model.num_importance_samples=0 --trainer.enable_progress_bar=false --trainer.enable_model_summary=false; }
run --config configs/vae/categorical.yaml --out "lightning_logs/compare/jang2017-vae-${STEPS:-1000}" --estimators \
  $E/straight-through.yaml $E/st-gumbel.yaml $E/gumbel.yaml $E/factorized/gumbel-rao.yaml \
  $E/reinforce-ema.yaml $E/reinforce-learned.yaml $E/reinforce-loo.yaml $E/factorized/unordered-set.yaml \
  $E/joint-nll/vimco.yaml
run --config configs/sbn/bernoulli.yaml --out "lightning_logs/compare/jang2017-sbn-${STEPS:-1000}" --estimators \
  $E/straight-through.yaml $E/st-gumbel.yaml $E/gumbel.yaml $E/factorized/gumbel-rao.yaml \
  $E/reinforce-ema.yaml $E/reinforce-learned.yaml $E/reinforce-loo.yaml $E/bernoulli/arm.yaml $E/bernoulli/disarm.yaml
