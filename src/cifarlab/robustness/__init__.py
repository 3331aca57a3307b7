"""Robustness: CIFAR-10-C-style corruptions and their evaluation."""
