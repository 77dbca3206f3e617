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

A decision reads the stream's last dates as arrays (:class:`~trading_core.features.streaming.FeatureWindow`,
views of the rows the stream keeps, updated once per bar): the forecaster's input windows, the prior's prices and
the observed columns come from them by precomputed positions, with no DataFrame per bar.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trading_core.agents.decision_spec import DecisionSpec
from trading_core.allocators.config import PRIOR_FEATURE
from trading_core.allocators.prior import history_needed, latest_prior
from trading_core.data.schema import BASE_COLUMNS
from trading_core.envs.fast import observation_from, prior_from, targets_from_actions
from trading_core.features.streaming import FeatureWindow
from trading_core.market.arrays import MarketArrays
from trading_core.market.limits import TradingState
from trading_core.market.risk import RiskManager, RiskReview
from trading_core.market.simulator import RiskGate
from trading_core.models.cnn_lstm import LiveForecaster, TrainedForecaster
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


@dataclass(frozen=True)
class _MatrixLayout:
    """Where each column of a decision matrix comes from, for one layout of the feature columns (built once)."""

    columns: tuple[str, ...]  # the observed columns in the spec's order, without date and tic
    read_targets: np.ndarray  # matrix columns copied from the last date's features ...
    read_sources: np.ndarray  # ... from these feature columns
    learned_targets: np.ndarray  # matrix columns of the forecaster's outputs ...
    learned_sources: np.ndarray  # ... in the forecast's output order
    prior_target: int | None  # the matrix column of the prior's weights
    close_source: int  # the feature column of the close

    @classmethod
    def of(
        cls, observed: tuple[str, ...], feature_columns: tuple[str, ...], learned: list[str]
    ) -> _MatrixLayout:
        """:param learned: the forecaster's output columns (empty without one)"""
        source = {name: i for i, name in enumerate(feature_columns)}
        computed = {*learned, PRIOR_FEATURE}
        read = [i for i, name in enumerate(observed) if name not in computed]
        missing = [observed[i] for i in read if observed[i] not in source]
        if missing:
            raise KeyError(f"the live features lack columns the agent observes: {missing}")
        position = {name: i for i, name in enumerate(observed)}
        outputs = [i for i, name in enumerate(learned) if name in position]
        return cls(
            columns=observed,
            read_targets=np.array(read, dtype=np.intp),
            read_sources=np.array([source[observed[i]] for i in read], dtype=np.intp),
            learned_targets=np.array([position[learned[i]] for i in outputs], dtype=np.intp),
            learned_sources=np.array(outputs, dtype=np.intp),
            prior_target=position.get(PRIOR_FEATURE),
            close_source=source["close"],
        )


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
        self._forecast = LiveForecaster(forecaster) if forecaster is not None else None
        self._layouts: dict[tuple[str, ...], _MatrixLayout] = {}

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

    def feature_matrix(
        self, recent: FeatureWindow | pd.DataFrame
    ) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """The last date's observed columns as a ``[tickers, columns]`` matrix (forecaster outputs and prior
        included), or ``None`` while the forecaster or the prior warms up (the prior needs
        :attr:`history_dates` dates, so that its fit is the batch column's) or a ticker lacks its window.

        :param recent: the stream's last dates (:meth:`StreamingFeatures.latest_window
            <trading_core.features.streaming.StreamingFeatures.latest_window>`: arrays, nothing to convert), or a
            long features frame of them (converted to a window first)
        """
        window = recent if isinstance(recent, FeatureWindow) else self._window_of(recent)
        return self._matrix(window)

    def feature_rows(self, recent: pd.DataFrame) -> pd.DataFrame | None:
        """The last date's rows of a features frame, sorted by ticker, joined with the columns the engine computes
        (the forecaster's outputs, the prior): :meth:`feature_matrix` as a frame (``None`` when it is)."""
        matrix = self.feature_matrix(recent)
        if matrix is None:
            return None
        values, columns = matrix
        derived = [c for c in self._derived_columns if c in columns]
        last = recent[(recent["date"] == recent["date"].max()) & recent["tic"].isin(self.spec.tickers)]
        # A prior column the frame holds already is replaced by the engine's fit (the forecaster's may not be).
        rows = last.drop(columns=derived, errors="ignore").sort_values("tic", ignore_index=True)
        computed = values[:, [columns.index(c) for c in derived]]
        return pd.concat([rows, pd.DataFrame(computed, columns=list(derived))], axis=1)

    def learned_values(self, window: FeatureWindow) -> np.ndarray | None:
        """The forecaster's outputs at the window's last date, ``(tickers, outputs)`` in its output column order:
        the batch :func:`~trading_core.models.cnn_lstm.learned_features` of that date, from the last
        ``window + 1`` dates' arrays and one model call (``None`` while it warms up or a ticker's window is
        incomplete)."""
        assert self._forecast is not None  # only called for an agent that observes a forecaster
        return self._forecast.forecast(window.rows, window.columns)

    def prior_weights(self, recent: pd.DataFrame) -> pd.Series:
        """The prior's weight per ticker at the last date of a features frame, fit on its closes alone."""
        window = FeatureWindow.from_frame(recent, BASE_COLUMNS[2:], self.spec.tickers)
        return pd.Series(self.prior_of(window), index=list(self.spec.tickers))

    def prior_of(self, window: FeatureWindow) -> np.ndarray:
        """The prior's weights ``[tickers]`` at the window's last date, fit on its closes alone (a ticker without a
        row on a date is not tradable there, as in :meth:`MarketArrays.from_features
        <trading_core.market.arrays.MarketArrays.from_features>`)."""
        assert self.spec.prior is not None  # only called for an agent that tilts a prior
        return latest_prior(self._price_market(window), self.spec.prior)

    @property
    def _learned_columns(self) -> list[str]:
        return self._forecast.output_columns if self._forecast is not None else []

    @property
    def _derived_columns(self) -> list[str]:
        """Observed columns the engine computes rather than reads from the features."""
        return [*self._learned_columns, *([PRIOR_FEATURE] if self.spec.prior is not None else [])]

    def _window_of(self, frame: pd.DataFrame) -> FeatureWindow:
        """A features frame as a window of the columns the engine reads from it."""
        clashes = [c for c in self._learned_columns if c in frame.columns]
        if clashes:
            raise ValueError(f"features already hold columns {clashes}")
        derived = set(self._derived_columns)
        observed = [c for c in self.spec.observation_columns[2:] if c not in derived]
        model = self._forecast.read_columns if self._forecast is not None else []
        read = list(dict.fromkeys([*observed, *model]))  # in order, each once
        return FeatureWindow.from_frame(frame, read, self.spec.tickers)

    def _matrix(self, window: FeatureWindow) -> tuple[np.ndarray, tuple[str, ...]] | None:
        """The decision matrix from a window: the last date's observed columns, then the computed ones."""
        if window.tickers != self.spec.tickers:
            raise ValueError(
                f"the features list tickers {window.tickers}, the agent trades {self.spec.tickers}"
            )
        layout = self._layout(window.columns)
        if window.n_dates == 0 or not np.isfinite(window.rows[-1][:, layout.close_source]).all():
            return None  # a ticker lacks the last date's row (frames only: the stream's dates are complete)
        learned = None
        if self.forecaster is not None:
            learned = self.learned_values(window)
            if learned is None:
                return None
        prior = None
        if self.spec.prior is not None:
            if window.n_dates < history_needed(self.spec.prior):
                return None
            prior = self.prior_of(window)
        matrix = np.empty((len(window.tickers), len(layout.columns)))
        matrix[:, layout.read_targets] = window.rows[-1][:, layout.read_sources]
        if learned is not None:
            matrix[:, layout.learned_targets] = learned[:, layout.learned_sources]
        if prior is not None and layout.prior_target is not None:
            matrix[:, layout.prior_target] = prior
        return matrix, layout.columns

    def _layout(self, window_columns: tuple[str, ...]) -> _MatrixLayout:
        layout = self._layouts.get(window_columns)
        if layout is None:
            layout = self._layouts[window_columns] = _MatrixLayout.of(
                tuple(self.spec.observation_columns[2:]), window_columns, self._learned_columns
            )
        return layout

    def _price_market(self, window: FeatureWindow) -> MarketArrays:
        """The window's prices as the arrays an allocator fits on (NaN, and not tradable, where a row is
        missing: a fit reads the closes of tradable cells only)."""
        price = {name: window.rows[:, :, window.columns.index(name)] for name in BASE_COLUMNS[2:]}
        n_dates, n_tickers = price["close"].shape
        return MarketArrays(
            dates=pd.DatetimeIndex(window.dates_ns.view("datetime64[ns]")),
            tickers=window.tickers,
            feature_names=(),
            features=np.zeros((n_dates, 0, n_tickers)),
            turbulence=np.zeros(n_dates),
            tradable=np.isfinite(price["close"]),
            sectors=self.spec.sector_labels,  # as in training: sector_momentum rotates between these sectors
            **price,
        )

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
