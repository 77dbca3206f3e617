"""Hyperparameter search with Optuna: TPE proposes, Ray trains a batch of proposals at once, validation judges.

The test period is never looked at: every trial is scored by its validation Sharpe ratio. Proposals are asked in
batches and told back in order, so the same seed gives the same trials whether the batch runs on Ray or in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna
import pandas as pd

from trading_core.agents.zoo import DEFAULT_CONFIGS, ON_POLICY, AgentConfig, train_agent
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.backtester import run_backtest
from trading_core.evaluation.seed_sweep import ZooConfig
from trading_core.market.arrays import MarketArrays
from trading_core.runtime.distributed import fan_out, single_torch_thread


@dataclass(frozen=True)
class SearchConfig:
    """An Optuna search of one zoo agent's hyperparameters.

    :param algorithm: agent of the zoo to tune
    :param n_trials: proposals to evaluate
    :param timesteps: training budget of each proposal (a zoo run's by default: tuned at the budget it runs at)
    :param parallel_trials: proposals trained at once (the ``batch_size`` of :func:`search_hyperparameters`)
    :param seed: seeds the sampler and every trial's training
    :param use_ray: train each batch of proposals as Ray tasks
    """

    algorithm: str = "ppo"
    n_trials: int = 8
    timesteps: int = ZooConfig.timesteps
    parallel_trials: int = 2
    seed: int = 0
    use_ray: bool = True


def suggest_config(trial: optuna.trial.BaseTrial, base: AgentConfig) -> AgentConfig:
    """A configuration proposed by the trial around ``base``: step size and discount for every agent, the
    entropy bonus and rollout length for on-policy agents, the minibatch size for off-policy ones."""
    config = replace(
        base,
        learning_rate=trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True),
        gamma=trial.suggest_float("gamma", 0.95, 0.999),
    )
    if base.algorithm in ON_POLICY:
        updates: dict[str, object] = {"ent_coef": trial.suggest_float("ent_coef", 1e-4, 0.05, log=True)}
        if base.algorithm == "ppo":
            updates["n_steps"] = trial.suggest_categorical("n_steps", [256, 512, 1024, 2048])
        return config.with_hyperparameters(**updates)
    return config.with_hyperparameters(batch_size=trial.suggest_categorical("batch_size", [64, 128, 256]))


@dataclass(frozen=True)
class TrialTask:
    """One proposal to train and score on validation."""

    number: int
    config: AgentConfig
    env_spec: EnvSpec
    train: pd.DataFrame | MarketArrays
    validation: pd.DataFrame | MarketArrays
    seed: int


def score_trial(task: TrialTask) -> float:
    """Validation Sharpe ratio of an agent trained with the proposal (module level so Ray can ship it)."""
    with single_torch_thread():
        policy = train_agent(task.config.algorithm, task.train, task.env_spec, task.config, seed=task.seed)
        return float(run_backtest(policy, task.validation, task.env_spec).metrics.sharpe)


@dataclass(frozen=True)
class SearchResult:
    """Every trial of a search and the best one by validation Sharpe."""

    trials: pd.DataFrame
    best_params: dict[str, object]
    best_validation_sharpe: float
    best_config: AgentConfig


def search_hyperparameters(
    algorithm: str,
    train: pd.DataFrame | MarketArrays,
    validation: pd.DataFrame | MarketArrays,
    env_spec: EnvSpec,
    n_trials: int,
    timesteps: int,
    seed: int = SearchConfig.seed,
    batch_size: int = SearchConfig.parallel_trials,
    use_ray: bool = SearchConfig.use_ray,
    on_trial: Callable[[int, dict[str, object], float], None] | None = None,
) -> SearchResult:
    """Tree-structured Parzen search over :func:`suggest_config`, ``batch_size`` proposals at a time.

    :param algorithm: agent of the zoo to tune
    :param train: features (frame or arrays) of the training period
    :param validation: features of the validation period (the only score)
    :param env_spec: environment the agents train in
    :param n_trials: proposals to evaluate
    :param timesteps: training budget of each proposal
    :param seed: seeds the sampler and every trial's training
    :param batch_size: proposals trained at once (as Ray tasks when ``use_ray``)
    :param on_trial: called with (trial number, parameters, validation Sharpe) as each result is told
    """
    if n_trials < 1 or batch_size < 1:
        raise ValueError(f"need n_trials >= 1 and batch_size >= 1, got {n_trials} and {batch_size}")
    base = replace(DEFAULT_CONFIGS[algorithm], total_timesteps=timesteps)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    while len(study.trials) < n_trials:
        batch = [study.ask() for _ in range(min(batch_size, n_trials - len(study.trials)))]
        tasks = [
            TrialTask(t.number, suggest_config(t, base), env_spec, train, validation, seed) for t in batch
        ]
        scores = fan_out(score_trial, tasks, use_ray=use_ray)
        for trial, score in zip(batch, scores, strict=True):
            # A NaN Sharpe (no trades, flat equity) counts as the worst outcome rather than failing the study.
            value = score if pd.notna(score) else float("-inf")
            study.tell(trial, value)
            if on_trial is not None:
                on_trial(trial.number, dict(trial.params), score)
    trials = pd.DataFrame(
        [{"trial": t.number, **t.params, "validation_sharpe": t.value} for t in study.trials]
    ).set_index("trial")
    best = study.best_trial
    return SearchResult(
        trials=trials,
        best_params=dict(best.params),
        best_validation_sharpe=float(best.value),
        best_config=suggest_config(optuna.trial.FixedTrial(best.params), base),
    )
