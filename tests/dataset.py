"""Reading a written dataset back the way users do: DuckDB over hive-partitioned Parquet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    from pathlib import Path

TYPE_TABLE = {"t": "trades", "q": "quotes", "b": "vendor_bars", "n": "articles"}


def query(root: Path, stream: str, table: str, sql: str = "select count(*) from t") -> list[Any]:
    """Run `sql` against `t`, the whole `<root>/<stream>/<table>` dataset."""
    glob = f"{root}/{stream}/{table}/**/*.parquet"
    con = duckdb.connect()
    con.execute(f"create view t as select * from read_parquet('{glob}', hive_partitioning=true)")
    return con.execute(sql).fetchall()


def count(root: Path, stream: str, table: str) -> int:
    """Rows of one table; 0 when it has no files."""
    if not any((root / stream / table).glob("**/*.parquet")):
        return 0
    return int(query(root, stream, table)[0][0])


def leftovers(root: Path) -> list[Path]:
    """Temporary files a reader must never see once the daemon has stopped."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]
