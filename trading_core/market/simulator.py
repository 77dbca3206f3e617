"""Batched portfolio simulation over a market panel: the one step function behind every environment and the
backtester. B portfolios advance together through the same dates; actions arrive as target holdings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from trading_core.market.arrays import MarketArrays
from trading_core.market.costs import (
    CostModel,
    LinearImpact,
    NoImpact,
    ProportionalCommission,
    commission_model,
    corwin_schultz_half_spread,
    fixed_half_spread,
    quote_half_spread,
    trailing_adv,
    trailing_volatility,
)
from trading_core.market.execution import ExecutionConfig, FillBar, Fills, execute_orders
from trading_core.market.risk import RiskLimits, RiskManager, RiskReview


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that turns an agent's targets into portfolio values.

    :param initial_amount: starting cash of each portfolio
    :param cost_model: commission and market impact
    :param spread: half-spread source: ``auto`` (closing quotes when the data has ``bid``/``ask``, else
        Corwin–Schultz), ``quotes``, ``corwin_schultz`` (from daily high/low), ``fixed`` or ``none``
    :param spread_bps: full spread in basis points for ``fixed`` (and the Corwin–Schultz warm-up fallback)
    :param execution: fill timing, order type and participation cap
    :param risk: risk limits; ``None`` switches the risk manager off
    :param stats_window: bars of trailing volume and volatility for impact
    :param var_lookback: bars of trailing returns for the risk manager's VaR
    """

    initial_amount: float = 100_000.0
    cost_model: CostModel = field(
        default_factory=lambda: CostModel(commission_model("interactive_brokers_fixed"), LinearImpact())
    )
    spread: Literal["auto", "quotes", "corwin_schultz", "fixed", "none"] = "auto"
    spread_bps: float = 10.0
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    risk: RiskLimits | None = field(default_factory=RiskLimits)
    stats_window: int = 20
    var_lookback: int = 60

    @classmethod
    def finrl_parity(cls, initial_amount: float = 100_000.0, cost_pct: float = 0.001) -> SimulationConfig:
        """FinRL ``StockTradingEnv`` semantics: same-bar close fills, proportional costs, no risk manager."""
        return cls(
            initial_amount=initial_amount,
            cost_model=CostModel(ProportionalCommission(cost_pct), NoImpact()),
            spread="none",
            execution=ExecutionConfig(fill_timing="same_close", participation_cap=None),
            risk=None,
        )


@dataclass(frozen=True)
class StepOutcome:
    """What one simulation step did to every portfolio."""

    equity_before: np.ndarray
    equity_after: np.ndarray
    fills: Fills
    review: RiskReview | None
    done: bool


