"""The market-data resource: shipped sample data, files, and Alpaca through a local fake server."""

from __future__ import annotations

import pandas as pd
import pytest

from resources.market_data import MarketDataResource
from testkit.fake_alpaca import FakeAlpacaDataServer
from trading_core.data.files import BarsFileError
from trading_core.data.schema import select_window


def test_sample_source_is_real_adjusted_data():
    raw = MarketDataResource().load_daily_bars()
    assert sorted(raw.frame["tic"].unique()) == ["AAPL", "GOOG", "IBM", "MSFT"]
    aapl = raw.frame[raw.frame["tic"] == "AAPL"].set_index("date")["close"]
    # The 2:1 split of 2005-02-28 must not show as a halving of the adjusted price.
    assert aapl.loc["2005-02-28"] / aapl.loc["2005-02-25"] > 0.9


def test_csv_source_filters_tickers_and_dates(slice_csv):
    raw = MarketDataResource(
        source="csv", path=str(slice_csv), tickers=["KO"], start_date="2018-01-01"
    ).load_daily_bars()
    assert set(raw.frame["tic"]) == {"KO"}
    assert pd.to_datetime(raw.frame["date"]).min() >= pd.Timestamp("2018-01-01")
    assert str(slice_csv) in raw.source


def test_csv_source_reports_missing_file(tmp_path):
    with pytest.raises(BarsFileError, match="does not exist"):
        MarketDataResource(source="csv", path=str(tmp_path / "nope.csv")).load_daily_bars()


def test_alpaca_source_pages_retries_and_matches_the_served_bars(dow30_bars, monkeypatch):
    served = select_window(dow30_bars, ["AAPL", "MSFT"], "2019-01-01", "2019-12-31")
    served["date"] = pd.to_datetime(served["date"])
    monkeypatch.setenv("ALPACA_API_KEY", "test-key")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "test-secret")
    with FakeAlpacaDataServer(served, page_size=100) as server:
        server.injected_errors.extend([429, 503])
        resource = MarketDataResource(
            source="alpaca",
            tickers=["AAPL", "MSFT"],
            start_date="2019-01-01",
            end_date="2019-12-31",
            alpaca_url_override=server.url,
            retry_wait_seconds=0.01,
        )
        raw = resource.load_daily_bars()
    pages = len(served) // 100 + 1
    assert len(server.requests) == pages + 2  # two injected failures, then every page once
    assert [q.get("page_token", [None])[0] for q in server.requests[2:4]] == [None, "100"]
    expected = served.sort_values(["date", "tic"], ignore_index=True)
    pd.testing.assert_frame_equal(raw.frame[expected.columns], expected, check_dtype=False)


def test_alpaca_source_gives_up_after_retries_and_needs_keys(dow30_bars, monkeypatch):
    from alpaca.common.exceptions import APIError

    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    with pytest.raises(ValueError, match="ALPACA_API_KEY"):
        MarketDataResource(source="alpaca", tickers=["AAPL"], start_date="2019-01-01").load_daily_bars()
    monkeypatch.setenv("ALPACA_API_KEY", "test-key")
    monkeypatch.setenv("ALPACA_SECRET_KEY", "test-secret")
    with FakeAlpacaDataServer(dow30_bars.head(10).assign(date=lambda d: pd.to_datetime(d["date"]))) as server:
        server.injected_errors.extend([500] * 5)
        resource = MarketDataResource(
            source="alpaca",
            tickers=["AAPL"],
            start_date="2009-01-01",
            alpaca_url_override=server.url,
            max_retries=2,
            retry_wait_seconds=0.01,
        )
        with pytest.raises(APIError):
            resource.load_daily_bars()
    assert len(server.requests) == 3
