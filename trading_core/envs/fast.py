"""Fast FinRL-compatible trading environments on the shared simulation core.

The observation layout is FinRL's ``StockTradingEnv``: ``[cash, closes (N), holdings (N), feature_1 (N), ...,
feature_F (N)]``. What an action means is an :class:`ActionSpec`: by default (``weights``) an action in
``[-1, 1]^(N+1)`` is a vector of logits whose softmax gives target portfolio weights over the N assets and cash;
``shares`` is FinRL's, an action in ``[-1, 1]^N`` trading ``int(action * hmax)`` shares per asset; ``tilt``, an
action in ``[-1, 1]^N``, moves a classical allocator's weights (the prior, a feature column of the panel) by at
most ``tilt_bound`` per asset. The reward is a :class:`~trading_core.envs.rewards.RewardConfig`.

:class:`StockTradingVecEnv` steps B portfolios at once as a stable-baselines3 ``VecEnv``;
:class:`FastStockTradingEnv` is the single-portfolio ``gymnasium.Env`` over the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from trading_core.allocators.config import PRIOR_FEATURE, AllocatorConfig
from trading_core.envs.rewards import PortfolioReward, RewardConfig
from trading_core.market.arrays import MarketArrays, as_market
from trading_core.market.limits import RiskLimits
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig, StepOutcome

ActionMode = Literal["shares", "weights", "tilt"]
ACTION_MODES: tuple[str, ...] = ("shares", "weights", "tilt")


@dataclass(frozen=True)
class ActionSpec:
    """How an agent's action becomes target holdings, and what it is rewarded for: the one place these defaults
    are written (the environments, the backtester, the live engine and :class:`~trading_core.envs.spec.EnvSpec`
    take theirs from here).

    :param mode: ``weights``: an action in ``[-1, 1]^(N+1)`` becomes target weights
        ``softmax(temperature * action)`` over the N assets and cash (last), and target shares
        ``floor(weight * equity * invest / close)``; ``shares``: FinRL's ``holdings + int(action * hmax)``;
        ``tilt``: an action in ``[-1, 1]^N`` tilts the prior's weights (see ``tilt_bound``)
    :param hmax: most shares one action trades per asset (``shares`` mode)
    :param temperature: scale of the logits (``weights`` mode): the largest and smallest weight of one action
        differ by at most ``exp(2 * temperature)``, and a zero action is equal weight over assets and cash. 2.5
        bounds the tilts a noisy policy takes (on the Dow 30, 5 turned exploration noise into turnover costing
        10-20% over two years; see ``DEFAULT_CONFIGS`` in :mod:`trading_core.agents.zoo`) while the most-cash
        action leaves every asset below the default band, so it goes flat
    :param invest: fraction of equity the target weights apply to (``weights`` mode); the rest is kept in cash
        so that a full reallocation's costs never hit the cash rule
    :param rebalance_band: skip an asset's order (``weights`` and ``tilt`` modes) when its value is below this
        fraction of equity, unless it sells the position out: a per-share commission with a minimum makes the
        small daily re-weightings of a softmax policy cost far more than they move
    :param reward: reward kind and penalties
    :param tilt_bound: ``tilt`` mode: an action in ``[-1, 1]^N`` moves each asset's prior weight by at most this
        much, ``clip(prior + tilt_bound * action, 0, max_weight)`` on the tradable assets, re-scaled to invest
        what the prior invests (at most ``invest``); target shares as in ``weights`` mode. A zero action is the
        prior. 0.05 lets a policy drop an asset of an equal-weight Dow 30 prior (3.3% each) or take it to 2.5
        times its weight, while PPO's initial exploration noise (std 0.22) moves weights by about 1%
    :param max_weight: ``tilt`` mode: largest target weight per asset, the risk manager's own limit (``None``:
        no cap); a prior within it is reproduced by a zero action
    :param prior: ``tilt`` mode: the allocator whose weights the agent tilts around; the panel carries them as
        the :data:`~trading_core.allocators.config.PRIOR_FEATURE` column
        (:func:`~trading_core.allocators.prior.with_prior`), which the agent observes too
    """

    mode: ActionMode = "weights"
    hmax: int = 100
    temperature: float = 2.5
    invest: float = 0.99
    rebalance_band: float = 0.01
    reward: RewardConfig = RewardConfig()
    tilt_bound: float = 0.05
    max_weight: float | None = RiskLimits.max_weight
    prior: AllocatorConfig | None = None

    def __post_init__(self) -> None:
        if self.mode not in ACTION_MODES:
            raise ValueError(f"unknown action mode {self.mode!r}; choose one of {', '.join(ACTION_MODES)}")
        if self.temperature <= 0.0 or not 0.0 < self.invest <= 1.0 or self.rebalance_band < 0.0:
            raise ValueError("temperature must be positive, invest in (0, 1] and rebalance_band non-negative")
        if self.tilt_bound <= 0.0 or (self.max_weight is not None and self.max_weight <= 0.0):
            raise ValueError("tilt_bound and max_weight must be positive")
        if self.mode == "tilt" and self.prior is None:
            raise ValueError("tilt actions need a prior: the allocator whose weights they tilt")

    @property
    def cap(self) -> float:
        """The ``tilt``-mode weight cap as a number (1 when there is none)."""
        return 1.0 if self.max_weight is None else min(self.max_weight, 1.0)

    @classmethod
    def finrl(cls, hmax: int = hmax, value_scaling: float = RewardConfig.value_scaling) -> ActionSpec:
        """FinRL's ``StockTradingEnv`` semantics: share actions and the scaled change in portfolio value."""
        return cls(
            mode="shares", hmax=hmax, reward=RewardConfig(kind="value_change", value_scaling=value_scaling)
        )

    def action_size(self, n_assets: int) -> int:
        """Length of an action for ``n_assets`` assets: ``N + 1`` in ``weights`` mode (cash last), else ``N``."""
        return n_assets + 1 if self.mode == "weights" else n_assets

    def action_space(self, n_assets: int) -> spaces.Box:
        return spaces.Box(low=-1.0, high=1.0, shape=(self.action_size(n_assets),), dtype=np.float32)

    def as_dict(self) -> dict[str, object]:
        """Flat, JSON-friendly settings (the reward's prefixed ``reward_``, the prior's ``prior_`` when set)."""
        nested = ("reward", "prior")
        flat = {name: value for name, value in asdict(self).items() if name not in nested}
        flat.update({f"reward_{name}": value for name, value in asdict(self.reward).items()})
        if self.prior is not None:
            flat.update({f"prior_{name}": value for name, value in asdict(self.prior).items()})
        return flat

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> ActionSpec:
        """Inverse of :meth:`as_dict`."""
        reward = {k.removeprefix("reward_"): v for k, v in values.items() if k.startswith("reward_")}
        prior = {k.removeprefix("prior_"): v for k, v in values.items() if k.startswith("prior_")}
        own = {k: v for k, v in values.items() if not k.startswith(("reward_", "prior_"))}
        return cls(**own, reward=RewardConfig(**reward), prior=AllocatorConfig(**prior) if prior else None)


