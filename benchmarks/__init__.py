"""Benchmarks beyond `ingest bench`: run each with `python -m benchmarks.<name>`."""
