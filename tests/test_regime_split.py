"""Figures split by market regime attribute each return to the regime known when it was decided."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trading_core.agents.training import PPOConfig
from trading_core.agents.zoo import AgentConfig
from trading_core.data.splits import DatasetSplits, apply_split, make_date_split
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.metrics import compute_metrics, sharpe_ratio
from trading_core.evaluation.regime_split import (
    REGIME_FIGURE_COLUMNS,
    compare_by_regime,
    decision_regimes,
    figures_by_regime,
    regime_shift_of_bars,
    regime_shift_since,
    returns_by_regime_sharpe,
)
from trading_core.features.batch import build_features
from trading_core.regimes.history import fit_market_regimes
from trading_core.regimes.model import RegimeModel, market_signals
from trading_core.regimes.settings import RegimeConfig


def close_curve(bars: pd.DataFrame, tic: str) -> pd.Series:
    """One ticker's real closes as an equity curve indexed by date."""
    own = bars[bars["tic"] == tic]
    return pd.Series(own["close"].to_numpy(), index=pd.DatetimeIndex(own["date"]), name=tic)


def trailing_volatility_regimes(curve: pd.Series, window: int = 21) -> pd.Series:
    """A causal two-regime label for tests: 1 when the trailing volatility tops its expanding median."""
    vol = curve.pct_change().rolling(window).std()
    labels = (vol > vol.expanding().median()).astype(int)
    return labels[vol.notna()]


def test_each_return_belongs_to_the_regime_of_the_close_before_it_synthetic():
    dates = pd.bdate_range("2021-01-04", periods=6)
    equity = pd.Series([100.0, 110.0, 99.0, 99.0, 108.9, 98.01], index=dates)  # synthetic
    regimes = pd.Series([0, 0, 1, 1, 0, 1], index=dates)
    labels = decision_regimes(equity, regimes)
    # The return into day t follows the regime of day t-1.
    assert labels.tolist() == [0, 0, 1, 1, 0]
    table = figures_by_regime(equity, regimes)
    assert table.index.tolist() == [0, 1] and list(table.columns) == list(REGIME_FIGURE_COLUMNS)
    returns = equity.pct_change().iloc[1:]
    calm, turbulent = returns.iloc[[0, 1, 4]], returns.iloc[[2, 3]]  # +10 %, -10 %, -10 % / 0 %, +10 %
    assert table.loc[0, "days"] == 3 and table.loc[1, "days"] == 2
    assert table["share_of_days"].tolist() == pytest.approx([0.6, 0.4])
    assert table.loc[0, "sharpe"] == pytest.approx(sharpe_ratio(calm))
    assert table.loc[1, "sharpe"] == pytest.approx(sharpe_ratio(turbulent))
    assert table.loc[0, "max_drawdown"] == pytest.approx(1 - 0.9 * 0.9)  # the calm days' two losses chained
    assert table.loc[1, "max_drawdown"] == 0.0
    assert table.loc[0, "hit_rate"] == pytest.approx(1 / 3)
    assert table.loc[1, "hit_rate"] == 1.0  # the flat day does not count
    assert table.loc[1, "annual_return"] == pytest.approx(1.1 ** (252 / 2) - 1)


def test_no_lookahead_truncate_and_compare(slice_bars: pd.DataFrame):
    curve = close_curve(slice_bars, "JPM")
    regimes = trailing_volatility_regimes(curve)
    full = decision_regimes(curve, regimes)
    for cut in (curve.index[100], curve.index[400], curve.index[-2]):
        truncated = decision_regimes(curve[:cut], regimes[:cut])
        pd.testing.assert_series_equal(truncated, full[:cut])
    # The regime at the last close decides no return of the curve: flipping it changes nothing.
    flipped = regimes.copy()
    flipped.iloc[-1] = 1 - flipped.iloc[-1]
    pd.testing.assert_frame_equal(figures_by_regime(curve, regimes), figures_by_regime(curve, flipped))
    # Flipping the regime of an earlier close moves exactly the next day's return.
    day = 300
    flipped = regimes.copy()
    flipped.loc[curve.index[day]] = 1 - flipped.loc[curve.index[day]]
    moved = decision_regimes(curve, flipped) != full
    assert moved[moved].index.tolist() == [curve.index[day + 1]]


