"""Observation normalisation fit on the training period and carried with the trained agent.

The environments, the backtester and the live engine all build the raw observation
(:func:`~trading_core.envs.fast.observation_from`); :class:`ObservationNormalizer` is a pure function of that raw
observation and of statistics fit on the training panel, applied inside the trained policy's ``predict`` (and,
during training, by :class:`NormalizedObservations` around the environment), so every caller keeps feeding raw
observations. The layout stays ``[1 + 2N + F*N]``:

- portfolio part, scale-free from the observation itself: cash / equity and the position weights
  ``holdings * close / equity``;
- market part, z-scored per dimension with the training period's mean and standard deviation and clipped:
  ``log(close)`` (price levels trend, log prices at least drift additively), price-unit features (MACD,
  Bollinger bands, moving averages: names starting with ``price_unit_prefixes``) divided by the asset's close
  (what stays is their shape, not the price level), every other feature as it is.

An asset without a positive close (not tradable on the date) reads 0 in every market dimension. A dimension
without spread over the training period (a constant feature) is only centred. The statistics serialise to JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from trading_core.envs.fast import observation_at
from trading_core.market.arrays import MarketArrays, as_market

FORMAT = 1


@dataclass(frozen=True)
class NormalizationConfig:
    """How observations are normalised.

    :param clip: bound of every normalised value, ``[-clip, clip]``
    :param log_prices: z-score ``log(close)`` instead of the close
    :param price_unit_prefixes: features in price units (divided by the asset's close before z-scoring)
    :param min_std: standard deviations below this count as zero (the dimension is then only centred)
    """

    clip: float = 5.0
    log_prices: bool = True
    price_unit_prefixes: tuple[str, ...] = ("macd", "boll", "close_")
    min_std: float = 1e-8


@dataclass(frozen=True, eq=False)
class ObservationNormalizer:
    """Raw observation ``[..., 1 + 2N + F*N]`` -> normalised observation of the same shape, float32.

    :param n_assets: number of assets N
    :param feature_names: the F features in observation order
    :param price_unit: per feature, whether it is divided by the close
    :param mean: training mean of the market part (closes, then features feature-major) ``[N + F*N]``
    :param std: its training standard deviation (1 where it had none)
    :param clip: bound of every normalised value
    :param log_prices: the closes enter as their logarithm
    """

    n_assets: int
    feature_names: tuple[str, ...]
    price_unit: tuple[bool, ...]
    mean: np.ndarray
    std: np.ndarray
    clip: float = NormalizationConfig.clip
    log_prices: bool = NormalizationConfig.log_prices
    _price_unit_mask: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        size = self.n_assets * (1 + len(self.feature_names))
        object.__setattr__(self, "mean", np.asarray(self.mean, dtype=np.float64).reshape(size))
        object.__setattr__(self, "std", np.asarray(self.std, dtype=np.float64).reshape(size))
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        object.__setattr__(self, "price_unit", tuple(bool(flag) for flag in self.price_unit))
        if len(self.price_unit) != len(self.feature_names):
            raise ValueError("price_unit needs one flag per feature")
        object.__setattr__(self, "_price_unit_mask", np.array(self.price_unit, dtype=bool))

    @property
    def size(self) -> int:
        """Length of an observation, ``1 + 2N + F*N``."""
        return 1 + self.n_assets * (2 + len(self.feature_names))

    @classmethod
    def fit(
        cls, data: pd.DataFrame | MarketArrays, config: NormalizationConfig | None = None
    ) -> ObservationNormalizer:
        """Statistics of the market part over every date of ``data`` (the training period only).

        The observations are the environments' own (:func:`~trading_core.envs.fast.observation_at`), so the
        statistics see exactly what training and trading see.
        """
        config = config or NormalizationConfig()
        market = as_market(data)
        n_assets = market.n_assets
        price_unit = tuple(name.startswith(config.price_unit_prefixes) for name in market.feature_names)
        cash, holdings = np.ones(1), np.zeros((1, n_assets))
        raw = np.concatenate([observation_at(market, day, cash, holdings) for day in range(market.n_steps)])
        partial = cls(
            n_assets,
            market.feature_names,
            price_unit,
            np.zeros(raw.shape[1] - 1 - n_assets),
            np.ones(raw.shape[1] - 1 - n_assets),
            config.clip,
            config.log_prices,
        )
        values = partial.market_values(raw)
        seen = np.isfinite(values).any(axis=0)
        mean = np.zeros(values.shape[1])
        std = np.ones(values.shape[1])
        mean[seen] = np.nanmean(values[:, seen], axis=0)
        spread = np.nanstd(values[:, seen], axis=0)
        std[seen] = np.where(spread > config.min_std, spread, 1.0)
        return cls(n_assets, market.feature_names, price_unit, mean, std, config.clip, config.log_prices)

    def _split(self, observation: np.ndarray) -> tuple[np.ndarray, ...]:
        n = self.n_assets
        if observation.shape[-1] != self.size:
            raise ValueError(
                f"observation of length {observation.shape[-1]}, the normaliser expects {self.size} "
                f"({n} assets, features {list(self.feature_names)})"
            )
        features = observation[..., 1 + 2 * n :].reshape(*observation.shape[:-1], len(self.feature_names), n)
        return observation[..., 0], observation[..., 1 : 1 + n], observation[..., 1 + n : 1 + 2 * n], features

    def market_values(self, observation: np.ndarray) -> np.ndarray:
        """The market part before z-scoring, ``[..., N + F*N]``, NaN where an asset has no positive close."""
        _, closes, _, features = self._split(np.asarray(observation, dtype=np.float64))
        valid = np.isfinite(closes) & (closes > 0)
        safe = np.where(valid, closes, 1.0)
        prices = np.where(valid, np.log(safe) if self.log_prices else closes, np.nan)
        scaled = np.where(self._price_unit_mask[:, None], features / safe[..., None, :], features)
        scaled = np.where(valid[..., None, :], scaled, np.nan)
        return np.concatenate([prices, scaled.reshape(*scaled.shape[:-2], -1)], axis=-1)

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        """The normalised observation, same shape as ``observation``, float32."""
        raw = np.asarray(observation, dtype=np.float64)
        cash, closes, holdings, _ = self._split(raw)
        values = holdings * closes
        equity = cash + values.sum(axis=-1)
        positive = equity > 0
        safe = np.where(positive, equity, 1.0)
        out = np.empty(raw.shape, dtype=np.float64)
        out[..., 0] = np.where(positive, cash / safe, 0.0)
        out[..., 1 + self.n_assets : 1 + 2 * self.n_assets] = np.where(
            positive[..., None], values / safe[..., None], 0.0
        )
        standard = (self.market_values(raw) - self.mean) / self.std
        market = np.nan_to_num(standard, nan=0.0, posinf=self.clip, neginf=-self.clip)
        out[..., 1 : 1 + self.n_assets] = market[..., : self.n_assets]
        out[..., 1 + 2 * self.n_assets :] = market[..., self.n_assets :]
        return np.clip(out, -self.clip, self.clip).astype(np.float32)

    def observation_space(self) -> spaces.Box:
        return spaces.Box(low=-self.clip, high=self.clip, shape=(self.size,), dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready statistics (floats round-trip exactly through JSON)."""
        return {
            "format": FORMAT,
            "n_assets": self.n_assets,
            "feature_names": list(self.feature_names),
            "price_unit": list(self.price_unit),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "clip": self.clip,
            "log_prices": self.log_prices,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ObservationNormalizer:
        """Inverse of :meth:`to_dict`."""
        if values.get("format") != FORMAT:
            raise ValueError(f"unknown normaliser format {values.get('format')!r}")
        return cls(
            n_assets=int(values["n_assets"]),
            feature_names=tuple(values["feature_names"]),
            price_unit=tuple(values["price_unit"]),
            mean=np.array(values["mean"], dtype=np.float64),
            std=np.array(values["std"], dtype=np.float64),
            clip=float(values["clip"]),
            log_prices=bool(values["log_prices"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ObservationNormalizer:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObservationNormalizer):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.to_json())


class NormalizedObservations(VecEnvWrapper):
    """A trading ``VecEnv`` whose observations (terminal ones included) pass through a normaliser.

    :param venv: environment with the raw observation layout
    :param normalizer: statistics fit on the environment's own (training) period
    """

    def __init__(self, venv: VecEnv, normalizer: ObservationNormalizer) -> None:
        if venv.observation_space.shape != (normalizer.size,):
            raise ValueError(
                f"observations of shape {venv.observation_space.shape}, normaliser {normalizer.size}"
            )
        self.normalizer = normalizer
        super().__init__(venv, observation_space=normalizer.observation_space())

    def reset(self) -> np.ndarray:
        return self.normalizer(self.venv.reset())

    def step_wait(self):
        observation, rewards, dones, infos = self.venv.step_wait()
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"] = self.normalizer(info["terminal_observation"])
        return self.normalizer(observation), rewards, dones, infos
