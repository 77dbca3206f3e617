"""Seeded training of stable-baselines3 agents on the trading environment."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import set_random_seed

from trading_core.environment import EnvSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters and budget (defaults follow FinRL's PPO_PARAMS, with a small budget)."""

    total_timesteps: int = 20_000
    learning_rate: float = 2.5e-4
    n_steps: int = 2048
    batch_size: int = 128
    ent_coef: float = 0.01
    gamma: float = 0.99
    net_arch: tuple[int, ...] = field(default=(64, 64))

    def as_dict(self) -> dict[str, object]:
        params = asdict(self)
        params["net_arch"] = list(self.net_arch)
        return params


class _ProgressCallback(BaseCallback):
    """Reports progress every ``every`` timesteps to a plain callable (a logger in Dagster)."""

    def __init__(self, report: Callable[[str], None], total: int, every: int) -> None:
        super().__init__()
        self._report, self._total, self._every, self._next = report, total, every, every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._report(f"PPO: {self.num_timesteps}/{self._total} timesteps")
            self._next += self._every
        return True


def train_ppo(
    train_features: pd.DataFrame,
    env_spec: EnvSpec,
    ppo_config: PPOConfig,
    seed: int,
    report: Callable[[str], None] | None = None,
) -> PPO:
    """Train PPO over the training period; same seed and data give the same policy.

    :param train_features: training split of the features frame
    :param env_spec: environment engine and settings
    :param ppo_config: hyperparameters and timestep budget
    :param seed: seeds Python, NumPy, torch and the agent
    :param report: receives progress lines
    """
    set_random_seed(seed)
    torch.manual_seed(seed)
    env = env_spec.make_training_env(train_features)
    env.seed(seed)
    # ``n_steps`` is the rollout size over all portfolios, so the update batch is the same for any n_envs.
    rollout = min(ppo_config.n_steps, max(ppo_config.total_timesteps, ppo_config.batch_size))
    n_steps = max(rollout // env.num_envs, 8)
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=ppo_config.learning_rate,
        n_steps=n_steps,
        batch_size=ppo_config.batch_size,
        ent_coef=ppo_config.ent_coef,
        gamma=ppo_config.gamma,
        policy_kwargs={"net_arch": list(ppo_config.net_arch)},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    callback = _ProgressCallback(
        report or logger.info, ppo_config.total_timesteps, every=n_steps * env.num_envs
    )
    model.learn(total_timesteps=ppo_config.total_timesteps, callback=callback)
    return model


def policy_actions(model: PPO, observations: np.ndarray) -> np.ndarray:
    """Deterministic actions of a trained policy for a batch of observations."""
    actions, _ = model.predict(np.asarray(observations, dtype=np.float32), deterministic=True)
    return np.asarray(actions)
