"""FinRL's own ``StockTradingEnv`` over a features frame, and a policy's rollout in it (the ``finrl`` engine)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from trading_core.data.schema import feature_columns_of
from trading_core.envs.fast import ActionSpec
from trading_core.envs.rewards import RewardConfig
from trading_core.features.finrl_adapter import StockTradingEnv
from trading_core.market.arrays import MarketArrays, as_frame
from trading_core.market.simulator import SimulationConfig


@dataclass(frozen=True)
class TradingEnvConfig:
    """Settings of FinRL's trading environment shared by training and backtesting.

    :param initial_amount: starting cash
    :param hmax: most shares one action may buy or sell per asset and step
    :param cost_pct: proportional cost of each buy and sell (commission plus half-spread)
    :param reward_scaling: factor applied to the change in portfolio value
    :param turbulence_threshold: liquidate and stop buying when turbulence reaches it; ``None`` disables
    """

    initial_amount: float = SimulationConfig.initial_amount
    hmax: int = ActionSpec.hmax
    cost_pct: float = 0.001
    reward_scaling: float = RewardConfig.value_scaling
    turbulence_threshold: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def ragged_panel_message(frame: pd.DataFrame) -> str:
    """One line naming the tickers that lack some dates of a panel (FinRL's env needs every ticker every date)."""
    dates = frame["date"].nunique()
    counts = frame.groupby("tic")["date"].nunique()
    short = ", ".join(f"{tic} ({dates - n} dates)" for tic, n in counts[counts < dates].items())
    return (
        f"FinRL's StockTradingEnv needs every ticker on every date; missing: {short or 'duplicate rows'} "
        "(use the fast engine, or trading_core.features.batch.balanced_panel on the bars)"
    )


def make_stock_trading_env(
    features: pd.DataFrame | MarketArrays, config: TradingEnvConfig
) -> StockTradingEnv:
    """FinRL's ``StockTradingEnv`` over a features frame (one row per date and ticker).

    The observation is ``[cash, closes, holdings, features per asset]``; actions in [-1, 1] per asset are
    scaled by ``hmax`` to whole shares.

    :param features: frame from :func:`trading_core.features.batch.build_features` (possibly a split of it), or
        its arrays
    :param config: environment settings
    """
    frame = as_frame(features).sort_values(["date", "tic"]).reset_index(drop=True)
    frame.index = frame["date"].factorize()[0]
    tickers = frame["tic"].unique()
    stock_dim = len(tickers)
    indicators = feature_columns_of(frame)
    if len(frame) != stock_dim * frame.index.nunique():
        raise ValueError(ragged_panel_message(frame))
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


def rollout_policy(
    policy, features: pd.DataFrame | MarketArrays, env_config: TradingEnvConfig
) -> tuple[pd.Series, pd.DataFrame, float, int]:
    """Step FinRL's environment with a policy's deterministic actions from the first to the last date.

    :param policy: anything with SB3's ``predict(obs, deterministic=True)``
    :return: portfolio value per date, shares traded per date and asset, total cost, number of trades
    """
    frame = as_frame(features)
    env = make_stock_trading_env(frame, env_config)
    observation, _ = env.reset(seed=0)
    done = False
    while not done:
        action, _ = policy.predict(np.asarray(observation, dtype=np.float32), deterministic=True)
        observation, _, done, _, _ = env.step(action)
    equity = pd.Series(env.asset_memory, index=pd.DatetimeIndex(env.date_memory), name="portfolio_value")
    tickers = frame.sort_values(["date", "tic"])["tic"].unique()
    actions = pd.DataFrame(env.actions_memory, index=pd.DatetimeIndex(env.date_memory[:-1]), columns=tickers)
    return equity, actions, float(env.cost), int(env.trades)
