"""Typed settings loaded from `config.toml`, validated once at the boundary.

Every key is optional. Anything wrong -- an unknown key, a wrong type, an empty symbol list for
an enabled stream, a bad duration, an unknown bar type -- raises `ConfigError` with a message that
names the key, the bad value and what is allowed. Inside the daemon the settings are trusted.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, get_args

from ingest.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "STREAMS",
    "AlpacaSettings",
    "AnomalySettings",
    "BarSpec",
    "IngestSettings",
    "OptionsSettings",
    "PipelineSettings",
    "ServerSettings",
    "Settings",
    "SimSettings",
    "StorageSettings",
    "StreamName",
    "StreamSettings",
    "load_settings",
    "parse_bar_spec",
    "parse_duration",
    "parse_shard",
    "parse_streams",
    "settings_from_mapping",
    "shard_of",
    "shard_settings",
]

StreamName = Literal["stocks", "crypto", "options", "news"]
STREAMS: tuple[StreamName, ...] = get_args(StreamName)
SourceName = Literal["sim", "alpaca", "replay"]
BarKind = Literal["time", "tick", "volume", "dollar"]
FsyncPolicy = Literal["batch", "interval", "never"]
BackpressurePolicy = Literal["block", "drop"]

CHANNELS: Mapping[StreamName, tuple[str, ...]] = {
    "stocks": ("trades", "quotes", "bars", "updated_bars", "daily_bars", "statuses", "lulds"),
    "crypto": ("trades", "quotes", "bars", "orderbooks"),
    "options": ("trades", "quotes"),
    "news": ("news",),
}
DEFAULT_CHANNELS: Mapping[StreamName, tuple[str, ...]] = {
    "stocks": ("trades", "quotes", "bars"),
    "crypto": ("trades", "quotes", "bars"),
    "options": ("trades", "quotes"),
    "news": ("news",),
}
DEFAULT_SYMBOLS: Mapping[StreamName, tuple[str, ...]] = {
    "stocks": ("AAPL", "MSFT", "NVDA", "SPY", "TSLA"),
    "crypto": ("BTC/USD", "ETH/USD", "SOL/USD"),
    "options": (),
    "news": ("*",),
}
DEFAULT_UNDERLYINGS: Mapping[StreamName, tuple[str, ...]] = {"options": ("AAPL", "SPY")}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class BarSpec:
    """One bar series: `time:1m`, `tick:100`, `volume:10000` or `dollar:1000000`."""

    kind: BarKind
    size: float
    """Seconds for time bars; trades, shares or dollars for the others."""
    label: str
    """The size as configured (`1m`, `100`): the `bar_size` column."""


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    """Tick-level anomaly detection over the last `window` trade prices."""

    window: int = 20
    threshold: float = 3.0
    method: Literal["zscore", "iqr"] = "zscore"


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """The shared bar / indicator / anomaly pipeline."""

    bars: tuple[BarSpec, ...] = (
        BarSpec("time", 60.0, "1m"),
        BarSpec("tick", 100.0, "100"),
        BarSpec("volume", 10_000.0, "10000"),
        BarSpec("dollar", 1_000_000.0, "1000000"),
    )
    sma: tuple[int, ...] = (5, 10, 20)
    ema: tuple[int, ...] = (12, 26)
    rsi: int = 14
    volatility: int = 20
    momentum: int = 10
    zscore: int = 20
    anomaly: AnomalySettings = AnomalySettings()
    warmup: bool = True
    """Warm each symbol's bar series up from history at start (`ingest.warmup`)."""
    correction_window: int = 10_000
    """Stock trades remembered per symbol, so corrections and cancels can restate open bars."""


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Where data goes, from which source, for which streams."""

    data_dir: Path = Path("data")
    source: SourceName = "sim"
    streams: tuple[StreamName, ...] = STREAMS
    shard: tuple[int, int] = (0, 1)
    """(index, count) of this process among shards; `(0, 1)` is unsharded."""


@dataclass(frozen=True, slots=True)
class AlpacaSettings:
    """The live Alpaca source; URLs are overridable for tests and proxies."""

    feed: str = "iex"
    options_feed: Literal["indicative", "opra"] = "indicative"
    crypto_location: str = "us"
    stream_url: str = "wss://stream.data.alpaca.markets"
    data_url: str = "https://data.alpaca.markets"
    trading_url: str = "https://paper-api.alpaca.markets"
    staleness_seconds: float = 60.0
    news_staleness_seconds: float = 1800.0
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    connection_limit_backoff_seconds: float = 120.0
    rest_requests_per_minute: int = 200
    backfill: bool = True
    """After every (re)connect, fill the gap from REST history (`streams.alpaca.backfill`)."""
    backfill_max_gap: float = 3600.0
    """The longest gap filled, in seconds; an older start is moved up (and logged)."""
    max_frame_bytes: int = 4 * 1024 * 1024
    """Longer frames are quarantined whole (`oversized_frame`); 4x this closes the socket."""


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """One stream type's subscription."""

    symbols: tuple[str, ...]
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OptionsSettings(StreamSettings):
    """Options: OCC symbols and/or underlyings whose contracts are discovered."""

    underlyings: tuple[str, ...] = ()
    expiry_days: int = 30
    """Discover contracts expiring within this many days."""
    strike_band: float = 0.1
    """Discover strikes within this fraction of the underlying's price."""


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Parquet rolling and durability."""

    roll_rows: int = 250_000
    roll_seconds: float = 60.0
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"
    fsync: FsyncPolicy = "batch"
    fsync_interval_ms: int = 200
    queue_size: int = 1024
    """Bound of each queue between stages: frames waiting for the journal, batches per symbol."""
    backpressure: BackpressurePolicy = "block"
    journal: bool = True
    """Append every received frame to `_journal/` before Parquet holds it (crash recovery)."""
    journal_segment_mb: int = 64
    """A journal segment is rotated at this size (and after `roll_seconds`)."""
    dedup_horizon: float = 60.0
    """Seconds of event time before the dataset's newest row within which keys are checked."""
    compact_after: float = 3600.0
    """`ingest compact` treats a date partition as closed this long after its UTC day ended."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """HTTP endpoints; an empty `listen` disables them."""

    listen: str = "127.0.0.1:8787"
    token: str | None = None
    log_interval: float = 30.0
    """Seconds between the one-line-per-stream performance logs (5 s on a terminal)."""


@dataclass(frozen=True, slots=True)
class SimSettings:
    """The embedded simulated source."""

    seed: int = 7
    ticks_per_second: float = 20.0
    """Trades per second per symbol (quotes run at twice that)."""
    symbols_per_stream: int = 5
    """Synthetic symbols for a stream whose symbol list is `["*"]`."""
    news_per_minute: float = 6.0
    start: str | None = None
    """Fix the simulated clock's start (RFC 3339) for reproducible datasets; default: now."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole effective configuration."""

    ingest: IngestSettings = IngestSettings()
    alpaca: AlpacaSettings = AlpacaSettings()
    streams: Mapping[StreamName, StreamSettings] = field(
        default_factory=lambda: {name: _default_stream(name) for name in STREAMS}
    )
    pipeline: PipelineSettings = PipelineSettings()
    storage: StorageSettings = StorageSettings()
    server: ServerSettings = ServerSettings()
    sim: SimSettings = SimSettings()

    def replace(self, **changes: Any) -> Settings:
        """A copy with whole sections replaced."""
        return dataclasses.replace(self, **changes)


