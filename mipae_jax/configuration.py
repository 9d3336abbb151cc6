"""Checks a run config before any compute, with messages that name the field, what was
found and what is allowed."""

from __future__ import annotations

from mipae_jax import data, losses, models

DTYPES = ('float32', 'bfloat16')
ARCHS = ('dcgan', 'vgg')
MIG_ESTIMATORS = ('probe', 'paper')
KNN_MODES = ('discrete', 'continuous')


def _fail(field: str, found, allowed: str):
  raise ValueError(f'config.{field}={found!r} is not allowed: expected {allowed}.')


def _positive_int(c, field: str):
  v = c
  for part in field.split('.'):
    v = v[part]
  if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
    _fail(field, v, 'a positive integer')


def _non_negative_int(c, field: str):
  v = c
  for part in field.split('.'):
    v = v[part]
  if not isinstance(v, int) or isinstance(v, bool) or v < 0:
    _fail(field, v, 'an integer >= 0')


def validate(config, num_devices: int = 1) -> None:
  """Raises ValueError (or FileNotFoundError for missing data) on the first bad field."""
  _positive_int(config, 'batch_size')
  if config.batch_size % num_devices:
    _fail('batch_size', config.batch_size,
          f'a multiple of the {num_devices} devices this run uses '
          f'(e.g. {num_devices * max(1, config.batch_size // num_devices)})')
  data.validate(config.data)
  d, m = config.data, config.model
  if d.input_frames + d.target_frames < 2:
    _fail('data.target_frames', d.target_frames,
          'input_frames + target_frames >= 2 (the model step pairs frame 0 with a later one)')
  if m.arch not in ARCHS:
    _fail('model.arch', m.arch, f'one of {ARCHS}')
  if m.arch == 'dcgan':
    try:
      models.dcgan_num_blocks(d.image_size)
    except ValueError:
      _fail('data.image_size', d.image_size,
            'a power of two >= 16 for the dcgan networks (the paper uses 64)')
  elif d.image_size != 64:
    _fail('data.image_size', d.image_size, '64 for the vgg (MPI3D) networks')
  for field in ('model.nf', 'model.content_dim', 'model.pose_dim', 'model.critic_width',
                'model.lstm_hidden', 'model.lstm_layers'):
    _positive_int(config, field)
  if m.dtype not in DTYPES:
    _fail('model.dtype', m.dtype, f'one of {DTYPES}')
  if config.loss.name not in losses.LOSS_NAMES:
    _fail('loss.name', config.loss.name, f'one of {losses.LOSS_NAMES}')
  for field in ('alpha', 'beta'):
    v = config.loss[field]
    if not isinstance(v, (int, float)) or v < 0:
      _fail(f'loss.{field}', v, 'a number >= 0')
  if not config.loss.smile_clip > 0:
    _fail('loss.smile_clip', config.loss.smile_clip, 'a number > 0')
  for group in ('optim', 'lstm_optim'):
    o = config[group]
    if not isinstance(o.lr, (int, float)) or o.lr <= 0:
      _fail(f'{group}.lr', o.lr, 'a learning rate > 0')
    for b in ('b1', 'b2'):
      if not 0 <= o[b] < 1:
        _fail(f'{group}.{b}', o[b], 'a number in [0, 1)')
    if not o.eps > 0:
      _fail(f'{group}.eps', o.eps, 'a number > 0')
  for field in ('train.ae_steps', 'train.lstm_steps', 'train.profile_steps'):
    _non_negative_int(config, field)
  for field in ('train.log_every', 'train.ckpt_every', 'train.keep_checkpoints',
                'eval.mig_samples', 'eval.test_videos', 'eval.future_frames'):
    _positive_int(config, field)
  if config.eval.future_frames > d.target_frames:
    _fail('eval.future_frames', config.eval.future_frames,
          f'at most data.target_frames={d.target_frames} (the frames each test video has '
          f'after the {d.input_frames} conditioning ones); raise data.target_frames to '
          f'score longer predictions')
  if config.eval.mig_samples < 100:
    _fail('eval.mig_samples', config.eval.mig_samples, 'at least 100 (the paper uses 100,000)')
  if config.eval.mig_estimator not in MIG_ESTIMATORS:
    _fail('eval.mig_estimator', config.eval.mig_estimator, f'one of {MIG_ESTIMATORS}')
  if not isinstance(config.eval.paper_protocol, bool):
    _fail('eval.paper_protocol', config.eval.paper_protocol, 'True or False')
  for field in ('knn_content_mode', 'knn_pose_mode'):
    if config.eval[field] not in KNN_MODES:
      _fail(f'eval.{field}', config.eval[field], f'one of {KNN_MODES}')
