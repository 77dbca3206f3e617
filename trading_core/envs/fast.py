"""Fast FinRL-compatible trading environments on the shared simulation core.

Observation layout and action semantics follow FinRL's ``StockTradingEnv``: the observation is
``[cash, closes (N), holdings (N), feature_1 (N), ..., feature_F (N)]`` and an action in ``[-1, 1]^N`` asks to
trade ``int(action * hmax)`` shares per asset. ``action_mode="weights"`` is the portfolio-allocation variant:
the action is mapped through a softmax to target portfolio weights.

:class:`StockTradingVecEnv` steps B portfolios at once as a stable-baselines3 ``VecEnv``;
:class:`FastStockTradingEnv` is the single-portfolio ``gymnasium.Env`` over the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from trading_core.market.arrays import MarketArrays, as_market
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig, StepOutcome

ActionMode = Literal["shares", "weights"]


@dataclass(frozen=True)
class ActionSpec:
    """How an agent's action becomes target holdings and a reward: FinRL's semantics, with its defaults (the
    one place they are written; the environments, the backtester and :class:`~trading_core.envs.spec.EnvSpec`
    take theirs from here).

    :param hmax: most shares one action trades per asset (``shares`` mode)
    :param reward_scaling: factor on the change in portfolio value (``shares`` mode)
    :param mode: ``shares`` (FinRL) or ``weights`` (softmax portfolio weights)
    """

    hmax: int = 100
    reward_scaling: float = 1e-4
    mode: ActionMode = "shares"


def observation_from(
    cash: np.ndarray, closes: np.ndarray, holdings: np.ndarray, features: np.ndarray
) -> np.ndarray:
    """FinRL's observation ``[cash, closes (N), holdings (N), feature_1 (N), ..., feature_F (N)]``, float32.

    The one place the layout is written: training, backtests and the live engine all build it here.

    :param cash: cash per portfolio ``[B]``
    :param closes: the bar's closes ``[N]``
    :param holdings: shares held ``[B, N]``
    :param features: the bar's features, feature-major ``[F, N]``
    :return: ``[B, 1 + 2N + F*N]``
    """
    n_assets = closes.shape[-1]
    observation = np.empty((len(cash), 1 + 2 * n_assets + features.size), dtype=np.float32)
    observation[:, 0] = cash
    observation[:, 1 : 1 + n_assets] = closes
    observation[:, 1 + n_assets : 1 + 2 * n_assets] = holdings
    observation[:, 1 + 2 * n_assets :] = features.reshape(-1)
    return observation


def build_observation(simulator: PortfolioSimulator) -> np.ndarray:
    """FinRL's observation for every portfolio of a simulator, ``[B, 1 + 2N + F*N]`` float32."""
    return observation_at(simulator.market, simulator.day, simulator.cash, simulator.holdings)


def observation_at(market: MarketArrays, day: int, cash: np.ndarray, holdings: np.ndarray) -> np.ndarray:
    """FinRL's observation from market data up to ``day`` and the portfolios' cash ``[B]`` and holdings ``[B, N]``."""
    return observation_from(cash, market.close[day], holdings, market.features[day])


def targets_from_actions(
    actions: np.ndarray,
    holdings: np.ndarray,
    equity: np.ndarray,
    prices: np.ndarray,
    mode: ActionMode = ActionSpec.mode,
    hmax: int = ActionSpec.hmax,
) -> np.ndarray:
    """Target holdings ``[B, N]`` for a batch of actions under FinRL's share semantics or softmax weights."""
    actions = np.asarray(actions, dtype=np.float64).reshape(holdings.shape)
    if mode == "shares":
        return holdings + np.trunc(actions * hmax)
    shifted = np.exp(actions - actions.max(axis=1, keepdims=True))
    weights = shifted / shifted.sum(axis=1, keepdims=True)
    return np.floor(weights * equity[:, None] / prices)


def simulator_targets(
    actions: np.ndarray, simulator: PortfolioSimulator, mode: ActionMode, hmax: int
) -> np.ndarray:
    return targets_from_actions(actions, simulator.holdings, simulator.equity(), simulator.prices, mode, hmax)


def observation_space_for(market: MarketArrays) -> spaces.Box:
    size = 1 + 2 * market.n_assets + len(market.feature_names) * market.n_assets
    return spaces.Box(low=-np.inf, high=np.inf, shape=(size,), dtype=np.float32)


