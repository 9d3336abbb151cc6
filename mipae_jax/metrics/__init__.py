"""Evaluation metrics: MIG (paper and classic) and frame-prediction quality."""
