"""Batched portfolio simulation over a market panel, and the market loop every driver follows.

The market loop's event order is written once, in :func:`run_bar`: at a bar's open the orders decided at the
previous close fill; at its close every book is marked and the risk manager sees the bar; then the policy decides
and the risk manager reviews its targets (:class:`RiskGate`). :class:`PortfolioSimulator` runs that loop for B
portfolios in lockstep over one panel (the training environments and the backtester drive its
:meth:`~PortfolioSimulator.step`); the live engine runs it with a broker's fills.

Ragged universes (:attr:`MarketArrays.tradable`): an asset without a bar cannot trade. Its target is held at its
current holdings before the risk manager reviews the decision, and an order whose fill bar has no bar for the
asset is cancelled (the market has nothing to fill it on). A delisted asset (no bar for the rest of the panel
after its last one) is settled into cash at its last close on the first date after that bar, without costs, as
FinRL-style cash conversion: on that date the market says it is gone, so the settlement is causal, and it leaves
the portfolio's value unchanged (the asset was already valued at that close)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

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
from trading_core.market.limits import RiskLimits, TradingState
from trading_core.market.risk import RiskManager, RiskReview


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
    def finrl_parity(
        cls, initial_amount: float = 100_000.0, cost_pct: float = 0.001, whole_shares: bool = True
    ) -> SimulationConfig:
        """FinRL ``StockTradingEnv`` semantics: same-bar close fills, proportional costs, no risk manager.

        :param whole_shares: FinRL's whole shares; ``False`` trades fractional shares (vectorbt's default)
        """
        return cls(
            initial_amount=initial_amount,
            cost_model=CostModel(ProportionalCommission(cost_pct), NoImpact()),
            spread="none",
            execution=ExecutionConfig(
                fill_timing="same_close", participation_cap=None, whole_shares=whole_shares
            ),
            risk=None,
        )


Filled = TypeVar("Filled")
Marked = TypeVar("Marked")
Decided = TypeVar("Decided")


def run_bar(
    fill: Callable[[], Filled],
    close: Callable[[], Marked],
    decide: Callable[[Marked], Decided] | None = None,
) -> tuple[Filled, Marked, Decided | None]:
    """One bar of the market loop, in the order every driver follows (simulator, backtester, live engine).

    1. the open: orders decided at the previous close fill (``fill``: the simulator's fill code, or a broker);
    2. the close: every book is marked to the bar's close and the risk manager sees the bar (``close``);
    3. the decision: the policy decides on what the close showed and the risk manager reviews its targets
       (``decide``, given what ``close`` returned). ``None`` where the decision comes later from outside, as
       in :meth:`PortfolioSimulator.step`, whose caller decides between steps.
    """
    filled = fill()
    marked = close()
    return filled, marked, decide(marked) if decide is not None else None


def portfolio_value(cash: np.ndarray, holdings: np.ndarray, prices: np.ndarray) -> np.ndarray:
    """Cash plus holdings ``[B, N]`` at ``prices``, ``[B]``.

    Each portfolio's dot product is taken on its own row, so its value does not depend on how many portfolios
    are simulated beside it (a batched matrix product may round differently from one row to the next).
    """
    return cash + np.vecdot(holdings, prices)


class RiskGate:
    """The risk manager's two places in the market loop, for B books: it sees every close and reviews every
    decision; with no limits both pass everything through.

    :param limits: risk limits; ``None`` switches the risk manager off
    :param n_books: number of portfolios B
    :param n_assets: number of assets N
    :param sectors: sector label of each asset (``MarketArrays.sectors``), for a sector-exposure limit
    """

    def __init__(
        self,
        limits: RiskLimits | None,
        n_books: int,
        n_assets: int,
        sectors: tuple[str, ...] | None = None,
    ) -> None:
        self.risk = RiskManager(limits, n_books, n_assets, sectors=sectors) if limits is not None else None
        self._active = np.full(n_books, TradingState.ACTIVE, dtype=np.int64)

    @property
    def state(self) -> np.ndarray:
        """Trading state of every book (``ACTIVE`` when the risk manager is off)."""
        return self._active if self.risk is None else self.risk.state

    def reset(self, equity: np.ndarray) -> None:
        if self.risk is not None:
            self.risk.reset(equity)

    def close(self, equity: np.ndarray, turbulence: float) -> np.ndarray:
        """The close: the books are marked at ``equity`` ``[B]``; the risk manager sees the bar."""
        if self.risk is not None:
            self.risk.on_bar(equity, turbulence)
        return equity

    def review(
        self,
        target: np.ndarray,
        holdings: np.ndarray,
        prices: np.ndarray,
        cash: np.ndarray,
        returns_window: np.ndarray,
    ) -> tuple[np.ndarray, RiskReview | None]:
        """The decision: target holdings ``[B, N]`` at the close's ``prices`` ``[B, N]`` become approved ones.

        :param returns_window: trailing asset returns ``[L, N]`` up to this close, for the VaR limit
        """
        if self.risk is None:
            return target, None
        review = self.risk.review(target, holdings, prices, cash, returns_window)
        return review.approved, review


@dataclass(frozen=True)
class Orders:
    """Orders decided at a close: signed shares ``[B, N]``, the close they saw and the bar they fill on."""

    shares: np.ndarray
    decision_prices: np.ndarray
    bar: FillBar
    fill_day: int


@dataclass(frozen=True)
class StepOutcome:
    """What one simulation step did to every portfolio.

    :param day: the date the decision was taken at
    :param fill_day: the date its orders filled on (``day + 1`` for next-open fills, ``day`` for same-close)
    :param settled: shares ``[B, N]`` of delisted assets converted into cash at the step's new date (at their
        last close), ``None`` when nothing delisted
    """

    equity_before: np.ndarray
    equity_after: np.ndarray
    fills: Fills
    review: RiskReview | None
    done: bool
    day: int = 0
    fill_day: int = 0
    settled: np.ndarray | None = None


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
        self.gate = RiskGate(config.risk, n_envs, market.n_assets, market.sectors)
        # Checked once: a rectangular panel skips every masking step below.
        self._ragged = not market.all_tradable
        self._delisting = delisting_days(market.tradable) if self._ragged else {}
        self.last_settled: np.ndarray | None = None
        self.day = 0
        self.cash = np.full(n_envs, config.initial_amount)
        self.holdings = np.zeros((n_envs, market.n_assets))
        # Every per-date field seen by all B portfolios, as read-only [T, B, N] views (no copies).
        books = (market.n_steps, n_envs, market.n_assets)
        self._by_book = {
            name: np.broadcast_to(values[:, None, :], books)
            for name, values in (
                ("open", market.open),
                ("high", market.high),
                ("low", market.low),
                ("close", market.close),
                ("volume", market.volume),
                ("half_spread", self.half_spread),
                ("adv", self.adv),
                ("sigma", self.sigma),
            )
        }

    @property
    def risk(self) -> RiskManager | None:
        return self.gate.risk

    @property
    def prices(self) -> np.ndarray:
        """Closes of the current date, ``[N]``."""
        return self.market.close[self.day]

    def equity(self) -> np.ndarray:
        return portfolio_value(self.cash, self.holdings, self.prices)

    def reset(self) -> None:
        self.day = 0
        self.cash[:] = self.config.initial_amount
        self.holdings[:] = 0.0
        self.last_settled = None
        self.gate.reset(self.equity())

    def returns_window(self) -> np.ndarray:
        """Asset returns of the trailing ``var_lookback`` bars up to and including today (known at the close)."""
        start = max(1, self.day - self.config.var_lookback + 1)
        return self.returns[start : self.day + 1]

    def review(self, target: np.ndarray) -> tuple[np.ndarray, RiskReview | None]:
        """Risk-check target holdings ``[B, N]`` at today's close; returns the approved targets and the review."""
        prices = self._by_book["close"][self.day]
        return self.gate.review(target, self.holdings, prices, self.cash, self.returns_window())

    def fill_bar(self) -> FillBar:
        """The bar that orders decided at today's close fill on, with the estimates known today."""
        day, by_book = self.day, self._by_book
        next_bar = self.config.execution.fill_timing == "next_open"
        fill_day = day + 1 if next_bar else day
        return FillBar(
            reference_price=by_book["open"][fill_day] if next_bar else by_book["close"][day],
            high=by_book["high"][fill_day],
            low=by_book["low"][fill_day],
            volume=by_book["volume"][fill_day],
            # Spread, volume and volatility estimates are the ones known when the order was decided.
            half_spread=by_book["half_spread"][day],
            adv=by_book["adv"][day],
            sigma=by_book["sigma"][day],
        )

    def submit(self, target: np.ndarray) -> tuple[Orders, RiskReview | None]:
        """The decision at today's close: the risk manager reviews target holdings ``[B, N]``, and the approved
        ones become orders for the bar they fill on (today's close or the next open)."""
        if self.day >= self.market.n_steps - 1:
            raise RuntimeError("the simulation is at its last date; reset() first")
        same_close = self.config.execution.fill_timing == "same_close"
        fill_day = self.day if same_close else self.day + 1
        if self._ragged:
            target = self.hold_untradable(target)
        approved, review = self.review(target)
        shares = approved - self.holdings
        if self._ragged:
            shares = self.cancel_unfillable(shares, fill_day)
        orders = Orders(
            shares=shares,
            decision_prices=self._by_book["close"][self.day],
            bar=self.fill_bar(),
            fill_day=fill_day,
        )
        return orders, review

    def hold_untradable(self, target: np.ndarray) -> np.ndarray:
        """Targets ``[B, N]`` with every asset that has no bar today held at its current holdings."""
        return np.where(self.market.tradable[self.day], target, self.holdings)

    def cancel_unfillable(self, shares: np.ndarray, fill_day: int) -> np.ndarray:
        """Orders ``[B, N]`` without those of assets lacking a bar today or on ``fill_day``: the risk manager's
        own orders (a halt's liquidation) cannot trade them either."""
        tradable = self.market.tradable
        return np.where(tradable[self.day] & tradable[fill_day], shares, 0.0)

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

    def close_next(self) -> tuple[np.ndarray, float]:
        """Move to the next date's close and mark every portfolio to it: its equity and turbulence.

        Assets delisted by that date are first settled into cash (:meth:`settle_delisted`)."""
        self.day += 1
        self.last_settled = self.settle_delisted() if self._delisting else None
        return self.equity(), float(self.market.turbulence[self.day])

    def settle_delisted(self) -> np.ndarray | None:
        """Convert the holdings of assets whose last bar was yesterday into cash at today's close (their last
        close, carried), without costs; the settled shares ``[B, N]``, or ``None`` when none delisted today."""
        assets = self._delisting.get(self.day)
        if assets is None:
            return None
        settled = np.zeros_like(self.holdings)
        settled[:, assets] = self.holdings[:, assets]
        self.cash = self.cash + np.vecdot(settled, self.market.close[self.day])
        self.holdings = self.holdings - settled
        return settled

    def advance(self) -> np.ndarray:
        """Move to the next date's close, mark every portfolio to it and let the risk manager see the bar."""
        return self.gate.close(*self.close_next())

    def next_bar(self, orders: Orders) -> tuple[Fills, np.ndarray]:
        """The next bar of the market loop up to its decision: the orders fill (at today's close with same-close
        fills, else at the next open) and the next close marks the portfolios; their fills and equity."""
        fills, equity, _ = run_bar(
            lambda: self.fill(orders.shares, orders.decision_prices, orders.bar), self.advance
        )
        return fills, equity

    def step(self, target: np.ndarray) -> StepOutcome:
        """Decide target holdings ``[B, N]`` at today's close, then run the next bar up to its decision (the next
        decision is the next step's)."""
        day, equity_before = self.day, self.equity()
        orders, review = self.submit(target)
        fills, equity_after = self.next_bar(orders)
        done = self.day >= self.market.n_steps - 1
        return StepOutcome(
            equity_before, equity_after, fills, review, done, day, orders.fill_day, self.last_settled
        )


def delisting_days(tradable: np.ndarray) -> dict[int, np.ndarray]:
    """Assets to settle, by date: an asset whose last bar is before the panel's last date delists on the date
    after it (assets never tradable in the panel are never held, so never settled).

    :param tradable: ``[T, N]`` tradability
    """
    n_steps = len(tradable)
    traded = tradable.any(axis=0)
    last_bar = n_steps - 1 - tradable[::-1].argmax(axis=0)
    delisted = traded & (last_bar < n_steps - 1)
    days: dict[int, list[int]] = {}
    for asset in np.flatnonzero(delisted):
        days.setdefault(int(last_bar[asset]) + 1, []).append(int(asset))
    return {day: np.array(assets) for day, assets in days.items()}
