"""Event-driven backtester on the shared simulation core: the same review, fill and cost code as training.

Each date produces two events: the open, where orders decided at the previous close fill, and the close, where
portfolios are marked, the risk manager sees the bar and the policy decides. Everything is recorded: equity,
positions, every fill with its commission, spread and impact, and every risk intervention with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from trading_core.envs.fast import ActionMode, observation_at, targets_from_actions
from trading_core.market.arrays import MarketArrays
from trading_core.market.execution import FillBar, Fills
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig

TRADE_COLUMNS = ["date", "tic", "shares", "price", "notional", "commission", "spread_cost", "impact_cost"]


@dataclass(frozen=True)
class BacktestRecord:
    """The full record of one backtest."""

    equity: pd.Series
    positions: pd.DataFrame
    trades: pd.DataFrame
    interventions: pd.DataFrame
    risk_states: pd.Series
    costs: pd.Series
    traded_notional: pd.Series

    @property
    def cost_breakdown(self) -> dict[str, float]:
        return {
            column: float(self.trades[column].sum())
            for column in ("commission", "spread_cost", "impact_cost")
        }


class EventDrivenBacktester:
    """Replays a market panel bar by bar for one portfolio driven by a policy.

    :param data: features frame or arrays of the backtest period
    :param config: the same simulation settings the agent trained with
    :param hmax: most shares per asset per action (``shares`` mode)
    :param action_mode: ``shares`` or ``weights``
    """

    def __init__(
        self,
        data: pd.DataFrame | MarketArrays,
        config: SimulationConfig,
        hmax: int = 100,
        action_mode: ActionMode = "shares",
    ) -> None:
        self.market = data if isinstance(data, MarketArrays) else MarketArrays.from_features(data)
        self.config, self.hmax, self.action_mode = config, hmax, action_mode

    def run(self, policy) -> BacktestRecord:
        """Backtest a policy with SB3's ``predict(observation, deterministic=True)``."""

        def decide(day: int, simulator: PortfolioSimulator) -> np.ndarray:
            observation = observation_at(self.market, day, simulator.cash, simulator.holdings)
            action, _ = policy.predict(observation[0], deterministic=True)
            return targets_from_actions(
                action, simulator.holdings, simulator.equity(), simulator.prices, self.action_mode, self.hmax
            )

        return self.run_targets(decide)

    def run_targets(self, decide: Callable[[int, PortfolioSimulator], np.ndarray]) -> BacktestRecord:
        """Backtest a decision function returning target holdings ``[1, N]`` at each close."""
        market = self.market
        simulator = PortfolioSimulator(market, self.config, n_envs=1)
        simulator.reset()
        equity = [float(simulator.equity()[0])]
        positions = [simulator.holdings[0].copy()]
        states = [int(simulator.risk.state[0]) if simulator.risk is not None else 0]
        trades: list[tuple] = []
        interventions: list[tuple] = []
        daily_costs = np.zeros(market.n_steps)
        daily_notional = np.zeros(market.n_steps)
        pending: tuple[np.ndarray, np.ndarray, FillBar] | None = None

        for day in range(market.n_steps):
            if day > 0:
                if pending is not None:  # the open: yesterday's orders meet today's bar
                    fills = simulator.fill(*pending)
                    self._record_fills(fills, day, trades, daily_costs, daily_notional)
                    pending = None
                simulator.advance()  # the close: mark to market, risk manager sees the bar
                equity.append(float(simulator.equity()[0]))
                positions.append(simulator.holdings[0].copy())
                states.append(int(simulator.risk.state[0]) if simulator.risk is not None else 0)
            if day == market.n_steps - 1:
                break
            approved, review = simulator.review(decide(day, simulator))
            if review is not None:
                interventions.extend(review.interventions(day))
            decision_prices = np.broadcast_to(simulator.prices, simulator.holdings.shape).copy()
            order = (approved - simulator.holdings, decision_prices, simulator.fill_bar())
            if self.config.execution.fill_timing == "same_close":
                fills = simulator.fill(*order)
                self._record_fills(fills, day, trades, daily_costs, daily_notional)
            else:
                pending = order

        dates = market.dates
        return BacktestRecord(
            equity=pd.Series(equity, index=dates, name="portfolio_value"),
            positions=pd.DataFrame(np.asarray(positions), index=dates, columns=list(market.tickers)),
            trades=pd.DataFrame(trades, columns=TRADE_COLUMNS),
            interventions=pd.DataFrame(
                [
                    (
                        dates[i.step],
                        i.rule,
                        market.tickers[i.asset] if i.asset is not None else None,
                        i.requested,
                        i.approved,
                        i.reason,
                    )
                    for i in interventions
                ],
                columns=["date", "rule", "tic", "requested", "approved", "reason"],
            ),
            risk_states=pd.Series(states, index=dates, name="risk_state"),
            costs=pd.Series(daily_costs, index=dates, name="costs"),
            traded_notional=pd.Series(daily_notional, index=dates, name="traded_notional"),
        )

    def _record_fills(
        self, fills: Fills, day: int, trades: list[tuple], daily_costs: np.ndarray, daily_notional: np.ndarray
    ) -> None:
        """Book the fills of the bar ``day`` (the bar they executed on)."""
        date = self.market.dates[day]
        traded = np.flatnonzero(fills.shares[0])
        for asset in traded:
            trades.append(
                (
                    date,
                    self.market.tickers[asset],
                    float(fills.shares[0, asset]),
                    float(fills.price[0, asset]),
                    float(fills.notional[0, asset]),
                    float(fills.commission[0, asset]),
                    float(fills.spread_cost[0, asset]),
                    float(fills.impact_cost[0, asset]),
                )
            )
        daily_costs[day] += float(fills.total_cost[0].sum())
        daily_notional[day] += float(fills.notional[0].sum())


def equal_weight_buy_and_hold_targets(day: int, simulator: PortfolioSimulator) -> np.ndarray:
    """Buy equal dollar amounts of every asset at the first close (whole shares), then hold."""
    if day > 0:
        return simulator.holdings.copy()
    budget = simulator.equity()[:, None] / simulator.market.n_assets
    # Leave room for the costs of the initial purchase so it is never cut by the cash rule.
    return np.floor(budget * 0.99 / simulator.prices)


def buy_and_hold_record(data: pd.DataFrame | MarketArrays, config: SimulationConfig) -> BacktestRecord:
    """The equal-weight buy-and-hold benchmark under the same costs and fills, without the risk manager."""
    return EventDrivenBacktester(data, replace(config, risk=None)).run_targets(
        equal_weight_buy_and_hold_targets
    )