def _default_stream(name: StreamName) -> StreamSettings:
    if name == "options":
        return OptionsSettings(
            symbols=DEFAULT_SYMBOLS[name],
            channels=DEFAULT_CHANNELS[name],
            underlyings=DEFAULT_UNDERLYINGS[name],
        )
    return StreamSettings(symbols=DEFAULT_SYMBOLS[name], channels=DEFAULT_CHANNELS[name])


# --- scalar validators -------------------------------------------------------------------------

T = TypeVar("T")


def _fail(key: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"config key {key!r}: {value!r} is invalid; expected {allowed}")


def _str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise _fail(key, value, "a string")
    return value


def _int(key: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, value, f"an integer >= {minimum}")
    return value


def _float(key: str, value: object, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, value, f"a number >= {minimum}")
    number = float(value)
    if not math.isfinite(number) or number < minimum:
        raise _fail(key, value, f"a finite number >= {minimum}")
    return number


def _bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, value, "true or false")
    return value


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(key, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


def _str_list(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(key, value, "a list of non-empty strings")
    return tuple(value)


def _int_list(key: str, value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _fail(key, value, "a list of integers >= 2")
    return tuple(_int(f"{key}[{i}]", v, minimum=2) for i, v in enumerate(value))


def parse_duration(key: str, value: object) -> float:
    """Seconds from a number or a string like `500ms`, `30s`, `1m`, `4h`, `1d`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _float(key, value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if seconds > 0:
            return seconds
    raise _fail(key, value, "a duration such as 500ms, 30s, 1m, 4h or 1d")


def parse_bar_spec(key: str, value: object) -> BarSpec:
    """A `BarSpec` from `time:1m`, `tick:100`, `volume:10000` or `dollar:1000000`."""
    allowed = "'time:<n>{s,m,h,d}', 'tick:<n>', 'volume:<n>' or 'dollar:<n>'"
    if not isinstance(value, str) or value.count(":") != 1:
        raise _fail(key, value, allowed)
    kind, size = value.split(":")
    if kind == "time":
        seconds = parse_duration(key, size) if _DURATION.match(size) else -1.0
        if seconds < 1.0 or seconds > 86400.0 or 86400.0 % seconds:
            raise _fail(key, value, "a time bar of whole seconds dividing a day, e.g. 'time:1m'")
        return BarSpec("time", seconds, size)
    if kind in ("tick", "volume", "dollar"):
        try:
            number = float(size)
        except ValueError:
            number = -1.0
        if not math.isfinite(number) or number <= 0 or (kind == "tick" and number != int(number)):
            raise _fail(key, value, allowed)
        return BarSpec(cast("BarKind", kind), number, size)
    raise _fail(key, value, allowed)


def parse_streams(key: str, value: object) -> tuple[StreamName, ...]:
    """Stream names from a list or a comma-separated string, in canonical order."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise _fail(key, value, "a non-empty subset of " + ",".join(STREAMS))
    chosen = {
        _choice(key, name.strip() if isinstance(name, str) else name, STREAMS) for name in names
    }
    return tuple(name for name in STREAMS if name in chosen)


# --- sections ----------------------------------------------------------------------------------


class _Section:
    """Pops validated keys out of one TOML table and rejects whatever is left."""

    def __init__(self, name: str, raw: object) -> None:
        if not isinstance(raw, dict):
            raise _fail(name, raw, "a table")
        self.name = name
        self._raw: dict[str, object] = dict(raw)

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def take(self, key: str, parse: Callable[[str, object], T], default: T) -> T:
        if key not in self._raw:
            return default
        return parse(self.key(key), self._raw.pop(key))

    def table(self, key: str) -> _Section:
        return _Section(self.key(key), self._raw.pop(key, {}))

    def finish(self, allowed: tuple[str, ...] = ()) -> None:
        for key in self._raw:
            known = ", ".join(allowed) if allowed else "none"
            msg = f"config key {self.key(key)!r} is unknown; known keys here: {known}"
            raise ConfigError(msg)


def _known(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _ingest(raw: _Section) -> IngestSettings:
    d = IngestSettings()
    settings = IngestSettings(
        data_dir=Path(raw.take("data_dir", _str, str(d.data_dir))),
        source=raw.take("source", _choice_of(get_args(SourceName)), d.source),
        streams=raw.take("streams", parse_streams, d.streams),
    )
    raw.finish(("data_dir", "source", "streams"))
    return settings


def _choice_of(choices: tuple[str, ...]) -> Callable[[str, object], Any]:
    return lambda key, value: _choice(key, value, choices)


def _url(schemes: tuple[str, ...]) -> Callable[[str, object], str]:
    def parse(key: str, value: object) -> str:
        text = _str(key, value)
        if not text.startswith(tuple(f"{s}://" for s in schemes)):
            raise _fail(
                key, value, "a URL starting with " + " or ".join(f"{s}://" for s in schemes)
            )
        return text.rstrip("/")

    return parse


def _alpaca(raw: _Section) -> AlpacaSettings:
    d = AlpacaSettings()
    settings = AlpacaSettings(
        feed=raw.take(
            "feed", _choice_of(("iex", "sip", "delayed_sip", "boats", "overnight", "test")), d.feed
        ),
        options_feed=raw.take("options_feed", _choice_of(("indicative", "opra")), d.options_feed),
        crypto_location=raw.take(
            "crypto_location", _choice_of(("us", "us-1", "eu-1")), d.crypto_location
        ),
        stream_url=raw.take("stream_url", _url(("wss", "ws")), d.stream_url),
        data_url=raw.take("data_url", _url(("https", "http")), d.data_url),
        trading_url=raw.take("trading_url", _url(("https", "http")), d.trading_url),
        staleness_seconds=raw.take("staleness_seconds", parse_duration, d.staleness_seconds),
        news_staleness_seconds=raw.take(
            "news_staleness_seconds", parse_duration, d.news_staleness_seconds
        ),
        backoff_initial_seconds=raw.take(
            "backoff_initial_seconds", parse_duration, d.backoff_initial_seconds
        ),
        backoff_max_seconds=raw.take("backoff_max_seconds", parse_duration, d.backoff_max_seconds),
        connection_limit_backoff_seconds=raw.take(
            "connection_limit_backoff_seconds", parse_duration, d.connection_limit_backoff_seconds
        ),
        rest_requests_per_minute=raw.take(
            "rest_requests_per_minute", lambda k, v: _int(k, v, 1), d.rest_requests_per_minute
        ),
        backfill=raw.take("backfill", _bool, d.backfill),
        backfill_max_gap=raw.take("backfill_max_gap", parse_duration, d.backfill_max_gap),
        max_frame_bytes=raw.take(
            "max_frame_bytes", lambda k, v: _int(k, v, 1024), d.max_frame_bytes
        ),
    )
    raw.finish(_known(AlpacaSettings))
    return settings


def _stream(name: StreamName, raw: _Section) -> StreamSettings:
    default = _default_stream(name)
    channels = raw.take("channels", _str_list, default.channels)
    for i, channel in enumerate(channels):
        _choice(f"{raw.key('channels')}[{i}]", channel, CHANNELS[name])
    symbols = raw.take("symbols", _str_list, default.symbols)
    if name == "options":
        assert isinstance(default, OptionsSettings)
        settings: StreamSettings = OptionsSettings(
            symbols=symbols,
            channels=channels,
            underlyings=raw.take("underlyings", _str_list, default.underlyings),
            expiry_days=raw.take("expiry_days", lambda k, v: _int(k, v, 0), default.expiry_days),
            strike_band=raw.take("strike_band", _float, default.strike_band),
        )
        raw.finish(("symbols", "channels", "underlyings", "expiry_days", "strike_band"))
        return settings
    raw.finish(("symbols", "channels"))
    return StreamSettings(symbols=symbols, channels=channels)


def _anomaly(key: str, value: object) -> AnomalySettings:
    raw = _Section(key, value)
    d = AnomalySettings()
    settings = AnomalySettings(
        window=raw.take("window", lambda k, v: _int(k, v, 4), d.window),
        threshold=raw.take("threshold", _float, d.threshold),
        method=raw.take("method", _choice_of(("zscore", "iqr")), d.method),
    )
    raw.finish(_known(AnomalySettings))
    return settings


def _pipeline(raw: _Section) -> PipelineSettings:
    d = PipelineSettings()

    def bars(key: str, value: object) -> tuple[BarSpec, ...]:
        if not isinstance(value, list):
            raise _fail(key, value, "a list of bar specs such as 'time:1m'")
        specs = tuple(parse_bar_spec(f"{key}[{i}]", v) for i, v in enumerate(value))
        if len({(s.kind, s.size) for s in specs}) != len(specs):
            raise _fail(key, value, "bar specs without duplicates")
        return specs

    def window(key: str, value: object) -> int:
        return _int(key, value, minimum=2)

    settings = PipelineSettings(
        bars=raw.take("bars", bars, d.bars),
        sma=raw.take("sma", _int_list, d.sma),
        ema=raw.take("ema", _int_list, d.ema),
        rsi=raw.take("rsi", window, d.rsi),
        volatility=raw.take("volatility", window, d.volatility),
        momentum=raw.take("momentum", lambda k, v: _int(k, v, 1), d.momentum),
        zscore=raw.take("zscore", window, d.zscore),
        anomaly=raw.take("anomaly", _anomaly, d.anomaly),
        warmup=raw.take("warmup", _bool, d.warmup),
        correction_window=raw.take(
            "correction_window", lambda k, v: _int(k, v, 0), d.correction_window
        ),
    )
    raw.finish(_known(PipelineSettings))
    return settings


def _storage(raw: _Section) -> StorageSettings:
    d = StorageSettings()
    settings = StorageSettings(
        roll_rows=raw.take("roll_rows", lambda k, v: _int(k, v, 1), d.roll_rows),
        roll_seconds=raw.take("roll_seconds", parse_duration, d.roll_seconds),
        compression=raw.take(
            "compression",
            _choice_of(("zstd", "snappy", "gzip", "lz4", "none")),
            d.compression,
        ),
        fsync=raw.take("fsync", _choice_of(get_args(FsyncPolicy)), d.fsync),
        fsync_interval_ms=raw.take(
            "fsync_interval_ms", lambda k, v: _int(k, v, 1), d.fsync_interval_ms
        ),
        queue_size=raw.take("queue_size", lambda k, v: _int(k, v, 1), d.queue_size),
        backpressure=raw.take(
            "backpressure", _choice_of(get_args(BackpressurePolicy)), d.backpressure
        ),
        journal=raw.take("journal", _bool, d.journal),
        journal_segment_mb=raw.take(
            "journal_segment_mb", lambda k, v: _int(k, v, 1), d.journal_segment_mb
        ),
        dedup_horizon=raw.take("dedup_horizon", parse_duration, d.dedup_horizon),
        compact_after=raw.take("compact_after", parse_duration, d.compact_after),
    )
    raw.finish(_known(StorageSettings))
    return settings


def _server(raw: _Section) -> ServerSettings:
    def listen(key: str, value: object) -> str:
        text = _str(key, value)
        host, _, port = text.rpartition(":")
        if text and (not host or not port.isdigit() or not 0 < int(port) < 65536):
            raise _fail(key, value, "'host:port' such as '127.0.0.1:8787', or '' to disable")
        return text

    d = ServerSettings()
    settings = ServerSettings(
        listen=raw.take("listen", listen, d.listen),
        token=raw.take("token", lambda k, v: _str(k, v) or None, d.token),
        log_interval=raw.take("log_interval", parse_duration, d.log_interval),
    )
    raw.finish(_known(ServerSettings))
    return settings


def _sim(raw: _Section) -> SimSettings:
    d = SimSettings()
    settings = SimSettings(
        seed=raw.take("seed", _int, d.seed),
        ticks_per_second=raw.take("ticks_per_second", _float, d.ticks_per_second),
        symbols_per_stream=raw.take(
            "symbols_per_stream", lambda k, v: _int(k, v, 1), d.symbols_per_stream
        ),
        news_per_minute=raw.take("news_per_minute", _float, d.news_per_minute),
        start=raw.take("start", _rfc3339, d.start),
    )
    raw.finish(_known(SimSettings))
    return settings


def _rfc3339(key: str, value: object) -> str:
    from datetime import datetime

    text = _str(key, value)
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(key, value, "an RFC 3339 time such as '2024-07-01T13:30:00Z'") from None
    return text


def settings_from_mapping(raw: Mapping[str, object]) -> Settings:
    """Validate a parsed TOML document into `Settings`."""
    top = _Section("", dict(raw))
    ingest = _ingest(top.table("ingest"))
    alpaca = _alpaca(top.table("alpaca"))
    streams_raw = top.table("streams")
    streams = {name: _stream(name, streams_raw.table(name)) for name in STREAMS}
    streams_raw.finish(STREAMS)
    settings = Settings(
        ingest=ingest,
        alpaca=alpaca,
        streams=streams,
        pipeline=_pipeline(top.table("pipeline")),
        storage=_storage(top.table("storage")),
        server=_server(top.table("server")),
        sim=_sim(top.table("sim")),
    )
    top.finish(("ingest", "alpaca", "streams", "pipeline", "storage", "server", "sim"))
    check_streams(settings)
    return settings


def check_streams(settings: Settings) -> None:
    """Every enabled stream must have something to subscribe to."""
    for name in settings.ingest.streams:
        stream = settings.streams[name]
        underlyings = stream.underlyings if isinstance(stream, OptionsSettings) else ()
        if not stream.symbols and not underlyings:
            what = "symbols or underlyings" if name == "options" else "symbols"
            msg = (
                f"config key 'streams.{name}.symbols': [] is invalid; "
                f"the enabled stream {name!r} needs {what}"
            )
            raise ConfigError(msg)
        if not stream.channels:
            msg = (
                f"config key 'streams.{name}.channels': [] is invalid; "
                f"the enabled stream {name!r} needs at least one of {', '.join(CHANNELS[name])}"
            )
            raise ConfigError(msg)


def parse_shard(key: str, value: object) -> tuple[int, int]:
    """`i/n` or `i-n` (systemd instance names cannot hold `/`) with 0 <= i < n."""
    text = _str(key, value)
    match = re.fullmatch(r"(\d+)[/-](\d+)", text.strip())
    if match is None or not int(match.group(1)) < int(match.group(2)):
        raise _fail(key, value, "'i/n' (or 'i-n') with 0 <= i < n, e.g. '0/4'")
    return int(match.group(1)), int(match.group(2))


def shard_of(symbol: str, count: int) -> int:
    """The shard a symbol belongs to: a hash that is stable across processes and machines."""
    return zlib.crc32(symbol.encode()) % count


def shard_settings(settings: Settings) -> Settings:
    """Keep only this shard's symbols (and option underlyings); wildcards stay on shard 0."""
    index, count = settings.ingest.shard
    if count == 1:
        return settings

    def mine(symbols: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(
            s
            for s in symbols
            if (s == "*" and index == 0) or (s != "*" and shard_of(s, count) == index)
        )

    streams: dict[StreamName, StreamSettings] = {}
    for name, stream in settings.streams.items():
        if isinstance(stream, OptionsSettings):
            streams[name] = dataclasses.replace(
                stream, symbols=mine(stream.symbols), underlyings=mine(stream.underlyings)
            )
        else:
            streams[name] = dataclasses.replace(stream, symbols=mine(stream.symbols))
    enabled = tuple(
        name
        for name in settings.ingest.streams
        if streams[name].symbols or getattr(streams[name], "underlyings", ())
    )
    ingest = dataclasses.replace(settings.ingest, streams=enabled)
    return settings.replace(streams=streams, ingest=ingest)


def load_settings(path: Path | None) -> Settings:
    """Read and validate a TOML file; `None` gives the defaults."""
    if path is None:
        return settings_from_mapping({})
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"config file {str(path)!r} cannot be read: {exc.strerror}"
        raise ConfigError(msg) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"config file {str(path)!r} is not valid TOML: {exc}"
        raise ConfigError(msg) from None
    return settings_from_mapping(raw)
