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

    def between(self, start: pd.Timestamp | str, end: pd.Timestamp | str) -> MarketArrays:
        """The dates from ``start`` to ``end`` (inclusive), as views of these arrays (no copies)."""
        first, stop = (
            self.dates.searchsorted(pd.Timestamp(start)),
            self.dates.searchsorted(pd.Timestamp(end), "right"),
        )
        rows = slice(first, stop)

        def cut(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[rows]

        return MarketArrays(
            dates=self.dates[rows],
            tickers=self.tickers,
            feature_names=self.feature_names,
            open=self.open[rows],
            high=self.high[rows],
            low=self.low[rows],
            close=self.close[rows],
            volume=self.volume[rows],
            features=self.features[rows],
            turbulence=self.turbulence[rows],
            bid=cut(self.bid),
            ask=cut(self.ask),
        )

    def to_frame(self) -> pd.DataFrame:
        """The long features frame again (one row per date and ticker), for code that reads frames (FinRL)."""
        dates = np.repeat(self.dates.to_numpy(), self.n_assets)
        frame = pd.DataFrame(
            {"date": dates, "tic": np.tile(np.array(self.tickers, dtype=object), self.n_steps)}
        )
        for column in ("open", "high", "low", "close", "volume"):
            frame[column] = getattr(self, column).reshape(-1)
        for index, name in enumerate(self.feature_names):
            frame[name] = self.features[:, index, :].reshape(-1)
        if "turbulence" not in self.feature_names and self.turbulence.any():
            frame["turbulence"] = np.repeat(self.turbulence, self.n_assets)
        for column in ("bid", "ask"):
            if getattr(self, column) is not None:
                frame[column] = getattr(self, column).reshape(-1)
        return frame

    def daily_returns(self) -> np.ndarray:
        """Close-to-close simple returns ``[T, N]``; row 0 is zero."""
        returns = np.zeros_like(self.close)
        returns[1:] = self.close[1:] / self.close[:-1] - 1.0
        return returns


def as_market(data: pd.DataFrame | MarketArrays) -> MarketArrays:
    """The panel as arrays: converted from a features frame, or passed through when it already is arrays (so a
    caller that converts once can hand the arrays to every consumer)."""
    return data if isinstance(data, MarketArrays) else MarketArrays.from_features(data)


def as_frame(data: pd.DataFrame | MarketArrays) -> pd.DataFrame:
    """The panel as a long features frame: passed through, or rebuilt from arrays (for code that reads frames)."""
    return data.to_frame() if isinstance(data, MarketArrays) else data


def n_dates(data: pd.DataFrame | MarketArrays) -> int:
    """Number of dates of a features frame or of arrays."""
    return data.n_steps if isinstance(data, MarketArrays) else int(data["date"].nunique())


def date_window(
    data: pd.DataFrame | MarketArrays, start: pd.Timestamp | str, end: pd.Timestamp | str
) -> pd.DataFrame | MarketArrays:
    """The dates from ``start`` to ``end`` (inclusive) of a features frame or of arrays, in the same form."""
    if isinstance(data, MarketArrays):
        return data.between(start, end)
    return data[(data["date"] >= start) & (data["date"] <= end)].reset_index(drop=True)
