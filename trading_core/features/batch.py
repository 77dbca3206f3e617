"""Causal features: FinRL's technical indicators (stockstats), turbulence and optional VIX, on ragged universes.

FinRL's ``FeatureEngineer.preprocess_data`` ends with ``ffill().bfill()``, which copies future values into the
warm-up rows. This module reuses FinRL's indicator and turbulence code but never back-fills, so the row of
(date t, ticker) depends only on bars up to t:

* indicators are computed per ticker on its own bars (a ticker listing late, delisting early or missing a day
  never costs another ticker a date);
* a row whose own indicator warm-up is not complete is left out (that ticker is not tradable on that date);
  dates are left out only where no ticker has a complete row (the global warm-up);
* turbulence is FinRL's, on closes carried forward over a ticker's missing days (FinRL's ``pct_change`` pads
  them the same way); a ticker enters it once it has a full year of returns.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trading_core.data.schema import BASE_COLUMNS, feature_columns_of
from trading_core.features.finrl_adapter import FINRL_INDICATORS, FeatureEngineer

# stockstats' mean absolute deviation is NaN on a series shorter than its window, but zero on the first
# window - 1 rows of a longer one: those rows would depend on bars that come later, so they are warm-up.
_ZERO_FILLED = re.compile(r"^(?:cci(?:_(?P<cci>\d+))?|.+_(?P<mad>\d+)_mad)$")
_STOCKSTATS_CCI_WINDOW = 14
TURBULENCE_WINDOW = 252  # FinRL's one trading year of trailing returns


def balanced_panel(bars: pd.DataFrame) -> pd.DataFrame:
    """Keep only dates on which every ticker has a bar.

    :func:`build_features` no longer needs this (it handles ragged universes); the streaming features mirror
    ``build_features(balanced_panel(bars))``, and FinRL's own environment needs a rectangular panel.
    """
    tickers = bars["tic"].nunique()
    counts = bars.groupby("date")["tic"].nunique()
    full_dates = counts.index[counts == tickers]
    return bars[bars["date"].isin(full_dates)].sort_values(["date", "tic"], ignore_index=True)


def indicator_warm_up(indicators: Sequence[str] = FINRL_INDICATORS) -> int:
    """Leading bars of each ticker whose indicator values stockstats fills from later bars (CCI and MAD
    windows), so they are never complete features.

    :param indicators: stockstats indicator names
    """
    windows = [0]
    for name in indicators:
        match = _ZERO_FILLED.match(name)
        if match:
            window = match.group("cci") or match.group("mad") or _STOCKSTATS_CCI_WINDOW
            windows.append(int(window) - 1)
    return max(windows)


def _indicators(bars: pd.DataFrame, indicators: Sequence[str]) -> pd.DataFrame:
    """FinRL's per-ticker stockstats indicators; stockstats' printed errors become an exception."""
    engineer = FeatureEngineer(tech_indicator_list=list(indicators))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        features = engineer.add_technical_indicator(bars)
    if printed.getvalue().strip():
        raise ValueError(f"stockstats could not compute indicators: {printed.getvalue().strip()}")
    return features


def turbulence_of_day(history: np.ndarray, today: np.ndarray) -> float:
    """FinRL's turbulence distance of one date, before its warm-up rules (see :func:`settled_turbulence`).

    The squared Mahalanobis distance of ``today``'s returns from the mean of ``history``, under the
    pseudo-inverse of its sample covariance, over the tickers with a full history.

    :param history: ``[window, N]`` returns of the trailing dates, oldest first, NaN where a ticker has none
    :param today: ``[N]`` returns of the date
    :return: the distance; 0 when no ticker has a full history
    """
    missing = np.isnan(history)
    # FinRL skips the rows the most complete ticker misses, then drops every ticker still missing one.
    start = int(missing.sum(axis=0).min())
    kept = ~missing[start:].any(axis=0)
    n_kept = int(kept.sum())
    if not n_kept:
        return 0.0
    filtered = history[start:, kept]
    deviation = today[kept] - filtered.mean(axis=0)
    covariance = np.cov(filtered, rowvar=False, ddof=1).reshape(n_kept, n_kept)
    return float(deviation @ np.linalg.pinv(covariance) @ deviation)


def settled_turbulence(distance: float, positives: int) -> tuple[float, int]:
    """FinRL's value for a date past the warm-up: a non-positive distance gives 0, and so do the first two
    positive ones (outliers while the estimate settles).

    :param distance: the date's :func:`turbulence_of_day`
    :param positives: positive distances seen on earlier dates
    :return: the date's turbulence and the updated count of positive distances
    """
    if not distance > 0:  # NaN included, as FinRL's ``temp > 0`` test
        return 0.0, positives
    positives += 1
    return (distance if positives > 2 else 0.0), positives


def finrl_turbulence(returns: np.ndarray, window: int = TURBULENCE_WINDOW) -> np.ndarray:
    """FinRL's ``FeatureEngineer.calculate_turbulence`` on a ``[T, N]`` matrix of close-to-close returns (NaN
    where a ticker has none), in numpy: the same trailing ``window`` of dates, the same column filter, the same
    zeroed warm-up and first two positive values.

    FinRL's loop slices pandas frames per date (about 18 ms a date on two cores, over half of a pipeline's
    feature time); this does the same arithmetic on arrays, one date at a time with the helpers the streaming
    features use. ``tests/test_features.py`` holds it to FinRL's own function on ragged real data.
    """
    values = np.zeros(len(returns))
    positives = 0
    for day in range(window, len(returns)):
        distance = turbulence_of_day(returns[day - window : day], returns[day])
        values[day], positives = settled_turbulence(distance, positives)
    return values


def _turbulence(bars: pd.DataFrame) -> pd.DataFrame:
    """FinRL's turbulence per date, on closes carried forward over each ticker's missing days.

    Carrying forward is causal and is what FinRL's ``pct_change`` (``fill_method='pad'``) would do. Dates before
    a listing stay empty. Panels shorter than the window get 0 throughout (FinRL's own code fails on them).
    """
    closes = bars.pivot(index="date", columns="tic", values="close").sort_index().ffill()
    returns = closes.to_numpy(dtype=float)
    changes = np.full_like(returns, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        changes[1:] = returns[1:] / returns[:-1] - 1.0
    return pd.DataFrame({"date": closes.index, "turbulence": finrl_turbulence(changes)})


def _warm_up_rows(frame: pd.DataFrame, warm_up: int) -> pd.Series:
    """Rows among each ticker's first ``warm_up`` bars (``frame`` sorted by date)."""
    return frame.groupby("tic", sort=False).cumcount() < warm_up


def build_features(
    bars: pd.DataFrame,
    indicators: tuple[str, ...] | list[str] = FINRL_INDICATORS,
    use_turbulence: bool = True,
    vix: pd.Series | None = None,
) -> pd.DataFrame:
    """Add FinRL technical indicators, turbulence and VIX to validated bars, strictly causally.

    :param bars: validated long-format bars with ``date`` as timestamps; tickers may list, delist or miss days
    :param indicators: stockstats indicator names (FinRL's ``config.INDICATORS`` by default)
    :param use_turbulence: add FinRL's turbulence index (Mahalanobis distance of today's returns from the
        trailing 252-day history)
    :param vix: VIX close indexed by date; joined as column ``vix`` with the latest value known on each date
    :return: one row per (date, tic) with complete features, sorted by date then ticker; a ticker's missing
        rows are the dates it cannot trade (see :class:`~trading_core.market.arrays.MarketArrays`)
    """
    panel = bars.loc[:, list(BASE_COLUMNS)].sort_values(["date", "tic"], ignore_index=True)
    features = _indicators(panel, indicators)
    if use_turbulence:
        features = features.merge(_turbulence(panel), on="date", how="left")
    if vix is not None:
        vix_frame = vix.rename("vix").rename_axis("date").reset_index().sort_values("date")
        features = pd.merge_asof(features.sort_values("date"), vix_frame, on="date", direction="backward")
    features = features.sort_values(["date", "tic"], ignore_index=True)
    incomplete = features[feature_columns_of(features)].isna().any(axis=1)
    incomplete |= _warm_up_rows(features, indicator_warm_up(indicators))
    # Warm-up rows are dropped, never back-filled.
    return features[~incomplete].reset_index(drop=True)
