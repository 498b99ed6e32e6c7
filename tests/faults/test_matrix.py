"""The fault matrix: each fault against a scripted session with known content, exactly once.

Every row scripts the fake with content in three parts: A is sent live, B is published while the
daemon cannot receive it (dropped, cut, silent, refused, down), C is sent live after the daemon
is back. Afterwards every table holds A + B + C exactly once (`missing_and_extra`): B came back
through the REST back-fill, and its overlap with A and C was dropped. The results, with the
times, are in docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal

from tests.alpaca.fake_alpaca import (
    CutFrame,
    Drop,
    FakeAlpaca,
    Publish,
    Send,
    SendRaw,
    Session,
    Silence,
)
from tests.faults.content import Content, missing_and_extra
from tests.faults.harness import PATHS, Outcome, daemon_settings, run_scenario
from tests.faults.slowdisk import slow_disk
from tests.faults.smallsocket import small_receive_buffer
from tests.storage.daemon import Daemon, journaled_trades

if TYPE_CHECKING:
    from pathlib import Path

    from ingest.config import StreamName
    from ingest.metrics import Metrics

Message = dict[str, Any]


def expected_rows(stream: StreamName, messages: list[Message]) -> dict[tuple[StreamName, str], int]:
    tables = {"t": "trades", "q": "quotes", "b": "vendor_bars", "n": "articles"}
    rows: dict[tuple[StreamName, str], int] = {}
    for message in messages:
        key = (stream, tables[message["T"]])
        rows[key] = rows.get(key, 0) + 1
    return rows


def assert_exactly_once(root: Path, stream: StreamName, sent: list[Message]) -> None:
    report = missing_and_extra(root, stream, sent)
    assert report, "nothing to compare"
    problems = {t: r for t, r in report.items() if r[1] or r[2]}
    assert not problems, f"(expected, missing, extra) per table: {problems}"


def backfilled_rows(outcome: Outcome, stream: str) -> int:
    return int(sum(v for (s, _), v in outcome.metrics.backfilled.values.items() if s == stream))


def three_parts(stream: StreamName, n: int = 12) -> tuple[list[Message], ...]:
    content = Content()
    make = getattr(content, stream)
    return make(n), make(n), make(n)


def run(settings: Any, script: Any, expected: Any, **kw: Any) -> Outcome:
    result: Outcome = anyio.run(lambda: run_scenario(settings, script, expected, **kw))
    return result


class TestConnectionFaults:
    def test_connection_drop(self, tmp_path: Path) -> None:
        """Drop: B, published after the drop, is back-filled; A, B, C once each."""
        a, b, c = three_parts("stocks")

        def script(fake: FakeAlpaca) -> None:
            fake.script(
                PATHS["stocks"],
                Session(steps=[Send([a]), Publish(b), Drop()]),
                Session(steps=[Send([c])]),
            )

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)), script, expected_rows("stocks", a + b + c)
        )
        assert_exactly_once(tmp_path, "stocks", a + b + c)
        assert backfilled_rows(outcome, "stocks") == len(b)
        assert outcome.metrics.reconnects.get("stocks") == 1

    def test_connection_drop_mid_frame(self, tmp_path: Path) -> None:
        """A frame cut in half by the drop is lost on the wire and recovered from REST."""
        a, b, c = three_parts("stocks")

        def script(fake: FakeAlpaca) -> None:
            fake.script(
                PATHS["stocks"],
                Session(steps=[Send([a]), CutFrame(b)]),
                Session(steps=[Send([c])]),
            )

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)), script, expected_rows("stocks", a + b + c)
        )
        assert_exactly_once(tmp_path, "stocks", a + b + c)
        assert backfilled_rows(outcome, "stocks") == len(b)

    def test_silent_socket(self, tmp_path: Path) -> None:
        """A silent socket trips the staleness watchdog; the silence is back-filled."""
        a, b, c = three_parts("stocks")

        def script(fake: FakeAlpaca) -> None:
            fake.script(
                PATHS["stocks"],
                Session(steps=[Send([a]), Publish(b), Silence()]),
                Session(steps=[Send([c])]),
            )

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)),
            script,
            expected_rows("stocks", a + b + c),
            alpaca={"staleness_seconds": 0.5},
        )
        assert_exactly_once(tmp_path, "stocks", a + b + c)
        assert outcome.events("feed_went_stale")
        assert backfilled_rows(outcome, "stocks") == len(b)

    def test_connection_limit_406(self, tmp_path: Path) -> None:
        """A reconnect refused with 406 waits the long back-off; the gap is filled afterwards."""
        a, b, c = three_parts("stocks")

        def script(fake: FakeAlpaca) -> None:
            fake.script(
                PATHS["stocks"],
                Session(steps=[Send([a]), Drop()]),
                Session(auth_error=(406, "connection limit exceeded"), before=b),
                Session(steps=[Send([c])]),
            )

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)),
            script,
            expected_rows("stocks", a + b + c),
            alpaca={"connection_limit_backoff_seconds": 0.3},
        )
        assert_exactly_once(tmp_path, "stocks", a + b + c)
        assert outcome.fake is not None
        assert max(outcome.fake.max_active.values()) == 1
        assert any("406" in e.get("reason", "") for e in outcome.events("reconnect_scheduled"))

    def test_server_restart(self, tmp_path: Path) -> None:
        """The server goes away and comes back on the same port; what it published is filled."""
        a, b, c = three_parts("stocks")

        def script(fake: FakeAlpaca) -> None:
            fake.script(
                PATHS["stocks"], Session(steps=[Send([a]), Silence()]), Session(steps=[Send([c])])
            )

        async def restart(fake: FakeAlpaca, metrics: Metrics) -> None:
            while metrics.messages.get("stocks", "trades") < 4:  # noqa: ASYNC110 -- test probe
                await anyio.sleep(0.05)
            await fake.restart(down_seconds=0.5, published={"stocks": b})

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)),
            script,
            expected_rows("stocks", a + b + c),
            during=restart,
        )
        assert_exactly_once(tmp_path, "stocks", a + b + c)
        assert backfilled_rows(outcome, "stocks") == len(b)


class TestRestFaults:
    def test_rest_429(self, tmp_path: Path) -> None:
        """The back-fill's REST requests meet 429s: it waits them out and still fills the gap."""
        a, b, c = three_parts("stocks")

        def script(fake: FakeAlpaca) -> None:
            fake.history.throttle = 3
            fake.history.retry_after = "0.2"
            fake.script(
                PATHS["stocks"],
                Session(steps=[Send([a]), Publish(b), Drop()]),
                Session(steps=[Send([c])]),
            )

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)), script, expected_rows("stocks", a + b + c)
        )
        assert_exactly_once(tmp_path, "stocks", a + b + c)
        assert len(outcome.events("history_retry_scheduled")) == 3
        assert outcome.fake is not None
        assert outcome.fake.history.throttle == 0


