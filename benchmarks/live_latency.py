"""Latency of the live paper-trading loop: a week of real 1-minute bars, every ticker of the intraday file,
through streaming features, the agent, the shared risk manager, the local broker and the durable state store.

The peer, measured in the same process: a loop that rebuilds the batch features (``build_features``) over the
trailing bars at every decision, which is what the streaming features replace.

The same week is replayed a second time for the default pipeline's agent, which also observes the CNN+LSTM
forecaster's outputs (default architecture, trained briefly: only its speed matters): ``forecaster_p99_ms`` is
the forecaster's part of a decision (its standardized input windows from the stream's arrays, one model call, the
outputs in return units: :meth:`DecisionEngine.learned_values`), ``forecaster_features_p99_ms`` the engine's whole
feature matrix (that part, the columns read from the features, and turning the frame the loop hands it into
arrays), ``forecaster_decision_p99_ms`` the whole decision of that agent as the loop times it.

Run: ``python -m benchmarks.live_latency``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
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
from trading_core.features.streaming import FeatureWindow
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import LiveConfig, LiveTradingLoop
from trading_core.live.sources import fill_missing_bars, read_bars, replay
from trading_core.live.state import TradingStateStore
from trading_core.models.cnn_lstm import (
    CNNLSTMConfig,
    TrainedForecaster,
    add_learned_features,
    learned_features,
    train_cnn_lstm,
)


class _TimedEngine(DecisionEngine):
    """A decision engine that records how long the forecaster's part of each decision takes, and its whole
    feature matrix (the forecaster's part, the columns read from the features, and turning a frame into arrays
    when it is handed one)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.forecaster_ms: list[float] = []
        self.features_ms: list[float] = []

    def learned_values(self, window: FeatureWindow) -> np.ndarray | None:
        started = time.perf_counter()
        values = super().learned_values(window)
        self.forecaster_ms.append((time.perf_counter() - started) * 1e3)
        return values

    def feature_matrix(self, recent: FeatureWindow | pd.DataFrame):
        started = time.perf_counter()
        matrix = super().feature_matrix(recent)
        self.features_ms.append((time.perf_counter() - started) * 1e3)
        return matrix


def _as_features_input(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"timestamp": "date"})


def _replay(engine: DecisionEngine, tickers: list[str], env_spec: EnvSpec, history, week):
    """Run the live loop over the week for one engine: (its summary, wall seconds)."""
    with tempfile.TemporaryDirectory() as folder:
        store = TradingStateStore.sqlite(Path(folder) / "state.db")
        store.create_schema()
        loop = LiveTradingLoop(
            LiveConfig(session_id="benchmark"),
            store,
            SimulatedBroker(tickers, env_spec.simulation),
            (engine, "benchmark"),
            history=history,
        )
        with Timer() as timer:
            summary = loop.run(replay(week))
        store.close()
    return summary, timer.seconds


def _forecaster(training: pd.DataFrame) -> TrainedForecaster:
    """The default architecture, fit for one epoch on the training bars (its last fifth validates)."""
    dates = np.sort(training["date"].unique())
    cut = dates[int(len(dates) * 0.8)]
    config = replace(CNNLSTMConfig(), max_epochs=1)
    return train_cnn_lstm(training[training["date"] < cut], training[training["date"] >= cut], config)


def _forecaster_agent(training, env_spec, config, tickers, seed) -> _TimedEngine:
    """The default pipeline's agent: PPO observing the technical features and the forecaster's outputs."""
    forecaster = _forecaster(training)
    learned = add_learned_features(training, learned_features(forecaster, training))
    policy = train_agent("ppo", learned, env_spec, config, seed=seed)
    spec = DecisionSpec(
        tuple(tickers),
        tuple(feature_columns_of(learned)),
        env_spec,
        forecaster_uri="models:/benchmark_cnn_lstm/1",
    )
    return _TimedEngine(policy, spec, forecaster)


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
    summary, seconds = _replay(DecisionEngine(policy, spec), tickers, env_spec, history, week)
    latencies = np.asarray(summary.latencies_ms)
    timed = _forecaster_agent(training, env_spec, config, tickers, args.seed)
    forecaster_summary, _ = _replay(timed, tickers, env_spec, history, week)
    forecaster_ms = np.asarray(timed.forecaster_ms)
    forecaster_latencies = np.asarray(forecaster_summary.latencies_ms)

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
        "bars_per_s": round(symbol_bars / seconds, 1),
        "decisions": int(len(latencies)),
        "minutes": int(summary.bars),
        "tickers": len(tickers),
        "batch_features_p50_ms": round(peer_ms, 3),
        "ratio_vs_batch_features": round(peer_ms / float(np.percentile(latencies, 50)), 2),
        "forecaster_p50_ms": round(float(np.percentile(forecaster_ms, 50)), 3),
        "forecaster_p99_ms": round(float(np.percentile(forecaster_ms, 99)), 3),
        "forecaster_features_p99_ms": round(float(np.percentile(timed.features_ms, 99)), 3),
        "forecaster_decision_p50_ms": round(float(np.percentile(forecaster_latencies, 50)), 3),
        "forecaster_decision_p99_ms": round(float(np.percentile(forecaster_latencies, 99)), 3),
        "forecaster_decisions": int(len(forecaster_latencies)),
    }
    print(
        f"{summary.bars} minutes x {len(tickers)} tickers ({symbol_bars} bars) in {seconds:.1f} s, "
        f"{len(latencies)} decisions; orders {summary.orders_sent}, fills {summary.fills}"
    )
    print(
        f"decision latency p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms (goal p99 < 5 ms); "
        f"rebuilding batch features alone takes {peer_ms:.1f} ms per decision"
    )
    print(
        f"with the CNN+LSTM forecaster: its part p99 {result['forecaster_p99_ms']:.2f} ms (goal < 5 ms), "
        f"the feature matrix p99 {result['forecaster_features_p99_ms']:.2f} ms, "
        f"the whole decision p99 {result['forecaster_decision_p99_ms']:.2f} ms"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
