"""Alias of `mipae-train` (mipae_jax/commands/train.py), for a checkout without install:

  python -m experiments.main --config=demo --workdir=runs/demo
"""

from mipae_jax.commands import train

if __name__ == '__main__':
  train.main()
