"""Shared fixtures: real market data from ../shared/data, sliced small for fast tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import settings

# CI explores the same examples on every run (reproducible failures); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Importing the Definitions prepares the state home: keep tests out of the user's project-local folder.
os.environ["RL_TRADING_HOME"] = tempfile.mkdtemp(prefix="rl_trading_test_home_")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RL_TRADING_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
DOW30_FILE = SHARED_DATA / "dow30_daily_2009_2021.csv.gz"
VIX_FILE = SHARED_DATA / "vix_index_daily_2005_2021.csv.gz"
SLICE_TICKERS = ["AAPL", "JPM", "KO", "MSFT"]


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real market data {path} not found (set RL_TRADING_SHARED_DATA to the shared/data folder)"
        )
    return path


@pytest.fixture(scope="session")
def dow30_file() -> Path:
    return _require(DOW30_FILE)


@pytest.fixture(scope="session")
def vix_file() -> Path:
    return _require(VIX_FILE)


@pytest.fixture(scope="session")
def dow30_bars(dow30_file: Path) -> pd.DataFrame:
    """Every Dow-30 bar as read from the file (dates as text)."""
    from trading_core.data.files import read_bars_file

    return read_bars_file(dow30_file)


@pytest.fixture(scope="session")
def slice_bars(dow30_bars: pd.DataFrame) -> pd.DataFrame:
    """Four tickers, 2015-2019, validated and typed: a small real panel for fast tests."""
    from trading_core.data.schema import select_window
    from trading_core.data.validation import to_validated_bars

    return to_validated_bars(select_window(dow30_bars, SLICE_TICKERS, "2015-01-01", "2019-12-31"))


@pytest.fixture()
def slice_csv(tmp_path: Path, dow30_bars: pd.DataFrame) -> Path:
    """The small real slice written as a CSV file in the long format."""
    from trading_core.data.schema import select_window

    path = tmp_path / "bars.csv"
    select_window(dow30_bars, SLICE_TICKERS, "2015-01-01", "2019-12-31").to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def live_agent(dow30_bars: pd.DataFrame):
    """A small PPO (and its decision spec) trained on daily bars of tickers the 1-minute file holds."""
    from tests.live_support import train_live_agent

    return train_live_agent(dow30_bars)


@pytest.fixture(scope="session")
def live_minutes() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The shared 1-minute bars of the live tickers: (first session as warm-up history, the rest)."""
    from tests.live_support import minute_bars, split_first_day

    _require(SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz")
    return split_first_day(minute_bars(SHARED_DATA))
