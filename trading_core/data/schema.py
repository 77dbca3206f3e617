"""The long daily-bar format every source produces: one row per (date, tic)."""

from __future__ import annotations

import hashlib

import pandas as pd

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
OHLCV_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume")
REQUIRED_COLUMNS: tuple[str, ...] = ("date", "tic", *OHLCV_COLUMNS)
BASE_COLUMNS: tuple[str, ...] = ("date", "tic", "open", "high", "low", "close", "volume")
# The sector of a ticker no classification knows (trading_core.sectors): held by no sector strategy.
UNKNOWN_SECTOR = "Unknown"


def feature_columns_of(features: pd.DataFrame) -> list[str]:
    """The model input columns of a features frame (everything but identifiers and raw OHLCV)."""
    return [c for c in features.columns if c not in BASE_COLUMNS]


def indicator_columns_of(features: pd.DataFrame) -> list[str]:
    """Per-asset indicator columns (what FinRL's env calls ``tech_indicator_list``)."""
    return [c for c in feature_columns_of(features) if c not in ("turbulence", "vix")]


def select_window(
    bars: pd.DataFrame,
    tickers: list[str] | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
) -> pd.DataFrame:
    """Keep the requested tickers and dates, leaving rows with unparseable dates in place for validation.

    :param bars: long-format bars, ``date`` possibly still text
    :param tickers: tickers to keep; all when empty
    :param start_date: first date kept (inclusive)
    :param end_date: last date kept (inclusive)
    """
    keep = pd.Series(True, index=bars.index)
    if tickers and "tic" in bars.columns:
        keep &= bars["tic"].isin(tickers)
    if (start_date or end_date) and "date" in bars.columns:
        parsed = pd.to_datetime(bars["date"], errors="coerce")
        in_range = pd.Series(True, index=bars.index)
        if start_date:
            in_range &= parsed >= pd.Timestamp(start_date)
        if end_date:
            in_range &= parsed <= pd.Timestamp(end_date)
        keep &= in_range | parsed.isna()
    return bars.loc[keep].reset_index(drop=True)


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 over a frame's values and index, stable across runs (used to identify training data)."""
    hashed = pd.util.hash_pandas_object(frame, index=True).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()
