"""Per-symbol counters as arrays: the steady step's bulk accounting equals one at a time."""

from __future__ import annotations

import numpy as np

from ingest.symbol_states import SymbolStates

NS = 1_720_000_000 * 10**9  # 2024-07-03T09:46:40Z


def test_rows_keep_their_values_as_the_table_grows() -> None:
    """Past the first capacity (64) every symbol keeps what it had, and new rows start empty."""
    states = SymbolStates()
    for k in range(200):
        state = states.add(f"S{k}")
        state.messages += k
        state.failures = 1
        state.note_seen("trades", NS + k)
    assert len(states) == 200
    assert list(states)[:3] == ["S0", "S1", "S2"]
    assert [states[f"S{k}"].messages for k in (0, 63, 64, 199)] == [0, 63, 64, 199]
    assert all(state.failures == 1 for state in states.values())
    assert states["S150"].seen == {"trades": NS + 150}
    fresh = states.add("NEW")
    assert (fresh.messages, fresh.last_event_ns, fresh.last_recv_ns, fresh.seen) == (0, 0, 0, {})
    assert states.add("S5").messages == 5  # adding again is finding


def test_bulk_accounting_equals_one_symbol_at_a_time() -> None:
    """`account_trades` counts, stamps and keeps the newest times as each task would.

    A batch not fed (its bars failed) is counted, but is not its symbol's last event.
    """
    bulk, single = SymbolStates(), SymbolStates()
    names = ["A", "B", "C", "D"]
    for states in (bulk, single):
        for name in names:
            states.add(name).note_seen("trades", NS + 50)
    counts = np.array([3, 1, 2], np.intp)
    recv = np.array([7, 8, 9], np.int64)
    newest = np.array([NS + 10, NS + 100, NS + 60], np.int64)  # A's is older than it had
    fed = np.array([True, False, True])
    bulk.account_trades(bulk.codes(["A", "B", "D"]), counts, recv, newest, fed)
    for name, n, r, ts, was_fed in zip("ABD", counts, recv, newest, fed, strict=True):
        state = single[name]
        state.messages += int(n)
        state.last_recv_ns = int(r)
        state.note_seen("trades", int(ts))
        if was_fed:
            state.last_event_ns = int(ts)
    for name in names:
        mine, theirs = bulk[name], single[name]
        assert (mine.messages, mine.last_recv_ns, mine.last_event_ns, mine.seen) == (
            theirs.messages,
            theirs.last_recv_ns,
            theirs.last_event_ns,
            theirs.seen,
        )
    assert bulk["A"].seen == {"trades": NS + 50}
    assert (bulk["B"].last_event_ns, bulk["B"].seen) == (0, {"trades": NS + 100})
    assert bulk["C"].messages == 0


def test_text_and_nanoseconds_show_as_the_newer() -> None:
    """`seen` shows the later of a trade stamp kept as text and the parsed ones.

    A trade stamp that did not parse is kept as text; other tables' stamps as they came.
    """
    states = SymbolStates()
    state = states.add("A")
    state.note_seen("trades", NS)
    state.note_seen("trades", "2024-07-03T09:46:41Z")  # one second later, as text
    state.note_seen("quotes", "2024-07-03T09:46:39Z")
    state.note_seen("quotes", "2024-07-03T09:46:38Z")  # older: not kept
    assert state.seen == {"trades": "2024-07-03T09:46:41Z", "quotes": "2024-07-03T09:46:39Z"}
    state.note_seen("trades", NS + 2 * 10**9)
    assert state.seen["trades"] == NS + 2 * 10**9
    state.seen["trades"] = 0  # a copy: changing it changes nothing
    assert state.seen["trades"] == NS + 2 * 10**9


def test_counters_read_as_python_ints() -> None:
    """`/status` serialises them as JSON: numpy integers would not do."""
    state = SymbolStates().add("A")
    state.messages += 3
    assert type(state.messages) is int
    assert type(state.last_event_ns) is int
    assert type(state.seen.get("trades", 0)) is int
