"""FinRL ``StockTradingEnv`` built from a features frame with one place for its settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from trading_core.features import feature_columns_of
from trading_core.finrl_compat import StockTradingEnv


@dataclass(frozen=True)
class TradingEnvConfig:
    """Settings of the trading environment shared by training and backtesting.

    :param initial_amount: starting cash
    :param hmax: most shares one action may buy or sell per asset and step
    :param cost_pct: proportional cost of each buy and sell (commission plus half-spread)
    :param reward_scaling: factor applied to the change in portfolio value
    :param turbulence_threshold: liquidate and stop buying when turbulence reaches it; ``None`` disables
    """

    initial_amount: float = 100_000.0
    hmax: int = 100
    cost_pct: float = 0.001
    reward_scaling: float = 1e-4
    turbulence_threshold: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def make_stock_trading_env(features: pd.DataFrame, config: TradingEnvConfig) -> StockTradingEnv:
    """FinRL's ``StockTradingEnv`` over a features frame (one row per date and ticker).

    The observation is ``[cash, closes, holdings, features per asset]``; actions in [-1, 1] per asset are
    scaled by ``hmax`` to whole shares.

    :param features: frame from :func:`trading_core.features.build_features`, possibly a split of it
    :param config: environment settings
    """
    frame = features.sort_values(["date", "tic"]).reset_index(drop=True)
    frame.index = frame["date"].factorize()[0]
    tickers = frame["tic"].unique()
    stock_dim = len(tickers)
    indicators = feature_columns_of(frame)
    if len(frame) != stock_dim * frame.index.nunique():
        raise ValueError(
            "features must hold every ticker on every date (see trading_core.features.balanced_panel)"
        )
    state_space = 1 + 2 * stock_dim + len(indicators) * stock_dim
    return StockTradingEnv(
        df=frame,
        stock_dim=stock_dim,
        hmax=config.hmax,
        initial_amount=config.initial_amount,
        num_stock_shares=[0] * stock_dim,
        buy_cost_pct=[config.cost_pct] * stock_dim,
        sell_cost_pct=[config.cost_pct] * stock_dim,
        reward_scaling=config.reward_scaling,
        state_space=state_space,
        action_space=stock_dim,
        tech_indicator_list=indicators,
        turbulence_threshold=config.turbulence_threshold,
        risk_indicator_col="turbulence",
        print_verbosity=10**9,
    )
