"""The pipeline's PPO recipe, trained through the agent zoo."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from stable_baselines3 import PPO

from trading_core.agents.zoo import DEFAULT_CONFIGS, AgentConfig, TrainedPolicy, train_agent
from trading_core.envs.spec import EnvSpec
from trading_core.market.arrays import MarketArrays

# Seed of the registered candidate's training run (its seed sweep and walk-forward windows count from it).
CANDIDATE_SEED = 42

_ZOO_PPO = DEFAULT_CONFIGS["ppo"]


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters and budget: the zoo's PPO recipe (``DEFAULT_CONFIGS["ppo"]``, after FinRL's
    PPO_PARAMS with a small budget) by default, so the registered candidate and the zoo's PPO agree."""

    total_timesteps: int = _ZOO_PPO.total_timesteps
    learning_rate: float = _ZOO_PPO.learning_rate
    n_steps: int = _ZOO_PPO.params["n_steps"]
    batch_size: int = _ZOO_PPO.params["batch_size"]
    ent_coef: float = _ZOO_PPO.params["ent_coef"]
    gamma: float = _ZOO_PPO.gamma
    net_arch: tuple[int, ...] = _ZOO_PPO.net_arch
    log_std_init: float = dict(_ZOO_PPO.params["policy_kwargs"])["log_std_init"]

    def __post_init__(self) -> None:
        for name in ("total_timesteps", "n_steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.ent_coef < 0:
            raise ValueError(f"ent_coef must be at least 0, got {self.ent_coef}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")

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
                "policy_kwargs": (("log_std_init", self.log_std_init),),
            },
        )


def train_ppo(
    train_features: pd.DataFrame | MarketArrays,
    env_spec: EnvSpec,
    ppo_config: PPOConfig,
    seed: int,
    report: Callable[[str], None] | None = None,
) -> TrainedPolicy:
    """Train PPO over the training period through the agent zoo; same seed and data give the same policy.

    :param train_features: training split of the features frame
    :param env_spec: environment engine and settings
    :param ppo_config: hyperparameters and timestep budget
    :param seed: seeds Python, NumPy, torch and the agent
    :param report: receives progress lines
    :return: the zoo policy (its ``model`` is the SB3 PPO; its ``predict`` normalises raw observations)
    """
    return train_agent(
        "ppo", train_features, env_spec, ppo_config.as_agent_config(), seed=seed, report=report
    )


def policy_actions(policy: TrainedPolicy | PPO, observations: np.ndarray) -> np.ndarray:
    """Deterministic actions of a trained policy for a batch of raw observations."""
    actions, _ = policy.predict(np.asarray(observations, dtype=np.float32), deterministic=True)
    return np.asarray(actions)
