"""One training API for every agent, with each algorithm's defaults in one place.

``train_agent("sac", features, env_spec)`` trains any of :data:`ALGORITHMS` on the trading environment and
returns a :class:`TrainedPolicy` whose ``predict`` takes the raw observation and always yields the continuous
action vector of the environment's :class:`~trading_core.envs.fast.ActionSpec` (``[-1, 1]^(N+1)`` in
``weights`` mode, ``[-1, 1]^N`` in ``shares`` mode), so backtests, ensembles and the model registry treat every
agent alike. The observation normaliser fit on the training period travels with the policy and is applied
inside ``predict``; the policy also keeps its learning curve.

The DQN family needs a finite action set: :class:`DiscretePortfolioActions` exposes the rows of
:func:`discrete_action_table` as ``Discrete(K)`` during training, and :class:`ContinuousPolicyAdapter` maps the
trained agent's choice back to the continuous vector at prediction time.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from gymnasium import spaces
from sb3_contrib import QRDQN
from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from trading_core.envs.fast import ActionSpec, actions_for_weights
from trading_core.envs.normalization import NormalizedObservations, ObservationNormalizer
from trading_core.envs.spec import EnvSpec
from trading_core.market.arrays import MarketArrays

logger = logging.getLogger(__name__)

ALGORITHMS: tuple[str, ...] = ("ppo", "a2c", "sac", "td3", "ddpg", "qrdqn")
ON_POLICY: tuple[str, ...] = ("ppo", "a2c")
DISCRETE: tuple[str, ...] = ("qrdqn",)

_MODEL_CLASSES: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO,
    "a2c": A2C,
    "sac": SAC,
    "td3": TD3,
    "ddpg": DDPG,
    "qrdqn": QRDQN,
}
# Settings the factory consumes itself instead of passing them to the SB3 constructor.
_FACTORY_KEYS = ("action_noise_sigma",)
# The budget of every default recipe: small, so that a laptop trains the whole zoo.
DEFAULT_TIMESTEPS = 20_000
# Scale of TD3 / DDPG's Gaussian exploration noise when a config does not set ``action_noise_sigma``.
DEFAULT_ACTION_NOISE_SIGMA = 0.1
# Points of a training run's learning curve.
LEARNING_CURVE_POINTS = 20
# PPO's initial log standard deviation of its Gaussian actions (see DEFAULT_CONFIGS).
PPO_LOG_STD_INIT = -1.5


def _check_algorithm(algorithm: str) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    return algorithm


def _as_tuples(value: object) -> object:
    # JSON turns tuples into lists; configs must stay hashable after a round trip.
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(item) for item in value)
    return value


@dataclass(frozen=True)
class AgentConfig:
    """Algorithm, budget and hyperparameters of one agent.

    :param algorithm: one of :data:`ALGORITHMS`
    :param total_timesteps: environment transitions to train on, summed over all parallel portfolios
    :param learning_rate: optimizer step size
    :param gamma: discount factor
    :param net_arch: hidden layer sizes of the policy (and of the value / Q networks)
    :param hyperparameters: further keyword arguments of the SB3 constructor as ``(name, value)`` pairs,
        stored sorted by name (a mapping is accepted); ``n_steps`` of PPO / A2C is the rollout over all
        portfolios, ``action_noise_sigma`` sets TD3 / DDPG's Gaussian exploration noise, ``policy_kwargs``
        (as pairs) is merged with ``net_arch``; off-policy ``train_freq`` / ``gradient_steps`` default to one
        gradient step per transition (per four for QR-DQN) whatever the number of portfolios
    """

    algorithm: str
    total_timesteps: int
    learning_rate: float
    gamma: float = 0.99
    net_arch: tuple[int, ...] = (64, 64)
    hyperparameters: tuple[tuple[str, object], ...] = field(default=())

    def __post_init__(self) -> None:
        _check_algorithm(self.algorithm)
        if self.total_timesteps <= 0:
            raise ValueError(f"total_timesteps must be positive, got {self.total_timesteps}")
        pairs = [
            (str(name), _as_tuples(value))
            for name, value in (
                self.hyperparameters.items()
                if isinstance(self.hyperparameters, Mapping)
                else self.hyperparameters
            )
        ]
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise ValueError(f"hyperparameters name a setting twice: {names}")
        # Sorted, so equal settings give equal (and equally hashed) configs whatever their order.
        object.__setattr__(self, "hyperparameters", tuple(sorted(pairs, key=lambda pair: pair[0])))
        object.__setattr__(self, "net_arch", tuple(int(units) for units in self.net_arch))
        try:
            hash(self.hyperparameters)
        except TypeError as error:
            raise TypeError(f"hyperparameter values must be hashable: {self.hyperparameters}") from error

    @property
    def params(self) -> dict[str, object]:
        """The hyperparameters as a dict."""
        return dict(self.hyperparameters)

    def with_hyperparameters(self, **updates: object) -> AgentConfig:
        """A copy with some hyperparameters added or replaced."""
        return replace(self, hyperparameters={**self.params, **updates})

    def as_dict(self) -> dict[str, object]:
        """Flat, JSON-friendly settings for experiment tracking."""
        flat: dict[str, object] = {
            "algorithm": self.algorithm,
            "total_timesteps": self.total_timesteps,
            "learning_rate": self.learning_rate,
            "gamma": self.gamma,
            "net_arch": list(self.net_arch),
        }
        for name, value in self.hyperparameters:
            flat[name] = list(value) if isinstance(value, tuple) else value
        return flat

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> AgentConfig:
        """Inverse of :meth:`as_dict`."""
        values = dict(values)
        base = {name: values.pop(name) for name in ("algorithm", "total_timesteps", "learning_rate")}
        if "gamma" in values:
            base["gamma"] = float(values.pop("gamma"))
        if "net_arch" in values:
            base["net_arch"] = tuple(values.pop("net_arch"))
        return cls(**base, hyperparameters=values)


# FinRL's A2C/PPO/SAC/TD3/DDPG_PARAMS with small budgets; replay buffers capped at 100k transitions so the
# defaults fit in memory for 30 assets, and a QR-DQN sized for budgets of tens of thousands of steps.
# ``policy_kwargs`` is given as ``(name, value)`` pairs and merged with ``net_arch``.
#
# Measured on the Dow 30 (DOW dropped): train 2009-2017, validation 2018-2019, test 2020-2021, default costs and
# risk manager; equal-weight buy-and-hold (no risk manager) has Sharpe 0.95 / 0.72. PPO at 20k steps, seeds 0-2:
# FinRL shares on raw observations 0.64 / -0.13 / -0.46 on validation (0.51 / 0.64 / 0.69 on test, ~6k trades
# costing ~10% over two years); weights over assets and cash with the normaliser (temperature 2.5, band 1%,
# log_std_init -1.5) 0.81 / 0.80 / 0.81 (0.61 / 0.64 / 0.58, ~1.5k trades costing ~3%); at temperature 5 and
# FinRL's exploration noise, turnover cost 20% and validation Sharpe was -0.3. A constant zero action (equal
# weight over assets and cash through the same risk manager) scores 0.84 / 0.56: the agents trade less, they do
# not yet learn an edge. QR-DQN at 4k steps never traded in shares mode; with the weights table 0.85 / 0.76.
DEFAULT_CONFIGS: dict[str, AgentConfig] = {
    # A smaller initial exploration noise (std 0.22, FinRL's 1.0) keeps PPO's early portfolios near equal weight
    # instead of paying for random re-weightings every day.
    "ppo": AgentConfig(
        "ppo",
        total_timesteps=DEFAULT_TIMESTEPS,
        learning_rate=2.5e-4,
        hyperparameters={
            "n_steps": 2048,
            "batch_size": 128,
            "ent_coef": 0.01,
            "policy_kwargs": (("log_std_init", PPO_LOG_STD_INIT),),
        },
    ),
    # FinRL's five steps per update with one env, i.e. five per portfolio at EnvSpec's default four.
    "a2c": AgentConfig(
        "a2c",
        total_timesteps=DEFAULT_TIMESTEPS,
        learning_rate=7e-4,
        hyperparameters={"n_steps": 20, "ent_coef": 0.01},
    ),
    "sac": AgentConfig(
        "sac",
        total_timesteps=DEFAULT_TIMESTEPS,
        learning_rate=1e-4,
        hyperparameters={
            "buffer_size": 100_000,
            "batch_size": 256,
            "learning_starts": 100,
            "ent_coef": "auto_0.1",
        },
    ),
    "td3": AgentConfig(
        "td3",
        total_timesteps=DEFAULT_TIMESTEPS,
        learning_rate=1e-3,
        hyperparameters={
            "buffer_size": 100_000,
            "batch_size": 100,
            "learning_starts": 100,
            "action_noise_sigma": DEFAULT_ACTION_NOISE_SIGMA,
        },
    ),
    "ddpg": AgentConfig(
        "ddpg",
        total_timesteps=DEFAULT_TIMESTEPS,
        learning_rate=1e-3,
        hyperparameters={
            "buffer_size": 50_000,
            "batch_size": 128,
            "learning_starts": 100,
            "action_noise_sigma": DEFAULT_ACTION_NOISE_SIGMA,
        },
    ),
    "qrdqn": AgentConfig(
        "qrdqn",
        total_timesteps=DEFAULT_TIMESTEPS,
        learning_rate=1e-4,
        hyperparameters={
            "buffer_size": 100_000,
            "batch_size": 64,
            "learning_starts": 100,
            "target_update_interval": 1_000,
            "exploration_fraction": 0.1,
            "exploration_final_eps": 0.05,
            # A quarter of the paper's 200 quantiles: the quantile loss grows with their square.
            "policy_kwargs": (("n_quantiles", 50),),
        },
    ),
}


def discrete_action_table(n_assets: int, action: ActionSpec | None = None) -> np.ndarray:
    """The continuous action of each discrete portfolio move, float32 (``ActionSpec()`` when ``action`` is None).

    ``weights`` mode, ``[N + 3, N + 1]``: target allocations as actions whose softmax gives them
    (:func:`~trading_core.envs.fast.actions_for_weights`): row 0 all cash, row 1 equal weight over the assets,
    row 2 half of it (half in cash), row ``3 + i`` fully invested, tilted toward asset ``i`` (twice the weight
    of each other asset).

    ``shares`` mode, ``[2N + 3, N]``: row 0 holds (zeros), row 1 buys every asset (+1), row 2 sells every asset
    (-1), row ``3 + i`` buys asset ``i`` only and row ``3 + N + i`` sells asset ``i`` only; +1 / -1 trade
    ``hmax`` shares.

    :param n_assets: number of assets ``N``
    :param action: the action semantics the table speaks
    """
    action = action or ActionSpec()
    if action.mode == "tilt":
        raise ValueError("the discrete table speaks weights and shares actions; tilt agents are continuous")
    if action.mode == "weights":
        return actions_for_weights(target_allocations(n_assets), action.temperature)
    eye = np.eye(n_assets, dtype=np.float32)
    ones = np.ones((1, n_assets), dtype=np.float32)
    return np.concatenate([np.zeros((1, n_assets), dtype=np.float32), ones, -ones, eye, -eye])


def target_allocations(n_assets: int) -> np.ndarray:
    """The target weights ``[N + 3, N + 1]`` (cash last) of the ``weights``-mode discrete table."""
    allocations = np.zeros((n_assets + 3, n_assets + 1))
    allocations[0, -1] = 1.0
    allocations[1, :-1] = 1.0 / n_assets
    allocations[2, :-1], allocations[2, -1] = 0.5 / n_assets, 0.5
    allocations[3:, :-1] = (1.0 + np.eye(n_assets)) / (n_assets + 1)
    return allocations


def discrete_table_size(n_assets: int, action: ActionSpec | None = None) -> int:
    return n_assets + 3 if (action or ActionSpec()).mode == "weights" else 2 * n_assets + 3


def _table_for(action_space: spaces.Discrete, action: ActionSpec | None) -> np.ndarray:
    """The table of a trained discrete agent, from its number of choices and its action semantics."""
    action = action or ActionSpec()
    n = int(action_space.n)
    n_assets = n - 3 if action.mode == "weights" else (n - 3) // 2
    if n_assets < 1 or discrete_table_size(n_assets, action) != n:
        raise ValueError(f"{action_space} is not a discrete portfolio action space in {action.mode} mode")
    return discrete_action_table(n_assets, action)


class DiscretePortfolioActions(VecEnvWrapper):
    """Exposes a continuous ``Box(-1, 1)`` trading ``VecEnv`` as ``Discrete(K)``, one choice per row of
    :func:`discrete_action_table`. Works on the batched fast env and on a ``DummyVecEnv`` of FinRL's env alike.

    :param venv: environment with a ``Box`` action space of shape ``(N + 1,)`` (weights) or ``(N,)`` (shares)
    :param action: the environment's action semantics (``ActionSpec()`` when ``None``)
    """

    def __init__(self, venv: VecEnv, action: ActionSpec | None = None) -> None:
        action = action or ActionSpec()
        box = venv.action_space
        if not isinstance(box, spaces.Box) or len(box.shape) != 1:
            raise ValueError(f"expected a Box action space of shape (N,), got {box}")
        n_assets = box.shape[0] - 1 if action.mode == "weights" else box.shape[0]
        self.table = discrete_action_table(n_assets, action)
        super().__init__(venv, action_space=spaces.Discrete(len(self.table)))

    def step_async(self, actions: np.ndarray) -> None:
        choices = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        self.venv.step_async(self.table[choices])

    def step_wait(self):
        return self.venv.step_wait()

    def reset(self):
        return self.venv.reset()


class ContinuousPolicyAdapter:
    """Makes a discrete portfolio agent predict continuous action vectors, as every other agent does.

    :param model: an SB3 model trained on :class:`DiscretePortfolioActions`
    :param action: the action semantics it was trained with (``ActionSpec()`` when ``None``)
    """

    def __init__(self, model: BaseAlgorithm, action: ActionSpec | None = None) -> None:
        self.model = model
        self.table = _table_for(model.action_space, action)

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Continuous action for one observation, a batch of them for a batch."""
        choice, state = self.model.predict(observation, state, episode_start, deterministic)
        return self.table[np.asarray(choice, dtype=np.int64)], state


