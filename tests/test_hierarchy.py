"""The hierarchical layer on real 1-minute bars (three tickers, two sessions): a daily allocator's targets worked
by immediate, TWAP, VWAP and Almgren–Chriss executors under the shared fill logic and cost model."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from trading_core.hierarchy.comparison import compare_executors, read_daily_bars
from trading_core.hierarchy.executors import (
    AlmgrenChrissExecutor,
    ImmediateExecutor,
    SessionPlan,
    TwapExecutor,
    VwapExecutor,
    almgren_chriss_holdings,
    default_executors,
    slice_bars,
    volume_profile,
)
from trading_core.hierarchy.session_loop import HierarchyConfig, execute_sessions
from trading_core.hierarchy.sessions import IntradaySessions, intraday_sessions
from trading_core.hierarchy.shortfall import parent_measures, summarise
from trading_core.hierarchy.targets import (
    daily_market,
    daily_targets,
    in_intraday_units,
    previous_sessions,
    split_factors,
)
from trading_core.market.costs import LinearImpact
from trading_core.market.execution import execute_orders
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig

SHARED_DATA = Path(
    os.environ.get("RL_TRADING_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
MINUTE_FILE = SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz"
DAILY_FILE = SHARED_DATA / "dow30_daily_2009_2021.csv.gz"
TICKERS = ("AAPL", "JPM", "MSFT")
SESSIONS = ("2019-02-11", "2019-02-12")


def _config(cap: float | None = 0.1, **changes) -> HierarchyConfig:
    simulation = SimulationConfig()
    execution = replace(simulation.execution, participation_cap=cap)
    return HierarchyConfig(simulation=replace(simulation, execution=execution), **changes)


@pytest.fixture(scope="module")
def minute_bars() -> pd.DataFrame:
    if not (MINUTE_FILE.exists() and DAILY_FILE.exists()):
        pytest.skip(f"real market data under {SHARED_DATA} not found (set RL_TRADING_SHARED_DATA)")
    from trading_core.live.sources import read_bars

    bars = read_bars(MINUTE_FILE, TICKERS, validate=False)
    day = bars["timestamp"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d")
    return bars[day.isin(SESSIONS)].reset_index(drop=True)


@pytest.fixture(scope="module")
def daily_bars(minute_bars) -> pd.DataFrame:
    bars = read_daily_bars(DAILY_FILE)
    keep = bars["tic"].isin(TICKERS) & bars["date"].between("2017-06-01", SESSIONS[-1])
    return bars[keep].reset_index(drop=True)


@pytest.fixture(scope="module")
def sessions(minute_bars) -> IntradaySessions:
    return intraday_sessions(minute_bars, TICKERS)


@pytest.fixture(scope="module")
def factors(daily_bars, sessions) -> np.ndarray:
    return split_factors(daily_bars, sessions)


def _run(sessions, daily_bars, factors, config, executors=None):
    """The comparison's pipeline with the split factors given (so daily bars may stop before a session)."""
    market = daily_market(in_intraday_units(daily_bars, TICKERS, factors), TICKERS)
    targets = daily_targets(market, sessions.dates, config.allocator, config.simulation)
    return execute_sessions(sessions, targets, executors or default_executors(), config), targets


@pytest.fixture(scope="module")
def capped(sessions, daily_bars, factors):
    return _run(sessions, daily_bars, factors, _config())


@pytest.fixture(scope="module")
def uncapped(sessions, daily_bars, factors):
    return _run(sessions, daily_bars, factors, _config(None))


def test_sessions_grid_and_split_units(sessions, factors):
    assert sessions.open.shape == (2, 390, 3) and sessions.bar_length == pd.Timedelta(minutes=1)
    assert str(pd.Timestamp(sessions.bar_ends[0, 0]).time()) == "14:31:00"  # 09:31 ET bar end, in UTC
    # The daily file is split-adjusted for AAPL's 2020 4:1 split; the 2019 minute bars are not.
    np.testing.assert_array_equal(factors, [0.25, 1.0, 1.0])
    assert list(previous_sessions(sessions.dates).strftime("%Y-%m-%d")) == ["2019-02-08", "2019-02-11"]


