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
from numba import njit

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


def _take(value: np.ndarray | float, rows: np.ndarray, columns: np.ndarray) -> np.ndarray | float:
    return value if np.ndim(value) == 0 else value[rows, columns]


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
    same-bar fills and proportional costs this reproduces ``StockTradingEnv`` exactly. Each portfolio is filled on
    its own row (:func:`_pay_for_buys`), so its fills do not depend on the other portfolios filled beside it.

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
    # Shares, price, commission, spread and impact of every fill as wanted, one block the buys' walk re-books.
    booked, sale_proceeds, buys = _book_as_wanted(
        filled, execution.fill_price, execution.commission, execution.spread_cost, execution.impact_cost
    )
    available = cash + sale_proceeds.sum(axis=1)
    if buys.any():
        available = _pay_for_buys(available, requested, buys, booked, decision_price, bar, config, cost_model)
    shares, price, commission, spread_cost, impact_cost = booked
    return Fills(
        shares=shares,
        price=price,
        commission=commission,
        spread_cost=spread_cost,
        impact_cost=impact_cost,
        cash_change=available - cash,
        requested=requested,
    )


def _pay_for_buys(
    available: np.ndarray,
    requested: np.ndarray,
    buys: np.ndarray,
    booked: np.ndarray,
    decision_price: np.ndarray,
    bar: FillBar,
    config: ExecutionConfig,
    cost_model: CostModel,
) -> np.ndarray:
    """Walk every portfolio's buys in priority order while cash lasts, re-booking them into ``booked``; returns
    the cash left.

    The walk itself runs compiled (:func:`_walk_buys`); it stops a portfolio wherever a cash-limited buy needs
    re-pricing at its smaller size, and the cost model prices all of those at once before the walk goes on.
    With each such buy, the buys after it are priced as unfilled (zero shares) ahead of time, so a portfolio
    that runs out of cash finishes in the same round.
    """
    n_books, n_assets = buys.shape
    # FinRL's order: descending order size (argsort of the integer actions, reversed).
    priority = np.ascontiguousarray(np.argsort(requested, axis=1)[:, ::-1])
    walk = _BuyWalk(
        next_rank=np.zeros(n_books, dtype=np.int64),
        pending=np.zeros(n_books, dtype=bool),
        pending_quantity=np.zeros(n_books),
        pending_priced=np.zeros((4, n_books)),
        unfilled_priced=np.zeros((4, n_books, n_assets)),
        unfilled_known=np.zeros((n_books, n_assets), dtype=bool),
        shrunk=np.zeros(n_books, dtype=bool),
    )
    available = available.copy()
    no_prices = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((4, 0)), 0
    _walk_buys(booked, available, priority, buys, *walk.state(), *no_prices, config.whole_shares)
    while walk.pending.any():
        rows, columns, quantities, n_pending = _price_requests(priority, buys, *walk.state()[:3])
        priced = _partial_buy(quantities, rows, columns, decision_price, bar, config, cost_model)
        values = np.stack([priced.fill_price, priced.commission, priced.spread_cost, priced.impact_cost])
        prices = rows, columns, values, n_pending
        _walk_buys(booked, available, priority, buys, *walk.state(), *prices, config.whole_shares)
    return available


@dataclass(frozen=True)
class _BuyWalk:
    """Where each portfolio's walk through its buys stands: the next rank, and the re-pricing it waits for."""

    next_rank: np.ndarray  # [B]; N once done
    pending: np.ndarray  # [B] waits for the price of the cash-limited buy at next_rank
    pending_quantity: np.ndarray  # [B] its smaller size
    pending_priced: np.ndarray  # [4, B] fill price, commission, spread and impact at that size
    unfilled_priced: np.ndarray  # [4, B, N] the same at zero shares, for buys priced ahead
    unfilled_known: np.ndarray  # [B, N] which buys are priced ahead
    shrunk: (
        np.ndarray
    )  # [B] the waiting buy was cut once already because its smaller size cost more per share

    def state(self) -> tuple[np.ndarray, ...]:
        return (
            self.next_rank,
            self.pending,
            self.pending_quantity,
            self.pending_priced,
            self.unfilled_priced,
            self.unfilled_known,
            self.shrunk,
        )