class PortfolioSimulator:
    """B portfolios over one market panel, stepping through its dates in lockstep.

    :param market: the panel as arrays
    :param config: costs, fills and risk
    :param n_envs: number of portfolios B
    """

    def __init__(self, market: MarketArrays, config: SimulationConfig, n_envs: int = 1) -> None:
        if market.n_steps < 2:
            raise ValueError("a simulation needs at least two dates")
        self.market, self.config, self.n_envs = market, config, n_envs
        shape = market.close.shape
        has_quotes = market.bid is not None and market.ask is not None
        if config.spread == "quotes" and not has_quotes:
            raise ValueError("spread='quotes' needs bid and ask columns in the features")
        if config.spread == "quotes" or (config.spread == "auto" and has_quotes):
            # A quote is usable only when both sides are positive; elsewhere fall back to the fixed spread.
            quoted = quote_half_spread(market.bid, market.ask)
            self.half_spread = np.where(np.isfinite(quoted), quoted, config.spread_bps * 0.5e-4)
        elif config.spread in ("corwin_schultz", "auto"):
            self.half_spread = corwin_schultz_half_spread(
                market.high, market.low, fallback_bps=config.spread_bps
            )
        elif config.spread == "fixed":
            self.half_spread = fixed_half_spread(shape, config.spread_bps)
        else:
            self.half_spread = np.zeros(shape)
        self.adv = trailing_adv(market.volume, config.stats_window)
        self.sigma = trailing_volatility(market.close, config.stats_window)
        self.returns = market.daily_returns()
        self.risk = RiskManager(config.risk, n_envs, market.n_assets) if config.risk is not None else None
        self.day = 0
        self.cash = np.full(n_envs, config.initial_amount)
        self.holdings = np.zeros((n_envs, market.n_assets))

    @property
    def prices(self) -> np.ndarray:
        """Closes of the current date, ``[N]``."""
        return self.market.close[self.day]

    def equity(self) -> np.ndarray:
        return self.cash + self.holdings @ self.prices

    def reset(self) -> None:
        self.day = 0
        self.cash[:] = self.config.initial_amount
        self.holdings[:] = 0.0
        if self.risk is not None:
            self.risk.reset(self.equity())

    def returns_window(self) -> np.ndarray:
        """Asset returns of the trailing ``var_lookback`` bars up to and including today (known at the close)."""
        start = max(1, self.day - self.config.var_lookback + 1)
        return self.returns[start : self.day + 1]

    def review(self, target: np.ndarray) -> tuple[np.ndarray, RiskReview | None]:
        """Risk-check target holdings ``[B, N]`` at today's close; returns the approved targets and the review."""
        if self.risk is None:
            return target, None
        prices = np.broadcast_to(self.prices, self.holdings.shape)
        review = self.risk.review(target, self.holdings, prices, self.cash, self.returns_window())
        return review.approved, review

    def fill_bar(self) -> FillBar:
        """The bar that orders decided at today's close fill on, with the estimates known today."""
        market, day, shape = self.market, self.day, self.holdings.shape
        next_bar = self.config.execution.fill_timing == "next_open"
        fill_day = day + 1 if next_bar else day
        return FillBar(
            reference_price=np.broadcast_to(market.open[fill_day] if next_bar else market.close[day], shape),
            high=np.broadcast_to(market.high[fill_day], shape),
            low=np.broadcast_to(market.low[fill_day], shape),
            volume=np.broadcast_to(market.volume[fill_day], shape),
            # Spread, volume and volatility estimates are the ones known when the order was decided.
            half_spread=np.broadcast_to(self.half_spread[day], shape),
            adv=np.broadcast_to(self.adv[day], shape),
            sigma=np.broadcast_to(self.sigma[day], shape),
        )

    def fill(self, orders: np.ndarray, decision_prices: np.ndarray, bar: FillBar) -> Fills:
        """Execute signed share orders against a bar and book them into cash and holdings."""
        fills = execute_orders(
            orders,
            self.holdings,
            self.cash,
            decision_prices,
            bar,
            self.config.cost_model,
            self.config.execution,
        )
        self.holdings = self.holdings + fills.shares
        self.cash = self.cash + fills.cash_change
        return fills

    def advance(self) -> np.ndarray:
        """Move to the next date's close, mark every portfolio to it and let the risk manager see the bar."""
        self.day += 1
        equity = self.equity()
        if self.risk is not None:
            self.risk.on_bar(equity, float(self.market.turbulence[self.day]))
        return equity

    def step(self, target: np.ndarray) -> StepOutcome:
        """Review target holdings ``[B, N]`` at today's close, fill them, and mark to the next close."""
        if self.day >= self.market.n_steps - 1:
            raise RuntimeError("the simulation is at its last date; reset() first")
        equity_before = self.equity()
        approved, review = self.review(target)
        decision_prices = np.broadcast_to(self.prices, self.holdings.shape)
        fills = self.fill(approved - self.holdings, decision_prices, self.fill_bar())
        equity_after = self.advance()
        return StepOutcome(equity_before, equity_after, fills, review, self.day >= self.market.n_steps - 1)
