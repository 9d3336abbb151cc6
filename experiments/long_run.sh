#!/usr/bin/env bash
# The long runs behind RESULTS.md ("How far a longer budget gets"): MIPAE and DRNET on the
# study config (two sprites, nf 16, batch 32), seed 0, trained in turns to 20k, 40k, 70k and
# 100k autoencoder steps, a checkpoint kept every 5,000 steps. Each call continues where the
# last one stopped (the same workdirs), so it can be killed and rerun at any time:
#
#   nohup setsid experiments/long_run.sh > ~/runs/long.out 2>&1 &
#   python -m experiments.studies.long_run --workdir=~/runs/long-mipae-s0 \
#       --workdir=~/runs/long-drnet-s0 --out=docs/study/long_run
#
# RUNS (default ~/runs) holds the workdirs and logs, outside the git tree. Each milestone
# also retrains the pose LSTM (500 steps, the stale one is refused otherwise) and evaluates;
# a milestone whose evaluation is written (eval/metrics.json at that step or later) is
# skipped, since the tool refuses to shorten a run that has gone past it.
set -euo pipefail
RUNS=${RUNS:-$HOME/runs}
PYTHON=${PYTHON:-python}
mkdir -p "$RUNS"
for target in ${MILESTONES:-20000 40000 70000 100000}; do
  for method in mipae drnet; do
    evaluated=$("$PYTHON" -c 'import json, sys
try:
  print(json.load(open(sys.argv[1]))["ae_step"])
except OSError:
  print(0)' "$RUNS/long-$method-s0/eval/metrics.json")
    if [ "$evaluated" -ge "$target" ]; then continue; fi
    nice -n 19 "$PYTHON" -m mipae_jax.commands.train --config=study \
      --workdir="$RUNS/long-$method-s0" --config.loss.name="$method" --config.seed=0 \
      --config.train.ae_steps="$target" --config.train.ckpt_every=5000 \
      --config.train.keep_checkpoints=30 >> "$RUNS/long-$method-s0.log" 2>&1
  done
done
