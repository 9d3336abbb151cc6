"""Checks a run config before any compute, with messages that name the field, what was
found and what is allowed."""

from __future__ import annotations

import math

import ml_collections

from mipae_jax import data, errors, losses, models
from mipae_jax.configs import default as default_config
from mipae_jax.metrics import fvd

DTYPES = ('float32', 'bfloat16')
MIG_ESTIMATORS = ('probe', 'paper')
KNN_MODES = ('discrete', 'continuous')
LPIPS_NETS = ('', 'alex', 'vgg')


# Fields added after runs were recorded without them, with the value those runs used: a
# workdir whose config.json lacks one resumes and evaluates as if it held this value.
# 'model.kernels': before the choice existed every run used the CPU kernel set; the field
# may change on resume (config_record.RESUMABLE_FIELDS), so this only keeps the record true.
ADDED_FIELDS = {'model.normalize_pose': False, 'loss.recon': 'l2', 'loss.fg_weight': 1.0,
                'model.kernels': 'cpu', 'lstm.code_pool': 0, 'data.pipeline': 'stream',
                'data.tfds_name': '', 'data.data_dir': '', 'eval.test_seq': '',
                'eval.lpips': '', 'eval.analogy_videos': 0, 'eval.mig_estimator': 'probe',
                'eval.paper_protocol': True, 'eval.knn_content_mode': 'continuous',
                'eval.knn_pose_mode': 'continuous', 'eval.fvd_videos': 0,
                'eval.fvd_resize': 'tf1', 'loss.fg_anneal_start': 0,
                'loss.fg_anneal_steps': 0}
RECON_LOSSES = ('l2', 'l1', 'bce')