def test_real_curve_figures_are_the_metrics_of_each_regimes_returns(slice_bars: pd.DataFrame):
    curve = close_curve(slice_bars, "AAPL")
    regimes = trailing_volatility_regimes(curve)
    table = figures_by_regime(curve, regimes)
    labels = decision_regimes(curve, regimes)
    assert table["days"].sum() == labels.notna().sum() == len(curve) - 1 - 21
    assert table["share_of_days"].sum() == pytest.approx(1.0)
    returns = curve.pct_change().iloc[1:]
    for regime in (0, 1):
        own = returns[(labels == regime).fillna(False)]
        chained = pd.Series(np.concatenate([[1.0], np.cumprod(1 + own.to_numpy())]))
        metrics = compute_metrics(chained)
        assert table.loc[regime, "sharpe"] == pytest.approx(metrics.sharpe)
        assert table.loc[regime, "annual_volatility"] == pytest.approx(own.std() * np.sqrt(252))
        assert table.loc[regime, "max_drawdown"] == pytest.approx(metrics.max_drawdown)
    # Real 2015-2019 AAPL: its turbulent days swing more than its calm ones.
    assert table.loc[1, "annual_volatility"] > table.loc[0, "annual_volatility"]


def test_regimes_without_days_are_reported_when_asked():
    dates = pd.bdate_range("2021-01-04", periods=5)
    equity = pd.Series([1.0, 1.01, 1.0, 1.02, 1.03], index=dates)  # synthetic
    table = figures_by_regime(equity, pd.Series(0, index=dates), n_regimes=3)
    assert table.index.tolist() == [0, 1, 2]
    assert table["days"].tolist() == [4, 0, 0]
    assert table.loc[[1, 2], "sharpe"].isna().all()
    # Returns before the first label have no decision regime and count nowhere.
    late = figures_by_regime(equity, pd.Series([1, 1], index=dates[2:4]), n_regimes=2)
    assert late["days"].tolist() == [0, 2]


def test_returns_only_split_matches_the_equity_split(slice_bars: pd.DataFrame):
    curve = close_curve(slice_bars, "KO")
    regimes = trailing_volatility_regimes(curve)
    test = curve[curve.index >= "2018-01-01"]
    from_equity = figures_by_regime(test, regimes, n_regimes=2)["sharpe"].to_dict()
    from_returns = returns_by_regime_sharpe(test.pct_change().dropna(), regimes, n_regimes=2)
    assert from_returns == pytest.approx(from_equity)
    nothing = returns_by_regime_sharpe(test.iloc[:0], regimes, n_regimes=2)
    assert list(nothing) == [0, 1] and np.isnan(list(nothing.values())).all()


def test_compare_by_regime_puts_curves_side_by_side(slice_bars: pd.DataFrame):
    agent, benchmark = close_curve(slice_bars, "MSFT"), close_curve(slice_bars, "KO")
    regimes = trailing_volatility_regimes(benchmark)
    table = compare_by_regime({"agent": agent, "buy_and_hold": benchmark}, regimes, n_regimes=2)
    assert table[["regime", "curve"]].values.tolist() == [
        [0, "agent"],
        [0, "buy_and_hold"],
        [1, "agent"],
        [1, "buy_and_hold"],
    ]
    assert table.loc[3, "sharpe"] == figures_by_regime(benchmark, regimes, 2).loc[1, "sharpe"]


@pytest.mark.parametrize(
    ("regimes", "message"),
    [
        (pd.Series([0, np.nan, 1], index=pd.bdate_range("2021-01-04", periods=3)), "regimes holds NaN"),
        (pd.Series([0, -1, 1], index=pd.bdate_range("2021-01-04", periods=3)), "non-negative integer"),
        (pd.Series([0, 0.5, 1], index=pd.bdate_range("2021-01-04", periods=3)), "non-negative integer"),
        (pd.Series([0, 1, 1]), "regimes must be indexed by date"),
        (pd.Series([0, 1, 1], index=pd.bdate_range("2021-01-04", periods=3)[::-1]), "increasing"),
    ],
)
def test_bad_regimes_are_refused_in_one_line(regimes: pd.Series, message: str):
    equity = pd.Series([1.0, 1.1, 1.2], index=pd.bdate_range("2021-01-04", periods=3))  # synthetic
    with pytest.raises(ValueError, match=message):
        figures_by_regime(equity, regimes)


def test_bad_equity_and_counts_are_refused():
    dates = pd.bdate_range("2021-01-04", periods=3)
    regimes = pd.Series([0, 1, 1], index=dates)
    with pytest.raises(ValueError, match="equity must be positive"):
        figures_by_regime(pd.Series([1.0, 0.0, 1.0], index=dates), regimes)
    with pytest.raises(ValueError, match="equity holds NaN"):
        figures_by_regime(pd.Series([1.0, np.nan, 1.0], index=dates), regimes)
    with pytest.raises(ValueError, match="label 1 but n_regimes is 1"):
        figures_by_regime(pd.Series([1.0, 1.1, 1.2], index=dates), regimes, n_regimes=1)
    with pytest.raises(ValueError, match="n_regimes must be at least 1"):
        figures_by_regime(pd.Series([1.0, 1.1, 1.2], index=dates), regimes, n_regimes=0)
    with pytest.raises(ValueError, match="curves must name"):
        compare_by_regime({}, regimes, 2)


