"""Sectors: pytickersymbols' offline classification of the real Dow-30 and default universes, the fund table,
a user file over both (with one-line errors naming file, rows and tickers), the labels on the market panel,
and the ``sector_map`` asset called the Dagster way."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from resources.market_data import sample_tickers
from trading_assets.sectors import SectorSettings
from trading_assets.sectors import sector_map as sector_map_asset
from trading_core.market.arrays import MarketArrays
from trading_core.sectors import (
    SECTOR_MAP_COLUMNS,
    SECTORS,
    Classification,
    load_sector_file,
    sector_map,
    unclassified,
    with_sectors,
)
from trading_core.sectors.classification import classify_industries

# The sector each Dow-30 ticker's GICS sector was over 2009-2021, for the names the keyword rules must get right.
DOW30_EXPECTED = {
    "AAPL": "Information Technology",
    "AMGN": "Health Care",
    "CVX": "Energy",
    "DIS": "Communication Services",
    "DOW": "Materials",
    "HD": "Consumer Discretionary",
    "HON": "Industrials",
    "JPM": "Financials",
    "KO": "Consumer Staples",
    "UNH": "Health Care",
    "VZ": "Communication Services",
    "WMT": "Consumer Staples",
}


@pytest.fixture(scope="module")
def dow30_tickers(dow30_bars) -> list[str]:
    return sorted(dow30_bars["tic"].unique())


def test_every_dow30_ticker_but_wba_is_classified_in_the_one_vocabulary(dow30_tickers):
    frame = sector_map(dow30_tickers)
    assert list(frame.columns) == list(SECTOR_MAP_COLUMNS) and frame["tic"].tolist() == dow30_tickers
    assert set(frame["sector"]) <= set(SECTORS)
    # Walgreens left the package's indices: reported, never guessed.
    assert unclassified(frame) == ["WBA"]
    assert frame.set_index("tic").loc["WBA", "sector"] == "Unknown"
    assert (frame.loc[frame["tic"] != "WBA", "source"] == "pytickersymbols").all()
    assert frame.set_index("tic")["sector"][list(DOW30_EXPECTED)].to_dict() == DOW30_EXPECTED
    assert frame["sector"].nunique() == 10  # every GICS sector but Utilities and Real Estate, plus Unknown


def test_the_default_datas_tickers_are_technology_and_fb_is_unclassified():
    frame = sector_map(sample_tickers()).set_index("tic")
    assert set(frame.loc[["AAPL", "GOOG", "IBM", "MSFT"], "sector"]) == {"Information Technology"}
    assert frame.loc["GOOG", "industry"]  # found through Alphabet's second share class
    assert frame.loc["FB", "source"] == "unclassified"  # the package knows it as META only


def test_funds_come_from_the_fund_table_and_sector_funds_by_their_sector():
    frame = sector_map(["SPY", "XLP", "GLD"]).set_index("tic")
    assert frame["source"].eq("etf").all()
    assert frame["sector"].to_dict() == {"SPY": "ETF", "XLP": "Consumer Staples", "GLD": "ETF"}


def test_overrides_win_and_are_spelled_in_the_vocabulary():
    frame = sector_map(
        ["V", "WBA", "AAPL"], overrides={"v": "financials", "WBA": "Consumer Staples", "XYZ": "Energy"}
    )
    by_tic = frame.set_index("tic")
    assert by_tic.loc["V"].tolist() == ["Financials", "", "file"]
    assert by_tic.loc["WBA", "sector"] == "Consumer Staples" and unclassified(frame) == []
    assert by_tic.loc["AAPL", "source"] == "pytickersymbols"
    with pytest.raises(ValueError, match="sector override for V: unknown sector 'Finance'"):
        sector_map(["V"], overrides={"V": "Finance"})


def test_a_custom_source_replaces_the_package():
    source = {"AAA": Classification("Energy", "Oil & Gas", "pytickersymbols")}
    frame = sector_map(["AAA", "AAPL"], source=source)
    assert frame["sector"].tolist() == ["Energy", "Unknown"]


@pytest.mark.parametrize(
    ("tickers", "message"),
    [(["AAPL", "AAPL"], r"duplicate ticker\(s\) \['AAPL'\]"), (["AAPL", ""], "non-empty strings")],
)
def test_bad_tickers_are_one_line_errors(tickers, message):
    with pytest.raises(ValueError, match=message):
        sector_map(tickers)


def test_the_keyword_rules_vote_across_a_stocks_tags():
    # Disney: two tags say consumer cyclical, four say media: GICS has it in Communication Services.
    disney = [
        "Broadcasting",
        "Broadcastingandentertainment",
        "Consumer Cyclicals",
        "Cyclical Consumer Services",
        "Media & Publishing",
        "Media entertainment",
    ]
    assert classify_industries(disney) == ("Communication Services", "Broadcasting")
    # A tie goes to the rule listed first: a REIT is real estate before it is a financial.
    tags = ["Financials", "Real estate investment trust Health care"]
    assert classify_industries(tags) == ("Real Estate", "Real estate investment trust Health care")
    assert classify_industries(["Zement"]) is None


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_sector_file_is_read_and_overrides_the_package(tmp_path):
    path = write(
        tmp_path / "sectors.csv", "tic,sector,industry\nwba,consumer staples,Drug Retailers\nAAPL,ETF,\n"
    )
    overrides = load_sector_file(path)
    assert overrides.to_dict("records") == [
        {"tic": "WBA", "sector": "Consumer Staples", "industry": "Drug Retailers"},
        {"tic": "AAPL", "sector": "ETF", "industry": ""},
    ]
    frame = sector_map(["AAPL", "WBA"], overrides=overrides)
    assert frame["sector"].tolist() == ["ETF", "Consumer Staples"] and set(frame["source"]) == {"file"}
    assert load_sector_file(write(tmp_path / "short.csv", "tic,sector\nKO,Consumer Staples\n"))[
        "industry"
    ].tolist() == [""]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tic,industry\nKO,Beverages\n", r"missing column\(s\) \['sector'\]"),
        (
            "tic,sector\nKO,Consumer Staples\nko,Energy\n",
            r"duplicate ticker\(s\) \['KO'\] on row\(s\) \[2, 3\]",
        ),
        ("tic,sector\nKO,Consumer Staples\nPG,\n", r"row 3 \(PG\): empty sector"),
        ("tic,sector\nKO,Drinks\n", r"row 2 \(KO\): unknown sector 'Drinks'"),
        ("tic,sector\n,Energy\n", r"empty tic on row\(s\) \[2\]"),
    ],
)
def test_a_bad_sector_file_names_the_file_and_rows(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=message) as error:
        load_sector_file(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="no such file"):
        load_sector_file(tmp_path / "absent.csv")


def test_with_sectors_labels_the_panel_in_column_order(slice_bars):
    market = MarketArrays.from_features(slice_bars, feature_names=[])
    labelled = with_sectors(market, sector_map(market.tickers))
    assert labelled.sectors == (
        "Information Technology",
        "Financials",
        "Consumer Staples",
        "Information Technology",
    )
    assert labelled.between(market.dates[10], market.dates[20]).sectors == labelled.sectors
    assert market.sectors is None  # the panel itself is unchanged


def synthetic_validated_bars() -> pd.DataFrame:
    """Synthetic validated bars: two known tickers and one nobody knows, 3 days."""
    dates = pd.bdate_range("2021-03-01", periods=3)
    return pd.DataFrame(
        [(date, tic, 10.0, 10.0, 10.0, 10.0, 100.0) for tic in ("JPM", "ZZZZ", "AAPL") for date in dates],
        columns=["date", "tic", "open", "high", "low", "close", "volume"],
    )


def test_the_sector_map_asset_classifies_the_universe_and_reports_the_unclassified(tmp_path):
    output = sector_map_asset(config=SectorSettings(), validated_daily_bars=synthetic_validated_bars())
    frame = output.value
    assert frame["tic"].tolist() == ["AAPL", "JPM", "ZZZZ"]
    assert output.metadata["unclassified_tickers"].value == "ZZZZ"
    assert output.metadata["sector_count"].value == 2
    assert "| Financials" in output.metadata["tickers_per_sector"].value
    assert "pytickersymbols" in output.metadata["sectors"].value
    path = write(tmp_path / "sectors.csv", "tic,sector\nZZZZ,Utilities\n")
    overridden = sector_map_asset(
        config=SectorSettings(sector_file=str(path)), validated_daily_bars=synthetic_validated_bars()
    )
    assert overridden.metadata["unclassified_tickers"].value == "none"
    assert overridden.value.set_index("tic").loc["ZZZZ", "source"] == "file"
    with pytest.raises(ValueError, match="no such file"):
        sector_map_asset(
            config=SectorSettings(sector_file=str(tmp_path / "x.csv")),
            validated_daily_bars=synthetic_validated_bars(),
        )


def test_the_asset_is_in_the_features_group():
    key = dg.AssetKey("sector_map")
    assert sector_map_asset.group_names_by_key[key] == "features"
    assert sector_map_asset.op.tags["dagster/compute_kind"] == "pytickersymbols"