def leaves(c, prefix: str = ''):
  """`(dotted field, value)` of every leaf of a config or nested dict."""
  for k, v in c.items():
    if hasattr(v, 'items'):
      yield from leaves(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


# Every field a run reads: the leaves of the packaged defaults, which define them all. A
# config written for an older version may lack some: it is refused naming them, before
# anything runs, instead of failing with a KeyError mid-run.
REQUIRED_FIELDS = tuple(field for field, _ in leaves(default_config.get_config()))


def fill_added_fields(config) -> None:
  """Adds every missing field of ADDED_FIELDS to `config` (in place), at its old value."""
  for field, value in ADDED_FIELDS.items():
    *groups, name = field.split('.')
    node = config
    for g in groups:
      if g not in node:
        node[g] = ml_collections.ConfigDict()
      node = node[g]
    if name not in node:
      node[name] = value


def _fail(field: str, found, allowed: str):
  raise errors.ConfigError(f'config.{field}={found!r} is not allowed: expected {allowed}.')


def _get(c, field: str):
  v = c
  for part in field.split('.'):
    v = v[part]
  return v


def _positive_int(c, field: str):
  v = _get(c, field)
  if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
    _fail(field, v, 'a positive integer')


def _non_negative_int(c, field: str):
  v = _get(c, field)
  if not isinstance(v, int) or isinstance(v, bool) or v < 0:
    _fail(field, v, 'an integer >= 0')


def check_fields(config) -> None:
  """Refuses a config lacking a field a run reads, or holding a NaN or infinite number."""
  missing = []
  for field in REQUIRED_FIELDS:
    try:
      _get(config, field)
    except (KeyError, AttributeError, TypeError):
      missing.append(field)
  if missing:
    raise errors.ConfigError(
        f'the config lacks field(s) {", ".join(missing)}: build it from '
        'mipae_jax.configs.get(\'default\') (which defines every field) and override '
        'what differs.')
  for field, v in leaves(config):
    if isinstance(v, float) and not math.isfinite(v):
      _fail(field, v, 'a finite number')


def validate(config, num_devices: int = 1) -> None:
  """Raises ConfigError (DataNotFoundError for missing data) on the first bad field."""
  check_fields(config)
  _positive_int(config, 'batch_size')
  if config.batch_size < 2:
    _fail('batch_size', config.batch_size,
          'at least 2: the critic pairs each pose with another video\'s, and a batch of '
          'one has no other video, so the MI term would be silently 0')
  _non_negative_int(config, 'seed')
  if config.batch_size % num_devices:
    _fail('batch_size', config.batch_size,
          f'a multiple of the {num_devices} devices this run uses '
          f'(e.g. {num_devices * max(1, config.batch_size // num_devices)})')
  data.validate(config.data)
  d, m = config.data, config.model
  if d.input_frames + d.target_frames < 2:
    _fail('data.target_frames', d.target_frames,
          'input_frames + target_frames >= 2 (the model step pairs frame 0 with a later one)')
  if m.arch not in models.ARCHITECTURES:
    _fail('model.arch', m.arch, f'one of {tuple(models.ARCHITECTURES)}')
  problem = models.architecture(m.arch).check(m, d)
  if problem:
    raise errors.ConfigError(problem)
  for field in ('model.nf', 'model.content_dim', 'model.pose_dim', 'model.critic_width',
                'model.lstm_hidden', 'model.lstm_layers'):
    _positive_int(config, field)
  if m.dtype not in DTYPES:
    _fail('model.dtype', m.dtype, f'one of {DTYPES}')
  if not isinstance(m.normalize_pose, bool):
    _fail('model.normalize_pose', m.normalize_pose, 'True or False')
  if m.kernels not in models.KERNEL_CHOICES:
    _fail('model.kernels', m.kernels, f'one of {models.KERNEL_CHOICES}')
  if config.loss.recon not in RECON_LOSSES:
    _fail('loss.recon', config.loss.recon, f'one of {RECON_LOSSES}')
  fg = config.loss.fg_weight
  if isinstance(fg, bool) or not isinstance(fg, (int, float)) or not fg >= 1:
    _fail('loss.fg_weight', fg, 'a number >= 1 (1 = every pixel weighs the same, the paper)')
  for field in ('loss.fg_anneal_start', 'loss.fg_anneal_steps'):
    _non_negative_int(config, field)
  if config.loss.name not in losses.names():
    _fail('loss.name', config.loss.name, f'one of {losses.names()}')
  problem = losses.variant(config.loss.name).check(config.loss)
  if problem:
    raise errors.ConfigError(problem)
  for field in ('alpha', 'beta'):
    v = config.loss[field]
    if not isinstance(v, (int, float)) or v < 0:
      _fail(f'loss.{field}', v, 'a number >= 0')
  for group in ('optim', 'lstm_optim'):
    o = config[group]
    if not isinstance(o.lr, (int, float)) or o.lr <= 0:
      _fail(f'{group}.lr', o.lr, 'a learning rate > 0')
    for b in ('b1', 'b2'):
      if not 0 <= o[b] < 1:
        _fail(f'{group}.{b}', o[b], 'a number in [0, 1)')
    if not o.eps > 0:
      _fail(f'{group}.eps', o.eps, 'a number > 0')
  _positive_int(config, 'train.ae_steps')  # The LSTM and evaluation need a trained AE.
  for field in ('train.lstm_steps', 'train.profile_steps', 'eval.seed', 'data.split_seed'):
    _non_negative_int(config, field)
  for field in ('train.log_every', 'train.ckpt_every', 'train.keep_checkpoints',
                'eval.mig_samples', 'eval.test_videos', 'eval.future_frames'):
    _positive_int(config, field)
  if config.eval.future_frames > d.target_frames:
    _fail('eval.future_frames', config.eval.future_frames,
          f'at most data.target_frames={d.target_frames} (the frames each test video has '
          f'after the {d.input_frames} conditioning ones); raise data.target_frames to '
          f'score longer predictions')
  _non_negative_int(config, 'lstm.code_pool')
  if config.lstm.code_pool and d.pipeline == 'tfds':
    _fail('lstm.code_pool', config.lstm.code_pool,
          "0 for data.pipeline='tfds': such a run already trains the LSTM on the cached "
          'codes of its whole train split')
  if 0 < config.lstm.code_pool < config.batch_size:
    _fail('lstm.code_pool', config.lstm.code_pool,
          f'0 (encode every streamed batch) or at least one batch '
          f'(batch_size={config.batch_size}) of videos to encode once')
  if config.eval.test_seq:
    if d.name != 'moving_mnist' or d.channels != 1:
      _fail('eval.test_seq', config.eval.test_seq,
            "'' unless data.name='moving_mnist' with data.channels=1 (the standard test set "
            'is grayscale Moving MNIST)')
    from mipae_jax.data import moving_mnist
    frames = moving_mnist.load_test_seq(config.eval.test_seq).shape[0]
    if d.input_frames + config.eval.future_frames > frames:
      _fail('eval.future_frames', config.eval.future_frames,
            f'at most {frames - d.input_frames}: the test set has {frames} frames and '
            f'{d.input_frames} are context')
  if config.eval.mig_samples < 100:
    _fail('eval.mig_samples', config.eval.mig_samples, 'at least 100 (the paper uses 100,000)')
  if config.eval.mig_estimator not in MIG_ESTIMATORS:
    _fail('eval.mig_estimator', config.eval.mig_estimator, f'one of {MIG_ESTIMATORS}')
  _non_negative_int(config, 'eval.analogy_videos')
  if config.eval.analogy_videos == 1:
    _fail('eval.analogy_videos', 1, '0 (off) or at least 2: each video is drawn with '
          "another's poses")
  if config.eval.analogy_videos and d.name == 'mpi3d':
    _fail('eval.analogy_videos', config.eval.analogy_videos,
          "0 for data.name='mpi3d': the analogy classifier reads objects with a shape label "
          'and a pixel position, which MPI3D frames lack')
  if config.eval.lpips not in LPIPS_NETS:
    _fail('eval.lpips', config.eval.lpips, f"one of {LPIPS_NETS} ('' = no LPIPS)")
  if config.eval.lpips and d.image_size < 32:
    _fail('eval.lpips', config.eval.lpips,
          f"'' for data.image_size={d.image_size}: LPIPS's networks need frames of at "
          'least 32 pixels')
  _non_negative_int(config, 'eval.fvd_videos')
  if config.eval.fvd_videos == 1:
    _fail('eval.fvd_videos', 1, '0 (off) or at least 2: the distance compares covariances')
  clip = d.input_frames + config.eval.future_frames
  if config.eval.fvd_videos and clip < fvd.MIN_FRAMES:
    _fail('eval.fvd_videos', config.eval.fvd_videos,
          f'0 for clips of {d.input_frames} context + {config.eval.future_frames} predicted '
          f"= {clip} frames: FVD's I3D needs at least {fvd.MIN_FRAMES} (raise "
          'eval.future_frames, or data.input_frames)')
  if config.eval.fvd_resize not in fvd.RESIZES:
    _fail('eval.fvd_resize', config.eval.fvd_resize, f'one of {fvd.RESIZES}')
  if not isinstance(config.eval.paper_protocol, bool):
    _fail('eval.paper_protocol', config.eval.paper_protocol, 'True or False')
  for field in ('knn_content_mode', 'knn_pose_mode'):
    if config.eval[field] not in KNN_MODES:
      _fail(f'eval.{field}', config.eval[field], f'one of {KNN_MODES}')