class StockTradingVecEnv(VecEnv):
    """B portfolios trading the same dates in lockstep, as one stable-baselines3 ``VecEnv``.

    All episodes start on the first date and end on the last, so every portfolio resets at once.

    :param data: features frame or prepared arrays of the trading period
    :param config: costs, fills and risk limits
    :param n_envs: number of portfolios
    :param hmax: most shares one action trades per asset (``shares`` mode)
    :param reward_scaling: factor on the change in portfolio value (``shares`` mode); ``weights`` mode
        rewards the log return
    :param action_mode: ``shares`` (FinRL) or ``weights`` (portfolio allocation)
    """

    def __init__(
        self,
        data: pd.DataFrame | MarketArrays,
        config: SimulationConfig | None = None,
        n_envs: int = 1,
        hmax: int = ActionSpec.hmax,
        reward_scaling: float = ActionSpec.reward_scaling,
        action_mode: ActionMode = ActionSpec.mode,
    ) -> None:
        market = as_market(data)
        self.simulator = PortfolioSimulator(market, config or SimulationConfig(), n_envs)
        self.hmax, self.reward_scaling, self.action_mode = hmax, reward_scaling, action_mode
        action_space = spaces.Box(low=-1.0, high=1.0, shape=(market.n_assets,), dtype=np.float32)
        self.render_mode = None
        super().__init__(n_envs, observation_space_for(market), action_space)
        self._actions: np.ndarray | None = None
        self.episode_returns = np.zeros(n_envs)
        self.last_outcome: StepOutcome | None = None

    def reset(self) -> np.ndarray:
        self.simulator.reset()
        self.episode_returns[:] = 0.0
        return build_observation(self.simulator)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        simulator = self.simulator
        outcome = simulator.step(simulator_targets(self._actions, simulator, self.action_mode, self.hmax))
        self.last_outcome = outcome
        if self.action_mode == "shares":
            rewards = (outcome.equity_after - outcome.equity_before) * self.reward_scaling
        else:
            rewards = np.log(
                np.maximum(outcome.equity_after, 1e-12) / np.maximum(outcome.equity_before, 1e-12)
            )
        self.episode_returns += rewards
        observation = build_observation(simulator)
        dones = np.full(self.num_envs, outcome.done)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if outcome.done:
            for index, info in enumerate(infos):
                info["terminal_observation"] = observation[index]
                info["final_equity"] = float(outcome.equity_after[index])
                info["episode"] = {"r": float(self.episode_returns[index]), "l": simulator.day}
            observation = self.reset()
        return observation, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        return None

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    def _get_indices(self, indices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices


class FastStockTradingEnv(gym.Env):
    """One portfolio as a ``gymnasium.Env``: the same simulation core with B = 1."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        data: pd.DataFrame | MarketArrays,
        config: SimulationConfig | None = None,
        hmax: int = ActionSpec.hmax,
        reward_scaling: float = ActionSpec.reward_scaling,
        action_mode: ActionMode = ActionSpec.mode,
    ) -> None:
        market = as_market(data)
        self.simulator = PortfolioSimulator(market, config or SimulationConfig(), 1)
        self.hmax, self.reward_scaling, self.action_mode = hmax, reward_scaling, action_mode
        self.observation_space = observation_space_for(market)
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(market.n_assets,), dtype=np.float32)
        self.equity_memory: list[float] = []
        self.last_outcome: StepOutcome | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.simulator.reset()
        self.equity_memory = [float(self.simulator.equity()[0])]
        return build_observation(self.simulator)[0], {}

    def step(self, action: np.ndarray):
        simulator = self.simulator
        outcome = simulator.step(simulator_targets(action, simulator, self.action_mode, self.hmax))
        self.last_outcome = outcome
        equity_after = float(outcome.equity_after[0])
        self.equity_memory.append(equity_after)
        if self.action_mode == "shares":
            reward = (equity_after - float(outcome.equity_before[0])) * self.reward_scaling
        else:
            reward = float(np.log(max(equity_after, 1e-12) / max(float(outcome.equity_before[0]), 1e-12)))
        info = {"equity": equity_after, "costs": float(outcome.fills.total_cost.sum())}
        return build_observation(simulator)[0], reward, outcome.done, False, info
