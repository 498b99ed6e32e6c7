"""What corrections find trades by: each stock symbol's last trades, all symbols in one store.

A correction or cancel names a trade some time after it (`ingest.corrections`), so every stock
trade the pipeline was fed is remembered: per symbol the last `[pipeline] correction_window`,
as packed 41-byte records (`TRADE_RECORD`), gathered once per flush for every symbol
(`trade_records`).

Remembering is on the hot path and finding is rare. A ring array per symbol cost one copy per
symbol per flush, ~2 us each: at 100k trades/s offered over 200 symbols, a flush of ~600 trades
touched ~190 symbols and spent ~0.4 ms (15 % of it) on their rings. So every symbol's memory
lives in one `TradeStore`, and a flush's trades go in with one scatter for all its symbols
(`TradeStore.remember_runs`). The store is paged: a symbol's ring of `window` trades (rounded up
to a page) is split into pages of `PAGE` records, allocated the first time the ring reaches
them, so a quiet symbol costs one page and a busy one its window, and nothing is ever copied to
grow. Pages come from segments of `SEGMENT_PAGES` pages, allocated as needed and never moved.
"""

from __future__ import annotations

import mmap
from operator import attrgetter
from typing import TYPE_CHECKING, Final

import numpy as np

from ingest.pipeline import RecentTrades

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from streams.messages import StockTrade

__all__ = [
    "PAGE",
    "TRADE_RECORD",
    "TradeKeys",
    "TradeMemory",
    "TradeStore",
    "trade_keys",
    "trade_records",
]

TRADE_RECORD: Final = np.dtype(
    [
        ("id", np.int64),
        ("exchange", np.int64),
        ("ts", np.int64),
        ("price", np.float64),
        ("size", np.float64),
        ("alive", np.bool_),
    ]
)
"""One remembered trade, packed (41 bytes)."""
_PACKED: Final = np.dtype((np.void, TRADE_RECORD.itemsize))
"""A `TRADE_RECORD` as plain bytes: numpy copies these as memory, where records of named fields
go field by field (a small batch: 0.5 us against 1.7 us)."""

PAGE: Final = 64
"""Records a page (2.6 KB): what a symbol that trades at all costs at least."""
SEGMENT_PAGES: Final = 16_384
"""Pages a segment (43 MB mapped, of which only the pages in use are ever touched)."""
_NO_PAGE: Final = -1


