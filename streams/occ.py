"""OCC option symbols: `<root><yymmdd><C|P><strike x 1000, 8 digits>` (`AAPL240315C00172500`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from functools import lru_cache

__all__ = ["OptionContract", "format_occ", "parse_occ"]

_OCC = re.compile(r"^([A-Z0-9.]{1,6}?)\s*(\d{2})(\d{2})(\d{2})([CP])(\d{8})$")


@dataclass(frozen=True, slots=True)
class OptionContract:
    """The parts of an OCC symbol."""

    underlying: str
    expiration: date
    right: str
    """`C` for a call, `P` for a put."""
    strike: float


@lru_cache(maxsize=65536)
def parse_occ(symbol: str) -> OptionContract | None:
    """Parse an OCC symbol; `None` if it is not one. Cached: a symbol repeats on every tick."""
    match = _OCC.match(symbol)
    if match is None:
        return None
    root, yy, mm, dd, right, strike = match.groups()
    try:
        expiration = date(2000 + int(yy), int(mm), int(dd))
    except ValueError:
        return None
    return OptionContract(root, expiration, right, int(strike) / 1000.0)


def format_occ(underlying: str, expiration: date, right: str, strike: float) -> str:
    """The OCC symbol in Alpaca's unpadded form."""
    return f"{underlying}{expiration:%y%m%d}{right}{round(strike * 1000):08d}"
