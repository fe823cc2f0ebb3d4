"""Prefect flows: the asr-optimize pipeline and the upstream-revision watcher."""
