"""Fill logic shared by the training environment, the backtester and the local paper broker.

Orders decided on bar t fill on bar t+1 (``next_open``): market orders at the next open plus half-spread and
market impact, limit orders only when the next bar trades through the limit. ``same_close`` reproduces
FinRL's fills at the close the agent observed, for differential tests only. Every function works on batches:
arrays shaped ``[B, N]`` for B portfolios and N assets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from trading_core.market.costs import CostModel, Execution


@dataclass(frozen=True)
class ExecutionConfig:
    """How orders turn into fills.

    :param fill_timing: ``next_open`` (orders fill on the next bar) or ``same_close`` (FinRL's same-bar fills)
    :param order_type: ``market`` or ``limit``
    :param limit_offset_bps: limit price distance from the decision close (buys below, sells above)
    :param participation_cap: largest share of the fill bar's volume one order may take; ``None`` disables
    :param allow_short: allow sells beyond the current holdings
    :param whole_shares: truncate orders toward zero to whole shares
    """

    fill_timing: Literal["next_open", "same_close"] = "next_open"
    order_type: Literal["market", "limit"] = "market"
    limit_offset_bps: float = 10.0
    participation_cap: float | None = 0.1
    allow_short: bool = False
    whole_shares: bool = True


@dataclass(frozen=True)
class FillBar:
    """Market state of the bar orders fill on, per portfolio and asset (``[B, N]``)."""

    reference_price: np.ndarray  # the next open, or the decision close for same-bar fills
    high: np.ndarray
    low: np.ndarray
    volume: np.ndarray
    half_spread: np.ndarray | float
    adv: np.ndarray | float
    sigma: np.ndarray | float


@dataclass(frozen=True)
class Fills:
    """Executed orders: signed shares, prices and costs per portfolio and asset, cash change per portfolio."""

    shares: np.ndarray
    price: np.ndarray
    commission: np.ndarray
    spread_cost: np.ndarray
    impact_cost: np.ndarray
    cash_change: np.ndarray
    requested: np.ndarray

    @property
    def total_cost(self) -> np.ndarray:
        return self.commission + self.spread_cost + self.impact_cost

    @property
    def notional(self) -> np.ndarray:
        return np.abs(self.shares) * self.price


def _limit_executions(
    orders: np.ndarray,
    decision_price: np.ndarray,
    bar: FillBar,
    config: ExecutionConfig,
    cost_model: CostModel,
) -> tuple[Execution, np.ndarray]:
    offset = config.limit_offset_bps * 1e-4
    buy_limit = decision_price * (1.0 - offset)
    sell_limit = decision_price * (1.0 + offset)
    # A limit fills only when the bar trades through it; a gap through the limit fills at the better open.
    buy_fills = (orders > 0) & (bar.low < buy_limit)
    sell_fills = (orders < 0) & (bar.high > sell_limit)
    price = np.where(
        orders > 0,
        np.minimum(bar.reference_price, buy_limit),
        np.where(orders < 0, np.maximum(bar.reference_price, sell_limit), bar.reference_price),
    )
    filled = np.where(buy_fills | sell_fills, orders, 0.0)
    commission = cost_model.commission(np.abs(filled), price)
    zeros = np.zeros_like(filled)
    return Execution(fill_price=price, commission=commission, spread_cost=zeros, impact_cost=zeros), filled


def _executions(
    orders: np.ndarray,
    decision_price: np.ndarray,
    bar: FillBar,
    config: ExecutionConfig,
    cost_model: CostModel,
) -> tuple[Execution, np.ndarray]:
    if config.order_type == "limit":
        return _limit_executions(orders, decision_price, bar, config, cost_model)
    execution = cost_model.execute(orders, bar.reference_price, bar.half_spread, bar.adv, bar.sigma)
    return execution, orders


def _take(value: np.ndarray | float, columns: np.ndarray) -> np.ndarray | float:
    if np.ndim(value) == 0:
        return value
    return np.take_along_axis(value, columns[:, None], axis=1)[:, 0]


def execute_orders(
    orders: np.ndarray,
    holdings: np.ndarray,
    cash: np.ndarray,
    decision_price: np.ndarray,
    bar: FillBar,
    cost_model: CostModel,
    config: ExecutionConfig,
) -> Fills:
    """Fill signed share orders against a bar: sells first, then buys in descending order size while cash lasts.

    The buy ordering and the cash rule (``floor(cash / all-in price per share)``) are FinRL's, so with
    same-bar fills and proportional costs this reproduces ``StockTradingEnv`` exactly.

    :param orders: desired signed shares ``[B, N]``
    :param holdings: shares held before the orders ``[B, N]``
    :param cash: cash before the orders ``[B]``
    :param decision_price: the close the decision saw (anchors limit prices) ``[B, N]``
    :param bar: the bar the orders fill on
    """
    requested = np.trunc(orders) if config.whole_shares else orders.astype(np.float64, copy=True)
    if not config.allow_short:
        requested = np.maximum(requested, -np.maximum(holdings, 0.0))
    if config.participation_cap is not None:
        cap = np.floor(config.participation_cap * np.maximum(bar.volume, 0.0))
        requested = np.clip(requested, -cap, cap)

    execution, filled = _executions(requested, decision_price, bar, config, cost_model)
    sells = filled < 0
    sell_cash = np.where(sells, -filled * execution.fill_price - execution.commission, 0.0).sum(axis=1)
    available = cash + sell_cash

    shares = np.where(sells, filled, 0.0)
    price = np.array(execution.fill_price, dtype=np.float64, copy=True)
    commission = np.where(sells, execution.commission, 0.0)
    spread_cost = np.where(sells, execution.spread_cost, 0.0)
    impact_cost = np.where(sells, execution.impact_cost, 0.0)

    buys = np.where(filled > 0, filled, 0.0)
    if buys.any():
        buy_cost = buys * execution.fill_price + np.where(filled > 0, execution.commission, 0.0)
        per_share = np.divide(buy_cost, buys, out=np.zeros_like(buys), where=buys > 0)
        # FinRL's order: descending order size (argsort of the integer actions, reversed).
        priority = np.argsort(requested, axis=1)[:, ::-1]
        rows = np.arange(buys.shape[0])
        for rank in range(buys.shape[1]):
            column = priority[:, rank]
            wanted = buys[rows, column]
            buying = wanted > 0
            if not buying.any():
                continue  # a column may be a sell for every portfolio at this rank
            unit = np.where(per_share[rows, column] > 0, per_share[rows, column], np.inf)
            # floor_divide, not floor(a / b): it is what FinRL's `cash // (price * (1 + cost))` computes.
            affordable = np.floor_divide(available, unit) if config.whole_shares else available / unit
            quantity = np.minimum(wanted, np.maximum(affordable, 0.0))
            fill_price = execution.fill_price[rows, column]
            fee = execution.commission[rows, column]
            spread = execution.spread_cost[rows, column]
            impact = execution.impact_cost[rows, column]
            reduced = buying & (quantity < wanted)
            if reduced.any():
                partial = _partial_buy(quantity, rows, column, decision_price, bar, config, cost_model)
                fill_price = np.where(reduced, partial.fill_price, fill_price)
                fee = np.where(reduced, partial.commission, fee)
                spread = np.where(reduced, partial.spread_cost, spread)
                impact = np.where(reduced, partial.impact_cost, impact)
            active = buying & (quantity > 0)
            available = available - np.where(active, quantity * fill_price + fee, 0.0)
            # Only portfolios buying this column are written: for the others it may hold a sell.
            shares[rows, column] = np.where(buying, np.where(active, quantity, 0.0), shares[rows, column])
            price[rows, column] = np.where(buying, fill_price, price[rows, column])
            for booked, value in ((commission, fee), (spread_cost, spread), (impact_cost, impact)):
                booked[rows, column] = np.where(active, value, np.where(buying, 0.0, booked[rows, column]))
    return Fills(
        shares=shares,
        price=price,
        commission=commission,
        spread_cost=spread_cost,
        impact_cost=impact_cost,
        cash_change=available - cash,
        requested=requested,
    )


def _partial_buy(
    quantity: np.ndarray,
    rows: np.ndarray,
    column: np.ndarray,
    decision_price: np.ndarray,
    bar: FillBar,
    config: ExecutionConfig,
    cost_model: CostModel,
) -> Execution:
    """Re-price a cash-limited buy at its smaller size (smaller impact) for one asset per portfolio."""
    single = FillBar(
        reference_price=bar.reference_price[rows, column][:, None],
        high=bar.high[rows, column][:, None],
        low=bar.low[rows, column][:, None],
        volume=bar.volume[rows, column][:, None],
        half_spread=_expand(_take(bar.half_spread, column)),
        adv=_expand(_take(bar.adv, column)),
        sigma=_expand(_take(bar.sigma, column)),
    )
    execution, _ = _executions(
        quantity[:, None], decision_price[rows, column][:, None], single, config, cost_model
    )
    return Execution(
        fill_price=execution.fill_price[:, 0],
        commission=execution.commission[:, 0],
        spread_cost=execution.spread_cost[:, 0],
        impact_cost=execution.impact_cost[:, 0],
    )


def _expand(value: np.ndarray | float) -> np.ndarray | float:
    return value[:, None] if np.ndim(value) else value
