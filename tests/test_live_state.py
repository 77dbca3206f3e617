"""Durable live trading state: round trips, idempotency, atomic bars, crash durability and concurrent readers.

Every test runs on a sqlite file and on a throw-away PostgreSQL database (skipped with the reason when no
server answers at ``RL_TRADING_TEST_POSTGRES_URL``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Event

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError, StatementError

# postgres_database is a fixture: importing it is what makes it available to request.getfixturevalue here.
from tests.test_postgres_stores import postgres_database, sqlalchemy_url  # noqa: F401
from trading_core.live.state import (
    BrokerSnapshot,
    KillSwitchEngaged,
    TradingStateStore,
    decisions_table,
    metadata,
)

SESSION = "paper-2021"
FIRST_BAR = pd.Timestamp("2021-01-04 21:00", tz="UTC")


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return sqlalchemy_url(request.getfixturevalue("postgres_database"))


@pytest.fixture()
def store(state_url: str) -> Iterator[TradingStateStore]:
    state = TradingStateStore(state_url)
    state.create_schema()
    yield state
    state.close()


@pytest.fixture()
def session(store: TradingStateStore) -> str:
    store.start_session(
        SESSION,
        model_name="ppo_dow30",
        model_version="7",
        broker="simulated",
        challenger_version="8",
        started_at="2021-01-04 14:30",
    )
    return SESSION


def bar_time(index: int) -> pd.Timestamp:
    return FIRST_BAR + pd.Timedelta(days=index)


def write_bar(
    store: TradingStateStore, session_id: str, index: int, midway: Callable[[], None] | None = None
) -> None:
    """Everything the live loop writes for one bar, in one transaction; ``midway`` runs halfway through."""
    when = bar_time(index)
    with store.transaction():
        store.record_decision(
            session_id=session_id,
            role="champion",
            bar_time=when,
            model_version="7",
            targets={"AAPL": 0.5, "MSFT": -0.1},
            approved={"AAPL": 0.4, "MSFT": 0.0},
            latency_ms=12.5,
            cash=50_000.0,
            equity=100_000.0 + index,
        )
        store.record_order_intent(
            client_order_id=f"bar{index}-AAPL",
            session_id=session_id,
            symbol="AAPL",
            side="buy",
            qty=index + 1,
            decision_time=when,
            expected_price=130.0 + index,
        )
        if midway is not None:
            midway()
        store.record_order_intent(
            client_order_id=f"bar{index}-MSFT",
            session_id=session_id,
            symbol="MSFT",
            side="sell",
            qty=2 * (index + 1),
            decision_time=when,
        )
        store.record_interventions(
            session_id,
            "champion",
            when,
            [
                {
                    "rule": "no_short",
                    "symbol": "MSFT",
                    "requested": -5.0,
                    "approved": 0.0,
                    "reason": "no shorts",
                }
            ],
        )
        store.record_equity(
            session_id=session_id, role="champion", bar_time=when, equity=100_000.0 + index, cash=50_000.0
        )
        store.set_positions(session_id, "champion", {"AAPL": float(index + 1), "MSFT": -float(index + 1)})
        store.save_broker_snapshot(session_id, when, {"bar": index, "cash": 50_000.0})
        store.set_last_bar_time(session_id, when)


def assert_complete_bars(store: TradingStateStore, session_id: str, count: int) -> None:
    """Bars 0..count-1 are stored completely and nothing of any later bar is."""
    expected_times = [bar_time(index) for index in range(count)]
    assert list(store.decisions(session_id)["bar_time"]) == expected_times
    orders = store.orders(session_id)
    assert sorted(orders["client_order_id"]) == sorted(
        f"bar{index}-{symbol}" for index in range(count) for symbol in ("AAPL", "MSFT")
    )
    assert list(store.interventions(session_id)["bar_time"]) == expected_times
    assert list(store.equity_curve(session_id, "champion").index) == expected_times
    record = store.get_session(session_id)
    snapshot = store.load_broker_snapshot(session_id)
    if count == 0:
        assert record.last_bar_time is None and snapshot is None
        assert store.positions(session_id, "champion") == {}
    else:
        assert record.last_bar_time == bar_time(count - 1)
        assert snapshot == BrokerSnapshot(bar_time(count - 1), {"bar": count - 1, "cash": 50_000.0})
        assert store.positions(session_id, "champion") == {"AAPL": float(count), "MSFT": -float(count)}


# ------------------------------------------------------------------------------------------------------------
# Schema and round trips
# ------------------------------------------------------------------------------------------------------------


def test_create_schema_is_idempotent_and_keeps_rows(store: TradingStateStore, session: str) -> None:
    write_bar(store, session, 0)
    store.create_schema()
    assert set(inspect(store.engine).get_table_names()) == set(metadata.tables)
    assert_complete_bars(store, session, 1)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path) -> None:
    with TradingStateStore.sqlite(tmp_path / "nested" / "state.db") as store:
        store.create_schema()
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (tmp_path / "nested" / "state.db").exists()


def test_repr_and_url_hide_the_password() -> None:
    store = TradingStateStore("postgresql://trader:hunter2@127.0.0.1:1/state")
    assert "hunter2" not in repr(store) and "hunter2" not in store.url
    assert store.url == "postgresql+psycopg2://trader:***@127.0.0.1:1/state"
    store.close()


def test_session_lifecycle_and_kill_switch(store: TradingStateStore, session: str) -> None:
    record = store.get_session(session)
    assert record.started_at == pd.Timestamp("2021-01-04 14:30", tz="UTC")
    assert (record.model_name, record.model_version, record.challenger_version) == ("ppo_dow30", "7", "8")
    assert (record.broker, record.status, record.kill_switch, record.last_bar_time) == (
        "simulated",
        "running",
        False,
        None,
    )
    assert store.get_session("nobody") is None
    with pytest.raises(ValueError, match="exists already"):
        store.start_session(session, model_name="x", model_version="1", broker="simulated")

    store.set_last_bar_time(session, bar_time(2))
    store.set_last_bar_time(session, bar_time(1))  # an older bar never moves the mark back
    assert store.get_session(session).last_bar_time == bar_time(2)

    store.stop_session(session)
    assert store.get_session(session).status == "stopped"
    assert store.resume_session(session).status == "running"

    assert store.set_kill_switch(session, "drawdown 21% > 20%")
    assert not store.set_kill_switch(session, "second reason")
    record = store.get_session(session)
    assert (record.status, record.kill_switch, record.kill_reason) == ("killed", True, "drawdown 21% > 20%")
    store.stop_session(session)
    assert store.get_session(session).status == "killed"
    with pytest.raises(KillSwitchEngaged, match="drawdown 21%"):
        store.resume_session(session)
    assert store.get_session(session).status == "killed"

    store.clear_kill_switch(session)
    assert store.resume_session(session).status == "running"
    with pytest.raises(KeyError):
        store.resume_session("nobody")


def test_order_intents_are_idempotent_and_broker_updates_monotonic(
    store: TradingStateStore, session: str
) -> None:
    intent = dict(
        client_order_id="c-1",
        session_id=session,
        symbol="AAPL",
        side="buy",
        qty=np.float32(10),
        decision_time="2021-01-04 21:00",
        order_type="limit",
        limit_price=131.5,
        expected_price=130.25,
        created_at="2021-01-04 21:00:01",
    )
    assert store.record_order_intent(**intent)
    assert not store.record_order_intent(**{**intent, "qty": 99, "symbol": "MSFT"})
    order = store.get_order("c-1")
    assert (order["symbol"], order["qty"], order["status"], order["filled_qty"]) == (
        "AAPL",
        10.0,
        "pending_submit",
        0,
    )
    assert (order["limit_price"], order["expected_price"]) == (131.5, 130.25)
    assert order["decision_time"] == FIRST_BAR

    store.update_order("c-1", status="new", broker_order_id="b-1", updated_at="2021-01-04 21:00:02")
    store.update_order("c-1", status="partially_filled", filled_qty=4, filled_avg_price=131.0)
    store.update_order("c-1", status="filled", filled_qty=10, filled_avg_price=131.2)
    # A late stream message must not reopen a filled order or shrink its cumulative fill.
    store.update_order("c-1", status="partially_filled", filled_qty=4, filled_avg_price=131.0)
    order = store.get_order("c-1")
    assert (order["status"], order["broker_order_id"], order["filled_qty"], order["filled_avg_price"]) == (
        "filled",
        "b-1",
        10.0,
        131.2,
    )
    with pytest.raises(KeyError):
        store.update_order("missing", status="new")
    with pytest.raises(ValueError, match="side"):
        store.record_order_intent(**{**intent, "client_order_id": "c-2", "side": "long"})
    with pytest.raises(IntegrityError):  # foreign key: intents belong to a stored session
        store.record_order_intent(**{**intent, "client_order_id": "c-3", "session_id": "nobody"})


def test_pending_intents_are_what_a_restart_reconciles(store: TradingStateStore, session: str) -> None:
    for index, status in enumerate(
        ["pending_submit", "new", "partially_filled", "filled", "canceled", "rejected"]
    ):
        store.record_order_intent(
            client_order_id=f"c-{index}",
            session_id=session,
            symbol="KO",
            side="sell",
            qty=1,
            decision_time=FIRST_BAR,
            created_at=FIRST_BAR + pd.Timedelta(seconds=index),
        )
        if status != "pending_submit":
            store.update_order(f"c-{index}", status=status)
    assert list(store.pending_intents(session)["client_order_id"]) == ["c-0", "c-1", "c-2"]
    assert list(store.orders(session, statuses=["filled", "canceled"])["client_order_id"]) == ["c-3", "c-4"]
    orders = store.orders(session)
    assert len(orders) == 6 and str(orders["created_at"].dt.tz) == "UTC"


def test_fills_round_trip_and_are_stored_once(store: TradingStateStore, session: str) -> None:
    store.record_order_intent(
        client_order_id="c-1", session_id=session, symbol="AAPL", side="buy", qty=10, decision_time=FIRST_BAR
    )
    fill = dict(
        client_order_id="c-1",
        session_id=session,
        symbol="AAPL",
        side="buy",
        qty=4,
        price=131.0,
        filled_at="2021-01-05 14:30:00.123456",
        commission=0.1,
        spread_cost=0.2,
        impact_cost=0.3,
        source="broker",
    )
    assert store.record_fill(**fill)
    assert not store.record_fill(
        **{**fill, "filled_at": pd.Timestamp("2021-01-05 09:30:00.123456", tz="US/Eastern")}
    )
    assert store.record_fill(**{**fill, "qty": 6, "filled_at": "2021-01-05 14:31"})
    fills = store.fills(session)
    assert list(fills["qty"]) == [4.0, 6.0]
    first = fills.iloc[0]
    assert first["filled_at"] == pd.Timestamp("2021-01-05 14:30:00.123456", tz="UTC")
    assert (first["commission"], first["spread_cost"], first["impact_cost"], first["source"]) == (
        0.1,
        0.2,
        0.3,
        "broker",
    )
    with pytest.raises(IntegrityError):  # foreign key: a fill belongs to a recorded order
        store.record_fill(**{**fill, "client_order_id": "unknown"})


def test_positions_are_replaced(store: TradingStateStore, session: str) -> None:
    store.set_positions(session, "champion", {"AAPL": 3, "MSFT": np.float64(-2.5)})
    store.set_positions(session, "challenger", {"KO": 1})
    store.set_positions(session, "champion", {"MSFT": 4, "AAPL": 0})
    assert store.positions(session, "champion") == {"MSFT": 4.0}
    assert store.positions(session, "challenger") == {"KO": 1.0}


def test_decisions_are_idempotent_per_session_role_bar(store: TradingStateStore, session: str) -> None:
    assert store.last_decision_time(session, "champion") is None
    decision = dict(
        session_id=session,
        role="champion",
        bar_time=pd.Timestamp("2021-01-04 16:00", tz="US/Eastern"),
        model_version="7",
        targets={"AAPL": np.float32(0.5), "MSFT": 0.25},
        approved={"AAPL": 0.4, "MSFT": 0.25},
        latency_ms=8.0,
        cash=1_000.0,
        equity=100_000.0,
    )
    assert store.record_decision(**decision)
    assert not store.record_decision(**{**decision, "bar_time": FIRST_BAR, "targets": {}})
    assert store.record_decision(**{**decision, "role": "challenger", "model_version": "8"})
    assert store.record_decision(**{**decision, "bar_time": bar_time(1), "latency_ms": None})
    decisions = store.decisions(session)
    assert list(zip(decisions["bar_time"], decisions["role"], strict=True)) == [
        (FIRST_BAR, "champion"),
        (FIRST_BAR, "challenger"),
        (bar_time(1), "champion"),
    ]
    assert decisions.iloc[0]["targets"] == {"AAPL": 0.5, "MSFT": 0.25}
    assert decisions.iloc[0]["approved"] == {"AAPL": 0.4, "MSFT": 0.25}
    assert np.isnan(decisions.iloc[2]["latency_ms"])
    assert list(store.decisions(session, role="challenger")["model_version"]) == ["8"]
    assert store.last_decision_time(session, "champion") == bar_time(1)
    assert store.last_decision_time(session, "challenger") == FIRST_BAR


def test_json_refuses_nan_on_every_backend(store: TradingStateStore, session: str) -> None:
    with pytest.raises((ValueError, StatementError), match="JSON compliant"):
        store.record_decision(
            session_id=session,
            role="champion",
            bar_time=FIRST_BAR,
            model_version="7",
            targets={"AAPL": float("nan")},
            approved={},
        )
    assert store.decisions(session).empty


def test_interventions_replace_the_bars_rows(store: TradingStateStore, session: str) -> None:
    rows = [
        {"rule": "max_weight", "symbol": "AAPL", "requested": 10.0, "approved": 6.0, "reason": "weight 30%"},
        {"rule": "gross_exposure", "requested": 1.4, "approved": 1.0, "reason": "gross 140%"},
    ]
    assert store.record_interventions(session, "champion", FIRST_BAR, rows) == 2
    assert store.record_interventions(session, "champion", FIRST_BAR, rows) == 2
    assert store.record_interventions(session, "challenger", bar_time(1), rows[:1]) == 1
    stored = store.interventions(session)
    assert list(stored["rule"]) == ["max_weight", "gross_exposure", "max_weight"]
    assert list(stored["role"]) == ["champion", "champion", "challenger"]
    assert stored.iloc[1]["symbol"] is None and stored.iloc[1]["approved"] == 1.0
    assert stored.iloc[0]["reason"] == "weight 30%"


def test_equity_curve_is_indexed_by_bar_time(store: TradingStateStore, session: str) -> None:
    for index in (1, 0):
        assert store.record_equity(
            session_id=session,
            role="champion",
            bar_time=bar_time(index),
            equity=100.0 + index,
            cash=10.0,
            drawdown=0.01 * index,
            var_95=0.02,
            trading_state="ACTIVE",
        )
    assert not store.record_equity(
        session_id=session, role="champion", bar_time=FIRST_BAR, equity=1.0, cash=1.0
    )
    curve = store.equity_curve(session, "champion")
    assert list(curve.index) == [FIRST_BAR, bar_time(1)]
    assert curve.index.name == "bar_time"
    assert list(curve["equity"]) == [100.0, 101.0]
    assert list(curve.columns) == ["equity", "cash", "drawdown", "var_95", "trading_state"]
    assert store.equity_curve(session, "challenger").empty


def test_broker_snapshot_round_trip(store: TradingStateStore, session: str) -> None:
    assert store.load_broker_snapshot(session) is None
    store.save_broker_snapshot(session, FIRST_BAR, {"cash": np.int64(5), "holdings": np.array([1.0, 2.0])})
    store.save_broker_snapshot(session, bar_time(1), {"cash": 7.5, "holdings": {"AAPL": 3}, "open": []})
    assert store.load_broker_snapshot(session) == BrokerSnapshot(
        bar_time(1), {"cash": 7.5, "holdings": {"AAPL": 3}, "open": []}
    )


def test_alerts_round_trip(store: TradingStateStore, session: str) -> None:
    first = store.record_alert(session, "drawdown", "warning", "drawdown 12%", raised_at=bar_time(1))
    second = store.record_alert(session, "stale_data", "critical", "no bar for 2 days", raised_at=FIRST_BAR)
    assert first != second
    alerts = store.alerts(session)
    assert list(alerts["rule"]) == ["stale_data", "drawdown"]
    assert list(alerts["severity"]) == ["critical", "warning"]
    assert alerts.iloc[1]["raised_at"] == bar_time(1)


# ------------------------------------------------------------------------------------------------------------
# Transactions, crashes and concurrency
# ------------------------------------------------------------------------------------------------------------


def test_a_failing_bar_leaves_nothing_written(store: TradingStateStore, session: str) -> None:
    write_bar(store, session, 0)

    def broker_down() -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError, match="broker down"):
        write_bar(store, session, 1, midway=broker_down)
    assert_complete_bars(store, session, 1)
    # The store is usable again afterwards and the bar can be retried.
    write_bar(store, session, 1)
    assert_complete_bars(store, session, 2)


def test_nested_transactions_join_the_outer_one(store: TradingStateStore, session: str) -> None:
    with pytest.raises(RuntimeError), store.transaction() as outer:
        write_bar(store, session, 0)
        with store.transaction() as inner:
            assert inner is outer
        assert len(store.decisions(session)) == 1  # reads inside see the bar's own writes
        raise RuntimeError("abort the bar")
    assert_complete_bars(store, session, 0)


def _write_bars_then_die(url: str, session_id: str, complete_bars: int) -> None:
    """Child process: commit ``complete_bars`` bars, then die by SIGKILL halfway through the next one."""
    store = TradingStateStore(url)
    for index in range(complete_bars):
        write_bar(store, session_id, index)
    write_bar(store, session_id, complete_bars, midway=lambda: os.kill(os.getpid(), signal.SIGKILL))


def test_bars_survive_a_killed_process_whole_or_not_at_all(store: TradingStateStore, session: str) -> None:
    child = multiprocessing.get_context("spawn").Process(
        target=_write_bars_then_die, args=(store.engine.url.render_as_string(hide_password=False), session, 3)
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    with TradingStateStore(store.engine.url) as reopened:
        assert_complete_bars(reopened, session, 3)
        # Bar 3's decision and first intent were written before the kill and must be gone.
        assert reopened.get_order("bar3-AAPL") is None
        assert reopened.last_decision_time(session, "champion") == bar_time(2)


def test_reader_sees_committed_bars_while_a_writer_holds_its_transaction(
    store: TradingStateStore, session: str
) -> None:
    write_bar(store, session, 0)
    with TradingStateStore(store.engine.url, sqlite_busy_timeout_s=0) as reader:

        def read_while_writing() -> None:
            assert_complete_bars(reader, session, 1)

        write_bar(store, session, 1, midway=read_while_writing)
        assert_complete_bars(reader, session, 2)


def test_sqlite_read_snapshot_does_not_block_the_writer(tmp_path) -> None:
    """WAL: a reader's open snapshot lets a writer commit (a rollback journal: 'database is locked')."""
    path = tmp_path / "state.db"
    with TradingStateStore.sqlite(path) as setup:
        setup.create_schema()
        setup.start_session(SESSION, model_name="m", model_version="1", broker="simulated")
    with (
        TradingStateStore.sqlite(path, sqlite_busy_timeout_s=0) as writer,
        TradingStateStore.sqlite(path, sqlite_busy_timeout_s=0) as reader,
        reader.engine.connect() as snapshot,
    ):
        counted = select(decisions_table.c.id)
        assert snapshot.execute(counted).all() == []
        write_bar(writer, SESSION, 0)
        assert snapshot.execute(counted).all() == []  # the snapshot stays as it was
        assert len(reader.decisions(SESSION)) == 1


