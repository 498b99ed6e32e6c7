"""`ingest status`: ask a running daemon for its `/status` and print it as tables.

Deliberately blocking and stdlib-only (urllib): it is a one-shot command, it must work when the
daemon's own event loop is the thing being debugged, and it must not pull in aiohttp.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["DEFAULT_URL", "format_status", "status_command"]

DEFAULT_URL = "http://127.0.0.1:8787"
_TIMEOUT_S = 5.0


def _status_url(url: str) -> str:
    """Accept `host:port`, a base URL or the full `/status` URL."""
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/status"):
        path += "/status"
    return urllib.parse.urlunsplit(parts._replace(path=path))


def _shown(url: str) -> str:
    """The URL without its query, which may carry a token."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(query=""))


def _time(value: object) -> str:
    """A last-tick time: RFC 3339 text as given, integer nanoseconds converted, else `-`."""
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, int):
        seconds, nanos = divmod(value, 1_000_000_000)
        moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).replace(microsecond=nanos // 1000)
        return moment.isoformat().replace("+00:00", "Z")
    return str(value)


def _rate(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _seconds(value: object) -> str:
    """A lag or uptime: milliseconds below a second, then seconds, minutes, hours."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def _yes(value: object) -> str:
    return "-" if value is None else "yes" if value else "NO"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], numeric: set[int]) -> list[str]:
    """Aligned columns; numeric columns are right-aligned so digits line up."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(row) for row in rows)]


def format_status(document: dict[str, Any], url: str) -> str:
    """Render a `/status` document as a summary line, a stream table and a symbol table.

    Args:
        document: As `StatusProvider.status()` documents it; missing keys show as `-`.
        url: Where it came from, for the summary line.
    """
    ok = document.get("ok")
    health = "healthy" if ok else f"UNHEALTHY: {document.get('reason', '?')}"
    summary = [f"ingest at {_shown(url)}: {health if ok is not None else 'health unknown'}"]
    for key, label in (("source", "source"), ("shard", "shard")):
        if key in document:
            summary.append(f"{label} {document[key]}")
    if "uptime_s" in document:
        summary.append(f"up {_seconds(document['uptime_s'])}")
    lines = [", ".join(summary), ""]

    streams: dict[str, Any] = document.get("streams") or {}
    stream_rows: list[tuple[str, ...]] = []
    symbol_rows: list[tuple[str, ...]] = []
    for name, stream in sorted(streams.items()):
        stream_rows.append(
            (
                name,
                _yes(stream.get("connected")),
                _rate(stream.get("msgs_per_s")),
                _time(stream.get("last_tick")),
                _seconds(stream.get("lag_s")),
                str(stream.get("reconnects", "-")),
            )
        )
        for symbol, info in sorted((stream.get("symbols") or {}).items()):
            symbol_rows.append(
                (
                    name,
                    symbol,
                    _rate(info.get("msgs_per_s")),
                    _time(info.get("last_tick")),
                    _seconds(info.get("lag_s")),
                )
            )
    if not stream_rows:
        lines.append("no streams reported")
    else:
        stream_header = ("STREAM", "CONNECTED", "MSGS/S", "LAST TICK", "LAG", "RECONNECTS")
        lines += _table(stream_header, stream_rows, numeric={2, 4, 5})
    if symbol_rows:
        lines.append("")
        symbol_header = ("STREAM", "SYMBOL", "MSGS/S", "LAST TICK", "LAG")
        lines += _table(symbol_header, symbol_rows, numeric={2, 4})
    return "\n".join(lines)


def _fetch(url: str, token: str | None) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        document = json.load(response)
    if not isinstance(document, dict):
        msg = "not a JSON object"
        raise ValueError(msg)
    return document


def status_command(url: str = DEFAULT_URL, token: str | None = None) -> int:
    """Print a running daemon's status; the implementation of `ingest status`.

    Args:
        url: The daemon's server (`[server] listen`), as `host:port`, base URL or `/status` URL.
        token: The `[server] token`, when one is configured.

    Returns:
        0 after printing the tables; 1 after one line on stderr if the daemon cannot be reached,
        refuses the token or answers something that is not a status document.
    """
    target = _status_url(url)
    try:
        document = _fetch(target, token)
    except urllib.error.HTTPError as exc:
        hint = "; pass the [server] token" if exc.code == 401 else ""
        problem = f"answered HTTP {exc.code} {exc.reason}{hint}"
    except urllib.error.URLError as exc:
        problem = f"is unreachable: {getattr(exc.reason, 'strerror', None) or exc.reason}"
    except TimeoutError:
        problem = f"did not answer within {_TIMEOUT_S:g}s"
    except OSError as exc:
        problem = f"is unreachable: {exc.strerror or exc}"
    except ValueError as exc:  # bad JSON included
        problem = f"did not answer a status document: {exc}"
    else:
        print(format_status(document, target))
        return 0
    print(f"ingest status: daemon at {_shown(target)} {problem}", file=sys.stderr)
    return 1
