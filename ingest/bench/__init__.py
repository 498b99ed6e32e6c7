"""`ingest bench`: the built-in throughput and latency benchmark (see docs/performance.md)."""

from ingest.bench.command import STAGES, BenchOptions, run_bench

__all__ = ["STAGES", "BenchOptions", "run_bench"]
