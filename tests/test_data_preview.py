"""The preview CLI writes a GIF and a filmstrip for every dataset (files made by the tests)."""

import numpy as np
from PIL import Image

from mipae_jax.data import preview
from tests.test_data_mnist_mpi3d import TINY, fake_mnist, fake_mpi3d


def test_preview_all_datasets(tmp_path, monkeypatch, capsys):
  (x, y), (xt, yt) = fake_mnist(30, 0), fake_mnist(10, 1)
  np.savez(tmp_path / 'mnist.npz', x_train=x, y_train=y, x_test=xt, y_test=yt)
  from mipae_jax.data import mpi3d
  monkeypatch.setattr(mpi3d, 'KNOWN_LAYOUTS', TINY)
  np.save(tmp_path / 'mpi3d.npy', fake_mpi3d(TINY[2160][1]))
  for name, path in (('moving_dsprites', ''), ('moving_mnist', tmp_path / 'mnist.npz'),
                     ('mpi3d', tmp_path / 'mpi3d.npy')):
    out = tmp_path / name
    preview.main(['--dataset', name, '--out', str(out), '--path', str(path),
                  '--num_videos', '2'])
    gif = Image.open(out / 'preview.gif')
    assert gif.n_frames == 15 and gif.size == (2 * 130, 128)
    assert Image.open(out / 'filmstrip.png').size[0] >= 15 * 128
  text = capsys.readouterr().out
  assert 'shape_0=' in text and 'digit_0=' in text and 'object_color=' in text
  assert 'pose (x_0, y_0, x_1, y_1) per frame' in text
