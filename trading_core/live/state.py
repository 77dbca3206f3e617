"""Durable state of live trading sessions in a SQL database: sqlite by default, PostgreSQL by URL.

Everything the live loop must not lose in a crash lives here: the session and its kill switch, write-ahead
order intents and their broker statuses, fills, positions, per-bar decisions, risk interventions, equity
marks, the simulated broker's snapshot and alerts. The loop writes one bar inside one
:meth:`TradingStateStore.transaction`, so after a crash the database holds each bar completely or not at all.

Timestamps go in as anything :class:`pandas.Timestamp` accepts (naive values are taken as UTC) and come out as
tz-aware UTC timestamps. The local default database belongs under the project's state folder
(``resources.state_home.StateHome``), e.g. ``TradingStateStore.sqlite(home.root / "live" / "state.db")``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Double,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import AddConstraint, CreateTable
from sqlalchemy.sql.elements import Case

from trading_core.monitoring.data_quality import ARRIVAL_HANDLINGS

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ROLES = (CHAMPION, CHALLENGER)
# finished: the bars ran out; stopped: stopped early (see the session's stop_reason); killed: the kill switch.
SESSION_STATUSES = ("running", "stopped", "killed", "finished")
SIDES = ("buy", "sell")
ORDER_TYPES = ("market", "limit")
FILL_SOURCES = ("broker", "simulated")
PENDING_SUBMIT = "pending_submit"
# Sent, but the broker's answer was lost (timeout, reset, 5xx or 429 after the retries): only the broker can
# say whether it holds the order, so it is asked by client order id until it answers.
SUBMIT_UNKNOWN = "unknown"
# Broker statuses after which an order never changes again; any other must be reconciled after a restart.
TERMINAL_ORDER_STATUSES = frozenset({"filled", "canceled", "cancelled", "expired", "rejected", "replaced"})

# Execution option read by the sqlite BEGIN hook: writers take the write lock up front (BEGIN IMMEDIATE) so a
# read-then-write transaction never fails on upgrading its lock; readers keep a deferred snapshot.
_SQLITE_BEGIN = "trading_state_sqlite_begin"


# ------------------------------------------------------------------------------------------------------------
# Column types
# ------------------------------------------------------------------------------------------------------------


def to_utc(value: Any) -> pd.Timestamp:
    """A tz-aware UTC timestamp; naive input is taken as UTC.

    :param value: anything :class:`pandas.Timestamp` accepts
    """
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ValueError(f"not a timestamp: {value!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


class UtcTimestamp(TypeDecorator[pd.Timestamp]):
    """UTC instant: ``timestamptz`` on PostgreSQL, naive UTC text on sqlite (which has no time zone type)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp = to_utc(value).floor("us").to_pydatetime()
        # Always written in one format, so equal instants compare equal inside sqlite's unique keys.
        return stamp.replace(tzinfo=None) if dialect.name == "sqlite" else stamp

    def process_result_value(self, value: Any, dialect: Dialect) -> pd.Timestamp | None:
        return None if value is None else to_utc(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):  # pandas Timestamps included
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(value: Any) -> str:
    # NaN is not JSON: PostgreSQL rejects it, so sqlite must too, or the two backends would disagree.
    return json.dumps(value, default=_json_default, allow_nan=False)


# ------------------------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------------------------

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _one_of(column: str, choices: Sequence[str]) -> CheckConstraint:
    listed = ", ".join(f"'{choice}'" for choice in choices)
    return CheckConstraint(f"{column} IN ({listed})", name=column)


def _session_fk() -> ForeignKey:
    return ForeignKey("sessions.session_id", ondelete="CASCADE")


