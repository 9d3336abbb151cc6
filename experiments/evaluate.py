"""Alias of `mipae-evaluate` (mipae_jax/commands/evaluate.py), for a checkout without
install: `python -m experiments.evaluate --workdir=runs/demo`."""

from mipae_jax.commands import evaluate

if __name__ == '__main__':
  evaluate.main()