class TradeStore:
    """Every memory of one window, as rings of pages in shared segments; one slot a memory.

    A trade's position in its memory is its arrival sequence number; its place in the ring that
    number modulo `capacity` (the window rounded up to whole pages). Slot `s` keeps trades
    `[oldest[s], next[s])`, at most `window` of them.
    """

    def __init__(self, window: int, *, segment_pages: int = SEGMENT_PAGES) -> None:
        if window <= 0:
            msg = f"a trade memory keeps at least one trade, not {window}"
            raise ValueError(msg)
        self.window = window
        self._segment = segment_pages * PAGE
        """Records a segment."""
        self._ring_pages = -(-window // PAGE)
        self.capacity = self._ring_pages * PAGE
        """Records a ring holds once all its pages are in use."""
        self._pages = np.empty((0, self._ring_pages), np.int32)
        """Per slot and page of its ring, the page's number in the store, or `_NO_PAGE`."""
        self._oldest = np.empty(0, np.int64)
        self._next = np.empty(0, np.int64)
        self._slots_used = 0
        self._segments: list[npt.NDArray[np.void]] = []
        """The store's records, packed; page `p` is records `[p * PAGE, (p + 1) * PAGE)`."""
        self._used_pages = 0
        self._free_pages: list[int] = []
        self._free_slots: list[int] = []

    def open(self) -> TradeMemory:
        """A new, empty memory in this store."""
        return TradeMemory(self)

    def open_slot(self) -> int:
        """A slot for a new memory, empty."""
        if self._free_slots:
            return self._free_slots.pop()
        slot = self._slots_used
        if slot == len(self._pages):
            self._grow_slots(max(16, 2 * slot))
        self._slots_used += 1
        return slot

    def close(self, slot: int) -> None:
        """Forget slot `slot`'s trades; its pages and the slot go to the next memories opened."""
        row = self._pages[slot]
        self._free_pages += row[row != _NO_PAGE].tolist()
        row[:] = _NO_PAGE
        self._oldest[slot] = self._next[slot] = 0
        self._free_slots.append(slot)

    def remember_runs(
        self,
        slots: npt.NDArray[np.intp],
        seq0: npt.NDArray[np.int64],
        counts: npt.NDArray[np.intp],
        records: npt.NDArray[np.void],
    ) -> None:
        """Keep batches the pipelines were just fed, one scatter for all of them.

        `counts[k]` trades for slot `slots[k]`, the first numbered `seq0[k]`, one batch after
        the other in `records` (`trade_records`); each slot at most once. A batch that does not
        follow its slot's last one (its first batch, or numbering started over) starts the slot
        afresh; of a batch larger than the window, its last `window` trades are kept.
        """
        if not len(records):
            return
        restart = seq0 != self._next[slots]
        if restart.any():
            self._oldest[slots[restart]] = seq0[restart]
        ends = seq0 + counts
        # Each trade's position in its memory: its run's first, plus its place in the run.
        starts = np.cumsum(counts) - counts
        position = np.arange(len(records), dtype=np.int64) + np.repeat(seq0 - starts, counts)
        if int(counts.max()) > self.window:
            wanted = position >= np.repeat(ends - self.window, counts)
            position, records = position[wanted], records[wanted]
            counts = np.bincount(np.repeat(np.arange(len(slots)), counts)[wanted], None, len(slots))
        owner = np.repeat(slots, counts)
        where = self._place(owner, position, allocate=True)
        self._write(where, records)
        self._next[slots] = ends
        self._oldest[slots] = np.maximum(self._oldest[slots], ends - self.window)

    def remember_one(self, slot: int, seq0: int, records: npt.NDArray[np.void]) -> None:
        """`remember_runs` of one batch, page by page in plain Python.

        A symbol task's batch, or one of a flush's few: `remember_runs` costs ~25 numpy calls
        whatever it is given (~30 us), this a slice copy a page the batch touches (~3 us).
        """
        n = len(records)
        if not n:
            return
        if seq0 != self._next[slot]:
            self._oldest[slot] = seq0
        end = seq0 + n
        skip = max(0, n - self.window)
        position = seq0 + skip
        row = self._pages[slot]
        while skip < n:
            ring = position % self.capacity
            page, at = divmod(ring, PAGE)
            run = min(n - skip, PAGE - at)
            number = int(row[page])
            if number == _NO_PAGE:
                number = row[page] = int(self._allocate(1)[0])
            segment, offset = divmod(number * PAGE + at, self._segment)
            self._segments[segment][offset : offset + run] = records[skip : skip + run]
            skip += run
            position += run
        self._next[slot] = end
        self._oldest[slot] = max(int(self._oldest[slot]), end - self.window)

    def oldest(self, slot: int) -> int:
        """The position of slot `slot`'s oldest trade kept (its next one's when it keeps none)."""
        return int(self._oldest[slot])

    def kept(self, slot: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.void]]:
        """Slot `slot`'s trades, oldest first: their positions and their records (a copy)."""
        position = np.arange(self._oldest[slot], self._next[slot], dtype=np.int64)
        owner = np.full(len(position), slot, np.intp)
        return position, self._read(self._place(owner, position, allocate=False))

    def record(self, slot: int, position: int) -> npt.NDArray[np.void]:
        """The record of the trade at `position` of slot `slot`: a view to change it through."""
        where = self._place(np.array([slot], np.intp), np.array([position]), allocate=False)
        segment, at = divmod(int(where[0]), self._segment)
        return self._segments[segment].view(TRADE_RECORD)[at : at + 1]

    def pages_in_use(self, slot: int) -> int:
        """Pages slot `slot` holds."""
        return int(np.count_nonzero(self._pages[slot] != _NO_PAGE))

    def _place(
        self, owner: npt.NDArray[np.intp], position: npt.NDArray[np.int64], *, allocate: bool
    ) -> npt.NDArray[np.int64]:
        """Where in the store each (slot, position) is; missing pages allocated if asked."""
        ring = position % self.capacity
        page_of = ring // PAGE
        pages = self._pages[owner, page_of]
        missing = pages == _NO_PAGE
        if not allocate:
            assert not missing.any(), "a kept trade is on a page in use"
        elif missing.any():
            needed = np.unique(owner[missing] * self._ring_pages + page_of[missing])
            self._pages.flat[needed] = self._allocate(len(needed))
            pages = self._pages[owner, page_of]
        where: npt.NDArray[np.int64] = pages.astype(np.int64) * PAGE + ring % PAGE
        return where

    def _write(self, where: npt.NDArray[np.int64], records: npt.NDArray[np.void]) -> None:
        size = self._segment
        segment = where // size
        first = int(segment[0])
        if (segment == first).all():  # the common case: one segment (200 full symbols fit 2)
            self._segments[first][where - first * size] = records
            return
        for s in np.unique(segment).tolist():
            mine = segment == s
            self._segments[s][where[mine] - s * size] = records[mine]

    def _read(self, where: npt.NDArray[np.int64]) -> npt.NDArray[np.void]:
        out = np.empty(len(where), TRADE_RECORD)
        packed = out.view(_PACKED)
        size = self._segment
        segment = where // size
        for s in np.unique(segment).tolist():
            mine = segment == s
            packed[mine] = self._segments[s][where[mine] - s * size]
        return out

    def _allocate(self, n: int) -> npt.NDArray[np.int32]:
        """`n` pages: freed ones first, then new ones (a new segment when the last is full)."""
        reused = [self._free_pages.pop() for _ in range(min(n, len(self._free_pages)))]
        fresh = np.arange(self._used_pages, self._used_pages + n - len(reused), dtype=np.int32)
        self._used_pages += len(fresh)
        while self._used_pages * PAGE > len(self._segments) * self._segment:
            self._segments.append(_fresh_segment(self._segment))
        return np.concatenate((np.array(reused, np.int32), fresh))

    def _grow_slots(self, slots: int) -> None:
        used = len(self._pages)
        pages = np.full((slots, self._ring_pages), _NO_PAGE, np.int32)
        pages[:used] = self._pages
        self._pages = pages
        self._oldest = np.concatenate((self._oldest, np.zeros(slots - used, np.int64)))
        self._next = np.concatenate((self._next, np.zeros(slots - used, np.int64)))


