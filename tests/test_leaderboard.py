"""The leaderboard ranks candidates on validation only and reports test figures after costs."""

import numpy as np
import pandas as pd
import pytest

from trading_core.evaluation.leaderboard import (
    LEADERBOARD_COLUMNS,
    CandidateRun,
    Leaderboard,
    PeriodFigures,
    regime_sharpe_column,
)
from trading_core.evaluation.metrics import compute_metrics, sharpe_ratio
from trading_core.evaluation.promotion import yardstick_gate
from trading_core.evaluation.regime_split import figures_by_regime
from trading_core.market.limits import TradingState

DATES = pd.bdate_range("2020-01-01", periods=120)


def synthetic_equity(drift: float, seed: int, vol: float = 0.01) -> pd.Series:
    """A synthetic equity curve (not market data): geometric random walk."""
    returns = np.random.default_rng(seed).normal(drift, vol, len(DATES))
    returns[0] = 0.0
    return pd.Series(100_000 * np.cumprod(1 + returns), index=DATES)


def run(name: str, kind: str, seed: int | None, validation_drift: float, test_drift: float) -> CandidateRun:
    key = seed or 0
    return CandidateRun(
        name,
        kind,
        seed,
        PeriodFigures.of_equity(synthetic_equity(validation_drift, key)),
        PeriodFigures.of_equity(synthetic_equity(test_drift, key + 1000)),
    )


def test_period_figures_match_the_metrics_and_count_halted_days():
    equity = synthetic_equity(0.001, 1)
    costs = pd.Series(5.0, index=DATES)
    states = pd.Series(int(TradingState.ACTIVE), index=DATES)
    states.iloc[10:17] = int(TradingState.HALTED)
    figures = PeriodFigures.of_equity(equity, costs=costs, risk_states=states)
    metrics = compute_metrics(equity, costs=costs)
    assert figures.sharpe == metrics.sharpe
    assert figures.cost_drag == metrics.cost_drag > 0
    assert figures.days_halted == 7
    assert len(figures.returns) == len(DATES) - 1


def test_validation_p25_picks_the_steady_recipe_over_one_lucky_seed():
    runs = [
        # "lucky": one brilliant seed, two losers; "steady": every seed decent.
        run("lucky", "agent", 1, 0.004, -0.002),
        run("lucky", "agent", 2, -0.002, 0.004),
        run("lucky", "agent", 3, -0.002, 0.004),
        run("steady", "agent", 1, 0.0015, 0.0),
        run("steady", "agent", 2, 0.0015, 0.0),
        run("steady", "agent", 3, 0.0015, 0.0),
        run("min_variance", "allocator", None, 0.001, 0.001),
        run("equal_weight", "allocator", None, 0.0005, 0.001),
    ]
    board = Leaderboard(tuple(runs), n_trials=3)
    assert board.n_trials == len(runs)  # every run here is a trial
    assert board.pick() == "steady"
    assert board.pick_allocator() == "min_variance"
    table = board.table()
    assert table["validation_sharpe_p25"].is_monotonic_decreasing
    assert table.loc[table["kind"] == "agent", "candidate"].iloc[0] == "steady"
    assert table.set_index("candidate").loc["lucky", "runs"] == 3
    # The test columns are reported, not used: lucky's test p25 does not change the pick.
    assert board.test_p25("lucky") == pytest.approx(np.quantile([r.test.sharpe for r in runs[:3]], 0.25))
    assert 0.0 <= table["deflated_sharpe"].min() <= table["deflated_sharpe"].max() <= 1.0


def test_representative_is_the_best_validation_run():
    runs = (run("ppo", "agent", 7, -0.001, 0.0), run("ppo", "agent", 8, 0.002, 0.0))
    assert Leaderboard(runs, 1).representative("ppo").seed == 8


def test_no_registrable_candidate_gives_no_pick_and_unknown_names_are_named():
    board = Leaderboard((run("hrp", "allocator", None, 0.001, 0.001),), 1)
    assert board.pick() is None
    with pytest.raises(KeyError, match="no candidate 'ppo'.*hrp"):
        board.runs_of("ppo")
    with pytest.raises(ValueError, match="kind must be one of"):
        run("x", "oracle", None, 0.0, 0.0)


def test_yardstick_gate_needs_p25_above_both():
    passed = yardstick_gate("sac", 0.9, 3, 0.5, "hrp", 0.8)
    assert [r.name for r in passed] == ["p25_beats_buy_and_hold", "p25_beats_allocator"]
    assert all(r.passed for r in passed)
    failed = yardstick_gate("sac", 0.7, 3, 0.5, "hrp", 0.8)
    assert [r.passed for r in failed] == [True, False]
    assert "hrp" in failed[1].description
    assert len(yardstick_gate("sac", 0.7, 3, 0.5, None, None)) == 1


def test_candidates_without_validation_runs_rank_last():
    ensemble = CandidateRun(
        "weighted_ensemble",
        "ensemble",
        None,
        PeriodFigures.missing(),
        PeriodFigures.of_equity(synthetic_equity(0.002, 5)),
    )
    runs = (run("ppo", "agent", 1, -0.001, 0.0), ensemble, run("hrp", "allocator", None, 0.0005, 0.0))
    table = Leaderboard(runs, 1).table()
    assert list(table["candidate"])[-1] == "weighted_ensemble"
    assert table["validation_sharpe_p25"].iloc[:-1].is_monotonic_decreasing


def test_regimes_add_the_representative_runs_test_sharpe_per_regime():
    runs = (
        run("ppo", "agent", 1, 0.001, 0.001),
        run("ppo", "agent", 2, 0.002, -0.001),
        run("hrp", "allocator", None, 0.0005, 0.0),
    )
    plain = Leaderboard(runs, 1).table()
    assert list(plain.columns) == list(LEADERBOARD_COLUMNS)  # no regimes, no change
    # Synthetic labels on every business day from before the test period: calm, then turbulent.
    every_day = pd.bdate_range(DATES[0] - pd.offsets.BDay(5), DATES[-1])
    regimes = pd.Series((every_day >= DATES[60]).astype(int), index=every_day)
    board = Leaderboard(runs, 1, regimes=regimes)
    table = board.table().set_index("candidate")
    assert list(table.columns[-2:]) == [regime_sharpe_column(0), regime_sharpe_column(1)]
    pd.testing.assert_frame_equal(
        board.table()[list(LEADERBOARD_COLUMNS)], plain
    )  # the fixed columns are untouched
    representative = board.representative("ppo")
    assert representative.seed == 2
    # The return into DATES[i] follows the regime of DATES[i-1]: days 1..60 calm, 61.. turbulent.
    test_equity = synthetic_equity(-0.001, 2 + 1000)
    expected = figures_by_regime(test_equity, regimes, n_regimes=2)["sharpe"]
    assert table.loc["ppo", "test_sharpe_regime_0"] == pytest.approx(expected[0])
    assert table.loc["ppo", "test_sharpe_regime_1"] == pytest.approx(expected[1])
    returns = representative.test.returns
    assert expected[0] == pytest.approx(sharpe_ratio(returns.iloc[:60]))


def test_bad_regimes_are_refused_when_the_board_is_built():
    runs = (run("ppo", "agent", 1, 0.001, 0.001),)
    with pytest.raises(ValueError, match="regimes holds NaN"):
        Leaderboard(runs, 1, regimes=pd.Series([0.0, np.nan], index=DATES[:2]))
    with pytest.raises(ValueError, match="given no regimes"):
        Leaderboard(runs, 1).regime_sharpes("ppo")
