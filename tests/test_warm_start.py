"""Warm starts: fine-tuning a trained PPO on the latest dates, the walk-forward comparison with training from
scratch, its verdict, and the ``auto`` start mode the weekly schedule asks for."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg
import mlflow
import pandas as pd
import pytest
import torch

from pipelines.jobs import weekly_data_cutoff
from pipelines.schedules import weekly_retraining_schedule
from resources.mlflow_registry import (
    ChampionAgent,
    MlflowRegistryResource,
    RegisteredVersion,
    StartModeVerdict,
)
from trading_assets.evaluation import WalkForwardSettings, walk_forward
from trading_assets.training import TrainedAgent, TrainingSettings, train_candidate
from trading_core.agents.training import (
    PPOConfig,
    WarmStartRefused,
    decide_start_mode,
    fine_tune_ppo,
    train_ppo,
)
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.metrics import compute_metrics
from trading_core.evaluation.walk_forward import (
    WalkForwardConfig,
    WarmStartBudget,
    run_walk_forward,
    start_mode_verdict,
    walk_forward_windows,
)
from trading_core.features.batch import build_features
from trading_core.market.arrays import MarketArrays, as_market
from trading_core.runtime.distributed import single_torch_thread

SPEC = EnvSpec(n_envs=2)
TINY = PPOConfig(total_timesteps=128, n_steps=64, batch_size=32)
TINY_TRAINING = {"total_timesteps": 128, "n_steps": 64, "batch_size": 32, "n_envs": 2, "seed": 3}
BUDGET = WarmStartBudget(timesteps=64, recent_dates=60)
CUT = pd.Timestamp("2018-12-31")


@pytest.fixture(scope="module")
def features(slice_bars) -> pd.DataFrame:
    return build_features(slice_bars)


@pytest.fixture(scope="module")
def market(features) -> MarketArrays:
    return as_market(features)


@pytest.fixture(scope="module")
def source(market):
    """A tiny PPO trained on the first 300 dates: the agent every warm start here continues."""
    with single_torch_thread():
        return train_ppo(market.between(market.dates[0], market.dates[299]), SPEC, TINY, seed=1)


def _state(policy) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in policy.model.policy.state_dict().items()}


def _same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_fine_tune_is_seeded_continues_the_count_and_leaves_the_source_alone(market, source):
    window = market.between(market.dates[0], market.dates[399])
    before = _state(source)
    with single_torch_thread():
        tuned = [
            fine_tune_ppo(source, window, SPEC, TINY, timesteps=64, seed=seed, recent_dates=60)
            for seed in (5, 5, 6)
        ]
    assert _same(_state(tuned[0]), _state(tuned[1]))  # same seed, same weights
    assert not _same(_state(tuned[0]), _state(tuned[2]))
    assert not _same(_state(tuned[0]), before)  # it learned
    assert _same(_state(source), before)  # the source is untouched
    assert tuned[0].model.num_timesteps == source.model.num_timesteps + 64  # reset_num_timesteps=False
    assert tuned[0].learning_curve[: len(source.learning_curve)] == source.learning_curve
    assert tuned[0].learning_curve[-1][0] == tuned[0].model.num_timesteps
    # The normaliser is the whole window's (as a scratch agent's), not the source's nor the recent dates'.
    assert tuned[0].normalizer == SPEC.fit_normalizer(window)
    assert tuned[0].normalizer != source.normalizer


def test_a_warm_start_refuses_what_it_cannot_continue(market, source, features):
    window = market.between(market.dates[0], market.dates[399])
    three = as_market(features[features["tic"] != "KO"]).between(market.dates[0], market.dates[399])
    cases = [
        ({"train_features": three}, "observation space changed"),
        (
            {"source_tickers": ("AAPL", "JPM", "MSFT", "XOM")},
            r"universe changed \(new \['KO'\], gone \['XOM'\]",
        ),
        ({"source_train_end": market.dates[450]}, "has seen the dates the new agent is judged on"),
        ({"ppo_config": PPOConfig(n_steps=64, batch_size=32, net_arch=(32,))}, "network"),
        ({"env_spec": EnvSpec(n_envs=2, normalization=None)}, "normalised observations"),
        ({"source": object()}, "not a single trained agent"),
    ]
    for change, message in cases:
        arguments = {"source": source, "train_features": window, "env_spec": SPEC, "ppo_config": TINY}
        with pytest.raises(WarmStartRefused, match=f"warm start impossible: .*{message}"):
            fine_tune_ppo(**{**arguments, **change}, timesteps=64, seed=0)
    with pytest.raises(ValueError, match="timesteps must be a positive integer, got 0"):
        fine_tune_ppo(source, window, SPEC, TINY, timesteps=0, seed=0)


@pytest.fixture(scope="module")
def windows(features):
    return walk_forward_windows(features.loc[features["date"] <= CUT, "date"], n_windows=2, test_size=60)


@pytest.fixture(scope="module")
def compared(features, windows):
    cut = features[features["date"] <= CUT]
    return run_walk_forward(cut, windows, SPEC, TINY, seed=3, warm_start=BUDGET)


def test_the_comparison_trains_both_on_the_same_windows_and_seeds(compared, windows):
    comparison = compared.comparison
    assert comparison.windows == tuple(windows) == compared.windows
    assert comparison.scratch == compared.results  # the walk-forward's own scratch agents
    assert comparison.warm_start[0] is None and comparison.warm_start_sources[0] == "no source: first window"
    warm = comparison.warm_start[1]
    assert comparison.warm_start_sources[1] == "window 1 scratch"
    pd.testing.assert_index_equal(warm.equity.index, comparison.scratch[1].equity.index)  # same test dates
    assert warm.metrics.sharpe != comparison.scratch[1].metrics.sharpe
    assert (comparison.scratch_timesteps, comparison.warm_start_timesteps) == (128, 64)
    assert comparison.scratch_seconds[1] > 0 and comparison.warm_start_seconds[1] > 0
    expected = start_mode_verdict([r.metrics.sharpe for r in comparison.scratch], [None, warm.metrics.sharpe])
    assert (comparison.verdict, comparison.reason) == expected
    table = comparison.table()
    assert list(table["warm_start_source"]) == list(comparison.warm_start_sources)
    assert table["warm_start_sharpe"].iloc[1] == warm.metrics.sharpe
    figures = comparison.metrics()
    assert figures["window_2_warm_start_sharpe"] == warm.metrics.sharpe
    assert figures["compared_windows"] == 1
    assert "window_1_warm_start_sharpe" not in figures


def test_the_comparison_reads_nothing_after_its_windows(compared, features, windows):
    # Truncate-and-compare: the same windows over the full data (a year more) give the same agents.
    full = run_walk_forward(features, windows, SPEC, TINY, seed=3, warm_start=BUDGET)
    for ours, theirs in zip(
        compared.comparison.scratch + compared.comparison.warm_start[1:],
        full.comparison.scratch + full.comparison.warm_start[1:],
        strict=True,
    ):
        pd.testing.assert_series_equal(ours.equity, theirs.equity)
    assert full.comparison.verdict == compared.comparison.verdict


def test_an_initial_policy_seeds_every_windows_warm_start(features, windows, source):
    assert source.normalizer is not None and windows[0].train_end >= pd.Timestamp("2016-03-01")
    cut = features[features["date"] <= CUT]
    result = run_walk_forward(
        cut,
        windows,
        SPEC,
        TINY,
        seed=3,
        warm_start=BUDGET,
        initial_policy=source,
        initial_policy_name="champion",
    )
    assert result.comparison.warm_start_sources == ("champion", "window 1 warm start")
    assert all(warm is not None for warm in result.comparison.warm_start)


def test_the_verdict_needs_a_positive_median_gain():
    assert start_mode_verdict([0.5, 0.2, 0.1], [0.6, 0.3, 0.0])[0] == "warm_start"  # gains +.1 +.1 -.1
    assert start_mode_verdict([0.5, 0.2], [0.4, 0.3])[0] == "scratch"  # median gain 0: a tie
    assert start_mode_verdict([0.5, 0.2, 9.0], [None, 0.3, None])[0] == "warm_start"  # compared windows only
    verdict, reason = start_mode_verdict([0.5], [None])
    assert verdict == "scratch" and "no window has both" in reason
    with pytest.raises(ValueError, match="scratch_sharpes has 2 windows, warm_start_sharpes 1"):
        start_mode_verdict([0.1, 0.2], [0.3])


def test_the_start_mode_decision():
    assert decide_start_mode("scratch", "warm_start", "m/1").mode == "scratch"
    assert decide_start_mode("auto", None, "m/1") == decide_start_mode("auto", None, None)
    assert "no walk-forward start-mode verdict" in decide_start_mode("auto", None, "m/1").reason
    assert decide_start_mode("auto", "scratch", "m/1").mode == "scratch"
    no_champion = decide_start_mode("auto", "warm_start", None)
    assert no_champion.mode == "scratch" and "no champion" in no_champion.reason
    assert decide_start_mode("auto", "warm_start", "m/1").mode == "warm_start"
    assert decide_start_mode("warm_start", None, "m/1").mode == "warm_start"
    with pytest.raises(ValueError, match="start_mode warm_start needs a champion"):
        decide_start_mode("warm_start", None, None)
    with pytest.raises(ValueError, match="start_mode must be one of scratch, warm_start, auto, got 'hot'"):
        decide_start_mode("hot", None, None)
    with pytest.raises(ValueError, match="warm_start_timesteps must be a positive integer"):
        WalkForwardConfig(warm_start_timesteps=0)


def test_the_weekly_schedule_asks_for_auto_on_the_weeks_partition():
    monday = dt.datetime(2021, 6, 14, 6, 0, tzinfo=ZoneInfo("America/New_York"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("retraining_weeks", ["2021-06-04", "2021-06-11"])
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=monday) as context:
            request = weekly_retraining_schedule(context)
    assert request.partition_key == "2021-06-11"  # the week that just ended, keyed by its last trading day
    config = request.run_config
    assert config["ops"]["trained_agent"]["config"] == {"start_mode": "auto"}
    partition = weekly_data_cutoff.get_run_config_for_partition_key("2021-06-11")
    assert config["ops"]["raw_daily_bars"] == partition["ops"]["raw_daily_bars"]
    assert TrainingSettings(**config["ops"]["trained_agent"]["config"]).start_mode == "auto"
    assert (weekly_retraining_schedule.cron_schedule, weekly_retraining_schedule.execution_timezone) == (
        "0 6 * * 1",
        "America/New_York",
    )


class _Registry:
    """The two registry reads of the ``auto`` start mode."""

    def __init__(self, verdict: str | None, champion: ChampionAgent | None) -> None:
        self.verdict, self.champion = verdict, champion

    def latest_start_mode_verdict(self) -> StartModeVerdict | None:
        return None if self.verdict is None else StartModeVerdict(self.verdict, "test", "run")

    def load_champion(self) -> ChampionAgent | None:
        return self.champion


def _champion(policy, train_end: str | None = None) -> ChampionAgent:
    return ChampionAgent(RegisteredVersion("rl_trading_agent", "7", "run", "uri"), policy, None, train_end)


def test_auto_trains_from_scratch_without_a_champion_or_when_the_warm_start_is_refused(market, source):
    train = market.between(market.dates[0], market.dates[399])
    lines: list[str] = []
    auto = TrainingSettings(**TINY_TRAINING, start_mode="auto", warm_start_timesteps=64, warm_start_dates=60)
    spec = auto.env_spec()
    policy, decision, origin = train_candidate(auto, _Registry("warm_start", None), train, spec, lines.append)
    assert (decision.mode, origin) == ("scratch", "") and "no champion" in decision.reason
    assert any("start mode scratch: auto: verdict warm_start but no champion" in line for line in lines)
    with single_torch_thread():
        reference = train_ppo(train, spec, auto.ppo_config(), seed=3)
    assert _same(_state(policy), _state(reference))  # exactly the scratch agent
    # A champion that trained past this run's training end would leak: refused, auto falls back.
    late = _Registry("warm_start", _champion(source, train_end=str(market.dates[450].date())))
    _, decision, origin = train_candidate(auto, late, train, spec, lines.append)
    assert decision.mode == "scratch" and "warm start impossible" in decision.reason and origin == ""
    with pytest.raises(WarmStartRefused, match="has seen the dates"):
        train_candidate(auto.model_copy(update={"start_mode": "warm_start"}), late, train, spec, lines.append)
    fits = _Registry("warm_start", _champion(source, train_end=str(market.dates[299].date())))
    tuned, decision, origin = train_candidate(auto, fits, train, spec, lines.append)
    assert (decision.mode, origin) == ("warm_start", "rl_trading_agent/7")
    assert tuned.model.num_timesteps == source.model.num_timesteps + 64


def test_the_walk_forward_asset_records_the_verdict_that_auto_reads_back(tmp_path, features):
    registry = MlflowRegistryResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri()
    )
    assert registry.latest_start_mode_verdict() is None
    assert registry.load_champion() is None
    older = registry.log_trial("older", {}, {}, kind="candidate")
    registry.record_start_mode_verdict(older, "warm_start", "an older verdict")
    run_id = registry.log_trial("candidate", {}, {}, kind="candidate")
    agent = TrainedAgent(
        run_id=run_id,
        model_uri="unused",
        algorithm="PPO",
        seed=3,
        env_spec=SPEC,
        feature_columns=(),
        ppo_config=TINY,
        data_sha256="unused",
        validation_metrics=compute_metrics(
            pd.Series([1.0, 1.01, 1.0], index=pd.bdate_range("2019-01-01", periods=3))
        ),
    )
    settings = WalkForwardSettings(
        n_windows=2, test_dates=60, timesteps_per_window=128, use_ray=False, warm_start_timesteps=64
    )
    cut = features[features["date"] <= CUT]
    out = walk_forward(dg.build_asset_context(), settings, cut, agent, registry)
    comparison = out.value.comparison
    assert out.metadata["start_mode_verdict"].value == comparison.verdict
    assert "warm_start_source" in out.metadata["start_modes"].value
    assert registry.latest_start_mode_verdict() == StartModeVerdict(
        comparison.verdict, comparison.reason, run_id
    )
    tracked = mlflow.MlflowClient(tracking_uri=registry.tracking_uri).get_run(run_id).data
    assert tracked.metrics["walk_forward_start_mode_window_2_warm_start_sharpe"] == pytest.approx(
        comparison.warm_start[1].metrics.sharpe
    )
    assert tracked.tags["retraining.start_mode_verdict"] == comparison.verdict
    with pytest.raises(ValueError, match="verdict must be scratch or warm_start, got 'maybe'"):
        registry.record_start_mode_verdict(older, "maybe", "")
