"""The settings of a classical allocator, every default written once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from trading_core.market.limits import RiskLimits

AllocatorMethod = Literal[
    "equal_weight",
    "inverse_volatility",
    "minimum_variance",
    "risk_parity",
    "hierarchical_risk_parity",
    "mean_variance",
    "momentum",
    "sector_momentum",
]
# Every allocator, in leaderboard order: the baseline first, then by how much they estimate.
ALLOCATORS: tuple[AllocatorMethod, ...] = get_args(AllocatorMethod)
CovarianceEstimator = Literal["ledoit_wolf", "shrunk", "empirical"]
# The feature column holding an allocator's weight per asset when it is an agent's prior
# (:mod:`trading_core.allocators.prior`); here so the environments name it without loading the optimisers.
PRIOR_FEATURE = "prior_weight"


@dataclass(frozen=True)
class AllocatorConfig:
    """How one classical allocator fits its target weights and how often.

    :param method: one of :data:`ALLOCATORS`
    :param lookback: trailing bars of returns each fit sees (up to and including the decision's close)
    :param rebalance_every: bars between refits; the weights (and the shares) are held in between
    :param min_history: returns an asset needs inside the window to enter a fit; before any asset has them the
        allocator holds equal weights
    :param max_weight: largest weight per asset, the risk manager's own limit (``None``: no cap)
    :param invest: fraction of equity invested; the rest stays in cash for the costs, so the risk manager's
        cash rule does not cut the orders
    :param covariance: covariance estimator of the optimisers: ``ledoit_wolf``, ``shrunk`` (fixed shrinkage)
        or ``empirical``
    :param risk_aversion: ``lambda`` of mean-variance's utility ``w'mu - lambda w'Sigma w``
    :param momentum_lookback: bars of the momentum return (12 months)
    :param momentum_skip: most recent bars left out of it (1 month: short-term reversal)
    :param momentum_top: fraction of the eligible assets held, equal weighted (at least enough to invest fully
        under ``max_weight``)
    :param sector_top: sectors ``sector_momentum`` holds, ranked by the momentum (``momentum_lookback``,
        ``momentum_skip``) of their equal-weight return; more when their assets cannot invest fully under
        ``max_weight``
    """

    method: AllocatorMethod = "equal_weight"
    lookback: int = 252
    rebalance_every: int = 21
    min_history: int = 63
    max_weight: float | None = RiskLimits.max_weight
    invest: float = 0.98
    covariance: CovarianceEstimator = "ledoit_wolf"
    # He and Litterman's market-implied delta = 2.5 in w'mu - delta/2 w'Sigma w; skfolio's utility has no 1/2.
    risk_aversion: float = 1.25
    momentum_lookback: int = 252
    momentum_skip: int = 21
    momentum_top: float = 0.3
    sector_top: int = 2

    def __post_init__(self) -> None:
        if self.method not in ALLOCATORS:
            raise ValueError(f"method must be one of {ALLOCATORS}, got {self.method!r}")
        if self.covariance not in get_args(CovarianceEstimator):
            raise ValueError(f"unknown covariance estimator {self.covariance!r}")
        counts = (
            self.lookback,
            self.rebalance_every,
            self.min_history,
            self.momentum_lookback,
            self.sector_top,
        )
        if min(counts) < 1:
            raise ValueError(
                "lookback, rebalance_every, min_history, momentum_lookback and sector_top must be positive"
            )
        if self.min_history > self.lookback:
            raise ValueError(f"min_history ({self.min_history}) cannot exceed lookback ({self.lookback})")
        if not 0 <= self.momentum_skip < self.momentum_lookback:
            raise ValueError("momentum_skip must lie in [0, momentum_lookback)")
        if not 0.0 < self.invest <= 1.0 or not 0.0 < self.momentum_top <= 1.0:
            raise ValueError("invest and momentum_top must lie in (0, 1]")
        if self.max_weight is not None and not self.max_weight > 0.0:
            raise ValueError(f"max_weight must be positive or None, got {self.max_weight}")
        if self.risk_aversion < 0.0:
            raise ValueError(f"risk_aversion must be non-negative, got {self.risk_aversion}")

    @property
    def cap(self) -> float:
        """The weight cap as a number (1 when there is none)."""
        return 1.0 if self.max_weight is None else min(self.max_weight, 1.0)

    @property
    def is_momentum(self) -> bool:
        """Whether the method ranks trailing returns (``momentum``, ``sector_momentum``)."""
        return self.method in ("momentum", "sector_momentum")

    @property
    def window(self) -> int:
        """Bars of returns one fit of this method looks at."""
        return self.momentum_lookback if self.is_momentum else self.lookback

    @property
    def history_needed(self) -> int:
        """Returns an asset needs inside the window to be fitted (momentum: the whole window)."""
        return self.momentum_lookback if self.is_momentum else self.min_history


__all__ = ["ALLOCATORS", "PRIOR_FEATURE", "AllocatorConfig", "AllocatorMethod", "CovarianceEstimator"]
