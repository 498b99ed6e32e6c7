"""Runs the benchmark's stages and reports them as a table or as one JSON object.

Every stage runs in this process, one after the other, on one core: the figures are what one
daemon process carries. Workloads are generated before any clock starts.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ingest.bench.stages import bench_decode, bench_e2e, bench_pipeline, bench_storage
from ingest.bench.workload import BenchStream, Workload, make_workload

if TYPE_CHECKING:
    from collections.abc import Callable

    from ingest.config import Settings

__all__ = ["STAGES", "BenchOptions", "Stage", "run_bench"]

Stage = Literal["decode", "pipeline", "storage", "e2e", "latency"]
STAGES: tuple[Stage, ...] = ("decode", "pipeline", "storage", "e2e", "latency")
_FLAT_OUT: frozenset[Stage] = frozenset(("decode", "pipeline", "storage", "e2e"))
"""The stages that run the `--ticks` workload (latency runs one of its own, paced)."""


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to run (the CLI flags)."""

    ticks: int = 1_000_000
    symbols: int = 200
    per_frame: int = 50
    stream: BenchStream = "stocks"
    stages: tuple[Stage, ...] = STAGES
    rate: float = 100_000.0
    """Offered load (ticks/s) of the paced latency run (`latency`); 0 skips it."""
    latency_seconds: float = 3.0


