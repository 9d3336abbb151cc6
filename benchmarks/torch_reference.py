"""A PyTorch reference of the MIPAE networks and train steps of docs/method.md sections 1-3.

Used for two things only: the parity test of `mipae_jax.convert` and the side-by-side
speed benchmark (`python -m benchmarks.run`). Module attribute names follow the published
PyTorch code, so `state_dict()` keys are the keys of its checkpoints:

- content encoder (DCGAN): `c1.main.0` (conv), `c1.main.1` (BN) .. `c4`, `c5.0`, `c5.1`;
- pose encoder (DCGAN): `main.0.main.0` .. `main.3.main.1`, `main.4` (conv), `main.5` (BN);
- decoder (DCGAN): `upc1.0` (transposed conv), `upc1.1`, `upc2.main.0` .. `upc4.main.1`,
  `upc5.0`;
- scene discriminator (critic): `main.0`, `main.2`, `main.4`;
- lstm: `embed`, `lstm.{i}` (`nn.LSTMCell`), `output.0`;
- MPI3D: VGG encoder `c1.0.main.0` .. `c5.1`, VGG decoder `upc1.0` .. `upc5.1`, ResNet
  pose encoder `main.conv1` .. `main.layer4.1.bn2`, `main.conv_out`, `main.bn_out`.

Frames are `[B, C, H, W]` tensors (channels-last memory format when the step asks for it);
videos are time-first `[T, B, C, H, W]`, as the published training loop indexed them.
The trainers run on any torch device (`device='cuda'` on a GPU) and take `dtype='bfloat16'`
for bfloat16 compute under `torch.autocast`, parameters and optimiser state in float32
(what `config.model.dtype = 'bfloat16'` does in mipae_jax).
Requires torch (the `bench` extra pins torch==2.13.0).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _lrelu():
  return nn.LeakyReLU(0.2, inplace=True)


class DCGANConv(nn.Module):
  """4x4/2 conv -> BN -> LeakyReLU(0.2): `[B, in, H, W] -> [B, out, H/2, W/2]`."""

  def __init__(self, nin, nout):
    super().__init__()
    self.main = nn.Sequential(nn.Conv2d(nin, nout, 4, 2, 1), nn.BatchNorm2d(nout), _lrelu())

  def forward(self, x):
    return self.main(x)


class DCGANUpConv(nn.Module):
  """4x4/2 transposed conv -> BN -> LeakyReLU(0.2): `[B, in, H, W] -> [B, out, 2H, 2W]`."""

  def __init__(self, nin, nout):
    super().__init__()
    self.main = nn.Sequential(nn.ConvTranspose2d(nin, nout, 4, 2, 1), nn.BatchNorm2d(nout),
                              _lrelu())

  def forward(self, x):
    return self.main(x)


def _num_blocks(image_size):
  return int(round(math.log2(image_size))) - 2


class ContentEncoder(nn.Module):
  """E_c: `[B, nc, S, S] -> ([B, dim], [block outputs])`."""

  def __init__(self, dim=128, nc=3, nf=64, image_size=64):
    super().__init__()
    n = _num_blocks(image_size)
    self.n = n
    for i in range(n):
      setattr(self, f'c{i + 1}', DCGANConv(nc if i == 0 else nf * 2 ** (i - 1), nf * 2 ** i))
    setattr(self, f'c{n + 1}', nn.Sequential(nn.Conv2d(nf * 2 ** (n - 1), dim, 4, 1, 0),
                                             nn.BatchNorm2d(dim), nn.Tanh()))

  def forward(self, x):
    skips = []
    for i in range(self.n):
      x = getattr(self, f'c{i + 1}')(x)
      skips.append(x)
    z = getattr(self, f'c{self.n + 1}')(x)
    return z.flatten(1), skips


class PoseEncoder(nn.Module):
  """E_p: `[B, nc, S, S] -> [B, dim]`."""

  def __init__(self, dim=5, nc=3, nf=64, image_size=64):
    super().__init__()
    n = _num_blocks(image_size)
    blocks = [DCGANConv(nc if i == 0 else nf * 2 ** (i - 1), nf * 2 ** i) for i in range(n)]
    self.main = nn.Sequential(*blocks, nn.Conv2d(nf * 2 ** (n - 1), dim, 4, 1, 0),
                              nn.BatchNorm2d(dim), nn.Tanh())

  def forward(self, x):
    return self.main(x).flatten(1)


class Decoder(nn.Module):
  """D: `(z_c [B, Dc], z_p [B, Dp], skips) -> [B, nc, S, S]` in (0, 1)."""

  def __init__(self, content_dim=128, pose_dim=5, nc=3, nf=64, image_size=64, skips=False):
    super().__init__()
    n = _num_blocks(image_size)
    self.n, self.skips = n, skips
    mul = 2 if skips else 1
    top = nf * 2 ** (n - 1)
    self.upc1 = nn.Sequential(nn.ConvTranspose2d(content_dim + pose_dim, top, 4, 1, 0),
                              nn.BatchNorm2d(top), _lrelu())
    for i in range(n - 1):
      setattr(self, f'upc{i + 2}',
              DCGANUpConv(nf * 2 ** (n - 1 - i) * mul, nf * 2 ** (n - 2 - i)))
    setattr(self, f'upc{n + 1}',
            nn.Sequential(nn.ConvTranspose2d(nf * mul, nc, 4, 2, 1), nn.Sigmoid()))

  def forward(self, z_c, z_p, skips=None):
    h = self.upc1(torch.cat([z_c, z_p], 1)[:, :, None, None])
    for i in range(self.n):
      if self.skips:
        h = torch.cat([h, skips[self.n - 1 - i]], 1)
      h = getattr(self, f'upc{i + 2}')(h)
    return h


class SceneDiscriminator(nn.Module):
  """Critic C: `(a [B, Dp], b [B, Dp]) -> T [B]`."""

  def __init__(self, pose_dim=5, nf=512):
    super().__init__()
    self.main = nn.Sequential(nn.Linear(2 * pose_dim, nf), nn.ReLU(True), nn.Linear(nf, nf),
                              nn.ReLU(True), nn.Linear(nf, 1))

  def forward(self, a, b):
    return self.main(torch.cat([a, b], 1))[:, 0]


class PoseLSTM(nn.Module):
  """L: `(x [B, Dp + Dc], hidden) -> (pose [B, Dp], hidden)`; hidden is a list of (h, c)."""

  def __init__(self, input_size=133, output_size=5, hidden=256, layers=2):
    super().__init__()
    self.hidden_size = hidden
    self.embed = nn.Linear(input_size, hidden)
    self.lstm = nn.ModuleList([nn.LSTMCell(hidden, hidden) for _ in range(layers)])
    self.output = nn.Sequential(nn.Linear(hidden, output_size), nn.Tanh())

  def init_hidden(self, batch_size, device=None):
    z = torch.zeros(batch_size, self.hidden_size, device=device)
    return [(z, z) for _ in self.lstm]

  def forward(self, x, hidden):
    h = self.embed(x)
    new = []
    for cell, state in zip(self.lstm, hidden, strict=True):
      state = cell(h, state)
      new.append(state)
      h = state[0]
    return self.output(h), new


# ------------------------------------------------------------------------ MPI3D.


class VGGLayer(nn.Module):
  def __init__(self, nin, nout):
    super().__init__()
    self.main = nn.Sequential(nn.Conv2d(nin, nout, 3, 1, 1), nn.BatchNorm2d(nout), _lrelu())

  def forward(self, x):
    return self.main(x)


class VGGEncoder(nn.Module):
  """MPI3D E_c: `[B, nc, 64, 64] -> ([B, dim], skips at 64, 32, 16, 8)`."""

  def __init__(self, dim=128, nc=3, nf=64):
    super().__init__()
    w = [nf, 2 * nf, 4 * nf, 8 * nf]
    self.c1 = nn.Sequential(VGGLayer(nc, w[0]), VGGLayer(w[0], w[0]))
    self.c2 = nn.Sequential(VGGLayer(w[0], w[1]), VGGLayer(w[1], w[1]))
    self.c3 = nn.Sequential(VGGLayer(w[1], w[2]), VGGLayer(w[2], w[2]), VGGLayer(w[2], w[2]))
    self.c4 = nn.Sequential(VGGLayer(w[2], w[3]), VGGLayer(w[3], w[3]), VGGLayer(w[3], w[3]))
    self.c5 = nn.Sequential(nn.Conv2d(w[3], dim, 4, 1, 0), nn.BatchNorm2d(dim), nn.Tanh())

  def forward(self, x):
    h1 = self.c1(x)
    h2 = self.c2(F.max_pool2d(h1, 2))
    h3 = self.c3(F.max_pool2d(h2, 2))
    h4 = self.c4(F.max_pool2d(h3, 2))
    return self.c5(F.max_pool2d(h4, 2)).flatten(1), [h1, h2, h3, h4]


class VGGDecoder(nn.Module):
  """MPI3D D: `(z_c, z_p, skips) -> [B, nc, 64, 64]`."""

  def __init__(self, content_dim=128, pose_dim=10, nc=3, nf=64):
    super().__init__()
    w = [nf, 2 * nf, 4 * nf, 8 * nf]
    self.upc1 = nn.Sequential(nn.ConvTranspose2d(content_dim + pose_dim, w[3], 4, 1, 0),
                              nn.BatchNorm2d(w[3]), _lrelu())
    self.upc2 = nn.Sequential(VGGLayer(2 * w[3], w[3]), VGGLayer(w[3], w[3]), VGGLayer(w[3], w[2]))
    self.upc3 = nn.Sequential(VGGLayer(2 * w[2], w[2]), VGGLayer(w[2], w[2]), VGGLayer(w[2], w[1]))
    self.upc4 = nn.Sequential(VGGLayer(2 * w[1], w[1]), VGGLayer(w[1], w[0]))
    self.upc5 = nn.Sequential(VGGLayer(2 * w[0], w[0]), nn.ConvTranspose2d(w[0], nc, 3, 1, 1),
                              nn.Sigmoid())

  def forward(self, z_c, z_p, skips):
    h = self.upc1(torch.cat([z_c, z_p], 1)[:, :, None, None])
    for i, stage in enumerate((self.upc2, self.upc3, self.upc4, self.upc5)):
      h = stage(torch.cat([F.interpolate(h, scale_factor=2, mode='nearest'), skips[3 - i]], 1))
    return h


class BasicBlock(nn.Module):
  def __init__(self, nin, nout, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(nin, nout, 3, stride, 1)
    self.bn1 = nn.BatchNorm2d(nout)
    self.conv2 = nn.Conv2d(nout, nout, 3, 1, 1)
    self.bn2 = nn.BatchNorm2d(nout)
    self.downsample = None
    if stride != 1 or nin != nout:
      self.downsample = nn.Sequential(nn.Conv2d(nin, nout, 1, stride), nn.BatchNorm2d(nout))

  def forward(self, x):
    h = F.relu(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
  def __init__(self, dim=10, nc=3, nf=64):
    super().__init__()
    self.conv1 = nn.Conv2d(nc, nf, 5, 2, 3)
    self.bn1 = nn.BatchNorm2d(nf)
    nin = nf
    for s, mult in enumerate((1, 2, 4, 8)):
      stride = 1 if s == 0 else 2
      setattr(self, f'layer{s + 1}', nn.Sequential(BasicBlock(nin, nf * mult, stride),
                                                   BasicBlock(nf * mult, nf * mult)))
      nin = nf * mult
    self.conv_out = nn.Conv2d(nin, dim, 3)
    self.bn_out = nn.BatchNorm2d(dim)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    for s in range(4):
      x = getattr(self, f'layer{s + 1}')(x)
    return torch.tanh(self.bn_out(self.conv_out(x))).flatten(1)


class ResNetPoseEncoder(nn.Module):
  """MPI3D E_p: `[B, nc, 64, 64] -> [B, dim]` (keys under `main.`)."""

  def __init__(self, dim=10, nc=3, nf=64):
    super().__init__()
    self.main = ResNet18(dim, nc, nf)

  def forward(self, x):
    return self.main(x)


# ------------------------------------------------------------------ Factory.


def build(config):
  """Reference modules for a mipae_jax config: {'content_encoder', 'pose_encoder',
  'decoder', 'critic', 'lstm'} (mipae_jax names; the published checkpoint calls the pose
  encoder `position_encoder` and the critic `discriminator`)."""
  m, d = config.model, config.data
  if m.arch == 'dcgan':
    ec = ContentEncoder(m.content_dim, d.channels, m.nf, d.image_size)
    ep = PoseEncoder(m.pose_dim, d.channels, m.nf, d.image_size)
    dec = Decoder(m.content_dim, m.pose_dim, d.channels, m.nf, d.image_size, bool(m.skips))
  else:
    ec = VGGEncoder(m.content_dim, d.channels, m.nf)
    ep = ResNetPoseEncoder(m.pose_dim, d.channels, m.nf)
    dec = VGGDecoder(m.content_dim, m.pose_dim, d.channels, m.nf)
  return {'content_encoder': ec, 'pose_encoder': ep, 'decoder': dec,
          'critic': SceneDiscriminator(m.pose_dim, m.critic_width),
          'lstm': PoseLSTM(m.content_dim + m.pose_dim, m.pose_dim, m.lstm_hidden,
                           m.lstm_layers)}


def init_weights(module, generator=None):
  """Init of docs/method.md section 1: conv/linear weights N(0, 0.02), biases 0; BN scale
  N(1, 0.02), bias 0. LSTM cells keep torch's uniform(+-1/sqrt(hidden)) init."""
  for m in module.modules():
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
      nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
      nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
      nn.init.zeros_(m.bias)


