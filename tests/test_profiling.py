"""Op-time summaries of profiler traces, on a hand-made Perfetto trace with known sums."""

import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from mipae_jax import profiling


def write_trace(path, events):
  path.parent.mkdir(parents=True, exist_ok=True)
  with gzip.open(path, 'wt') as f:
    json.dump({'traceEvents': events}, f)


def test_op_times_sum_per_kind_and_leave_out_runtime_spans(tmp_path):
  x = lambda name, dur, tid=1: {'ph': 'X', 'name': name, 'dur': dur, 'tid': tid}
  events = [x('transpose_copy_fusion.13', 1000), x('transpose_copy_fusion.2', 3000, tid=2),
            x('dot.7', 500), x('dot', 700), x('convolution.1.2', 250),
            x('ThunkExecutor::Execute', 9e6), x('$run.py:72 __call__', 9e6),
            x('PjitFunction(jit(step))', 9e6), {'ph': 'M', 'name': 'thread_name', 'tid': 1},
            {'ph': 'X', 'name': 'no_duration'}]
  trace = tmp_path / 'plugins' / 'profile' / 'run' / 'host.trace.json.gz'
  write_trace(trace, events)
  total, count = profiling.op_times(str(trace))
  assert total == {'transpose_copy_fusion': 4000, 'dot': 1200, 'convolution': 250}
  assert count == {'transpose_copy_fusion': 2, 'dot': 2, 'convolution': 1}
  table = profiling.summarize(str(tmp_path), num_steps=2, top=2)
  lines = table.splitlines()
  assert lines[4:] == ['| transpose_copy_fusion | 2.0 | 1 |', '| dot | 0.6 | 1 |',
                       '| (other 1 kinds) | 0.1 | |', '| **all traced ops** | 2.7 | |']


def test_summarize_names_a_missing_trace(tmp_path):
  with pytest.raises(FileNotFoundError, match='no Perfetto trace'):
    profiling.summarize(str(tmp_path), num_steps=1)


def test_profile_step_prints_the_table(tmp_path, capsys):
  from benchmarks import profile_step
  profile_step.main(['--config', 'mipae_jax.configs.tiny', '--batch', '2', '--steps', '1',
                     '--out', str(tmp_path)])
  out = capsys.readouterr().out
  assert 'ae iteration, batch 2, float32' in out
  assert '| **all traced ops** |' in out and 'over 1 steps' in out


def test_a_running_trace_is_left_alone(tmp_path, caplog):
  """A caller already tracing: the step profiler stands aside instead of failing."""
  jax.profiler.start_trace(str(tmp_path / 'theirs'))
  try:
    profiler = profiling.StepProfiler(str(tmp_path / 'ours'), first_step=1, num_steps=2)
    with caplog.at_level('WARNING'):
      for step in range(4):
        profiler.before_step(step)
        profiler.after_step(step + 1, jnp.zeros(()))
      profiler.close()
    assert 'Not profiling steps 1+' in caplog.text
    assert not (tmp_path / 'ours' / 'summary.md').exists()
  finally:
    jax.profiler.stop_trace()
