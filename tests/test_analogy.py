"""Analogy accuracy (mipae_jax/metrics/analogy.py): the classifier reads true frames, an
oracle that draws the true analogy scores the ceiling, blobs and a model that ignores the
content source score near chance, and the cached classifier is the trained one.

The tiny config (32 x 32 RGB, two sprites, each in its own channel) as it is; one
classifier, trained once for the module (400 steps of 32 frames, ~15 s of CPU), serves
every test.
"""

import dataclasses
import os

import jax
import numpy as np
import pytest

from mipae_jax import configs, data, errors, train
from mipae_jax.metrics import analogy

# What the module's classifier reaches on held-out true 32 x 32 frames (measured: content
# 0.825, shape 0.85, scale 0.96, centres 0.255 px off; the default config's classifier
# reads 64 x 64 frames 0.966 right). 18 (shape, scale) classes: chance is 1/18.
CEILING_CONTENT = 0.7
CEILING_SHAPE = 0.7
CEILING_SCALE = 0.85
CEILING_POSITION_PX = 0.5
CFG = analogy.ClassifierConfig(steps=400, batch_size=32, width=16, hidden=128,
                               heldout_frames=1000)
N_VIDEOS = 128
N_EVAL = 8  # Videos the (untrained) autoencoder draws analogies of.


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  config = configs.get('tiny')
  source = data.make_source(config.data)
  cache = str(tmp_path_factory.mktemp('analogy_cache'))
  classifier = analogy.load_or_train(config.data, cache, CFG)
  return config, source, classifier, cache


@pytest.fixture(scope='module')
def videos(setup):
  """Test videos from their drawing parameters, a derangement, and the oracle's frames:
  each pose video re-rendered with its content source's content factors."""
  _, source, _, _ = setup
  params = jax.jit(source.draw_params, static_argnums=(1, 2))(jax.random.key(7), N_VIDEOS,
                                                               'test')
  render = jax.jit(source.render)
  vids, factors = jax.device_get(render(params))
  pose_of = analogy.derangement(N_VIDEOS, 3)
  content_keys = ('shape', 'scale', 'orient', 'front')  # front is a content factor in RGB.
  mixed = {k: v if k in content_keys else v[pose_of] for k, v in params.items()}
  oracle, oracle_factors = jax.device_get(render(mixed))
  np.testing.assert_array_equal(oracle_factors['pose'], factors['pose'][pose_of])
  np.testing.assert_array_equal(oracle_factors['content'], factors['content'])
  return np.asarray(vids), factors, pose_of, np.asarray(oracle)


def fixed(frames):
  """A `draw` that returns given frames (after checking what it was asked to draw; one
  chunk of all pairs)."""
  def draw(content_frames, pose_videos):
    assert content_frames.shape == (len(frames),) + frames.shape[2:]
    assert pose_videos.shape == frames.shape
    return frames
  return draw


def test_classifier_reads_true_frames(setup):
  _, _, classifier, _ = setup
  c = classifier.ceiling
  assert c['n_frames'] == CFG.heldout_frames and c['n_objects'] == 2
  assert c['content_accuracy'] >= CEILING_CONTENT, c
  assert c['shape_accuracy'] >= CEILING_SHAPE, c
  assert c['scale_accuracy'] >= CEILING_SCALE, c
  assert c['position_error_px'] <= CEILING_POSITION_PX, c
  assert classifier.layout.per_channel and classifier.layout.crop == 12


def test_oracle_analogies_score_the_ceiling(setup, videos):
  _, _, classifier, _ = setup
  vids, factors, pose_of, oracle = videos
  out = analogy.analogy_accuracy(classifier, fixed(oracle), vids, factors, pose_of,
                                 chunk=N_VIDEOS)
  assert out['n_pairs'] == N_VIDEOS and out['n_frames'] == N_VIDEOS * vids.shape[1]
  assert abs(out['content_accuracy'] - classifier.ceiling['content_accuracy']) < 0.1, out
  assert out['position_error_px'] < CEILING_POSITION_PX, out


