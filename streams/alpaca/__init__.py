"""The live Alpaca market-data source (stocks, crypto, options, news WebSockets)."""

from __future__ import annotations

from streams.alpaca.credentials import Credentials, load_credentials
from streams.alpaca.protocol import ConnectionLimitError, StreamDisabledError
from streams.alpaca.source import AlpacaSource

__all__ = [
    "AlpacaSource",
    "ConnectionLimitError",
    "Credentials",
    "StreamDisabledError",
    "load_credentials",
]
