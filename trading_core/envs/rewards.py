"""What a trading environment rewards, in one config shared by the batched and the single-portfolio env.

Every kind is computed from the portfolios' equity before and after a step (the costs are paid from cash, so the
equity after a step is net of commission, spread and impact) and the notional the step traded:

- ``log_return`` (default): ``scale * (log(equity_after / equity_before) - penalties)``;
- ``differential_sharpe``: ``scale * D_t``, Moody & Saffell's (1998) differential Sharpe ratio of the penalised
  log returns ``R_t``: with moving moments ``A_t = A_{t-1} + eta (R_t - A_{t-1})`` and
  ``B_t = B_{t-1} + eta (R_t^2 - B_{t-1})``,
  ``D_t = (B_{t-1} dA_t - A_{t-1} dB_t / 2) / (B_{t-1} - A_{t-1}^2)^{3/2}`` (0 while the variance is 0);
- ``value_change``: FinRL's ``value_scaling * (equity_after - equity_before)``, the penalties in dollars.

The penalties are fractions of equity: ``drawdown_penalty`` times the drawdown from the running peak after the
step, plus ``turnover_penalty`` times the traded notional over the equity before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from trading_core.market.simulator import StepOutcome

RewardKind = Literal["log_return", "differential_sharpe", "value_change"]
REWARD_KINDS: tuple[str, ...] = ("log_return", "differential_sharpe", "value_change")


@dataclass(frozen=True)
class RewardConfig:
    """The reward of the trading environments.

    :param kind: ``log_return``, ``differential_sharpe`` or ``value_change`` (FinRL's, for ``shares`` actions)
    :param scale: factor on the ``log_return`` and ``differential_sharpe`` rewards
    :param value_scaling: FinRL's ``reward_scaling``, the factor on the ``value_change`` reward
    :param sharpe_eta: adaptation rate of the differential Sharpe ratio's moving moments
    :param drawdown_penalty: coefficient on the drawdown from the running peak after each step
    :param turnover_penalty: coefficient on each step's traded notional over the equity before it
    """

    kind: RewardKind = "log_return"
    scale: float = 1.0
    value_scaling: float = 1e-4
    sharpe_eta: float = 0.01
    drawdown_penalty: float = 0.0
    turnover_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in REWARD_KINDS:
            raise ValueError(f"unknown reward kind {self.kind!r}; choose one of {', '.join(REWARD_KINDS)}")
        if not 0.0 < self.sharpe_eta <= 1.0:
            raise ValueError(f"sharpe_eta must lie in (0, 1], got {self.sharpe_eta}")
        if self.drawdown_penalty < 0.0 or self.turnover_penalty < 0.0:
            raise ValueError("penalty coefficients must be non-negative")


def traded_notional(outcome: StepOutcome) -> np.ndarray:
    """Absolute value of every fill of a step, per portfolio ``[B]``."""
    return np.abs(outcome.fills.shares * outcome.fills.price).sum(axis=1)


class PortfolioReward:
    """The reward of B portfolios step by step; keeps the running peak and the differential Sharpe's moments.

    :param config: reward kind and penalties
    :param n_envs: number of portfolios B
    """

    def __init__(self, config: RewardConfig, n_envs: int) -> None:
        self.config = config
        self.peak = np.zeros(n_envs)
        self.mean = np.zeros(n_envs)  # A_t
        self.second_moment = np.zeros(n_envs)  # B_t

    def reset(self, equity: np.ndarray) -> None:
        self.peak = np.array(equity, dtype=np.float64, copy=True)
        self.mean[:] = 0.0
        self.second_moment[:] = 0.0

    def step(self, outcome: StepOutcome) -> np.ndarray:
        """The rewards ``[B]`` of one simulation step."""
        return self(outcome.equity_before, outcome.equity_after, traded_notional(outcome))

    def __call__(
        self, equity_before: np.ndarray, equity_after: np.ndarray, notional: np.ndarray
    ) -> np.ndarray:
        """The rewards ``[B]`` of a step from the equity before and after it and the notional it traded."""
        config = self.config
        before = np.asarray(equity_before, dtype=np.float64)
        after = np.asarray(equity_after, dtype=np.float64)
        self.peak = np.maximum(self.peak, after)
        penalty = np.zeros_like(after)
        if config.turnover_penalty:
            penalty = penalty + config.turnover_penalty * np.asarray(notional) / np.maximum(before, 1e-12)
        if config.drawdown_penalty:
            drawdown = 1.0 - after / np.maximum(self.peak, 1e-12)
            penalty = penalty + config.drawdown_penalty * drawdown
        if config.kind == "value_change":
            change = after - before
            # Only subtract when penalised, so the unpenalised reward is FinRL's to the bit.
            if config.turnover_penalty or config.drawdown_penalty:
                change = change - before * penalty
            return change * config.value_scaling
        returns = np.log(np.maximum(after, 1e-12) / np.maximum(before, 1e-12)) - penalty
        if config.kind == "log_return":
            return returns * config.scale
        return self._differential_sharpe(returns) * config.scale

    def _differential_sharpe(self, returns: np.ndarray) -> np.ndarray:
        eta, mean, second = self.config.sharpe_eta, self.mean, self.second_moment
        delta_mean, delta_second = returns - mean, returns**2 - second
        variance = second - mean**2
        positive = variance > 1e-18
        sharpe = np.zeros_like(returns)
        sharpe[positive] = (
            second[positive] * delta_mean[positive] - 0.5 * mean[positive] * delta_second[positive]
        ) / variance[positive] ** 1.5
        self.mean = mean + eta * delta_mean
        self.second_moment = second + eta * delta_second
        return sharpe
