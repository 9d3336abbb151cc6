"""mipae_jax against the PyTorch reference, side by side in one process.

  python -m benchmarks.run            # batch 100, 64x64x3, 15 frames; ~10 min on 2 cores
  python -m benchmarks.run --quick    # fewer repeats, no batch 200; < 3 min

Measures (a) the autoencoder iteration (critic step + model step), and the same iteration
under each kernel set of `config.model.kernels` ('xla' against 'cpu'), (b) the LSTM iteration,
(c) data: sequences/s of the on-device Moving dSprites stream vs the per-sample numpy loop
(the published Dataset + DataLoader way), (d) data + AE step end to end, (e) a prepared
TFDS dataset read through grain (`config.data.pipeline='tfds'`) at 1 and 2 reader
threads against the stream, alone and feeding the AE iteration. Implementations
alternate run by run and the medians are compared, because the machine may be shared; each
ratio line is followed by the range of the per-round ratios (both sides timed back to back
in one round), which shows how much the machine's load moved it.
Also: XLA cost-analysis FLOPs (and torch's FlopCounterMode for the reference), achieved
GFLOP/s, compile time, memory, and the AE step time at several batch sizes.

Threads: torch uses `--threads` (default 2) intra-op threads; XLA:CPU runs its Eigen pool
on every core it sees (set `--threads` to the core count for a fair match).

Host memory: both sides run with glibc malloc set to reuse freed memory and to use huge
pages (`--malloc tuned`, the default: run as a module, it restarts itself with
`TUNED_MALLOC`), as a tuned PyTorch CPU setup would with jemalloc or tcmalloc; `--malloc
default` keeps glibc's settings, under which every buffer over 32 MB is page-faulted in
afresh on each call.

On a GPU, PyTorch runs on the same card (`--torch_device`, default: CUDA whenever JAX is
on a GPU) and each timed call waits for the card. `--dtype bfloat16` computes in bfloat16
on both sides with float32 parameters (`config.model.dtype` for mipae_jax, `torch.autocast`
for the reference). With a known card (or `--peak_tflops`) it also prints the fraction of
the card's dense peak that each side reaches.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import jax
import numpy as np

from benchmarks.common import (
  JaxAE,
  JaxLSTM,
  JaxLSTMCodes,
  bench_config,
  medians,
  paired_ratios,
  round_times,
  sample_videos,
  torch_device,
  xla_flops,
)
from mipae_jax import data, models

# Dense peak TFLOP/s from NVIDIA's datasheets: float32 on CUDA cores, TF32 and bfloat16 on
# tensor cores. Matched against `device_kind` in this order (the PCIe H100 is slower).
PEAK_TFLOPS = (
    ('H100 PCIe', {'float32': 51.2, 'tf32': 378.0, 'bfloat16': 756.0}),
    ('H100', {'float32': 66.9, 'tf32': 494.7, 'bfloat16': 989.4}),
    ('H200', {'float32': 66.9, 'tf32': 494.7, 'bfloat16': 989.4}),
    ('A100', {'float32': 19.5, 'tf32': 156.0, 'bfloat16': 312.0}),
)


# glibc malloc settings that reuse freed memory (no mmap per large buffer, no trimming) and
# back large allocations with transparent huge pages. Under glibc's defaults every buffer
# over 32 MB is a fresh mmap, page-faulted in 4 KiB at a time on each call. Measured on
# the 2-core CPU, defaults -> these: the reference's LSTM iteration 1941-1955 -> 1520-1712
# ms (it took 396k-412k page faults per step), mipae_jax's AE iteration 1710-1846 ->
# 1618-1747 ms (106k faults -> 1-2k), the on-device data stream 54 -> 19-24 ms per batch,
# the per-sample numpy loop 166-198 -> 161-167 ms (BENCHMARKS.md, "Host memory"). Each
# side runs at least as fast with them on every line, so they are the default of the
# comparison (`--malloc default` keeps glibc's settings). `glibc.malloc.arena_max=1` is
# left out: it slowed the loop to 249 ms.
TUNED_MALLOC = ('glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:'
                'glibc.malloc.trim_threshold=68719476736')


def exec_with_allocator(argv: list[str], malloc: str) -> None:
  """Restarts `python -m benchmarks.run argv` with `TUNED_MALLOC` if `malloc` (the parsed
  `--malloc`) is 'tuned' and the process did not start with them; glibc reads its
  tunables only at start-up. A `GLIBC_TUNABLES` the user set is left alone."""
  if malloc != 'tuned' or 'GLIBC_TUNABLES' in os.environ or platform.libc_ver()[0] != 'glibc':
    return
  sys.stdout.flush()
  os.execve(sys.executable, [sys.executable, '-m', 'benchmarks.run', *argv],
            {**os.environ, 'GLIBC_TUNABLES': TUNED_MALLOC})


def _allocator() -> str:
  tunables = os.environ.get('GLIBC_TUNABLES')
  if platform.libc_ver()[0] != 'glibc':
    return f'{platform.libc_ver()[0] or "system"} malloc'
  if tunables == TUNED_MALLOC:
    return 'glibc malloc, tuned (--malloc tuned: TUNED_MALLOC)'
  return f'glibc malloc, GLIBC_TUNABLES={tunables!r}' if tunables else 'glibc malloc, defaults'


def peak_tflops(device_kind: str, dtype: str) -> tuple[float, str] | None:
  """(dense peak TFLOP/s, which peak) of a known card for `dtype`; None if unknown.
  float32 convolutions run on TF32 tensor cores by default in both XLA and cuDNN, so
  float32 is measured against the TF32 peak."""
  for name, peaks in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      key = 'tf32' if dtype == 'float32' else dtype
      return peaks[key], f'{name} {key}'
  return None


def _device_memory() -> str:
  """Peak accelerator memory of JAX's first device, where the backend reports it."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return 'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'


