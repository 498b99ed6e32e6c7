"""Storage: schemas, the Parquet writer, quarantine (pyarrow lives here)."""
