"""Event-driven backtests on the shared simulation core: the same review, fill and cost code as training.

The backtester drives :meth:`PortfolioSimulator.step`, so each date runs the market loop's events in their one
order (:func:`~trading_core.market.simulator.run_bar`): the open, where orders decided at the previous close
fill, and the close, where portfolios are marked, the risk manager sees the bar and the policy decides.
B portfolios run on one panel at once (seeds, candidates, baselines), the way the training environment steps
many; a single portfolio is the case B = 1. Everything is recorded as arrays and turned into frames once at the
end: equity, positions, every fill with its commission, spread and impact, and every risk intervention with its
reason.

:func:`run_backtest` evaluates a policy in the engine it trained in against equal-weight buy-and-hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from trading_core.envs.fast import ActionSpec, observation_at, simulator_targets
from trading_core.envs.finrl import TradingEnvConfig, rollout_policy
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.metrics import PerformanceMetrics, compute_metrics
from trading_core.market.arrays import MarketArrays, as_market
from trading_core.market.limits import HaltStatistics, Intervention
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig, StepOutcome

TRADE_COLUMNS = ["date", "tic", "shares", "price", "notional", "commission", "spread_cost", "impact_cost"]
INTERVENTION_COLUMNS = ["date", "rule", "tic", "requested", "approved", "reason"]
# Target holdings [B, N] at the close of ``day``, from the simulator's state then.
Decide = Callable[[int, PortfolioSimulator], np.ndarray]


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

    @property
    def halt_statistics(self) -> HaltStatistics:
        """Days halted, halts (entries into HALTED) and re-arms (exits from HALTED), from ``risk_states``."""
        return HaltStatistics.of_states(self.risk_states.to_numpy())


class _Recorder:
    """What a batched backtest records, as dense arrays per date, portfolio and asset (fills on the date they
    executed on, date-major so each step writes one block); :meth:`records` builds the frames once at the end.
    Memory: six floats per date, portfolio and asset.

    A delisting's settlement is booked as a trade: a sale of the settled shares at the settlement date's close
    (the last close, carried) without costs, so a ticker's trades sum to its positions and the attribution
    reconciles. It is no trading decision, so it stays out of ``traded_notional`` (turnover)."""

    _FILL_FIELDS = ("shares", "price", "commission", "spread_cost", "impact_cost")

    def __init__(self, simulator: PortfolioSimulator) -> None:
        market, n_books = simulator.market, simulator.n_envs
        self.market, self.tickers = market, np.array(market.tickers, dtype=object)
        shape = (market.n_steps, n_books)
        self.equity = np.zeros(shape)
        self.states = np.zeros(shape, dtype=np.int64)
        self.positions = np.zeros((*shape, market.n_assets))
        self.fills = np.zeros((market.n_steps, len(self._FILL_FIELDS), n_books, market.n_assets))
        self.interventions: list[Intervention] = []
        # Settlement date -> settled shares [B, N]: delistings are rare, so kept sparse.
        self.settlements: dict[int, np.ndarray] = {}
        self._mark(0, simulator.equity(), simulator)

    def _mark(self, day: int, equity: np.ndarray, simulator: PortfolioSimulator) -> None:
        self.equity[day] = equity
        self.positions[day] = simulator.holdings
        self.states[day] = simulator.gate.state

    def record(self, outcome: StepOutcome, simulator: PortfolioSimulator) -> None:
        """Book one step: its fills on the bar they executed on, the interventions on the decision's date."""
        fills, booked = outcome.fills, self.fills[outcome.fill_day]
        for index, name in enumerate(self._FILL_FIELDS):
            booked[index] = getattr(fills, name)
        if outcome.review is not None:
            self.interventions.extend(outcome.review.interventions(outcome.day))
        if outcome.settled is not None:
            self.settlements[simulator.day] = outcome.settled  # settled on the step's new date
        self._mark(simulator.day, outcome.equity_after, simulator)

    def records(self) -> list[BacktestRecord]:
        """One record per portfolio."""
        interventions: dict[int, list[Intervention]] = {}
        for intervention in self.interventions:
            interventions.setdefault(intervention.env, []).append(intervention)
        return [self._record(book, interventions.get(book, [])) for book in range(self.equity.shape[1])]

    def _record(self, book: int, interventions: list[Intervention]) -> BacktestRecord:
        market = self.market
        dates, tickers = market.dates, self.tickers
        shares, price, commission, spread_cost, impact_cost = self.fills[:, :, book].transpose(1, 0, 2)
        # Per date, as the fills' own arrays sum them: every asset, traded or not.
        costs = (commission + spread_cost + impact_cost).sum(axis=1)
        turnover = (np.abs(shares) * price).sum(axis=1)
        shares, price = self._with_settlements(book, shares, price)
        notional = np.abs(shares) * price
        traded = shares != 0
        day, asset = np.nonzero(traded)  # date, then asset order
        columns = (shares, price, notional, commission, spread_cost, impact_cost)
        trades = pd.DataFrame(
            {
                "date": dates[day],
                "tic": tickers[asset],
                **{name: values[traded] for name, values in zip(TRADE_COLUMNS[2:], columns, strict=True)},
            },
            columns=TRADE_COLUMNS,
            copy=False,  # every column is a fresh array of its own
        )
        return BacktestRecord(
            equity=pd.Series(self.equity[:, book], index=dates, name="portfolio_value"),
            positions=pd.DataFrame(self.positions[:, book], index=dates, columns=list(market.tickers)),
            trades=trades,
            interventions=self._interventions(interventions),
            risk_states=pd.Series(self.states[:, book], index=dates, name="risk_state"),
            costs=pd.Series(costs, index=dates, name="costs"),
            traded_notional=pd.Series(turnover, index=dates, name="traded_notional"),
        )

    def _with_settlements(
        self, book: int, shares: np.ndarray, price: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fill shares and prices ``[T, N]`` of one portfolio with its settlements booked as sales at the
        settlement date's close. A settled asset has no bar that date, so no fill shares the cell."""
        if not self.settlements:
            return shares, price
        shares, price = shares.copy(), price.copy()  # the fills' arrays are views of every portfolio's record
        for day, settled in self.settlements.items():
            sold = settled[book] != 0
            shares[day, sold] = -settled[book, sold]
            price[day, sold] = self.market.close[day, sold]
        return shares, price

    def _interventions(self, interventions: list[Intervention]) -> pd.DataFrame:
        dates, tickers = self.market.dates, self.market.tickers
        rows = [
            (
                dates[i.step],
                i.rule,
                tickers[i.asset] if i.asset is not None else None,
                i.requested,
                i.approved,
                i.reason,
            )
            for i in interventions
        ]
        return pd.DataFrame(rows, columns=INTERVENTION_COLUMNS)


class EventDrivenBacktester:
    """Replays a market panel bar by bar for B portfolios at once, each driven by a policy or target rule.

    :param data: features frame or arrays of the backtest period (pass arrays to convert a panel only once)
    :param config: the same simulation settings the agent trained with (``execution.whole_shares=False`` for
        fractional shares)
    :param action: what a policy's action means, as in the environment it trained in (``ActionSpec()`` when
        ``None``)
    """

    def __init__(
        self,
        data: pd.DataFrame | MarketArrays,
        config: SimulationConfig,
        action: ActionSpec | None = None,
    ) -> None:
        self.market = as_market(data)
        self.config, self.action = config, action or ActionSpec()

    def run(self, policy) -> BacktestRecord:
        """Backtest a policy with SB3's ``predict(observation, deterministic=True)``."""
        return self.run_many([policy])[0]

    def run_targets(self, decide: Decide) -> BacktestRecord:
        """Backtest a decision function returning target holdings ``[1, N]`` at each close."""
        return self.run_batch(decide, 1)[0]

    def run_many(self, policies: Sequence) -> list[BacktestRecord]:
        """Backtest B policies side by side, portfolio ``b`` driven by ``policies[b]``; a policy that drives
        several portfolios is called once per bar on their stacked observations ``[k, obs]``."""
        return self.run_batch(self.policy_targets(policies), len(policies))

    def run_batch(self, decide: Decide, n_portfolios: int) -> list[BacktestRecord]:
        """Backtest ``n_portfolios`` portfolios at once under a decision function returning targets ``[B, N]``.

        Portfolio ``b``'s record equals the record of a single backtest under row ``b`` of the targets.
        """
        simulator = PortfolioSimulator(self.market, self.config, n_envs=n_portfolios)
        simulator.reset()
        recorder = _Recorder(simulator)
        done = False
        while not done:
            outcome = simulator.step(decide(simulator.day, simulator))
            recorder.record(outcome, simulator)
            done = outcome.done
        return recorder.records()

    def policy_targets(self, policies: Sequence) -> Decide:
        """The decision function of B policies: observation -> action -> target holdings, per portfolio."""
        groups: dict[int, list[int]] = {}
        for row, policy in enumerate(policies):
            groups.setdefault(id(policy), []).append(row)
        by_policy = [(policies[rows[0]], np.array(rows)) for rows in groups.values()]
        market, spec = self.market, self.action
        size = spec.action_size(market.n_assets)

        def decide(day: int, simulator: PortfolioSimulator) -> np.ndarray:
            observation = observation_at(market, day, simulator.cash, simulator.holdings)
            actions = np.empty((len(policies), size))
            for policy, rows in by_policy:
                # One portfolio: the 1-D observation, exactly as a single-portfolio rollout predicts.
                seen = observation[rows[0]] if len(rows) == 1 else observation[rows]
                action, _ = policy.predict(seen, deterministic=True)
                actions[rows] = np.asarray(action, dtype=np.float64).reshape(len(rows), size)
            return simulator_targets(actions, simulator, spec)

        return decide


def buy_and_hold_targets(invest: float = 0.99) -> Decide:
    """Buy equal dollar amounts of every asset tradable at the first close, ``invest`` of the equity (the rest
    leaves room for the purchase's costs, so the cash rule never cuts it), then hold. Whole shares unless the
    simulation trades fractional ones.

    Buy-and-hold buys once: an asset listing later is never bought, and a delisted one stays the cash the
    simulator settles it into."""

    def decide(day: int, simulator: PortfolioSimulator) -> np.ndarray:
        if day > 0:
            return simulator.holdings.copy()
        tradable = simulator.market.tradable[0]
        budget = simulator.equity()[:, None] / max(int(tradable.sum()), 1)
        shares = np.where(tradable, budget * invest / simulator.prices, 0.0)
        return np.floor(shares) if simulator.config.execution.whole_shares else shares

    return decide


def buy_and_hold_record(
    data: pd.DataFrame | MarketArrays, config: SimulationConfig, invest: float = 0.99
) -> BacktestRecord:
    """The equal-weight buy-and-hold benchmark under the same costs and fills, without the risk manager."""
    return EventDrivenBacktester(data, replace(config, risk=None)).run_targets(buy_and_hold_targets(invest))


def equal_weight_buy_and_hold(
    data: pd.DataFrame | MarketArrays, initial_amount: float, cost_pct: float
) -> pd.Series:
    """The FinRL engine's benchmark: :func:`buy_and_hold_record` under FinRL's costs (same-close fills,
    ``cost_pct`` on the traded value) in fractional shares, investing all the cash the costs leave."""
    config = SimulationConfig.finrl_parity(initial_amount, cost_pct, whole_shares=False)
    record = buy_and_hold_record(data, config, invest=1.0 / (1.0 + cost_pct))
    return record.equity.rename("buy_and_hold_value")


@dataclass(frozen=True)
class BacktestResult:
    """Equity curves and metrics of the agent and of the benchmark over the same dates."""

    equity: pd.Series
    benchmark_equity: pd.Series
    metrics: PerformanceMetrics
    benchmark_metrics: PerformanceMetrics
    actions: pd.DataFrame
    total_cost: float
    trades: int
    record: BacktestRecord | None = None


def backtest_policy(
    policy, test_features: pd.DataFrame | MarketArrays, env_config: TradingEnvConfig
) -> BacktestResult:
    """Backtest a policy in FinRL's environment against equal-weight buy-and-hold with the same costs."""
    equity, actions, cost, trades = rollout_policy(policy, test_features, env_config)
    benchmark = equal_weight_buy_and_hold(test_features, env_config.initial_amount, env_config.cost_pct)
    return BacktestResult(
        equity=equity,
        benchmark_equity=benchmark,
        metrics=compute_metrics(equity),
        benchmark_metrics=compute_metrics(benchmark),
        actions=actions,
        total_cost=cost,
        trades=trades,
    )


def _result(record: BacktestRecord, benchmark: BacktestRecord) -> BacktestResult:
    return BacktestResult(
        equity=record.equity,
        benchmark_equity=benchmark.equity.rename("buy_and_hold_value"),
        metrics=compute_metrics(record.equity, record.traded_notional, record.costs),
        benchmark_metrics=compute_metrics(benchmark.equity, benchmark.traded_notional, benchmark.costs),
        actions=record.positions.diff().fillna(0.0),
        total_cost=float(record.costs.sum()),
        trades=len(record.trades),
        record=record,
    )


def run_backtest(policy, test_features: pd.DataFrame | MarketArrays, env_spec: EnvSpec) -> BacktestResult:
    """Backtest a policy in the engine it trained in, against equal-weight buy-and-hold under the same costs.

    The fast engine replays the period through the event-driven backtester (next-bar fills, costs split into
    commission, spread and impact, risk interventions recorded); the FinRL engine rolls out FinRL's own env.

    :param test_features: the period as a features frame or as arrays (converted once for agent and benchmark)
    """
    return run_backtests([policy], test_features, env_spec)[0]


def run_backtests(
    policies: Sequence, test_features: pd.DataFrame | MarketArrays, env_spec: EnvSpec
) -> list[BacktestResult]:
    """:func:`run_backtest` for several policies on one period: the fast engine runs them as one batched
    backtest (and the benchmark once); each result equals that policy's own :func:`run_backtest`."""
    if env_spec.engine == "finrl":
        return [backtest_policy(policy, test_features, env_spec.finrl_config()) for policy in policies]
    backtester = EventDrivenBacktester(test_features, env_spec.simulation, env_spec.engine_action)
    records = backtester.run_many(policies)
    benchmark = buy_and_hold_record(backtester.market, env_spec.simulation)
    return [_result(record, benchmark) for record in records]
