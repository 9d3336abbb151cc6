"""The side-by-side benchmark harness (`benchmarks/run.py`) and the reference's devices and
dtypes. Timings are never asserted (they live in BENCHMARKS.md); these tests check that the
harness runs, prints every ratio line it promises, and compares like with like."""

import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch is not installed (pip install -e .[bench] pins torch==2.13.0); '
    'the benchmark compares against it.')

from benchmarks import common, run  # noqa: E402
from benchmarks import torch_reference as ref  # noqa: E402
from mipae_jax.configs import tiny  # noqa: E402


def test_peak_table_matches_cards_and_uses_tf32_for_float32():
  assert run.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == (989.4, 'H100 bfloat16')
  assert run.peak_tflops('NVIDIA H100 PCIe', 'bfloat16') == (756.0, 'H100 PCIe bfloat16')
  assert run.peak_tflops('NVIDIA H200', 'float32') == (494.7, 'H200 tf32')
  assert run.peak_tflops('cpu', 'float32') is None


def test_torch_follows_jax_onto_the_accelerator(monkeypatch):
  assert common.torch_device(torch, 'auto') == jax.default_backend().replace('gpu', 'cuda')
  assert common.torch_device(torch, 'cpu') == 'cpu'
  monkeypatch.setattr(common.jax, 'default_backend', lambda: 'gpu')
  monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
  with pytest.raises(SystemExit, match='--torch_device cpu'):
    common.torch_device(torch, 'auto')


def _tiny_videos(batch=4):
  c = tiny.get_config()
  t = c.data.input_frames + c.data.target_frames
  rng = np.random.default_rng(0)
  v = rng.random((batch, t, c.data.image_size, c.data.image_size, 3), np.float32)
  return c, ref.video_to_torch(v), ref.video_to_torch(v[::-1].copy())


def test_reference_bfloat16_computes_in_bfloat16_with_float32_parameters():
  c, video, critic_video = _tiny_videos()
  losses = {}
  for dtype in ('float32', 'bfloat16'):
    tr = ref.AutoencoderTrainer(c, seed=0, dtype=dtype)  # Same seed: same weights, indices.
    losses[dtype] = float(tr.step(critic_video, video))
    assert all(p.dtype == torch.float32 for p in tr.model_params)
    assert all(p.dtype == torch.float32 for p in tr.critic.parameters())
  assert np.isfinite(losses['bfloat16'])
  assert losses['bfloat16'] != losses['float32']  # bfloat16 rounding shows...
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=0.05)  # ...slightly.
  with pytest.raises(ValueError, match="'float32' or 'bfloat16'"):
    ref.AutoencoderTrainer(c, dtype='float16')


def test_benchmark_prints_every_ratio(capsys):
  run.main(['--config', 'mipae_jax.configs.tiny', '--batch', '2', '--reps', '1',
            '--skip', 'sweep', '--peak_tflops', '1'])
  out = capsys.readouterr().out
  ratios = dict(re.findall(r'^ratio (\w+) [\w/]+: ([\d.]+)$', out, re.M))
  assert set(ratios) == {'ae_iteration', 'ae_kernels', 'lstm_iteration', 'lstm_codes',
                         'lstm_codes_vs_torch', 'data_stream', 'end_to_end', 'tfds_read',
                         'tfds_e2e'}
  assert all(float(r) > 0 for r in ratios.values())
  assert re.search(r'ae_iteration: XLA [\d.]+ GFLOP/iteration .* of the given float32 peak', out)
  table = [line for line in out.splitlines() if line.startswith('| ') and 'ms |' in line]
  assert [row.split(' | ')[0][2:] for row in table] == [
      'ae_iteration', 'lstm_iteration', 'data_batch', 'end_to_end']
  spreads = dict(re.findall(r'^(\w+): per-round ratios ([\d.]+-[\d.]+) ', out, re.M))
  assert set(spreads) == set(ratios)
  for name, r in ratios.items():  # The ratio of medians lies within the rounds' ratios.
    lo, hi = map(float, spreads[name].split('-'))
    assert lo - 0.051 <= float(r) <= hi + 0.051, (name, lo, r, hi)
    if name in ('ae_iteration', 'lstm_iteration'):  # --reps 1: one round.
      assert lo == hi, (name, lo, hi)


def test_paired_ratios_bracket_the_ratio_of_medians():
  assert common.paired_ratios([2.0, 3.0, 9.0], [1.0, 2.0, 3.0]) == (2.0, 1.5, 3.0)
  rng = np.random.default_rng(0)
  for _ in range(200):
    ref_t, new_t = rng.uniform(0.5, 2.0, (2, int(rng.integers(1, 8))))
    mid, lo, hi = common.paired_ratios(list(ref_t), list(new_t))
    assert lo <= mid <= hi
    # Round i's ratio puts ref_i between lo * new_i and hi * new_i, so the medians too.
    assert lo - 1e-12 <= np.median(ref_t) / np.median(new_t) <= hi + 1e-12
  with pytest.raises(ValueError):
    common.paired_ratios([1.0, 2.0], [1.0])


