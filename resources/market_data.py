"""Market-data resource with three sources: shipped sample data, a local file, and Alpaca's historical API."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from trading_core.data.files import read_bars_file
from trading_core.data.sample import SAMPLE_SOURCE, SAMPLE_TICKERS, load_sample_daily_bars
from trading_core.data.schema import select_window

ALPACA_KEY_ENV = ("ALPACA_API_KEY", "APCA_API_KEY_ID")
ALPACA_SECRET_ENV = ("ALPACA_SECRET_KEY", "APCA_API_SECRET_KEY")
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class RawBars:
    """Bars as a source delivered them, with a description of where they came from."""

    frame: pd.DataFrame
    source: str
    location: str


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


class MarketDataResource(dg.ConfigurableResource):
    """Daily OHLCV bars in the long format ``date, tic, open, high, low, close, volume``.

    ``sample`` (default) reads real daily bars shipped in the ``bokeh-sampledata`` package; ``csv`` reads a CSV
    or Parquet file; ``alpaca`` calls Alpaca's historical bars API with keys from ``ALPACA_API_KEY`` and
    ``ALPACA_SECRET_KEY``.
    """

    source: Literal["sample", "csv", "alpaca"] = Field(default="sample", description="where bars come from")
    path: str | None = Field(default=None, description="CSV or Parquet file for source=csv")
    tickers: list[str] = Field(
        default_factory=list, description="tickers to keep; empty means the source's set"
    )
    start_date: str | None = Field(default=None, description="first date (inclusive), YYYY-MM-DD")
    end_date: str | None = Field(default=None, description="last date (inclusive), YYYY-MM-DD")
    alpaca_url_override: str | None = Field(
        default=None, description="base URL of an Alpaca-compatible data API"
    )
    alpaca_feed: str = Field(default="iex", description="Alpaca data feed (iex or sip)")
    vix_path: str | None = Field(
        default=None, description="optional CSV of daily VIX (date, close) joined as a feature"
    )
    max_retries: int = Field(default=4, description="retries of a failed Alpaca request")
    retry_wait_seconds: float = Field(
        default=1.0, description="first wait between retries; doubles each time"
    )

    def load_daily_bars(self) -> RawBars:
        """Fetch bars from the configured source, filtered to the configured tickers and dates."""
        if self.source == "sample":
            tickers = self.tickers or list(SAMPLE_TICKERS)
            frame = select_window(load_sample_daily_bars(tickers), tickers, self.start_date, self.end_date)
            return RawBars(frame, SAMPLE_SOURCE, "bokeh_sampledata.stocks")
        if self.source == "csv":
            if not self.path:
                raise ValueError("market data source 'csv' needs a path")
            frame = select_window(read_bars_file(self.path), self.tickers, self.start_date, self.end_date)
            return RawBars(frame, f"file {self.path}", str(self.path))
        return self._load_from_alpaca()

    def latest_bar_date(self) -> pd.Timestamp | None:
        """Date of the newest bar the source holds now (what the new-data sensor watches)."""
        dates = pd.to_datetime(self.load_daily_bars().frame["date"], errors="coerce").dropna()
        return None if dates.empty else pd.Timestamp(dates.max()).normalize()

    def load_vix(self) -> pd.Series | None:
        """Daily VIX close indexed by date when ``vix_path`` is set, else ``None``."""
        if not self.vix_path:
            return None
        vix = pd.read_csv(self.vix_path, usecols=["date", "close"], parse_dates=["date"])
        return vix.dropna().set_index("date")["close"].sort_index()

    def _load_from_alpaca(self) -> RawBars:
        from alpaca.common.exceptions import APIError
        from alpaca.data.enums import Adjustment, DataFeed
        from alpaca.data.historical import StockHistoricalDataClient
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame
        from requests.exceptions import ConnectionError as RequestsConnectionError
        from requests.exceptions import Timeout

        if not self.tickers or not self.start_date:
            raise ValueError("market data source 'alpaca' needs tickers and a start_date")
        api_key, secret_key = _first_env(ALPACA_KEY_ENV), _first_env(ALPACA_SECRET_ENV)
        if not api_key or not secret_key:
            raise ValueError(
                f"market data source 'alpaca' needs {ALPACA_KEY_ENV[0]} and {ALPACA_SECRET_ENV[0]} in the environment"
            )
        client = StockHistoricalDataClient(api_key, secret_key, url_override=self.alpaca_url_override)
        # alpaca-py retries 429 itself, sleeping a fixed 3 s; this resource owns the retry policy instead.
        client._retry = 0
        request = StockBarsRequest(
            symbol_or_symbols=list(self.tickers),
            timeframe=TimeFrame.Day,
            start=datetime.fromisoformat(self.start_date),
            end=datetime.fromisoformat(self.end_date) if self.end_date else None,
            adjustment=Adjustment.ALL,
            feed=DataFeed(self.alpaca_feed),
        )
        wait = self.retry_wait_seconds
        for attempt in range(self.max_retries + 1):
            try:
                bar_set = client.get_stock_bars(request)  # pages through next_page_token itself
                break
            except (APIError, RequestsConnectionError, Timeout) as error:
                status = getattr(error, "status_code", None)
                retryable = status in RETRYABLE_STATUS or not isinstance(error, APIError)
                if not retryable or attempt == self.max_retries:
                    raise
                time.sleep(wait)
                wait *= 2
        frame = bar_set.df.reset_index()
        if frame.empty:
            raise ValueError(f"Alpaca returned no bars for {self.tickers} from {self.start_date}")
        frame = pd.DataFrame(
            {
                "date": pd.to_datetime(frame["timestamp"])
                .dt.tz_convert("America/New_York")
                .dt.tz_localize(None)
                .dt.normalize(),
                "tic": frame["symbol"].astype(str),
                "open": frame["open"].astype(float),
                "high": frame["high"].astype(float),
                "low": frame["low"].astype(float),
                "close": frame["close"].astype(float),
                "volume": frame["volume"].astype(float),
            }
        ).sort_values(["date", "tic"], ignore_index=True)
        url = self.alpaca_url_override or "Alpaca market data API"
        return RawBars(frame, f"Alpaca daily bars ({self.alpaca_feed} feed, all adjustments)", url)
