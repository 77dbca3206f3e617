"""The one place that imports FinRL.

FinRL 0.3.7's ``finrl/__init__.py`` eagerly imports its train/trade/test entry points, which pull in
``alpaca_trade_api``, ``wrds``, ``elegantrl`` and other deprecated or network-only packages. This project uses
only FinRL's pure-Python parts (``StockTradingEnv``, ``FeatureEngineer``, ``config.INDICATORS``), so it
registers an empty package shell for ``finrl`` whose ``__path__`` points at the installed sources. Submodule
imports then resolve normally without running ``finrl/__init__.py``.

``finrl.meta.preprocessor.preprocessors`` imports ``yfinance`` at module level (for ``add_vix``'s download),
which this project never calls; when ``yfinance`` is absent, its downloader module is replaced by one that
raises on use.

Every other module imports FinRL symbols from here, never from ``finrl`` directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _install_finrl_package_shell() -> None:
    if "finrl" in sys.modules:
        return
    spec = importlib.util.find_spec("finrl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "FinRL is not installed: pip install finrl==0.3.7 (it has no dependencies of its own)"
        )
    shell = types.ModuleType("finrl")
    shell.__path__ = list(spec.submodule_search_locations)
    shell.__file__ = spec.origin
    shell.__spec__ = spec
    shell.__doc__ = "FinRL package shell (see trading_core.features.finrl_adapter)."
    sys.modules["finrl"] = shell

    if importlib.util.find_spec("yfinance") is None:
        downloader = types.ModuleType("finrl.meta.preprocessor.yahoodownloader")

        class YahooDownloader:  # noqa: D401 - mirrors FinRL's name
            """Stand-in for FinRL's Yahoo downloader: this project never downloads from Yahoo."""

            def __init__(self, *args: object, **kwargs: object) -> None:
                raise RuntimeError(
                    "FinRL's YahooDownloader needs network access and yfinance; use the project's "
                    "market-data resource instead"
                )

        downloader.YahooDownloader = YahooDownloader
        sys.modules[downloader.__name__] = downloader


_install_finrl_package_shell()

from finrl import config as finrl_config  # noqa: E402
from finrl.meta.env_stock_trading.env_stocktrading import StockTradingEnv  # noqa: E402
from finrl.meta.env_stock_trading.env_stocktrading_np import (  # noqa: E402
    StockTradingEnv as StockTradingEnvNumpy,
)
from finrl.meta.preprocessor.preprocessors import FeatureEngineer  # noqa: E402

FINRL_INDICATORS: tuple[str, ...] = tuple(finrl_config.INDICATORS)

__all__ = ["FINRL_INDICATORS", "FeatureEngineer", "StockTradingEnv", "StockTradingEnvNumpy"]
