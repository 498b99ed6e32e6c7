"""The embedded simulated source: a deterministic (seeded) feed for all four stream types.

It speaks Alpaca's wire format: each step builds a JSON frame of the same message shapes Alpaca
sends (geometric-Brownian trades and quotes for stocks and crypto, minute bars when a minute rolls
over, option trades and quotes on OCC contracts around a simulated underlying, news now and then)
and hands the bytes to the same `FrameDecoder` a live connection uses. So everything after the
source cannot tell it from the live feed. Content depends only on the seed and the simulated
clock's start; pacing follows the wall clock.
"""

from __future__ import annotations

import itertools
import math
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from ingest.config import OptionsSettings, Settings, StreamName
from streams.base import Frame, FrameSink
from streams.messages import FrameDecoder
from streams.occ import format_occ

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from anyio.abc import TaskStatus

__all__ = ["SimSource", "rfc3339"]

STEP_SECONDS: Final = 0.05
_NS: Final = 1_000_000_000
_EXCHANGES: Final = ("V", "P", "K", "Q", "Z", "N", "D")
_HEADLINES: Final = (
    "{s} shares move after analyst update",
    "{s} announces quarterly dividend",
    "{s} files 8-K with the SEC",
    "Options traders eye {s} ahead of earnings",
    "{s} unveils new product line",
)