def observation_from(
    cash: np.ndarray,
    closes: np.ndarray,
    holdings: np.ndarray,
    features: np.ndarray,
    tradable: np.ndarray | None = None,
) -> np.ndarray:
    """FinRL's observation ``[cash, closes (N), holdings (N), feature_1 (N), ..., feature_F (N)]``, float32.

    The one place the layout is written: training, backtests and the live engine all build it here.

    :param cash: cash per portfolio ``[B]``
    :param closes: the bar's closes ``[N]``
    :param holdings: shares held ``[B, N]``
    :param features: the bar's features, feature-major ``[F, N]``
    :param tradable: ``[N]`` assets with a bar; the others' closes and features are observed as 0 (``None``:
        every asset, or the inputs are masked already)
    :return: ``[B, 1 + 2N + F*N]``
    """
    if tradable is not None:
        closes, features = np.where(tradable, closes, 0.0), np.where(tradable, features, 0.0)
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
    """FinRL's observation from market data up to ``day`` and the portfolios' cash ``[B]`` and holdings ``[B, N]``.

    Assets without a bar on ``day`` show closes and features of 0 (masked once, in the arrays)."""
    return observation_from(cash, market.observed_close[day], holdings, market.observed_features[day])


def portfolio_weights(
    actions: np.ndarray, temperature: float = ActionSpec.temperature, tradable: np.ndarray | None = None
) -> np.ndarray:
    """Target weights ``[B, N + 1]`` (cash last) of ``weights``-mode actions ``[B, N + 1]``: their softmax at
    ``temperature``; non-negative and summing to one.

    :param tradable: ``[N]`` or ``[B, N]``; an asset that cannot trade gets weight 0 and the softmax runs over
        the others and cash (``None``: every asset trades)
    """
    logits = np.asarray(actions, dtype=np.float64) * temperature
    if tradable is not None:
        open_ = np.concatenate(
            [np.broadcast_to(tradable, logits[..., :-1].shape), np.ones_like(logits[..., -1:], dtype=bool)],
            axis=-1,
        )
        logits = np.where(open_, logits, -np.inf)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def actions_for_weights(weights: np.ndarray, temperature: float = ActionSpec.temperature) -> np.ndarray:
    """``weights``-mode actions in ``[-1, 1]`` whose :func:`portfolio_weights` are ``weights`` (``[..., N + 1]``,
    summing to one) up to ``eps = 1 / (exp(2 * temperature) - 1)`` per entry, float32.

    The logits ``log(weight + eps)`` span at most ``2 * temperature``: centred and divided by the temperature
    they fit in ``[-1, 1]``, and their softmax is ``(weight + eps) / (1 + (N + 1) eps)``.
    """
    eps = 1.0 / np.expm1(2.0 * temperature)
    logits = np.log(np.asarray(weights, dtype=np.float64) + eps)
    centre = 0.5 * (logits.max(axis=-1, keepdims=True) + logits.min(axis=-1, keepdims=True))
    return np.clip((logits - centre) / temperature, -1.0, 1.0).astype(np.float32)


