"""Configuration: defaults, the shipped file, and one clear error per kind of mistake."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ingest.config import STREAMS, BarSpec, load_settings, settings_from_mapping
from ingest.errors import ConfigError

ROOT = Path(__file__).parent.parent


class TestDefaults:
    def test_empty_config_gives_all_four_streams_on_sim(self) -> None:
        """Every key is optional: an empty document runs the sim source with every stream."""
        settings = settings_from_mapping({})
        assert settings.ingest.source == "sim"
        assert settings.ingest.streams == STREAMS
        assert settings.pipeline.bars[0] == BarSpec("time", 60.0, "1m")

    def test_shipped_config_loads(self) -> None:
        """The config.toml in the repository is valid and runs the sim source."""
        settings = load_settings(ROOT / "config.toml")
        assert settings.ingest.source == "sim"
        assert settings.ingest.streams == STREAMS
        assert [s.label for s in settings.pipeline.bars] == ["1m", "100", "10000", "1000000"]

    def test_durations_accept_units(self) -> None:
        """Durations are numbers of seconds or strings with a unit."""
        settings = settings_from_mapping({"storage": {"roll_seconds": "2m"}})
        assert settings.storage.roll_seconds == 120.0

    def test_fault_handling_keys(self) -> None:
        """Back-fill, warm-up, frame cap and correction window take their documented forms."""
        settings = settings_from_mapping(
            {
                "alpaca": {"backfill": False, "backfill_max_gap": "6h", "max_frame_bytes": 65536},
                "pipeline": {"warmup": False, "correction_window": 500},
            }
        )
        assert (settings.alpaca.backfill, settings.alpaca.backfill_max_gap) == (False, 21600.0)
        assert settings.alpaca.max_frame_bytes == 65536
        assert (settings.pipeline.warmup, settings.pipeline.correction_window) == (False, 500)

    def test_performance_log_interval(self) -> None:
        """The periodic performance line's interval is a duration under [server]."""
        settings = settings_from_mapping({"server": {"log_interval": "10s"}})
        assert settings.server.log_interval == 10.0

    def test_storage_durability_keys(self) -> None:
        """The journal, its segments, the de-duplication horizon and compaction's age."""
        default = settings_from_mapping({}).storage
        assert (default.journal, default.fsync, default.journal_segment_mb) == (True, "batch", 64)
        assert (default.dedup_horizon, default.compact_after) == (60.0, 3600.0)
        settings = settings_from_mapping(
            {
                "storage": {
                    "journal": False,
                    "fsync": "interval",
                    "fsync_interval_ms": 50,
                    "journal_segment_mb": 8,
                    "dedup_horizon": "5m",
                    "compact_after": "2h",
                }
            }
        ).storage
        assert (settings.journal, settings.fsync, settings.fsync_interval_ms) == (
            False,
            "interval",
            50,
        )
        assert (settings.journal_segment_mb, settings.dedup_horizon) == (8, 300.0)
        assert settings.compact_after == 7200.0

    def test_time_bar_sizes(self) -> None:
        """Time bars take s, m, h and d sizes."""
        settings = settings_from_mapping({"pipeline": {"bars": ["time:5s", "time:1h", "time:1d"]}})
        assert [s.size for s in settings.pipeline.bars] == [5.0, 3600.0, 86400.0]


