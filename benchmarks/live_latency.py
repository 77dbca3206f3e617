"""Latency of the live paper-trading loop: a week of real 1-minute bars, every ticker of the intraday file,
through streaming features, the agent, the shared risk manager, the local broker and the durable state store.

The peer, measured in the same process: a loop that rebuilds the batch features (``build_features``) over the
trailing bars at every decision, which is what the streaming features replace.

Run: ``python -m benchmarks.live_latency``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.common import SHARED_DATA, Timer
from trading_core.agents.decision_spec import DecisionSpec
from trading_core.agents.zoo import AgentConfig, train_agent
from trading_core.broker.simulated import SimulatedBroker
from trading_core.data.schema import feature_columns_of
from trading_core.envs.spec import EnvSpec
from trading_core.features.batch import build_features
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import LiveConfig, LiveTradingLoop
from trading_core.live.sources import fill_missing_bars, read_bars, replay
from trading_core.live.state import TradingStateStore


def _as_features_input(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"timestamp": "date"})


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup-minutes", type=int, default=300, help="bars that warm the features up")
    parser.add_argument("--peer-decisions", type=int, default=40, help="decisions timed for the batch peer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    minute_file = SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz"
    quarter_file = SHARED_DATA / "intraday_15min_us_equities_2019.csv.gz"
    if not minute_file.exists():
        raise SystemExit(f"benchmark data {minute_file} not found; set RL_TRADING_SHARED_DATA")

    minutes = fill_missing_bars(read_bars(minute_file))
    tickers = sorted(minutes["tic"].unique())
    # The agent learns on the 15-minute bars before the replayed week; only its speed matters here.
    quarters = fill_missing_bars(read_bars(quarter_file, tickers))
    training = build_features(
        _as_features_input(quarters[quarters["timestamp"] < minutes["timestamp"].min()])
    )
    env_spec = EnvSpec(n_envs=2)
    config = AgentConfig("ppo", 512, 3e-4, hyperparameters={"n_steps": 128, "batch_size": 64})
    policy = train_agent("ppo", training, env_spec, config, seed=args.seed)
    spec = DecisionSpec(tuple(tickers), tuple(feature_columns_of(training)), env_spec)

    times = minutes["timestamp"].unique()
    history = _as_features_input(minutes[minutes["timestamp"] < times[args.warmup_minutes]])
    week = minutes[minutes["timestamp"] >= times[args.warmup_minutes]]
    with tempfile.TemporaryDirectory() as folder:
        store = TradingStateStore.sqlite(Path(folder) / "state.db")
        store.create_schema()
        loop = LiveTradingLoop(
            LiveConfig(session_id="benchmark"),
            store,
            SimulatedBroker(tickers, env_spec.simulation),
            (DecisionEngine(policy, spec), "benchmark"),
            history=history,
        )
        with Timer() as timer:
            summary = loop.run(replay(week))
        store.close()
    latencies = np.asarray(summary.latencies_ms)

    # The peer: batch features over the trailing bars for a sample of the same decisions.
    peer = []
    rng = np.random.default_rng(args.seed)
    for index in np.sort(
        rng.choice(np.arange(args.warmup_minutes, len(times)), args.peer_decisions, replace=False)
    ):
        trailing = _as_features_input(
            minutes[minutes["timestamp"].between(times[index - args.warmup_minutes], times[index])]
        )
        started = time.perf_counter()
        build_features(trailing)
        peer.append((time.perf_counter() - started) * 1e3)
    peer_ms = float(np.percentile(peer, 50))
    symbol_bars = int(len(week))
    result = {
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "bars_per_s": round(symbol_bars / timer.seconds, 1),
        "decisions": int(len(latencies)),
        "minutes": int(summary.bars),
        "tickers": len(tickers),
        "batch_features_p50_ms": round(peer_ms, 3),
        "ratio_vs_batch_features": round(peer_ms / float(np.percentile(latencies, 50)), 2),
    }
    print(
        f"{summary.bars} minutes x {len(tickers)} tickers ({symbol_bars} bars) in {timer.seconds:.1f} s, "
        f"{len(latencies)} decisions; orders {summary.orders_sent}, fills {summary.fills}"
    )
    print(
        f"decision latency p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms (goal p99 < 5 ms); "
        f"rebuilding batch features alone takes {peer_ms:.1f} ms per decision"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
