"""The two-speed loop: every session the slow layer's targets become parent orders, and each executor works
its own book through the session's bars under the shared fill logic and cost model.

Per session ``d``: each book is marked at the close of ``d-1`` and its parents are the whole shares between its
holdings and the target shares (``floor(weight * equity / close)``) on the allocator's rebalance days, none on
the others. At bar ``m`` each executor's child orders (decided from its fills up to ``m-1``) fill at bar ``m``'s
open through :func:`~trading_core.market.execution.execute_orders`: whole shares, no shorting, the participation
cap on bar ``m``'s volume, sells before buys and buys only while cash lasts, priced by the
:class:`~trading_core.market.costs.CostModel` with the daily engine's estimates known at ``d-1``. The books are
independent rows of one batch, so executors never see each other.

Impact horizon: the cost model's participation is ``|shares| / ADV``, calibrated on daily orders. With
``impact_volume="bar"`` a child's ADV is the bar's share of it (``ADV / bars``), so impact grows with the
trading rate as in Almgren–Chriss (a parent worked evenly over every bar pays the daily engine's impact; one
child at one bar pays ``bars`` times it). ``"session"`` passes the daily ADV itself, the daily engine's inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from trading_core.allocators.config import AllocatorConfig
from trading_core.hierarchy.executors import Executor, SessionPlan
from trading_core.hierarchy.sessions import IntradaySessions
from trading_core.hierarchy.targets import DailyTargets, target_shares
from trading_core.market.execution import FillBar, execute_orders
from trading_core.market.simulator import SimulationConfig, portfolio_value

ImpactVolume = Literal["bar", "session"]


@dataclass(frozen=True)
class HierarchyConfig:
    """The slow layer, the book and the market the executors are compared under.

    :param initial_amount: starting cash of every executor's book (the first session builds the book)
    :param allocator: the slow allocator; refitted every ``rebalance_every`` sessions (daily here, so every
        session has parents)
    :param simulation: the cost model, spread source, estimate windows and fill rules (participation cap)
    :param impact_volume: the volume a child's participation is measured against: ``bar`` (ADV / bars) or
        ``session`` (the daily ADV, as the daily engine)
    """

    initial_amount: float = 1_000_000.0
    allocator: AllocatorConfig = field(
        default_factory=lambda: AllocatorConfig(method="risk_parity", rebalance_every=1)
    )
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    impact_volume: ImpactVolume = "bar"

    def __post_init__(self) -> None:
        if not self.initial_amount > 0:
            raise ValueError(f"initial_amount must be positive, got {self.initial_amount!r}")
        if self.impact_volume not in ("bar", "session"):
            raise ValueError(f"impact_volume must be 'bar' or 'session', got {self.impact_volume!r}")


@dataclass(frozen=True)
class ExecutionRun:
    """Every parent order and child fill of every executor.

    :param parents: one row per (executor, date, tic) with a non-zero parent
    :param children: one row per child order sent
    """

    parents: pd.DataFrame
    children: pd.DataFrame


def _session_length(sessions: IntradaySessions, session: int) -> int:
    return int((~np.isnat(sessions.bar_ends[session])).sum())


def _check_aligned(sessions: IntradaySessions, targets: DailyTargets) -> None:
    if tuple(sessions.tickers) != tuple(targets.tickers):
        raise ValueError(f"targets: tickers {targets.tickers} differ from the sessions' {sessions.tickers}")
    if not sessions.dates.equals(targets.dates):
        raise ValueError("targets: dates differ from the sessions' dates")


def execute_sessions(
    sessions: IntradaySessions,
    targets: DailyTargets,
    executors: Sequence[Executor],
    config: HierarchyConfig,
) -> ExecutionRun:
    """Run every executor's book through every session.

    :param sessions: the intraday bars
    :param targets: the slow layer's targets, one row per session
    :param executors: the executors, one book each
    :param config: book, costs and fill rules
    :raises ValueError: no executor, duplicate executor names, or targets not aligned with the sessions
    """
    names = [e.name for e in executors]
    if not names:
        raise ValueError("executors: need at least one")
    if len(set(names)) != len(names):
        raise ValueError(f"executors: names must be unique, got {names}")
    _check_aligned(sessions, targets)
    simulation = config.simulation
    n_books, n_assets = len(executors), len(sessions.tickers)
    cash = np.full(n_books, config.initial_amount)
    holdings = np.zeros((n_books, n_assets))
    parent_rows: list[dict[str, object]] = []
    child_rows: list[dict[str, object]] = []
    for session in range(sessions.n_sessions):
        price = targets.decision_close[session]
        if targets.rebalance[session]:
            equity = portfolio_value(cash, holdings, price)
            parents = target_shares(targets.weights[session], equity, price) - holdings
        else:
            parents = np.zeros_like(holdings)
        n_bars = _session_length(sessions, session)
        plan_input = SessionPlan(
            n_bars=n_bars,
            previous_volume=sessions.volume[:session, :n_bars],
            previous_present=sessions.present[:session, :n_bars],
            price=price,
            adv=targets.adv[session],
            sigma=targets.sigma[session],
            impact=simulation.cost_model.impact,
        )
        plans = [executor.plan(plan_input) for executor in executors]
        adv = targets.adv[session] / n_bars if config.impact_volume == "bar" else targets.adv[session]
        filled = np.zeros_like(holdings)
        sent = np.zeros_like(holdings)
        totals = {k: np.zeros_like(holdings) for k in ("paid", "commission", "spread", "impact", "children")}
        for bar in range(n_bars):
            live = sessions.present[session, bar]
            children = np.stack(
                [
                    executor.child_orders(bar, parents[b], filled[b], sent[b], plans[b])
                    for b, executor in enumerate(executors)
                ]
            )
            level = np.stack([plan[bar] for plan in plans])
            # A slice whose bar does not exist stays due until one does.
            sent = np.where(live & (level > sent), level, sent)
            children = np.where(live, children, 0.0)
            if not children.any():
                continue
            broadcast = (n_books, n_assets)
            fill_bar = FillBar(
                reference_price=np.broadcast_to(sessions.open[session, bar], broadcast),
                high=np.broadcast_to(sessions.high[session, bar], broadcast),
                low=np.broadcast_to(sessions.low[session, bar], broadcast),
                volume=np.broadcast_to(sessions.volume[session, bar], broadcast),
                half_spread=np.broadcast_to(targets.half_spread[session], broadcast),
                adv=np.broadcast_to(adv, broadcast),
                sigma=np.broadcast_to(targets.sigma[session], broadcast),
            )
            fills = execute_orders(
                children,
                holdings,
                cash,
                np.broadcast_to(price, broadcast),
                fill_bar,
                simulation.cost_model,
                simulation.execution,
            )
            holdings = holdings + fills.shares
            cash = cash + fills.cash_change
            filled = filled + fills.shares
            traded = fills.shares != 0
            # A cell without an order may carry no price (before a ticker's first bar): keep it out of the sums.
            totals["paid"] += np.where(traded, fills.shares * fills.price, 0.0)
            totals["commission"] += fills.commission
            totals["spread"] += fills.spread_cost
            totals["impact"] += fills.impact_cost
            totals["children"] += children != 0
            for b, n in zip(*np.nonzero(children), strict=True):
                child_rows.append(
                    {
                        "executor": names[b],
                        "date": sessions.dates[session],
                        "tic": sessions.tickers[n],
                        "bar": bar,
                        "sent": float(children[b, n]),
                        "shares": float(fills.shares[b, n]),
                        "reference_price": float(sessions.open[session, bar, n]),
                        "price": float(fills.price[b, n]),
                        "commission": float(fills.commission[b, n]),
                        "spread_cost": float(fills.spread_cost[b, n]),
                        "impact_cost": float(fills.impact_cost[b, n]),
                    }
                )
        first_open, last_close = _session_prices(sessions, session, n_bars)
        for b, n in zip(*np.nonzero(parents), strict=True):
            parent_rows.append(
                {
                    "executor": names[b],
                    "date": sessions.dates[session],
                    "tic": sessions.tickers[n],
                    "parent": float(parents[b, n]),
                    "filled": float(filled[b, n]),
                    "children": int(totals["children"][b, n]),
                    "arrival_close": float(price[n]),
                    "first_open": float(first_open[n]),
                    "last_close": float(last_close[n]),
                    "paid": float(totals["paid"][b, n]),
                    "commission": float(totals["commission"][b, n]),
                    "spread_cost": float(totals["spread"][b, n]),
                    "impact_cost": float(totals["impact"][b, n]),
                }
            )
    return ExecutionRun(
        pd.DataFrame(parent_rows, columns=PARENT_COLUMNS), pd.DataFrame(child_rows, columns=CHILD_COLUMNS)
    )


PARENT_COLUMNS = (
    "executor",
    "date",
    "tic",
    "parent",
    "filled",
    "children",
    "arrival_close",
    "first_open",
    "last_close",
    "paid",
    "commission",
    "spread_cost",
    "impact_cost",
)
CHILD_COLUMNS = (
    "executor",
    "date",
    "tic",
    "bar",
    "sent",
    "shares",
    "reference_price",
    "price",
    "commission",
    "spread_cost",
    "impact_cost",
)


def _session_prices(sessions: IntradaySessions, session: int, n_bars: int) -> tuple[np.ndarray, np.ndarray]:
    """The open of each ticker's first bar and the close of its last bar in the session (NaN without bars):
    benchmarks of the measures, never inputs of a decision."""
    present = sessions.present[session, :n_bars]
    has_bar = present.any(axis=0)
    first = present.argmax(axis=0)
    last = n_bars - 1 - present[::-1].argmax(axis=0)
    columns = np.arange(present.shape[1])
    first_open = np.where(has_bar, sessions.open[session, first, columns], np.nan)
    last_close = np.where(has_bar, sessions.close[session, last, columns], np.nan)
    return first_open, last_close


__all__ = [
    "CHILD_COLUMNS",
    "PARENT_COLUMNS",
    "ExecutionRun",
    "HierarchyConfig",
    "ImpactVolume",
    "execute_sessions",
]
