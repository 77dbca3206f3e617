"""Environment steps per second on the Dow-30 panel: the project's default environment (costs and risk on)
against FinRL's ``StockTradingEnv`` and FinRL's ``env_stocktrading_np``, same seeded random actions, one run.

Run: ``python -m benchmarks.env_throughput [--steps 3000] [--n-envs 64]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.common import Timer, dow30_features, finrl_numpy_env
from trading_core.envs.fast import ActionSpec, FastStockTradingEnv, StockTradingVecEnv
from trading_core.envs.finrl import TradingEnvConfig, make_stock_trading_env
from trading_core.market.arrays import MarketArrays
from trading_core.market.simulator import SimulationConfig


def single_env_steps_per_s(env, actions: np.ndarray) -> float:
    """Steps per second of a gymnasium env under a fixed action stream, resetting at episode ends."""
    env.reset()
    with Timer() as timer:
        for action in actions:
            _, _, done, _, _ = env.step(action)
            if done:
                env.reset()
    return len(actions) / timer.seconds


def finrl_steps_per_s(features, actions: np.ndarray) -> float:
    return single_env_steps_per_s(
        make_stock_trading_env(features, TradingEnvConfig(initial_amount=1_000_000)), actions
    )


def fast_single_steps_per_s(market: MarketArrays, actions: np.ndarray) -> float:
    # FinRL's share actions, so every environment runs the same action stream.
    return single_env_steps_per_s(
        FastStockTradingEnv(market, SimulationConfig(), ActionSpec.finrl()), actions
    )


def fast_vec_steps_per_s(market: MarketArrays, actions: np.ndarray, n_envs: int) -> float:
    env = StockTradingVecEnv(market, SimulationConfig(), n_envs=n_envs, action=ActionSpec.finrl())
    env.reset()
    # Each portfolio gets the same seeded action stream, shifted so the portfolios differ.
    batches = [np.roll(actions, shift, axis=0) for shift in range(n_envs)]
    stacked = np.stack(batches, axis=1).astype(np.float32)
    calls = len(actions) // 4
    with Timer() as timer:
        for step in range(calls):
            env.step(stacked[step])
    return calls * n_envs / timer.seconds


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000, help="random actions per environment")
    parser.add_argument(
        "--n-envs", type=int, default=64, help="portfolios stepped together by the default env"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    features = dow30_features()
    market = MarketArrays.from_features(features)
    actions = np.random.default_rng(args.seed).uniform(-1, 1, size=(args.steps, market.n_assets))
    print(
        f"Dow-30 panel: {market.n_assets} tickers x {market.n_steps} dates, {args.steps} seeded random actions"
    )

    finrl = finrl_steps_per_s(features, actions)
    finrl_np = single_env_steps_per_s(finrl_numpy_env(features, market, if_train=False), actions)
    single = fast_single_steps_per_s(market, actions)
    vectorised = fast_vec_steps_per_s(market, actions, args.n_envs)
    result = {
        "steps_per_s": round(vectorised, 1),
        "finrl_steps_per_s": round(finrl, 1),
        "finrl_np_steps_per_s": round(finrl_np, 1),
        "single_env_steps_per_s": round(single, 1),
        "n_envs": args.n_envs,
        "n_assets": market.n_assets,
        "ratio_vs_finrl": round(vectorised / finrl, 1),
        "ratio_vs_finrl_np": round(vectorised / finrl_np, 2),
    }
    print(f"FinRL StockTradingEnv        : {finrl:12,.0f} steps/s")
    print(f"FinRL env_stocktrading_np    : {finrl_np:12,.0f} steps/s (no costs model beyond %, no risk)")
    print(f"fast env, 1 portfolio        : {single:12,.0f} steps/s (costs, impact, risk on)")
    print(f"fast VecEnv, {args.n_envs} portfolios   : {vectorised:12,.0f} steps/s (costs, impact, risk on)")
    print(
        f"ratios: {result['ratio_vs_finrl']}x FinRL, {result['ratio_vs_finrl_np']}x FinRL numpy (goals 100x, 9x)"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
