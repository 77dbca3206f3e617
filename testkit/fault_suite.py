"""A seeded fault suite for the live loop: one scenario of broker faults, kills and an outage against the fake
Alpaca, and the audit of what the session recorded against what the broker holds.

A :class:`Scenario` is drawn from its seed (:func:`draw_scenario`): random faults on every broker route the loop
uses (429, 5xx, timeouts, dropped connections, replies lost after the request was processed, bursts long
enough to outlast the broker's retries), kills of the trading process at random points (before or after a
broker call, after an order reached the broker, inside a bar's commit, while handing an alert over; the fake
Alpaca dies with it half of the time and comes back from its journal, as under ``make paper-fake``), an outage
longer than the session's grace and, in one kind, the kill switch. :func:`run_scenario` plays it in process:
a kill is an exception nothing in the loop catches, after which a new "process" opens the same state database
and account and replays the bars from the top, as a restarted ``make paper`` does. :func:`audit` counts what
went wrong: orders duplicated, lost or mis-recorded (the broker's journal is the truth), and for kill-only
scenarios whether decisions and alerts equal those of the uninterrupted run.

:func:`replay_promotions` does the same for the promotion gate: two pipeline runs interleaved on one registry,
gate records judged on the wrong version, copied to other versions or replayed from other runs, and the count
of promotions the runs' own verdicts did not earn.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import pandas as pd

from testkit.fake_alpaca import (
    DEFAULT_API_KEY,
    DEFAULT_SECRET,
    AccountJournal,
    FakeAlpacaServer,
    FaultOutcome,
)
from trading_core.agents.decision_spec import DecisionSpec
from trading_core.broker.alpaca import AlpacaPaperBroker
from trading_core.broker.base import AccountSnapshot, OrderRequest, OrderState, RetryPolicy
from trading_core.evaluation.promotion import GateRecord, promotion_refusal
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import LiveConfig, LiveTradingLoop, SessionStopped, kill_session
from trading_core.live.sources import BarEvent
from trading_core.live.state import CHAMPION, PENDING_SUBMIT, SUBMIT_UNKNOWN, TradingStateStore
from trading_core.monitoring.alerts import Alert, AlertEvaluator, AlertRulesConfig

# The broker routes the loop calls, as the fake's fault rules select them (method and path prefix).
ENDPOINTS: dict[str, tuple[str, str]] = {
    "account": ("GET", "/v2/account"),
    "positions": ("GET", "/v2/positions"),
    "submit": ("POST", "/v2/orders"),
    "order_by_client_id": ("GET", "/v2/orders:by_client_order_id"),
    "open_orders": ("GET", "/v2/orders"),  # a prefix: look-ups by client order id match it too
    "cancel_all": ("DELETE", "/v2/orders"),  # only the kill switch cancels
}
# Routes bursts may also hit: every order route at once, so that a submit and its look-ups fail together and
# the submit's outcome stays unknown to the loop (or the order never reaches the broker).
ROUTES: dict[str, tuple[str | None, str]] = {**ENDPOINTS, "orders": (None, "/v2/orders")}
# Routes whose requests change the account: a reply lost after processing means something there.
CHANGING_ENDPOINTS = frozenset({"submit", "cancel_all", "orders"})
STEADY_OUTCOMES: tuple[FaultOutcome, ...] = (429, 500, 502, 503, "timeout", "disconnect")
# Bursts outlast the retries; timeouts stay out of them, so a burst costs milliseconds rather than seconds.
BURST_OUTCOMES: tuple[FaultOutcome, ...] = (429, 500, 502, 503, "disconnect")
OUTAGE_OUTCOMES: tuple[FaultOutcome, ...] = (502, 503, "disconnect")
# Why the loop cancels an order it sent whose fate the broker settles: each must come with an alert naming it.
CANCELED_AFTER_ITS_BAR = (
    "the broker never received it and its bar has passed",
    "the broker no longer knows it",
)
FINAL_STATUSES = frozenset({"filled", "canceled", "rejected", "expired"})
OPEN_STATUSES = frozenset({"new", "accepted", "partially_filled"})
TOLERANCE = 1e-9
T = TypeVar("T")

ScenarioKind = Literal["reference", "kills", "faults", "kill_switch"]
KillKind = Literal["call_before", "call_after", "submit_after", "closing_after", "commit", "delivery"]


# ----------------------------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultSpec:
    """One fault rule on one broker route.

    :param endpoint: a key of :data:`ROUTES`
    :param outcome: an HTTP status, ``"timeout"`` or ``"disconnect"``
    :param probability: the chance that a matching request fails (the fake's seeded draw)
    :param after_processing: the request is processed and only its reply lost
    :param burst: consecutive failures once the first one hit; 1 is a steady random fault for the whole run
    """

    endpoint: str
    outcome: FaultOutcome
    probability: float
    after_processing: bool = False
    burst: int = 1


@dataclass(frozen=True)
class KillPoint:
    """Where the trading process dies: at the ``at``-th event of ``kind`` counted over the whole scenario.

    Kinds: ``call_before`` / ``call_after`` a broker call, ``submit_after`` an order the broker accepted (the
    answer dies with the process), ``closing_after`` likewise for the kill switch's closing orders, ``commit``
    inside a bar's second transaction (rolled back), ``delivery`` while handing an alert to the sink (after the
    bar committed).

    :param restart_broker: the fake Alpaca dies too and comes back from its journal
    """

    kind: KillKind
    at: int
    restart_broker: bool


@dataclass(frozen=True)
class Scenario:
    """What goes wrong in one seeded session of ``bars`` bars.

    :param outage_at: before this bar every route fails until the session stops past its grace
    :param kill_switch_at: before this bar the kill switch is engaged (the loop cancels and flattens)
    :param quiet_tail: the last bars run without faults, so the books can settle with the broker at the end
    """

    name: str
    kind: ScenarioKind
    seed: int
    bars: int
    faults: tuple[FaultSpec, ...] = ()
    kills: tuple[KillPoint, ...] = ()
    outage_at: int | None = None
    outage_outcome: FaultOutcome = 503
    kill_switch_at: int | None = None
    quiet_tail: int = 2

    def reference(self) -> Scenario:
        """The same session without faults, kills or outage (the kill switch, part of the session, stays)."""
        return Scenario(
            f"reference-ks{self.kill_switch_at}" if self.kill_switch_at is not None else "reference",
            "reference",
            self.seed,
            self.bars,
            kill_switch_at=self.kill_switch_at,
        )


def draw_scenario(kind: ScenarioKind, seed: int, bars: int) -> Scenario:
    """The scenario of ``kind`` that ``seed`` draws.

    ``kills``: four kills, no broker faults (decisions and alerts must equal the uninterrupted run's);
    ``faults``: random faults on every route the loop uses, two kills and an outage past the grace;
    ``kill_switch``: random faults, the kill switch engaged mid-session (cancels fail at first), a kill after
    one of its closing orders reached the broker and one more.
    """
    rng = random.Random(seed)
    if kind == "reference":
        return Scenario(f"reference-{seed}", kind, seed, bars)
    faults: tuple[FaultSpec, ...] = ()
    if kind in ("faults", "kill_switch"):
        faults = _draw_faults(rng, cancels=kind == "kill_switch")
    kills = _draw_kills(rng, bars, {"kills": 4, "faults": 2, "kill_switch": 1}[kind])
    outage_at = rng.randint(bars // 4, bars - 14) if kind == "faults" else None
    outage_outcome = rng.choice(OUTAGE_OUTCOMES)
    kill_switch_at = rng.randint(bars // 2, bars - 6) if kind == "kill_switch" else None
    if kill_switch_at is not None:
        kills += (KillPoint("closing_after", rng.randint(1, 2), rng.random() < 0.5),)
    return Scenario(
        f"{kind}-{seed}", kind, seed, bars, faults, kills, outage_at, outage_outcome, kill_switch_at
    )


def _draw_faults(rng: random.Random, cancels: bool) -> tuple[FaultSpec, ...]:
    specs = []
    for endpoint in ENDPOINTS:
        if endpoint == "cancel_all":
            continue
        lost = endpoint in CHANGING_ENDPOINTS and rng.random() < 0.5
        probability = round(rng.uniform(0.03, 0.08), 3)
        specs.append(FaultSpec(endpoint, rng.choice(STEADY_OUTCOMES), probability, lost))
    for _ in range(rng.randint(2, 3)):
        endpoint = rng.choice(("account", "positions", "submit", "order_by_client_id", "open_orders"))
        lost = endpoint in CHANGING_ENDPOINTS and rng.random() < 0.5
        specs.append(FaultSpec(endpoint, rng.choice(BURST_OUTCOMES), 0.04, lost, burst=rng.randint(3, 5)))
    # Submit and look-ups failing together past the retries (three attempts of two requests each).
    lost = rng.random() < 0.5
    specs.append(FaultSpec("orders", rng.choice(BURST_OUTCOMES), 0.04, lost, burst=rng.randint(6, 8)))
    if cancels:
        # The kill switch cancels a handful of times at most: its first cancel always fails (a lost reply or not).
        lost = rng.random() < 0.5
        specs.append(FaultSpec("cancel_all", rng.choice(BURST_OUTCOMES), 1.0, lost, burst=rng.randint(1, 4)))
    return tuple(specs)


def _draw_kills(rng: random.Random, bars: int, count: int) -> tuple[KillPoint, ...]:
    # The loop makes about six broker calls and one order a bar; alerts are a handful per session.
    limits: dict[KillKind, int] = {
        "call_before": 4 * bars,
        "call_after": 4 * bars,
        "submit_after": bars // 2,
        "commit": bars - 3,
        "delivery": 2,
    }
    kinds: list[KillKind] = rng.sample(sorted(limits), count)
    return tuple(
        KillPoint(kind, rng.randint(1 if kind == "delivery" else 2, limits[kind]), rng.random() < 0.5)
        for kind in kinds
    )


# ----------------------------------------------------------------------------------------------------------
# Kills
# ----------------------------------------------------------------------------------------------------------


class SimulatedKill(BaseException):  # noqa: N818 - a kill, not an error
    """The trading process dies here. A ``BaseException``: nothing in the loop may catch it, as nothing catches
    a SIGKILL; only context managers unwind (an open transaction rolls back, as sqlite does after a kill)."""

    def __init__(self, point: KillPoint) -> None:
        super().__init__(f"simulated kill: {point}")
        self.point = point


class _KillPlan:
    """Counts the events kills are placed on, over every process of a scenario, and kills at the drawn ones."""

    def __init__(self, points: Sequence[KillPoint]) -> None:
        self.pending = list(points)
        self.done: list[KillPoint] = []
        self.counts: Counter[str] = Counter()

    def reach(self, kind: KillKind) -> None:
        self.counts[kind] += 1
        for point in self.pending:
            if point.kind == kind and point.at == self.counts[kind]:
                self.pending.remove(point)
                self.done.append(point)
                raise SimulatedKill(point)


class _KillableBroker:
    """One process's broker: the kill plan may end the process around any call."""

    def __init__(self, inner: AlpacaPaperBroker, plan: _KillPlan, closing: Callable[[], bool]) -> None:
        self.inner, self.plan, self.closing = inner, plan, closing
        self.name = inner.name

    def _call(self, call: Callable[[], T]) -> T:
        self.plan.reach("call_before")
        try:
            return call()
        finally:
            self.plan.reach("call_after")  # a kill here loses the answer (or the error) with the process

    def account(self) -> AccountSnapshot:
        return self._call(self.inner.account)

    def positions(self) -> dict[str, float]:
        return self._call(self.inner.positions)

    def submit_order(self, request: OrderRequest) -> OrderState:
        state = self._call(lambda: self.inner.submit_order(request))
        self.plan.reach("submit_after")
        if self.closing():  # the kill switch is engaged: the session sends closing orders only
            self.plan.reach("closing_after")
        return state

    def get_order(self, client_order_id: str) -> OrderState | None:
        return self._call(lambda: self.inner.get_order(client_order_id))

    def open_orders(self) -> list[OrderState]:
        return self._call(self.inner.open_orders)

    def cancel_all_orders(self) -> int:
        return self._call(self.inner.cancel_all_orders)

    def close_all_positions(self) -> None:
        self._call(self.inner.close_all_positions)


class _KillableStore(TradingStateStore):
    """One process's state store: the kill plan may end the process inside a bar's closing transaction."""

    plan: _KillPlan | None = None

    def save_broker_snapshot(self, session_id: str, bar_time: Any, payload: Any) -> None:
        if self.plan is not None:
            self.plan.reach("commit")
        super().save_broker_snapshot(session_id, bar_time, payload)


class _RecordingSink:
    """The alert sink: keeps what it was handed over every process; a kill may come while handing one over."""

    def __init__(self, delivered: list[Alert], plan: _KillPlan) -> None:
        self.delivered, self.plan = delivered, plan

    def send(self, alert: Alert) -> None:
        self.plan.reach("delivery")
        self.delivered.append(alert)


# ----------------------------------------------------------------------------------------------------------
# Running a scenario
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteSetup:
    """What every scenario shares: the agent, the bars, and settings small enough that a fault costs milliseconds.

    :param history: bars before the first traded one (feature warm-up)
    :param events: the bars to trade (each scenario takes its first ``bars``)
    :param outage_grace_s: the session's outage grace; the outage is paced at half of it per bar
    :param request_timeout_s: the broker's HTTP timeout; an injected timeout hangs ``timeout_hang_s``, longer
    :param max_processes: a scenario needing more restarts than this fails (a loop that never finishes)
    """

    policy: Any
    spec: DecisionSpec
    history: pd.DataFrame
    events: Sequence[BarEvent]
    session_id: str = "fault-suite"
    # Tight enough that one-minute bars of a tiny agent raise drawdown and drift alerts within a few dozen bars.
    rules: AlertRulesConfig = AlertRulesConfig(drawdown_limit=0.001, drift_threshold=0.5)
    drift_window: int = 20
    drift_every: int = 5
    outage_grace_s: float = 0.6
    request_timeout_s: float = 0.25
    timeout_hang_s: float = 0.5
    broker_retry: RetryPolicy = RetryPolicy(max_attempts=3, base_delay_s=0.005, max_delay_s=0.02, seed=7)
    max_processes: int = 25


@dataclass(frozen=True)
class Books:
    """A session's records (the store) and the broker's truth (the fake account's journal) at the end."""

    orders: pd.DataFrame
    fills: pd.DataFrame
    positions: dict[str, float]
    alerts: pd.DataFrame
    decisions: pd.DataFrame
    equity: pd.DataFrame
    session_status: str | None
    last_bar_time: pd.Timestamp | None
    broker_orders: list[dict[str, Any]]
    broker_fills: list[dict[str, Any]]
    broker_positions: dict[str, float]


@dataclass
class SessionRun:
    """What running a scenario did, and the books it left."""

    scenario: Scenario
    books: Books
    delivered: list[Alert]
    kills: list[KillPoint]
    stops: list[str]
    broker_restarts: int
    fault_counts: Counter[str]
    processes: int
    wall_s: float
    last_event: pd.Timestamp
    problems: list[str] = field(default_factory=list)


class _Market:
    """The fake Alpaca of a scenario: started (again) on its journal, its faults injected, the bars published."""

    def __init__(self, setup: SuiteSetup, scenario: Scenario, journal: Path) -> None:
        self.setup, self.scenario, self.journal = setup, scenario, journal
        self.fault_counts: Counter[str] = Counter()
        self.restarts = 0
        self.outage_on = self.outage_done = self.kill_switch_done = self.quiet = False
        self.server = self._start()

    def _start(self) -> FakeAlpacaServer:
        server = FakeAlpacaServer(
            initial_cash=self.setup.spec.env_spec.initial_amount,
            state_path=self.journal,
            seed=self.scenario.seed * 100 + self.restarts,
        )
        server.start()
        self._inject(server)
        return server

    def _inject(self, server: FakeAlpacaServer) -> None:
        if self.quiet:
            return
        hang_s = self.setup.timeout_hang_s
        if self.outage_on:  # first: during the outage nothing is processed
            server.inject(self.scenario.outage_outcome, for_s=math.inf, hang_s=hang_s)
        for spec in self.scenario.faults:
            method, prefix = ROUTES[spec.endpoint]
            rule = dict(
                method=method, path_prefix=prefix, after_processing=spec.after_processing, hang_s=hang_s
            )
            if spec.burst == 1:
                server.inject(spec.outcome, for_s=math.inf, probability=spec.probability, **rule)
                continue
            trigger = server.inject(spec.outcome, times=1, probability=spec.probability, **rule)
            server.inject(spec.outcome, times=spec.burst - 1, after=trigger, **rule)

    def _reinject(self) -> None:
        self.server.clear_faults()
        self._inject(self.server)

    def restart(self) -> None:
        """The fake died with the trading process: it comes back from its journal (its rules re-armed)."""
        self.fault_counts.update(self.server.fault_counts)
        self.server.close()
        self.restarts += 1
        self.server = self._start()

    def end_outage(self) -> None:
        """The broker answers again (after the session stopped on the outage)."""
        if self.outage_on:
            self.outage_on = False
            self._reinject()

    def close(self) -> None:
        self.fault_counts.update(self.server.fault_counts)
        self.server.close()

    def broker(self, plan: _KillPlan) -> _KillableBroker:
        # Without injected faults the broker keeps its default timeout: a slow machine must not add any.
        faulty = bool(self.scenario.faults) or self.scenario.outage_at is not None
        inner = AlpacaPaperBroker(
            DEFAULT_API_KEY,
            DEFAULT_SECRET,
            url_override=self.server.url,
            retry=self.setup.broker_retry,
            request_timeout_s=self.setup.request_timeout_s if faulty else 10.0,
        )
        return _KillableBroker(inner, plan, lambda: self.kill_switch_done)

    def bars(self, store: TradingStateStore) -> Iterator[BarEvent]:
        """The bars from the top, each published to the fake before the loop sees it (a restarted replay: the
        fake ignores bars it has seen); the scenario's outage, kill switch and quiet tail start on their bar."""
        scenario = self.scenario
        session = store.get_session(self.setup.session_id)  # read once the loop started: its resume point
        resumed_after = session.last_bar_time if session is not None else None
        for k, event in enumerate(self.setup.events[: scenario.bars]):
            if k == scenario.outage_at and not self.outage_done:
                self.outage_done = self.outage_on = True
                self._reinject()
            if k == scenario.kill_switch_at and not self.kill_switch_done:
                self.kill_switch_done = True
                kill_session(store, self.setup.session_id, f"fault suite: kill switch before bar {k}")
            if k == scenario.bars - scenario.quiet_tail and not self.quiet:
                self.quiet, self.outage_on = True, False
                self.server.clear_faults()
            if self.outage_on and (resumed_after is None or event.timestamp > resumed_after):
                time.sleep(self.setup.outage_grace_s / 2)  # a stream's clock: the outage spans a few bars
            for symbol, bar in event.bars.items():
                self.server.publish_bar(
                    symbol, event.timestamp, bar.open, bar.high, bar.low, bar.close, bar.volume
                )
            yield event


def _make_loop(
    setup: SuiteSetup, store: TradingStateStore, broker: _KillableBroker, sink: _RecordingSink
) -> LiveTradingLoop:
    loop: LiveTradingLoop

    def bar_clock() -> float:  # as replays run: alerts are timed by the bar they belong to
        return loop.last_bar_time.timestamp() if loop.last_bar_time is not None else 0.0

    config = LiveConfig(
        session_id=setup.session_id,
        drift_window=setup.drift_window,
        drift_every=setup.drift_every,
        outage_grace_s=setup.outage_grace_s,
    )
    loop = LiveTradingLoop(
        config,
        store,
        broker,  # type: ignore[arg-type]  # speaks the Broker protocol
        (DecisionEngine(setup.policy, setup.spec), "1"),
        alerts=(AlertEvaluator(setup.rules.rules(), clock=bar_clock), sink),
        retry=RetryPolicy(max_attempts=1),  # the broker retries; the loop adds none on top
        history=setup.history,
    )
    return loop


def _stop_problems(store: TradingStateStore, session_id: str) -> list[str]:
    """A stop must leave the session stopped (or killed) with its state saved at its last bar."""
    session = store.get_session(session_id)
    snapshot = store.load_broker_snapshot(session_id)
    if session is None:
        return ["the session vanished when it stopped"]
    problems = []
    if session.status not in ("stopped", "killed"):
        problems.append(f"stopped session is {session.status}")
    if session.last_bar_time is not None and (snapshot is None or snapshot.bar_time != session.last_bar_time):
        problems.append(f"stopped after {session.last_bar_time} without that bar's state")
    return problems


def run_scenario(setup: SuiteSetup, scenario: Scenario, workdir: Path) -> SessionRun:
    """Play ``scenario`` to the last bar: every kill restarts the session in a new process on the same state
    database (and account), every stop resumes it once the broker answers again.

    :param workdir: where the state database and the fake account's journal go
    :raises RuntimeError: the session needed more than ``setup.max_processes`` processes
    """
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    database, journal = workdir / "state.db", workdir / "account.jsonl"
    plan = _KillPlan(scenario.kills)
    market = _Market(setup, scenario, journal)
    delivered: list[Alert] = []
    stops: list[str] = []
    problems: list[str] = []
    processes = 0
    try:
        while True:
            processes += 1
            if processes > setup.max_processes:
                raise RuntimeError(
                    f"{scenario.name}: still not finished after {setup.max_processes} processes"
                )
            store = _KillableStore.sqlite(database)
            store.create_schema()
            store.plan = plan
            try:
                loop = _make_loop(setup, store, market.broker(plan), _RecordingSink(delivered, plan))
                loop.run(market.bars(store))
                break
            except SimulatedKill as kill:
                if kill.point.restart_broker:
                    market.restart()
            except SessionStopped as stopped:
                stops.append(stopped.reason)
                problems += _stop_problems(store, setup.session_id)
                market.end_outage()
            finally:
                store.close()
    finally:
        market.close()
    return SessionRun(
        scenario,
        _books(database, journal, setup.session_id),
        delivered,
        list(plan.done),
        stops,
        market.restarts,
        market.fault_counts,
        processes,
        time.perf_counter() - started,
        setup.events[scenario.bars - 1].timestamp,
        problems,
    )


def _books(database: Path, journal: Path, session_id: str) -> Books:
    account = AccountJournal(journal).load()
    if account is None:
        raise RuntimeError(f"the fake account's journal {journal} is empty")
    with TradingStateStore.sqlite(database) as store:
        session = store.get_session(session_id)
        return Books(
            orders=store.orders(session_id),
            fills=store.fills(session_id),
            positions=store.positions(session_id, CHAMPION),
            alerts=store.alerts(session_id),
            decisions=store.decisions(session_id, CHAMPION),
            equity=store.equity_curve(session_id, CHAMPION),
            session_status=session.status if session is not None else None,
            last_bar_time=session.last_bar_time if session is not None else None,
            broker_orders=account["orders"],
            broker_fills=account["fills"],
            broker_positions={s: float(p["qty"]) for s, p in account["positions"].items() if p["qty"] != 0},
        )


# ----------------------------------------------------------------------------------------------------------
# The audit
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ScenarioCounts:
    """The fault suite's counts for one scenario; ``problems`` says what each counted item was.

    :param orders_sent: distinct client order ids the broker received
    :param duplicated: more than one broker order for one client order id, or two intents for one bar and symbol
    :param lost: an intent left without a final recorded state, or canceled for its passed bar without an alert;
        in kill-only scenarios also an intent of the uninterrupted run the killed one never made
    :param misrecorded: an order, its fills or a position the store records otherwise than the broker holds it
    :param working: orders open at both the broker and the store when the bars ran out (filled on the next bar)
    :param alerts_identical: decisions, stored alerts and delivered alerts (rule, time, severity) equal those of
        the uninterrupted run; ``None`` where broker faults may legitimately change the decisions
    """

    scenario: str
    seed: int
    bars: int
    faults: int
    kills: int
    stops: int
    broker_restarts: int
    orders_sent: int
    reference_orders_sent: int
    duplicated: int
    lost: int
    misrecorded: int
    working: int
    alerts_identical: bool | None
    wall_s: float
    problems: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return asdict(self)


def audit(run: SessionRun, reference: SessionRun | None = None) -> ScenarioCounts:
    """Count what ``run`` duplicated, lost and mis-recorded; against ``reference`` (the uninterrupted run) a
    kill-only scenario must also decide and alert exactly alike."""
    books = run.books
    duplicated, lost, misrecorded = _duplicates(books), _lost(books), _misrecorded(books)
    problems = [*run.problems, *duplicated, *lost, *misrecorded]
    if books.session_status not in ("finished", "killed") or books.last_bar_time != run.last_event:
        problems.append(f"session ended {books.session_status} at {books.last_bar_time}, not at the last bar")
    if run.scenario.kill_switch_at is not None and books.broker_positions:
        problems.append(f"the kill switch left positions open at the broker: {books.broker_positions}")
    identical: bool | None = None
    if reference is not None and run.scenario.kind == "kills":
        missing = _missing_intents(books, reference.books)
        lost += missing
        differences = _differences(run, reference)
        identical = not differences
        problems += missing + differences
    working = sum(
        1 for row in books.orders.itertuples(index=False) if row.status in OPEN_STATUSES
    )  # open at the broker as well, or _misrecorded counted it
    return ScenarioCounts(
        scenario=run.scenario.name,
        seed=run.scenario.seed,
        bars=run.scenario.bars,
        faults=sum(run.fault_counts.values()),
        kills=len(run.kills),
        stops=len(run.stops),
        broker_restarts=run.broker_restarts,
        orders_sent=len({order["client_order_id"] for order in books.broker_orders}),
        reference_orders_sent=(
            len({o["client_order_id"] for o in reference.books.broker_orders}) if reference else 0
        ),
        duplicated=len(duplicated),
        lost=len(lost),
        misrecorded=len(misrecorded),
        working=working,
        alerts_identical=identical,
        wall_s=round(run.wall_s, 1),
        problems=problems,
    )


def _duplicates(books: Books) -> list[str]:
    at_broker = Counter(order["client_order_id"] for order in books.broker_orders)
    found = [f"duplicated: {n} broker orders for {cid}" for cid, n in sorted(at_broker.items()) if n > 1]
    if not books.orders.empty:
        # A bar decides once per symbol; the kill switch's orders come on bars without decisions.
        intents = books.orders.groupby(["decision_time", "symbol"]).size()
        found += [
            f"duplicated: {n} intents for {symbol} at {t}" for (t, symbol), n in intents.items() if n > 1
        ]
    return found


def _lost(books: Books) -> list[str]:
    at_broker = {order["client_order_id"]: order for order in books.broker_orders}
    alerted = " ".join(books.alerts.loc[books.alerts["rule"] == "order_reconciliation", "message"])
    found = []
    for row in books.orders.itertuples(index=False):
        cid, status, reason = row.client_order_id, row.status, row.status_reason
        if status in (PENDING_SUBMIT, SUBMIT_UNKNOWN):
            found.append(f"lost: {cid} ({row.side} {row.symbol} at {row.decision_time}) is still {status}")
        elif status in FINAL_STATUSES - {"filled"}:
            broker_says = at_broker.get(cid, {}).get("status") == status
            if not (reason or broker_says):
                found.append(f"lost: {cid} is {status} without a reason the broker does not confirm")
            elif reason in CANCELED_AFTER_ITS_BAR and cid not in alerted:
                found.append(f"lost: {cid} was canceled ({reason}) without an order_reconciliation alert")
    return found


def _broker_status(status: str) -> str:
    return {"pending_new": "new"}.get(status, status)


def _misrecorded(books: Books) -> list[str]:
    stored = {row.client_order_id: row for row in books.orders.itertuples(index=False)}
    at_broker = {order["client_order_id"]: order for order in books.broker_orders}
    found = []
    for cid, order in at_broker.items():
        row = stored.get(cid)
        if row is None:
            found.append(f"mis-recorded: {cid} is at the broker but not in the store")
            continue
        if row.status in (PENDING_SUBMIT, SUBMIT_UNKNOWN):
            continue  # counted as lost
        filled, price = float(order["filled_qty"]), order["filled_avg_price"]
        if (
            row.status != _broker_status(order["status"])
            or abs(row.filled_qty - filled) > TOLERANCE
            or (filled > 0 and (price is None or not _close(row.filled_avg_price, float(price))))
        ):
            found.append(
                f"mis-recorded: {cid} is {row.status} {row.filled_qty:g} @ {row.filled_avg_price} in the store, "
                f"{order['status']} {filled:g} @ {price} at the broker"
            )
    for cid, row in stored.items():
        if cid not in at_broker and row.status not in (
            "canceled",
            "rejected",
            PENDING_SUBMIT,
            SUBMIT_UNKNOWN,
        ):
            found.append(f"mis-recorded: {cid} is {row.status} in the store but the broker never received it")
    unsettled = {cid for cid, row in stored.items() if row.status in (PENDING_SUBMIT, SUBMIT_UNKNOWN)}
    found += _fill_differences(books, skip=unsettled)  # an unsettled order's fills are part of it being lost
    found += [
        f"mis-recorded: position {symbol} is {books.positions.get(symbol, 0.0):g} in the store, "
        f"{books.broker_positions.get(symbol, 0.0):g} at the broker"
        for symbol in sorted(set(books.positions) | set(books.broker_positions))
        if abs(books.positions.get(symbol, 0.0) - books.broker_positions.get(symbol, 0.0)) > TOLERANCE
    ]
    return found


def _fill_differences(books: Books, skip: set[str]) -> list[str]:
    """Per order, the store's broker fills must add up to the broker's: the same shares at the same average."""

    def totals(rows: list[tuple[str, float, float]]) -> dict[str, tuple[float, float]]:
        sums: dict[str, tuple[float, float]] = {}
        for cid, qty, price in rows:
            shares, value = sums.get(cid, (0.0, 0.0))
            sums[cid] = (shares + qty, value + qty * price)
        return sums

    fills = books.fills[books.fills["source"] == "broker"]
    stored = totals(list(zip(fills["client_order_id"], fills["qty"], fills["price"], strict=True)))
    broker = totals([(f["client_order_id"], float(f["qty"]), float(f["price"])) for f in books.broker_fills])
    found = []
    for cid in sorted((set(stored) | set(broker)) - skip):
        (ours, our_value), (theirs, their_value) = stored.get(cid, (0.0, 0.0)), broker.get(cid, (0.0, 0.0))
        if abs(ours - theirs) > TOLERANCE or not _close(our_value, their_value):
            found.append(
                f"mis-recorded: fills of {cid}: {ours:g} shares worth {our_value:.2f} in the store, "
                f"{theirs:g} worth {their_value:.2f} at the broker"
            )
    return found


def _close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def _missing_intents(books: Books, reference: Books) -> list[str]:
    made = set(books.orders["client_order_id"])
    return [
        f"lost: {row.client_order_id} ({row.side} {row.symbol} at {row.decision_time}) of the uninterrupted run "
        "was never decided"
        for row in reference.orders.itertuples(index=False)
        if row.client_order_id not in made
    ]


def _alert_keys(alerts: pd.DataFrame) -> list[tuple[str, pd.Timestamp, str]]:
    return list(alerts[["rule", "raised_at", "severity"]].itertuples(index=False, name=None))


def _differences(run: SessionRun, reference: SessionRun) -> list[str]:
    """How a killed and resumed session differs from the uninterrupted one: decisions, orders, alerts."""
    ours, theirs = run.books, reference.books
    found = []
    if _alert_keys(ours.alerts) != _alert_keys(theirs.alerts):
        found.append(f"stored alerts differ: {_alert_keys(ours.alerts)} vs {_alert_keys(theirs.alerts)}")
    delivered = [(a.rule, pd.Timestamp(a.raised_at), a.severity) for a in run.delivered]
    expected = [(a.rule, pd.Timestamp(a.raised_at), a.severity) for a in reference.delivered]
    if delivered != expected:
        found.append(f"delivered alerts differ: {delivered} vs {expected}")
    decisions = [
        (t, json.dumps(a, sort_keys=True))
        for t, a in zip(ours.decisions["bar_time"], ours.decisions["approved"], strict=True)
    ]
    wanted = [
        (t, json.dumps(a, sort_keys=True))
        for t, a in zip(theirs.decisions["bar_time"], theirs.decisions["approved"], strict=True)
    ]
    if decisions != wanted:
        found.append(f"decisions differ ({len(decisions)} vs {len(wanted)})")
    columns = ["client_order_id", "symbol", "side", "qty", "status", "filled_qty", "filled_avg_price"]

    def final(
        orders: pd.DataFrame,
    ) -> pd.DataFrame:  # equals() holds the NaN price of an unfilled order equal
        return orders[columns].sort_values("client_order_id").reset_index(drop=True)

    if not final(ours.orders).equals(final(theirs.orders)):
        found.append("orders or their final states differ")
    if not ours.equity.equals(theirs.equity):
        found.append("equity curves differ")
    return found


# ----------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    ("scenario", "scenario"),
    ("seed", "seed"),
    ("bars", "bars"),
    ("faults", "faults"),
    ("kills", "kills"),
    ("stops", "stops"),
    ("broker_restarts", "fake restarts"),
    ("orders_sent", "orders sent"),
    ("reference_orders_sent", "(ref)"),
    ("duplicated", "duplicated"),
    ("lost", "lost"),
    ("misrecorded", "mis-recorded"),
    ("working", "open at end"),
    ("alerts_identical", "alerts identical"),
    ("wrong_promotions", "wrong promotions"),
    ("wall_s", "wall s"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The suite's rows as a plain-text table (missing cells are ``-``), with a total line."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "NO"
        return str(value)

    total: dict[str, Any] = {"scenario": "total"}
    for key in (
        "faults",
        "kills",
        "stops",
        "orders_sent",
        "duplicated",
        "lost",
        "misrecorded",
        "wrong_promotions",
    ):
        values = [row[key] for row in rows if row.get(key) is not None]
        total[key] = sum(values) if values else None
    flags = [row["alerts_identical"] for row in rows if row.get("alerts_identical") is not None]
    total["alerts_identical"] = all(flags) if flags else None
    table = [[header for _, header in TABLE_COLUMNS]]
    table += [[cell(row.get(key)) for key, _ in TABLE_COLUMNS] for row in [*rows, total]]
    widths = [max(len(line[i]) for line in table) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(text.rjust(width) for text, width in zip(line, widths, strict=True)) for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Promotions
# ----------------------------------------------------------------------------------------------------------


class PromotionRegistry(Protocol):
    """The registry calls a pipeline run makes around promotion (:class:`MlflowPromotionRegistry` wraps the
    real one)."""

    def register_version(self, run_id: str | None) -> str:
        """A new version, tagged as registered by ``run_id`` (``None``: registered outside the pipeline)."""
        ...

    def record_gate(self, record: GateRecord) -> None: ...

    def copy_tag(self, step: str, source: str, target: str) -> None:
        """Copy version ``source``'s gate record of ``step`` onto version ``target`` (as copying a version does)."""
        ...

    def promote(self, version: str, run_id: str, required: Sequence[str]) -> bool:
        """Whether the registry promoted ``version`` (refusals are ``False``)."""
        ...

    def champion(self) -> str | None: ...


class MlflowPromotionRegistry:
    """:class:`PromotionRegistry` on :class:`resources.mlflow_registry.MlflowRegistryResource`, one registered
    model per replay."""

    def __init__(self, registry: Any, model_name: str) -> None:
        self.registry, self.model_name = registry, model_name

    def register_version(self, run_id: str | None) -> str:
        from resources.mlflow_registry import REGISTERED_BY_TAG

        client = self.registry._client()
        run = client.create_run(self.registry.experiment_id())
        tags = {REGISTERED_BY_TAG: run_id} if run_id is not None else {}
        source = f"runs:/{run.info.run_id}/model"
        return self.registry.register(source, run.info.run_id, tags=tags, model_name=self.model_name).version

    def record_gate(self, record: GateRecord) -> None:
        self.registry.record_gate(record, self.model_name)

    def copy_tag(self, step: str, source: str, target: str) -> None:
        tags = self.registry.version_tags(source, self.model_name)
        key = GateRecord(step, source, "").tag_key
        if key in tags:
            self.registry.set_version_tags(target, {key: tags[key]}, self.model_name)

    def promote(self, version: str, run_id: str, required: Sequence[str]) -> bool:
        from resources.mlflow_registry import PromotionRefused

        try:
            self.registry.promote(version, run_id, required, self.model_name)
        except PromotionRefused:
            return False
        return True

    def champion(self) -> str | None:
        from resources.mlflow_registry import CHAMPION_ALIAS

        return self.registry.version_for_alias(CHAMPION_ALIAS, self.model_name)


class UngatedRegistry:
    """A registry without a gate of its own: it promotes whatever it is asked to, so a replay on it measures the
    champion step's gate on the steps' outputs alone (cheap: no MLflow)."""

    def __init__(self) -> None:
        self.versions = 0
        self.champion_version: str | None = None

    def register_version(self, run_id: str | None) -> str:
        self.versions += 1
        return str(self.versions)

    def record_gate(self, record: GateRecord) -> None:
        return

    def copy_tag(self, step: str, source: str, target: str) -> None:
        return

    def promote(self, version: str, run_id: str, required: Sequence[str]) -> bool:
        self.champion_version = version
        return True

    def champion(self) -> str | None:
        return self.champion_version


@dataclass
class PromotionCounts:
    """What replaying interleaved pipeline runs did to the champion.

    :param attempts: promotions tried (each run's champion step)
    :param promotions: promotions made
    :param wrong_promotions: promotions the promoting run's own gate steps did not earn on that version
    :param refused_earned: refusals of a promotion the run had earned, because another run's records of the
        version were mixed in (conservative, not wrong)
    """

    replays: int = 0
    attempts: int = 0
    promotions: int = 0
    wrong_promotions: int = 0
    refused_earned: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class _Run:
    run_id: str
    version: str | None = None
    judged: dict[str, tuple[str, bool]] = field(default_factory=dict)  # step -> (version judged, passed)
    outputs: list[GateRecord] = field(default_factory=list)


def replay_promotions(
    registry: PromotionRegistry,
    seed: int,
    steps: Sequence[str],
    counts: PromotionCounts | None = None,
    *,
    check_outputs: bool = True,
) -> PromotionCounts:
    """Two pipeline runs interleaved on one registry, with the faults of overlapping runs: a step judging the
    latest registered version instead of its run's, gate tags copied to another version, a re-executed step
    writing another run's record, a champion step reading another run's registered version, a version
    registered outside the pipeline. Each run's champion step gates on its steps' outputs, then asks the
    registry; a promotion is wrong when the run's own steps did not all judge that version and pass.

    :param counts: add to these counts (one record over several seeds)
    :param check_outputs: gate on the steps' outputs before asking the registry, as the champion step does;
        ``False`` leaves the registry's own gate alone to refuse (each gate must refuse on its own)
    """
    rng = random.Random(seed)
    counts = counts if counts is not None else PromotionCounts()
    counts.replays += 1
    registered: dict[str, str | None] = {}  # version -> the run that registered it, in registration order
    if rng.random() < 0.3:  # a version from outside the pipeline
        registered[registry.register_version(None)] = None
    runs = [_Run(f"run-{seed}-a"), _Run(f"run-{seed}-b")]
    queues = {run.run_id: ["register", *steps, "champion"] for run in runs}
    while any(queues.values()):
        run = rng.choice([r for r in runs if queues[r.run_id]])
        action = queues[run.run_id].pop(0)
        latest = list(registered)
        if action == "register":
            run.version = registry.register_version(run.run_id)
            registered[run.version] = run.run_id
        elif action == "champion":
            _champion_step(registry, run, registered, steps, rng, counts, check_outputs)
        else:
            assert run.version is not None  # registration comes first in every run's queue
            judged = latest[-1] if rng.random() < 0.35 else run.version  # a stale read of "the latest"
            passed = rng.random() < 0.75
            record = GateRecord(action, judged, run.run_id, () if passed else ("min_sharpe",))
            run.judged[action], run.outputs = (judged, passed), [*run.outputs, record]
            registry.record_gate(record)
        if rng.random() < 0.25 and len(latest) > 1:  # a version copied with its tags onto another
            source, target = rng.sample(latest, 2)
            registry.copy_tag(rng.choice(list(steps)), source, target)
        if rng.random() < 0.2:  # a re-executed step of the other run re-writing its record
            other = rng.choice(runs)
            if other.outputs:
                registry.record_gate(rng.choice(other.outputs))
    return counts


def _champion_step(
    registry: PromotionRegistry,
    run: _Run,
    registered: dict[str, str | None],
    steps: Sequence[str],
    rng: random.Random,
    counts: PromotionCounts,
    check_outputs: bool,
) -> None:
    """The champion step of ``run``: its steps' outputs, then the registry's records, must allow the version."""
    assert run.version is not None  # registration comes first in every run's queue
    version = run.version
    others = [v for v in registered if v != run.version]
    if others and rng.random() < 0.25:  # it read another run's (or an outside) registered version
        version = rng.choice(others)
    registered_by = registered[version]
    counts.attempts += 1
    earned = registered_by == run.run_id and all(run.judged.get(step) == (version, True) for step in steps)
    before = registry.champion()
    allowed = (
        not check_outputs or promotion_refusal(version, run.run_id, registered_by, run.outputs, steps) is None
    )
    promoted = allowed and registry.promote(version, run.run_id, steps)
    after = registry.champion()
    if promoted:
        counts.promotions += 1
        if after != version:
            counts.problems.append(f"{run.run_id} promoted v{version} but the champion is v{after}")
    elif after != before:
        counts.problems.append(f"{run.run_id} was refused v{version} yet the champion moved to v{after}")
    if promoted and not earned:
        counts.wrong_promotions += 1
        counts.problems.append(f"wrong promotion: {run.run_id} promoted v{version}, judged {run.judged}")
    if earned and not promoted:
        counts.refused_earned += 1
