"""Regimes over a run's whole history: the model fitted on its training dates, filtered over every date, and
the filtered probabilities joined to a features frame as date-level observation columns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from trading_core.regimes.model import REGIME_PREFIX, RegimeModel, market_signals, regime_changes
from trading_core.regimes.settings import RegimeConfig

PERIOD_NAMES: tuple[str, ...] = ("train", "validation", "test")


@dataclass(frozen=True, eq=False)
class MarketRegimes:
    """The fitted regime model and its filtered regimes on every date.

    :param model: :meth:`RegimeModel.to_dict` of the model (plain JSON, stored with agents that observe it)
    :param frame: indexed by ``date``: ``market_return``, ``market_volatility``, ``regime``, ``p_regime_0..``
    :param config: the model's settings
    """

    model: dict[str, Any]
    frame: pd.DataFrame
    config: RegimeConfig

    @property
    def probability_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c.startswith(REGIME_PREFIX)]

    def regime_model(self) -> RegimeModel:
        return RegimeModel.from_dict(self.model)

    def changes(self, min_duration: int = 5) -> pd.DataFrame:
        """:func:`regime_changes` of the filtered regimes."""
        return regime_changes(self.frame, min_duration)


def fit_market_regimes(
    bars: pd.DataFrame, train_start: pd.Timestamp, train_end: pd.Timestamp, config: RegimeConfig
) -> MarketRegimes:
    """Fit on the training dates' signals only, then filter every date of ``bars``.

    :param bars: long bars (``date``, ``tic``, ``close``) of the traded universe over the whole history
    :param train_start: first training date (inclusive)
    :param train_end: last training date (inclusive); nothing after it reaches the fit
    :param config: the model's settings
    """
    if pd.Timestamp(train_start) > pd.Timestamp(train_end):
        raise ValueError(f"train_start {train_start} is after train_end {train_end}")
    signals = market_signals(bars, config.volatility_window)
    training = signals.loc[pd.Timestamp(train_start) : pd.Timestamp(train_end)]
    model = RegimeModel.fit(training, config)
    return MarketRegimes(model=model.to_dict(), frame=signals.join(model.filter(signals)), config=config)


def add_regime_features(features: pd.DataFrame, regimes: pd.DataFrame) -> pd.DataFrame:
    """The features with each date's regime probabilities as columns, the same value for every ticker.

    :param features: long features frame (``date``, ``tic``, ...)
    :param regimes: frame indexed by ``date`` holding ``p_regime_*`` columns (:meth:`RegimeModel.filter`)
    :raises ValueError: a column clash, or a features date without probabilities
    """
    columns = [c for c in regimes.columns if c.startswith(REGIME_PREFIX)]
    if not columns:
        raise ValueError("regimes hold no p_regime_ columns")
    clashes = [c for c in columns if c in features.columns]
    if clashes:
        raise ValueError(f"features already hold columns {clashes}")
    probabilities = regimes[columns]
    missing = pd.DatetimeIndex(features["date"].unique()).difference(probabilities.dropna().index)
    if len(missing):
        raise ValueError(f"regime probabilities lack {len(missing)} feature dates, first {missing[0].date()}")
    joined = features.merge(
        probabilities.rename_axis("date").reset_index(), on="date", how="left", validate="many_to_one"
    )
    return joined


def regime_feature_builder(
    build: Callable[[pd.DataFrame], pd.DataFrame], model: RegimeModel, tickers: list[str] | None = None
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """bars -> ``build(bars)`` with the regime probabilities filtered from those bars alone (for the
    truncate-and-compare check).

    :param build: the features builder to extend
    :param model: the fitted regime model
    :param tickers: the universe whose closes make the market signals (all tickers of the bars when ``None``)
    """

    def build_with_regimes(bars: pd.DataFrame) -> pd.DataFrame:
        universe = bars if tickers is None else bars[bars["tic"].isin(tickers)]
        signals = market_signals(universe, model.config.volatility_window)
        return add_regime_features(build(bars), model.filter(signals))

    return build_with_regimes


def regime_summary(regimes: MarketRegimes, periods: Mapping[str, tuple[pd.Timestamp, pd.Timestamp]]) -> dict:
    """Counts per period, shares and mean volatility per regime: the figures an asset shows.

    :param regimes: the fitted regimes
    :param periods: name -> (first date, last date), inclusive
    :return: ``counts`` (rows: period, dates, regime counts and shares), ``share`` (regime -> share of all
        dates with a complete signal) and ``mean_volatility`` (regime -> mean daily market volatility)
    """
    frame = regimes.frame
    known = frame.dropna(subset=["market_volatility"])
    k = regimes.config.n_regimes
    rows = []
    for name, (start, end) in periods.items():
        labels = known.loc[start:end, "regime"]
        counts = np.bincount(labels.to_numpy(dtype=np.int64), minlength=k)
        row: dict[str, Any] = {"period": name, "dates": len(labels)}
        for regime in range(k):
            row[f"regime_{regime}"] = int(counts[regime])
            row[f"share_{regime}"] = float(counts[regime] / len(labels)) if len(labels) else float("nan")
        rows.append(row)
    share = known["regime"].value_counts(normalize=True).reindex(range(k), fill_value=0.0)
    volatility = known.groupby("regime")["market_volatility"].mean().reindex(range(k))
    return {
        "counts": rows,
        "share": {int(r): float(v) for r, v in share.items()},
        "mean_volatility": {int(r): float(v) for r, v in volatility.items()},
    }