def test_executors_fill_the_parent_or_report_the_rest(capped, uncapped):
    for run, _ in (capped, uncapped):
        by_parent = run.children.groupby(["executor", "date", "tic"])["shares"].sum()
        parents = run.parents.set_index(["executor", "date", "tic"])
        np.testing.assert_allclose(by_parent.reindex(parents.index, fill_value=0.0), parents["filled"])
        assert (parents["filled"].abs() <= parents["parent"].abs()).all()
        assert (parents["filled"] * parents["parent"] >= 0).all()
    # Without a cap every executor fills every parent in full.
    assert (uncapped[0].parents["filled"] == uncapped[0].parents["parent"]).all()


def test_a_large_book_leaves_the_immediate_order_a_rest_that_slices_catch_up(sessions, daily_bars, factors):
    config = _config(initial_amount=1e8)  # the first minute's 10 % of volume is far below a third of $100M
    run, _ = _run(sessions, daily_bars, factors, config, [ImmediateExecutor(), TwapExecutor()])
    first = run.parents[run.parents["date"] == pd.Timestamp(SESSIONS[0])].set_index(["executor", "tic"])
    assert (first.loc["immediate", "filled"] < first.loc["immediate", "parent"]).all()
    # Slices catch up what the cap left: TWAP fills more of every parent, though a $100M book is too large for
    # 13 half-hourly minutes at 10 % of their volume too.
    assert (first.loc["twap", "filled"] > first.loc["immediate", "filled"]).all()


def test_children_respect_the_participation_cap(capped, sessions):
    children = capped[0].children
    session = sessions.dates.get_indexer(children["date"])
    column = pd.Index(TICKERS).get_indexer(children["tic"])
    volume = sessions.volume[session, children["bar"].to_numpy(), column]
    assert (children["shares"].abs() <= np.floor(0.1 * volume)).all()


def test_a_tight_cap_reports_the_unfilled_rest_and_its_opportunity_cost(sessions, daily_bars, factors):
    run, _ = _run(sessions, daily_bars, factors, _config(1e-4), [TwapExecutor()])
    measured = parent_measures(run.parents)
    assert (measured["fill_rate"] < 1.0).all()
    rest = measured["parent"] - measured["filled"]
    execution = measured["paid"] - measured["filled"] * measured["arrival_close"] + measured["commission"]
    opportunity = rest * (measured["last_close"] - measured["arrival_close"])
    expected = 1e4 * (execution + opportunity) / (measured["parent"].abs() * measured["arrival_close"])
    np.testing.assert_allclose(measured["perold_bps"], expected)


def test_twap_sends_equal_slices(uncapped):
    assert list(slice_bars(390, 13)) == list(range(0, 390, 30))
    children = uncapped[0].children
    twap = children[children["executor"] == "twap"]
    parents = uncapped[0].parents.set_index(["executor", "date", "tic"]).loc["twap"]
    for (date, tic), group in twap.groupby(["date", "tic"]):
        if abs(parents.loc[(date, tic), "parent"]) >= 13:
            assert list(group["bar"]) == list(range(0, 390, 30))
            assert group["shares"].abs().max() - group["shares"].abs().min() <= 1.0  # whole shares


