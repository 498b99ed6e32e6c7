"""The daemon's exception tree: one base to catch, subclasses to decide on.

IngestError
├── ConfigError          bad configuration or command line (exit 2)
├── CredentialsError     credentials missing or rejected (exit 3)
├── FeedError            a market-data source failed
│   ├── FeedConnectError     transient: retry with backoff
│   └── FeedProtocolError    the peer said something we cannot go on with
└── StorageError         the dataset cannot be written
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CredentialsError",
    "FeedConnectError",
    "FeedError",
    "FeedProtocolError",
    "IngestError",
    "StorageError",
]


class IngestError(Exception):
    """Base of every error the daemon raises on purpose."""


class ConfigError(IngestError):
    """The configuration or the command line is invalid; the message names the key."""


class CredentialsError(IngestError):
    """Alpaca credentials are missing or were rejected."""


class FeedError(IngestError):
    """A market-data source failed."""


class FeedConnectError(FeedError):
    """A connection failed or dropped; worth retrying."""


class FeedProtocolError(FeedError):
    """The peer violated the protocol or refused us for good."""


class StorageError(IngestError):
    """The dataset cannot be written."""
