"""The `ingest` command line.

Exit codes: 0 clean stop, 2 usage or configuration error, 3 credentials missing or rejected,
1 anything else fatal. Expected errors print one `Type: message` line and no traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from contextlib import AsyncExitStack
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import anyio

from ingest import __version__
from ingest.app import RunResult, run_daemon
from ingest.config import (
    STREAMS,
    Settings,
    StreamName,
    check_streams,
    load_settings,
    parse_shard,
    parse_streams,
    shard_settings,
)
from ingest.errors import ConfigError, CredentialsError, IngestError
from ingest.logconfig import configure_logging
from ingest.metrics import Metrics
from ingest.sdnotify import Notifier
from ingest.status_cli import DEFAULT_URL, status_command
from storage.schemas import tables_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streams.base import Source
from streams.recorder import FrameRecorder, open_recorder

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
EXIT_USAGE: Final = 2
EXIT_CREDENTIALS: Final = 3


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> Any:
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ingest", description="Multi-source market data ingestion daemon.")
    parser.add_argument("--version", action="version", version=f"ingest {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run the daemon until stopped")
    run.add_argument("--config", type=Path, help="config file (default: ./config.toml if present)")
    run.add_argument("--streams", help="comma-separated subset of stocks,crypto,options,news")
    run.add_argument("--source", choices=("sim", "alpaca", "replay"))
    run.add_argument("--replay", type=Path, help="recording file or folder (with --source replay)")
    run.add_argument("--speed", default="max", help="replay pace: 1, 10, ... or max")
    run.add_argument("--record", type=Path, help="write every received frame to DIR (alpaca)")
    run.add_argument("--data-dir", type=Path)
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--log-format", choices=("console", "json"), default=None)
    run.add_argument("--shard", help="i/n (or i-n): run shard i of n, by a stable hash of symbols")

    status = commands.add_parser("status", help="ask a running daemon for its status")
    status.add_argument(
        "--url", default=DEFAULT_URL, help=f"daemon address (default {DEFAULT_URL})"
    )
    status.add_argument("--token", help="bearer token (default: $INGEST_TOKEN)")

    check = commands.add_parser("check-config", help="validate and print the configuration")
    check.add_argument("--config", type=Path)

    bench = commands.add_parser("bench", help="measure throughput and latency on this machine")
    bench.add_argument("--config", type=Path, help="[pipeline] and [storage] to measure")
    bench.add_argument("--ticks", type=_positive_int, default=1_000_000)
    bench.add_argument("--symbols", type=_positive_int, default=200)
    bench.add_argument("--per-frame", type=_positive_int, default=50, help="messages per frame")
    bench.add_argument("--stream", choices=("stocks", "options"), default="stocks")
    bench.add_argument("--stage", choices=("decode", "pipeline", "storage", "e2e", "latency"))
    bench.add_argument(
        "--rate",
        type=_offered_rate,
        default=100_000.0,
        help="offered ticks/s of the latency run (0: skip)",
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")

    compact = commands.add_parser(
        "compact", help="merge the small Parquet files of closed partitions, atomically"
    )
    compact.add_argument("--config", type=Path)
    compact.add_argument("--data-dir", type=Path)
    compact.add_argument("--table", help="a table (trades) or one stream's table (stocks/trades)")
    compact.add_argument("--date", help="only the partition of this UTC date (YYYY-MM-DD)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        msg = f"{text!r} is not a positive whole number"
        raise argparse.ArgumentTypeError(msg)
    return value


def _offered_rate(text: str) -> float:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        msg = f"{text!r} is not a rate in ticks/s (0 or more)"
        raise argparse.ArgumentTypeError(msg)
    return value


def _settings(args: argparse.Namespace) -> Settings:
    path: Path | None = args.config
    if path is None and Path("config.toml").is_file():
        path = Path("config.toml")
    settings = load_settings(path)
    ingest = settings.ingest
    if getattr(args, "streams", None):
        ingest = dataclasses.replace(ingest, streams=parse_streams("--streams", args.streams))
    if getattr(args, "source", None):
        ingest = dataclasses.replace(ingest, source=args.source)
    if getattr(args, "data_dir", None):
        ingest = dataclasses.replace(ingest, data_dir=args.data_dir)
    if getattr(args, "shard", None):
        ingest = dataclasses.replace(ingest, shard=parse_shard("--shard", args.shard))
    settings = shard_settings(settings.replace(ingest=ingest))
    if ingest.source != "replay":
        check_streams(settings)
    return settings


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = -1.0
    if speed <= 0:
        msg = f"--speed: {text!r} is invalid; expected a positive number or 'max'"
        raise ConfigError(msg)
    return speed


def _source(
    settings: Settings,
    args: argparse.Namespace,
    metrics: Metrics,
    recorder: FrameRecorder | None,
) -> Source:
    source = settings.ingest.source
    if source == "alpaca":
        from streams.alpaca import AlpacaSource

        streams = {name: settings.streams[name] for name in settings.ingest.streams}
        return AlpacaSource(settings.alpaca, streams, metrics=metrics, recorder=recorder)
    if source == "sim":
        from streams.sim import SimSource

        return SimSource(settings, settings.ingest.streams)
    from streams.replay import ReplaySource

    default: StreamName = settings.ingest.streams[0] if args.streams else "stocks"
    return ReplaySource(
        args.replay,
        speed=_speed(args.speed),
        default_stream=default,
        max_frame_bytes=settings.alpaca.max_frame_bytes,
    )


def _check_run_args(settings: Settings, args: argparse.Namespace) -> None:
    """Refuse flag combinations that cannot work, before anything starts."""
    source = settings.ingest.source
    if args.record is not None and source != "alpaca":
        msg = f"--record records a live feed; it needs --source alpaca, not {source!r}"
        raise ConfigError(msg)
    if source == "replay" and args.replay is None:
        msg = "--source replay needs --replay PATH (a recording file or folder)"
        raise ConfigError(msg)
    _speed(args.speed)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _check_run_args(settings, args)
    configure_logging(args.log_format or "auto")
    interactive = sys.stdout.isatty()

    async def daemon(notifier: Notifier) -> RunResult:
        metrics = Metrics()
        async with AsyncExitStack() as stack:
            recorder = None
            if args.record is not None:
                recorder = await stack.enter_async_context(open_recorder(args.record))
            return await run_daemon(
                settings,
                _source(settings, args, metrics, recorder),
                duration=args.duration,
                handle_signals=True,
                metrics=metrics,
                notifier=notifier,
                progress_seconds=5.0 if interactive else settings.server.log_interval,
            )

    with Notifier.from_env() as notifier:
        result = anyio.run(daemon, notifier)
    print(format_summary(result))
    return EXIT_OK


def format_summary(result: RunResult) -> str:
    """The closing table: rows and files per table, and where they went."""
    lines = [
        "",
        f"Parquet dataset: {Path(result.data_dir).resolve()}",
        f"{'stream':<8} {'table':<12} {'rows':>10} {'files':>6}",
    ]
    for (stream, table), rows in sorted(result.rows.items()):
        lines.append(f"{stream:<8} {table:<12} {rows:>10} {result.files[(stream, table)]:>6}")
    total = sum(result.rows.values())
    lines.append(f"{'total':<21} {total:>10} {sum(result.files.values()):>6}")
    lines.append(
        f"ran {result.seconds:.1f}s, quarantined {result.quarantined}, "
        f"symbol failures {result.symbol_failures}"
    )
    if result.recovered_frames or result.duplicates:
        lines.append(
            f"journal: recovered {result.recovered_frames} frames after an unclean stop; "
            f"dropped {result.duplicates} messages already in the dataset"
        )
    glob = f"{result.data_dir}/stocks/trades/**/*.parquet"
    lines.append(
        f"query: duckdb -c \"select count(*) from read_parquet('{glob}', hive_partitioning=true)\""
    )
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    return status_command(args.url, args.token or os.environ.get("INGEST_TOKEN"))


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(render_settings(settings))
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from ingest.bench import STAGES, BenchOptions, run_bench

    if args.stage == "latency" and args.rate == 0:
        msg = "--rate 0 leaves --stage latency nothing to run: give the offered ticks/s"
        raise ConfigError(msg)
    settings = _settings(args)
    configure_logging("console", level=logging.WARNING)
    options = BenchOptions(
        ticks=args.ticks,
        symbols=args.symbols,
        per_frame=args.per_frame,
        stream=args.stream,
        stages=(args.stage,) if args.stage else STAGES,
        rate=args.rate,
    )
    print(run_bench(options, settings, as_json=args.json))
    return EXIT_OK


def render_settings(settings: Settings) -> str:
    """The effective configuration as TOML, secrets redacted."""

    def value(v: Any) -> str:
        if isinstance(v, str | Path):
            return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, tuple | list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            if hasattr(v, "label") and hasattr(v, "kind"):
                return value(f"{v.kind}:{v.label}")
            inner = ", ".join(
                f"{f.name} = {value(getattr(v, f.name))}" for f in dataclasses.fields(v)
            )
            return "{ " + inner + " }"
        return repr(v)

    def section(name: str, obj: Any, secrets: tuple[str, ...] = ()) -> list[str]:
        lines = [f"[{name}]"]
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if v is None:
                continue
            lines.append(f"{f.name} = {value('<redacted>') if f.name in secrets else value(v)}")
        return [*lines, ""]

    out: list[str] = []
    out += section("ingest", settings.ingest)
    out += section("alpaca", settings.alpaca)
    for stream, stream_settings in settings.streams.items():
        out += section(f"streams.{stream}", stream_settings)
    out += section("pipeline", settings.pipeline)
    out += section("storage", settings.storage)
    out += section("server", settings.server, secrets=("token",))
    out += section("sim", settings.sim)
    return "\n".join(out)


def _cmd_compact(args: argparse.Namespace) -> int:
    from storage.compact import compact_dataset, describe

    settings = _settings(args)
    day: str | None = args.date
    if day is not None:
        try:
            date.fromisoformat(day)
        except ValueError:
            msg = f"--date: {day!r} is invalid; expected a UTC date such as 2024-07-01"
            raise ConfigError(msg) from None
    table: str | None = args.table
    known = sorted(
        {t for s in STREAMS for t in tables_of(s)}
        | {f"{s}/{t}" for s in STREAMS for t in tables_of(s)}
    )
    if table is not None and table not in known:
        msg = f"--table: {table!r} is invalid; expected a table such as 'trades' or 'stocks/trades'"
        raise ConfigError(msg)
    configure_logging("auto")
    results = compact_dataset(
        settings.ingest.data_dir,
        table=table,
        day=day,
        compact_after=settings.storage.compact_after,
        compression=settings.storage.compression,
    )
    print(describe(results))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ingest` console script."""
    code = EXIT_OK
    try:
        args = _parser().parse_args(argv)
        handler = {
            "run": _cmd_run,
            "check-config": _cmd_check_config,
            "status": _cmd_status,
            "bench": _cmd_bench,
            "compact": _cmd_compact,
        }[args.command]
        code = handler(args)
    except* ConfigError as group:
        code = _fail(group, EXIT_USAGE)
    except* CredentialsError as group:
        code = _fail(group, EXIT_CREDENTIALS)
    except* IngestError as group:
        code = _fail(group, EXIT_FATAL)
    return code


def _fail(group: BaseExceptionGroup[IngestError], code: int) -> int:
    first = _leaf(group)
    print(f"{type(first).__name__}: {first}", file=sys.stderr)
    return code


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
