"""Robustness: a trained run evaluated on CIFAR-10-C-style corrupted copies of its test split
(the corruptions themselves are :mod:`cifarlab.data.corruptions`)."""
