"""What a registered agent needs besides its weights to decide live exactly as it did in training and backtest.

The spec travels inside the registered model (an artifact of its pyfunc), so paper trading, monitoring and any
later evaluation rebuild the same observation, with the same costs, fills and risk limits. The artifact is a JSON
document of the spec's dataclasses (:mod:`trading_core.runtime.stored_json`): reading it never runs code, and a
spec pickled by earlier versions is refused (retrain or re-register such a model).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trading_core.allocators.config import PRIOR_FEATURE, AllocatorConfig
from trading_core.data.schema import BASE_COLUMNS
from trading_core.envs.fast import ActionSpec
from trading_core.envs.normalization import NormalizationConfig
from trading_core.envs.rewards import RewardConfig
from trading_core.envs.spec import EnvSpec
from trading_core.market.arrays import MarketArrays
from trading_core.market.costs import (
    BpsCommission,
    CostModel,
    LinearImpact,
    NoImpact,
    PerOrderCommission,
    PerShareCommission,
    ProportionalCommission,
    SquareRootImpact,
    ZeroCommission,
)
from trading_core.market.execution import ExecutionConfig
from trading_core.market.limits import RiskLimits
from trading_core.market.simulator import SimulationConfig
from trading_core.runtime.stored_json import StoredStateError, dumps, loads, register_stored

SPEC_SCHEMA = "decision_spec"
SPEC_VERSION = 1


@dataclass(frozen=True)
class DecisionSpec:
    """How observations are built and actions turned into orders for one registered agent.

    :param tickers: the assets in observation order
    :param feature_columns: per-asset feature columns after the base columns, in observation order
    :param env_spec: engine, simulation (costs, fills, risk limits), ``hmax`` and action mode (with the prior
        allocator of a tilting agent, see :attr:`prior`)
    :param forecaster_uri: ``models:/<name>/<version>`` of the CNN+LSTM whose outputs the agent observes, if any
    :param use_turbulence: the features include FinRL's turbulence index
    :param uses_vix: the features include the VIX close (a live source for it is then required)
    :param reference_quantiles: deciles of each technical feature over the training period, the reference of
        the live model-drift score
    :param regime_model: the market regime model (``RegimeModel.to_dict()``) whose filtered probabilities the
        ``p_regime_*`` features hold; the live features filter them bar by bar from it
    :param sectors: each ticker's sector (every ticker of :attr:`tickers`), the labels the risk manager's
        sector-exposure limit reads live as it did in training; ``None`` for an agent trained without them
    """

    tickers: tuple[str, ...]
    feature_columns: tuple[str, ...]
    env_spec: EnvSpec
    forecaster_uri: str | None = None
    use_turbulence: bool = True
    uses_vix: bool = False
    reference_quantiles: dict[str, tuple[float, ...]] | None = None
    regime_model: dict[str, Any] | None = None
    sectors: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.sectors is not None and set(self.sectors) != set(self.tickers):
            raise ValueError(
                f"decision spec sectors must label exactly its tickers; unlabelled "
                f"{sorted(set(self.tickers) - set(self.sectors))}, extra {sorted(set(self.sectors) - set(self.tickers))}"
            )
        if self.prior is not None and PRIOR_FEATURE not in self.feature_columns:
            raise ValueError(f"the agent tilts around a prior: its features must include {PRIOR_FEATURE!r}")

    @property
    def prior(self) -> AllocatorConfig | None:
        """The allocator whose weights the agent observes and tilts (the live engine refits it on its price
        history each bar); kept in the action spec, so the policy, its environment and this spec agree."""
        return self.env_spec.action.prior

    @property
    def sector_labels(self) -> tuple[str, ...] | None:
        """The sectors in :attr:`tickers` order (the risk manager's column order); ``None`` without sectors."""
        return None if self.sectors is None else tuple(self.sectors[tic] for tic in self.tickers)

    @property
    def observation_columns(self) -> list[str]:
        return [*BASE_COLUMNS, *self.feature_columns]

    def market_of(self, frame: pd.DataFrame) -> MarketArrays:
        """A features frame as the arrays this agent trades: its tickers, the observed features in order, and its
        sectors (so a sector-exposure limit applies to a backtest built outside the splits, e.g. monitoring's).

        :param frame: long features frame holding at least :attr:`observation_columns`
        :raises ValueError: the frame lacks an observed column
        """
        missing = [c for c in self.observation_columns if c not in frame.columns]
        if missing:
            raise ValueError(f"the features lack columns the agent observes: {missing}")
        market = MarketArrays.from_features(
            frame[self.observation_columns], list(self.feature_columns), tickers=self.tickers
        )
        return market if self.sectors is None else replace(market, sectors=self.sector_labels)

    def save(self, path: str | Path) -> Path:
        """Write the spec as a JSON document (:mod:`trading_core.runtime.stored_json`) to ``path`` with the suffix
        ``.json``; returns the path written."""
        target = Path(path).with_suffix(".json")
        target.write_text(dumps(SPEC_SCHEMA, SPEC_VERSION, self))
        return target

    @classmethod
    def load(cls, path: str | Path) -> DecisionSpec:
        """Read a spec written by :meth:`save`; reading builds the spec's dataclasses only, it never runs code.

        :raises PickledStateError: the file is a spec pickled by earlier versions (refused, never unpickled)
        :raises StoredStateError: the file is no decision spec, or a corrupt one
        """
        spec = loads(Path(path).read_bytes(), SPEC_SCHEMA, SPEC_VERSION, source=f"decision spec {path}")
        if not isinstance(spec, cls):
            raise StoredStateError(f"decision spec {path} holds a {type(spec).__name__}, not a DecisionSpec")
        return spec


# The dataclasses a stored spec is made of: the only classes reading one back may build.
register_stored(
    DecisionSpec,
    EnvSpec,
    ActionSpec,
    RewardConfig,
    NormalizationConfig,
    AllocatorConfig,
    SimulationConfig,
    ExecutionConfig,
    RiskLimits,
    CostModel,
    ProportionalCommission,
    BpsCommission,
    PerShareCommission,
    PerOrderCommission,
    ZeroCommission,
    LinearImpact,
    SquareRootImpact,
    NoImpact,
)

# Oscillators are bounded and scale-free; price-level indicators (moving averages, Bollinger bands, MACD) drift with
# the price itself and would report drift whenever prices trend.
DRIFT_FEATURE_PREFIXES = ("rsi", "cci", "dx")


def feature_deciles(train: pd.DataFrame, columns: list[str]) -> dict[str, tuple[float, ...]]:
    """The nine inner deciles over the training rows of each scale-free column (bins of equal expected share)."""
    levels = np.linspace(0.1, 0.9, 9)
    return {
        c: tuple(float(q) for q in np.nanquantile(train[c].to_numpy(dtype=np.float64), levels))
        for c in columns
        if c.startswith(DRIFT_FEATURE_PREFIXES)
    }
