"""Latency of one trading decision on the Dow-30 panel: observation -> policy -> risk check -> order.

Run: ``python -m benchmarks.decision_latency [--decisions 2000]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from stable_baselines3 import PPO

from benchmarks.common import dow30_features
from trading_core.envs.fast import ActionSpec, StockTradingVecEnv, observation_at, targets_from_actions
from trading_core.market.arrays import MarketArrays
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for inference")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    market = MarketArrays.from_features(dow30_features())
    config = SimulationConfig()
    policy = PPO("MlpPolicy", StockTradingVecEnv(market, config), seed=args.seed, device="cpu")
    simulator = PortfolioSimulator(market, config)
    simulator.reset()
    latencies = []
    for _ in range(args.decisions):
        if simulator.day >= market.n_steps - 1:
            simulator.reset()
        started = time.perf_counter()
        observation = observation_at(market, simulator.day, simulator.cash, simulator.holdings)
        action, _ = policy.predict(observation, deterministic=True)
        target = targets_from_actions(
            action, simulator.holdings, simulator.equity(), simulator.prices, ActionSpec()
        )
        orders, _ = simulator.submit(target)  # the risk manager's review and the orders it approves
        latencies.append(time.perf_counter() - started)
        # Advance the portfolio with the approved orders so the risk state evolves as in a live session.
        simulator.next_bar(orders)
    milliseconds = np.asarray(latencies) * 1000
    result = {
        "p50_ms": round(float(np.percentile(milliseconds, 50)), 4),
        "p99_ms": round(float(np.percentile(milliseconds, 99)), 4),
        "mean_ms": round(float(milliseconds.mean()), 4),
        "decisions": args.decisions,
        "n_assets": market.n_assets,
    }
    print(f"{args.decisions} decisions over {market.n_assets} assets (PPO MlpPolicy, risk manager on)")
    print(f"p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms (goal p99 < 5 ms)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
