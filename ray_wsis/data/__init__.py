"""Datasets: image lists with image-level labels, ground truth, decoding and augmentation."""