def _fresh_segment(records: int) -> npt.NDArray[np.void]:
    """Room for `records`, mapped privately with transparent huge pages off.

    The rings reach a segment's pages a few at a time, all symbols together (every 64 trades
    a symbol). With huge pages the first write into each 2 MB faulted it in whole, now and then
    for ~5 ms on this VM, and the event loop stopped: a flush's accounting took 5-6 ms every
    0.5 s at 100k trades/s offered. 4 KB pages fault in ~2 us each, as they are reached.
    """
    memory = mmap.mmap(-1, records * _PACKED.itemsize, flags=_PRIVATE)
    if _NO_HUGE_PAGES is not None:
        memory.madvise(_NO_HUGE_PAGES)
    return np.frombuffer(memory, _PACKED)


_PRIVATE: Final = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
_NO_HUGE_PAGES: Final[int | None] = getattr(mmap, "MADV_NOHUGEPAGE", None)


class TradeMemory:
    """The last `window` trades of one stock symbol, as the pipeline saw them (a store's slot).

    On its own (`TradeMemory(window)`) it has a store of its own; a router opens its symbols'
    memories in one store (`TradeStore.open`) and remembers a flush's trades for all of them at
    once.
    """

    __slots__ = ("_store", "slot")

    def __init__(self, store: TradeStore | int) -> None:
        """A memory in `store`, or in a store of its own of that window."""
        self._store = TradeStore(store) if isinstance(store, int) else store
        self.slot = self._store.open_slot()
        """Its slot in its store (what `TradeStore.remember_runs` takes)."""

    def remember(self, seq0: int, records: npt.NDArray[np.void]) -> None:
        """Keep a batch the pipeline was just fed, its first trade numbered `seq0`."""
        self._store.remember_one(self.slot, seq0, records)

    def close(self) -> None:
        """Forget every trade: the store reuses this memory's room."""
        self._store.close(self.slot)

    @property
    def capacity(self) -> int:
        """Trades it has room for (41 bytes each): whole pages, up to the window's."""
        return self._store.pages_in_use(self.slot) * PAGE

    def find(self, trade_id: int, exchange: str) -> int | None:
        """The position of a remembered, not cancelled trade; newest first."""
        position, kept = self._store.kept(self.slot)
        hits = np.flatnonzero(
            (kept["id"] == trade_id)
            & (kept["exchange"] == _exchange_code(exchange))
            & kept["alive"]
        )
        return int(position[hits[-1]]) if len(hits) else None

    def recent(self) -> RecentTrades:
        """Every remembered trade that is not cancelled, in arrival order."""
        position, kept = self._store.kept(self.slot)
        alive = kept["alive"]
        kept = kept[alive]
        return RecentTrades(
            seq=position[alive],
            ts=np.ascontiguousarray(kept["ts"]),
            price=np.ascontiguousarray(kept["price"]),
            size=np.ascontiguousarray(kept["size"]),
            oldest=self._store.oldest(self.slot),
        )

    def seq_of(self, position: int) -> int:
        """The arrival sequence number of the trade at `position` (they are the same)."""
        return position

    def correct(
        self, position: int, trade_id: int, price: float, size: float
    ) -> tuple[float, float]:
        """Give a trade its corrected id, price and size; its old price and size."""
        record = self._store.record(self.slot, position)
        old = float(record["price"][0]), float(record["size"][0])
        record["id"], record["price"], record["size"] = trade_id, price, size
        return old

    def cancel(self, position: int) -> tuple[float, float]:
        """Forget a cancelled trade; its price and size."""
        record = self._store.record(self.slot, position)
        record["alive"] = False
        return float(record["price"][0]), float(record["size"][0])

    def time_of(self, position: int) -> int:
        """The event time of the trade at `position`."""
        return int(self._store.record(self.slot, position)["ts"][0])