def test_vwap_profile_reads_earlier_sessions_only(sessions, daily_bars, factors):
    # No cap, so volumes reach the fills through the VWAP plan only; a large book, so session 2's rebalancing
    # parents are large enough for the profile to show in every slice.
    config = _config(None, initial_amount=1e9)
    run, _ = _run(sessions, daily_bars, factors, config, [VwapExecutor()])
    volume = sessions.volume.copy()
    volume[1] = volume[1] * 3.0 + np.arange(390)[:, None] * 1e3  # session 2's own volumes, shape and level
    changed_today, _ = _run(replace(sessions, volume=volume), daily_bars, factors, config, [VwapExecutor()])
    pd.testing.assert_frame_equal(run.children, changed_today.children)
    yesterday = replace(sessions, volume=sessions.volume[:, ::-1].copy())
    changed_yesterday, _ = _run(yesterday, daily_bars, factors, config, [VwapExecutor()])
    day2 = run.children["date"] == pd.Timestamp(SESSIONS[1])
    assert not run.children[day2]["sent"].equals(changed_yesterday.children[day2]["sent"])
    # The first session has no earlier one: the flat profile, TWAP's plan.
    first = SessionPlan(390, sessions.volume[:0], sessions.present[:0], *np.ones((3, 3)), LinearImpact())
    np.testing.assert_allclose(VwapExecutor().plan(first), TwapExecutor().plan(first), rtol=1e-12)
    profile = volume_profile(sessions.volume[:1], sessions.present[:1], 390)
    np.testing.assert_allclose(profile.sum(axis=0), 1.0)
    assert profile[0, 0] > 10 / 390  # the opening minute trades far more than an average one


def test_immediate_is_the_daily_next_open_fill(sessions, daily_bars, factors):
    config = _config(None, impact_volume="session")
    run, targets = _run(sessions, daily_bars, factors, config, [ImmediateExecutor()])
    first_day = run.children[run.children["date"] == pd.Timestamp(SESSIONS[0])]
    assert (first_day["bar"] == 0).all()
    market = daily_market(in_intraday_units(daily_bars, TICKERS, factors), TICKERS)
    engine = PortfolioSimulator(market, config.simulation)
    engine.day = int(market.dates.get_loc(targets.decision_dates[0]))
    daily_bar = engine.fill_bar()
    # The daily engine's next-open fill, its open replaced by the first minute bar's open.
    bar = replace(daily_bar, reference_price=sessions.open[0, 0][None, :])
    orders = first_day.set_index("tic").loc[list(TICKERS), "sent"].to_numpy()[None, :]
    cash = np.array([config.initial_amount])
    fills = execute_orders(
        orders,
        np.zeros_like(orders),
        cash,
        engine.prices[None],
        bar,
        config.simulation.cost_model,
        config.simulation.execution,
    )
    ordered = first_day.set_index("tic").loc[list(TICKERS)]
    for column, expected in (
        ("shares", fills.shares),
        ("price", fills.price),
        ("commission", fills.commission),
        ("spread_cost", fills.spread_cost),
        ("impact_cost", fills.impact_cost),
    ):
        np.testing.assert_allclose(ordered[column].to_numpy(), expected[0], rtol=1e-12)
    # The daily bar's own open is the first minute's open up to the opening auction's difference.
    assert np.abs(daily_bar.reference_price[0] / sessions.open[0, 0] - 1.0).max() < 2e-3
    # Measured against one bar's share of the day's volume, the same order pays 390 times the linear impact.
    per_bar, _ = _run(sessions, daily_bars, factors, _config(None), [ImmediateExecutor()])
    per_bar_day = per_bar.children[per_bar.children["date"] == pd.Timestamp(SESSIONS[0])]
    np.testing.assert_allclose(
        per_bar_day["impact_cost"].to_numpy(), 390 * first_day["impact_cost"].to_numpy()
    )