def test_blobs_score_near_shape_chance(setup, videos):
  _, _, classifier, _ = setup
  vids, factors, pose_of, oracle = videos
  out = analogy.analogy_accuracy(classifier, fixed(analogy.blobs(oracle)), vids, factors,
                                 pose_of, chunk=N_VIDEOS)
  chance = analogy.chance(classifier.layout, factors['content'][:, 0])
  # The shape is gone (chance 1/3); area and place are kept, so scale and position stay.
  assert out['shape_accuracy'] < chance['shape_accuracy'] + 0.2, (out, chance)
  # Measured: shape 0.395 (chance 0.33), scale 0.69, content 0.374 (the ceiling's: 0.825).
  assert out['content_accuracy'] < classifier.ceiling['content_accuracy'] - 0.3, out
  assert out['position_error_px'] < 1.0, out
  # The level the classifier stored for its own held-out frames agrees.
  assert classifier.blob['shape_accuracy'] < chance['shape_accuracy'] + 0.2, classifier.blob


def test_drawing_the_pose_video_scores_chance(setup, videos):
  """A model that ignores the content source (draws video j itself) is right where the
  two videos' sprites happen to share shape and scale: chance, at the right place."""
  _, _, classifier, _ = setup
  vids, factors, pose_of, _ = videos
  out = analogy.analogy_accuracy(classifier, lambda c, p: p, vids, factors, pose_of)
  # Drawn and scored a chunk of pairs at a time: the same numbers in any chunks.
  assert analogy.analogy_accuracy(classifier, lambda c, p: p, vids, factors, pose_of,
                                  chunk=30) == out
  chance = analogy.chance(classifier.layout, factors['content'][:, 0])
  assert abs(chance['content_accuracy'] - 1 / 18) < 0.03, chance
  assert out['content_accuracy'] < chance['content_accuracy'] + 0.08, (out, chance)
  assert out['position_error_px'] < CEILING_POSITION_PX, out


def test_cached_classifier_is_the_trained_one(setup, videos):
  config, _, classifier, cache = setup
  path = analogy.cache_path(cache, config.data, CFG)
  assert os.path.exists(path)
  again = analogy.load_or_train(config.data, cache, CFG)
  assert again.seconds == 0.0  # Read, not trained.
  assert again.ceiling == classifier.ceiling and again.blob == classifier.blob
  frames = videos[0][:8, 0]
  for a, b in zip(classifier.predict(frames), again.predict(frames), strict=True):
    np.testing.assert_array_equal(a, b)
  # The key follows what a frame looks like, not the video length.
  other = config.data.copy_and_resolve_references()
  other.target_frames += 3
  assert analogy.cache_key(other, CFG) == analogy.cache_key(config.data, CFG)
  other.image_size = 64
  assert analogy.cache_key(other, CFG) != analogy.cache_key(config.data, CFG)
  assert analogy.cache_key(config.data, dataclasses.replace(CFG, steps=1)) != \
      analogy.cache_key(config.data, CFG)


def test_a_damaged_or_foreign_cache_file_is_not_used(setup, tmp_path):
  config, _, classifier, _ = setup
  bad = tmp_path / 'bad.npz'
  bad.write_bytes(b'not an npz')
  assert analogy.load(str(bad), config.data, CFG) is None
  good = tmp_path / 'good.npz'
  analogy.save(classifier, str(good))
  assert analogy.load(str(good), config.data, dataclasses.replace(CFG, width=8)) is None


@pytest.fixture(scope='module')
def model(setup):
  config, _, _, _ = setup
  params, stats, _ = jax.jit(lambda k: train.init_autoencoder_variables(config, k))(
      jax.random.key(0))
  return {'params': params, 'batch_stats': stats}


