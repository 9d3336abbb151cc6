"""Helpers shared by test modules."""

import types

import numpy as np


def stub_scoring(monkeypatch, evaluate, mig: dict) -> None:
  """Stubs what `evaluate.evaluate` computes from networks and data (the variables, the
  MIG -> `mig`, the test videos, the pictures, TensorBoard), so a test follows only the
  records' path into `eval/`."""
  monkeypatch.setattr(evaluate, 'train',
                      types.SimpleNamespace(autoencoder_variables=lambda s: {}))
  monkeypatch.setattr(evaluate, 'disentanglement', lambda c, v, s: mig)
  monkeypatch.setattr(evaluate, 'prediction_videos', lambda c, s: (np.zeros(1), 'none'))
  monkeypatch.setattr(evaluate, 'write_pictures', lambda *a: {})
  monkeypatch.setattr(evaluate, 'log_to_tensorboard', lambda w, r: None)
