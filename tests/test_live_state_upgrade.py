"""A trading-state database made by an earlier version is upgraded in place by ``create_schema``: the columns
it lacks are added and the sessions' status check learns ``finished``, every row kept."""

from __future__ import annotations

import sqlite3

import pytest

from tests.test_postgres_stores import postgres_database  # noqa: F401 - a fixture
from trading_core.live.state import SUBMIT_UNKNOWN, TradingStateStore, metadata

# The sessions table as the version before ``finished`` and ``stop_reason`` created it.
OLD_SESSIONS = """
CREATE TABLE sessions (
    session_id VARCHAR(128) NOT NULL,
    started_at DATETIME NOT NULL,
    model_name VARCHAR(200) NOT NULL,
    model_version VARCHAR(64) NOT NULL,
    challenger_version VARCHAR(64),
    broker VARCHAR(64) NOT NULL,
    status VARCHAR(16) NOT NULL,
    last_bar_time DATETIME,
    kill_switch BOOLEAN NOT NULL,
    kill_reason TEXT,
    CONSTRAINT pk_sessions PRIMARY KEY (session_id),
    CONSTRAINT ck_sessions_status CHECK (status IN ('running', 'stopped', 'killed'))
)
"""


@pytest.fixture()
def old_database(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SESSIONS)
    store = TradingStateStore.sqlite(path)
    metadata.create_all(store.engine, tables=[t for t in metadata.sorted_tables if t.name != "sessions"])
    store.close()
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE orders DROP COLUMN status_reason")
        # Rows as the old version wrote them: a running session with an order and its fill.
        connection.execute(
            "INSERT INTO sessions VALUES ('old', '2019-02-11 14:30:00', 'm', '1', NULL, 'simulated', 'running',"
            " NULL, 0, NULL)"
        )
        connection.execute(
            "INSERT INTO orders (client_order_id, session_id, role, symbol, side, qty, order_type, decision_time,"
            " status, filled_qty, created_at, updated_at) VALUES ('o1', 'old', 'champion', 'AAPL', 'buy', 2,"
            " 'market', '2019-02-11 14:31:00', 'pending_submit', 0, '2019-02-11 14:31:00', '2019-02-11 14:31:00')"
        )
        connection.execute(
            "INSERT INTO fills (client_order_id, session_id, symbol, side, qty, price, commission, spread_cost,"
            " impact_cost, filled_at, source) VALUES ('o1', 'old', 'AAPL', 'buy', 2, 170, 0, 0, 0,"
            " '2019-02-11 14:32:00', 'broker')"
        )
    return path


def test_an_old_database_is_upgraded_in_place(old_database):
    # What finishing a session did on the old schema:
    with pytest.raises(sqlite3.IntegrityError), sqlite3.connect(old_database) as connection:
        connection.execute("UPDATE sessions SET status = 'finished'")

    store = TradingStateStore.sqlite(old_database)
    store.create_schema()
    store.create_schema()  # idempotent
    store.finish_session("old")
    session = store.get_session("old")
    assert (session.status, session.stop_reason) == ("finished", "the bars ran out")
    store.update_order("o1", status=SUBMIT_UNKNOWN, status_reason="the submit got no answer: timeout")
    assert store.get_order("o1")["status_reason"] == "the submit got no answer: timeout"
    assert len(store.fills("old")) == 1  # rebuilding the sessions table cascaded to nothing
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert not connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    store.close()


def test_sessions_end_finished_or_stopped_with_a_reason_and_resume_running(tmp_path):
    store = TradingStateStore.sqlite(tmp_path / "state.db")
    store.create_schema()
    store.start_session("s", model_name="m", model_version="1", broker="simulated")
    store.stop_session("s", "the broker was unreachable for 61 s")
    assert (store.get_session("s").status, store.get_session("s").stop_reason) == (
        "stopped",
        "the broker was unreachable for 61 s",
    )
    resumed = store.resume_session("s")
    assert (
        (resumed.status, resumed.stop_reason)
        == ("running", None)
        == (
            store.get_session("s").status,
            store.get_session("s").stop_reason,
        )
    )
    store.set_kill_switch("s", "operator")
    store.finish_session("s")
    assert store.get_session("s").status == "killed"  # a killed session stays killed
    store.close()


def test_an_old_postgresql_database_is_upgraded_in_place(postgres_database):  # noqa: F811 - the fixture
    from tests.test_postgres_stores import sqlalchemy_url

    store = TradingStateStore(sqlalchemy_url(postgres_database))
    with store.engine.begin() as connection:
        connection.exec_driver_sql(OLD_SESSIONS.replace("DATETIME", "TIMESTAMP WITH TIME ZONE"))
    metadata.create_all(store.engine, tables=[t for t in metadata.sorted_tables if t.name != "sessions"])
    with store.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE orders DROP COLUMN status_reason")
        connection.exec_driver_sql(
            "INSERT INTO sessions VALUES ('old', now(), 'm', '1', NULL, 'simulated', 'running', NULL, false, NULL)"
        )
    store.create_schema()
    store.create_schema()
    store.stop_session("old", "interrupted")
    store.resume_session("old")
    store.finish_session("old")
    assert (store.get_session("old").status, store.get_session("old").stop_reason) == (
        "finished",
        "the bars ran out",
    )
    store.close()
