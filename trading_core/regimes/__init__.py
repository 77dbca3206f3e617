"""Causal market regimes: market signals, a Gaussian HMM fitted on training dates, its forward filter."""

from trading_core.regimes.model import (
    RegimeConfig,
    RegimeFilter,
    RegimeModel,
    RegimeStream,
    market_signals,
    regime_changes,
    regime_columns,
)

__all__ = [
    "RegimeConfig",
    "RegimeFilter",
    "RegimeModel",
    "RegimeStream",
    "market_signals",
    "regime_changes",
    "regime_columns",
]
