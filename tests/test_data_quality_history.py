"""Bar-feed data quality (issue 13, point 4): the per-feed-day measures on synthetic arrival streams (named
SYNTHETIC: made up here, bar ends real XNYS minutes) and on the real shared 1-minute file; the live loop's stored
arrivals and its data-quality alerts, each firing once per breach and clearing; the Dagster asset and its checks.
"""

from __future__ import annotations

import sqlite3

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from resources.trading_state import TradingStateResource
from tests.conftest import SHARED_DATA
from trading_assets.data_quality import data_quality_history
from trading_core.broker.base import Quote
from trading_core.live.sources import BarEvent, read_bars, replay
from trading_core.live.state import TradingStateStore
from trading_core.monitoring.alerts import AlertEvaluator, data_quality_rules
from trading_core.monitoring.data_quality import (
    DataQualityConfig,
    feed_day_quality,
    feed_freshness,
    file_day_quality,
    get_calendar,
    session_bar_ends,
    session_minutes_between,
)
from trading_core.monitoring.feed_watch import Arrival, FeedWatch

MINUTE = pd.Timedelta(minutes=1)
OPEN = pd.Timestamp("2019-02-11 14:30", tz="UTC")  # 09:30 New York, a Monday session
SMALL_WINDOW = DataQualityConfig(window_bars=5)


def arrival_row(bar_time, latency_s=2.0, *, session="s", feed="live", symbols=4, quote_age=1.0, clock=True):
    return {
        "session_id": session,
        "feed": feed,
        "bar_time": bar_time,
        "received_at": bar_time + pd.Timedelta(seconds=latency_s),
        "source_clock": clock,
        "symbols": symbols,
        "expected_symbols": 4,
        "max_quote_age_s": quote_age,
        "handling": "processed",
    }


def bar(minute: int) -> pd.Timestamp:
    return OPEN + minute * MINUTE


# ------------------------------------------------------------------------------------------ per-feed-day table


def test_a_synthetic_day_counts_gaps_latency_repeats_order_and_stale_quotes():
    rows = [arrival_row(bar(m)) for m in (1, 2)]
    rows.append(arrival_row(bar(3), quote_age=75.0))  # stale quote
    rows.append(arrival_row(bar(4), symbols=3))  # one symbol short
    rows += [
        arrival_row(bar(7)),
        arrival_row(bar(8)),
        arrival_row(bar(9), latency_s=15.0),
        arrival_row(bar(10)),
    ]
    rows.append(arrival_row(bar(8), latency_s=124.0))  # repeated
    rows.append(arrival_row(bar(6), latency_s=243.0))  # out of order, late: fills one of the two missing
    day = feed_day_quality(pd.DataFrame(rows)).iloc[0]
    # The feed's only day runs from its first to its last bar: 14:31 .. 14:40, 10 bars, 14:35 missing.
    assert (day.expected_bars, day.received_bars, day.missing_bars, day.gaps, day.longest_gap_bars) == (
        10,
        9,
        1,
        1,
        1,
    )
    assert day.completeness == pytest.approx(0.9)
    assert day.symbol_completeness == pytest.approx((8 + 0.75) / 10)
    assert (day.arrivals, day.duplicates, day.out_of_order, day.late_bars, day.stale_quotes) == (
        10,
        1,
        1,
        3,
        1,
    )
    assert (day.latency_p50_s, day.latency_max_s, day.max_quote_age_s) == (2.0, 243.0, 75.0)
    assert day.latency_p99_s == pytest.approx(np.quantile([2.0] * 7 + [15.0, 124.0, 243.0], 0.99))
    assert day.bar_length_s == 60.0


def test_days_follow_the_calendar_early_closes_and_empty_days_included():
    calendar = get_calendar()
    days = [pd.Timestamp(d) for d in ("2019-11-26", "2019-11-29")]
    rows = [arrival_row(end, clock=False) for d in days for end in session_bar_ends(calendar, d, MINUTE)]
    rows.append(arrival_row(calendar.session_open(pd.Timestamp("2019-12-02")) + MINUTE, clock=False))
    table = feed_day_quality(pd.DataFrame(rows))
    by_day = table.set_index(table["date"].dt.date.astype(str))
    # 11-27 had no bar at all (a whole day missing); 11-28 is Thanksgiving; 11-29 closed at 13:00; the last day
    # runs up to the feed's last bar only.
    assert by_day["expected_bars"].to_dict() == {
        "2019-11-26": 390,
        "2019-11-27": 390,
        "2019-11-29": 210,
        "2019-12-02": 1,
    }
    assert by_day["completeness"].to_dict() == {
        "2019-11-26": 1.0,
        "2019-11-27": 0.0,
        "2019-11-29": 1.0,
        "2019-12-02": 1.0,
    }
    assert by_day.loc["2019-11-27", "longest_gap_bars"] == 390
    assert table["latency_p99_s"].isna().all()  # the loop's clock: no latency is claimed