def synthetic_filtered(labels: list[int]) -> pd.DataFrame:
    """Synthetic filtered regimes (not a model's output): the given labels on consecutive business days."""
    return pd.DataFrame(
        {"regime": labels}, index=pd.bdate_range("2021-01-04", periods=len(labels), name="date")
    )


def test_a_lasting_switch_after_training_is_a_change_and_a_short_spell_is_not_synthetic():
    # Training ends on day 9 in regime 0; a 2-day spell of 1 is noise; then 1 holds 6 days.
    filtered = synthetic_filtered([0] * 10 + [1, 1] + [0] * 4 + [1] * 6)
    since = filtered.index[9]
    shift = regime_shift_since(filtered, since, min_duration=5)
    assert (shift.regime_then, shift.regime_now, shift.current_regime) == (0, 1, 1)
    assert shift.changed
    assert shift.changes["date"].tolist() == [filtered.index[16]]
    assert shift.changes["confirmed_on"].tolist() == [filtered.index[20]]
    assert shift.key == f"0-to-1-since-{filtered.index[16].date()}"
    assert "regime 0 at the end of training" in shift.describe() and "6 dates" in shift.describe()
    # One date short of lasting: no change yet, though today's regime is 1.
    early = regime_shift_since(filtered.iloc[:-2], since, min_duration=5)
    assert not early.changed and early.current_regime == 1 and early.key == "" and early.describe() == ""
    # Switched and back again: the lasting changes are listed, but the regime in force is the one trained in.
    back = regime_shift_since(synthetic_filtered([0] * 10 + [1] * 5 + [0] * 5), since, min_duration=5)
    assert not back.changed and len(back.changes) == 2


def test_the_regime_at_training_end_reads_no_later_date_synthetic():
    # A spell of 1 that starts 3 dates before the end of training lasts only after it: not known at the end.
    filtered = synthetic_filtered([0] * 10 + [1] * 8)
    since = filtered.index[12]
    shift = regime_shift_since(filtered, since, min_duration=5)
    truncated = regime_shift_since(filtered.loc[:since], since, min_duration=5)
    assert shift.regime_then == truncated.regime_then == truncated.regime_now == 0
    assert shift.changed and shift.changes["date"].tolist() == [filtered.index[10]]
    with pytest.raises(ValueError, match="must start by since"):
        regime_shift_since(filtered.iloc[5:], filtered.index[2], min_duration=5)
    with pytest.raises(ValueError, match="min_duration must be at least 1"):
        regime_shift_since(filtered, since, min_duration=0)
    with pytest.raises(ValueError, match="lacks the column 'regime'"):
        regime_shift_since(filtered.rename(columns={"regime": "state"}), since, min_duration=5)


def test_the_fitted_model_filtered_forward_sees_the_2018_volatility(slice_bars: pd.DataFrame):
    # Fit on 2015-2016 (real bars), then filter forward through the February 2018 volatility shock.
    regimes = fit_market_regimes(
        slice_bars, pd.Timestamp("2015-01-02"), pd.Timestamp("2016-12-30"), RegimeConfig(n_restarts=1)
    )
    model = RegimeModel.from_dict(regimes.model)  # the stored dict, as monitoring reads it
    bars = slice_bars[slice_bars["date"] <= "2018-03-29"]
    shift = regime_shift_of_bars(model, bars, "2017-12-29", min_duration=5)
    pd.testing.assert_series_equal(
        model.filter(market_signals(bars))["regime"], regimes.frame.loc[:"2018-03-29", "regime"]
    )
    assert shift.regime_then == 0  # a calm 2017
    assert shift.changed and shift.regime_now == 1
    # Measured: the turbulent regime starts on 2018-02-05 (the Dow's 4.6 % fall) and lasts from 2018-02-09.
    first = shift.changes.iloc[0]
    assert (first["date"], first["confirmed_on"]) == (pd.Timestamp("2018-02-05"), pd.Timestamp("2018-02-09"))


class FixedActionPolicy:
    """A policy that always answers the same action (not a trained agent)."""

    def __init__(self, size: int) -> None:
        self.action = np.full(size, 0.5, dtype=np.float32)

    def predict(self, observation: np.ndarray, state=None, episode_start=None, deterministic: bool = True):
        return self.action, state


