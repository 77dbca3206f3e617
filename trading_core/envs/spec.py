"""The trading environments an agent can train in, built from a features frame with one place for settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from trading_core.envs.fast import ActionSpec, StockTradingVecEnv
from trading_core.envs.finrl import TradingEnvConfig, make_stock_trading_env
from trading_core.envs.normalization import NormalizationConfig, ObservationNormalizer
from trading_core.envs.rewards import RewardConfig
from trading_core.market.arrays import MarketArrays, as_market
from trading_core.market.simulator import SimulationConfig


@dataclass(frozen=True)
class EnvSpec:
    """Which environment an agent trains and is evaluated in, and with what settings.

    :param engine: ``fast`` (the project's batched environment on the shared cost, fill and risk code) or
        ``finrl`` (FinRL's ``StockTradingEnv``: same-bar fills, proportional costs, no risk manager, share
        actions and its scaled value change as reward whatever ``action`` says, bar ``hmax``)
    :param simulation: costs, fills and risk limits of the fast engine
    :param action: what an action means and what is rewarded (fast engine); its ``hmax`` is the FinRL engine's
    :param n_envs: portfolios trained in parallel (fast engine)
    :param finrl_cost_pct: proportional cost of the FinRL engine
    :param normalization: observation normalisation fit on the training period and carried with the agent;
        ``None`` trains on raw observations
    """

    engine: Literal["fast", "finrl"] = "fast"
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    action: ActionSpec = ActionSpec()
    n_envs: int = 4
    finrl_cost_pct: float = TradingEnvConfig.cost_pct
    normalization: NormalizationConfig | None = NormalizationConfig()

    def __post_init__(self) -> None:
        if self.engine == "finrl" and self.action.mode == "tilt":
            raise ValueError("FinRL's engine trades share actions only; tilt actions need the fast engine")

    def __setstate__(self, state: dict) -> None:
        # Specs pickled before the action spec existed traded FinRL shares on raw observations.
        if "hmax" in state:
            state = dict(state)
            scaling = state.pop("reward_scaling", RewardConfig.value_scaling)
            state["action"] = ActionSpec.finrl(hmax=state.pop("hmax"), value_scaling=scaling)
            state.setdefault("normalization", None)
        for name, value in state.items():
            object.__setattr__(self, name, value)

    @property
    def initial_amount(self) -> float:
        return self.simulation.initial_amount

    @property
    def hmax(self) -> int:
        return self.action.hmax

    @property
    def engine_action(self) -> ActionSpec:
        """The action semantics of the engine: ``action`` for the fast engine, FinRL's for the FinRL engine."""
        if self.engine == "finrl":
            return ActionSpec.finrl(hmax=self.action.hmax, value_scaling=self.action.reward.value_scaling)
        return self.action

    def finrl_config(self) -> TradingEnvConfig:
        return TradingEnvConfig(
            initial_amount=self.initial_amount,
            hmax=self.action.hmax,
            cost_pct=self.finrl_cost_pct,
            reward_scaling=self.action.reward.value_scaling,
        )

    def market_for(self, data: pd.DataFrame | MarketArrays) -> MarketArrays:
        """The panel this spec's agents trade: ``data`` as arrays, with the prior column appended when the action
        tilts around a prior. Pass the full history and cut periods from the result: the column at a date reads
        the closes up to it only, and a period cut first would refit its early dates without the history before.
        """
        market = as_market(data)
        if self.action.prior is None:
            return market
        # Imported here: the optimisers (skfolio) load only for agents that have a prior.
        from trading_core.allocators.prior import with_prior

        return with_prior(market, self.action.prior)

    def make_training_env(self, features: pd.DataFrame | MarketArrays) -> VecEnv:
        """A stable-baselines3 ``VecEnv`` over a features frame or its arrays (raw observations)."""
        if self.engine == "finrl":
            return DummyVecEnv([lambda: make_stock_trading_env(features, self.finrl_config())])
        return StockTradingVecEnv(features, self.simulation, self.n_envs, self.action)

    def fit_normalizer(self, features: pd.DataFrame | MarketArrays) -> ObservationNormalizer | None:
        """The observation normaliser fit on ``features`` (pass the training period only); ``None`` when off."""
        if self.normalization is None:
            return None
        return ObservationNormalizer.fit(features, self.normalization)

    def describe(self) -> dict[str, object]:
        """Flat settings for experiment tracking."""
        normalization = {"normalize": self.normalization is not None}
        if self.normalization is not None:
            normalization["normalize_clip"] = self.normalization.clip
            normalization["normalize_log_prices"] = self.normalization.log_prices
        if self.engine == "finrl":
            return {"engine": "finrl", **self.finrl_config().as_dict(), **normalization}
        simulation = self.simulation
        risk = simulation.risk
        return {
            "engine": "fast",
            "initial_amount": simulation.initial_amount,
            **{f"action_{name}": value for name, value in self.action.as_dict().items()},
            "n_envs": self.n_envs,
            "commission": repr(simulation.cost_model.commission),
            "impact": repr(simulation.cost_model.impact),
            "spread": simulation.spread,
            "fill_timing": simulation.execution.fill_timing,
            "order_type": simulation.execution.order_type,
            "participation_cap": simulation.execution.participation_cap,
            "risk": "off" if risk is None else repr(risk),
            **normalization,
        }