def rfc3339(ns: int) -> str:
    """UTC nanoseconds as Alpaca writes them: `2024-03-12T10:27:48.858228144Z`."""
    seconds, nanos = divmod(ns, _NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


@dataclass(slots=True)
class _Instrument:
    """One simulated price path and its message bookkeeping."""

    symbol: str
    price: float
    volatility: float
    trade_rate: float
    next_id: int = 1
    minute: int = -1
    bar: list[float] = field(default_factory=list)  # o, h, l, c, v, n, notional

    def step(self, rng: random.Random, dt: float) -> None:
        shock = rng.gauss(0.0, 1.0)
        self.price *= math.exp(
            -0.5 * self.volatility**2 * dt + self.volatility * math.sqrt(dt) * shock
        )


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


class SimSource:
    """Simulated Alpaca frames for the enabled streams."""

    name = "sim"

    def __init__(self, settings: Settings, streams: tuple[StreamName, ...]) -> None:
        self._settings = settings
        self._streams = streams
        sim = settings.sim
        start = datetime.fromisoformat(sim.start.replace("Z", "+00:00")) if sim.start else None
        self._t0 = int(start.timestamp()) * _NS if start else time.time_ns()
        self.emitted: Counter[tuple[StreamName, str]] = Counter()
        """Data messages sent, per (stream, message type tag): what the dataset must hold."""
        self._encoder = msgspec.json.Encoder()

    def _symbols(self, stream: StreamName) -> list[str]:
        configured = [s for s in self._settings.streams[stream].symbols if s != "*"]
        if configured:
            return configured
        count = self._settings.sim.symbols_per_stream
        if stream == "crypto":
            return [f"SIM{i}/USD" for i in range(count)]
        return [f"SIM{i:02d}" for i in range(count)]

    async def run(
        self, sinks: Mapping[StreamName, FrameSink], *, task_status: TaskStatus[None]
    ) -> None:
        """Emit frames in simulated real time until cancelled."""
        wall0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            for stream in self._streams:
                tg.start_soon(self._run_stream, stream, sinks[stream], wall0)
            task_status.started()

    async def _run_stream(self, stream: StreamName, sink: FrameSink, wall0: float) -> None:
        decoder = FrameDecoder(stream)
        for step, messages in self.frames(stream):
            await anyio.sleep(max(0.0, wall0 + step * STEP_SECONDS - time.monotonic()))
            if not messages:
                continue
            for message in messages:
                self.emitted[(stream, message["T"])] += 1
            payload = self._encoder.encode(messages)
            recv_ns = time.time_ns()
            decoded = decoder.decode(payload, recv_ns)
            await sink(Frame(stream, recv_ns, decoded.messages, decoded.rejects, payload))

    def frames(self, stream: StreamName) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(step, messages) forever: the content, independent of pacing; same seed, same frames."""
        rng = random.Random(_seed(self._settings.sim.seed, stream))
        make = self._news_step if stream == "news" else self._market_step
        state = self._instruments(stream, rng)
        for step in itertools.count(1):
            now = self._t0 + int(step * STEP_SECONDS * _NS)
            yield step, make(stream, state, rng, now)

    # --- instruments ---------------------------------------------------------------------------

    def _instruments(self, stream: StreamName, rng: random.Random) -> list[_Instrument]:
        rate = self._settings.sim.ticks_per_second
        if stream == "news":
            return []
        if stream == "options":
            return self._contracts(rng, rate)
        base = 30_000.0 if stream == "crypto" else 50.0
        return [
            _Instrument(
                symbol,
                price=base * (1 + _seed(symbol) % 400 / 40.0),
                volatility=0.8 if stream == "crypto" else 0.3,
                trade_rate=rate,
            )
            for symbol in self._symbols(stream)
        ]

    def _contracts(self, rng: random.Random, rate: float) -> list[_Instrument]:
        options = self._settings.streams["options"]
        assert isinstance(options, OptionsSettings)
        today = datetime.fromtimestamp(self._t0 / _NS, UTC).date()
        expiry = today + timedelta(days=(4 - today.weekday()) % 7 + 7)
        contracts: list[_Instrument] = []
        for underlying in options.underlyings:
            spot = 50.0 * (1 + _seed(underlying) % 400 / 40.0)
            step = 5.0 if spot > 100 else 1.0
            atm = round(spot / step) * step
            for k in range(-2, 3):
                strike = atm + k * step
                for right in ("C", "P"):
                    symbol = format_occ(underlying, expiry, right, strike)
                    contracts.append(self._option(symbol, spot, strike, right, expiry, rate))
        for symbol in options.symbols:
            contracts.append(_Instrument(symbol, 2.0 + rng.random(), 0.6, rate / 5))
        return contracts

    def _option(
        self, symbol: str, spot: float, strike: float, right: str, expiry: date, rate: float
    ) -> _Instrument:
        years = max((expiry - datetime.fromtimestamp(self._t0 / _NS, UTC).date()).days, 1) / 365
        intrinsic = max(0.0, spot - strike) if right == "C" else max(0.0, strike - spot)
        premium = intrinsic + 0.4 * spot * 0.3 * math.sqrt(years)
        return _Instrument(symbol, round(premium, 2), 0.6, rate / 5)

    # --- frames --------------------------------------------------------------------------------

    def _market_step(
        self, stream: StreamName, state: list[_Instrument], rng: random.Random, now: int
    ) -> list[dict[str, Any]]:
        channels = self._settings.streams[stream].channels
        messages: list[dict[str, Any]] = []
        for inst in state:
            inst.step(rng, STEP_SECONDS / 23_400)
            minute = now // (60 * _NS)
            if inst.bar and minute != inst.minute and "bars" in channels:
                messages.append(self._minute_bar(inst))
            if minute != inst.minute:
                inst.minute, inst.bar = minute, []
            trades = _poisson(rng, inst.trade_rate * STEP_SECONDS)
            if "quotes" in channels and rng.random() < min(1.0, 2 * inst.trade_rate * STEP_SECONDS):
                messages.append(self._quote(stream, inst, rng, now))
            for _ in range(trades if "trades" in channels else 0):
                ts = now - rng.randrange(int(STEP_SECONDS * _NS))
                messages.append(self._trade(stream, inst, rng, ts))
        rng.shuffle(messages)
        return messages

    def _trade(
        self, stream: StreamName, inst: _Instrument, rng: random.Random, ts: int
    ) -> dict[str, Any]:
        price = round(inst.price * (1 + rng.gauss(0, 0.0002)), 2 if stream != "crypto" else 4)
        trade: dict[str, Any] = {"T": "t", "S": inst.symbol, "p": price, "t": rfc3339(ts)}
        if stream == "crypto":
            size = round(rng.lognormvariate(-2.0, 1.2), 6)
            trade |= {"s": size, "i": inst.next_id, "tks": rng.choice("BS")}
        elif stream == "options":
            size = rng.choice((1, 1, 2, 5, 10))
            trade |= {"s": size, "x": rng.choice(_EXCHANGES), "c": rng.choice("SIa")}
        else:
            size = rng.choice((1, 5, 10, 50, 100, 100, 100, 200, 500))
            trade |= {
                "s": size,
                "i": inst.next_id,
                "x": rng.choice(_EXCHANGES),
                "c": ["@"] if size >= 100 else ["@", "I"],
                "z": "C",
            }
        inst.next_id += 1
        bar = inst.bar
        if bar:
            bar[1], bar[2], bar[3] = max(bar[1], price), min(bar[2], price), price
            bar[4] += size
            bar[5] += 1
            bar[6] += price * size
        else:
            inst.bar = [price, price, price, price, size, 1, price * size]
        return trade

    def _quote(
        self, stream: StreamName, inst: _Instrument, rng: random.Random, now: int
    ) -> dict[str, Any]:
        digits = 4 if stream == "crypto" else 2
        half = max(inst.price * 0.0002, 0.01)
        quote: dict[str, Any] = {
            "T": "q",
            "S": inst.symbol,
            "bp": round(inst.price - half, digits),
            "ap": round(inst.price + half, digits),
            "t": rfc3339(now),
        }
        if stream == "crypto":
            return quote | {
                "bs": round(rng.uniform(0.01, 3), 6),
                "as": round(rng.uniform(0.01, 3), 6),
            }
        quote |= {
            "bs": rng.randint(1, 20),
            "as": rng.randint(1, 20),
            "bx": rng.choice(_EXCHANGES),
            "ax": rng.choice(_EXCHANGES),
        }
        if stream == "options":
            return quote | {"c": "A"}
        return quote | {"c": ["R"], "z": "C"}

    def _minute_bar(self, inst: _Instrument) -> dict[str, Any]:
        o, h, lo, c, v, n, notional = inst.bar
        return {
            "T": "b",
            "S": inst.symbol,
            "o": o,
            "h": h,
            "l": lo,
            "c": c,
            "v": v,
            "n": int(n),
            "vw": round(notional / v, 6) if v else 0.0,
            "t": rfc3339(inst.minute * 60 * _NS),
        }

    def _news_step(
        self, stream: StreamName, state: list[_Instrument], rng: random.Random, now: int
    ) -> list[dict[str, Any]]:
        if rng.random() >= self._settings.sim.news_per_minute * STEP_SECONDS / 60:
            return []
        universe = self._symbols("stocks") if "stocks" in self._settings.streams else ["SPY"]
        picked = rng.sample(universe, k=min(len(universe), rng.randint(1, 2)))
        article_id = 40_000_000 + _seed(self._settings.sim.seed, now) % 1_000_000_000
        stamp = rfc3339(now - now % _NS).replace(".000000000", "")
        headline = rng.choice(_HEADLINES).format(s=picked[0])
        return [
            {
                "T": "n",
                "id": article_id,
                "headline": headline,
                "summary": f"Simulated article about {', '.join(picked)}.",
                "author": "Sim Newsdesk",
                "created_at": stamp,
                "updated_at": stamp,
                "url": f"https://example.invalid/news/{article_id}",
                "content": f"<p>{headline}.</p>",
                "symbols": picked,
                "source": "sim",
            }
        ]


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; the means here are small."""
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k