def _exchange_code(exchange: str) -> int:
    """Alpaca's exchanges are one letter: its code point; anything longer, its hash."""
    return ord(exchange) if len(exchange) == 1 else hash(exchange)


_ID: Final = attrgetter("i")
_EXCHANGE: Final = attrgetter("x")

TradeKeys = tuple["npt.NDArray[np.int64]", "npt.NDArray[np.int64]"]
"""(trade ids, exchange codes) of some trades: what a correction or cancel names a trade by."""


def trade_keys(trades: Sequence[StockTrade]) -> TradeKeys:
    """The ids and exchange codes of `trades`, as the memory finds them."""
    ids = np.fromiter(map(_ID, trades), np.int64, len(trades))
    exchanges = list(map(_EXCHANGE, trades))
    joined = "".join(exchanges)
    # The common case, one letter each: as many letters as trades, and none without one.
    if len(joined) == len(trades) and joined.isascii() and "" not in exchanges:
        return ids, np.frombuffer(joined.encode("ascii"), dtype=np.uint8).astype(np.int64)
    return ids, np.fromiter((_exchange_code(t.x) for t in trades), np.int64, len(trades))


def trade_records(
    keys: TradeKeys,
    ts: npt.NDArray[np.int64],
    price: npt.NDArray[np.float64],
    size: npt.NDArray[np.float64],
) -> npt.NDArray[np.void]:
    """Trades as the memory keeps them: their keys and the columns the pipeline was fed.

    Packed: each record is 41 plain bytes; `.view(TRADE_RECORD)` reads their fields.
    """
    records = np.empty(len(ts), TRADE_RECORD)
    records["id"], records["exchange"] = keys
    records["ts"] = ts
    records["price"] = price
    records["size"] = size
    records["alive"] = True
    return records.view(_PACKED)
