"""Dated train / validation / test splits with no overlap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import pandas as pd

from trading_core.data.schema import UNKNOWN_SECTOR, feature_columns_of

Period = Literal["train", "validation", "test", "full"]
PERIODS: tuple[Period, ...] = ("train", "validation", "test")


@dataclass(frozen=True)
class DateSplit:
    """Inclusive date ranges of the three periods."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    validation_start: pd.Timestamp
    validation_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    def __post_init__(self) -> None:
        bounds = [
            self.train_start,
            self.train_end,
            self.validation_start,
            self.validation_end,
            self.test_start,
            self.test_end,
        ]
        if any(b > a for a, b in zip(bounds[1:], bounds[:-1], strict=True)) or not (
            self.train_end < self.validation_start and self.validation_end < self.test_start
        ):
            raise ValueError(f"split periods must be ordered and must not overlap: {self.as_dict()}")

    def as_dict(self) -> dict[str, str]:
        return {name: value.date().isoformat() for name, value in self.__dict__.items()}


def make_date_split(
    dates: pd.Series | pd.DatetimeIndex,
    train_end: str | None = None,
    validation_end: str | None = None,
    train_fraction: float = 0.7,
    validation_fraction: float = 0.15,
) -> DateSplit:
    """Split the distinct dates into three consecutive periods.

    Explicit ``train_end`` / ``validation_end`` dates win; otherwise the fractions of distinct dates are used.

    :param dates: dates of the feature panel
    :param train_end: last training date (inclusive)
    :param validation_end: last validation date (inclusive); the test period runs from the next date to the end
    :param train_fraction: share of dates for training when ``train_end`` is not given
    :param validation_fraction: share of dates for validation when ``validation_end`` is not given
    """
    unique = pd.DatetimeIndex(pd.Series(dates).drop_duplicates().sort_values())
    if len(unique) < 3:
        raise ValueError(f"need at least 3 distinct dates to split, got {len(unique)}")
    if not 0 < train_fraction < 1 or not 0 < validation_fraction < 1 - train_fraction:
        raise ValueError("fractions must satisfy 0 < train < 1 and 0 < validation < 1 - train")
    train_last = (
        unique[unique <= pd.Timestamp(train_end)][-1]
        if train_end
        else unique[max(int(len(unique) * train_fraction) - 1, 0)]
    )
    validation_last = (
        unique[unique <= pd.Timestamp(validation_end)][-1]
        if validation_end
        else unique[min(int(len(unique) * (train_fraction + validation_fraction)) - 1, len(unique) - 2)]
    )
    after_train = unique[unique > train_last]
    after_validation = unique[unique > validation_last]
    if len(after_train) == 0 or len(after_validation) == 0:
        raise ValueError(
            f"split leaves an empty period: train ends {train_last.date()}, validation ends "
            f"{validation_last.date()}, data ends {unique[-1].date()}"
        )
    return DateSplit(
        train_start=unique[0],
        train_end=train_last,
        validation_start=after_train[0],
        validation_end=validation_last,
        test_start=after_validation[0],
        test_end=unique[-1],
    )


def apply_split(features: pd.DataFrame, split: DateSplit) -> dict[str, pd.DataFrame]:
    """Cut a features frame into ``train``, ``validation`` and ``test`` frames by the split's dates."""
    periods = {
        "train": (split.train_start, split.train_end),
        "validation": (split.validation_start, split.validation_end),
        "test": (split.test_start, split.test_end),
    }
    return {
        name: features[(features["date"] >= start) & (features["date"] <= end)].reset_index(drop=True)
        for name, (start, end) in periods.items()
    }


@dataclass(frozen=True)
class DatasetSplits:
    """Feature frames of the three periods and the dates that bound them.

    The periods share one universe, :attr:`tickers` (every ticker of the full frame): a ticker listing after
    training or delisting before the test is a never-tradable column of the periods it has no rows in, so every
    period's arrays (:func:`trading_core.market.arrays.period_market`) have the same assets and a policy trained on one trades the others.

    :attr:`regime_model` is the market regime model (``RegimeModel.to_dict()``, plain JSON) whose filtered
    probabilities the ``p_regime_*`` columns hold, when the frames have them: it travels with the agents that
    observe them, so the live loop filters the same probabilities.

    :attr:`sectors` maps tickers to their sector (the ``sector_map`` asset's labels): every period's arrays carry
    them (:meth:`sector_labels`), so a sector-exposure limit binds in training, backtests and live alike.
    """

    split: DateSplit
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    regime_model: dict[str, Any] | None = None
    sectors: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.sectors is not None:
            bad = {
                tic: label
                for tic, label in self.sectors.items()
                if not (isinstance(label, str) and label.strip())
            }
            if bad:
                raise ValueError(f"sectors must map each ticker to a non-empty label, got {bad}")

    @property
    def feature_columns(self) -> list[str]:
        return feature_columns_of(self.train)

    @property
    def tickers(self) -> list[str]:
        """The run's universe: every ticker of the three periods, sorted (the arrays' column order)."""
        # Derived from the frames rather than stored, so splits pickled before universes existed keep working.
        periods = (self.train, self.validation, self.test)
        return sorted(set().union(*(frame["tic"].unique() for frame in periods)))

    @property
    def full(self) -> pd.DataFrame:
        """The three periods back in one frame."""
        return pd.concat([self.train, self.validation, self.test], ignore_index=True)

    def frame(self, period: Period) -> pd.DataFrame:
        """One period's frame (``train``, ``validation``, ``test``) or the ``full`` frame."""
        if period == "full":
            return self.full
        if period not in PERIODS:
            raise ValueError(f"unknown period {period!r}; choose from {', '.join((*PERIODS, 'full'))}")
        return getattr(self, period)

    def without_learned(self) -> DatasetSplits:
        """The same periods without the forecaster's columns (technical features only)."""

        def strip(frame: pd.DataFrame) -> pd.DataFrame:
            return frame[[c for c in frame.columns if not c.startswith("cnn_lstm_")]]

        # replace() keeps every other field (the regime model, the sectors, whatever is added later).
        return replace(
            self, train=strip(self.train), validation=strip(self.validation), test=strip(self.test)
        )

    def sector_labels(self, tickers: Sequence[str] | None = None) -> dict[str, str] | None:
        """Each ticker's sector, ``Unknown`` where :attr:`sectors` has none, so the labels are always complete;
        ``None`` when the splits carry no sectors.

        :param tickers: the tickers to label, in the order returned; default the universe, :attr:`tickers`
        """
        if self.sectors is None:
            return None
        universe = self.tickers if tickers is None else tickers
        return {tic: self.sectors.get(tic, UNKNOWN_SECTOR) for tic in universe}
