"""The data layer: find, download, read, cache, validate, split and batch CIFAR."""
