"""Bars from CSV or Parquet files in the long format ``date,tic,open,high,low,close,volume[,adj_close]``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

# What read_bars_file reads: Parquet, or CSV (compressed as pandas infers from the name, e.g. .csv.gz).
BARS_FILE_FORMATS = ".csv, .csv.gz or .parquet"


class BarsFileError(ValueError):
    """A bars file that cannot be read at all (missing, empty, unknown format)."""


def bars_file_format(path: str | Path) -> Literal["csv", "parquet"] | None:
    """The format :func:`read_bars_file` reads ``path`` as, from its name; ``None`` when it reads neither."""
    suffixes = "".join(Path(path).suffixes).lower()
    if suffixes.endswith(".parquet"):
        return "parquet"
    return "csv" if ".csv" in suffixes else None


def read_bars_file(path: str | Path, use_adjusted_close: bool = True) -> pd.DataFrame:
    """Read a long-format bars file as it is, leaving value checks to validation.

    Dates stay as text so that unparseable ones reach validation and are reported by row. When the file has an
    ``adj_close`` column and ``use_adjusted_close`` is set, open/high/low/close are scaled by
    ``adj_close / close`` so dividends do not appear as price drops.

    :param path: ``.csv``, ``.csv.gz`` or ``.parquet`` file
    :param use_adjusted_close: scale prices to the dividend-adjusted close when available
    """
    path = Path(path)
    if not path.exists():
        raise BarsFileError(f"bars file {path} does not exist")
    file_format = bars_file_format(path)
    if file_format == "parquet":
        bars = pd.read_parquet(path)
    elif file_format == "csv":
        bars = pd.read_csv(path, dtype={"date": str, "tic": str})
    else:
        raise BarsFileError(f"bars file {path} must be {BARS_FILE_FORMATS}")
    if bars.empty:
        raise BarsFileError(f"bars file {path} has no rows")
    if use_adjusted_close and {"adj_close", "close", "open", "high", "low"} <= set(bars.columns):
        numeric_close = pd.to_numeric(bars["close"], errors="coerce")
        numeric_adj = pd.to_numeric(bars["adj_close"], errors="coerce")
        factor = (numeric_adj / numeric_close).where(numeric_close > 0)
        usable = factor.notna()
        for column in ("open", "high", "low", "close"):
            numeric = pd.to_numeric(bars[column], errors="coerce")
            # Rows whose factor is unknown keep their raw values so validation still sees them as they are.
            bars[column] = numeric.where(~usable, numeric * factor).where(numeric.notna(), bars[column])
    return bars.drop(columns=[c for c in ("adj_close",) if c in bars.columns]).reset_index(drop=True)