def _metadata_path(path: Path) -> Path:
    return path.with_suffix(".json")


@dataclass(eq=False)
class TrainedPolicy:
    """A trained agent with what produced it; ``predict`` takes raw observations and returns continuous actions.

    :param algorithm: one of :data:`ALGORITHMS`
    :param model: the SB3 model (QR-DQN's predicts discrete choices; use :meth:`predict`)
    :param seed: training seed (``None`` when restored without metadata)
    :param config: training configuration (``None`` when restored without metadata)
    :param action: the action semantics it trained with (``None`` when unknown: ``ActionSpec()`` is assumed)
    :param normalizer: applied to every observation before the model sees it; ``None`` for raw observations
    :param learning_curve: ``(timesteps, mean training reward per step)`` over training
    """

    algorithm: str
    model: BaseAlgorithm
    seed: int | None = None
    config: AgentConfig | None = None
    action: ActionSpec | None = None
    normalizer: ObservationNormalizer | None = None
    learning_curve: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_algorithm(self.algorithm)
        self._predictor = (
            ContinuousPolicyAdapter(self.model, self.action) if self.algorithm in DISCRETE else self.model
        )

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict`` on a raw observation (normalised here), with the continuous action vector."""
        if self.normalizer is not None:
            observation = self.normalizer(observation)
        return self._predictor.predict(observation, state, episode_start, deterministic)

    def metadata(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready values."""
        return {
            "algorithm": self.algorithm,
            "seed": self.seed,
            "config": None if self.config is None else self.config.as_dict(),
            "action": None if self.action is None else self.action.as_dict(),
            "normalizer": None if self.normalizer is None else self.normalizer.to_dict(),
            "learning_curve": [[int(steps), float(value)] for steps, value in self.learning_curve],
        }

    def save(self, path: str | Path) -> Path:
        """Save the SB3 model as ``<path>.zip`` and :meth:`metadata` next to it as ``<path>.json``.

        :return: path of the model file
        """
        target = _model_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.model.save(target)
        _metadata_path(target).write_text(json.dumps(self.metadata(), indent=2, sort_keys=True))
        return target


