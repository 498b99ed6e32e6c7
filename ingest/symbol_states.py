"""What a stream reports per symbol (`/status`, the back-fill's ledger), one array per counter.

A flush's steady step accounts for every symbol it took, often hundreds at once. With an object
and a dict of newest stamps per symbol that was a visit to each, both cold in cache under load:
~0.15-0.2 ms of a paced 400-trade flush (`benchmarks.slow_flushes`). Here it is a few array
operations (`SymbolStates.account_trades`); a symbol task's own accounting and every reader go
through a `SymbolState`, a view of one symbol's row.

Trades' newest event times are kept in nanoseconds, as the pipelines parsed them. A trade stamp
that did not parse (its symbol task sorts it out) and other tables' stamps are kept as they came,
per symbol, in a dict; `SymbolState.seen` shows both as one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

import numpy as np

from ingest.batch import TRADES
from storage.schemas import stamp_ns

if TYPE_CHECKING:
    import numpy.typing as npt

    from streams.messages import Stamp

__all__ = ["SymbolState", "SymbolStates"]

_NONE: Final = np.iinfo(np.int64).min
"""No trade time noted yet (a maximum with it is the other)."""
_FIRST_CAPACITY: Final = 64


def _note_newest(seen: dict[str, Stamp], table: str, stamp: Stamp) -> None:
    """Keep `stamp` as the table's newest event time taken if it is later than the one kept.

    Stamps of one kind compare as they are; text against nanoseconds (a MessagePack stream and
    its JSON back-fill, rare) is parsed.
    """
    than = seen.get(table)
    if than is None or (
        stamp > than  # type: ignore[operator]
        if type(stamp) is type(than)
        else (stamp_ns(stamp) or 0) > (stamp_ns(than) or 0)
    ):
        seen[table] = stamp


class SymbolStates(Mapping[str, "SymbolState"]):
    """Every symbol of a stream, each a row of the counters below (a code, in order of `add`)."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self._names: list[str] = []
        self._stamps: list[dict[str, Stamp]] = []
        """Per symbol, the newest stamps kept as they came (see the module's docstring)."""
        self.messages = np.zeros(_FIRST_CAPACITY, np.int64)
        self.last_event_ns = np.zeros(_FIRST_CAPACITY, np.int64)
        """The newest event time of the trades its pipeline last took (0: none yet)."""
        self.last_recv_ns = np.zeros(_FIRST_CAPACITY, np.int64)
        self.failures = np.zeros(_FIRST_CAPACITY, np.int64)
        self.newest_trade_ns = np.full(_FIRST_CAPACITY, _NONE, np.int64)

    def add(self, name: str) -> SymbolState:
        """The symbol's state, a new row of zeros if it has none yet."""
        code = self._codes.get(name)
        if code is None:
            code = self._codes[name] = len(self._names)
            self._names.append(name)
            self._stamps.append({})
            if code == len(self.messages):
                self._grow()
        return SymbolState(self, code)

    def codes(self, names: list[str]) -> npt.NDArray[np.intp]:
        """The rows of these symbols (each added already)."""
        return np.fromiter(map(self._codes.__getitem__, names), np.intp, len(names))

    def account_trades(
        self,
        codes: npt.NDArray[np.intp],
        counts: npt.NDArray[np.intp],
        newest_recv: npt.NDArray[np.int64],
        newest_ts: npt.NDArray[np.int64],
        fed: npt.NDArray[np.bool_] | slice,
    ) -> None:
        """Count batches of trades, one per symbol (`codes` distinct), as their tasks would.

        Per batch: its trades, its latest receipt and newest parsed event time; `fed`, the
        batches that went through their pipeline (their newest time is the symbol's last event).
        """
        self.messages[codes] += counts
        self.last_recv_ns[codes] = newest_recv
        self.newest_trade_ns[codes] = np.maximum(self.newest_trade_ns[codes], newest_ts)
        self.last_event_ns[codes[fed]] = newest_ts[fed]

    def note_seen(self, code: int, table: str, stamp: Stamp) -> None:
        """Keep `stamp` as the symbol's newest event time of `table` if it is later."""
        if table == TRADES and type(stamp) is int:
            if stamp > self.newest_trade_ns[code]:
                self.newest_trade_ns[code] = stamp
            return
        _note_newest(self._stamps[code], table, stamp)

    def seen(self, code: int) -> dict[str, Stamp]:
        """The symbol's newest event time per table, as one dict (a copy)."""
        seen = dict(self._stamps[code])
        newest = int(self.newest_trade_ns[code])
        if newest != _NONE:
            _note_newest(seen, TRADES, newest)
        return seen

    def _grow(self) -> None:
        held = len(self.messages)
        for counter in ("messages", "last_event_ns", "last_recv_ns", "failures", "newest_trade_ns"):
            grown = np.full(2 * held, _NONE if counter == "newest_trade_ns" else 0, np.int64)
            grown[:held] = getattr(self, counter)
            setattr(self, counter, grown)

    # --- Mapping: name -> SymbolState ----------------------------------------------------------

    def __getitem__(self, name: str) -> SymbolState:
        return SymbolState(self, self._codes[name])

    def __contains__(self, name: object) -> bool:
        return name in self._codes

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class _Counter:
    """A `SymbolState` attribute kept in its `SymbolStates`' array of the same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, state: SymbolState, owner: type | None = None) -> int:
        return int(getattr(state._states, self._name)[state._code])

    def __set__(self, state: SymbolState, value: int) -> None:
        getattr(state._states, self._name)[state._code] = value


class SymbolState:
    """One symbol's row of a `SymbolStates`: what `/status` reports, read and written in place."""

    __slots__ = ("_code", "_states")

    def __init__(self, states: SymbolStates, code: int) -> None:
        self._states = states
        self._code = code

    messages = _Counter()
    """Records counted, every table."""
    last_event_ns = _Counter()
    """The newest event time of the trades its pipeline last took (0: none yet)."""
    last_recv_ns = _Counter()
    """When its latest record counted was received (0: none yet)."""
    failures = _Counter()
    """Times its pipeline failed and was rebuilt."""

    @property
    def seen(self) -> dict[str, Stamp]:
        """Per table, the newest event time taken: where a back-fill starts (a copy).

        Trades' in nanoseconds as the pipeline parsed them (as they came if they did not
        parse), other tables' as they came.
        """
        return self._states.seen(self._code)

    def note_seen(self, table: str, stamp: Stamp) -> None:
        """Keep `stamp` as the newest event time of `table` if it is later than the one kept."""
        self._states.note_seen(self._code, table, stamp)
