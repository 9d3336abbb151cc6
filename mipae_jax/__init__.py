"""MIPAE in JAX: video prediction with content and pose latents kept apart by a mutual
information penalty.

  import mipae_jax
  from mipae_jax import configs
  config = configs.get('dsprites:drnet')       # the packaged configs, by name
  run = mipae_jax.load_run('runs/demo')         # a trained run: encode, predict, ...

The training steps (`mipae_jax.train`, `mipae_jax.parallel`), networks (`models`),
losses, data sources and metrics are modules of their own; the command-line tools are
in `mipae_jax.commands`.
"""

from mipae_jax.version import __version__


def load_run(workdir: str, allow_stale_lstm: bool = False):
  """The newest checkpoints of a run directory, ready to use: see `mipae_jax.runs`."""
  from mipae_jax import runs  # Here, so that `import mipae_jax` stays light.

  return runs.load_run(workdir, allow_stale_lstm=allow_stale_lstm)


__all__ = ['__version__', 'load_run']
