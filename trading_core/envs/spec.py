"""The trading environments an agent can train in, built from a features frame with one place for settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from trading_core.envs.fast import ActionSpec, StockTradingVecEnv
from trading_core.envs.finrl import TradingEnvConfig, make_stock_trading_env
from trading_core.market.arrays import MarketArrays
from trading_core.market.simulator import SimulationConfig


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
    hmax: int = ActionSpec.hmax
    reward_scaling: float = ActionSpec.reward_scaling
    n_envs: int = 4
    finrl_cost_pct: float = TradingEnvConfig.cost_pct

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

    def make_training_env(self, features: pd.DataFrame | MarketArrays) -> VecEnv:
        """A stable-baselines3 ``VecEnv`` over a features frame or its arrays."""
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