def video_to_torch(video, channels_last=True, device='cpu'):
  """`[B, T, H, W, C]` array -> time-first `[T, B, C, H, W]` tensor on `device` whose
  frames have channels-last strides when `channels_last` (no copy then on the CPU for a
  writeable float32 array, as a loader's batch is; the host-to-device copy keeps the
  strides), else contiguous NCHW."""
  v = np.asarray(video, np.float32)
  if not v.flags.writeable:  # torch.from_numpy shares memory and wants it writeable.
    v = v.copy()
  v = torch.from_numpy(v).permute(1, 0, 4, 2, 3)
  return (v if channels_last else v.contiguous()).to(device)


def synchronize(device) -> None:
  """Waits for `device`'s queued kernels (CUDA runs asynchronously; the CPU does not)."""
  if torch.device(device).type == 'cuda':
    torch.cuda.synchronize(device)


def _check_dtype(dtype: str) -> str:
  if dtype not in ('float32', 'bfloat16'):
    raise ValueError(f"dtype: expected 'float32' or 'bfloat16', found {dtype!r}")
  return dtype


def _autocast(device, dtype: str):
  """bfloat16 compute for the forward passes (parameters stay float32), or nothing."""
  if dtype == 'float32':
    return contextlib.nullcontext()
  return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def _prepare(net, device, channels_last):
  net.to(device)
  if channels_last:
    net.to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------- Steps.