def test_child_costs_are_the_cost_models(capped, sessions):
    run, targets = capped
    children = run.children[run.children["shares"] != 0]
    session = targets.dates.get_indexer(children["date"])
    column = pd.Index(TICKERS).get_indexer(children["tic"])
    cost_model = SimulationConfig().cost_model
    priced = cost_model.execute(
        children["shares"].to_numpy(),
        children["reference_price"].to_numpy(),
        targets.half_spread[session, column],
        targets.adv[session, column] / sessions.n_bars,
        targets.sigma[session, column],
    )
    np.testing.assert_allclose(children["price"], priced.fill_price, rtol=1e-12)
    np.testing.assert_allclose(children["commission"], priced.commission, rtol=1e-12)
    np.testing.assert_allclose(children["spread_cost"], priced.spread_cost, rtol=1e-12)
    np.testing.assert_allclose(children["impact_cost"], priced.impact_cost, rtol=1e-12)
    measured = parent_measures(run.parents)
    traded = measured[measured["filled"] != 0]
    totals = children.groupby(["executor", "date", "tic"])[["commission", "spread_cost", "impact_cost"]].sum()
    expected = (
        1e4
        * totals.sum(axis=1)
        / (children["shares"].abs() * children["reference_price"])
        .groupby([children["executor"], children["date"], children["tic"]])
        .sum()
    )
    np.testing.assert_allclose(
        traded.set_index(["executor", "date", "tic"])["cost_bps"],
        expected.loc[traded.set_index(["executor", "date", "tic"]).index],
    )


def test_no_lookahead_across_sessions(sessions, daily_bars, factors, capped):
    """Session 1 computed on the bars up to its end (minute bars of that day, daily bars up to its decision)
    equals session 1 of the full run."""
    decision = pd.Timestamp("2019-02-08")
    truncated, _ = _run(sessions.upto(0), daily_bars[daily_bars["date"] <= decision], factors, _config())
    full = capped[0]
    for name in ("parents", "children"):
        first = getattr(full, name)
        first = first[first["date"] == pd.Timestamp(SESSIONS[0])].reset_index(drop=True)
        pd.testing.assert_frame_equal(getattr(truncated, name), first)


def test_no_lookahead_inside_a_session(sessions, daily_bars, factors, capped):
    """Changing bars m.. of session 2 leaves every child order sent at bars <= m, and every fill before m."""
    m = 100
    changed = {name: getattr(sessions, name).copy() for name in ("open", "high", "low", "close", "volume")}
    for name in ("open", "high", "low", "close"):
        changed[name][1, m:] *= 1.05
    changed["volume"][1, m:] *= 0.01
    run, _ = _run(replace(sessions, **changed), daily_bars, factors, _config())
    full = capped[0].children
    for children in (full, run.children):
        children["key"] = list(
            zip(children["executor"], children["date"], children["tic"], children["bar"], strict=True)
        )
    before = lambda c: c[(c["date"] < pd.Timestamp(SESSIONS[1])) | (c["bar"] <= m)].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_series_equal(before(full)["sent"], before(run.children)["sent"])
    earlier = lambda c: c[(c["date"] < pd.Timestamp(SESSIONS[1])) | (c["bar"] < m)].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(earlier(full), earlier(run.children))


def test_same_inputs_same_result(minute_bars, daily_bars):
    first = compare_executors(minute_bars, daily_bars, _config(), tickers=TICKERS)
    second = compare_executors(minute_bars, daily_bars, _config(), tickers=TICKERS)
    pd.testing.assert_frame_equal(first.measured, second.measured)
    pd.testing.assert_frame_equal(first.summary, second.summary)
    assert list(first.summary["executor"]) == ["immediate", "twap", "vwap", "almgren_chriss"]
    assert (first.summary["fill_rate"] <= 1.0).all() and (first.summary["child_orders"] > 0).all()


def test_almgren_chriss_trajectory():
    np.testing.assert_allclose(almgren_chriss_holdings(np.array([0.0]), 4)[:, 0], [1, 0.75, 0.5, 0.25, 0])
    curved = almgren_chriss_holdings(np.array([0.5, 800.0]), 13)
    assert (np.diff(curved, axis=0) <= 0).all() and np.allclose(curved[[0, -1]], [[1, 1], [0, 0]])
    assert (
        1 - curved[1, 0] > 1 / 13 and curved[1, 1] == 0.0
    )  # front-loaded; an extreme urgency trades at once
    plan = SessionPlan(
        390,
        np.zeros((0, 390, 1)),
        np.zeros((0, 390, 1), bool),
        np.array([100.0]),
        np.array([1e6]),
        np.array([0.02]),
        LinearImpact(),
    )
    calm = AlmgrenChrissExecutor(risk_aversion=0.0).plan(plan)
    np.testing.assert_allclose(calm, TwapExecutor().plan(plan))
    urgent = AlmgrenChrissExecutor(risk_aversion=1e-3).plan(plan)
    assert urgent[0, 0] > calm[0, 0] and urgent[-1, 0] == 1.0


