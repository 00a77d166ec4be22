"""Training pieces shared by the Ray Train loops and plain single-process loops."""
