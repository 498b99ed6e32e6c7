"""The ledger's answer to where a gap starts: the newest event time the daemon took."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from ingest.config import settings_from_mapping
from ingest.ledger import DaemonLedger
from ingest.symbol_states import SymbolStates

if TYPE_CHECKING:
    from ingest.router import StreamRouter
    from storage.parquet import Dataset

NS_2024_07_03 = 1_720_000_000 * 10**9  # 2024-07-03T09:46:40Z


def ledger_with(seen: dict[str, dict[str, Any]]) -> DaemonLedger:
    """A ledger over one options router whose symbols took these stamps (it reads `.symbols`)."""
    symbols = SymbolStates()
    for name, stamps in seen.items():
        state = symbols.add(name)
        for table, stamp in stamps.items():
            state.note_seen(table, stamp)
    router = cast("StreamRouter", SimpleNamespace(symbols=symbols))
    dataset = cast("Dataset", None)
    return DaemonLedger(settings_from_mapping({}), {"options": router}, {}, dataset, ())


class TestLastSeen:
    def test_nanoseconds_and_text_compare_as_times(self) -> None:
        """A MessagePack stream (nanoseconds) and its JSON back-fill (text): the later time wins."""
        ledger = ledger_with(
            {
                "A": {"trades": NS_2024_07_03},
                "B": {"trades": "2024-07-03T09:46:41Z"},  # one second later, as text
                "C": {"trades": "2024-07-03T09:46:39.5Z"},
            }
        )
        assert ledger.last_seen("options", "trades", None) == NS_2024_07_03 + 10**9
        assert ledger.last_seen("options", "trades", "A") == NS_2024_07_03
        assert ledger.last_seen("options", "trades", "C") == NS_2024_07_03 - 5 * 10**8
        assert ledger.last_seen("options", "quotes", None) is None

    def test_unparseable_text_is_no_answer(self) -> None:
        """Text that does not parse starts no gap; a parseable stamp elsewhere still does."""
        ledger = ledger_with({"A": {"trades": "soon"}, "B": {"trades": NS_2024_07_03}})
        assert ledger.last_seen("options", "trades", "A") is None
        assert ledger.last_seen("options", "trades", None) == NS_2024_07_03
