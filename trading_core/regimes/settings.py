"""Settings of the market regime model: every default written once, here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

CovarianceType = Literal["full", "diag"]
COVARIANCE_TYPES: tuple[CovarianceType, ...] = ("full", "diag")


@dataclass(frozen=True)
class RegimeConfig:
    """A Gaussian HMM over the market's daily return and log trailing volatility.

    :param n_regimes: hidden states; regime 0 is the calmest (lowest mean volatility), K-1 the most turbulent
    :param volatility_window: trailing dates of the market return's standard deviation (a month of trading days)
    :param seed: seeds hmmlearn's k-means initialisation; restart ``i`` uses ``seed + i``
    :param n_iter: most Baum-Welch iterations per restart
    :param covariance_type: ``"full"`` or ``"diag"`` emission covariances
    :param n_restarts: fits from different seeds; the one with the highest training log-likelihood is kept
    :param tolerance: Baum-Welch stops when the log-likelihood gains less than this
    :param min_fit_dates: fewest training dates with complete signals a fit accepts
    """

    n_regimes: int = 2
    volatility_window: int = 21
    seed: int = 0
    n_iter: int = 100
    covariance_type: CovarianceType = "full"
    n_restarts: int = 3
    tolerance: float = 1e-4
    min_fit_dates: int = 100

    def __post_init__(self) -> None:
        if self.n_regimes < 2:
            raise ValueError(f"n_regimes must be at least 2, got {self.n_regimes}")
        if self.volatility_window < 2:
            raise ValueError(f"volatility_window must be at least 2, got {self.volatility_window}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if self.n_iter < 1:
            raise ValueError(f"n_iter must be at least 1, got {self.n_iter}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}, got {self.covariance_type!r}"
            )
        if self.n_restarts < 1:
            raise ValueError(f"n_restarts must be at least 1, got {self.n_restarts}")
        if not self.tolerance > 0:
            raise ValueError(f"tolerance must be positive, got {self.tolerance}")
        if self.min_fit_dates < 10 * self.n_regimes:
            raise ValueError(
                f"min_fit_dates must be at least 10 per regime ({10 * self.n_regimes}), got {self.min_fit_dates}"
            )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
