"""Alias of `mipae-study` (mipae_jax/commands/study.py), for a checkout without install:
`python -m experiments.study --config=study --methods=mipae,drnet --workdir=studies/x`."""

import sys

from mipae_jax.commands import study

if __name__ == '__main__':
  sys.exit(study.main())