sessions_table = Table(
    "sessions",
    metadata,
    Column("session_id", String(128), primary_key=True),
    Column("started_at", UtcTimestamp(), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("challenger_version", String(64)),
    Column("broker", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("last_bar_time", UtcTimestamp()),
    Column("kill_switch", Boolean(), nullable=False),
    Column("kill_reason", Text()),
    Column("stop_reason", Text()),
    _one_of("status", SESSION_STATUSES),
)

orders_table = Table(
    "orders",
    metadata,
    Column("client_order_id", String(128), primary_key=True),
    Column("session_id", String(128), _session_fk(), nullable=False),
    Column("role", String(16), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("side", String(4), nullable=False),
    Column("qty", Double(), nullable=False),
    Column("order_type", String(16), nullable=False),
    Column("limit_price", Double()),
    Column("decision_time", UtcTimestamp(), nullable=False),
    Column("status", String(32), nullable=False),
    Column("broker_order_id", String(128)),
    Column("filled_qty", Double(), nullable=False),
    Column("filled_avg_price", Double()),
    Column("expected_price", Double()),
    # Why the order is in its status when the status alone does not say: a rejection's reason, a cancel's cause.
    Column("status_reason", Text()),
    Column("created_at", UtcTimestamp(), nullable=False),
    Column("updated_at", UtcTimestamp(), nullable=False),
    _one_of("role", ROLES),
    _one_of("side", SIDES),
    _one_of("order_type", ORDER_TYPES),
    CheckConstraint("qty > 0", name="qty_positive"),
    Index(None, "session_id", "status"),
)

fills_table = Table(
    "fills",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("client_order_id", String(128), ForeignKey("orders.client_order_id"), nullable=False),
    Column("session_id", String(128), _session_fk(), nullable=False),
    Column("symbol", String(32), nullable=False),
    Column("side", String(4), nullable=False),
    Column("qty", Double(), nullable=False),
    Column("price", Double(), nullable=False),
    Column("commission", Double(), nullable=False),
    Column("spread_cost", Double(), nullable=False),
    Column("impact_cost", Double(), nullable=False),
    Column("filled_at", UtcTimestamp(), nullable=False),
    Column("source", String(16), nullable=False),
    _one_of("side", SIDES),
    _one_of("source", FILL_SOURCES),
    # The source is part of the key: the simulated mirror of a broker fill may match it exactly.
    UniqueConstraint("client_order_id", "source", "filled_at", "qty", "price"),
    Index(None, "session_id"),
)

positions_table = Table(
    "positions",
    metadata,
    Column("session_id", String(128), _session_fk(), primary_key=True),
    Column("role", String(16), primary_key=True),
    Column("symbol", String(32), primary_key=True),
    Column("qty", Double(), nullable=False),
    Column("updated_at", UtcTimestamp(), nullable=False),
    _one_of("role", ROLES),
)

decisions_table = Table(
    "decisions",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("session_id", String(128), _session_fk(), nullable=False),
    Column("role", String(16), nullable=False),
    Column("bar_time", UtcTimestamp(), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("targets", JSON(), nullable=False),
    Column("approved", JSON(), nullable=False),
    Column("latency_ms", Double()),
    Column("cash", Double()),
    Column("equity", Double()),
    _one_of("role", ROLES),
    UniqueConstraint("session_id", "role", "bar_time"),
)

interventions_table = Table(
    "risk_interventions",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("session_id", String(128), _session_fk(), nullable=False),
    Column("role", String(16), nullable=False),
    Column("bar_time", UtcTimestamp(), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("symbol", String(32)),
    Column("requested", Double()),
    Column("approved", Double()),
    Column("reason", Text(), nullable=False),
    _one_of("role", ROLES),
    Index(None, "session_id", "role", "bar_time"),
)

equity_marks_table = Table(
    "equity_marks",
    metadata,
    Column("session_id", String(128), _session_fk(), primary_key=True),
    Column("role", String(16), primary_key=True),
    Column("bar_time", UtcTimestamp(), primary_key=True),
    Column("equity", Double(), nullable=False),
    Column("cash", Double(), nullable=False),
    Column("drawdown", Double()),
    Column("var_95", Double()),
    Column("trading_state", String(16)),
    _one_of("role", ROLES),
)

broker_snapshots_table = Table(
    "broker_snapshots",
    metadata,
    Column("session_id", String(128), _session_fk(), primary_key=True),
    Column("bar_time", UtcTimestamp(), nullable=False),
    Column("payload", JSON(), nullable=False),
)

alerts_table = Table(
    "alerts",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("session_id", String(128), _session_fk(), nullable=False),
    Column("raised_at", UtcTimestamp(), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("message", Text(), nullable=False),
    Index(None, "session_id"),
)

# Alerts stored but not yet handed to the alert sinks: written in the bar's transaction, removed once delivered, so
# a process killed in between delivers them when the session resumes (a table of its own, which create_schema
# adds to databases written before it existed).
alert_outbox_table = Table(
    "alert_outbox",
    metadata,
    Column("alert_id", Integer(), ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True),
    Column("session_id", String(128), _session_fk(), nullable=False),
    Column("resolved", Boolean(), nullable=False),
    Index(None, "session_id"),
)

# Every bar event the loop received (traded, skipped, or outside market hours) with when it arrived: the
# per-feed data quality (trading_core.monitoring.data_quality). A table of its own, which create_schema adds to
# databases written before it existed; rows are written in the bar's transaction, in arrival order (``id``).
bar_arrivals_table = Table(
    "bar_arrivals",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("session_id", String(128), _session_fk(), nullable=False),
    Column("feed", String(64), nullable=False),
    Column("bar_time", UtcTimestamp(), nullable=False),
    Column("received_at", UtcTimestamp(), nullable=False),
    # Whether the feed stamped received_at itself (a live stream) or the loop's wall clock did (a replay).
    Column("source_clock", Boolean(), nullable=False),
    Column("symbols", Integer(), nullable=False),
    Column("expected_symbols", Integer(), nullable=False),
    Column("max_quote_age_s", Double()),
    Column("handling", String(16), nullable=False),
    _one_of("handling", ARRIVAL_HANDLINGS),
    Index(None, "session_id", "id"),
)


# ------------------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionRecord:
    """One live trading session as stored.

    :param last_bar_time: the newest bar the loop finished, ``None`` before the first
    :param kill_switch: engaged kill switch; a session with it engaged is never resumed
    :param stop_reason: why a ``stopped`` or ``finished`` session ended, ``None`` while it runs
    """

    session_id: str
    started_at: pd.Timestamp
    model_name: str
    model_version: str
    challenger_version: str | None
    broker: str
    status: str
    last_bar_time: pd.Timestamp | None
    kill_switch: bool
    kill_reason: str | None
    stop_reason: str | None = None


@dataclass(frozen=True)
class BrokerSnapshot:
    """The simulated broker's state as saved after ``bar_time``."""

    bar_time: pd.Timestamp
    payload: dict[str, Any]


class KillSwitchEngaged(RuntimeError):
    """A session whose kill switch is engaged was asked to trade again."""

    def __init__(self, session_id: str, reason: str | None) -> None:
        super().__init__(f"kill switch of session {session_id!r} is engaged: {reason}")
        self.session_id = session_id
        self.reason = reason


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def _status_text(status: Any) -> str:
    # Broker SDKs hand out enums (alpaca's OrderStatus); the table keeps their lower-case values.
    return str(getattr(status, "value", status)).lower()


def _champion_first(role: Column[str]) -> Case[int]:
    return case((role == CHAMPION, 0), else_=1)


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


# ------------------------------------------------------------------------------------------------------------
# Store
# ------------------------------------------------------------------------------------------------------------


class TradingStateStore:
    """Trading state in any SQLAlchemy database; sqlite files run in WAL mode with foreign keys on.

    Every method runs in its own transaction unless called inside :meth:`transaction`, whose single
    transaction it then joins (in the same thread; other threads keep their own), so the live loop writes a
    whole bar atomically::

        with store.transaction():
            store.record_decision(...)
            store.record_order_intent(...)
            store.record_equity(...)

    :param url: SQLAlchemy URL, e.g. ``sqlite:////abs/path/state.db`` or ``postgresql://user@host/db``
        (plain ``postgresql://`` is served by psycopg2, the driver the project ships)
    :param sqlite_busy_timeout_s: how long a sqlite writer waits for another writer's lock before failing
    """

    def __init__(self, url: str | URL, *, sqlite_busy_timeout_s: float = 30.0) -> None:
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg2")
        self._url = parsed
        is_sqlite = parsed.get_backend_name() == "sqlite"
        self._engine = create_engine(parsed, json_serializer=_dumps, pool_pre_ping=not is_sqlite)
        if is_sqlite:
            _configure_sqlite(self._engine, sqlite_busy_timeout_s)
        self._ambient: ContextVar[Connection | None] = ContextVar(f"trading_state_{id(self)}", default=None)

    @classmethod
    def sqlite(cls, path: str | Path, *, sqlite_busy_timeout_s: float = 30.0) -> TradingStateStore:
        """A store in the sqlite file at ``path``; its folder is created when missing.

        :param path: database file
        :param sqlite_busy_timeout_s: how long a writer waits for another writer's lock
        """
        file = Path(path).expanduser().resolve()
        file.parent.mkdir(parents=True, exist_ok=True)
        return cls(URL.create("sqlite", database=str(file)), sqlite_busy_timeout_s=sqlite_busy_timeout_s)

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._url.render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for monitoring queries and tests)."""
        return self._engine

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> TradingStateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def create_schema(self) -> None:
        """Create the tables that are missing and bring tables of older versions up to date; rows are kept."""
        metadata.create_all(self._engine, checkfirst=True)
        _upgrade_schema(self._engine)
        logger.info("trading state schema ready at %s", self.url)

    # ------------------------------------------------------------------------------------------- transactions

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction that every store call inside the block joins; it commits when the block ends and
        rolls back entirely when it raises. Nested blocks join the outer transaction.

        :return: the transaction's connection, for statements of one's own in the same transaction
        """
        ambient = self._ambient.get()
        if ambient is not None:
            yield ambient
            return
        with self._engine.connect() as connection:
            connection.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
            with connection.begin():
                token = self._ambient.set(connection)
                try:
                    yield connection
                finally:
                    self._ambient.reset(token)

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        ambient = self._ambient.get()
        if ambient is not None:
            yield ambient
            return
        with self._engine.connect() as connection:
            yield connection

    @staticmethod
    def _insert_ignore(connection: Connection, table: Table, values: Mapping[str, Any]) -> bool:
        """Insert a row unless it clashes with a primary or unique key; True when it was inserted."""
        dialect = connection.dialect.name
        if dialect in ("sqlite", "postgresql"):
            dialect_insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
            result = connection.execute(dialect_insert(table).values(**values).on_conflict_do_nothing())
            return result.rowcount == 1
        try:  # other databases: a savepoint keeps the clash from aborting the surrounding transaction
            with connection.begin_nested():
                connection.execute(insert(table).values(**values))
        except IntegrityError:
            return False
        return True

    # ----------------------------------------------------------------------------------------------- sessions

    def start_session(
        self,
        session_id: str,
        *,
        model_name: str,
        model_version: str,
        broker: str,
        challenger_version: str | None = None,
        started_at: Any = None,
    ) -> SessionRecord:
        """Register a new running session.

        :param session_id: unique id chosen by the caller
        :param model_name: registered model that trades
        :param model_version: champion version
        :param broker: broker adapter name (e.g. ``alpaca_paper``, ``simulated``)
        :param challenger_version: version run in shadow alongside the champion, if any
        :param started_at: start time, now when omitted
        :raises ValueError: when the session exists already (use :meth:`resume_session`)
        """
        row = {
            "session_id": session_id,
            "started_at": to_utc(started_at if started_at is not None else pd.Timestamp.now("UTC")),
            "model_name": model_name,
            "model_version": model_version,
            "challenger_version": challenger_version,
            "broker": broker,
            "status": "running",
            "last_bar_time": None,
            "kill_switch": False,
            "kill_reason": None,
            "stop_reason": None,
        }
        with self.transaction() as connection:
            if not self._insert_ignore(connection, sessions_table, row):
                raise ValueError(f"session {session_id!r} exists already; resume it instead")
            return self._locked_session(connection, session_id)

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The stored session, ``None`` when unknown."""
        with self._reading() as connection:
            return self._session(connection, session_id)

    def sessions(self) -> pd.DataFrame:
        """Every stored session, oldest first."""
        return self._frame(sessions_table, select(sessions_table).order_by(sessions_table.c.started_at))

    @staticmethod
    def _session(connection: Connection, session_id: str, *, lock: bool = False) -> SessionRecord | None:
        query = select(sessions_table).where(sessions_table.c.session_id == session_id)
        row = connection.execute(query.with_for_update() if lock else query).mappings().first()
        return None if row is None else SessionRecord(**row)

    def _locked_session(self, connection: Connection, session_id: str) -> SessionRecord:
        record = self._session(connection, session_id, lock=True)
        if record is None:
            raise KeyError(f"unknown session {session_id!r}")
        return record

    def _set_session(self, connection: Connection, session_id: str, **values: Any) -> None:
        connection.execute(
            update(sessions_table).where(sessions_table.c.session_id == session_id).values(**values)
        )

    def resume_session(self, session_id: str) -> SessionRecord:
        """Mark a stored session running again, e.g. after a crash or a planned stop.

        :raises KeyError: unknown session
        :raises KillSwitchEngaged: its kill switch is engaged (an operator must clear it first)
        """
        with self.transaction() as connection:
            record = self._locked_session(connection, session_id)
            if record.kill_switch:
                raise KillSwitchEngaged(session_id, record.kill_reason)
            self._set_session(connection, session_id, status="running", stop_reason=None)
        return replace(record, status="running", stop_reason=None)

    def set_kill_switch(self, session_id: str, reason: str) -> bool:
        """Engage the kill switch and mark the session killed; the first reason is kept.

        :return: True when this call engaged it, False when it was engaged already
        """
        with self.transaction() as connection:
            if self._locked_session(connection, session_id).kill_switch:
                return False
            self._set_session(connection, session_id, kill_switch=True, kill_reason=reason, status="killed")
        logger.warning("kill switch engaged for session %s: %s", session_id, reason)
        return True

    def clear_kill_switch(self, session_id: str) -> None:
        """Operator's reset after a kill: the session is stopped and may be resumed."""
        with self.transaction() as connection:
            self._locked_session(connection, session_id)
            self._set_session(connection, session_id, kill_switch=False, kill_reason=None, status="stopped")

    def stop_session(self, session_id: str, reason: str | None = None) -> None:
        """Mark a running session stopped; a killed session stays killed.

        :param reason: why it stopped (an outage past its grace, an operator's interrupt...)
        """
        self._end_session(session_id, "stopped", reason)

    def finish_session(self, session_id: str, reason: str = "the bars ran out") -> None:
        """Mark a running session finished (its bars ran out); a killed session stays killed."""
        self._end_session(session_id, "finished", reason)

    def _end_session(self, session_id: str, status: str, reason: str | None) -> None:
        with self.transaction() as connection:
            if self._locked_session(connection, session_id).status == "running":
                self._set_session(connection, session_id, status=status, stop_reason=reason)

    def set_last_bar_time(self, session_id: str, bar_time: Any) -> None:
        """Record the newest finished bar (never moves backwards); write it in the bar's transaction."""
        stamp = to_utc(bar_time)
        with self.transaction() as connection:
            last = self._locked_session(connection, session_id).last_bar_time
            if last is None or stamp > last:
                self._set_session(connection, session_id, last_bar_time=stamp)

    # ------------------------------------------------------------------------------------------------- orders

    def record_order_intent(
        self,
        *,
        client_order_id: str,
        session_id: str,
        symbol: str,
        side: str,
        qty: float,
        decision_time: Any,
        role: str = CHAMPION,
        order_type: str = "market",
        limit_price: float | None = None,
        expected_price: float | None = None,
        created_at: Any = None,
    ) -> bool:
        """Write-ahead intent of an order, status ``pending_submit``, before the broker is called.

        :param client_order_id: idempotency key shared with the broker
        :param side: ``buy`` or ``sell``
        :param qty: shares, positive
        :param decision_time: bar whose decision produced the order
        :param limit_price: required for ``limit`` orders
        :param expected_price: fill price the decision model assumed, for slippage reconciliation
        :return: True when recorded, False when the id exists already (nothing is changed then)
        """
        _check_choice("side", side, SIDES)
        _check_choice("role", role, ROLES)
        _check_choice("order_type", order_type, ORDER_TYPES)
        if not qty > 0:
            raise ValueError(f"qty must be positive, got {qty!r}")
        if order_type == "limit" and limit_price is None:
            raise ValueError("a limit order needs limit_price")
        now = to_utc(created_at if created_at is not None else pd.Timestamp.now("UTC"))
        row = {
            "client_order_id": client_order_id,
            "session_id": session_id,
            "role": role,
            "symbol": symbol,
            "side": side,
            "qty": float(qty),
            "order_type": order_type,
            "limit_price": _optional_float(limit_price),
            "decision_time": to_utc(decision_time),
            "status": PENDING_SUBMIT,
            "broker_order_id": None,
            "filled_qty": 0.0,
            "filled_avg_price": None,
            "expected_price": _optional_float(expected_price),
            "created_at": now,
            "updated_at": now,
        }
        with self.transaction() as connection:
            return self._insert_ignore(connection, orders_table, row)

    def update_order(
        self,
        client_order_id: str,
        *,
        status: Any = None,
        broker_order_id: str | None = None,
        filled_qty: float | None = None,
        filled_avg_price: float | None = None,
        updated_at: Any = None,
        status_reason: str | None = None,
    ) -> None:
        """Apply a broker update; fields left ``None`` keep their value.

        Updates may arrive out of order (stream and polling), so a terminal status is never replaced by an
        open one and the cumulative ``filled_qty`` never shrinks.

        :param status: broker status (string or enum with a ``value``)
        :param status_reason: why the order has this status (a rejection's reason...); written with the status,
            so a status applied without one clears the reason of the status it replaces
        :raises KeyError: unknown order
        """
        with self.transaction() as connection:
            current = (
                connection.execute(
                    select(orders_table.c.status, orders_table.c.filled_qty)
                    .where(orders_table.c.client_order_id == client_order_id)
                    .with_for_update()
                )
                .mappings()
                .first()
            )
            if current is None:
                raise KeyError(f"unknown order {client_order_id!r}")
            values: dict[str, Any] = {}
            if status is not None:
                new_status = _status_text(status)
                stale = (
                    current["status"] in TERMINAL_ORDER_STATUSES and new_status not in TERMINAL_ORDER_STATUSES
                )
                if not stale:
                    values["status"] = new_status
                    values["status_reason"] = status_reason
            if broker_order_id is not None:
                values["broker_order_id"] = broker_order_id
            if filled_qty is not None and float(filled_qty) >= current["filled_qty"]:
                values["filled_qty"] = float(filled_qty)
                if filled_avg_price is not None:
                    values["filled_avg_price"] = float(filled_avg_price)
            if not values:
                return
            values["updated_at"] = to_utc(updated_at if updated_at is not None else pd.Timestamp.now("UTC"))
            connection.execute(
                update(orders_table).where(orders_table.c.client_order_id == client_order_id).values(**values)
            )

    def get_order(self, client_order_id: str) -> dict[str, Any] | None:
        """One order as a dict, ``None`` when unknown."""
        with self._reading() as connection:
            row = (
                connection.execute(
                    select(orders_table).where(orders_table.c.client_order_id == client_order_id)
                )
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    def orders(self, session_id: str, statuses: Iterable[str] | None = None) -> pd.DataFrame:
        """The session's orders, oldest first.

        :param statuses: keep only these statuses; all when ``None``
        """
        query = select(orders_table).where(orders_table.c.session_id == session_id)
        if statuses is not None:
            query = query.where(orders_table.c.status.in_([_status_text(s) for s in statuses]))
        return self._frame(
            orders_table, query.order_by(orders_table.c.created_at, orders_table.c.client_order_id)
        )

    def pending_intents(self, session_id: str) -> pd.DataFrame:
        """Orders a restart must reconcile with the broker: ``pending_submit`` intents and open orders."""
        query = (
            select(orders_table)
            .where(orders_table.c.session_id == session_id)
            .where(orders_table.c.status.not_in(sorted(TERMINAL_ORDER_STATUSES)))
            .order_by(orders_table.c.created_at, orders_table.c.client_order_id)
        )
        return self._frame(orders_table, query)

    # -------------------------------------------------------------------------------------------------- fills

    def record_fill(
        self,
        *,
        client_order_id: str,
        session_id: str,
        symbol: str,
        side: str,
        qty: float,
        price: float,
        filled_at: Any,
        commission: float = 0.0,
        spread_cost: float = 0.0,
        impact_cost: float = 0.0,
        source: str = "broker",
    ) -> bool:
        """Record one (partial) fill of a recorded order.

        :param source: ``broker`` for a real execution report, ``simulated`` for the cost model's fill
        :return: True when recorded, False when the same fill (order, time, qty, price) is stored already
        """
        _check_choice("side", side, SIDES)
        _check_choice("source", source, FILL_SOURCES)
        row = {
            "client_order_id": client_order_id,
            "session_id": session_id,
            "symbol": symbol,
            "side": side,
            "qty": float(qty),
            "price": float(price),
            "commission": float(commission),
            "spread_cost": float(spread_cost),
            "impact_cost": float(impact_cost),
            "filled_at": to_utc(filled_at),
            "source": source,
        }
        with self.transaction() as connection:
            return self._insert_ignore(connection, fills_table, row)

    def fills(self, session_id: str) -> pd.DataFrame:
        """The session's fills in time order."""
        query = (
            select(fills_table)
            .where(fills_table.c.session_id == session_id)
            .order_by(fills_table.c.filled_at, fills_table.c.id)
        )
        return self._frame(fills_table, query)

    # ---------------------------------------------------------------------------------------------- positions

    def set_positions(
        self, session_id: str, role: str, positions: Mapping[str, float], *, updated_at: Any = None
    ) -> None:
        """Replace the role's positions; zero quantities are not stored.

        :param positions: shares per symbol
        """
        _check_choice("role", role, ROLES)
        now = to_utc(updated_at if updated_at is not None else pd.Timestamp.now("UTC"))
        rows = [
            {"session_id": session_id, "role": role, "symbol": symbol, "qty": float(qty), "updated_at": now}
            for symbol, qty in positions.items()
            if float(qty) != 0.0
        ]
        with self.transaction() as connection:
            connection.execute(
                delete(positions_table).where(
                    positions_table.c.session_id == session_id, positions_table.c.role == role
                )
            )
            if rows:
                connection.execute(insert(positions_table), rows)

    def positions(self, session_id: str, role: str) -> dict[str, float]:
        """Shares per symbol of the role, sorted by symbol."""
        query = (
            select(positions_table.c.symbol, positions_table.c.qty)
            .where(positions_table.c.session_id == session_id, positions_table.c.role == role)
            .order_by(positions_table.c.symbol)
        )
        with self._reading() as connection:
            return {symbol: qty for symbol, qty in connection.execute(query)}

    # ---------------------------------------------------------------------------------------------- decisions

    def record_decision(
        self,
        *,
        session_id: str,
        role: str,
        bar_time: Any,
        model_version: str,
        targets: Mapping[str, Any],
        approved: Mapping[str, Any],
        latency_ms: float | None = None,
        cash: float | None = None,
        equity: float | None = None,
    ) -> bool:
        """Record what a model asked for at a bar and what the risk manager approved.

        :param targets: the model's targets, e.g. weights or shares per symbol (JSON-serialisable)
        :param approved: the targets after risk review
        :param latency_ms: time from bar close to decision
        :return: True when recorded, False when the (session, role, bar) decision exists already
        """
        _check_choice("role", role, ROLES)
        row = {
            "session_id": session_id,
            "role": role,
            "bar_time": to_utc(bar_time),
            "model_version": model_version,
            "targets": dict(targets),
            "approved": dict(approved),
            "latency_ms": _optional_float(latency_ms),
            "cash": _optional_float(cash),
            "equity": _optional_float(equity),
        }
        with self.transaction() as connection:
            return self._insert_ignore(connection, decisions_table, row)

    def decisions(self, session_id: str, role: str | None = None) -> pd.DataFrame:
        """Decisions in bar order (champion before challenger within a bar).

        :param role: keep only this role; both when ``None``
        """
        query = select(decisions_table).where(decisions_table.c.session_id == session_id)
        if role is not None:
            query = query.where(decisions_table.c.role == role)
        return self._frame(
            decisions_table,
            query.order_by(decisions_table.c.bar_time, _champion_first(decisions_table.c.role)),
        )

    def last_decision_time(self, session_id: str, role: str) -> pd.Timestamp | None:
        """Bar time of the role's newest decision, ``None`` before the first."""
        query = select(func.max(decisions_table.c.bar_time)).where(
            decisions_table.c.session_id == session_id, decisions_table.c.role == role
        )
        with self._reading() as connection:
            return connection.execute(query).scalar()

    # ------------------------------------------------------------------------------------- risk interventions

    def record_interventions(
        self, session_id: str, role: str, bar_time: Any, rows: Iterable[Mapping[str, Any]]
    ) -> int:
        """Store the risk manager's interventions of one bar, replacing any stored for it before.

        :param rows: mappings with ``rule`` and ``reason``, optionally ``symbol``, ``requested``, ``approved``
        :return: number of rows stored
        """
        _check_choice("role", role, ROLES)
        stamp = to_utc(bar_time)
        records = [
            {
                "session_id": session_id,
                "role": role,
                "bar_time": stamp,
                "rule": str(row["rule"]),
                "symbol": row.get("symbol"),
                "requested": _optional_float(row.get("requested")),
                "approved": _optional_float(row.get("approved")),
                "reason": str(row["reason"]),
            }
            for row in rows
        ]
        with self.transaction() as connection:
            connection.execute(
                delete(interventions_table).where(
                    interventions_table.c.session_id == session_id,
                    interventions_table.c.role == role,
                    interventions_table.c.bar_time == stamp,
                )
            )
            if records:
                connection.execute(insert(interventions_table), records)
        return len(records)

    def interventions(self, session_id: str) -> pd.DataFrame:
        """The session's interventions in bar order, both roles."""
        query = (
            select(interventions_table)
            .where(interventions_table.c.session_id == session_id)
            .order_by(
                interventions_table.c.bar_time,
                _champion_first(interventions_table.c.role),
                interventions_table.c.id,
            )
        )
        return self._frame(interventions_table, query)

    # ------------------------------------------------------------------------------------------------- equity

    def record_equity(
        self,
        *,
        session_id: str,
        role: str,
        bar_time: Any,
        equity: float,
        cash: float,
        drawdown: float | None = None,
        var_95: float | None = None,
        trading_state: str | None = None,
    ) -> bool:
        """Mark the role's portfolio at a bar close.

        :param drawdown: loss from the running peak, as a fraction
        :param var_95: one-day 95% VaR as a fraction of equity
        :param trading_state: risk manager state, e.g. ``ACTIVE``, ``REDUCING``, ``HALTED``
        :return: True when recorded, False when the (session, role, bar) mark exists already
        """
        _check_choice("role", role, ROLES)
        row = {
            "session_id": session_id,
            "role": role,
            "bar_time": to_utc(bar_time),
            "equity": float(equity),
            "cash": float(cash),
            "drawdown": _optional_float(drawdown),
            "var_95": _optional_float(var_95),
            "trading_state": None
            if trading_state is None
            else str(getattr(trading_state, "name", trading_state)),
        }
        with self.transaction() as connection:
            return self._insert_ignore(connection, equity_marks_table, row)

    def equity_curve(self, session_id: str, role: str) -> pd.DataFrame:
        """The role's marks indexed by ``bar_time``: equity, cash, drawdown, var_95, trading_state."""
        query = (
            select(equity_marks_table)
            .where(equity_marks_table.c.session_id == session_id, equity_marks_table.c.role == role)
            .order_by(equity_marks_table.c.bar_time)
        )
        return (
            self._frame(equity_marks_table, query).drop(columns=["session_id", "role"]).set_index("bar_time")
        )

    # --------------------------------------------------------------------------------------- broker snapshots

    def save_broker_snapshot(self, session_id: str, bar_time: Any, payload: Mapping[str, Any]) -> None:
        """Replace the session's simulated-broker snapshot.

        :param payload: the broker's state dict (JSON; numpy scalars and timestamps are converted)
        """
        row = {"session_id": session_id, "bar_time": to_utc(bar_time), "payload": dict(payload)}
        with self.transaction() as connection:
            connection.execute(
                delete(broker_snapshots_table).where(broker_snapshots_table.c.session_id == session_id)
            )
            connection.execute(insert(broker_snapshots_table).values(**row))

    def load_broker_snapshot(self, session_id: str) -> BrokerSnapshot | None:
        """The session's latest snapshot, ``None`` when none was saved."""
        query = select(broker_snapshots_table.c.bar_time, broker_snapshots_table.c.payload).where(
            broker_snapshots_table.c.session_id == session_id
        )
        with self._reading() as connection:
            row = connection.execute(query).first()
        return None if row is None else BrokerSnapshot(bar_time=row.bar_time, payload=row.payload)

    # ------------------------------------------------------------------------------------------------- alerts

    def record_alert(
        self,
        session_id: str,
        rule: str,
        severity: str,
        message: str,
        *,
        raised_at: Any = None,
        resolved: bool | None = None,
    ) -> int:
        """Store one alert.

        :param rule: alert rule that fired
        :param severity: e.g. ``info``, ``warning``, ``critical``
        :param resolved: when given, the alert also waits in the outbox (:meth:`undelivered_alerts`) until
            :meth:`mark_alert_delivered`; ``True`` for the notice that a bad state cleared
        :return: the alert's id
        """
        row = {
            "session_id": session_id,
            "raised_at": to_utc(raised_at if raised_at is not None else pd.Timestamp.now("UTC")),
            "rule": rule,
            "severity": severity,
            "message": message,
        }
        with self.transaction() as connection:
            alert_id = int(connection.execute(insert(alerts_table).values(**row)).inserted_primary_key[0])
            if resolved is not None:
                outbox = {"alert_id": alert_id, "session_id": session_id, "resolved": bool(resolved)}
                connection.execute(insert(alert_outbox_table).values(**outbox))
            return alert_id

    def undelivered_alerts(self, session_id: str) -> pd.DataFrame:
        """The session's alerts still in the outbox, oldest first: the columns of :meth:`alerts` and ``resolved``."""
        query = (
            select(alerts_table, alert_outbox_table.c.resolved)
            .join(alert_outbox_table, alert_outbox_table.c.alert_id == alerts_table.c.id)
            .where(alerts_table.c.session_id == session_id)
            .order_by(alerts_table.c.id)
        )
        with self._reading() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        frame = pd.DataFrame(rows, columns=[*(c.name for c in alerts_table.columns), "resolved"])
        frame["raised_at"] = pd.to_datetime(frame["raised_at"], utc=True)
        return frame.astype({"resolved": bool})

    def mark_alert_delivered(self, alert_id: int) -> None:
        """Take an alert out of the outbox: the sinks have it."""
        with self.transaction() as connection:
            connection.execute(delete(alert_outbox_table).where(alert_outbox_table.c.alert_id == alert_id))

    def alerts(self, session_id: str) -> pd.DataFrame:
        """The session's alerts, oldest first."""
        query = (
            select(alerts_table)
            .where(alerts_table.c.session_id == session_id)
            .order_by(alerts_table.c.raised_at, alerts_table.c.id)
        )
        return self._frame(alerts_table, query)

    # ------------------------------------------------------------------------------------------- bar arrivals

    def record_bar_arrivals(self, session_id: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store bar events as they reached the loop, in arrival order; write them in the bar's transaction.

        :param rows: mappings with ``feed``, ``bar_time``, ``received_at``, ``source_clock``, ``symbols``,
            ``expected_symbols``, ``max_quote_age_s`` (``None`` without quotes) and ``handling``
            (:data:`~trading_core.monitoring.data_quality.ARRIVAL_HANDLINGS`)
        :return: number of rows stored
        """
        records = [
            {
                "session_id": session_id,
                "feed": str(row["feed"]),
                "bar_time": to_utc(row["bar_time"]),
                "received_at": to_utc(row["received_at"]),
                "source_clock": bool(row["source_clock"]),
                "symbols": int(row["symbols"]),
                "expected_symbols": int(row["expected_symbols"]),
                "max_quote_age_s": _optional_float(row.get("max_quote_age_s")),
                "handling": _check_choice("handling", str(row["handling"]), ARRIVAL_HANDLINGS),
            }
            for row in rows
        ]
        if records:
            with self.transaction() as connection:
                connection.execute(insert(bar_arrivals_table), records)
        return len(records)

    def bar_arrivals(
        self,
        session_id: str | None = None,
        *,
        last: int | None = None,
        handlings: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Stored bar arrivals in arrival order: every session's, or one session's.

        :param session_id: keep only this session; all when ``None``
        :param last: keep only the newest ``last`` arrivals
        :param handlings: keep only these handlings; all when ``None``
        """
        table = bar_arrivals_table
        query = select(table)
        if session_id is not None:
            query = query.where(table.c.session_id == session_id)
        if handlings is not None:
            query = query.where(table.c.handling.in_(list(handlings)))
        if last is not None:
            newest = query.order_by(table.c.id.desc()).limit(last).subquery()
            query = select(*newest.c).order_by(newest.c.id)
        else:
            query = query.order_by(table.c.id)
        frame = self._frame(table, query)
        return frame.astype({"source_clock": bool})

    # ------------------------------------------------------------------------------------------------ helpers

    def _frame(self, table: Table, query: Any) -> pd.DataFrame:
        """Rows of ``query`` as a frame with every column of ``table``, typed even when empty."""
        with self._reading() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        frame = pd.DataFrame(rows, columns=[column.name for column in table.columns])
        for column in table.columns:
            if isinstance(column.type, UtcTimestamp):
                frame[column.name] = pd.to_datetime(frame[column.name], utc=True)
            elif isinstance(column.type, Double):
                frame[column.name] = frame[column.name].astype(float)
        return frame


def _upgrade_schema(engine: Engine) -> None:
    """Bring tables an older version created up to this schema, keeping their rows.

    Nullable columns they lack are added. A sessions table whose status check predates one of
    :data:`SESSION_STATUSES` gets today's check; sqlite cannot alter a constraint, so there the table is rebuilt.
    """
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"table {table.name} lacks column {column.name}, which has no value for its existing rows"
                )
            type_sql = column.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {type_sql}")
            logger.info("trading state: added column %s.%s", table.name, column.name)
    checks = inspector.get_check_constraints(sessions_table.name)
    status_check = next((c["sqltext"] for c in checks if c.get("name") == "ck_sessions_status"), None)
    if status_check is not None and not all(f"'{s}'" in status_check for s in SESSION_STATUSES):
        _widen_session_statuses(engine)
        logger.info("trading state: session statuses are now %s", ", ".join(SESSION_STATUSES))


def _widen_session_statuses(engine: Engine) -> None:
    """Replace the sessions table's status check with today's list of statuses."""
    check = next(
        c
        for c in sessions_table.constraints
        if isinstance(c, CheckConstraint) and str(c.sqltext).startswith("status IN")
    )
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE sessions DROP CONSTRAINT ck_sessions_status")
            connection.execute(AddConstraint(check))
        return
    create = str(CreateTable(sessions_table).compile(dialect=engine.dialect)).strip()
    create = create.replace("CREATE TABLE sessions ", "CREATE TABLE sessions_upgrade ", 1)
    columns = ", ".join(column.name for column in sessions_table.columns)
    # sqlite's own recipe for changing a constraint: copy into a new table and swap it in, with foreign keys off
    # (pragma outside any transaction), else dropping the old table would cascade to every session's rows.
    with engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = OFF")
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                cursor.execute(create)
                cursor.execute(f"INSERT INTO sessions_upgrade ({columns}) SELECT {columns} FROM sessions")
                cursor.execute("DROP TABLE sessions")
                cursor.execute("ALTER TABLE sessions_upgrade RENAME TO sessions")
                broken = cursor.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"rebuilding the sessions table broke foreign keys: {broken[:5]}")
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        finally:
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()


def _configure_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    """WAL (readers never wait for the writer), foreign keys, and transactions that SQLAlchemy controls."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The sqlite3 driver's own transaction handling skips BEGIN before SELECT and DDL; take it over.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")
