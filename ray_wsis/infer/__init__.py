"""Per-image inference: CAMs, boundary/displacement, walk and label assembly."""
