"""The method: CAMs, relation labels, affinities, random walk, instances."""
