"""Alpaca API credentials from the environment; never logged, never in exceptions or reprs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ingest.errors import CredentialsError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["KEY_ID_VARIABLE", "SECRET_KEY_VARIABLE", "Credentials", "load_credentials"]

KEY_ID_VARIABLE = "APCA_API_KEY_ID"
SECRET_KEY_VARIABLE = "APCA_API_SECRET_KEY"


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key pair. Both fields are kept out of `repr` so they never reach a log line."""

    key_id: str = field(repr=False)
    secret_key: str = field(repr=False)

    def __repr__(self) -> str:
        return "Credentials(key_id=<redacted>, secret_key=<redacted>)"

    __str__ = __repr__


def load_credentials(environ: Mapping[str, str] | None = None) -> Credentials:
    """Read `APCA_API_KEY_ID` and `APCA_API_SECRET_KEY` (from `os.environ` by default).

    Raises:
        CredentialsError: one line naming every variable that is missing or empty.
    """
    env = os.environ if environ is None else environ
    key_id = env.get(KEY_ID_VARIABLE, "").strip()
    secret_key = env.get(SECRET_KEY_VARIABLE, "").strip()
    missing = [
        name
        for name, value in ((KEY_ID_VARIABLE, key_id), (SECRET_KEY_VARIABLE, secret_key))
        if not value
    ]
    if missing:
        msg = (
            "Alpaca credentials missing: set the environment variable"
            f"{'s' if len(missing) > 1 else ''} {' and '.join(missing)}"
        )
        raise CredentialsError(msg)
    return Credentials(key_id, secret_key)
