"""The local simulated broker: orders fill on the next bar through the same cost and fill code as training and
backtesting (:func:`trading_core.market.execution.execute_orders`), so paper trading locally costs exactly
what the simulator charged the agent."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pandas as pd

from trading_core.broker.base import (
    AccountSnapshot,
    Bar,
    Fill,
    OrderRejected,
    OrderRequest,
    OrderState,
    Quote,
    make_client_order_id,
    utc_timestamp,
)
from trading_core.market.costs import (
    corwin_schultz_half_spread,
    fixed_half_spread,
    quote_half_spread,
    trailing_adv,
    trailing_volatility,
)
from trading_core.market.execution import FillBar, execute_orders
from trading_core.market.simulator import SimulationConfig

SNAPSHOT_FORMAT = 1
# The Corwin-Schultz window PortfolioSimulator uses (the estimator's default).
SPREAD_WINDOW = 20


class SimulatedBroker:
    """A broker that fills orders against the bars it is shown, one bar after they were submitted.

    ``submit_order`` queues an order; the next :meth:`on_bar` fills it at that bar's open plus half-spread and
    impact (market orders) or when the bar trades through the limit (limit orders), with the participation
    cap and the cash rule of :func:`execute_orders`. Half-spread, ADV and volatility are estimated from the
    bars seen before the fill bar. Once an order trades, any remainder the participation cap or the cash rule
    left is canceled; a market order that cannot fill at all is canceled; a limit order rests until the bar
    trades through it. Symbols missing from a bar do not fill (their orders wait for the symbol's next bar).

    A symbol fills at most one order per bar, so the participation cap bounds what it trades in the bar:
    the oldest market order, else the oldest limit order; other orders on the symbol wait for later bars.
    Market orders of a bar fill in one ``execute_orders`` call (sells first, then buys while cash lasts),
    limit orders in a second. The broker is a cash account: buying power is the cash, and open orders
    reserve none of it.

    :param symbols: the tradable symbols
    :param config: costs, spread source and execution rules (``fill_timing`` must be ``next_open``)
    :param initial_cash: starting cash; defaults to ``config.initial_amount``
    """

    name = "simulated"

    def __init__(
        self, symbols: Sequence[str], config: SimulationConfig, initial_cash: float | None = None
    ) -> None:
        if not symbols or len(set(symbols)) != len(symbols):
            raise ValueError(f"symbols must be non-empty and unique, got {list(symbols)}")
        if config.spread == "quotes":
            raise ValueError("spread='quotes' needs bid/ask quotes, and a bar stream has none")
        if config.execution.fill_timing != "next_open":
            raise ValueError("a broker fills on bars it has not seen yet: fill_timing must be 'next_open'")
        self.symbols = tuple(symbols)
        self.config = config
        self._column = {symbol: i for i, symbol in enumerate(self.symbols)}
        self._cash = float(config.initial_amount if initial_cash is None else initial_cash)
        if not (math.isfinite(self._cash) and self._cash >= 0):
            raise ValueError(f"initial cash must be a non-negative number, got {self._cash}")
        self._holdings = np.zeros(len(self.symbols))
        self._last_close = np.zeros(len(self.symbols))
        self._last_time: pd.Timestamp | None = None
        self._requests: dict[str, OrderRequest] = {}
        self._orders: dict[str, OrderState] = {}
        self._pending: list[str] = []
        self._fills: list[Fill] = []
        # Enough bars for the trailing estimators' last row: `window` returns or two-bar spreads need window+1.
        depth = max(config.stats_window, SPREAD_WINDOW) + 1
        self._history: dict[str, deque[tuple[pd.Timestamp, Bar]]] = {
            symbol: deque(maxlen=depth) for symbol in self.symbols
        }
        # Quoted half-spreads at the last bar's end (NaN: no quote), pricing the next bar's fills (spread="auto").
        self._quoted_half_spread = np.full(len(self.symbols), np.nan)

    def __repr__(self) -> str:
        return f"SimulatedBroker(symbols={list(self.symbols)}, cash={self._cash:.2f}, open_orders={len(self._pending)})"

    # ------------------------------------------------------------------------------------------ the interface

    def account(self) -> AccountSnapshot:
        """Cash, equity marked at each symbol's last close, and buying power (the cash)."""
        return AccountSnapshot(cash=self._cash, equity=self.equity(), buying_power=self._cash)

    def equity(self) -> float:
        """Cash plus holdings marked at each symbol's last seen close."""
        return float(self._cash + self._holdings @ self._last_close)

    def positions(self) -> dict[str, float]:
        return {s: float(q) for s, q in zip(self.symbols, self._holdings, strict=True) if q != 0}

    def submit_order(self, request: OrderRequest) -> OrderState:
        """Queue an order for the next bar; a known ``client_order_id`` returns the existing order.

        :param request: the order
        :raises OrderRejected: unknown symbol, or fractional shares when the config trades whole shares
        """
        existing = self._orders.get(request.client_order_id)
        if existing is not None:
            return existing
        if request.symbol not in self._column:
            raise OrderRejected(f"{request.symbol} is not tradable here; symbols are {list(self.symbols)}")
        if self.config.execution.whole_shares and request.qty != math.floor(request.qty):
            raise OrderRejected(f"whole shares only, got qty {request.qty} for {request.symbol}")
        now = self._clock()
        state = OrderState(
            client_order_id=request.client_order_id,
            broker_order_id=f"sim-{len(self._orders) + 1}",
            symbol=request.symbol,
            side=request.side,
            qty=float(request.qty),
            filled_qty=0.0,
            filled_avg_price=None,
            status="new",
            submitted_at=now,
            updated_at=now,
        )
        self._requests[request.client_order_id] = request
        self._orders[request.client_order_id] = state
        self._pending.append(request.client_order_id)
        return state

    def get_order(self, client_order_id: str) -> OrderState | None:
        return self._orders.get(client_order_id)

    def open_orders(self) -> list[OrderState]:
        return [self._orders[cid] for cid in self._pending]

    def cancel_all_orders(self) -> int:
        now = self._clock()
        for cid in self._pending:
            self._orders[cid] = replace(self._orders[cid], status="canceled", updated_at=now)
        canceled = len(self._pending)
        self._pending = []
        return canceled

    def close_all_positions(self) -> None:
        """Cancel open orders and queue market orders that flatten every position on the next bar."""
        self.cancel_all_orders()
        now = self._clock()
        for symbol, qty in self.positions().items():
            side = "sell" if qty > 0 else "buy"
            client_order_id = make_client_order_id(f"{self.name}-close-all", now, symbol, side)
            self.submit_order(OrderRequest(client_order_id, symbol, side, abs(qty)))

    def compact(self) -> int:
        """Forget finished orders and past fills (a caller that persisted them keeps memory and snapshots bounded).

        Orders still open stay, so fills and idempotent resubmits of open orders work as before; a finished
        order's id is no longer known here afterwards.

        :return: orders forgotten
        """
        finished = [
            cid for cid, state in self._orders.items() if not state.is_open and cid not in self._pending
        ]
        for cid in finished:
            del self._orders[cid]
            del self._requests[cid]
        self._fills = []
        return len(finished)

    @property
    def fills(self) -> list[Fill]:
        """Every fill so far (since the last :meth:`compact`), oldest first."""
        return list(self._fills)

    @property
    def orders(self) -> list[OrderState]:
        """Every order so far, in submission order."""
        return list(self._orders.values())

    # --------------------------------------------------------------------------------------------- the bars

    def on_bar(
        self, timestamp: pd.Timestamp, bars: Mapping[str, Bar], quotes: Mapping[str, Quote] | None = None
    ) -> list[Fill]:
        """Fill pending orders against this bar, then record it and mark equity at its closes.

        Bars of symbols the broker does not trade are ignored. With ``spread="auto"``, orders filling on the
        NEXT bar pay the half-spread of ``quotes`` (the ones in force when they were decided, as the simulator
        charges the decision date's quotes); symbols without a quote here pay the Corwin–Schultz estimate.

        :param timestamp: the bar's time, timezone-aware and later than every bar seen before
        :param bars: this bar per symbol; symbols may be missing
        :param quotes: each symbol's quote at this bar's end (a ``BarEvent``'s quotes), where known
        :return: the fills of this bar
        """
        now = utc_timestamp(timestamp)
        if self._last_time is not None and now <= self._last_time:
            raise ValueError(f"bar at {now} is not after the last bar at {self._last_time}")
        present = {s: b for s, b in bars.items() if s in self._column}
        half_spread, adv, sigma = self._estimates()
        fills = self._fill_pending(now, present, half_spread, adv, sigma)
        for symbol, bar in present.items():
            self._history[symbol].append((now, bar))
            self._last_close[self._column[symbol]] = bar.close
        self._last_time = now
        self._quoted_half_spread = np.full(len(self.symbols), np.nan)
        for symbol, quote in (quotes or {}).items():
            if symbol in self._column:
                self._quoted_half_spread[self._column[symbol]] = quote_half_spread(quote.bid, quote.ask)
        return fills

    def _estimates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Half-spread, ADV and volatility per symbol from each symbol's bars seen so far (``[N]`` each)."""
        depth = max(1, max(len(rows) for rows in self._history.values()))
        # Right-aligned [depth, N] panels; NaN where a symbol has fewer bars, which every estimator skips.
        # A symbol without bars is an all-NaN column: the estimators' own "nothing known" values.
        panel = np.full((4, depth, len(self.symbols)), np.nan)
        for column, symbol in enumerate(self.symbols):
            rows = self._history[symbol]
            for row, (_, bar) in enumerate(rows, start=depth - len(rows)):
                panel[:, row, column] = (bar.high, bar.low, bar.close, bar.volume)
        high, low, close, volume = panel
        config = self.config
        if config.spread == "none":
            half_spread = np.zeros(len(self.symbols))
        elif config.spread == "fixed":
            half_spread = fixed_half_spread((len(self.symbols),), config.spread_bps)
        else:  # "corwin_schultz" or "auto"
            half_spread = corwin_schultz_half_spread(
                high, low, window=SPREAD_WINDOW, fallback_bps=config.spread_bps
            )[-1]
            if config.spread == "auto":
                quoted = self._quoted_half_spread
                half_spread = np.where(np.isfinite(quoted), quoted, half_spread)
        adv = trailing_adv(volume, config.stats_window)[-1]
        sigma = trailing_volatility(close, config.stats_window)[-1]
        return half_spread, adv, sigma

    def _fill_pending(
        self,
        now: pd.Timestamp,
        bars: Mapping[str, Bar],
        half_spread: np.ndarray,
        adv: np.ndarray,
        sigma: np.ndarray,
    ) -> list[Fill]:
        # One order per symbol and bar, so the participation cap bounds what the symbol trades in this bar:
        # the oldest market order, else the oldest limit order. The others wait for later bars.
        chosen: dict[str, str] = {}
        for cid in self._pending:
            request = self._requests[cid]
            if request.symbol not in bars:
                continue
            current = chosen.get(request.symbol)
            if current is None or (
                request.order_type == "market" and self._requests[current].order_type == "limit"
            ):
                chosen[request.symbol] = cid
        fill_bar = self._fill_bar(bars, (half_spread, adv, sigma))
        fills: list[Fill] = []
        for order_type in ("market", "limit"):
            batch = [cid for cid in chosen.values() if self._requests[cid].order_type == order_type]
            if batch:
                fills += self._fill_batch(now, batch, fill_bar)
        return fills

    def _fill_bar(self, bars: Mapping[str, Bar], estimates: tuple[np.ndarray, ...]) -> FillBar:
        n = len(self.symbols)
        # Columns of absent symbols carry no orders; any finite values keep the arithmetic clean there.
        reference, high, low, volume = np.ones(n), np.ones(n), np.ones(n), np.zeros(n)
        for symbol, bar in bars.items():
            column = self._column[symbol]
            reference[column], high[column], low[column], volume[column] = (
                bar.open,
                bar.high,
                bar.low,
                bar.volume,
            )
        half_spread, adv, sigma = estimates
        return FillBar(
            reference_price=reference[None, :],
            high=high[None, :],
            low=low[None, :],
            volume=volume[None, :],
            half_spread=half_spread[None, :],
            adv=adv[None, :],
            sigma=sigma[None, :],
        )

    def _fill_batch(self, now: pd.Timestamp, batch: list[str], fill_bar: FillBar) -> list[Fill]:
        """One ``execute_orders`` call for orders of one type on distinct symbols."""
        requests = [self._requests[cid] for cid in batch]
        order_type = requests[0].order_type
        orders = np.zeros((1, len(self.symbols)))
        # Market orders never read the decision price; it anchors limit prices only.
        decision = np.where(self._last_close > 0, self._last_close, 1.0)[None, :].copy()
        for request in requests:
            orders[0, self._column[request.symbol]] = request.signed_qty
            if request.limit_price is not None:
                decision[0, self._column[request.symbol]] = request.limit_price
        execution = replace(self.config.execution, order_type=order_type)
        if order_type == "limit":
            # With a zero offset the shared limit logic fills exactly at the order's own limit price.
            execution = replace(execution, limit_offset_bps=0.0)
        result = execute_orders(
            orders,
            self._holdings[None, :],
            np.array([self._cash]),
            decision,
            fill_bar,
            self.config.cost_model,
            execution,
        )
        self._holdings = self._holdings + result.shares[0]
        self._cash = float(self._cash + result.cash_change[0])

        fills = []
        for request in requests:
            column = self._column[request.symbol]
            shares = float(abs(result.shares[0, column]))
            state = self._orders[request.client_order_id]
            if shares == 0 and request.order_type == "limit":
                continue  # a limit the bar did not trade through (or no cash for it yet) keeps resting
            self._pending.remove(request.client_order_id)
            if shares == 0:
                self._orders[request.client_order_id] = replace(state, status="canceled", updated_at=now)
                continue
            price = float(result.price[0, column])
            fill = Fill(
                client_order_id=request.client_order_id,
                symbol=request.symbol,
                side=request.side,
                qty=shares,
                price=price,
                commission=float(result.commission[0, column]),
                spread_cost=float(result.spread_cost[0, column]),
                impact_cost=float(result.impact_cost[0, column]),
                filled_at=now,
            )
            fills.append(fill)
            self._fills.append(fill)
            self._orders[request.client_order_id] = replace(
                state,
                filled_qty=shares,
                filled_avg_price=price,
                # The participation cap or the cash rule may leave a remainder: it is canceled, not kept.
                status="filled" if shares >= request.qty else "canceled",
                updated_at=now,
            )
        return fills

    def _clock(self) -> pd.Timestamp:
        """Simulated time: the last bar's time, or the wall clock before the first bar."""
        return self._last_time if self._last_time is not None else pd.Timestamp.now(tz="UTC")

    # ------------------------------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """The broker's whole state as JSON-serialisable data (floats survive ``json`` exactly)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "symbols": list(self.symbols),
            "cash": self._cash,
            "positions": self.positions(),
            "last_close": {s: float(c) for s, c in zip(self.symbols, self._last_close, strict=True) if c > 0},
            "last_time": _iso(self._last_time) if self._last_time is not None else None,
            "orders": [
                {
                    **_state_to_json(self._orders[cid]),
                    "order_type": request.order_type,
                    "limit_price": request.limit_price,
                }
                for cid, request in self._requests.items()
            ],
            "pending": list(self._pending),
            "quoted_half_spread": {
                s: float(h)
                for s, h in zip(self.symbols, self._quoted_half_spread, strict=True)
                if math.isfinite(h)
            },
            "fills": [{**asdict(fill), "filled_at": _iso(fill.filled_at)} for fill in self._fills],
            "history": {
                symbol: [[_iso(time), *asdict(bar).values()] for time, bar in rows]
                for symbol, rows in self._history.items()
            },
        }

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any], config: SimulationConfig) -> SimulatedBroker:
        """Rebuild a broker from :meth:`snapshot`; it continues exactly as the original would have.

        :param snapshot: what :meth:`snapshot` returned (possibly through JSON)
        :param config: the configuration to continue with (normally the original one)
        """
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown snapshot format {snapshot.get('format')!r}")
        broker = cls(snapshot["symbols"], config)
        broker._cash = float(snapshot["cash"])
        for symbol, qty in snapshot["positions"].items():
            broker._holdings[broker._column[symbol]] = qty
        for symbol, close in snapshot["last_close"].items():
            broker._last_close[broker._column[symbol]] = close
        broker._last_time = pd.Timestamp(snapshot["last_time"]) if snapshot["last_time"] else None
        for record in snapshot["orders"]:
            record = dict(record)
            order_type, limit_price = record.pop("order_type"), record.pop("limit_price")
            state = _state_from_json(record)
            broker._orders[state.client_order_id] = state
            broker._requests[state.client_order_id] = OrderRequest(
                state.client_order_id, state.symbol, state.side, state.qty, order_type, limit_price
            )
        broker._pending = list(snapshot["pending"])
        # Absent from snapshots taken before the broker took quotes.
        for symbol, half in snapshot.get("quoted_half_spread", {}).items():
            broker._quoted_half_spread[broker._column[symbol]] = half
        broker._fills = [
            Fill(**{**record, "filled_at": pd.Timestamp(record["filled_at"])}) for record in snapshot["fills"]
        ]
        for symbol, rows in snapshot["history"].items():
            broker._history[symbol].extend((pd.Timestamp(row[0]), Bar(*row[1:])) for row in rows)
        return broker


def _iso(timestamp: pd.Timestamp) -> str:
    return timestamp.isoformat()


def _state_to_json(state: OrderState) -> dict[str, Any]:
    return {**asdict(state), "submitted_at": _iso(state.submitted_at), "updated_at": _iso(state.updated_at)}


def _state_from_json(record: Mapping[str, Any]) -> OrderState:
    return OrderState(
        **{
            **record,
            "submitted_at": pd.Timestamp(record["submitted_at"]),
            "updated_at": pd.Timestamp(record["updated_at"]),
        }
    )