def test_sessions_share_a_feeds_days_but_repeats_are_per_session():
    rows = [arrival_row(bar(m), session="a") for m in range(1, 6)]
    rows += [arrival_row(bar(m), session="b") for m in range(3, 8)]
    day = feed_day_quality(pd.DataFrame(rows)).iloc[0]
    assert (day.sessions, day.expected_bars, day.received_bars, day.duplicates, day.out_of_order) == (
        2,
        7,
        7,
        0,
        0,
    )


def test_an_empty_state_gives_an_empty_table():
    assert feed_day_quality(pd.DataFrame(columns=list(arrival_row(OPEN)))).empty


def test_the_real_one_minute_file_is_complete_by_bar_and_not_by_symbol():
    bars = read_bars(SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz", validate=False)
    table = file_day_quality(bars, "file:1min")
    assert list(table["date"].dt.date.astype(str)) == [f"2019-02-{d}" for d in range(11, 16)]
    assert (table["expected_bars"] == 390).all() and (table["completeness"] == 1.0).all()
    assert (table["gaps"] == 0).all() and table["latency_p99_s"].isna().all()
    # Symbol by symbol the file lacks some minutes (no trade): its rows over 5 x 390 x 23 expected.
    rows_share = len(bars) / (5 * 390 * bars["tic"].nunique())
    assert table["symbol_completeness"].mean() == pytest.approx(rows_share)
    assert 0.9 < rows_share < 0.95


# -------------------------------------------------------------------------------------------------- freshness


def test_freshness_counts_market_minutes_only_and_judges_live_feeds_only():
    calendar = get_calendar()
    friday_close = pd.Timestamp("2019-02-15 21:00", tz="UTC")
    tuesday_ten = pd.Timestamp("2019-02-19 15:00", tz="UTC")  # Monday 02-18 was Presidents' Day
    assert session_minutes_between(calendar, friday_close, tuesday_ten) == 30.0
    arrivals = pd.DataFrame(
        [arrival_row(friday_close, feed="live"), arrival_row(friday_close, feed="replay", clock=False)]
    )
    at_monday_night = feed_freshness(arrivals, pd.Timestamp("2019-02-19 02:00", tz="UTC"))
    assert list(at_monday_night[["feed", "session_minutes_since", "fresh"]].itertuples(index=False)) == [
        ("live", 0.0, True)
    ]
    assert not feed_freshness(arrivals, tuesday_ten)["fresh"].item()


# --------------------------------------------------------------------------------------- alerts on the window


def synthetic_stream() -> list[tuple[int, Arrival]]:
    """SYNTHETIC arrivals of one feed, window 5: late bars 10-11, bar 20 missing, bar 28 again after bar 30,
    stale quotes on bars 40-42. ``(minute, arrival)``; a repeated bar is skipped by the loop."""
    stream = []
    for minute in range(1, 46):
        if minute == 20:
            continue
        latency = 30.0 if minute in (10, 11) else 1.0
        age = 120.0 if minute in (40, 41, 42) else 1.0
        stream.append(
            (
                minute,
                Arrival(
                    bar(minute), bar(minute) + pd.Timedelta(seconds=latency), True, 4, 4, age, "processed"
                ),
            )
        )
        if minute == 30:
            stream.append(
                (28, Arrival(bar(28), bar(30) + pd.Timedelta(seconds=5), True, 4, 4, 1.0, "skipped"))
            )
    return stream


EXPECTED_ALERTS = [
    (11, "late_bars", False),
    (16, "late_bars", True),
    (21, "bar_gap", False),
    (26, "bar_gap", True),
    (31, "out_of_order_bar", False),
    (35, "out_of_order_bar", True),
    (40, "stale_quotes", False),
    (43, "stale_quotes", True),
]


def test_each_data_quality_alert_fires_once_per_breach_and_clears():
    from trading_core.monitoring.alerts import AlertSnapshot

    watch = FeedWatch(SMALL_WINDOW, get_calendar())
    clock = {"now": 0.0}
    evaluator = AlertEvaluator(data_quality_rules(SMALL_WINDOW), clock=lambda: clock["now"])
    fired = []
    for minute, arrival in synthetic_stream():
        watch.observe(arrival)
        if arrival.handling != "processed":
            continue
        clock["now"] = arrival.bar_time.timestamp()
        fired += [
            (minute, a.rule, a.resolved) for a in evaluator.evaluate(AlertSnapshot(feed=watch.health()))
        ]
    assert fired == EXPECTED_ALERTS


def test_a_gap_across_the_night_and_the_open_is_counted_on_market_minutes():
    calendar = get_calendar()
    watch = FeedWatch(SMALL_WINDOW, calendar)
    close = calendar.session_close(pd.Timestamp("2019-02-11"))
    next_open = calendar.session_open(pd.Timestamp("2019-02-12"))
    for end in (close - MINUTE, close, next_open + MINUTE, next_open + 3 * MINUTE):
        watch.observe(Arrival(end, end, False, 4, 4, None, "processed"))
    assert watch.health().missing_bars == 1  # 09:32 only: the night is not a gap
    assert watch.health().late_bar_share is None  # the loop's clock: lateness is not judged


# ---------------------------------------------------------------------------------------------- the live loop


def quoted(event: BarEvent, age_s: float) -> dict[str, Quote]:
    stamp = event.timestamp - pd.Timedelta(seconds=age_s)
    return {s: Quote(b.close * 0.9999, b.close * 1.0001, 100, 100, stamp) for s, b in event.bars.items()}


def live_events(minute_events: list[BarEvent]) -> list[tuple[int, BarEvent]]:
    """The SYNTHETIC stream above on real bars: the real file's first minutes of a session, each stamped as
    a live feed would stamp it and given quotes of the synthetic ages."""
    by_time = {event.timestamp: event for event in minute_events}
    first = min(by_time)
    out = []
    for minute, arrival in synthetic_stream():
        real = by_time[first + (minute - 1) * MINUTE]
        received = real.timestamp + (arrival.received_at - arrival.bar_time)
        out.append(
            (minute, BarEvent(real.timestamp, real.bars, quoted(real, arrival.max_quote_age_s), received))
        )
    return out


def make_loop(live_agent, history, store, clocked: list):
    from trading_core.broker.simulated import SimulatedBroker
    from trading_core.live.engine import DecisionEngine
    from trading_core.live.loop import LiveConfig, LiveTradingLoop

    policy, spec = live_agent
    loop: LiveTradingLoop

    def bar_clock() -> float:
        return loop.last_bar_time.timestamp() if loop.last_bar_time is not None else 0.0

    loop = LiveTradingLoop(
        LiveConfig(session_id="dq", feed="synthetic-live", data_quality=SMALL_WINDOW),
        store,
        SimulatedBroker(list(spec.tickers), spec.env_spec.simulation),
        (DecisionEngine(policy, spec), "1"),
        alerts=(AlertEvaluator(data_quality_rules(SMALL_WINDOW), clock=bar_clock), ListSink(clocked)),
        history=history,
    )
    return loop


class ListSink:
    def __init__(self, into: list) -> None:
        self.into = into

    def send(self, alert) -> None:
        self.into.append(alert)


def alerted(store: TradingStateStore, minute_of: dict) -> list[tuple]:
    alerts = store.alerts("dq")
    return [
        (minute_of[pd.Timestamp(a.raised_at)], a.rule, a.message.startswith("resolved"))
        for a in alerts.itertuples()
    ]


@pytest.fixture(scope="module")
def minute_events(live_minutes):
    return list(replay(live_minutes[1]))[:60]


def test_the_loop_stores_every_arrival_and_alerts_once_per_breach(
    live_agent, live_minutes, minute_events, tmp_path
):
    events = live_events(minute_events)
    minute_of = {event.timestamp: minute for minute, event in events}
    store = TradingStateStore.sqlite(tmp_path / "state.db")
    store.create_schema()
    delivered: list = []
    loop = make_loop(live_agent, live_minutes[0], store, delivered)
    loop.start()
    for _, event in events:
        loop.process(event)
    arrivals = store.bar_arrivals("dq")
    assert len(arrivals) == len(events)
    assert arrivals["handling"].value_counts().to_dict() == {"processed": len(events) - 1, "skipped": 1}
    assert (arrivals["feed"] == "synthetic-live").all() and arrivals["source_clock"].all()
    assert arrivals["max_quote_age_s"].max() == 120.0
    assert alerted(store, minute_of) == EXPECTED_ALERTS
    assert len(delivered) == len(EXPECTED_ALERTS)

    # Resumed after bar 23 (inside the gap's breach), a new loop rebuilds the window from the store.
    resumed_store = TradingStateStore.sqlite(tmp_path / "resumed.db")
    resumed_store.create_schema()
    first = make_loop(live_agent, live_minutes[0], resumed_store, [])
    first.start()
    cut = next(i for i, (minute, _) in enumerate(events) if minute == 23) + 1
    for _, event in events[:cut]:
        first.process(event)
    second = make_loop(live_agent, live_minutes[0], resumed_store, [])
    second.start()
    for _, event in events[cut:]:
        second.process(event)
    assert alerted(resumed_store, minute_of) == EXPECTED_ALERTS


def test_a_replay_records_the_loops_clock_and_raises_no_feed_alert(
    live_agent, live_minutes, minute_events, tmp_path
):
    store = TradingStateStore.sqlite(tmp_path / "state.db")
    store.create_schema()
    loop = make_loop(live_agent, live_minutes[0], store, [])
    before = pd.Timestamp.now(tz="UTC")
    loop.run(minute_events[:30])
    arrivals = store.bar_arrivals("dq")
    assert len(arrivals) == 30 and not arrivals["source_clock"].any()
    assert (arrivals["received_at"] >= before).all()  # the wall clock at receipt, not the 2019 bar time
    assert arrivals["max_quote_age_s"].isna().all()
    assert store.alerts("dq").empty


def test_an_older_database_gains_the_arrivals_table(tmp_path):
    path = tmp_path / "old.db"
    store = TradingStateStore.sqlite(path)
    store.create_schema()
    store.start_session("old", model_name="m", model_version="1", broker="simulated")
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE bar_arrivals")
    store = TradingStateStore.sqlite(path)
    store.create_schema()
    assert store.get_session("old") is not None
    assert store.record_bar_arrivals("old", [arrival_row(OPEN + MINUTE)]) == 1
    assert len(store.bar_arrivals("old")) == 1
    store.close()


# ------------------------------------------------------------------------------------------------- the asset


def materialize(tmp_path, rows: list[dict] | None, **config):
    store = TradingStateStore.sqlite(tmp_path / "state.db")
    store.create_schema()
    for session in {row["session_id"] for row in rows or []}:
        store.start_session(session, model_name="m", model_version="1", broker="simulated")
        store.record_bar_arrivals(session, [r for r in rows if r["session_id"] == session])
    url = store.url
    store.close()
    result = dg.materialize(
        [data_quality_history],
        resources={"trading_state": TradingStateResource(url=url)},
        run_config={"ops": {"data_quality_history": {"config": config}}} if config else None,
    )
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    materialization = result.asset_materializations_for_node("data_quality_history")[0]
    return result.output_for_node("data_quality_history"), checks, materialization.metadata


def test_the_asset_on_an_empty_state_is_an_empty_table_not_a_failure(tmp_path):
    table, checks, metadata = materialize(tmp_path, None)
    assert table.empty and "no paper-trading session" in metadata["description"].value
    assert all(check.passed for check in checks.values()) and set(checks) == {
        "feed_completeness",
        "feed_latency",
        "feed_freshness",
    }


def test_the_asset_checks_the_last_day_and_a_stale_live_feed(tmp_path):
    calendar = get_calendar()
    day = pd.Timestamp("2019-02-12")
    ends = session_bar_ends(calendar, day, MINUTE)
    rows = [arrival_row(end, latency_s=2.0 if i % 10 else 20.0) for i, end in enumerate(ends) if i % 7]
    file = str(SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz")
    table, checks, metadata = materialize(tmp_path, rows, intraday_file=file)
    assert set(table["feed"]) == {"live", "file:intraday_1min_us_equities_2019.csv.gz"}
    completeness = checks["feed_completeness"]
    assert not completeness.passed and completeness.severity == dg.AssetCheckSeverity.WARN
    latency = checks["feed_latency"]  # every tenth bar 20 s late: p99 over the 10 s threshold
    assert not latency.passed and latency.severity == dg.AssetCheckSeverity.WARN
    freshness = checks["feed_freshness"]  # a 2019 live feed is years of market minutes old
    assert not freshness.passed and freshness.severity == dg.AssetCheckSeverity.ERROR
    assert metadata["history"].value.startswith("![plot](data:image/png;base64,")
    assert "| live" in metadata["last_days"].value


def test_a_fresh_complete_live_feed_passes(tmp_path):
    calendar = get_calendar()
    now = pd.Timestamp.now(tz="UTC")
    session = calendar.date_to_session(
        now.tz_convert("America/New_York").tz_localize(None).normalize(), "previous"
    )
    ends = session_bar_ends(calendar, session, MINUTE)
    if not (ends <= now).any():  # before today's open: the session before
        ends = session_bar_ends(calendar, calendar.previous_session(session), MINUTE)
    ends = ends[ends <= now]
    rows = [arrival_row(end) for end in ends]
    # Today's session may still run: the newest bar is at most a session old, allowed in full here.
    _, checks, _ = materialize(tmp_path, rows, max_stale_session_minutes=400.0)
    assert all(check.passed for check in checks.values()), {n: c.description for n, c in checks.items()}