def test_video_to_torch_shares_a_loader_batch_and_copies_only_read_only_arrays():
  v = np.random.default_rng(1).random((2, 3, 4, 4, 3), np.float32)  # [B, T, H, W, C]
  t = ref.video_to_torch(v)
  assert tuple(t.shape) == (3, 2, 3, 4, 4)  # [T, B, C, H, W]
  np.testing.assert_array_equal(t.permute(1, 0, 3, 4, 2).numpy(), v)
  assert t.data_ptr() == v.ctypes.data  # A loader's batch is not copied (timed end to end).
  ro = v.copy()
  ro.flags.writeable = False
  t_ro = ref.video_to_torch(ro)
  assert t_ro.data_ptr() != ro.ctypes.data
  np.testing.assert_array_equal(t_ro.permute(1, 0, 3, 4, 2).numpy(), v)
  t_nchw = ref.video_to_torch(v, channels_last=False)
  assert t_nchw.is_contiguous()
  np.testing.assert_array_equal(t_nchw.permute(1, 0, 3, 4, 2).numpy(), v)


def test_run_restarts_once_with_the_tuned_allocator(monkeypatch):
  calls = []
  monkeypatch.setattr(run.os, 'execve', lambda exe, args, env: calls.append((args, env)))
  monkeypatch.setattr(run.platform, 'libc_ver', lambda: ('glibc', '2.36'))
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  run.exec_with_allocator(['--quick'], 'tuned')
  ((args, env),) = calls
  assert args[1:] == ['-m', 'benchmarks.run', '--quick']
  assert env['GLIBC_TUNABLES'] == run.TUNED_MALLOC
  run.exec_with_allocator(['--malloc', 'default'], 'default')  # Asked to keep glibc's settings.
  monkeypatch.setenv('GLIBC_TUNABLES', run.TUNED_MALLOC)
  run.exec_with_allocator(['--quick'], 'tuned')  # Restarted already: no loop.
  assert 'tuned' in run._allocator()
  monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.malloc.arena_max=2')
  run.exec_with_allocator([], 'tuned')  # The user's own tunables are left alone.
  assert "GLIBC_TUNABLES='glibc.malloc.arena_max=2'" in run._allocator()
  assert len(calls) == 1


def test_run_main_restarts_before_any_work_when_run_as_a_module(monkeypatch):
  class Restarted(Exception):
    pass

  def execve(exe, args, env):
    raise Restarted(args, env['GLIBC_TUNABLES'])

  monkeypatch.setattr(run.os, 'execve', execve)
  monkeypatch.setattr(run.platform, 'libc_ver', lambda: ('glibc', '2.36'))
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  with pytest.raises(Restarted) as e:
    run.main(['--quick', '--skip', 'ae'], restart=True)
  assert e.value.args == ([run.sys.executable, '-m', 'benchmarks.run', '--quick', '--skip',
                           'ae'], run.TUNED_MALLOC)


def test_eval_floor_counts_flops_and_prints_the_floor(capsys):
  from benchmarks import eval_floor
  n = 64
  compiled = jax.jit(lambda x: x @ x).lower(np.zeros((n, n), np.float32)).compile()
  assert eval_floor.flops_of(compiled) == 2 * n ** 3  # XLA's count of a matrix product.
  eval_floor.main(['--config=tiny', '--frames=500', '--mig_frames=100000000'])
  out = capsys.readouterr().out
  flops = float(re.search(r'FLOPs per frame .*\| ([\d.]+) M \|', out).group(1))
  rate = float(re.search(r'best dense float32 rate .*\| ([\d.]+) GFLOP/s \|', out).group(1))
  floor = float(re.search(r'100,000,000 frames at that best rate \(floor\) \| ([\d.]+) s',
                          out).group(1))
  assert flops > 0 and rate > 0
  # The printed figures are rounded: FLOPs to 4 digits, the rate to 1 GFLOP/s.
  assert floor == pytest.approx(1e8 * flops * 1e6 / (rate * 1e9), rel=0.02)


def test_suite_compile_measures_both_emitters_and_reports_their_ratio():
  from benchmarks import suite_compile
  m = suite_compile.measure(reps=1, probe_frames=300)
  assert all(m[p] > 0 for p in suite_compile.PARTS)
  assert np.isfinite(list(m['metrics'].values())).all() and len(m['probe_ce']) == 2
  # Made-up rounds: the table's medians and paired ratios, and the sides' differences.
  side = lambda t, d: [{'step_compile_s': t, 'step_run_s': 1.0, 'probe_fit_s': 2 * t,
                        'metrics': {'loss': 1.0 + d}, 'probe_ce': [0.5, 0.25 + d]}] * 3
  table = suite_compile.report({'fusion': side(3.0, 0.0), 'loop': side(1.5, 0.125)})
  assert '| step_compile_s | 3.000 | 1.500 | 2.00 (2.00-2.00) |' in table
  assert '| probe_fit_s | 6.000 | 3.000 | 2.00 (2.00-2.00) |' in table
  assert 'step metrics 0.125, probe cross-entropies 0.125 nats' in table