def prior_from(feature_names: Sequence[str], features: np.ndarray, spec: ActionSpec) -> np.ndarray | None:
    """The prior weights ``[N]`` of one decision, read from its features ``[F, N]`` (the column
    :data:`~trading_core.allocators.config.PRIOR_FEATURE`), in ``tilt`` mode; ``None`` in the other modes."""
    if spec.mode != "tilt":
        return None
    names = list(feature_names)
    if PRIOR_FEATURE not in names:
        raise KeyError(
            f"tilt actions need the {PRIOR_FEATURE!r} feature (trading_core.allocators.prior.with_prior); "
            f"the features are {names}"
        )
    return np.asarray(features[names.index(PRIOR_FEATURE)], dtype=np.float64)


def _scale_under_cap(weights: np.ndarray, totals: np.ndarray, cap: float) -> np.ndarray:
    """Non-negative weights ``[B, N]`` scaled to sum to ``totals`` ``[B]`` with none above ``cap``: the excess
    of a capped asset is spread over the others in proportion to their weights (water-filling); where the
    total does not fit under the cap, every weighted asset gets the cap and the rest stays in cash."""
    sums = weights.sum(axis=-1)
    scaled = weights * np.divide(totals, sums, out=np.zeros_like(sums), where=sums > 0.0)[:, None]
    capped = np.zeros(weights.shape, dtype=bool)
    # Each pass caps at least one more asset, so N passes always settle.
    for _ in range(weights.shape[-1]):
        over = ~capped & (scaled > cap)
        if not over.any():
            break
        capped |= over
        free = totals - cap * capped.sum(axis=-1)
        rest = np.where(capped, 0.0, scaled).sum(axis=-1)
        ratio = np.divide(free, rest, out=np.zeros_like(rest), where=rest > 0.0)
        scaled = np.where(capped, cap, scaled * np.maximum(ratio, 0.0)[:, None])
    return np.minimum(scaled, cap)


