"""Read pickles this project wrote itself: decision specs in the model registry and saved paper-trading state.

Versions registered before the layout moved (issue 9) name classes by their old module paths; they keep
loading because moved classes are looked up at their new home. Only load pickles from your own stores.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

# Old module -> new module, for every module of trading_core that moved with its classes.
MOVED_MODULES: dict[str, str] = {
    "trading_core.environment": "trading_core.envs.spec",
    "trading_core.envs.stock_trading": "trading_core.envs.fast",
    "trading_core.features": "trading_core.features.batch",
    "trading_core.live.features": "trading_core.features.streaming",
    "trading_core.market.data": "trading_core.market.arrays",
    "trading_core.splits": "trading_core.data.splits",
    "trading_core.metrics": "trading_core.evaluation.metrics",
    "trading_core.promotion": "trading_core.evaluation.promotion",
}

# Classes that left a module which still exists: (old module, class) -> new module.
MOVED_CLASSES: dict[tuple[str, str], str] = {
    ("trading_core.market.risk", "RiskLimits"): "trading_core.market.limits",
    ("trading_core.market.risk", "TradingState"): "trading_core.market.limits",
    ("trading_core.market.risk", "Intervention"): "trading_core.market.limits",
}


class _ProjectUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = MOVED_CLASSES.get((module, name), MOVED_MODULES.get(module, module))
        return super().find_class(module, name)


def load_project_pickle(data: bytes) -> Any:
    """``pickle.loads`` that also resolves classes by the module paths of earlier versions of this project."""
    return _ProjectUnpickler(io.BytesIO(data)).load()  # noqa: S301 - the project's own stores only
