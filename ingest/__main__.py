"""`python -m ingest` runs the CLI."""

from __future__ import annotations

from ingest.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