def tilted_weights(
    actions: np.ndarray, prior: np.ndarray, spec: ActionSpec, tradable: np.ndarray | None = None
) -> np.ndarray:
    """Target asset weights ``[B, N]`` (cash the rest) of ``tilt``-mode actions ``[B, N]`` around ``prior``.

    ``clip(prior + tilt_bound * action, 0, cap)`` on the tradable assets, re-scaled (under the cap) to invest what
    the prior invests there, at most ``spec.invest``. A zero action returns the prior (within the cap); an action
    that pushes every weight to 0 keeps the prior, since it says nothing about which assets to hold.

    :param prior: ``[N]`` or ``[B, N]`` the allocator's weights at this decision
    :param tradable: ``[N]`` or ``[B, N]``; the other assets get weight 0 (``None``: every asset trades)
    """
    actions = np.asarray(actions, dtype=np.float64)
    prior = np.broadcast_to(np.asarray(prior, dtype=np.float64), actions.shape)
    open_ = (
        np.ones(actions.shape, dtype=bool) if tradable is None else np.broadcast_to(tradable, actions.shape)
    )
    prior = np.where(open_, prior, 0.0)
    totals = np.minimum(prior.sum(axis=-1), spec.invest)
    tilted = np.where(open_, np.clip(prior + spec.tilt_bound * actions, 0.0, spec.cap), 0.0)
    tilted = np.where((tilted.sum(axis=-1) > 0.0)[:, None], tilted, prior)
    return _scale_under_cap(tilted, totals, spec.cap)


def targets_from_actions(
    actions: np.ndarray,
    holdings: np.ndarray,
    equity: np.ndarray,
    prices: np.ndarray,
    spec: ActionSpec | None = None,
    whole_shares: bool = True,
    tradable: np.ndarray | None = None,
    prior: np.ndarray | None = None,
) -> np.ndarray:
    """Target holdings ``[B, N]`` for a batch of actions under an :class:`ActionSpec` (``ActionSpec()`` if None).

    :param actions: ``[B, N + 1]`` in ``weights`` mode, ``[B, N]`` in ``shares`` and ``tilt`` modes
    :param holdings: shares held ``[B, N]``
    :param equity: portfolio values ``[B]``
    :param prices: the decision's closes ``[N]`` or ``[B, N]``; an asset without a positive close gets no target
        (``weights`` and ``tilt`` modes)
    :param whole_shares: round ``weights`` and ``tilt`` targets down to whole shares (the simulation's setting)
    :param tradable: ``[N]`` assets that trade at this decision (``weights`` and ``tilt`` modes put no weight on
        the others; ``None``: all); the simulator holds an untradable asset's target at its holdings whatever it is
    :param prior: ``[N]`` the prior weights of this decision (``tilt`` mode, see :func:`prior_from`)
    """
    spec = spec or ActionSpec()
    n_books, n_assets = holdings.shape
    actions = np.asarray(actions, dtype=np.float64).reshape(n_books, spec.action_size(n_assets))
    if spec.mode == "shares":
        return holdings + np.trunc(actions * spec.hmax)
    if spec.mode == "tilt":
        if prior is None:
            raise ValueError(f"tilt actions need the prior weights (the {PRIOR_FEATURE!r} feature)")
        # The prior's weights already leave the cash it keeps: equity, not equity * invest.
        budget = tilted_weights(actions, prior, spec, tradable) * equity[:, None]
    else:
        weights = portfolio_weights(actions, spec.temperature, tradable)
        budget = weights[:, :n_assets] * (equity * spec.invest)[:, None]
    prices = np.broadcast_to(np.asarray(prices, dtype=np.float64), holdings.shape)
    tradable = np.isfinite(prices) & (prices > 0)
    shares = np.divide(budget, prices, out=np.zeros(holdings.shape), where=tradable)
    targets = np.floor(shares) if whole_shares else shares
    if spec.rebalance_band > 0:
        band = spec.rebalance_band * equity[:, None]
        priced = np.where(tradable, prices, 0.0)
        # A position smaller than the band is not worth holding: so the most-cash action goes flat.
        targets = np.where(targets * priced < band, 0.0, targets)
        # Selling out of a position is never too small to do: the band is for re-weightings.
        small = np.abs(targets - holdings) * priced < band
        targets = np.where(small & (targets > 0), holdings, targets)
    return targets