def _write_bars_signalling(url: str, session_id: str, bars: int, halfway: Event) -> None:
    store = TradingStateStore(url)
    for index in range(bars):
        write_bar(store, session_id, index)
        if index == bars // 2:
            halfway.set()
    store.close()


def test_concurrent_reader_never_hits_a_lock(store: TradingStateStore, session: str) -> None:
    """A reader polling with no busy timeout while another process writes bar after bar."""
    bars = 40
    context = multiprocessing.get_context("spawn")
    halfway = context.Event()
    writer = context.Process(
        target=_write_bars_signalling,
        args=(store.engine.url.render_as_string(hide_password=False), session, bars, halfway),
    )
    writer.start()
    try:
        assert halfway.wait(timeout=120)
        seen: list[int] = []
        with TradingStateStore(store.engine.url, sqlite_busy_timeout_s=0) as reader:
            while True:
                finished = not writer.is_alive()
                seen.append(len(reader.decisions(session)))
                reader.equity_curve(session, "champion")
                reader.pending_intents(session)
                if finished:
                    break
            writer.join(timeout=120)
            assert writer.exitcode == 0
            assert seen[0] >= bars // 2 + 1
            assert seen == sorted(seen) and seen[-1] == bars
            assert_complete_bars(reader, session, bars)
    finally:
        if writer.is_alive():
            writer.kill()