def bad_trade(**fields: Any) -> bytes:
    """A stock trade frame with `fields` changed (a key set to None is left out)."""
    trade = {"T": "t", "S": "AAPL", "i": 7, "x": "V", "p": 1, "s": 1, "t": "2024-07-01T14:30:00Z"}
    trade.update(fields)
    return json.dumps([{k: v for k, v in trade.items() if v is not None}]).encode()


BAD_FRAMES = {
    "malformed_frame": b'[{"T":"t","S":"AAPL",',
    "unknown_type": bad_trade(T="zz"),
    "missing_field": bad_trade(i=None),
    "wrong_type": bad_trade(i="one"),
    "bad_value": bad_trade(p=-1),
    "absurd_timestamp": bad_trade(t="1971-01-01T00:00:00Z"),
    "bad_timestamp": bad_trade(t="2024-07-01T25:61:00Z"),
    "oversized_frame": b"[" + b" " * 5000 + b"]",
}


class TestBadInput:
    def test_malformed_frames_of_each_kind(self, tmp_path: Path) -> None:
        """One bad frame of each kind between good ones: each quarantined with its reason."""
        a, _, c = three_parts("stocks")

        def script(fake: FakeAlpaca) -> None:
            steps: list[Any] = [Send([a])]
            steps += [SendRaw(frame) for frame in BAD_FRAMES.values()]
            fake.script(PATHS["stocks"], Session(steps=[*steps, Send([c])]))

        outcome = run(
            daemon_settings(tmp_path, ("stocks",)),
            script,
            expected_rows("stocks", a + c),
            alpaca={"max_frame_bytes": 4096},
        )
        assert_exactly_once(tmp_path, "stocks", a + c)
        counted = {reason: v for (_, reason), v in outcome.metrics.quarantined.values.items()}
        assert counted == dict.fromkeys(BAD_FRAMES, 1.0)
        lines = [
            json.loads(line)
            for path in (tmp_path / "_quarantine").glob("**/*.jsonl")
            for line in path.read_text().splitlines()
        ]
        assert sorted(line["reason"] for line in lines) == sorted(BAD_FRAMES)
        raw = {line["reason"]: line.get("raw", "") for line in lines}
        assert raw["malformed_frame"] == BAD_FRAMES["malformed_frame"].decode()


