"""The review loop: the least certain labels to Label Studio, the corrections back (`ray-wsis review`)."""
