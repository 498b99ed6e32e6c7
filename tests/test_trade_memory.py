"""The trade store: every symbol's memory in shared pages, remembered a flush at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest.trade_memory import PAGE, TRADE_RECORD, TradeStore, trade_keys, trade_records
from streams.messages import StockTrade

EXCHANGE = ord("V")


def records_of(ids: np.ndarray) -> np.ndarray:
    """Trades whose id, time (id x 10) and price (id / 2) tell them apart."""
    keys = (ids, np.full(len(ids), EXCHANGE, np.int64))
    return trade_records(keys, ids * 10, ids / 2.0, np.ones(len(ids)))


@pytest.mark.parametrize("window", [1, 5, 64, 100, 300])
def test_many_slots_a_flush_at_a_time_agree_with_a_plain_list_each(window: int) -> None:
    """Random flushes over random slots, restarts, oversized batches, slots closed and reused.

    Segments of two pages, so that a flush's trades land in several of them.
    """
    rng = np.random.default_rng(window)
    store = TradeStore(window, segment_pages=2)
    memories = [store.open() for _ in range(7)]
    models: list[list[int]] = [[] for _ in memories]  # per memory: (ids of) its trades, in order
    seqs = [0] * len(memories)
    next_id = 1
    for _ in range(150):
        chosen = np.sort(rng.choice(len(memories), int(rng.integers(1, 5)), replace=False))
        counts: list[int] = []
        seq0: list[int] = []
        ids: list[int] = []
        for m in chosen.tolist():
            n = int(rng.integers(1, 2 * window + 3))
            if rng.random() < 0.05:  # numbering starts over (a replaced pipeline)
                seqs[m] += int(rng.integers(1, 50))
                models[m] = []
            counts.append(n)
            seq0.append(seqs[m])
            ids += range(next_id, next_id + n)
            models[m] += range(next_id, next_id + n)
            seqs[m] += n
            next_id += n
        store.remember_runs(
            np.array([memories[m].slot for m in chosen.tolist()], np.intp),
            np.array(seq0, np.int64),
            np.array(counts, np.intp),
            records_of(np.array(ids, np.int64)),
        )
        if rng.random() < 0.05:  # a symbol fails: its memory is closed, a new one opened
            m = int(rng.integers(len(memories)))
            memories[m].close()
            memories[m] = store.open()
            models[m], seqs[m] = [], 0
        for m, memory in enumerate(memories):
            want = models[m][-window:]
            recent = memory.recent()
            assert recent.seq.tolist() == list(range(seqs[m] - len(want), seqs[m]))
            assert recent.ts.tolist() == [i * 10 for i in want]
            assert recent.price.tolist() == [i / 2 for i in want]
            if want:
                assert recent.oldest == seqs[m] - len(want)
                target = want[int(rng.integers(len(want)))]
                position = memory.find(target, "V")
                assert position is not None
                assert memory.time_of(position) == target * 10
            assert memory.capacity <= -(-window // PAGE) * PAGE


@pytest.mark.parametrize("window", [1, 64, 100])
def test_one_by_one_and_one_scatter_keep_the_same_trades(window: int) -> None:
    """`remember_one` for each batch leaves every slot as `remember_runs` of all of them."""
    rng = np.random.default_rng(window)
    together, apart = TradeStore(window, segment_pages=3), TradeStore(window, segment_pages=3)
    slots = [(together.open().slot, apart.open().slot) for _ in range(5)]
    seqs = [0] * len(slots)
    next_id = 1
    for _ in range(100):
        chosen = np.sort(rng.choice(len(slots), int(rng.integers(1, 4)), replace=False))
        counts = [int(rng.integers(1, 2 * window + 3)) for _ in chosen]
        ids = np.arange(next_id, next_id + sum(counts), dtype=np.int64)
        next_id += len(ids)
        records = records_of(ids)
        together.remember_runs(
            np.array([slots[m][0] for m in chosen], np.intp),
            np.array([seqs[m] for m in chosen], np.int64),
            np.array(counts, np.intp),
            records,
        )
        start = 0
        for m, n in zip(chosen.tolist(), counts, strict=True):
            apart.remember_one(slots[m][1], seqs[m], records[start : start + n])
            start += n
            seqs[m] += n
        for mine, theirs in slots:
            want = together.kept(mine)
            got = apart.kept(theirs)
            assert got[0].tolist() == want[0].tolist()
            assert got[1].tobytes() == want[1].tobytes()
            assert apart.pages_in_use(theirs) == together.pages_in_use(mine)


def test_a_quiet_symbol_costs_a_page_and_a_closed_ones_pages_are_reused() -> None:
    """Pages are taken as a ring reaches them; closing a memory gives them to the next one."""
    store = TradeStore(10_000, segment_pages=4)
    busy, quiet = store.open(), store.open()
    busy.remember(0, records_of(np.arange(1, 3 * PAGE + 1, dtype=np.int64)))
    quiet.remember(0, records_of(np.arange(1, 4, dtype=np.int64)))
    assert (busy.capacity, quiet.capacity) == (3 * PAGE, PAGE)
    segments = len(store._segments)
    busy.close()
    again = store.open()
    assert again.slot == busy.slot
    assert again.recent().seq.tolist() == []
    again.remember(0, records_of(np.arange(1, 3 * PAGE + 1, dtype=np.int64)))
    assert len(store._segments) == segments  # the freed pages, not new ones
    assert quiet.recent().seq.tolist() == [0, 1, 2]


def test_a_correction_and_a_cancel_change_the_trade_in_its_page() -> None:
    """`correct` and `cancel` write through to the store: what `recent` reads next."""
    store = TradeStore(100, segment_pages=1)
    memories = [store.open() for _ in range(3)]
    ids = np.arange(1, 301, dtype=np.int64)
    store.remember_runs(
        np.array([m.slot for m in memories], np.intp),
        np.zeros(3, np.int64),
        np.array([100, 100, 100], np.intp),
        records_of(ids),
    )
    middle = memories[1]
    position = middle.find(150, "V")
    assert position == 49
    assert middle.correct(position, 9_999, 1.5, 2.0) == (75.0, 1.0)
    assert middle.find(150, "V") is None
    assert middle.find(9_999, "V") == 49
    assert middle.cancel(middle.find(151, "V") or 0) == (75.5, 1.0)
    recent = middle.recent()
    assert 50 not in recent.seq.tolist()
    assert recent.price[49] == 1.5
    assert recent.size[49] == 2.0
    # The neighbours' trades are untouched.
    for memory, first in ((memories[0], 1), (memories[2], 201)):
        assert memory.recent().price.tolist() == [i / 2 for i in range(first, first + 100)]
    assert TRADE_RECORD.itemsize == 41


def test_exchanges_of_other_lengths_are_coded_one_by_one() -> None:
    """An empty exchange and a two-letter one make as many letters as trades: not one each."""
    trades = [
        StockTrade(S="A", t="", i=1, x="", p=1.0, s=1.0),
        StockTrade(S="A", t="", i=2, x="AB", p=1.0, s=1.0),
        StockTrade(S="A", t="", i=3, x="V", p=1.0, s=1.0),
    ]
    ids, codes = trade_keys(trades)
    assert ids.tolist() == [1, 2, 3]
    assert codes.tolist() == [hash(""), hash("AB"), ord("V")]
    memory = TradeStore(10).open()
    memory.remember(0, trade_records((ids, codes), ids, np.ones(3), np.ones(3)))
    assert memory.find(2, "AB") == 1
    assert memory.find(1, "") == 0


def test_a_memory_of_no_trades_is_refused() -> None:
    """A window of zero is `correction_window = 0`: no memory at all, not an empty one."""
    with pytest.raises(ValueError, match="at least one trade"):
        TradeStore(0)


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux: /proc/self/smaps")
def test_segments_are_not_backed_by_huge_pages() -> None:
    """A store's segments take 4 KB pages as the rings reach them, never a 2 MB one at once.

    A huge page's first write cost up to ~5 ms on the development VM, all symbols' rings
    reaching one together: the event loop stopped every 0.5 s at 100k trades/s offered.
    """
    store = TradeStore(10_000)
    memory = store.open()
    memory.remember(0, records_of(np.arange(1, 11, dtype=np.int64)))
    (segment,) = store._segments
    address = segment.__array_interface__["data"][0]
    fields = dict(line.split(":", 1) for line in _smaps_entry(address).splitlines()[1:])
    assert "nh" in fields["VmFlags"].split()  # MADV_NOHUGEPAGE
    assert fields["THPeligible"].strip() == "0"
    assert memory.recent().seq.tolist() == list(range(10))


def _smaps_entry(address: int) -> str:
    """The /proc/self/smaps entry of the mapping holding `address`."""
    entries = Path("/proc/self/smaps").read_text().split("\n")
    found: list[str] = []
    for line in entries:
        head = line.split(" ", 1)[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            if found:
                break
            start, end = (int(part, 16) for part in head.split("-"))
            if start <= address < end:
                found.append(line)
        elif found:
            found.append(line)
    return "\n".join(found)
