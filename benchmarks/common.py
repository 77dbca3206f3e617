"""Shared setup of the benchmarks: the Dow-30 panel from the shared real-data folder, with FinRL features."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from trading_core.data.files import read_bars_file
from trading_core.data.schema import indicator_columns_of
from trading_core.data.validation import to_validated_bars
from trading_core.features.batch import build_features
from trading_core.features.finrl_adapter import StockTradingEnvNumpy
from trading_core.market.arrays import MarketArrays

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RL_TRADING_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def dow30_features(start: str = "2009-01-01", end: str = "2021-12-31") -> pd.DataFrame:
    """FinRL features of the 30 tickers that trade over the whole Dow-30 file (DOW itself starts in 2019)."""
    path = SHARED_DATA / "dow30_daily_2009_2021.csv.gz"
    if not path.exists():
        raise SystemExit(
            f"benchmark data {path} not found; set RL_TRADING_SHARED_DATA to the shared/data folder"
        )
    bars = to_validated_bars(read_bars_file(path))
    bars = bars[(bars["tic"] != "DOW") & (bars["date"] >= start) & (bars["date"] <= end)]
    return build_features(bars)


def finrl_numpy_env(features: pd.DataFrame, market: MarketArrays, if_train: bool) -> StockTradingEnvNumpy:
    """FinRL's ``env_stocktrading_np`` over the same panel: closes, FinRL's indicators and turbulence."""
    tech_index = [market.feature_names.index(name) for name in indicator_columns_of(features)]
    config = {
        "price_array": market.close,
        "tech_array": market.features[:, tech_index, :].reshape(market.n_steps, -1),
        "turbulence_array": market.turbulence,
        "if_train": if_train,
    }
    return StockTradingEnvNumpy(config=config)


class Timer:
    """Wall-clock seconds of a ``with`` block."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