class TestBackpressure:
    def test_slow_disk_block_policy(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Slow disk, block policy: the stalled reader gets dropped as a slow client.

        The server drops a client whose socket has not taken a frame for 0.3 s (on small
        socket buffers, as on a real link); the reconnect's back-fill recovers what the
        server published meanwhile, so every message still lands exactly once.
        """
        slow_disk(monkeypatch, 0.6)
        small_receive_buffer(monkeypatch, 64 * 1024)
        content = Content()
        # More than the router holds pending (65,536) plus the writer's bound, so the reader stalls.
        a = content.stocks(90_000, kinds=1)
        c = content.stocks(300)

        def script(fake: FakeAlpaca) -> None:
            fake.slow_client_seconds = 0.3
            frames = [a[k : k + 500] for k in range(0, len(a), 500)]
            fake.script(PATHS["stocks"], Session(steps=[Send(frames)]), Session(steps=[Send([c])]))

        settings = daemon_settings(
            tmp_path, ("stocks",), queue_size=4, fsync="never", roll_rows=2500
        )
        outcome = run(settings, script, expected_rows("stocks", a + c), limit=90)
        assert outcome.fake is not None
        assert outcome.fake.slow_clients == 1
        assert_exactly_once(tmp_path, "stocks", a + c)
        assert outcome.metrics.source_blocked.get("stocks") > 0.3
        assert outcome.metrics.dropped.get("stocks") == 0
        assert backfilled_rows(outcome, "stocks") > 0


class TestOtherStreams:
    @pytest.mark.parametrize("stream", ["crypto", "options", "news"])
    def test_drop_is_backfilled(self, tmp_path: Path, stream: StreamName) -> None:
        """Crypto, option trades and news: a drop's gap comes back from their REST history."""
        a, b, c = three_parts(stream, n=6)

        def script(fake: FakeAlpaca) -> None:
            fake.script(
                PATHS[stream],
                Session(steps=[Send([a]), Publish(b), Drop()]),
                Session(steps=[Send([c])]),
            )

        outcome = run(
            daemon_settings(tmp_path, (stream,)), script, expected_rows(stream, a + b + c)
        )
        assert_exactly_once(tmp_path, stream, a + b + c)
        assert backfilled_rows(outcome, stream) == len(b)


class TestDaemonRestart:
    def test_restart_backfills_from_the_persisted_dataset(self, tmp_path: Path) -> None:
        """A clean stop, then a new daemon: the gap since the last persisted row is filled."""
        a, b, c = three_parts("stocks")

        def first(fake: FakeAlpaca) -> None:
            fake.script(PATHS["stocks"], Session(steps=[Send([a])]))

        settings = daemon_settings(tmp_path, ("stocks",))
        run(settings, first, expected_rows("stocks", a))
        fake = FakeAlpaca()
        fake.history.publish("stocks", a)

        def second(fake: FakeAlpaca) -> None:
            fake.script(PATHS["stocks"], Session(steps=[Send([c])], before=b))

        outcome = run(settings, second, expected_rows("stocks", b + c), fake=fake)
        assert_exactly_once(tmp_path, "stocks", a + b + c)
        assert backfilled_rows(outcome, "stocks") == len(b)


def alpaca_config(tmp_path: Path, fake: FakeAlpaca) -> Path:
    """A config for `ingest run` on the Alpaca source pointed at the fake."""
    path = tmp_path / "config.toml"
    path.write_text(
        f'[ingest]\ndata_dir = "{tmp_path / "data"}"\nsource = "alpaca"\nstreams = ["stocks"]\n'
        f'[alpaca]\nstream_url = "{fake.ws_url}"\ndata_url = "{fake.http_url}"\n'
        f'trading_url = "{fake.http_url}"\nstaleness_seconds = "10s"\n'
        'backoff_initial_seconds = "10ms"\nbackoff_max_seconds = "50ms"\n'
        "rest_requests_per_minute = 60000\n"
        '[streams.stocks]\nsymbols = ["AAPL", "MSFT"]\nchannels = ["trades", "quotes", "bars"]\n'
        '[pipeline]\nbars = ["time:1m"]\n'
        '[server]\nlisten = ""\n'
        '[storage]\nroll_seconds = "1h"\n'
    )
    return path


class TestDaemonKill:
    def test_sigkill_and_restart(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """SIGKILL, then a restart: each of A, B, C once.

        A is only in the journal when the daemon is killed; B is published while it is down.
        The restart recovers A from the journal, back-fills B from REST and takes C live.
        """
        a, b, c = three_parts("stocks")
        data = tmp_path / "data"
        with start_blocking_portal() as portal:
            fake = FakeAlpaca()
            portal.call(fake.start)
            try:
                monkeypatch.setenv("APCA_API_KEY_ID", fake.key)
                monkeypatch.setenv("APCA_API_SECRET_KEY", fake.secret)
                config = alpaca_config(tmp_path, fake)
                fake.script(PATHS["stocks"], Session(steps=[Send([a]), Silence()]))
                first = Daemon(tmp_path / "first.log", "run", "--config", str(config))
                ids = {("stocks", m["S"], m["i"]) for m in a if m["T"] == "t"}
                deadline = time.monotonic() + 30
                while not ids <= journaled_trades(data) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert ids <= journaled_trades(data), "A never reached the journal"
                first.kill()
                assert not any(data.glob("stocks/trades/**/*.parquet")), "A was sealed already"
                portal.call(fake.history.publish, "stocks", b)
                fake.script(PATHS["stocks"], Session(steps=[Send([c])]))
                second = Daemon(
                    tmp_path / "second.log", "run", "--config", str(config), "--duration", "4"
                )
                assert second.wait(timeout=60) == 0
            finally:
                portal.call(fake.stop)
        stopped = [e for e in second.events() if e.get("event") == "daemon_stopped"]
        assert stopped
        assert stopped[0]["recovered_frames"] >= 1
        filled = [e for e in second.events() if e.get("event") == "gap_backfilled"]
        assert filled
        assert filled[0]["rows"] == len(b)
        assert_exactly_once(data, "stocks", a + b + c)
