"""Serving measurements against a running Triton: the load generator (``serve-bench``) and the reload soak."""