def simulator_targets(actions: np.ndarray, simulator: PortfolioSimulator, spec: ActionSpec) -> np.ndarray:
    """Target holdings of a simulator's portfolios for their actions, at today's closes and tradable assets."""
    market, day = simulator.market, simulator.day
    return targets_from_actions(
        actions,
        simulator.holdings,
        simulator.equity(),
        simulator.prices,
        spec,
        simulator.config.execution.whole_shares,
        None if market.all_tradable else market.tradable[day],
        prior_from(market.feature_names, market.features[day], spec),
    )


def check_prior_feature(market: MarketArrays, spec: ActionSpec) -> None:
    """Fail early, naming the fix, when ``tilt`` actions meet a panel without the prior column."""
    if spec.mode == "tilt" and PRIOR_FEATURE not in market.feature_names:
        raise ValueError(
            f"tilt actions need the {PRIOR_FEATURE!r} feature in the panel: add it on the full history with "
            "EnvSpec.market_for (or trading_core.allocators.prior.with_prior)"
        )


def observation_space_for(market: MarketArrays) -> spaces.Box:
    size = 1 + 2 * market.n_assets + len(market.feature_names) * market.n_assets
    return spaces.Box(low=-np.inf, high=np.inf, shape=(size,), dtype=np.float32)


class StockTradingVecEnv(VecEnv):
    """B portfolios trading the same dates in lockstep, as one stable-baselines3 ``VecEnv``.

    All episodes start on the first date and end on the last, so every portfolio resets at once.

    :param data: features frame or prepared arrays of the trading period
    :param config: costs, fills and risk limits
    :param n_envs: number of portfolios
    :param action: what an action means and what is rewarded (``ActionSpec()`` when ``None``)
    """

    def __init__(
        self,
        data: pd.DataFrame | MarketArrays,
        config: SimulationConfig | None = None,
        n_envs: int = 1,
        action: ActionSpec | None = None,
    ) -> None:
        market = as_market(data)
        self.simulator = PortfolioSimulator(market, config or SimulationConfig(), n_envs)
        self.action_spec = action or ActionSpec()
        check_prior_feature(market, self.action_spec)
        self.reward = PortfolioReward(self.action_spec.reward, n_envs)
        self.render_mode = None
        super().__init__(
            n_envs, observation_space_for(market), self.action_spec.action_space(market.n_assets)
        )
        self._actions: np.ndarray | None = None
        self.episode_returns = np.zeros(n_envs)
        self.last_outcome: StepOutcome | None = None

    def reset(self) -> np.ndarray:
        self.simulator.reset()
        self.reward.reset(self.simulator.equity())
        self.episode_returns[:] = 0.0
        return build_observation(self.simulator)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        simulator = self.simulator
        outcome = simulator.step(simulator_targets(self._actions, simulator, self.action_spec))
        self.last_outcome = outcome
        rewards = self.reward.step(outcome)
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
    """One portfolio as a ``gymnasium.Env``: the same simulation core with B = 1.

    :param action: what an action means and what is rewarded (``ActionSpec()`` when ``None``)
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        data: pd.DataFrame | MarketArrays,
        config: SimulationConfig | None = None,
        action: ActionSpec | None = None,
    ) -> None:
        market = as_market(data)
        self.simulator = PortfolioSimulator(market, config or SimulationConfig(), 1)
        self.action_spec = action or ActionSpec()
        check_prior_feature(market, self.action_spec)
        self.reward = PortfolioReward(self.action_spec.reward, 1)
        self.observation_space = observation_space_for(market)
        self.action_space = self.action_spec.action_space(market.n_assets)
        self.equity_memory: list[float] = []
        self.last_outcome: StepOutcome | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.simulator.reset()
        self.reward.reset(self.simulator.equity())
        self.equity_memory = [float(self.simulator.equity()[0])]
        return build_observation(self.simulator)[0], {}

    def step(self, action: np.ndarray):
        simulator = self.simulator
        outcome = simulator.step(simulator_targets(action, simulator, self.action_spec))
        self.last_outcome = outcome
        equity_after = float(outcome.equity_after[0])
        self.equity_memory.append(equity_after)
        reward = float(self.reward.step(outcome)[0])
        info = {"equity": equity_after, "costs": float(outcome.fills.total_cost.sum())}
        return build_observation(simulator)[0], reward, outcome.done, False, info