class EvaluationRegistry:
    """The registry calls the backtest asset makes, in memory; what it logs is kept to be read."""

    model_name = "rl_trading_agent"

    def record_gate(self, record, model_name: str | None = None, checks=()) -> None:
        self.set_version_tags(record.version, {record.tag_key: record.tag_value()}, model_name)

    def artifact_links(self, run_id: str, artifact_path: str, ui_url: str):
        from resources.mlflow_registry import ArtifactLinks

        return ArtifactLinks(f"mlflow/{run_id}/{artifact_path}", f"file/{artifact_path}", f"/{artifact_path}")

    def __init__(self, policy: FixedActionPolicy) -> None:
        self.policy = policy
        self.metrics: dict[str, float] = {}
        self.tables: dict[str, object] = {}
        self.tags: dict[str, str] = {}

    def load_policy(self, version: str) -> FixedActionPolicy:
        return self.policy

    def log_evaluation(self, run_id, metrics, files, tables=None) -> None:
        self.metrics |= metrics
        self.tables |= tables or {}

    def set_version_tags(self, version: str, tags: dict[str, str], model_name: str | None = None) -> None:
        self.tags |= tags


def test_the_backtest_asset_splits_agent_and_buy_and_hold_by_regime(slice_bars: pd.DataFrame):
    """The backtest asset on real 2017-2019 bars: a fixed-action policy against buy-and-hold, per regime."""
    # The asset layer is imported here so the domain tests above do not load Dagster.
    import dagster as dg

    from resources.mlflow_registry import RegisteredVersion
    from trading_assets.evaluation import PromotionSettings, backtest
    from trading_assets.selection import RegisteredCandidate
    from trading_assets.training import TrainedAgent

    bars = slice_bars[slice_bars["date"] >= "2017-01-01"]
    frame = build_features(bars, use_turbulence=False)
    split = make_date_split(frame["date"], train_end="2017-12-29", validation_end="2018-06-29")
    periods = apply_split(frame, split)
    splits = DatasetSplits(split, periods["train"], periods["validation"], periods["test"])
    regimes = fit_market_regimes(bars, split.train_start, split.train_end, RegimeConfig(n_restarts=1))
    env_spec = EnvSpec(n_envs=1)
    agent = TrainedAgent(
        run_id="run-1",
        model_uri="models:/fixed",
        algorithm="ppo",
        seed=0,
        env_spec=env_spec,
        feature_columns=tuple(splits.feature_columns),
        ppo_config=PPOConfig(),
        data_sha256="",
        validation_metrics=compute_metrics(pd.Series([1.0, 1.01])),
    )
    registered = RegisteredCandidate(
        model=RegisteredVersion("rl_trading_agent", "1", "run-1", "models:/fixed"),
        candidate="ppo",
        algorithm="ppo",
        seed=0,
        agent_config=AgentConfig("ppo", total_timesteps=256, learning_rate=3e-4),
        dagster_run_id="direct",
        leaderboard_run_id="direct",
        env_spec=env_spec,
    )
    registry = EvaluationRegistry(FixedActionPolicy(env_spec.engine_action.action_size(len(splits.tickers))))
    outputs = list(
        backtest(
            dg.build_asset_context(),
            config=PromotionSettings(),
            registered_model=registered,
            trained_agent=agent,
            learned_features=splits,
            market_regimes=regimes,
            model_registry=registry,
        )
    )
    report = next(o for o in outputs if isinstance(o, dg.Output) and o.output_name == "backtest")
    expected = compare_by_regime(
        {"agent": report.value.equity, "buy_and_hold": report.value.benchmark_equity},
        regimes.frame["regime"],
        2,
    )
    logged = pd.DataFrame(registry.tables["test_by_regime.json"])
    pd.testing.assert_frame_equal(logged, expected)
    assert logged["days"].sum() == 2 * (len(report.value.equity) - 1)  # every test return has its regime
    header = report.metadata["by_regime"].value.splitlines()[0]
    assert [cell.strip() for cell in header.strip("|").split("|")][:3] == ["regime", "curve", "days"]
    for regime in (0, 1):
        row = expected[(expected["regime"] == regime) & (expected["curve"] == "agent")].iloc[0]
        assert registry.metrics[f"test_sharpe_regime_{regime}"] == row["sharpe"]
        bench = expected[(expected["regime"] == regime) & (expected["curve"] == "buy_and_hold")].iloc[0]
        assert registry.metrics[f"test_buy_and_hold_sharpe_regime_{regime}"] == bench["sharpe"]
