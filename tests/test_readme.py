"""The README's commands and code run as written."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme():
  with open(os.path.join(ROOT, 'README.md')) as f:
    return f.read()


def test_readme_opens_with_the_two_setup_commands():
  first_block = re.search(r'```bash\n(.*?)```', readme(), re.S).group(1)
  commands = [line.split('#')[0].strip() for line in first_block.strip().splitlines()]
  assert commands == ['make demo', 'make test']
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    assert 'make test' in f.read()


def test_programmatic_example_runs():
  code = re.search(r'## Programmatic use.*?```python\n(.*?)```', readme(), re.S).group(1)
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "'recon_loss'" in out.stdout and "'critic_mi'" in out.stdout
