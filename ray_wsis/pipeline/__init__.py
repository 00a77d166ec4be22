"""The distributed pipeline: Ray Train stages, Ray Data stages, evaluation and the run chain."""