def _model_path(path: str | Path) -> Path:
    target = Path(path)
    return target if target.suffix == ".zip" else target.with_name(target.name + ".zip")


def load_policy(algorithm: str, path: str | Path, metadata_path: str | Path | None = None) -> TrainedPolicy:
    """Restore an agent saved by :meth:`TrainedPolicy.save` (or a plain SB3 ``save``) on the CPU.

    :param algorithm: algorithm of the saved model, which picks the SB3 class
    :param path: the model file, with or without ``.zip``
    :param metadata_path: its metadata; ``<path>.json`` when ``None`` (none when that does not exist)
    """
    _check_algorithm(algorithm)
    target = _model_path(path)
    model = _MODEL_CLASSES[algorithm].load(target, device="cpu")
    metadata_file = Path(metadata_path) if metadata_path is not None else _metadata_path(target)
    if not metadata_file.exists():
        return TrainedPolicy(algorithm=algorithm, model=model)
    metadata = json.loads(metadata_file.read_text())
    if metadata["algorithm"] != algorithm:
        raise ValueError(f"{target} holds a {metadata['algorithm']} agent, not {algorithm}")
    # Metadata written before actions had a spec belongs to FinRL share actions.
    action = metadata.get("action", ActionSpec.finrl().as_dict())
    normalizer = metadata.get("normalizer")
    return TrainedPolicy(
        algorithm=algorithm,
        model=model,
        seed=metadata["seed"],
        config=None if metadata["config"] is None else AgentConfig.from_dict(metadata["config"]),
        action=None if action is None else ActionSpec.from_dict(action),
        normalizer=None if normalizer is None else ObservationNormalizer.from_dict(normalizer),
        learning_curve=[(int(steps), float(value)) for steps, value in metadata.get("learning_curve", [])],
    )


