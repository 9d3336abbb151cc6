"""The README and docs/ pages: short, linked, and their commands and code run as written."""

import ast
import configparser
import glob
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
MAX_README_LINES = 160


def read(path):
  with open(path) as f:
    return f.read()


def pages():
  """README.md and every Markdown page under docs/ (not the study's result tables)."""
  return [README] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))


def code_blocks(text, lang):
  return re.findall(rf'```{lang}\n(.*?)```', text, re.S)


def section_code(heading, lang='python'):
  """The first `lang` code block under the README heading `## heading`."""
  match = re.search(rf'^## {re.escape(heading)}\n.*?```{lang}\n(.*?)```', read(README),
                    re.S | re.M)
  assert match, f'README has no {lang} block under "## {heading}"'
  return match.group(1)


def run_python(code, cwd, timeout=600, site=None):
  """Runs `code` in `cwd`; with `site`, against the non-editable install there (the
  `wheel_site` fixture): the snippet then sees what `pip install` gives a user, and the
  check that it imported mipae_jax from there is part of the run."""
  env = dict(os.environ)
  if site is not None:
    env['PYTHONPATH'] = str(site)
    code += textwrap.dedent(f"""
        import mipae_jax as _m, os as _os
        assert _os.path.realpath(_m.__file__).startswith(_os.path.realpath({str(site)!r})), \
            _m.__file__
        """)
  out = subprocess.run([sys.executable, '-c', code], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def test_readme_is_short():
  lines = read(README).count('\n')
  assert lines <= MAX_README_LINES, f'README.md has {lines} lines (at most {MAX_README_LINES})'


def test_readme_opens_with_the_two_setup_commands():
  first_block = re.search(r'```\w*\n(.*?)```', read(README), re.S).group(1)
  commands = [line.split('#')[0].strip() for line in first_block.strip().splitlines()]
  assert commands == ['make demo', 'make test']
  assert 'make test' in read(os.path.join(ROOT, '.ci', 'run'))


def test_every_named_tool_is_installed_by_setup_cfg():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, 'setup.cfg'))
  scripts = {line.split('=')[0].strip()
             for line in cfg['options.entry_points']['console_scripts'].strip().splitlines()}
  for page in pages():
    named = set(re.findall(r'(?<![\w/.-])(mipae-[a-z]+)\b', read(page)))
    unknown = named - scripts
    assert not unknown, f'{os.path.relpath(page, ROOT)} names {sorted(unknown)}, not in setup.cfg'
  assert set(re.findall(r'mipae-[a-z]+', read(README))) >= {'mipae-train', 'mipae-evaluate',
                                                            'mipae-study'}


def test_relative_links_point_at_files():
  for page in pages():
    for target in re.findall(r'\]\(([^)\s]+)\)', read(page)):
      if re.match(r'[a-z]+:', target) or target.startswith('#'):
        continue  # A URL or an anchor on the same page.
      path = os.path.normpath(os.path.join(os.path.dirname(page), target.split('#')[0]))
      assert os.path.exists(path), f'{os.path.relpath(page, ROOT)} links to {target}: missing'


def test_license_and_citation():
  license_text = read(os.path.join(ROOT, 'LICENSE'))
  assert 'Apache License' in license_text and 'Version 2.0, January 2004' in license_text
  assert 'END OF TERMS AND CONDITIONS' in license_text
  cff = read(os.path.join(ROOT, 'CITATION.cff'))
  version = re.search(r"__version__ = '([^']+)'",
                      read(os.path.join(ROOT, 'mipae_jax', 'version.py'))).group(1)
  assert re.search(r'^cff-version: 1\.2\.0$', cff, re.M)
  assert re.search(rf'^version: {re.escape(version)}$', cff, re.M)
  assert re.search(r'^license: Apache-2\.0$', cff, re.M)
  assert re.search(r'^preferred-citation:', cff, re.M)
  assert 'Unsupervised Disentanglement of Video Representation' in cff
  assert '[LICENSE](LICENSE)' in read(README) and '[CITATION.cff](CITATION.cff)' in read(README)


def test_python_snippets_parse():
  for page in pages():
    for code in code_blocks(read(page), 'python'):
      try:
        ast.parse(code)
      except SyntaxError as e:
        pytest.fail(f'{os.path.relpath(page, ROOT)}: a python block does not parse: {e}\n{code}')


def test_programmatic_example_runs(tmp_path, wheel_site):
  """The README's training snippet, as written, in an empty directory outside the
  repository (runs/tiny there), against a non-editable install of the checkout."""
  code = section_code('Programmatic use')
  assert "configs.get('tiny')" in code and 'pipeline.train_and_evaluate' in code
  out = run_python(code, cwd=tmp_path, site=wheel_site)
  assert os.path.exists(tmp_path / 'runs' / 'tiny' / 'eval' / 'report.md')
  mig, ssim = out.strip().splitlines()[-1].split(' ', 1)
  assert -1.0 <= float(mig) <= 1.0 and ssim.startswith('[')


def test_load_and_predict_example_runs(tmp_path, wheel_site):
  """The README's load-and-predict snippet, as written but for the run directory: a tiny
  run with the demo's 64x64 RGB frames instead of `make demo`'s `workdirs/demo`."""
  code = section_code('Load and predict')
  assert "mipae_jax.load_run('workdirs/demo')" in code
  workdir = str(tmp_path / 'run')
  make_run = textwrap.dedent(f"""
      from mipae_jax import config_record, configs, pipeline, workdir
      config = configs.get('tiny')
      config.data.image_size = 64  # The demo's frames; tiny's otherwise.
      workdir.prepare({workdir!r})
      config_record.record_config({workdir!r}, config)
      ae = pipeline.train_autoencoder(config, {workdir!r})
      pipeline.train_lstm(config, {workdir!r}, ae.state)
      """)
  check = textwrap.dedent("""
      assert z_c.shape[0] == z_p.shape[0] == 8, (z_c.shape, z_p.shape)
      assert grid.shape == (4, 8, 64, 64, 3), grid.shape
      assert future.shape == (1, 5, 64, 64, 3), future.shape
      print('ok')
      """)
  snippet = code.replace("'workdirs/demo'", repr(workdir))
  assert run_python(make_run + snippet + check, cwd=tmp_path,
                    site=wheel_site).strip().splitlines()[-1] == 'ok'


def test_pure_step_example_runs(tmp_path):
  """docs/extending.md's one-step snippet (one jitted autoencoder step, tiny config)."""
  page = read(os.path.join(ROOT, 'docs', 'extending.md'))
  code = next(c for c in code_blocks(page, 'python') if 'make_train_step' in c)
  out = run_python(code, cwd=tmp_path, timeout=300)
  assert "'recon_loss'" in out and "'critic_mi'" in out
