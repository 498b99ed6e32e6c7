"""Quarantine: messages and frames the daemon refused, kept with their raw bytes and reason.

`<data_dir>/_quarantine/<stream>/date=YYYY-MM-DD/quarantine-<writer id>.jsonl`, one JSON object a
line: `recv_ts`, `stream`, `reason`, `detail`, and `raw` (the bytes as text when they are UTF-8,
else `raw_b64`). Bad input is rare, so each batch is appended and flushed at once, off the loop.
"""

from __future__ import annotations

import base64
import json
import time
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ingest.config import StreamName
    from streams.messages import Reject

__all__ = ["Quarantine"]


class Quarantine:
    """Appends rejects of every stream to per-day JSON Lines files."""

    def __init__(self, root: Path, writer_id: str) -> None:
        self._root = root / "_quarantine"
        self._writer_id = writer_id
        self.count = 0

    async def put(self, stream: StreamName, recv_ns: int, rejects: Sequence[Reject]) -> None:
        """Keep `rejects` durably enough to inspect later."""
        if rejects:
            await anyio.to_thread.run_sync(self._append, stream, recv_ns, list(rejects))
            self.count += len(rejects)

    def _append(self, stream: StreamName, recv_ns: int, rejects: list[Reject]) -> None:
        day = time.strftime("%Y-%m-%d", time.gmtime(recv_ns // 1_000_000_000))
        directory = self._root / stream / f"date={day}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"quarantine-{self._writer_id}.jsonl"
        with path.open("a", encoding="utf-8") as out:
            for reject in rejects:
                line: dict[str, object] = {
                    "recv_ts": recv_ns,
                    "stream": stream,
                    "reason": reject.reason,
                    "detail": reject.detail,
                }
                try:
                    line["raw"] = reject.raw.decode("utf-8")
                except UnicodeDecodeError:
                    line["raw_b64"] = base64.b64encode(reject.raw).decode("ascii")
                out.write(json.dumps(line) + "\n")
