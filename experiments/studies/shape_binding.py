"""Why the demo draws blobs: can a decoder draw a shape named by one code at a place named
by another, within the demo's budget? (RESULTS.md, "Why the demo draws blobs".)

  python -m experiments.studies.shape_binding diagnose --arch=dcgan --steps=1500 \
      [--shift=10] [--oracle_content] [--oracle_pose] --out=docs/study/binding

`diagnose` trains the demo's networks (`demo`: nf 16, one sprite,
batch 32, Adam as the paper) as a plain autoencoder on static rendered frames, loss
L_recon only, and writes `OUT/<name>.png` (16 held-out frames above, their
reconstructions below) and `OUT/<name>.json` (the loss every 100 steps, the held-out MSE):
- by default both encoders see the target frame, as any autoencoder;
- `--shift=S`: the content encoder sees the frame translated by one offset per batch,
  uniform in [-S, S] pixels per axis (MIPAE's content frame x[0] lies up to 18 px from
  x[k] in the demo's videos), so z_c cannot tell the decoder where to draw;
- `--oracle_content`: z_c is replaced by the true (shape, scale, orientation) one-hot;
- `--oracle_pose`: z_p by the true (x, y) position scaled to [-1, 1].

  python -m experiments.studies.shape_binding main --config=demo \
      --workdir=workdirs/demo-broadcast --config.model.arch=broadcast

`main` runs `experiments.main` (the whole demo) with this module's architectures
registered. Those are not the paper's and are not part of the library; each is one
decoder (or content encoder) change:
- `pooled`: E_c ends in a 1x1 conv and a maximum over the 4x4 map (one read-out shared
  by every place) instead of the 4x4 valid conv;
- `coord`: the paper's decoder with two coordinate channels before every up-block
  (CoordConv, Liu et al. 2018, arXiv:1807.03247);
- `film`: the paper's decoder whose feature maps z_c scales and shifts per channel after
  every BatchNorm (FiLM, Perez et al. 2018, arXiv:1709.07871);
- `broadcast`: concat(z_c, z_p) tiled over a 16x16 grid with coordinate channels, three
  3x3 conv layers of width 4nf, then up-blocks (spatial broadcast decoder, Watters et
  al. 2019, arXiv:1901.07017).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mipae_jax import data, layers, models
from mipae_jax.data import dsprites


def add_coords(h):
  """`h [B, H, W, C] -> [B, H, W, C + 2]`, each cell's row and column in [-1, 1]."""
  b, hh, ww, _ = h.shape
  grid = jnp.stack(jnp.meshgrid(jnp.linspace(-1.0, 1.0, hh, dtype=h.dtype),
                                jnp.linspace(-1.0, 1.0, ww, dtype=h.dtype),
                                indexing='ij'), axis=-1)
  return jnp.concatenate([h, jnp.broadcast_to(grid, (b, hh, ww, 2))], axis=-1)


