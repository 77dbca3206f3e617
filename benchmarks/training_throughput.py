"""PPO training throughput on the Dow-30 panel: the project's default environment (batched, costs and risk on)
against FinRL's ``env_stocktrading_np`` under the same PPO budget and hyperparameters, in one run.

Run: ``python -m benchmarks.training_throughput [--timesteps 20000] [--n-envs 8]``. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from benchmarks.common import Timer, dow30_features, finrl_numpy_env
from trading_core.envs.spec import EnvSpec
from trading_core.market.arrays import MarketArrays

ROLLOUT = 2048  # timesteps per PPO update, over all environments
BATCH_SIZE = 128


def timesteps_per_s(env, total_timesteps: int, seed: int) -> float:
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=ROLLOUT // env.num_envs,
        batch_size=BATCH_SIZE,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    with Timer() as timer:
        model.learn(total_timesteps=total_timesteps)
    return model.num_timesteps / timer.seconds


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timesteps", type=int, default=20_000)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # both runs on the same single thread, so neither is favoured by the 2 cores

    features = dow30_features()
    market = MarketArrays.from_features(features)
    finrl_np = timesteps_per_s(
        DummyVecEnv([lambda: finrl_numpy_env(features, market, if_train=True)]), args.timesteps, args.seed
    )
    ours = timesteps_per_s(EnvSpec(n_envs=args.n_envs).make_training_env(features), args.timesteps, args.seed)
    result = {
        "timesteps_per_s": round(ours, 1),
        "finrl_np_timesteps_per_s": round(finrl_np, 1),
        "ratio": round(ours / finrl_np, 2),
        "n_envs": args.n_envs,
        "timesteps": args.timesteps,
    }
    print(f"PPO, {args.timesteps} timesteps, rollout {ROLLOUT}, batch {BATCH_SIZE}, 1 torch thread")
    print(f"FinRL env_stocktrading_np (1 env)      : {finrl_np:10,.0f} timesteps/s")
    print(f"fast env, {args.n_envs} portfolios (costs+risk)  : {ours:10,.0f} timesteps/s")
    print(f"ratio {result['ratio']}x (goal 2x)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
