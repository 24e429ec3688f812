"""Results stage, the exports: a study's tables as CSV files in its folder, each written
atomically (`ablate._io`), so a reader never sees half a table."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from ablate import _io

if TYPE_CHECKING:
    import pandas as pd

TABLES = ("runs", "summary", "effects", "comparisons", "trials")  # <name>.csv in a study's folder


def write_tables(folder: str | Path, tables: Mapping[str, pd.DataFrame]) -> list[Path]:
    """Write each table as <folder>/<name>.csv (names from `TABLES`), in the order given."""
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:  # a programming error, not a user's: the exports are a fixed set
        raise ValueError(f"unknown tables {unknown}; exports are {TABLES}")
    return [_io.write_csv(Path(folder) / f"{name}.csv", frame) for name, frame in tables.items()]
