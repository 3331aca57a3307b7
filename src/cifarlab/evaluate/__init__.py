"""Evaluation: running models over a split, and the metrics computed from their predictions."""