def run_bench(options: BenchOptions, settings: Settings, *, as_json: bool = False) -> str:
    """Run the chosen stages; return the report (table, or JSON with `as_json`)."""
    say = _progress(quiet=as_json)
    flat_out = bool(_FLAT_OUT.intersection(options.stages))
    result: dict[str, Any] = {
        "ticks": options.ticks if flat_out else _paced_ticks(options),
        "symbols": options.symbols,
        "stream": options.stream,
        "per_frame": options.per_frame,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    run = _Run(options, settings, result, say)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch:
        if flat_out:
            run.flat_out(Path(scratch))
        if "latency" in options.stages and options.rate > 0:
            run.latency(Path(scratch, "paced"))
    if as_json:
        return json.dumps(result, indent=2)
    return format_table(result)


@dataclass(frozen=True, slots=True)
class _Run:
    """One benchmark run: what to run, the report it fills, where its progress goes."""

    options: BenchOptions
    settings: Settings
    result: dict[str, Any]
    say: Callable[[str], None]

    def flat_out(self, scratch: Path) -> None:
        """The stages that run the `--ticks` workload flat out; it is freed on return."""
        options, settings, result, say = self.options, self.settings, self.result, self.say
        say(
            f"generating {options.ticks:,} {options.stream} trades over {options.symbols:,} symbols"
        )
        workload = _workload(options, options.ticks)
        if "decode" in options.stages:
            say("decode")
            result["decode_msgs_per_s"] = bench_decode(workload)
            other: BenchStream = "options" if options.stream == "stocks" else "stocks"
            twin = _workload(options, options.ticks, other)
            result[f"decode_{twin.encoding}_msgs_per_s"] = bench_decode(twin)
            result[f"decode_{workload.encoding}_msgs_per_s"] = result["decode_msgs_per_s"]
            del twin
        if "pipeline" in options.stages:
            say("pipeline")
            rate, batch = bench_pipeline(workload, settings.pipeline)
            result["pipeline_ticks_per_s"] = rate
            result["pipeline_mean_batch"] = batch
        if "storage" in options.stages:
            say("storage")
            rate, size = bench_storage(workload, settings, scratch / "storage")
            result["storage_rows_per_s"] = rate
            result["parquet_bytes_per_trade"] = size
        if "e2e" in options.stages:
            say("end to end, flat out")
            baseline = _reset_peak_rss()
            e2e = bench_e2e(workload, settings, scratch / "e2e")
            result["e2e_ticks_per_s"] = e2e.ticks_per_s
            result["e2e_mean_batch"] = e2e.mean_batch
            result["e2e_loop_busy"] = e2e.loop_busy
            result["e2e_decode_msgs_per_s"] = e2e.decode_msgs_per_s
            result["parquet_bytes_per_trade"] = e2e.parquet_bytes_per_trade
            result["peak_rss_mb"] = _peak_rss_mb()
            result["rss_growth_mb"] = result["peak_rss_mb"] - baseline

    def latency(self, root: Path) -> None:
        """The whole daemon paced at `--rate` for `latency_seconds`: the frame latency."""
        options, settings, result, say = self.options, self.settings, self.result, self.say
        ticks = _paced_ticks(options)
        say(f"generating {ticks:,} trades; end to end, paced at {options.rate:,.0f} ticks/s")
        paced = _workload(options, ticks)
        e2e = bench_e2e(paced, settings, root, rate=options.rate)
        result["offered_ticks_per_s"] = options.rate
        result["p50_frame_latency_ms"] = e2e.p50_ms
        result["p99_frame_latency_ms"] = e2e.p99_ms
        result["max_frame_latency_ms"] = e2e.max_ms
        result["paced_mean_batch"] = e2e.mean_batch
        result["paced_loop_busy"] = e2e.loop_busy


def _paced_ticks(options: BenchOptions) -> int:
    return int(options.rate * options.latency_seconds)


def _workload(options: BenchOptions, ticks: int, stream: BenchStream | None = None) -> Workload:
    return make_workload(
        ticks, options.symbols, per_frame=options.per_frame, stream=stream or options.stream
    )


def format_table(result: dict[str, Any]) -> str:
    """The report as aligned lines, one per measurement present."""
    lines = [
        f"ingest bench: {result['ticks']:,} {result['stream']} trades, {result['symbols']:,} "
        f"symbols, {result['per_frame']} per frame ({result['machine']}, "
        f"python {result['python']}, one process)",
    ]

    def row(label: str, value: str, note: str = "") -> None:
        lines.append(f"  {label:<18} {value:>22}  {note}".rstrip())

    if "decode_msgs_per_s" in result:
        row("decode json", f"{result['decode_json_msgs_per_s']:,.0f} msgs/s")
        row("decode msgpack", f"{result['decode_msgpack_msgs_per_s']:,.0f} msgs/s")
    if "pipeline_ticks_per_s" in result:
        row(
            "pipeline",
            f"{result['pipeline_ticks_per_s']:,.0f} ticks/s",
            f"mean batch {result['pipeline_mean_batch']:.1f} trades per symbol call",
        )
    if "storage_rows_per_s" in result:
        row("storage (trades)", f"{result['storage_rows_per_s']:,.0f} rows/s")
    if "e2e_ticks_per_s" in result:
        row(
            "end to end",
            f"{result['e2e_ticks_per_s']:,.0f} ticks/s",
            f"mean batch {result['e2e_mean_batch']:.1f}, loop busy {result['e2e_loop_busy']:.0%}",
        )
        row(
            "  of which decode",
            f"{result['e2e_decode_msgs_per_s']:,.0f} msgs/s",
            "the same decode calls inside the run",
        )
    if "p99_frame_latency_ms" in result:
        row(
            "frame latency",
            f"p50 {result['p50_frame_latency_ms']:.2f} ms",
            f"p99 {result['p99_frame_latency_ms']:.2f} ms, max {result['max_frame_latency_ms']:.2f}"
            f" ms at {result['offered_ticks_per_s']:,.0f} ticks/s offered, loop busy"
            f" {result['paced_loop_busy']:.0%}",
        )
    if "parquet_bytes_per_trade" in result:
        row("parquet (zstd)", f"{result['parquet_bytes_per_trade']:.2f} bytes/trade")
    if "peak_rss_mb" in result:
        row(
            "peak RSS",
            f"{result['peak_rss_mb']:,.0f} MB",
            f"{result['rss_growth_mb']:+,.0f} MB during the run",
        )
    return "\n".join(lines)


def _progress(*, quiet: bool) -> Callable[[str], None]:
    def say(text: str) -> None:
        if not quiet:
            print(f"bench: {text}...", file=sys.stderr, flush=True)

    return say


def _status_kb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _reset_peak_rss() -> float:
    """Start the peak-RSS count afresh (Linux); return the current RSS in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_kb("VmRSS") / 1024


def _peak_rss_mb() -> float:
    return _status_kb("VmHWM") / 1024
