"""What the risk manager enforces and reports: its limits, the trading states and one intervention.

:class:`RiskLimits` is the configuration of :class:`~trading_core.market.risk.RiskManager` (every limit written
once, with its default); :class:`TradingState` the states it moves each portfolio between, as in NautilusTrader;
:class:`Intervention` one change a rule made to one portfolio's target, with its reason; :class:`HaltStatistics`
how long and how often a run of states was HALTED.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from enum import IntEnum
from typing import Any, Literal

import numpy as np

HaltPolicy = Literal["rearm", "latch"]
CovarianceMethod = Literal["sample", "ledoit_wolf"]


class TradingState(IntEnum):
    """Trading state of one portfolio, as in NautilusTrader."""

    ACTIVE = 0  # every rule applies, orders flow
    REDUCING = 1  # orders may only shrink positions toward zero
    HALTED = 2  # no orders, except a single flatten on entering the state


@dataclass(frozen=True)
class RiskLimits:
    """Limits of the risk manager; ``None`` switches a limit off.

    Exposure is scaled down before any halt: the gross-exposure cap of a portfolio is ``max_gross_exposure``
    (1 when that limit is off) times three factors, each 1 when its policy is off:

    - drawdown scaling: 1 at ``drawdown_reduce`` (0 when that is off), falling linearly to ``min_exposure_scale``
      at ``max_drawdown_halt``; it replaces the REDUCING state of ``drawdown_reduce``, which only holds
      positions, so an agent may still rebalance within the shrinking cap;
    - volatility targeting: ``min(1, target_volatility / trailing annualised portfolio volatility)``;
    - the re-arm stage: ``k / rearm_stages`` in stage ``k`` after a re-arm (below).

    The max-drawdown breaker either latches (``halt_policy="latch"``: HALTED until ``reset()``, as in live
    trading, where a person re-arms, see :meth:`for_live`) or re-arms (``"rearm"``): after ``rearm_after_bars``
    bars in HALTED the portfolio trades again from a new high-water mark, the equity at the re-arm, at exposure
    stage 1 of ``rearm_stages``; each stage lasts ``stage_bars`` bars, and stage ``rearm_stages`` is full
    exposure (so ``rearm_stages=1`` re-arms at full exposure at once).

    :param max_weight: largest ``|position value| / equity`` per asset after the trade
    :param max_gross_exposure: largest ``sum |position values| / equity`` after the trade
    :param max_net_exposure: largest ``|sum position values| / equity`` after the trade
    :param allow_short: allow negative target holdings
    :param max_margin: cash may fall to ``-max_margin * equity`` after the trade; 0 keeps cash non-negative
    :param cost_buffer: fraction of the buy notional held back in cash for costs
    :param var_limit: largest 1-day value at risk of the post-trade portfolio, as a fraction of equity
    :param var_method: ``historical`` (empirical quantile) or ``parametric`` (normal, with ``covariance``)
    :param var_confidence: VaR confidence level, e.g. 0.95
    :param covariance: estimate of the asset covariance over the trailing returns window, for parametric VaR,
        the correlation clusters and the risk contributions: ``sample`` or ``ledoit_wolf`` (shrunk toward a scaled
        identity, steadier when the window is short against the number of assets)
    :param max_sector_exposure: largest ``sum |position values| / equity`` over the assets of one sector (the
        manager needs the assets' sector labels)
    :param max_cluster_exposure: largest ``sum |position values| / equity`` over one correlation cluster: assets
        whose trailing return correlations link them (average linkage at ``cluster_correlation``); an asset
        linked to none is a cluster of its own
    :param cluster_correlation: average trailing correlation at or above which clusters merge, in ``(-1, 1)``
    :param max_risk_contribution: largest share ``w_i (cov w)_i / (w' cov w)`` of the portfolio variance any one
        asset carries, in ``(0, 1]``; a book of fewer than ``1 / max_risk_contribution`` assets that all add risk
        cannot meet it and is flattened
    :param drawdown_reduce: drawdown from peak equity at which drawdown scaling starts, or without it, at which
        a portfolio goes REDUCING (while it lasts)
    :param max_drawdown_halt: drawdown from peak equity at which a portfolio is HALTED (see ``halt_policy``)
    :param daily_loss_limit: one-bar loss that HALTS a portfolio for ``cooldown_bars`` bars
    :param volatility_halt: trailing annualised portfolio volatility above which a portfolio is REDUCING
    :param turbulence_halt: market turbulence index above which portfolios are REDUCING
    :param cooldown_bars: bars a daily-loss halt lasts (at least one bar)
    :param liquidate_on_halt: entering HALTED flattens the portfolio once (target 0)
    :param halt_policy: ``rearm`` (a max-drawdown halt lifts after a cool-off) or ``latch`` (until ``reset()``)
    :param rearm_after_bars: bars a max-drawdown halt lasts under ``rearm`` (at least one)
    :param rearm_stages: exposure stages of the return to full exposure after a re-arm (at least one)
    :param stage_bars: bars each re-arm stage lasts (at least one)
    :param drawdown_scaling: shrink the gross-exposure cap with the drawdown (needs ``max_drawdown_halt``)
    :param min_exposure_scale: drawdown scale at ``max_drawdown_halt``, in ``[0, 1]``
    :param target_volatility: annualised portfolio volatility the gross-exposure cap is scaled toward
    """

    max_weight: float | None = 0.25
    max_gross_exposure: float | None = 1.0
    max_net_exposure: float | None = 1.0
    allow_short: bool = False
    max_margin: float = 0.0
    cost_buffer: float = 0.002
    var_limit: float | None = 0.02
    var_method: str = "historical"
    var_confidence: float = 0.95
    # The plain estimate by default: every result computed before shrinkage existed stays the same.
    covariance: CovarianceMethod = "sample"
    max_sector_exposure: float | None = None
    max_cluster_exposure: float | None = None
    cluster_correlation: float = 0.7
    max_risk_contribution: float | None = None
    drawdown_reduce: float | None = 0.10
    max_drawdown_halt: float | None = 0.20
    daily_loss_limit: float | None = 0.05
    volatility_halt: float | None = None
    turbulence_halt: float | None = None
    cooldown_bars: int = 5
    liquidate_on_halt: bool = True
    # A month of daily bars out, then a week per stage: a crash is sat out, a recovery is not missed.
    halt_policy: HaltPolicy = "rearm"
    rearm_after_bars: int = 20
    rearm_stages: int = 4
    stage_bars: int = 5
    drawdown_scaling: bool = True
    min_exposure_scale: float = 0.25
    # Above an equity index's usual 15-20%: targeting bites in turbulent markets, not in calm ones.
    target_volatility: float | None = 0.25

    def __post_init__(self) -> None:
        if self.var_method not in ("historical", "parametric"):
            raise ValueError(f"var_method must be 'historical' or 'parametric', got {self.var_method!r}")
        if not 0.0 < self.var_confidence < 1.0:
            raise ValueError(f"var_confidence must lie in (0, 1), got {self.var_confidence}")
        if self.max_margin < 0.0 or self.cost_buffer < 0.0 or self.cooldown_bars < 0:
            raise ValueError("max_margin, cost_buffer and cooldown_bars must be non-negative")
        for name in (
            "max_weight",
            "max_gross_exposure",
            "max_net_exposure",
            "var_limit",
            "max_sector_exposure",
            "max_cluster_exposure",
            "drawdown_reduce",
            "max_drawdown_halt",
            "daily_loss_limit",
            "volatility_halt",
        ):
            value = getattr(self, name)
            if value is not None and not value >= 0.0:
                raise ValueError(f"{name} must be non-negative or None, got {value}")
        self._check_correlation_limits()
        self._check_rearm_policy()

    def _check_correlation_limits(self) -> None:
        if self.covariance not in ("sample", "ledoit_wolf"):
            raise ValueError(f"covariance must be 'sample' or 'ledoit_wolf', got {self.covariance!r}")
        if not -1.0 < self.cluster_correlation < 1.0:
            raise ValueError(f"cluster_correlation must lie in (-1, 1), got {self.cluster_correlation}")
        cap = self.max_risk_contribution
        if cap is not None and not 0.0 < cap <= 1.0:
            raise ValueError(f"max_risk_contribution must lie in (0, 1] or be None, got {cap}")

    def _check_rearm_policy(self) -> None:
        if self.halt_policy not in ("rearm", "latch"):
            raise ValueError(f"halt_policy must be 'rearm' or 'latch', got {self.halt_policy!r}")
        for name in ("rearm_after_bars", "rearm_stages", "stage_bars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_exposure_scale <= 1.0:
            raise ValueError(f"min_exposure_scale must lie in [0, 1], got {self.min_exposure_scale}")
        if self.target_volatility is not None and not self.target_volatility > 0.0:
            raise ValueError(f"target_volatility must be positive or None, got {self.target_volatility}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle; limits pickled before a field existed keep the behaviour they were written with."""
        for name, value in {**_LEGACY_VALUES, **state}.items():
            object.__setattr__(self, name, value)

    def for_live(self) -> RiskLimits:
        """These limits for live trading: a max-drawdown halt latches until a person re-arms (``reset()``)."""
        return replace(self, halt_policy="latch")

    @classmethod
    def disabled(cls) -> RiskLimits:
        """Every limit off: shorts and unlimited margin allowed, no cost buffer, no state changes (FinRL parity)."""
        return cls(
            max_weight=None,
            max_gross_exposure=None,
            max_net_exposure=None,
            allow_short=True,
            max_margin=math.inf,
            cost_buffer=0.0,
            var_limit=None,
            drawdown_reduce=None,
            max_drawdown_halt=None,
            daily_loss_limit=None,
            volatility_halt=None,
            turbulence_halt=None,
            liquidate_on_halt=False,
            drawdown_scaling=False,
            target_volatility=None,
        )


# What limits pickled before the re-arm policy and exposure scaling existed did: latch, no scaling.
_LEGACY_VALUES: dict[str, Any] = {
    **{f.name: f.default for f in fields(RiskLimits)},
    "halt_policy": "latch",
    "drawdown_scaling": False,
    "target_volatility": None,
}


@dataclass(frozen=True)
class HaltStatistics:
    """How long and how often a portfolio was HALTED over a run of bars.

    :param days_halted: bars in HALTED
    :param halts: entries into HALTED (max-drawdown and daily-loss halts alike)
    :param rearms: exits from HALTED (a re-armed max-drawdown halt or an ended daily-loss cooldown)
    """

    days_halted: int
    halts: int
    rearms: int

    @classmethod
    def of_states(cls, states: Sequence[int] | np.ndarray) -> HaltStatistics:
        """The statistics of one portfolio's trading state at each bar, in bar order."""
        halted = np.asarray(states) == int(TradingState.HALTED)
        before = np.concatenate([[False], halted[:-1]])
        return cls(int(halted.sum()), int((halted & ~before).sum()), int((before & ~halted).sum()))


@dataclass(frozen=True)
class Intervention:
    """One change a rule made to one portfolio's target.

    Per-asset rules (``halted``, ``halt_liquidation``, ``reducing``, ``no_equity``, ``no_short``,
    ``max_weight``, ``sector_exposure``, ``cluster_exposure``, ``risk_contribution``) name the asset and give
    ``requested`` / ``approved`` in shares. Rules that scale the whole target (``exposure_scaling``,
    ``gross_exposure``, ``net_exposure``, ``var_limit``, ``final_scale``) have ``asset=None`` and give the measured
    quantity before and after (exposure or VaR as a fraction of equity; the scale factor for ``final_scale``);
    ``cash`` gives the post-trade cash before and after.
    """

    env: int
    step: int
    rule: str
    asset: int | None
    requested: float
    approved: float
    reason: str


__all__ = ["CovarianceMethod", "HaltPolicy", "HaltStatistics", "Intervention", "RiskLimits", "TradingState"]
