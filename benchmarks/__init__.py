"""Benchmark scripts; the runtime package never imports this."""
