"""Causal features of intraday bars: the project's technical indicators per ticker in bar order, and the
microstructure features of :mod:`trading_core.features.microstructure`.

The frame keeps the daily feature layout (one row per ``date``, ``tic``) with ``date`` the bar END in exchange time
(tz-naive), so the splits, market arrays, environments and backtester of the daily pipeline take it unchanged: a
step is a bar, and an order decided at a bar's close fills at the next bar's open.

Indicator windows count bars, not days: on 15-minute bars FinRL's 60-bar SMA spans 2.3 sessions, on 1-minute bars
an hour. Each ticker's indicators run across session boundaries (the overnight move is one bar's return), as the
microstructure features do. FinRL's turbulence is left out: it needs 252 bars of trailing returns of the whole
universe before its first value (ten 15-minute sessions), and the microstructure's realized volatility and
spread estimators measure the risk it stands for bar by bar. VIX is daily and is left out too.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from trading_core.data.calendar import EXCHANGE_TIMEZONE
from trading_core.data.schema import BASE_COLUMNS, OHLCV_COLUMNS
from trading_core.features.batch import build_features
from trading_core.features.finrl_adapter import FINRL_INDICATORS
from trading_core.features.microstructure import MicrostructureConfig, microstructure_features


@dataclass(frozen=True)
class IntradayFeatureConfig:
    """Which features the minute bars get.

    :param indicators: stockstats indicator names, computed per ticker over its bars (windows in bars)
    :param use_microstructure: add the bar-based microstructure features (realized volatility, Amihud,
        Corwin–Schultz, Abdi–Ranaldo, and trade intensity where the bars carry ``trade_count``)
    """

    indicators: tuple[str, ...] = tuple(FINRL_INDICATORS)
    use_microstructure: bool = True


def exchange_time(timestamps: pd.Series) -> pd.Series:
    """UTC bar ends as tz-naive exchange time."""
    return pd.to_datetime(timestamps, utc=True).dt.tz_convert(EXCHANGE_TIMEZONE).dt.tz_localize(None)


def daily_layout(bars: pd.DataFrame) -> pd.DataFrame:
    """Intraday bars (``timestamp`` the UTC bar end) in the daily long layout: ``date`` the bar end in exchange
    time, tz-naive, then ``tic`` and OHLCV, sorted by bar then ticker.

    :param bars: validated intraday bars
    """
    frame = bars.loc[:, ["tic", *OHLCV_COLUMNS]].assign(date=exchange_time(bars["timestamp"]).to_numpy())
    return frame[list(BASE_COLUMNS)].sort_values(["date", "tic"], ignore_index=True)


def build_intraday_features(
    bars: pd.DataFrame,
    config: IntradayFeatureConfig | None = None,
    microstructure: MicrostructureConfig | None = None,
) -> pd.DataFrame:
    """Indicators and microstructure features of every bar, from that ticker's bars up to the bar's end only.

    :param bars: validated intraday bars: ``timestamp`` (UTC bar end), ``tic``, OHLCV
    :param config: which features; defaults to :class:`IntradayFeatureConfig`
    :param microstructure: windows of the microstructure features (in bars); their defaults when ``None``
    :return: one row per (``date``, ``tic``) with complete features (warm-up rows left out, never back-filled),
        ``date`` the bar end in exchange time
    """
    config = config or IntradayFeatureConfig()
    panel = daily_layout(bars)
    features = build_features(panel, indicators=list(config.indicators), use_turbulence=False)
    if config.use_microstructure:
        measured = microstructure_features(
            bars.loc[:, ["timestamp", "tic", *OHLCV_COLUMNS]], config=microstructure or MicrostructureConfig()
        )
        measured.insert(0, "date", exchange_time(measured.pop("timestamp")).to_numpy())
        features = features.merge(measured, on=["date", "tic"], how="left")
        # A bar whose microstructure window has not started yet is warm-up, like an indicator's.
        features = features.dropna().reset_index(drop=True)
    return features.sort_values(["date", "tic"], ignore_index=True)


__all__ = ["IntradayFeatureConfig", "build_intraday_features", "daily_layout", "exchange_time"]