class AutoencoderTrainer:
  """One autoencoder iteration (docs/method.md section 2): critic step, then model step.

  `step(critic_video, video)` takes time-first `[T, B, C, H, W]` tensors on `device`.
  Random frame indices and permutations come from `self.gen` (a seeded CPU
  torch.Generator, so they are the same on every device).
  """

  def __init__(self, config, seed=0, channels_last=True, device='cpu', dtype='float32'):
    torch.manual_seed(seed)
    self.config, self.device = config, torch.device(device)
    self.dtype = _check_dtype(dtype)
    nets = build(config)
    self.ec, self.ep, self.dec = nets['content_encoder'], nets['pose_encoder'], nets['decoder']
    self.critic = nets['critic']
    for net in (self.ec, self.ep, self.dec, self.critic):
      init_weights(net)
      net.train()
      _prepare(net, self.device, channels_last)
    self.skips = config.model.arch == 'vgg' or bool(config.model.skips)
    o = config.optim
    self.model_params = [*self.ec.parameters(), *self.ep.parameters(), *self.dec.parameters()]
    self.opt = torch.optim.Adam(self.model_params, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    self.opt_critic = torch.optim.Adam(self.critic.parameters(), lr=o.lr, betas=(o.b1, o.b2),
                                       eps=o.eps)
    self.gen = torch.Generator().manual_seed(seed)

  def _randint(self, lo, hi):
    return int(torch.randint(lo, hi, (), generator=self.gen))

  def _randperm(self, n):
    return torch.randperm(n, generator=self.gen).to(self.device)

  def critic_step(self, video):
    t = video.shape[0]
    with torch.no_grad(), _autocast(self.device, self.dtype):
      # Encoder gradients are stopped; BN statistics still update.
      a = self.ep(video[self._randint(0, t)])
      b = self.ep(video[self._randint(0, t)])
    b_neg = b[self._randperm(b.shape[0])]
    with _autocast(self.device, self.dtype):
      t_joint, t_marg = self.critic(a, b), self.critic(a, b_neg)
    t_joint, t_marg = t_joint.float(), t_marg.float()
    loss = F.softplus(-t_joint).mean() + F.softplus(t_marg).mean()  # -JS objective.
    self.opt_critic.zero_grad(set_to_none=True)
    loss.backward()
    self.opt_critic.step()
    return loss.detach()

  def model_step(self, video):
    lc = self.config.loss
    t = video.shape[0]
    k, r = self._randint(1, t), self._randint(0, t)
    perm = self._randperm(video.shape[1])
    xk = video[k]
    with _autocast(self.device, self.dtype):
      h_c, skips = self.ec(video[0])
      with torch.no_grad():  # Targets: E_c(x[k]) and E_p(x[r]) carry no gradient.
        h_c_k = self.ec(xk)[0]
      h_p = self.ep(xk)
      with torch.no_grad():
        h_p_r = self.ep(video[r])
      recon = self.dec(h_c, h_p, skips if self.skips else None)
      # The critic is fixed here: no gradient for its parameters (saves their backward).
      for p in self.critic.parameters():
        p.requires_grad_(False)
      t_joint, t_marg = self.critic(h_p, h_p_r), self.critic(h_p, h_p_r[perm])
      for p in self.critic.parameters():
        p.requires_grad_(True)
    # Losses in float32, as mipae_jax computes them.
    h_c, h_c_k, recon = h_c.float(), h_c_k.float(), recon.float()
    t_joint, t_marg = t_joint.float(), t_marg.float()
    l_sim = F.mse_loss(h_c, h_c_k)
    l_recon = F.mse_loss(recon, xk)
    l_mi = t_joint.mean() - torch.exp(t_marg).mean() + 1.0
    loss = l_recon + lc.alpha * l_sim + lc.beta * l_mi
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss.detach()

  def step(self, critic_video, video):
    self.critic_step(critic_video)
    return self.model_step(video)


class LSTMTrainer:
  """One LSTM iteration (docs/method.md section 3), the autoencoder frozen in inference
  mode (as `mipae_jax.train.lstm_train_step`): all frames' poses in one batched no-grad
  pass, then teacher forcing over t = 1..T-1."""

  def __init__(self, config, seed=0, channels_last=True, device='cpu', dtype='float32'):
    torch.manual_seed(seed)
    self.config, self.device = config, torch.device(device)
    self.dtype = _check_dtype(dtype)
    nets = build(config)
    self.ec, self.ep, self.lstm = nets['content_encoder'], nets['pose_encoder'], nets['lstm']
    for net in (self.ec, self.ep):
      init_weights(net)
      net.eval()
      _prepare(net, self.device, channels_last)
    self.lstm.to(self.device)
    o = config.lstm_optim
    self.opt = torch.optim.Adam(self.lstm.parameters(), lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

  def step(self, video):
    t, b = video.shape[:2]
    with torch.no_grad(), _autocast(self.device, self.dtype):
      h_c = self.ec(video[self.config.data.input_frames - 1])[0]
      frames = video.flatten(0, 1).contiguous(memory_format=self.memory_format)
      h_p = self.ep(frames).reshape(t, b, -1)
    hidden = self.lstm.init_hidden(b, self.device)
    loss = 0.0
    for i in range(1, t):
      with _autocast(self.device, self.dtype):
        pred, hidden = self.lstm(torch.cat([h_p[i - 1], h_c], 1), hidden)
      loss = loss + F.mse_loss(pred.float(), h_p[i].float())
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    return loss.detach()
