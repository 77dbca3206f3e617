"""A classical allocator's target weights as a per-asset feature column: the prior a tilting agent starts from.

The column at close ``t`` is one fit on the returns up to ``t`` (:func:`~trading_core.allocators.schedule.
weights_at`), refitted at every close rather than held for ``rebalance_every`` bars: a held schedule depends on
the bar count since the panel's first date, which a live price history does not reach, while a fit reads only
its trailing window, so the live engine computes the same value from its last :func:`history_needed` dates.
The prior is computed on the full history and cut into periods afterwards, so validation and test see priors fit
on everything before them, and never a bar after their own close.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pandas as pd

from trading_core.allocators.config import PRIOR_FEATURE, AllocatorConfig
from trading_core.allocators.schedule import allocation_schedule, weights_at
from trading_core.data.schema import BASE_COLUMNS
from trading_core.market.arrays import MarketArrays


def history_needed(config: AllocatorConfig) -> int:
    """Dates of closes one fit at the last close reads: its returns window and the close before it."""
    return config.window + 1


# A refit at every close is an optimisation per date: one pipeline run converts the same history for training,
# the zoo, the leaderboard, backtests and the input example, so fits are kept per (prices, config) in the process.
_CACHE_SIZE = 8
_cache: OrderedDict[tuple[str, AllocatorConfig], np.ndarray] = OrderedDict()


def _prices_key(market: MarketArrays) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (
        market.dates.asi8,
        np.ascontiguousarray(market.close),
        np.ascontiguousarray(market.tradable),
    ):
        digest.update(part.tobytes())
    digest.update(repr(market.tickers).encode())
    digest.update(repr(market.sectors).encode())  # sector_momentum reads them
    return digest.hexdigest()


def prior_weights(market: MarketArrays, config: AllocatorConfig) -> np.ndarray:
    """The prior ``[T, N]``: row ``t`` is :func:`weights_at` ``(market, t, config)``, a fit on closes ``<= t``.

    A fit reads only dates, closes, tradability and sectors, so a repeat on the same prices is served from a small
    per-process cache (as a copy)."""
    key = (_prices_key(market), config)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key].copy()
    weights = allocation_schedule(market, replace(config, rebalance_every=1)).weights
    weights.setflags(write=False)
    _cache[key] = weights
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return weights.copy()


def latest_prior(market: MarketArrays, config: AllocatorConfig) -> np.ndarray:
    """The prior ``[N]`` at the panel's last close (the live engine's, from its trailing price history)."""
    return weights_at(market, -1, config)


def with_prior(market: MarketArrays, config: AllocatorConfig) -> MarketArrays:
    """``market`` with :data:`PRIOR_FEATURE` appended as its last feature (pass the full history: a window cut
    first would refit its first dates without the history before them)."""
    if PRIOR_FEATURE in market.feature_names:
        raise ValueError(f"the panel already has a {PRIOR_FEATURE!r} feature")
    column = prior_weights(market, config)[:, None, :]
    return replace(
        market,
        feature_names=(*market.feature_names, PRIOR_FEATURE),
        features=np.ascontiguousarray(np.concatenate([market.features, column], axis=1)),
    )


def with_prior_column(frame: pd.DataFrame, config: AllocatorConfig) -> pd.DataFrame:
    """A long features frame with the :data:`PRIOR_FEATURE` column, fit on the frame's own closes."""
    if PRIOR_FEATURE in frame.columns:
        raise ValueError(f"the frame already has a {PRIOR_FEATURE!r} column")
    market = MarketArrays.from_features(frame[list(BASE_COLUMNS)], feature_names=[])
    weights = prior_weights(market, config)
    rows = market.dates.get_indexer(frame["date"])
    columns = pd.Index(market.tickers).get_indexer(frame["tic"])
    return frame.assign(**{PRIOR_FEATURE: weights[rows, columns]})


__all__ = [
    "PRIOR_FEATURE",
    "history_needed",
    "latest_prior",
    "prior_weights",
    "with_prior",
    "with_prior_column",
]
