"""ray_wsis: image-level labels in, semantic and instance pseudo-labels out (IRNet, AffinityNet) on Ray."""

__version__ = "0.1.0"
