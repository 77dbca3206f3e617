"""The pipeline's PPO recipe, trained through the agent zoo."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from stable_baselines3 import PPO

from trading_core.agents.zoo import AgentConfig, train_agent
from trading_core.envs.spec import EnvSpec


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

    def as_agent_config(self) -> AgentConfig:
        """The same recipe in the agent zoo's terms."""
        return AgentConfig(
            "ppo",
            total_timesteps=self.total_timesteps,
            learning_rate=self.learning_rate,
            gamma=self.gamma,
            net_arch=self.net_arch,
            hyperparameters={
                "n_steps": self.n_steps,
                "batch_size": self.batch_size,
                "ent_coef": self.ent_coef,
            },
        )


def train_ppo(
    train_features: pd.DataFrame,
    env_spec: EnvSpec,
    ppo_config: PPOConfig,
    seed: int,
    report: Callable[[str], None] | None = None,
) -> PPO:
    """Train PPO over the training period through the agent zoo; same seed and data give the same policy.

    :param train_features: training split of the features frame
    :param env_spec: environment engine and settings
    :param ppo_config: hyperparameters and timestep budget
    :param seed: seeds Python, NumPy, torch and the agent
    :param report: receives progress lines
    """
    return train_agent(
        "ppo", train_features, env_spec, ppo_config.as_agent_config(), seed=seed, report=report
    ).model


def policy_actions(model: PPO, observations: np.ndarray) -> np.ndarray:
    """Deterministic actions of a trained policy for a batch of observations."""
    actions, _ = model.predict(np.asarray(observations, dtype=np.float32), deterministic=True)
    return np.asarray(actions)
