"""Dense numpy arrays of a feature panel, built once so simulation steps only index into them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trading_core.data.schema import feature_columns_of


@dataclass(frozen=True)
class MarketArrays:
    """One trading period as arrays: ``[T, N]`` per price field, ``[T, F, N]`` features.

    :param dates: the T dates
    :param tickers: the N tickers, in column order
    :param feature_names: the F feature columns, in FinRL's observation order (feature-major)
    """

    dates: pd.DatetimeIndex
    tickers: tuple[str, ...]
    feature_names: tuple[str, ...]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    features: np.ndarray
    turbulence: np.ndarray
    bid: np.ndarray | None = None
    ask: np.ndarray | None = None

    @property
    def n_steps(self) -> int:
        return len(self.dates)

    @property
    def n_assets(self) -> int:
        return len(self.tickers)

    @classmethod
    def from_features(cls, features: pd.DataFrame, feature_names: list[str] | None = None) -> MarketArrays:
        """Pivot a long features frame (one row per date and ticker, every ticker on every date)."""
        frame = features.sort_values(["date", "tic"])
        dates = pd.DatetimeIndex(frame["date"].unique())
        tickers = tuple(sorted(frame["tic"].unique()))
        if len(frame) != len(dates) * len(tickers):
            raise ValueError(
                "features must hold every ticker on every date (see trading_core.features.batch.balanced_panel)"
            )
        quote_columns = {"bid", "ask"}
        names = tuple(
            feature_names
            if feature_names is not None
            else [c for c in feature_columns_of(frame) if c not in quote_columns]
        )

        def field(column: str) -> np.ndarray:
            return np.ascontiguousarray(
                frame[column].to_numpy(dtype=np.float64).reshape(len(dates), len(tickers))
            )

        stacked = (
            np.stack([field(name) for name in names], axis=1)
            if names
            else np.zeros((len(dates), 0, len(tickers)))
        )
        turbulence = field("turbulence")[:, 0] if "turbulence" in frame.columns else np.zeros(len(dates))
        return cls(
            dates=dates,
            tickers=tickers,
            feature_names=names,
            open=field("open"),
            high=field("high"),
            low=field("low"),
            close=field("close"),
            volume=field("volume"),
            features=np.ascontiguousarray(stacked),
            turbulence=turbulence,
            bid=field("bid") if "bid" in frame.columns else None,
            ask=field("ask") if "ask" in frame.columns else None,
        )

    def daily_returns(self) -> np.ndarray:
        """Close-to-close simple returns ``[T, N]``; row 0 is zero."""
        returns = np.zeros_like(self.close)
        returns[1:] = self.close[1:] / self.close[:-1] - 1.0
        return returns
