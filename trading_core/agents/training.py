"""The pipeline's PPO recipe, trained through the agent zoo, and its warm start: a trained PPO fine-tuned on the
latest dates with a small budget (:func:`fine_tune_ppo`)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.utils import set_random_seed

from trading_core.agents.zoo import (
    DEFAULT_CONFIGS,
    LEARNING_CURVE_POINTS,
    AgentConfig,
    LearningCurve,
    TrainedPolicy,
    _build_model,
    _ProgressCallback,
    load_policy,
    train_agent,
)
from trading_core.envs.fast import ActionSpec
from trading_core.envs.normalization import NormalizedObservations
from trading_core.envs.spec import EnvSpec
from trading_core.market.arrays import MarketArrays, as_market

logger = logging.getLogger(__name__)

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


StartMode = Literal["scratch", "warm_start"]
START_MODES: tuple[str, ...] = ("scratch", "warm_start", "auto")


class WarmStartRefused(ValueError):
    """A trained agent cannot be fine-tuned in the new window's environment (another algorithm, universe,
    feature set, action semantics or network); the caller trains from scratch and records the reason."""


def warm_start_refusal(
    source: TrainedPolicy,
    train_features: pd.DataFrame | MarketArrays,
    env_spec: EnvSpec,
    ppo_config: PPOConfig,
    source_tickers: Sequence[str] | None = None,
    source_train_end: pd.Timestamp | str | None = None,
) -> str | None:
    """Why ``source`` cannot continue training on ``train_features``; ``None`` when it can.

    :param source: the trained agent (the champion, or the previous window's agent)
    :param train_features: the new training window
    :param env_spec: the environment the new agent trains in
    :param ppo_config: the recipe whose network the fine-tuned agent keeps
    :param source_tickers: the universe the source traded (its decision spec's), checked when given
    :param source_train_end: the source's last training date, checked when given: a source that trained past
        the window's last date has seen the dates the new agent is judged on
    """
    market = as_market(train_features)
    if not isinstance(source, TrainedPolicy):
        return f"the source is a {type(source).__name__}, not a single trained agent"
    if source_train_end is not None and pd.Timestamp(source_train_end) > market.dates[-1]:
        return (
            f"the source trained on dates up to {pd.Timestamp(source_train_end).date()}, after this window's "
            f"last training date {market.dates[-1].date()}: it has seen the dates the new agent is judged on"
        )
    if source.algorithm != "ppo":
        return f"the source is a {source.algorithm} agent and fine-tuning continues PPO only"
    if source_tickers is not None and tuple(source_tickers) != market.tickers:
        gained = sorted(set(market.tickers) - set(source_tickers))
        lost = sorted(set(source_tickers) - set(market.tickers))
        return f"the universe changed (new {gained or 'none'}, gone {lost or 'none'}, or a new order)"
    if (source.normalizer is None) != (env_spec.normalization is None):
        seen = "raw" if source.normalizer is None else "normalised"
        return f"the source observes {seen} observations and the new environment does not"
    if source.normalizer is not None and source.normalizer.feature_names != market.feature_names:
        return (
            f"the features changed: the source observes {list(source.normalizer.feature_names)}, "
            f"the window has {list(market.feature_names)}"
        )
    if (source.action or ActionSpec()) != env_spec.engine_action:
        return "the action semantics changed (mode, temperature, reward or hmax)"
    env = env_spec.make_training_env(market)
    for name in ("observation_space", "action_space"):
        before, after = getattr(source.model, name).shape, getattr(env, name).shape
        if before != after:
            return f"the {name.replace('_', ' ')} changed from {before} to {after} (universe or features)"
    source_arch = list(source.model.policy_kwargs.get("net_arch", []))
    if source_arch != list(ppo_config.net_arch):
        return f"the source's network {source_arch} differs from the recipe's {list(ppo_config.net_arch)}"
    return None


class _ContinuedLearningCurve(LearningCurve):
    # A continued run starts at the source's timestep count: points fall every ``every`` steps after it.
    def _on_training_start(self) -> None:
        self._next = self.num_timesteps + self.every


class _ContinuedProgress(_ProgressCallback):
    def _on_training_start(self) -> None:
        self._next = self.num_timesteps + self._every


def fine_tune_ppo(
    source: TrainedPolicy | str | Path,
    train_features: pd.DataFrame | MarketArrays,
    env_spec: EnvSpec,
    ppo_config: PPOConfig,
    timesteps: int,
    seed: int,
    recent_dates: int | None = None,
    source_tickers: Sequence[str] | None = None,
    source_train_end: pd.Timestamp | str | None = None,
    report: Callable[[str], None] | None = None,
) -> TrainedPolicy:
    """Warm start: continue training a PPO agent on the latest dates with a small budget; same seed, same weights.

    The new agent starts from the source's policy and value weights (and its Adam state), learns ``timesteps``
    more on the last ``recent_dates`` dates of ``train_features`` with ``reset_num_timesteps=False`` (its timestep
    count goes on from the source's), under ``ppo_config``'s learning rate, rollout and batch size. Episodes
    always start on the first date, so a small budget over a long window would only revisit its oldest years.

    The observation normaliser is refit on all of ``train_features``, as a scratch agent of the same window fits
    it: it reads dates up to the window's end only (causal), the fine-tuned and the scratch agent of a window then
    see the same inputs, and from one retraining to the next the statistics move by the few new dates only
    (reusing the source's would freeze them at its first training window while prices drift out of their range).

    :param source: the trained agent, or the path of one saved by :meth:`TrainedPolicy.save`; never modified
    :param train_features: the new training window (the normaliser's period)
    :param env_spec: environment engine and settings of the new agent
    :param ppo_config: the recipe: learning rate, rollout, batch size, entropy and network (must be the source's)
    :param timesteps: the fine-tuning budget
    :param seed: seeds Python, NumPy, torch, the environment and the agent
    :param recent_dates: the latest dates trained on; ``None``: every date of ``train_features``
    :param source_tickers: the universe the source traded; a different one refuses the warm start
    :param source_train_end: the source's last training date; one after the window's last date refuses it
    :param report: receives progress lines
    :raises WarmStartRefused: the source cannot continue in this environment (the reason in one line)
    """
    if timesteps <= 0:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps}")
    if recent_dates is not None and recent_dates < 2:
        raise ValueError(f"recent_dates must be at least 2 (or None), got {recent_dates}")
    policy = load_policy("ppo", source) if isinstance(source, str | Path) else source
    market = as_market(train_features)
    refusal = warm_start_refusal(policy, market, env_spec, ppo_config, source_tickers, source_train_end)
    if refusal is not None:
        raise WarmStartRefused(f"warm start impossible: {refusal}")
    recent = (
        market
        if recent_dates is None
        else market.between(market.dates[-min(recent_dates, market.n_steps)], market.dates[-1])
    )
    set_random_seed(seed)
    torch.manual_seed(seed)
    normalizer = env_spec.fit_normalizer(market)
    env = env_spec.make_training_env(recent)
    if normalizer is not None:
        env = NormalizedObservations(env, normalizer)
    env.seed(seed)
    config = replace(ppo_config.as_agent_config(), total_timesteps=timesteps)
    model, rollout = _build_model(config, env, seed)
    # A deep copy: torch's optimizer loads state tensors by reference, and the source must stay as it was.
    model.set_parameters(copy.deepcopy(policy.model.get_parameters()), exact_match=True, device="cpu")
    model.num_timesteps = int(policy.model.num_timesteps)
    n_envs = env.num_envs
    every = rollout * max(max(timesteps // 10, 1) // rollout, 1)
    curve = _ContinuedLearningCurve(max(timesteps // LEARNING_CURVE_POINTS // n_envs, 1) * n_envs)
    progress = _ContinuedProgress(
        report or logger.info, "PPO fine-tune", model.num_timesteps + timesteps, every
    )
    model.learn(
        total_timesteps=timesteps, callback=CallbackList([progress, curve]), reset_num_timesteps=False
    )
    return TrainedPolicy(
        "ppo",
        model,
        seed,
        config,
        env_spec.engine_action,
        normalizer,
        [*policy.learning_curve, *curve.points],
    )


@dataclass(frozen=True)
class StartDecision:
    """How a retraining starts, and why.

    :param mode: ``scratch`` or ``warm_start``
    :param reason: one line for the run's metadata and log
    """

    mode: StartMode
    reason: str


def decide_start_mode(requested: str, verdict: str | None, champion: str | None) -> StartDecision:
    """The start mode of a retraining: ``requested`` itself, or for ``auto`` the latest walk-forward verdict when a
    champion exists to warm-start from (scratch otherwise).

    :param requested: one of :data:`START_MODES`
    :param verdict: the latest recorded walk-forward verdict (``scratch`` / ``warm_start``), ``None`` when none
    :param champion: the champion's ``name/version``, ``None`` when no version holds the alias
    :raises ValueError: an unknown mode, or ``warm_start`` without a champion
    """
    if requested not in START_MODES:
        raise ValueError(f"start_mode must be one of {', '.join(START_MODES)}, got {requested!r}")
    if requested == "scratch":
        return StartDecision("scratch", "start_mode scratch requested")
    if requested == "warm_start":
        if champion is None:
            raise ValueError("start_mode warm_start needs a champion to fine-tune, and none holds the alias")
        return StartDecision("warm_start", f"start_mode warm_start requested: fine-tuning {champion}")
    if verdict is None:
        return StartDecision(
            "scratch", "auto: no walk-forward start-mode verdict recorded yet, training from scratch"
        )
    if verdict != "warm_start":
        return StartDecision(
            "scratch", f"auto: the latest walk-forward verdict is {verdict}, training from scratch"
        )
    if champion is None:
        return StartDecision(
            "scratch", "auto: verdict warm_start but no champion to fine-tune, training from scratch"
        )
    return StartDecision(
        "warm_start", f"auto: the latest walk-forward verdict is warm_start, fine-tuning {champion}"
    )
