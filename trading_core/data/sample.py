"""Real daily OHLCV shipped inside the ``bokeh-sampledata`` package (Yahoo Finance, 2000-2013).

It is the project's default data source: it arrives with the installed dependencies, so a fresh machine needs
no network.
"""

from __future__ import annotations

import pandas as pd

SAMPLE_TICKERS: tuple[str, ...] = ("AAPL", "GOOG", "IBM", "MSFT")
SAMPLE_SOURCE = "bokeh-sampledata daily OHLCV (Yahoo Finance), split- and dividend-adjusted with adj_close"


def load_sample_daily_bars(tickers: list[str] | tuple[str, ...] = SAMPLE_TICKERS) -> pd.DataFrame:
    """Load the shipped daily bars in the long format, adjusted for splits and dividends.

    The package ships raw open/high/low/close plus ``adj_close``. Raw prices jump at splits (AAPL halves in
    2000 and 2005), which an agent would read as crashes, so open/high/low/close are scaled by
    ``adj_close / close`` — as FinRL's Yahoo downloader does — and volume by the inverse, keeping dollar volume.

    :param tickers: any of AAPL, GOOG, IBM, MSFT, FB
    """
    from bokeh_sampledata import stocks

    frames = []
    for tic in tickers:
        if not hasattr(stocks, tic) or tic == "StockData":
            raise ValueError(
                f"ticker {tic!r} is not in bokeh-sampledata stocks (have AAPL, FB, GOOG, IBM, MSFT)"
            )
        raw = pd.DataFrame(getattr(stocks, tic))
        factor = raw["adj_close"] / raw["close"]
        frames.append(
            pd.DataFrame(
                {
                    "date": pd.to_datetime(raw["date"]),
                    "tic": tic,
                    "open": raw["open"] * factor,
                    "high": raw["high"] * factor,
                    "low": raw["low"] * factor,
                    "close": raw["close"] * factor,
                    "volume": raw["volume"] / factor,
                }
            )
        )
    bars = pd.concat(frames, ignore_index=True)
    return bars.sort_values(["date", "tic"], ignore_index=True)