class PooledContentEncoder(models.ContentEncoder):
  """E_c whose last layer is a 1x1 conv and a maximum over the 4x4 map."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    n = models.dcgan_num_blocks(x.shape[1])
    h, skips = self.blocks(x, train)
    h = self.ops.conv(self.dim, 1, 1, 'VALID', use_bias=False, name=f'c{n + 1}_conv')(h)
    h = jnp.max(h, axis=(1, 2), keepdims=True)
    h = self.ops.norm(train, name=f'c{n + 1}_bn')(h)
    return jnp.tanh(h.astype(jnp.float32)).reshape(x.shape[0], self.dim), tuple(skips)


class VariantDecoder(nn.Module):
  """The paper's DCGAN decoder, `(z_c [B, Dc], z_p [B, Dp]) -> [B, H, W, C]`, with
  coordinate channels before every up-block (`coords`) or a FiLM of z_c after every
  BatchNorm (`film`)."""
  channels: int = 3
  image_size: int = 64
  nf: int = 64
  coords: bool = False
  film: bool = False
  ops: layers.Ops = layers.Ops()

  @nn.compact
  def __call__(self, z_c, z_p, skips=None, train: bool = True):
    n = models.dcgan_num_blocks(self.image_size)
    ops, dt = self.ops, self.ops.dtype

    def modulate(h, name):
      if not self.film:
        return h
      g, b = jnp.split(layers.dense(2 * h.shape[-1], dt, name=name)(z_c.astype(dt))
                       [:, None, None, :], 2, axis=-1)
      return h * (1 + g) + b

    h = ops.project_up(self.nf * 2 ** (n - 1), 4, use_bias=False,
                       name='upc1_conv')(jnp.concatenate([z_c, z_p], axis=-1))
    h = ops.norm(train, name='upc1_bn')(h)
    h = layers.leaky_relu(modulate(h, 'upc1_film'))
    for i in range(n - 1):
      if self.coords:
        h = add_coords(h)
      h = ops.up4x4(self.nf * 2 ** (n - 2 - i), use_bias=False, name=f'upc{i + 2}_conv')(h)
      h = ops.norm(train, name=f'upc{i + 2}_bn')(h)
      h = layers.leaky_relu(modulate(h, f'upc{i + 2}_film'))
    if self.coords:
      h = add_coords(h)
    h = ops.up4x4(self.channels, name=f'upc{n + 1}_conv')(h)
    return jax.nn.sigmoid(h.astype(jnp.float32))


class BroadcastDecoder(nn.Module):
  """Spatial broadcast: `(z_c [B, Dc], z_p [B, Dp]) -> [B, H, W, C]`."""
  channels: int = 3
  image_size: int = 64
  nf: int = 64
  depth: int = 3
  ops: layers.Ops = layers.Ops()

  @nn.compact
  def __call__(self, z_c, z_p, skips=None, train: bool = True):
    g = self.image_size // 4
    z = jnp.concatenate([z_c, z_p], axis=-1).astype(self.ops.dtype)
    h = add_coords(jnp.broadcast_to(z[:, None, None, :], (z.shape[0], g, g, z.shape[-1])))
    for i in range(self.depth):
      h = models.VGGLayer(4 * self.nf, ops=self.ops, name=f'bc{i + 1}')(h, train)
    h = models.DCGANBlock(self.nf, up=True, ops=self.ops, name='upc1')(h, train)
    h = self.ops.up4x4(self.channels, name='upc2_conv')(h)
    return jax.nn.sigmoid(h.astype(jnp.float32))


def _no_skips(model_config, data_config):
  if model_config.skips:
    return 'config.model.skips=True: this architecture takes no skip connections.'
  return models.ARCHITECTURES['dcgan'].check(model_config, data_config)


def _variant(content_encoder, decoder, **decoder_kw):
  return models.Architecture(
      build=lambda m, d, common: (
          content_encoder(dim=m.content_dim, **common),
          models.PoseEncoder(dim=m.pose_dim, normalize=m.normalize_pose, **common),
          decoder(channels=d.channels, image_size=d.image_size, **decoder_kw, **common)),
      check=_no_skips, takes_skips=lambda m: False)


VARIANTS = {
    'pooled': _variant(PooledContentEncoder, VariantDecoder),
    'coord': _variant(models.ContentEncoder, VariantDecoder, coords=True),
    'film': _variant(models.ContentEncoder, VariantDecoder, film=True),
    'broadcast': _variant(models.ContentEncoder, BroadcastDecoder),
}


def register():
  """Registers the variants once per process (the registry refuses a second time)."""
  for name, arch in VARIANTS.items():
    if models.ARCHITECTURES.get(name) is not arch:
      models.register_architecture(name, arch)


def _one_hot(labels: np.ndarray, width: int) -> np.ndarray:
  """`[N, K]` integer factors -> `[N, width]` in {-1, 1}: one one-hot block per factor."""
  blocks = [np.eye(int(labels[:, j].max()) + 1)[labels[:, j]] for j in range(labels.shape[1])]
  z = np.concatenate(blocks, 1)
  return np.pad(z, ((0, 0), (0, width - z.shape[1]))) * 2 - 1


def _position_code(pose: np.ndarray, width: int) -> np.ndarray:
  """`[N, 2]` grid positions (0 .. 31 per axis) -> `[N, width]`: both in [-1, 1], then
  zeros."""
  z = pose / ((dsprites.NUM_POSITIONS - 1) / 2) - 1
  return np.pad(z, ((0, 0), (0, width - z.shape[1])))


def diagnose(arch: str, steps: int, shift: int = 0, oracle_content: bool = False,
             oracle_pose: bool = False, seed: int = 0, frames: int = 20_000,
             nf: int | None = None, log_every: int = 100) -> dict:
  """Trains the plain autoencoder described in the module docstring (`nf`: the
  networks' width, the demo's by default). Returns {'losses': [(step, L_recon)] every
  `log_every` steps, 'test_mse', 'seconds', 'frames': [16, H, W, C], 'recon': [16, H, W,
  C]}."""
  from mipae_jax.configs import demo
  c = demo.get_config()
  c.model.arch = arch
  if nf is not None:
    c.model.nf = nf
  source = data.make_source(c.data)
  images, content, pose = source.sample_static(seed, frames, 'train')
  images = jnp.asarray(images / max(1.0, float(images.max())), jnp.float32)
  z_content = jnp.asarray(_one_hot(content, c.model.content_dim), jnp.float32)
  z_pose = jnp.asarray(_position_code(pose, c.model.pose_dim), jnp.float32)
  nets = models.networks(c)
  keys = jax.random.split(jax.random.key(seed), 3)
  x0 = images[:c.batch_size]
  vc = nets.content_encoder.init(keys[0], x0)
  vp = nets.pose_encoder.init(keys[1], x0)
  z_c, skips = nets.content_encoder.apply(vc, x0, train=False)
  vd = nets.decoder.init(keys[2], z_c, jnp.zeros((len(x0), c.model.pose_dim)),
                         skips if nets.takes_skips else None)
  parts = {'content_encoder': vc, 'pose_encoder': vp, 'decoder': vd}
  params = {k: v['params'] for k, v in parts.items()}
  stats = {k: v['batch_stats'] for k, v in parts.items()}
  opt = optax.adam(c.optim.lr, c.optim.b1, c.optim.b2, eps=c.optim.eps)
  opt_state = opt.init(params)

  def codes(p, s, x, idx, key, train):
    x_c = x
    if shift:
      d = jax.random.randint(key, (2,), -shift, shift + 1)
      x_c = jnp.roll(x, (d[0], d[1]), axis=(1, 2))  # Sprites lie on black: a translation.
    out_c = nets.content(p, s, x_c, train=train)
    (z_c, skips), s = (out_c if train else (out_c, s))
    out_p = nets.pose(p, s, x, train=train)
    z_p, s = out_p if train else (out_p, s)
    if oracle_content:
      z_c = z_content[idx]
    if oracle_pose:
      z_p = z_pose[idx]
    return z_c, z_p, skips, s

  def loss_fn(p, s, idx, key):
    x = images[idx]
    z_c, z_p, skips, s = codes(p, s, x, idx, key, True)
    r, s = nets.decode(p, s, z_c, z_p, skips, train=True)
    return jnp.mean((r - x) ** 2), s

  @jax.jit
  def step(p, s, o, idx, key):
    (loss, s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, idx, key)
    u, o = opt.update(g, o, p)
    return optax.apply_updates(p, u), s, o, loss

  held_out = jnp.arange(frames - 16, frames)  # Never drawn for training.
  rng = np.random.default_rng(seed)
  losses, t0 = [], time.perf_counter()
  for i in range(steps):
    idx = jnp.asarray(rng.integers(0, frames - 1000, c.batch_size))
    params, stats, opt_state, loss = step(params, stats, opt_state, idx, jax.random.key(i))
    if (i + 1) % log_every == 0:
      losses.append((i + 1, float(loss)))
  seconds = time.perf_counter() - t0
  z_c, z_p, skips, _ = codes(params, stats, images[held_out], held_out,
                             jax.random.key(steps), False)
  recon = nets.decode(params, stats, z_c, z_p, skips)
  test = images[held_out]
  return {'losses': losses, 'test_mse': float(jnp.mean((recon - test) ** 2)),
          'seconds': seconds, 'frames': np.asarray(test), 'recon': np.asarray(recon)}


def _save(out_dir: str, name: str, res: dict, args: dict):
  from PIL import Image
  os.makedirs(out_dir, exist_ok=True)
  grid = np.concatenate([np.concatenate(list(res['frames']), 1),
                         np.concatenate(list(res['recon']), 1)], 0)
  Image.fromarray((np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(
      os.path.join(out_dir, f'{name}.png'))
  with open(os.path.join(out_dir, f'{name}.json'), 'w') as f:
    json.dump({**args, 'test_mse': res['test_mse'], 'seconds': res['seconds'],
               'losses': res['losses']}, f, indent=1)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ['main']:
    register()
    from experiments import main as entry
    from mipae_jax import cli
    cli.run(entry.main, [sys.argv[0], *argv[1:]])
    return
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('command', choices=['diagnose'])
  parser.add_argument('--arch', default='dcgan')
  parser.add_argument('--steps', type=int, default=1500)
  parser.add_argument('--shift', type=int, default=0)
  parser.add_argument('--oracle_content', action='store_true')
  parser.add_argument('--oracle_pose', action='store_true')
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  register()
  if args.arch not in models.ARCHITECTURES:
    parser.error(f'--arch must be one of {tuple(models.ARCHITECTURES)}; got {args.arch!r}')
  kw = dict(arch=args.arch, steps=args.steps, shift=args.shift,
            oracle_content=args.oracle_content, oracle_pose=args.oracle_pose)
  res = diagnose(**kw)
  name = '_'.join([args.arch, str(args.steps), f's{args.shift}']
                  + (['oc'] if args.oracle_content else [])
                  + (['op'] if args.oracle_pose else []))
  _save(args.out, name, res, kw)
  print(f'{name}: held-out MSE {res["test_mse"]:.5f}, last training L_recon '
        f'{res["losses"][-1][1]:.5f}, {res["seconds"]:.0f} s')


if __name__ == '__main__':
  main()