class LearningCurve(BaseCallback):
    """Records the mean training reward per portfolio step over every ``every`` timesteps (and the remainder at
    the end) as ``(timesteps, mean reward)`` points in :attr:`points`.

    :param every: timesteps (summed over portfolios) per point
    """

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = max(int(every), 1)
        self.points: list[tuple[int, float]] = []
        self._sum, self._count, self._next = 0.0, 0, self.every

    def _on_step(self) -> bool:
        rewards = np.asarray(self.locals["rewards"], dtype=np.float64)
        self._sum += float(rewards.sum())
        self._count += rewards.size
        if self.num_timesteps >= self._next:
            self._record()
            self._next = (self.num_timesteps // self.every + 1) * self.every
        return True

    def _on_training_end(self) -> None:
        if self._count:
            self._record()

    def _record(self) -> None:
        self.points.append((int(self.num_timesteps), self._sum / self._count))
        self._sum, self._count = 0.0, 0


class _MetadataCheckpoint(CheckpointCallback):
    """SB3's checkpoints, each with the policy's metadata (its normaliser above all) beside it."""

    def __init__(self, metadata: Callable[[], dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metadata = metadata

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            super()._on_step()
            path = Path(self._checkpoint_path(extension="zip"))
            _metadata_path(path).write_text(json.dumps(self._metadata(), indent=2, sort_keys=True))
        return True


class _ProgressCallback(BaseCallback):
    """Reports progress every ``every`` timesteps and at the end to a callable (a logger in Dagster)."""

    def __init__(self, report: Callable[[str], None], name: str, total: int, every: int) -> None:
        super().__init__()
        self._report, self._name, self._total = report, name, total
        self._every, self._next = every, every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._report(f"{self._name}: {self.num_timesteps}/{self._total} timesteps")
            self._next = (self.num_timesteps // self._every + 1) * self._every
        return True

    def _on_training_end(self) -> None:
        self._report(f"{self._name}: finished after {self.num_timesteps} timesteps")


def _sb3_default(algorithm: str, name: str) -> Any:
    """The SB3 constructor's default of a setting, for configs that leave it out."""
    return inspect.signature(_MODEL_CLASSES[algorithm]).parameters[name].default


def _build_model(config: AgentConfig, env: VecEnv, seed: int) -> tuple[BaseAlgorithm, int]:
    """The SB3 model for a config, and the rollout size in transitions (0 for off-policy)."""
    kwargs: dict[str, Any] = config.params
    for key in _FACTORY_KEYS:
        kwargs.pop(key, None)
    policy_kwargs = {"net_arch": list(config.net_arch), **dict(kwargs.pop("policy_kwargs", ()))}
    algorithm, n_envs = config.algorithm, env.num_envs
    rollout = 0
    if algorithm in ON_POLICY:
        # ``n_steps`` is the rollout over all portfolios, so the update batch is the same for any n_envs.
        total_rollout = int(kwargs.pop("n_steps", _sb3_default(algorithm, "n_steps")))
        if algorithm == "ppo":
            # Same rule as train_ppo: never a rollout larger than the budget nor smaller than one batch.
            batch_size = int(kwargs.get("batch_size", _sb3_default(algorithm, "batch_size")))
            total_rollout = min(total_rollout, max(config.total_timesteps, batch_size))
            kwargs["n_steps"] = max(total_rollout // n_envs, 8)
        else:
            kwargs["n_steps"] = max(total_rollout // n_envs, 1)
        rollout = kwargs["n_steps"] * n_envs
    elif algorithm in DISCRETE:
        # DQN's one gradient step per four transitions, whatever the number of portfolios.
        kwargs.setdefault("train_freq", max(4 // n_envs, 1))
        kwargs.setdefault("gradient_steps", max(n_envs // 4, 1))
    else:
        # One gradient step per collected transition (-1), as with a single env and train_freq=1.
        kwargs.setdefault("train_freq", 1)
        kwargs.setdefault("gradient_steps", -1)
        if algorithm in ("td3", "ddpg"):
            # Noise objects are stateful and unhashable, so the config holds only their scale.
            n_actions = env.action_space.shape[0]
            sigma = float(config.params.get("action_noise_sigma", DEFAULT_ACTION_NOISE_SIGMA))
            kwargs["action_noise"] = NormalActionNoise(np.zeros(n_actions), sigma * np.ones(n_actions))
    model = _MODEL_CLASSES[algorithm](
        "MlpPolicy",
        env,
        learning_rate=config.learning_rate,
        gamma=config.gamma,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device="cpu",
        verbose=0,
        **kwargs,
    )
    return model, rollout


def train_agent(
    algorithm: str,
    train_features: pd.DataFrame | MarketArrays,
    env_spec: EnvSpec,
    config: AgentConfig | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    report: Callable[[str], None] | None = None,
) -> TrainedPolicy:
    """Train one agent over the training period; the same seed and data give the same policy.

    The observation normaliser (``env_spec.normalization``) is fit on ``train_features`` only, the agent learns
    on normalised observations, and the returned policy applies the normaliser itself; its learning curve has
    :data:`LEARNING_CURVE_POINTS` points.

    :param algorithm: one of :data:`ALGORITHMS`
    :param train_features: training split of the features frame (or its arrays)
    :param env_spec: environment engine and settings
    :param config: hyperparameters and budget; ``DEFAULT_CONFIGS[algorithm]`` when ``None``
    :param seed: seeds Python, NumPy, torch, the environment and the agent
    :param checkpoint_dir: folder for SB3 checkpoints ``<algorithm>_<timesteps>_steps.zip`` (each with its
        metadata as ``.json``) and the final agent ``<algorithm>_final.zip``; no checkpoints when ``None``
    :param checkpoint_every: timesteps between checkpoints; the progress interval when ``None``
    :param report: receives about ten progress lines (on rollout boundaries for PPO / A2C) and a final one
    """
    _check_algorithm(algorithm)
    config = config or DEFAULT_CONFIGS[algorithm]
    if config.algorithm != algorithm:
        raise ValueError(f"config is for {config.algorithm}, not {algorithm}")
    set_random_seed(seed)
    torch.manual_seed(seed)
    action = env_spec.engine_action
    normalizer = env_spec.fit_normalizer(train_features)
    env = env_spec.make_training_env(train_features)
    if normalizer is not None:
        env = NormalizedObservations(env, normalizer)
    if algorithm in DISCRETE:
        env = DiscretePortfolioActions(env, action)
    env.seed(seed)
    model, rollout = _build_model(config, env, seed)
    n_envs = env.num_envs
    # About ten reports per run, on rollout boundaries for on-policy agents (A2C's rollouts are tiny).
    tenth = max(config.total_timesteps // 10, 1)
    every = rollout * max(tenth // rollout, 1) if rollout else max(tenth // n_envs, 1) * n_envs
    curve = LearningCurve(max(config.total_timesteps // LEARNING_CURVE_POINTS // n_envs, 1) * n_envs)
    callbacks: list[BaseCallback] = [
        _ProgressCallback(report or logger.info, algorithm.upper(), config.total_timesteps, every),
        curve,
    ]
    trained = TrainedPolicy(algorithm, model, seed, config, action, normalizer, curve.points)
    if checkpoint_dir is not None:
        callbacks.append(
            _MetadataCheckpoint(
                trained.metadata,
                save_freq=max((checkpoint_every or every) // n_envs, 1),
                save_path=str(checkpoint_dir),
                name_prefix=algorithm,
            )
        )
    model.learn(total_timesteps=config.total_timesteps, callback=CallbackList(callbacks))
    if checkpoint_dir is not None:
        trained.save(Path(checkpoint_dir) / f"{algorithm}_final")
    return trained