def test_evaluate_analogies_gives_plain_floats(setup, model):
  config, source, classifier, cache = setup
  out = analogy.evaluate_analogies(config, model, source, n=N_EVAL, seed=0,
                                   cache_dir=cache, cfg=CFG)
  assert out.pop('protocol').startswith(analogy.PROTOCOL)
  assert all(type(v) is float for v in out.values()), out
  for name in ('content_accuracy', 'shape_accuracy', 'scale_accuracy', 'position_error_px'):
    assert out[f'ceiling_{name}'] == classifier.ceiling[name]
    assert name in out and (name == 'position_error_px' or f'chance_{name}' in out)
  assert out['n_pairs'] == N_EVAL and out['classifier_seconds'] == 0.0
  # An untrained decoder draws no sprites: below the blobs (measured 0.05, 9 px off).
  assert out['content_accuracy'] < out['blob_content_accuracy'], out
  assert out['position_error_px'] > 2.0, out


def test_grayscale_objects_are_read_as_slots():
  """Several objects in one channel: K slots from the whole frame, matched by place,
  content as a multiset (untrained: this checks the plumbing, not the accuracy)."""
  config = configs.get('tiny')
  config.data.channels = 1
  source = data.make_source(config.data)
  cfg = dataclasses.replace(CFG, steps=0, heldout_frames=4)
  classifier = analogy.load_or_train(config.data, None, cfg)
  assert not classifier.layout.per_channel
  frames, content, pose = source.sample_static(0, 4)
  out = analogy.score(classifier, frames, content, pose)
  assert 0 <= out['content_accuracy'] <= 1 and out['position_error_px'] >= 0


def test_slot_matching():
  true = np.array([[[0.0, 0.0], [10.0, 10.0]]])
  pred = np.array([[[10.0, 9.0], [1.0, 0.0]]])
  np.testing.assert_array_equal(analogy._best_permutation(pred, true), [[1, 0]])
  np.testing.assert_array_equal(
      analogy._multiset_hits(np.array([[3, 5], [3, 3], [1, 2]]),
                             np.array([[5, 3], [3, 4], [2, 2]])), [2, 1, 1])


def test_derangement_and_chance():
  pose_of = analogy.derangement(50, seed=1)
  assert sorted(pose_of) == list(range(50)) and np.all(pose_of != np.arange(50))
  source = data.make_source(configs.get('tiny').data)
  layout = analogy.layout_of(source)
  # Every object of every video with its own (shape, scale): no two share one.
  content = np.zeros((6, len(source.content_factor_names)), np.int64)
  (s0, c0), (s1, c1) = layout.content_columns
  content[:, s0], content[:, c0] = 0, np.arange(6)
  content[:, s1], content[:, c1] = 1, np.arange(6)
  assert analogy.chance(layout, content) == {
      'content_accuracy': 0.0, 'shape_accuracy': 5 / 11, 'scale_accuracy': 1 / 11}


def test_datasets_without_objects_are_refused():
  class Photos:
    content_factor_names = ('colour', 'shape')
    pose_factor_names = ('height', 'angle')
    channels, image_size = 3, 64
  with pytest.raises(errors.ConfigError, match='MPI3D'):
    analogy.layout_of(Photos())


def test_the_report_gives_the_analogy_accuracy_beside_its_levels():
  from mipae_jax import evaluate

  a = {'n_pairs': 10, 'n_frames': 40, 'protocol': 'P.', 'content_accuracy': 0.41,
       'shape_accuracy': 0.5, 'scale_accuracy': 0.8, 'frame_accuracy': 0.4,
       'position_error_px': 1.25, 'ceiling_content_accuracy': 0.97,
       'ceiling_shape_accuracy': 0.98, 'ceiling_scale_accuracy': 0.99,
       'ceiling_position_error_px': 0.2, 'blob_content_accuracy': 0.4,
       'blob_shape_accuracy': 0.43, 'blob_scale_accuracy': 0.69,
       'blob_position_error_px': 0.3, 'chance_content_accuracy': 0.06,
       'chance_shape_accuracy': 0.33, 'chance_scale_accuracy': 0.17}
  text = '\n'.join(evaluate._analogy_lines(a))
  assert '| | content | scale | shape | position error (px) |' in text
  assert '| this model | 0.410 | 0.800 | 0.500 | 1.25 |' in text
  assert '| ceiling (true frames) | 0.970 | 0.990 | 0.980 | 0.20 |' in text
  assert '| chance | 0.060 | 0.170 | 0.330 |  |' in text
  assert evaluate._analogy_lines(None) == []