def test_parent_measures_by_hand():
    parents = pd.DataFrame(
        [
            {
                "executor": "x",
                "date": pd.Timestamp("2019-02-11"),
                "tic": "A",
                "parent": 20.0,
                "filled": 10.0,
                "children": 2,
                "arrival_close": 100.0,
                "first_open": 100.5,
                "last_close": 102.0,
                "paid": 1010.0,
                "commission": 1.0,
                "spread_cost": 6.0,
                "impact_cost": 4.0,
            }
        ]
    )
    row = parent_measures(parents).iloc[0]
    assert row["shortfall_close_bps"] == pytest.approx(1e4 * (10.0 + 1.0) / 1000.0)
    assert row["shortfall_open_bps"] == pytest.approx(1e4 * (1010.0 - 1005.0 + 1.0) / 1005.0)
    assert row["cost_bps"] == pytest.approx(1e4 * 11.0 / 1000.0)
    assert row["perold_bps"] == pytest.approx(1e4 * (11.0 + 10 * 2.0) / 2000.0)
    assert row["fill_rate"] == 0.5
    summary = summarise(parent_measures(parents)).iloc[0]
    assert summary["shortfall_p90_bps"] == pytest.approx(110.0) and summary["child_orders"] == 2


def test_bad_input_is_refused_in_one_line(sessions, minute_bars):
    with pytest.raises(ValueError, match="initial_amount"):
        HierarchyConfig(initial_amount=0.0)
    with pytest.raises(ValueError, match="impact_volume"):
        HierarchyConfig(impact_volume="daily")
    with pytest.raises(ValueError, match="slices"):
        slice_bars(390, 0)
    with pytest.raises(ValueError, match="risk_aversion"):
        AlmgrenChrissExecutor(risk_aversion=-1.0)
    with pytest.raises(ValueError, match="ticker.*KO"):
        intraday_sessions(minute_bars, ("AAPL", "KO"))
    with pytest.raises(ValueError, match="volume"):
        intraday_sessions(minute_bars.drop(columns="volume"))


def test_execution_comparison_asset(tmp_path, monkeypatch, minute_bars, daily_bars):
    from trading_assets.execution_quality import ExecutionComparisonSettings, execution_comparison

    monkeypatch.delenv("RL_TRADING_SHARED_DATA", raising=False)
    empty = execution_comparison(dg.build_asset_context(), ExecutionComparisonSettings())
    assert empty.value.empty and "RL_TRADING_SHARED_DATA" in empty.metadata["skipped"].value
    minute_file, daily_file = tmp_path / "minutes.csv", tmp_path / "daily.csv"
    local = minute_bars["timestamp"].dt.tz_convert("America/New_York").dt.tz_localize(None)
    minute_bars.drop(columns="timestamp").assign(datetime=local.dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(
        minute_file, index=False
    )
    daily_bars.assign(date=daily_bars["date"].dt.strftime("%Y-%m-%d")).to_csv(daily_file, index=False)
    settings = ExecutionComparisonSettings(
        intraday_files=[str(minute_file)], daily_file=str(daily_file), validate_intraday=False
    )
    output = execution_comparison(dg.build_asset_context(), settings)
    assert list(output.value["executor"]) == ["immediate", "twap", "vwap", "almgren_chriss"]
    assert set(output.value["bar_length"]) == {"1min"} and "chart" in output.metadata
    with pytest.raises(ValueError, match="participation_cap|invest|max_weight|method"):
        ExecutionComparisonSettings(allocator_method="nonsense")
