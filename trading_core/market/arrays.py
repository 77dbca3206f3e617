"""Dense numpy arrays of a feature panel, built once so simulation steps only index into them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd

from trading_core.data.schema import feature_columns_of
from trading_core.data.splits import DatasetSplits, Period


@dataclass(frozen=True)
class MarketArrays:
    """One trading period as arrays: ``[T, N]`` per price field, ``[T, F, N]`` features.

    A ragged universe (tickers listing, delisting or missing days inside the period) keeps every date: a cell
    without a bar is not ``tradable``. Its prices carry the ticker's last close forward (open = high = low =
    close, volume 0), or its first close back before it lists (it is held by nobody there, so that close only
    values zero shares), and its features are 0.

    :param dates: the T dates
    :param tickers: the N tickers, in column order
    :param feature_names: the F feature columns, in FinRL's observation order (feature-major)
    :param tradable: ``[T, N]`` whether the asset has a bar (with complete features) on the date; ``None``
        means every asset on every date
    :param sectors: the N tickers' sector labels, in column order (:func:`trading_core.sectors.with_sectors`
        attaches them from a sector map); ``None`` when the panel carries none
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
    tradable: np.ndarray | None = None
    sectors: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.tradable is None:
            object.__setattr__(self, "tradable", np.ones(self.close.shape, dtype=bool))
        if self.sectors is not None:
            object.__setattr__(self, "sectors", tuple(self.sectors))
            if len(self.sectors) != len(self.tickers) or not all(
                isinstance(label, str) and label.strip() for label in self.sectors
            ):
                raise ValueError(
                    f"sectors must hold one non-empty label per ticker ({len(self.tickers)}), got {self.sectors!r}"
                )

    @property
    def n_steps(self) -> int:
        return len(self.dates)

    @property
    def n_assets(self) -> int:
        return len(self.tickers)

    @cached_property
    def all_tradable(self) -> bool:
        """Whether every asset trades on every date (the rectangular panel: no masking anywhere)."""
        return bool(self.tradable.all())

    @cached_property
    def observed_close(self) -> np.ndarray:
        """Closes as an agent observes them: 0 where the asset is not tradable."""
        return self.close if self.all_tradable else np.where(self.tradable, self.close, 0.0)

    @cached_property
    def observed_features(self) -> np.ndarray:
        """Features as an agent observes them: 0 where the asset is not tradable."""
        return self.features if self.all_tradable else np.where(self.tradable[:, None, :], self.features, 0.0)

    @classmethod
    def from_features(
        cls,
        features: pd.DataFrame,
        feature_names: list[str] | None = None,
        tickers: Sequence[str] | None = None,
    ) -> MarketArrays:
        """Pivot a long features frame to the full date x ticker grid; a missing row is a non-tradable cell.

        :param features: one row per (date, tic) the ticker trades on (ragged: rows may be missing)
        :param feature_names: feature columns to keep, in order; default every feature but quotes
        :param tickers: the universe, in column order (default: the frame's tickers, sorted); a ticker without
            rows is never tradable and priced 1.0; rows of other tickers are ignored
        """
        universe = tuple(sorted(features["tic"].unique())) if tickers is None else tuple(tickers)
        frame = features[features["tic"].isin(universe)]
        if frame.duplicated(["date", "tic"]).any():
            raise ValueError("features hold more than one row for some (date, tic)")
        dates = pd.DatetimeIndex(np.sort(frame["date"].unique()))
        rows = dates.get_indexer(frame["date"])
        columns = pd.Index(universe).get_indexer(frame["tic"])
        tradable = np.zeros((len(dates), len(universe)), dtype=bool)
        tradable[rows, columns] = True
        quote_columns = {"bid", "ask"}
        names = tuple(
            feature_names
            if feature_names is not None
            else [c for c in feature_columns_of(frame) if c not in quote_columns]
        )

        def grid(column: str) -> np.ndarray:
            values = np.full(tradable.shape, np.nan)
            values[rows, columns] = frame[column].to_numpy(dtype=np.float64)
            return values

        close = _carried_close(grid("close"), tradable)

        def price(column: str) -> np.ndarray:
            return np.ascontiguousarray(np.where(tradable, grid(column), close))

        def masked(column: str) -> np.ndarray:
            return np.ascontiguousarray(np.where(tradable, grid(column), 0.0))

        stacked = (
            np.stack([masked(name) for name in names], axis=1)
            if names
            else np.zeros((len(dates), 0, len(universe)))
        )
        return cls(
            dates=dates,
            tickers=universe,
            feature_names=names,
            open=price("open"),
            high=price("high"),
            low=price("low"),
            close=close,
            volume=masked("volume"),
            features=np.ascontiguousarray(stacked),
            turbulence=_per_date(frame, "turbulence", dates),
            bid=price("bid") if "bid" in frame.columns else None,
            ask=price("ask") if "ask" in frame.columns else None,
            tradable=tradable,
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
            tradable=self.tradable[rows],
            sectors=self.sectors,
        )

    def to_frame(self) -> pd.DataFrame:
        """The long features frame again (one row per tradable date and ticker), for code that reads frames."""
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
        if self.all_tradable:
            return frame
        return frame[self.tradable.reshape(-1)].reset_index(drop=True)

    def daily_returns(self) -> np.ndarray:
        """Close-to-close simple returns ``[T, N]``; row 0 is zero."""
        returns = np.zeros_like(self.close)
        returns[1:] = self.close[1:] / self.close[:-1] - 1.0
        return returns


def _carried_close(close: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """Closes ``[T, N]`` with every non-tradable cell priced: the last close carried forward, the first close
    before a listing, 1.0 for an asset with no bar at all (never held, so these only value zero shares)."""
    last_seen = np.where(tradable, np.arange(len(close))[:, None], -1)
    np.maximum.accumulate(last_seen, axis=0, out=last_seen)
    first = tradable.argmax(axis=0)
    listed = tradable.any(axis=0)
    source = np.where(last_seen >= 0, last_seen, first[None, :])
    carried = np.take_along_axis(close, source, axis=0)
    carried[:, ~listed] = 1.0
    return np.ascontiguousarray(carried)


def _per_date(frame: pd.DataFrame, column: str, dates: pd.DatetimeIndex) -> np.ndarray:
    """A per-date column (the same on every row of a date) as ``[T]``; zeros when the frame lacks it."""
    if column not in frame.columns:
        return np.zeros(len(dates))
    first = frame.groupby("date")[column].first()
    return np.ascontiguousarray(first.reindex(dates).to_numpy(dtype=np.float64))


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


def period_market(
    splits: DatasetSplits, period: Period = "full", columns: Sequence[str] | None = None
) -> MarketArrays:
    """One period of ``splits`` (or ``full``) as arrays on the run's universe, ``splits.tickers``: every period
    then has the same assets, so a policy trained on one trades the others.

    Each period is converted from its own rows only (no price of another period fills its cells).

    The arrays carry the splits' sector labels when they have some (:meth:`DatasetSplits.sector_labels`:
    ``Unknown`` for a ticker without one), so a sector-exposure limit binds wherever the period is traded.

    :param columns: frame columns to keep before converting (e.g. the base columns and the features an agent
        observes, in its order); default every column
    """
    frame = splits.frame(period)
    if columns is not None:
        frame = frame[list(columns)]
    market = MarketArrays.from_features(frame, tickers=splits.tickers)
    sectors = splits.sector_labels()
    if sectors is None:
        return market
    return replace(market, sectors=tuple(sectors[tic] for tic in market.tickers))