@njit(cache=True)
def _book_as_wanted(
    filled: np.ndarray,
    fill_price: np.ndarray,
    commission: np.ndarray,
    spread_cost: np.ndarray,
    impact_cost: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled; covered through execute_orders
    """Every fill as wanted ``[5, B, N]`` (shares, price, commission, spread, impact; costs only where an order
    trades), what each sale brings in ``[B, N]`` and the buys ``[B, N]``."""
    n_books, n_assets = filled.shape
    booked = np.zeros((5, n_books, n_assets))
    proceeds = np.zeros((n_books, n_assets))
    buys = np.zeros((n_books, n_assets))
    for book in range(n_books):
        for asset in range(n_assets):
            shares = filled[book, asset]
            booked[1, book, asset] = fill_price[book, asset]
            if shares != 0:
                booked[0, book, asset] = shares
                booked[2, book, asset] = commission[book, asset]
                booked[3, book, asset] = spread_cost[book, asset]
                booked[4, book, asset] = impact_cost[book, asset]
            if shares < 0:
                proceeds[book, asset] = -shares * fill_price[book, asset] - commission[book, asset]
            elif shares > 0:
                buys[book, asset] = shares
    return booked, proceeds, buys


@njit(cache=True)
def _price_requests(
    priority: np.ndarray,
    buys: np.ndarray,
    next_rank: np.ndarray,
    pending: np.ndarray,
    pending_quantity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:  # pragma: no cover - compiled
    """What the cost model must price for the waiting portfolios: each one's cash-limited buy at its smaller
    size (the first ``n_pending`` entries), then every later buy of theirs at zero shares."""
    n_books, n_assets = buys.shape
    rows = np.empty(n_books * n_assets, dtype=np.int64)
    columns = np.empty(n_books * n_assets, dtype=np.int64)
    quantities = np.zeros(n_books * n_assets)
    count = 0
    for book in range(n_books):
        if pending[book]:
            rows[count], columns[count] = book, priority[book, next_rank[book]]
            quantities[count] = pending_quantity[book]
            count += 1
    n_pending = count
    for book in range(n_books):
        if pending[book]:
            for rank in range(next_rank[book] + 1, n_assets):
                if buys[book, priority[book, rank]] > 0:
                    rows[count], columns[count] = book, priority[book, rank]
                    count += 1
    return rows[:count], columns[:count], quantities[:count], n_pending


_ROUNDING = 1e-9  # relative overshoot of the cash that counts as floating-point rounding


@njit(cache=True, inline="always")
def _maximum(a: float, b: float) -> float:
    return a if (a >= b or a != a) else b  # np.maximum: NaN propagates


@njit(cache=True, inline="always")
def _minimum(a: float, b: float) -> float:
    return a if (a <= b or a != a) else b  # np.minimum: NaN propagates


@njit(cache=True, inline="always")
def _book(booked: np.ndarray, book: int, column: int, quantity: float, priced: tuple) -> float:
    """Book one buy at its quantity and prices; returns the cash it spends (nothing unless it trades)."""
    fill_price, fee, spread, impact = priced
    active = quantity > 0
    booked[0, book, column] = quantity if active else 0.0
    booked[1, book, column] = fill_price
    booked[2, book, column] = fee if active else 0.0
    booked[3, book, column] = spread if active else 0.0
    booked[4, book, column] = impact if active else 0.0
    return quantity * fill_price + fee if active else 0.0


@njit(cache=True)
def _walk_buys(
    booked: np.ndarray,
    available: np.ndarray,
    priority: np.ndarray,
    buys: np.ndarray,
    next_rank: np.ndarray,
    pending: np.ndarray,
    pending_quantity: np.ndarray,
    pending_priced: np.ndarray,
    unfilled_priced: np.ndarray,
    unfilled_known: np.ndarray,
    shrunk: np.ndarray,
    priced_rows: np.ndarray,
    priced_columns: np.ndarray,
    priced_values: np.ndarray,
    n_pending: int,
    whole_shares: bool,
) -> None:  # pragma: no cover - compiled; covered through execute_orders
    """FinRL's cash rule, buy by buy in priority order: each buy takes ``floor(cash / all-in price per share)``
    shares at most (any fraction with fractional shares). ``booked`` holds each buy's fill as wanted until it is
    walked. A portfolio stops at a cash-limited buy whose price at the smaller size is not known yet; the prices
    that came back for the requests of :func:`_price_requests` are taken in first."""
    n_books, n_assets = buys.shape
    for entry in range(len(priced_rows)):
        book, column = priced_rows[entry], priced_columns[entry]
        if entry < n_pending:
            pending_priced[:, book] = priced_values[:, entry]
        else:
            unfilled_priced[:, book, column] = priced_values[:, entry]
            unfilled_known[book, column] = True
    for book in range(n_books):
        rank, cash = next_rank[book], available[book]
        if rank >= n_assets:
            continue
        if pending[book]:
            column = priority[book, rank]
            priced = (
                pending_priced[0, book],
                pending_priced[1, book],
                pending_priced[2, book],
                pending_priced[3, book],
            )
            quantity = pending_quantity[book]
            if quantity > 0 and quantity * priced[0] + priced[1] > cash + _ROUNDING * max(abs(cash), 1.0):
                # A smaller order can cost more per share (a minimum commission): cut it to what the cash
                # covers at these prices and price it again; a second miss buys nothing. Rounding-sized
                # misses are no misses, so FinRL's whole-share fills stay exactly FinRL's.
                smaller = (cash - priced[1]) // priced[0] if whole_shares else (cash - priced[1]) / priced[0]
                pending_quantity[book] = 0.0 if shrunk[book] else _minimum(quantity, _maximum(smaller, 0.0))
                shrunk[book] = True
                continue
            cash = cash - _book(booked, book, column, quantity, priced)
            pending[book], shrunk[book] = False, False
            rank += 1
        while rank < n_assets:
            column = priority[book, rank]
            wanted = buys[book, column]
            if not wanted > 0:
                rank += 1
                continue
            # Prices of the whole order, as booked before the walk (each buy is walked once).
            full = (
                booked[1, book, column],
                booked[2, book, column],
                booked[3, book, column],
                booked[4, book, column],
            )
            per_share = (wanted * full[0] + full[1]) / wanted
            unit = per_share if per_share > 0 else np.inf
            # Floor division as numpy's (and FinRL's `cash // (price * (1 + cost))`); np.floor_divide differs here.
            affordable = cash // unit if whole_shares else cash / unit
            quantity = _minimum(wanted, _maximum(affordable, 0.0))
            if not quantity < wanted:  # affordable in full (or no cash figure at all: NaN)
                cash = cash - _book(booked, book, column, quantity, full)
            elif not quantity > 0 and unfilled_known[book, column]:
                priced = (
                    unfilled_priced[0, book, column],
                    unfilled_priced[1, book, column],
                    unfilled_priced[2, book, column],
                    unfilled_priced[3, book, column],
                )
                cash = cash - _book(booked, book, column, quantity, priced)
            else:
                pending[book], pending_quantity[book] = True, quantity
                break
            rank += 1
        next_rank[book], available[book] = rank, cash


def _partial_buy(
    quantity: np.ndarray,
    rows: np.ndarray,
    column: np.ndarray,
    decision_price: np.ndarray,
    bar: FillBar,
    config: ExecutionConfig,
    cost_model: CostModel,
) -> Execution:
    """Re-price cash-limited buys at their smaller sizes (smaller impact), one asset per portfolio."""
    reference = bar.reference_price[rows, column]
    if config.order_type == "limit":
        single = FillBar(reference, bar.high[rows, column], bar.low[rows, column], 0.0, 0.0, 0.0, 0.0)
        return _limit_executions(quantity, decision_price[rows, column], single, config, cost_model)[0]
    half_spread, adv, sigma = (_take(v, rows, column) for v in (bar.half_spread, bar.adv, bar.sigma))
    return cost_model.execute(quantity, reference, half_spread, adv, sigma)
