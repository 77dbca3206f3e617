"""What the risk manager enforces and reports: its limits, the trading states and one intervention.

:class:`RiskLimits` is the configuration of :class:`~trading_core.market.risk.RiskManager` (every limit written
once, with its default); :class:`TradingState` the states it moves each portfolio between, as in NautilusTrader;
:class:`Intervention` one change a rule made to one portfolio's target, with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum


class TradingState(IntEnum):
    """Trading state of one portfolio, as in NautilusTrader."""

    ACTIVE = 0  # every rule applies, orders flow
    REDUCING = 1  # orders may only shrink positions toward zero
    HALTED = 2  # no orders, except a single flatten on entering the state


@dataclass(frozen=True)
class RiskLimits:
    """Limits of the risk manager; ``None`` switches a limit off.

    :param max_weight: largest ``|position value| / equity`` per asset after the trade
    :param max_gross_exposure: largest ``sum |position values| / equity`` after the trade
    :param max_net_exposure: largest ``|sum position values| / equity`` after the trade
    :param allow_short: allow negative target holdings
    :param max_margin: cash may fall to ``-max_margin * equity`` after the trade; 0 keeps cash non-negative
    :param cost_buffer: fraction of the buy notional held back in cash for costs
    :param var_limit: largest 1-day value at risk of the post-trade portfolio, as a fraction of equity
    :param var_method: ``historical`` (empirical quantile) or ``parametric`` (normal, sample covariance)
    :param var_confidence: VaR confidence level, e.g. 0.95
    :param drawdown_reduce: drawdown from peak equity at which a portfolio goes REDUCING (while it lasts)
    :param max_drawdown_halt: drawdown from peak equity at which a portfolio is HALTED until ``reset()``
    :param daily_loss_limit: one-bar loss that HALTS a portfolio for ``cooldown_bars`` bars
    :param volatility_halt: trailing annualised portfolio volatility above which a portfolio is REDUCING
    :param turbulence_halt: market turbulence index above which portfolios are REDUCING
    :param cooldown_bars: bars a daily-loss halt lasts (at least one bar)
    :param liquidate_on_halt: entering HALTED flattens the portfolio once (target 0)
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
    drawdown_reduce: float | None = 0.10
    max_drawdown_halt: float | None = 0.20
    daily_loss_limit: float | None = 0.05
    volatility_halt: float | None = None
    turbulence_halt: float | None = None
    cooldown_bars: int = 5
    liquidate_on_halt: bool = True

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
            "drawdown_reduce",
            "max_drawdown_halt",
            "daily_loss_limit",
            "volatility_halt",
        ):
            value = getattr(self, name)
            if value is not None and not value >= 0.0:
                raise ValueError(f"{name} must be non-negative or None, got {value}")

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
        )


@dataclass(frozen=True)
class Intervention:
    """One change a rule made to one portfolio's target.

    Per-asset rules (``halted``, ``halt_liquidation``, ``reducing``, ``no_equity``, ``no_short``,
    ``max_weight``) name the asset and give ``requested`` / ``approved`` in shares. Rules that scale the whole
    target (``gross_exposure``, ``net_exposure``, ``var_limit``, ``final_scale``) have ``asset=None`` and give
    the measured quantity before and after (exposure or VaR as a fraction of equity; the scale factor for
    ``final_scale``); ``cash`` gives the post-trade cash before and after.
    """

    env: int
    step: int
    rule: str
    asset: int | None
    requested: float
    approved: float
    reason: str


__all__ = ["Intervention", "RiskLimits", "TradingState"]
