"""Bad configurations are refused before any compute, naming the field and what is allowed."""

import os
import subprocess
import sys

import pytest

from mipae_jax import configs, configuration, errors
from mipae_jax.configs import default, demo, dsprites, mnist, mpi3d, study, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_configs_are_valid():
  for cfg in (default.get_config(), tiny.get_config(), demo.get_config(),
              dsprites.get_config('drnet')):
    configuration.validate(cfg, num_devices=4)
  assert dsprites.get_config('smile').loss.name == 'smile'
  assert mnist.get_config().data.name == 'moving_mnist'
  m = mpi3d.get_config()
  assert (m.model.arch, m.model.pose_dim, m.data.name) == ('vgg', 10, 'mpi3d')
  with pytest.raises(ValueError, match="config variant 'gan'"):
    dsprites.get_config('gan')
  # The study's laptop setting changes only the fields its comments name; ':paper' none.
  configuration.validate(study.get_config(), num_devices=1)
  assert study.get_config('paper').to_dict() == default.get_config().to_dict()
  s, d = study.get_config(), default.get_config()
  assert (s.data.num_objects, s.data.channels, s.loss.beta, s.optim.lr, s.model.pose_dim) == (
      d.data.num_objects, d.data.channels, d.loss.beta, d.optim.lr, d.model.pose_dim)
  assert s.loss.fg_weight == 10.0 and d.loss.fg_weight == 1.0
  with pytest.raises(ValueError, match="config variant 'gpu'"):
    study.get_config('gpu')


def edit(**changes):
  c = tiny.get_config()
  for dotted, value in changes.items():
    *path, last = dotted.split('__')
    node = c
    for p in path:
      node = node[p]
    node[last] = value
  return c


@pytest.mark.parametrize('changes,devices,message', [
    ({'batch_size': 6}, 4, r'config\.batch_size=6 .* multiple of the 4 devices'),
    ({'batch_size': 0}, 1, r'config\.batch_size=0 .* positive integer'),
    ({'data__name': 'kth'}, 1, r'config\.data\.name: expected one of'),
    ({'loss__name': 'infogan'}, 1,
     r"config\.loss\.name='infogan' .* one of \('mipae', 'drnet', 'smile', "
     r"'smile_song_ermon', 'nwj', 'dv', 'infonce'\)"),
    ({'model__arch': 'unet'}, 1, r"config\.model\.arch='unet' .* one of \('dcgan', 'vgg'\)"),
    ({'model__pose_dim': 0}, 1, r'config\.model\.pose_dim=0 .* positive integer'),
    ({'model__nf': -8}, 1, r'config\.model\.nf=-8 .* positive integer'),
    ({'model__dtype': 'float16'}, 1, r"config\.model\.dtype='float16' .*'float32'"),
    ({'optim__lr': 0.0}, 1, r'config\.optim\.lr=0\.0 .* learning rate > 0'),
    ({'lstm_optim__b1': 1.5}, 1, r'config\.lstm_optim\.b1=1\.5 .* \[0, 1\)'),
    ({'loss__beta': -1.0}, 1, r'config\.loss\.beta=-1\.0 .* >= 0'),
    ({'train__ckpt_every': 0}, 1, r'config\.train\.ckpt_every=0 .* positive integer'),
    ({'eval__future_frames': 5}, 1,
     r'config\.eval\.future_frames=5 .* at most data\.target_frames=2'),
    ({'data__image_size': 48}, 1, r'config\.data\.image_size: expected a divisor of 64'),
    ({'data__image_size': 8}, 1, r'config\.data\.image_size=8 .* power of two >= 16'),
    ({'model__arch': 'vgg'}, 1, r'config\.data\.image_size=32 .* 64 for the vgg'),
    ({'data__input_frames': 1, 'data__target_frames': 0, 'eval__future_frames': 1}, 1,
     r'expected an int >= 1|input_frames \+ target_frames >= 2'),
    # A random autoencoder would train an LSTM and report metrics.
    ({'train__ae_steps': 0}, 1, r'config\.train\.ae_steps=0 .* positive integer'),
    # One video per batch: the shuffled pairs are the joint pairs, the MI term is 0.
    ({'batch_size': 1}, 1, r'config\.batch_size=1 .* at least 2: the critic'),
    # `nan <= 0` is False: every float field is checked to be finite first.
    ({'optim__lr': float('nan')}, 1, r'config\.optim\.lr=nan .* a finite number'),
    ({'loss__alpha': float('inf')}, 1, r'config\.loss\.alpha=inf .* a finite number'),
    ({'eval__seed': -1}, 1, r'config\.eval\.seed=-1 .* integer >= 0'),
    ({'data__split_seed': -3}, 1, r'config\.data\.split_seed=-3 .* integer >= 0'),
])
def test_bad_configs_name_the_field(changes, devices, message):
  with pytest.raises(ValueError, match=message):
    configuration.validate(edit(**changes), num_devices=devices)


def test_packaged_configs_by_name():
  """`configs.get('NAME[:VARIANT]')` is each module's get_config; a bad name is named."""
  assert configs.get('dsprites:drnet').to_dict() == dsprites.get_config('drnet').to_dict()
  assert configs.get('tiny').to_dict() == tiny.get_config().to_dict()
  assert configs.get('demo:drnet').loss.name == 'drnet'
  assert configs.get('study:paper').to_dict() == default.get_config().to_dict()
  for name in configs.names():
    assert os.path.isfile(configs.path(name))
    configuration.check_fields(configs.get(name))  # Each defines every field a run reads.
  with pytest.raises(ValueError, match=r"no packaged config 'tinny'.*Did you mean 'tiny'"):
    configs.get('tinny')
  assert {'seed', 'data.name', 'model.kernels', 'eval.test_seq'} <= set(
      configuration.REQUIRED_FIELDS)


def test_a_config_lacking_fields_is_refused_naming_them():
  c = tiny.get_config()
  del c.train['profile_steps']
  del c.eval['seed']
  with pytest.raises(errors.ConfigError,
                     match=r"lacks field\(s\) eval\.seed, train\.profile_steps: build it "
                           r"from mipae_jax\.configs\.get\('default'\)"):
    configuration.validate(c)


def test_command_line_overrides_reach_validation(tmp_path):
  """`--config.field=value` works, and a bad value stops the run before any compute."""
  out = subprocess.run(
      [sys.executable, '-m', 'mipae_jax.commands.train', '--config=tiny',
       '--config.loss.name=infogan', f'--workdir={tmp_path}/run'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "config.loss.name='infogan' is not allowed" in out.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_a_registered_name_is_refused_a_second_time_and_lookup_names_the_field():
  """The three registries (losses, architectures, datasets) are one `Registry`: a second
  registration of a name would silently change what existing configs mean."""
  from mipae_jax import data, losses, models
  for reg, register, name in [(losses.VARIANTS, losses.register, 'mipae'),
                              (models.ARCHITECTURES, models.register_architecture, 'dcgan'),
                              (data.DATASETS, data.register, 'moving_dsprites')]:
    before = reg[name]
    with pytest.raises(ValueError, match=f"{reg.field} '{name}' is already registered"):
      register(name, before)
    assert reg[name] is before
    with pytest.raises(ValueError, match=rf"{reg.field} must be one of .*'{name}'.*got 'nope'"):
      reg.lookup('nope')
