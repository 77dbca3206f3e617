"""Market-data settings are refused when built (dates, required fields, formats, URL) and, before a run, against
what the source holds (the file is a readable bars file, the tickers exist, the window has bars)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from resources.market_data import MarketDataResource, market_data_problems, sample_tickers, source_window


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"source": "csv"}, "path is not set: expected the path of a .csv, .csv.gz or .parquet bars file"),
        (
            {"source": "csv", "path": "bars.xlsx"},
            "path='bars.xlsx': expected a .csv, .csv.gz or .parquet bars file",
        ),
        ({"start_date": "2020-02-30"}, "start_date='2020-02-30': expected a date YYYY-MM-DD"),
        (
            {"start_date": "2012-01-01", "end_date": "2011-01-01"},
            "end_date='2011-01-01': expected a date after the start date 2012-01-01",
        ),
        (
            {"tickers": ["AAPL", " MSFT"]},
            "tickers='AAPL, MSFT': expected comma-separated tickers without spaces",
        ),
        ({"source": "alpaca", "tickers": ["AAPL"]}, "start_date is not set: expected the first date Alpaca"),
        (
            {
                "source": "alpaca",
                "tickers": ["AAPL"],
                "start_date": "2019-01-01",
                "alpaca_url_override": "localhost",
            },
            "alpaca_url_override='localhost': expected an http(s)://host[:port] URL",
        ),
        ({"vix_path": "vix.parquet"}, "vix_path='vix.parquet': expected a .csv or .csv.gz file of daily VIX"),
    ],
)
def test_the_resource_refuses_settings_that_cannot_work_when_it_is_built(settings, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        MarketDataResource(**settings)
    assert [p.line() for p in market_data_problems(settings, check_sources=False)][0].startswith(message)


def test_the_shipped_sample_and_a_real_file_pass_and_give_their_window(slice_csv: Path):
    assert sample_tickers() == ("AAPL", "FB", "GOOG", "IBM", "MSFT")
    assert market_data_problems({"source": "sample"}) == []
    assert source_window({"source": "sample", "tickers": ["GOOG"], "end_date": "2010-12-31"}) == (
        pd.Timestamp("2004-08-19"),
        pd.Timestamp("2010-12-31"),
    )
    real = {"source": "csv", "path": str(slice_csv), "tickers": ["KO"], "start_date": "2018-01-01"}
    assert market_data_problems(real) == []
    assert source_window(real) == (pd.Timestamp("2018-01-01"), pd.Timestamp("2019-12-31"))
    assert source_window({"source": "alpaca", "tickers": ["KO"], "start_date": "2018-01-01"}) is None


def test_a_file_is_checked_for_existence_kind_columns_tickers_and_window(slice_csv: Path, tmp_path: Path):
    def lines(**settings) -> list[str]:
        return [p.line() for p in market_data_problems({"source": "csv", **settings})]

    assert lines(path=str(tmp_path)) == [
        f"path='{tmp_path}': expected a .csv, .csv.gz or .parquet bars file, not a directory"
    ]
    garbled = tmp_path / "garbled.csv.gz"
    garbled.write_bytes(b"not gzip at all")
    assert lines(path=str(garbled))[0].startswith(f"path='{garbled}': expected a readable .csv, .csv.gz or")
    assert lines(path=str(slice_csv), tickers=["KO", "TSLA"]) == [
        f"tickers='KO,TSLA': expected tickers of {slice_csv}; unknown: TSLA; available: AAPL, JPM, KO, MSFT"
    ]
    assert lines(path=str(slice_csv), end_date="2001-01-01") == [
        "end_date='2001-01-01': expected a date on or after the first bar, 2015-01-02"
    ]
    parquet = tmp_path / "bars.parquet"
    pd.read_csv(slice_csv).to_parquet(parquet)
    assert lines(path=str(parquet), tickers=["JPM"]) == []
    vix = tmp_path / "vix.csv"
    vix.write_text("day,close\n2019-01-02,20\n")
    assert lines(path=str(slice_csv), vix_path=str(vix)) == [
        f"vix_path='{vix}': expected a CSV file of daily VIX with columns date, close; missing column(s) date"
    ]
