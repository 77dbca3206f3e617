"""The trading environments an agent can train in, built from a features frame with one place for settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import pandas as pd
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from trading_core.data.schema import feature_columns_of
from trading_core.envs.fast import StockTradingVecEnv
from trading_core.features.finrl_adapter import StockTradingEnv
from trading_core.market.simulator import SimulationConfig


@dataclass(frozen=True)
class TradingEnvConfig:
    """Settings of the trading environment shared by training and backtesting.

    :param initial_amount: starting cash
    :param hmax: most shares one action may buy or sell per asset and step
    :param cost_pct: proportional cost of each buy and sell (commission plus half-spread)
    :param reward_scaling: factor applied to the change in portfolio value
    :param turbulence_threshold: liquidate and stop buying when turbulence reaches it; ``None`` disables
    """

    initial_amount: float = 100_000.0
    hmax: int = 100
    cost_pct: float = 0.001
    reward_scaling: float = 1e-4
    turbulence_threshold: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def make_stock_trading_env(features: pd.DataFrame, config: TradingEnvConfig) -> StockTradingEnv:
    """FinRL's ``StockTradingEnv`` over a features frame (one row per date and ticker).

    The observation is ``[cash, closes, holdings, features per asset]``; actions in [-1, 1] per asset are
    scaled by ``hmax`` to whole shares.

    :param features: frame from :func:`trading_core.features.batch.build_features`, possibly a split of it
    :param config: environment settings
    """
    frame = features.sort_values(["date", "tic"]).reset_index(drop=True)
    frame.index = frame["date"].factorize()[0]
    tickers = frame["tic"].unique()
    stock_dim = len(tickers)
    indicators = feature_columns_of(frame)
    if len(frame) != stock_dim * frame.index.nunique():
        raise ValueError(
            "features must hold every ticker on every date (see trading_core.features.batch.balanced_panel)"
        )
    state_space = 1 + 2 * stock_dim + len(indicators) * stock_dim
    return StockTradingEnv(
        df=frame,
        stock_dim=stock_dim,
        hmax=config.hmax,
        initial_amount=config.initial_amount,
        num_stock_shares=[0] * stock_dim,
        buy_cost_pct=[config.cost_pct] * stock_dim,
        sell_cost_pct=[config.cost_pct] * stock_dim,
        reward_scaling=config.reward_scaling,
        state_space=state_space,
        action_space=stock_dim,
        tech_indicator_list=indicators,
        turbulence_threshold=config.turbulence_threshold,
        risk_indicator_col="turbulence",
        print_verbosity=10**9,
    )


@dataclass(frozen=True)
class EnvSpec:
    """Which environment an agent trains and is evaluated in, and with what settings.

    :param engine: ``fast`` (the project's batched environment on the shared cost, fill and risk code) or
        ``finrl`` (FinRL's ``StockTradingEnv``: same-bar fills, proportional costs, no risk manager)
    :param simulation: costs, fills and risk limits of the fast engine
    :param hmax: most shares one action trades per asset
    :param reward_scaling: factor on the change in portfolio value
    :param n_envs: portfolios trained in parallel (fast engine)
    :param finrl_cost_pct: proportional cost of the FinRL engine
    """

    engine: Literal["fast", "finrl"] = "fast"
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    hmax: int = 100
    reward_scaling: float = 1e-4
    n_envs: int = 4
    finrl_cost_pct: float = 0.001

    @property
    def initial_amount(self) -> float:
        return self.simulation.initial_amount

    def finrl_config(self) -> TradingEnvConfig:
        return TradingEnvConfig(
            initial_amount=self.initial_amount,
            hmax=self.hmax,
            cost_pct=self.finrl_cost_pct,
            reward_scaling=self.reward_scaling,
        )

    def make_training_env(self, features: pd.DataFrame) -> VecEnv:
        """A stable-baselines3 ``VecEnv`` over a features frame."""
        if self.engine == "finrl":
            return DummyVecEnv([lambda: make_stock_trading_env(features, self.finrl_config())])
        return StockTradingVecEnv(features, self.simulation, self.n_envs, self.hmax, self.reward_scaling)

    def describe(self) -> dict[str, object]:
        """Flat settings for experiment tracking."""
        if self.engine == "finrl":
            return {"engine": "finrl", **self.finrl_config().as_dict()}
        simulation = self.simulation
        risk = simulation.risk
        return {
            "engine": "fast",
            "initial_amount": simulation.initial_amount,
            "hmax": self.hmax,
            "reward_scaling": self.reward_scaling,
            "n_envs": self.n_envs,
            "commission": repr(simulation.cost_model.commission),
            "impact": repr(simulation.cost_model.impact),
            "spread": simulation.spread,
            "fill_timing": simulation.execution.fill_timing,
            "order_type": simulation.execution.order_type,
            "participation_cap": simulation.execution.participation_cap,
            "risk": "off" if risk is None else repr(risk),
        }
