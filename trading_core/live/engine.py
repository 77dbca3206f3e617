"""One decision per bar: streaming features -> the registered policy -> target holdings -> the shared risk manager.

The observation is laid out by the training environment's own function
(:func:`trading_core.envs.fast.observation_from`), from features that equal the batch pipeline's
(:class:`trading_core.features.streaming.StreamingFeatures`), so the agent sees live what it saw in training. The
risk manager sits where the simulator's market loop puts it (:class:`trading_core.market.simulator.RiskGate`):
it sees each bar's close (:meth:`DecisionEngine.mark`) and reviews each decision (:meth:`DecisionEngine.decide`);
the live loop runs the bar's events in the loop's order (:func:`trading_core.market.simulator.run_bar`).
An agent that tilts a classical allocator's weights observes them as a feature: the engine refits the allocator
on its trailing price history at each decision (:func:`trading_core.allocators.prior.latest_prior`), the fit
the batch column holds for the same date.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from trading_core.agents.decision_spec import DecisionSpec
from trading_core.allocators.config import PRIOR_FEATURE
from trading_core.allocators.prior import history_needed, latest_prior
from trading_core.data.schema import BASE_COLUMNS
from trading_core.envs.fast import observation_from, prior_from, targets_from_actions
from trading_core.market.arrays import MarketArrays
from trading_core.market.limits import TradingState
from trading_core.market.risk import RiskManager, RiskReview
from trading_core.market.simulator import RiskGate
from trading_core.models.cnn_lstm import TrainedForecaster, latest_learned_features
from trading_core.regimes.model import REGIME_PREFIX


def shared_regime_model(specs: list[DecisionSpec]) -> dict | None:
    """The one regime model the agents sharing a feature stream observe (``None`` when none observes one).

    :raises ValueError: two agents observe different regime models (one stream cannot filter both)
    """
    models = [spec.regime_model for spec in specs if spec.regime_model is not None]
    if any(model != models[0] for model in models[1:]):
        raise ValueError("the agents observe different regime models; one feature stream filters only one")
    return models[0] if models else None


@dataclass(frozen=True)
class Decision:
    """What the engine decided on one bar for one portfolio."""

    bar_time: pd.Timestamp
    prices: np.ndarray
    actions: np.ndarray
    targets: np.ndarray
    approved: np.ndarray
    review: RiskReview | None
    trading_state: TradingState


@dataclass
class PortfolioBook:
    """Cash and holdings a decision starts from, and the trailing returns the risk manager's VaR needs."""

    cash: float
    holdings: np.ndarray
    returns: list[np.ndarray] = field(default_factory=list)