def _memory(compiled) -> str:
  try:
    m = compiled.memory_analysis()
    mib = 2 ** 20
    return (f'args {m.argument_size_in_bytes / mib:.0f} MiB, temps '
            f'{m.temp_size_in_bytes / mib:.0f} MiB, outputs {m.output_size_in_bytes / mib:.0f} MiB')
  except Exception as e:  # Not every backend reports it.
    return f'n/a ({e})'


def _torch_flops(fn) -> float:
  from torch.utils.flop_counter import FlopCounterMode
  with FlopCounterMode(display=False) as counter:
    fn()
  return float(counter.get_total_flops())


def both_batches(source, b: int):
  """Jitted `key -> {'video', 'critic_video'}`: an AE iteration's two batches of `b`
  sampled on device from `fold_in(key, 0)` and `fold_in(key, 1)`."""
  return jax.jit(lambda k: {'video': source.sample_batch(jax.random.fold_in(k, 0), b)[0],
                            'critic_video': source.sample_batch(jax.random.fold_in(k, 1),
                                                                b)[0]})


def _advance(at: dict, w: int) -> int:
  """The step reader `w` is at, counted one further."""
  at[w] += 1
  return at[w] - 1


def main(argv=None, restart: bool = False):
  """Runs the benchmark; `restart` (the module entry point) lets `--malloc tuned` restart
  the process with `TUNED_MALLOC` first (`exec_with_allocator`)."""
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--batch', type=int, default=100)
  parser.add_argument('--threads', type=int, default=2, help='torch intra-op threads')
  parser.add_argument('--reps', type=int, default=0, help='timed rounds (default 5 / 7)')
  parser.add_argument('--no_torch_channels_last', action='store_true')
  parser.add_argument('--skip', default='',
                      help='comma list of: ae,kernels,lstm,data,e2e,tfds,sweep')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='compute dtype of both sides; parameters stay float32')
  parser.add_argument('--torch_device', default='auto',
                      help="torch device: 'auto' (CUDA when JAX is on a GPU), 'cpu', 'cuda'")
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='dense peak of the card for --dtype (default: known cards only)')
  parser.add_argument('--config', default='mipae_jax.configs.default',
                      help='config module (the default is the benchmarked setting)')
  parser.add_argument('--malloc', default='tuned', choices=('tuned', 'default'),
                      help="host allocator settings for both sides: 'tuned' reuses freed "
                      'memory and uses huge pages (TUNED_MALLOC; applied by restarting '
                      "when run as a module), 'default' keeps glibc's settings")
  args = parser.parse_args(argv)
  if restart:
    exec_with_allocator(sys.argv[1:] if argv is None else list(argv), args.malloc)
  import torch

  from benchmarks import torch_reference as ref

  torch.set_num_threads(args.threads)
  dev = torch_device(torch, args.torch_device)
  reps = args.reps or (3 if args.quick else 7)
  skip = set(filter(None, args.skip.split(',')))
  cl = not args.no_torch_channels_last
  b = args.batch
  jae = tae = ae_at_batch = None
  config = bench_config(b, args.config, args.dtype)
  d = config.data
  t_frames = d.input_frames + d.target_frames
  kind = jax.devices()[0].device_kind
  peak = ((args.peak_tflops, f'given {args.dtype}') if args.peak_tflops
          else peak_tflops(kind, args.dtype))
  print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores '
        f'visible; jax {jax.__version__} on {kind} '
        f'(XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}); torch {torch.__version__} on '
        f'{dev}, {torch.get_num_threads()} threads, channels_last={cl}')
  print(f'host allocator (both sides): {_allocator()}')
  if dev.startswith('cuda'):
    print(f'torch: {torch.cuda.get_device_name(dev)}; TF32 for float32 convolutions '
          f'{torch.backends.cudnn.allow_tf32}, for matmuls '
          f'{torch.backends.cuda.matmul.allow_tf32}')
  print(f'batch {b}, {t_frames} frames of {d.image_size}x{d.image_size}x{d.channels}, '
        f'{args.dtype} compute, {reps} alternating rounds, medians')
  source = data.make_source(d)
  video = sample_videos(source, jax.random.key(10), b)
  critic_video = sample_videos(source, jax.random.key(11), b)
  rows = []

  def synced(fn):
    """`fn` that returns once torch's queued kernels are done (CUDA is asynchronous)."""
    def call():
      fn()
      ref.synchronize(dev)
    return call

  def trainer(cls, c):
    return cls(c, channels_last=cl, device=dev, dtype=args.dtype)

  def rates(name, fl, s_jax, tfl, s_torch, compiled, compile_s):
    of_peak = ''
    if peak:
      of_peak = (f' ({fl / s_jax / 1e12 / peak[0]:.1%} of the {peak[1]} peak, torch '
                 f'{tfl / s_torch / 1e12 / peak[0]:.1%})')
    print(f'{name}: XLA {fl / 1e9:.1f} GFLOP/iteration -> {fl / s_jax / 1e9:.0f} GFLOP/s; '
          f'torch {tfl / 1e9:.1f} GFLOP -> {tfl / s_torch / 1e9:.0f} GFLOP/s{of_peak}; '
          f'compile {compile_s:.1f} s; memory {_memory(compiled)}')

  def spread(name, ref_times, new_times):
    mid, lo, hi = paired_ratios(ref_times, new_times)
    print(f'{name}: per-round ratios {lo:.2f}-{hi:.2f} (median {mid:.2f}, '
          f'{len(ref_times)} rounds)')
    return lo, hi

  def report(name, times, unit='steps/s'):
    """Prints and records the medians and their ratio; returns the medians."""
    med = medians(times)
    s_jax, s_torch = med['jax'], med['torch']
    ratio = s_torch / s_jax
    print(f'{name}: mipae_jax {1 / s_jax:.3f} {unit} ({s_jax * 1e3:.0f} ms) | torch '
          f'{1 / s_torch:.3f} {unit} ({s_torch * 1e3:.0f} ms)')
    print(f'ratio {name} jax/torch: {ratio:.2f}')
    rows.append((name, s_jax, s_torch, ratio, *spread(name, times['torch'], times['jax'])))
    return s_jax, s_torch

  if 'ae' not in skip:
    jae = JaxAE(config, video, critic_video)
    tae = trainer(ref.AutoencoderTrainer, config)
    tv, tcv = ref.video_to_torch(video, cl, dev), ref.video_to_torch(critic_video, cl, dev)
    ae_at_batch = report('ae_iteration', round_times(
        {'jax': jae, 'torch': synced(lambda: tae.step(tcv, tv))}, reps))
    rates('ae_iteration', xla_flops(jae.compiled), ae_at_batch[0],
          _torch_flops(lambda: tae.step(tcv, tv)), ae_at_batch[1], jae.compiled,
          jae.compile_s)

  if 'kernels' not in skip:
    # The two kernel sets of config.model.kernels, same parameters and batch, alternating
    # round by round: the speed ratio says which set should be 'auto' on this backend.
    jks = {}
    for choice in ('xla', 'cpu'):
      ck = bench_config(b, args.config, args.dtype)
      ck.model.kernels = choice
      jks[choice] = JaxAE(ck, video, critic_video)
    times = round_times(jks, reps)
    med = medians(times)
    print(f'ae_iteration by kernel set: xla {med["xla"] * 1e3:.0f} ms (compile '
          f'{jks["xla"].compile_s:.1f} s) | cpu {med["cpu"] * 1e3:.0f} ms (compile '
          f'{jks["cpu"].compile_s:.1f} s); auto is {models.kernels_for("auto").name} here')
    print(f'ratio ae_kernels cpu/xla: {med["xla"] / med["cpu"]:.2f}')
    spread('ae_kernels', times['xla'], times['cpu'])
    del jks

  if 'lstm' not in skip:
    jl = JaxLSTM(config, video)
    tl = trainer(ref.LSTMTrainer, config)
    tv = ref.video_to_torch(video, cl, dev)
    s_jax, s_torch = report('lstm_iteration', round_times(
        {'jax': jl, 'torch': synced(lambda: tl.step(tv))}, reps))
    rates('lstm_iteration', jl.flops(config), s_jax, _torch_flops(lambda: tl.step(tv)),
          s_torch, jl.compiled, jl.compile_s)
    # config.lstm.code_pool: the same update on codes encoded once, side by side with the
    # video path and the reference.
    jc = JaxLSTMCodes(config, video)
    times = round_times({'video': jl, 'codes': jc, 'torch': synced(lambda: tl.step(tv))}, reps)
    med = medians(times)
    print(f'lstm_iteration on cached codes: {med["codes"] * 1e3:.1f} ms | video path '
          f'{med["video"] * 1e3:.0f} ms | torch {med["torch"] * 1e3:.0f} ms; 1,000 '
          f'iterations: {med["codes"] * 1e3:.1f} s | {med["video"] * 1e3:.0f} s | '
          f'{med["torch"] * 1e3:.0f} s (plus one encoding pass of the pool)')
    print(f'ratio lstm_codes video/codes: {med["video"] / med["codes"]:.2f}')
    spread('lstm_codes', times['video'], times['codes'])
    print(f'ratio lstm_codes_vs_torch torch/codes: {med["torch"] / med["codes"]:.2f}')
    spread('lstm_codes_vs_torch', times['torch'], times['codes'])
    del jl, tl, jc

  if 'data' not in skip:
    sample = jax.jit(lambda k: source.sample_batch(k, b, 'train')[0])
    keys = iter(jax.random.split(jax.random.key(3), 1000))
    rng = np.random.default_rng(0)

    def device():
      jax.block_until_ready(sample(next(keys)))

    def loop():  # Per-sample __getitem__, then collate, as the published DataLoader.
      np.stack([source.sample_batch_numpy(rng, 1)[0][0] for _ in range(b)])

    times = round_times({'device': device, 'loop': loop}, max(3, reps // 2))
    med = medians(times)
    rate_d, rate_l = b / med['device'], b / med['loop']
    print(f'data: on-device stream {rate_d:.0f} seq/s | per-sample loop {rate_l:.0f} seq/s')
    print(f'ratio data_stream device/loop: {rate_d / rate_l:.1f}')
    rows.append(('data_batch', med['device'], med['loop'], med['loop'] / med['device'],
                 *spread('data_stream', times['loop'], times['device'])))

  if 'e2e' not in skip:
    # mipae_jax: on-device sampling of both batches + step. Reference: the per-sample
    # loop for both batches (synchronous here: no spare cores for loader workers), a
    # host->tensor transpose view, and the torch step.
    if 'ae' in skip:
      jae = JaxAE(config, video, critic_video)
      tae = trainer(ref.AutoencoderTrainer, config)
    sample2 = both_batches(source, b)
    keys = iter(jax.random.split(jax.random.key(4), 1000))
    rng = np.random.default_rng(1)

    def jax_e2e():
      jae(sample2(next(keys)))

    def torch_e2e():
      vids = [np.stack([source.sample_batch_numpy(rng, 1)[0][0] for _ in range(b)])
              for _ in range(2)]
      tae.step(ref.video_to_torch(vids[1], cl, dev), ref.video_to_torch(vids[0], cl, dev))
      ref.synchronize(dev)

    # As many rounds as the steps alone: with 3, one run gave per-round ratios 0.92-1.34.
    report('end_to_end', round_times({'jax': jax_e2e, 'torch': torch_e2e}, reps))

  if 'tfds' not in skip:
    # config.data.pipeline='tfds': a small prepared dataset (2 AE steps' worth of videos,
    # at least 16), read through grain at 1 and 2 reader threads, against the on-device
    # stream; then the AE iteration fed by each (does the reader keep up?).
    import tempfile

    from mipae_jax.data import prepare as prepare_lib
    from mipae_jax.data import tfds_source
    tmp = tempfile.mkdtemp(prefix='mipae_bench_tfds_')
    n_videos = max(16, 4 * b)
    t0 = time.perf_counter()
    tc = config.copy_and_resolve_references()
    tc.data.tfds_name = prepare_lib.prepare(config.data, tmp, n_videos, 2)
    tc.data.pipeline, tc.data.data_dir = 'tfds', tmp
    print(f'tfds: prepared {n_videos} videos in {time.perf_counter() - t0:.0f} s')
    tsrc = tfds_source.TfdsVideos(tc.data)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('batch',))
    steps = 10 ** 6
    readers = {w: tfds_source.TrainBatches(tc, tsrc.sources['train'], mesh, 'ae', steps,
                                           num_threads=w) for w in (1, 2)}
    at = {w: 0 for w in readers}

    def read(w):
      return lambda: jax.block_until_ready(readers[w].for_step(_advance(at, w)))

    sample2 = both_batches(source, b)
    keys = iter(jax.random.split(jax.random.key(5), 10 ** 4))
    stream = lambda: jax.block_until_ready(sample2(next(keys)))
    times = round_times({'stream': stream, 'tfds_1': read(1), 'tfds_2': read(2)}, reps)
    med = medians(times)
    rates_ = {k: 2 * b / v for k, v in med.items()}
    print(f'data per AE step (2 batches): on-device stream {rates_["stream"]:.0f} seq/s | '
          f'tfds, 1 reader thread {rates_["tfds_1"]:.0f} seq/s | 2 threads '
          f'{rates_["tfds_2"]:.0f} seq/s')
    print(f'ratio tfds_read tfds2/stream: {med["stream"] / med["tfds_2"]:.2f}')
    spread('tfds_read', times['stream'], times['tfds_2'])
    if jae is None:
      jae = JaxAE(config, video, critic_video)
    fed = {'stream': lambda: jae(sample2(next(keys))),
           'tfds_1': lambda: jae(readers[1].for_step(_advance(at, 1))),
           'tfds_2': lambda: jae(readers[2].for_step(_advance(at, 2))),
           'step_alone': jae}
    times = round_times(fed, reps)
    med = medians(times)
    print(f'ae_iteration fed by: stream {med["stream"] * 1e3:.0f} ms | tfds 1 thread '
          f'{med["tfds_1"] * 1e3:.0f} ms | 2 threads {med["tfds_2"] * 1e3:.0f} ms | the step '
          f'alone (one fixed batch) {med["step_alone"] * 1e3:.0f} ms')
    print(f'ratio tfds_e2e tfds2/stream: {med["stream"] / med["tfds_2"]:.2f}')
    spread('tfds_e2e', times['stream'], times['tfds_2'])
    del readers

  if 'sweep' not in skip:
    sizes = (25, 50, 100) if args.quick else (25, 50, 100, 200)
    for bs in sizes:
      if bs == b and 'ae' not in skip:  # Measured above.
        sj, st = ae_at_batch
        print(f'batch {bs}: ae_iteration mipae_jax {sj * 1e3:.0f} ms | torch {st * 1e3:.0f} ms '
              f'| ratio jax/torch {st / sj:.2f}')
        continue
      c = bench_config(bs, args.config, args.dtype)
      v, cv = video[:bs], critic_video[:bs]
      if bs > b:
        v = sample_videos(source, jax.random.key(20), bs)
        cv = sample_videos(source, jax.random.key(21), bs)
      jae = JaxAE(c, v, cv)
      tae = trainer(ref.AutoencoderTrainer, c)
      tv, tcv = ref.video_to_torch(v, cl, dev), ref.video_to_torch(cv, cl, dev)
      times = round_times(
          {'jax': jae, 'torch': synced(lambda t=tae, a=tcv, v=tv: t.step(a, v))},
          2 if args.quick else 3)
      med = medians(times)
      _, lo, hi = paired_ratios(times['torch'], times['jax'])
      print(f'batch {bs}: ae_iteration mipae_jax {med["jax"] * 1e3:.0f} ms (compile '
            f'{jae.compile_s:.0f} s) | torch {med["torch"] * 1e3:.0f} ms | ratio jax/torch '
            f'{med["torch"] / med["jax"]:.2f} (per round {lo:.2f}-{hi:.2f})')
      del jae, tae

  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f'peak resident memory of this process (both frameworks): {rss:.2f} GiB')
  if dev.startswith('cuda'):
    print(f'peak device memory: mipae_jax {_device_memory()} | torch '
          f'{torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB (allocated)')
  print('\n| measurement | mipae_jax | torch reference | ratio jax/torch (speed) | '
        'per-round ratios |')
  print('|---|---|---|---|---|')
  for name, sj, st, r, lo, hi in rows:
    print(f'| {name} | {sj * 1e3:.0f} ms | {st * 1e3:.0f} ms | {r:.2f} | {lo:.2f}-{hi:.2f} |')


if __name__ == '__main__':
  main(restart=True)