BAD: list[Any] = [
    pytest.param({"nope": 1}, "config key 'nope' is unknown", id="unknown-section"),
    pytest.param({"ingest": {"colour": "red"}}, "'ingest.colour' is unknown", id="unknown-key"),
    pytest.param(
        {"pipeline": {"anomaly": {"windw": 3}}},
        "'pipeline.anomaly.windw' is unknown",
        id="unknown-nested-key",
    ),
    pytest.param({"streams": {"forex": {}}}, "'streams.forex' is unknown", id="unknown-stream"),
    pytest.param(
        {"storage": {"roll_rows": "many"}}, "'storage.roll_rows': 'many' is invalid", id="type"
    ),
    pytest.param(
        {"streams": {"stocks": {"symbols": []}}},
        "'streams.stocks.symbols': [] is invalid",
        id="empty-symbols",
    ),
    pytest.param(
        {"storage": {"roll_seconds": "1x"}},
        "'storage.roll_seconds': '1x' is invalid; expected a duration",
        id="bad-duration",
    ),
    pytest.param(
        {"pipeline": {"bars": ["time:1m", "renko:5"]}},
        "'pipeline.bars[1]': 'renko:5' is invalid",
        id="unknown-bar-type",
    ),
    pytest.param(
        {"pipeline": {"bars": ["time:7m"]}},
        "'pipeline.bars[0]': 'time:7m' is invalid",
        id="time-bar-not-dividing-a-day",
    ),
    pytest.param(
        {"ingest": {"streams": ["stocks", "fx"]}},
        "'ingest.streams': 'fx' is invalid",
        id="unknown-stream-name",
    ),
    pytest.param(
        {"ingest": {"source": "bloomberg"}}, "'ingest.source': 'bloomberg'", id="bad-source"
    ),
    pytest.param(
        {"streams": {"crypto": {"channels": ["lulds"]}}},
        "'streams.crypto.channels[0]': 'lulds' is invalid",
        id="channel-of-other-stream",
    ),
    pytest.param({"pipeline": {"sma": [5, 1]}}, "'pipeline.sma[1]': 1 is invalid", id="window"),
    pytest.param(
        {"alpaca": {"stream_url": "http://x"}}, "'alpaca.stream_url'", id="stream-url-scheme"
    ),
    pytest.param({"server": {"listen": "nowhere"}}, "'server.listen'", id="listen"),
    pytest.param(
        {"alpaca": {"max_frame_bytes": 10}},
        "'alpaca.max_frame_bytes': 10 is invalid; expected an integer >= 1024",
        id="max-frame-bytes",
    ),
    pytest.param(
        {"pipeline": {"correction_window": -1}},
        "'pipeline.correction_window': -1 is invalid; expected an integer >= 0",
        id="correction-window",
    ),
    pytest.param(
        {"pipeline": {"warmup": "yes"}},
        "'pipeline.warmup': 'yes' is invalid; expected true or false",
        id="warmup",
    ),
    pytest.param(
        {"alpaca": {"backfill": 1}},
        "'alpaca.backfill': 1 is invalid; expected true or false",
        id="backfill",
    ),
    pytest.param(
        {"alpaca": {"backfill_max_gap": "1x"}},
        "'alpaca.backfill_max_gap': '1x' is invalid; expected a duration",
        id="backfill-max-gap",
    ),
    pytest.param(
        {"alpaca": {"rest_requests_per_minute": 0}},
        "'alpaca.rest_requests_per_minute': 0 is invalid; expected an integer >= 1",
        id="rest-rate",
    ),
    pytest.param(
        {"storage": {"journal": "yes"}},
        "'storage.journal': 'yes' is invalid; expected true or false",
        id="journal",
    ),
    pytest.param(
        {"storage": {"journal_segment_mb": 0}},
        "'storage.journal_segment_mb': 0 is invalid",
        id="journal-segment",
    ),
    pytest.param(
        {"storage": {"dedup_horizon": "soon"}},
        "'storage.dedup_horizon': 'soon' is invalid; expected a duration",
        id="dedup-horizon",
    ),
    pytest.param(
        {"storage": {"compact_after": "1y"}},
        "'storage.compact_after': '1y' is invalid; expected a duration",
        id="compact-after",
    ),
    pytest.param(
        {"storage": {"fsync": "always"}}, "'storage.fsync': 'always' is invalid", id="fsync"
    ),
    pytest.param(
        {"storage": {"fsync_interval_ms": 0}},
        "'storage.fsync_interval_ms': 0 is invalid",
        id="fsync-interval",
    ),
]


class TestErrors:
    @pytest.mark.parametrize(("raw", "message"), BAD)
    def test_error_names_the_key(self, raw: dict[str, Any], message: str) -> None:
        """Each mistake raises ConfigError naming the key and the bad value."""
        with pytest.raises(ConfigError, match=re.escape(message)):
            settings_from_mapping(raw)

    def test_disabled_stream_may_have_no_symbols(self) -> None:
        """An empty symbol list is only an error for an enabled stream."""
        settings = settings_from_mapping(
            {"ingest": {"streams": ["crypto"]}, "streams": {"stocks": {"symbols": []}}}
        )
        assert settings.ingest.streams == ("crypto",)

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """A file that is not TOML is a config error naming the file."""
        path = tmp_path / "bad.toml"
        path.write_text("[ingest\n")
        with pytest.raises(ConfigError, match="is not valid TOML"):
            load_settings(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config path that does not exist is a config error naming the file."""
        with pytest.raises(ConfigError, match="cannot be read"):
            load_settings(tmp_path / "absent.toml")