class DecisionEngine:
    """Turns feature rows of one bar into risk-approved target holdings for one registered agent.

    :param policy: anything with SB3's ``predict`` (a zoo policy or an ensemble)
    :param spec: the agent's decision spec from the registry
    :param forecaster: the CNN+LSTM named by ``spec.forecaster_uri`` (``None`` when the agent uses none)
    """

    def __init__(self, policy, spec: DecisionSpec, forecaster: TrainedForecaster | None = None) -> None:
        if spec.forecaster_uri and forecaster is None:
            raise ValueError(f"the agent observes {spec.forecaster_uri}; load that forecaster first")
        if spec.regime_model is None and any(c.startswith(REGIME_PREFIX) for c in spec.feature_columns):
            raise ValueError(
                "the agent observes regime probabilities but its decision spec holds no regime model"
            )
        if list(spec.tickers) != sorted(spec.tickers):
            raise ValueError(f"decision spec tickers must be sorted as in training, got {spec.tickers}")
        self.policy, self.spec, self.forecaster = policy, spec, forecaster
        simulation = spec.env_spec.simulation
        limits = simulation.risk if spec.env_spec.engine == "fast" else None
        # Live, a max-drawdown halt latches until a person re-arms it; backtests and training re-arm by themselves.
        limits = limits.for_live() if limits is not None else None
        if limits is not None and limits.max_sector_exposure is not None and spec.sectors is None:
            raise ValueError(
                "the agent's risk limits set max_sector_exposure but its decision spec holds no sectors; "
                "retrain or re-register it with sector labels"
            )
        self.gate = RiskGate(limits, 1, len(spec.tickers), sectors=spec.sector_labels)
        self.var_lookback = simulation.var_lookback
        self._index_cache: dict[tuple[str, ...], tuple[int, np.ndarray]] = {}

    @property
    def risk(self) -> RiskManager | None:
        """The risk manager (``None`` when the agent trades without one); settable to restore a saved one."""
        return self.gate.risk

    @risk.setter
    def risk(self, risk: RiskManager | None) -> None:
        self.gate.risk = risk

    @property
    def history_dates(self) -> int:
        """Dates of feature history a decision needs (the forecaster's window plus one, the prior's fit window
        plus one)."""
        forecaster = self.forecaster.config.window + 1 if self.forecaster is not None else 1
        prior = history_needed(self.spec.prior) if self.spec.prior is not None else 1
        return max(forecaster, prior)

    @property
    def needs_history(self) -> bool:
        """Whether a decision reads more than the bar's own features (a forecaster or a prior)."""
        return self.history_dates > 1

    def reset(self, equity: float) -> None:
        self.gate.reset(np.array([equity]))

    def feature_rows(self, recent: pd.DataFrame) -> pd.DataFrame | None:
        """The last date's rows with every observed column, or ``None`` while the forecaster or the prior warms
        up (the prior needs :attr:`history_dates` dates, so that its fit is the batch column's)."""
        last_date = recent["date"].max()
        if self.forecaster is None:
            rows = recent[recent["date"] == last_date].reset_index(drop=True)
        else:
            rows = self.learned_rows(recent)
            if rows is None or len(rows) != len(self.spec.tickers):
                return None
        if self.spec.prior is None:
            return rows
        if recent["date"].nunique() < history_needed(self.spec.prior):
            return None
        return rows.assign(**{PRIOR_FEATURE: rows["tic"].map(self.prior_weights(recent))})

    def learned_rows(self, recent: pd.DataFrame) -> pd.DataFrame | None:
        """The last date's rows joined with the forecaster's outputs, sorted by ticker (``None`` while it warms
        up): what joining the batch :func:`~trading_core.models.cnn_lstm.learned_features` gives for that date,
        from the last date's windows alone (one model call, no pivot of the whole history per bar)."""
        latest = latest_learned_features(self.forecaster, recent)
        if latest is None or len(latest.tics) == 0:
            return None
        clashes = [c for c in latest.columns if c in recent.columns]
        if clashes:
            raise ValueError(f"features already hold columns {clashes}")
        # The forecaster knows each ticker's row: positional takes and one concat instead of a pandas merge
        # (a merge or per-column assigns cost milliseconds per bar). Its tickers are sorted, as the merge sorts.
        rows = recent.take(latest.rows).reset_index(drop=True)
        learned = pd.DataFrame(latest.values, columns=latest.columns)
        return pd.concat([rows, learned], axis=1)

    def prior_weights(self, recent: pd.DataFrame) -> pd.Series:
        """The prior's weight per ticker at the last date of ``recent``, fit on its closes alone."""
        market = MarketArrays.from_features(
            recent[list(BASE_COLUMNS)], feature_names=[], tickers=self.spec.tickers
        )
        if self.spec.sectors is not None:  # as in training: sector_momentum rotates between these sectors
            market = replace(market, sectors=self.spec.sector_labels)
        return pd.Series(latest_prior(market, self.spec.prior), index=list(self.spec.tickers))

    def feature_matrix(self, recent: pd.DataFrame) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """The last date's observed columns as a ``[tickers, columns]`` matrix (forecaster outputs included)."""
        rows = self.feature_rows(recent)
        if rows is None:
            return None
        columns = tuple(self.spec.observation_columns[2:])  # without date and tic
        return rows.sort_values("tic")[list(columns)].to_numpy(dtype=np.float64), columns

    def _indices(self, columns: tuple[str, ...]) -> tuple[int, np.ndarray]:
        cached = self._index_cache.get(columns)
        if cached is None:
            position = {name: i for i, name in enumerate(columns)}
            missing = [c for c in self.spec.feature_columns if c not in position]
            if missing:
                raise KeyError(f"the live features lack columns the agent observes: {missing}")
            cached = (position["close"], np.array([position[c] for c in self.spec.feature_columns]))
            self._index_cache[columns] = cached
        return cached

    def observation(self, values: np.ndarray, columns: tuple[str, ...], book: PortfolioBook) -> np.ndarray:
        """``[cash, closes, holdings, feature_1 (N), ..., feature_F (N)]`` as float32, as in training.

        :param values: the bar's features, one row per ticker in sorted order, one column per name in ``columns``
        """
        close, features = self._indices(columns)
        return observation_from(
            np.array([book.cash]), values[:, close], book.holdings[None, :], values[:, features].T
        )

    def mark(self, equity: float, turbulence: float) -> None:
        """The close: the risk manager sees the bar (drawdown, daily loss and turbulence breakers)."""
        self.gate.close(np.array([equity]), turbulence)

    def decide(
        self, bar_time: pd.Timestamp, values: np.ndarray, columns: tuple[str, ...], book: PortfolioBook
    ) -> Decision:
        """Risk-approved target holdings for the bar whose feature matrix is given."""
        prices = values[:, self._indices(columns)[0]]
        action, _ = self.policy.predict(self.observation(values, columns, book), deterministic=True)
        equity = book.cash + float(book.holdings @ prices)
        env = self.spec.env_spec
        # The action semantics the agent trained with (the FinRL engine's are always FinRL's shares).
        targets = targets_from_actions(
            np.asarray(action, dtype=np.float64).reshape(1, -1),
            book.holdings[None, :],
            np.array([equity]),
            prices[None, :],
            env.engine_action,
            env.simulation.execution.whole_shares,
            prior=prior_from(columns, values.T, env.engine_action),
        )
        window = np.array(book.returns[-self.var_lookback :]) if book.returns else np.zeros((0, len(prices)))
        approved, review = self.gate.review(
            targets, book.holdings[None, :], prices[None, :], np.array([book.cash]), window
        )
        state = TradingState(int(self.gate.state[0]))
        return Decision(
            bar_time, prices, np.asarray(action).reshape(-1), targets[0], approved[0], review, state
        )
