"""FinRL's modules load without its deprecated, network-only dependencies."""

from __future__ import annotations

import subprocess
import sys


def test_finrl_loads_without_deprecated_dependencies():
    code = (
        "import sys, trading_core.features.finrl_adapter as c;"
        "bad=[m for m in ('alpaca_trade_api','wrds','elegantrl','finrl.train') if m in sys.modules];"
        "assert not bad, bad; print(c.StockTradingEnv.__module__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "finrl.meta.env_stock_trading.env_stocktrading" in done.stdout
