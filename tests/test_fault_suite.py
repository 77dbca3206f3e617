"""The fault suite (issue 11, point 9): seeded paper sessions against the fake Alpaca with random faults on every
broker route, kills of the trading process, an outage past the grace and the kill switch, each audited against
the broker's truth and the same session without faults; and replays of interleaved pipeline runs against the
promotion gate. Goal: 0 duplicated, 0 lost, 0 mis-recorded, kill-only sessions alerting exactly as an
uninterrupted one, 0 wrong promotions.

``pytest -s tests/test_fault_suite.py`` prints the table; every row is also a ``record_property`` of its test and
the whole table is written as JSON (its path is printed with it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import get_args

import pytest

from resources.mlflow_registry import MlflowRegistryResource
from testkit.fake_alpaca import DEFAULT_API_KEY, DEFAULT_SECRET, FakeAlpacaServer
from testkit.fault_suite import (
    ENDPOINTS,
    KillKind,
    KillPoint,
    MlflowPromotionRegistry,
    PromotionCounts,
    Scenario,
    SessionRun,
    SimulatedKill,
    SuiteSetup,
    UngatedRegistry,
    audit,
    draw_scenario,
    format_table,
    replay_promotions,
    run_scenario,
)
from trading_assets.evaluation import GATE_STEPS
from trading_core.broker.alpaca import AlpacaPaperBroker
from trading_core.broker.base import OrderState, RetryPolicy
from trading_core.live.engine import DecisionEngine
from trading_core.live.loop import LiveConfig, LiveTradingLoop
from trading_core.live.sources import replay
from trading_core.live.state import TradingStateStore

BARS = 30
SCENARIOS = [
    ("kills", 101),
    ("faults", 201),
    ("faults", 202),
    ("kill_switch", 301),
]
# Replays on the real MLflow registry cost about half a second each; on the outputs' gate alone, microseconds.
REGISTRY_PROMOTION_SEEDS = range(6)
OUTPUT_PROMOTION_SEEDS = range(500)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def setup(live_agent, live_minutes) -> SuiteSetup:
    policy, spec = live_agent
    history, trading = live_minutes
    return SuiteSetup(policy, spec, history, list(replay(trading))[:BARS])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Iterator[list[dict]]:
    """The suite's rows; printed as one table, and written as JSON, once the module's tests ran."""
    rows: list[dict] = []
    yield rows
    if not rows:
        return
    path = tmp_path_factory.mktemp("fault_suite") / "fault_suite.json"
    path.write_text(json.dumps(rows, indent=2, default=str))
    print(f"\nfault suite ({path}):\n{format_table(rows)}")


@pytest.fixture(scope="module")
def reference_of(setup, tmp_path_factory) -> Callable[[Scenario], SessionRun]:
    """The uninterrupted, fault-free run of a scenario's session (shared by every scenario with the same one)."""
    runs: dict[str, SessionRun] = {}

    def reference(scenario: Scenario) -> SessionRun:
        plain = scenario.reference()
        if plain.name not in runs:
            runs[plain.name] = run_scenario(setup, plain, tmp_path_factory.mktemp(plain.name))
        return runs[plain.name]

    return reference


def test_scenarios_are_drawn_from_their_seed_and_fault_every_route():
    assert draw_scenario("faults", 201, BARS) == draw_scenario("faults", 201, BARS)
    assert draw_scenario("faults", 201, BARS) != draw_scenario("faults", 202, BARS)
    scenarios = [draw_scenario(kind, seed, BARS) for kind, seed in SCENARIOS]
    assert {spec.endpoint for scenario in scenarios for spec in scenario.faults} >= set(ENDPOINTS)
    assert {point.kind for scenario in scenarios for point in scenario.kills} == set(get_args(KillKind))
    kills = draw_scenario("kills", 101, BARS)
    assert not kills.faults and kills.outage_at is None and len(kills.kills) == 4


@pytest.mark.parametrize(("kind", "seed"), SCENARIOS, ids=[f"{kind}-{seed}" for kind, seed in SCENARIOS])
def test_a_faulty_session_loses_duplicates_and_misrecords_nothing(
    kind, seed, setup, reference_of, report, record_property, tmp_path
):
    scenario = draw_scenario(kind, seed, BARS)
    reference = reference_of(scenario)
    run = run_scenario(setup, scenario, tmp_path)
    counts = audit(run, reference)
    row = {**counts.row(), "wrong_promotions": None}
    report.append(row)
    record_property("fault_suite", json.dumps({k: v for k, v in row.items() if k != "problems"}, default=str))
    problems = "\n".join(counts.problems)

    assert (counts.duplicated, counts.lost, counts.misrecorded) == (0, 0, 0), problems
    assert not counts.problems, problems
    assert len(run.kills) == len(scenario.kills), f"kills placed {scenario.kills}, done {run.kills}"
    assert counts.orders_sent > 0 and reference.books.broker_orders
    if kind == "kills":
        assert counts.alerts_identical, problems
        assert not run.stops and not run.fault_counts
    else:
        assert counts.faults > 0
    if scenario.outage_at is not None:
        assert any("grace" in reason for reason in run.stops), run.stops
    if scenario.kill_switch_at is not None:
        assert run.books.session_status == "killed"
        assert any(route.startswith("DELETE /v2/orders") for route in run.fault_counts), run.fault_counts


def _promotion_row(name: str, seeds: range, counts: PromotionCounts) -> dict:
    return {
        "scenario": name,
        "seed": f"{seeds.start}-{seeds.stop - 1}",
        "wrong_promotions": counts.wrong_promotions,
    }


def test_the_champion_steps_gate_alone_never_promotes_what_the_run_did_not_earn(report, record_property):
    counts = PromotionCounts()
    for seed in OUTPUT_PROMOTION_SEEDS:
        replay_promotions(UngatedRegistry(), seed, GATE_STEPS, counts)
    report.append(_promotion_row("promotions: outputs gate", OUTPUT_PROMOTION_SEEDS, counts))
    record_property("fault_suite", json.dumps(vars(counts)))

    assert counts.wrong_promotions == 0 and not counts.problems, counts.problems
    assert 0 < counts.promotions < counts.attempts  # both verdicts were exercised


def test_the_registrys_gate_alone_never_promotes_what_the_run_did_not_earn(tmp_path, report, record_property):
    registry = MlflowRegistryResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri()
    )
    counts = PromotionCounts()
    for seed in REGISTRY_PROMOTION_SEEDS:
        # Without the outputs' gate in front: the registry's records alone must refuse.
        promotions = MlflowPromotionRegistry(registry, f"fault_suite_agent_{seed}")
        replay_promotions(promotions, seed, GATE_STEPS, counts, check_outputs=False)
    report.append(_promotion_row("promotions: registry gate", REGISTRY_PROMOTION_SEEDS, counts))
    record_property("fault_suite", json.dumps(vars(counts)))

    assert counts.wrong_promotions == 0 and not counts.problems, counts.problems
    assert 0 < counts.promotions < counts.attempts


class _DiesReconciling(AlpacaPaperBroker):
    """Dies on the first bar's reconciliation: after its orders reached the broker, before the bar committed."""

    def open_orders(self) -> list[OrderState]:
        raise SimulatedKill(KillPoint("call_before", 0, restart_broker=False))


def test_orders_sent_before_a_kill_and_not_resent_in_an_outage_are_asked_about_not_canceled(setup, tmp_path):
    # The regression the suite found: the replayed bar's unsent intents were canceled as "never sent".
    events = list(setup.events[:3])

    def market(server: FakeAlpacaServer):
        for event in events:
            for symbol, bar in event.bars.items():
                server.publish_bar(
                    symbol, event.timestamp, bar.open, bar.high, bar.low, bar.close, bar.volume
                )
            yield event

    def loop(store: TradingStateStore, broker: AlpacaPaperBroker) -> LiveTradingLoop:
        return LiveTradingLoop(
            LiveConfig(session_id="resent", outage_grace_s=30.0),
            store,
            broker,
            (DecisionEngine(setup.policy, setup.spec), "1"),
            history=setup.history,
            retry=RetryPolicy(max_attempts=1),
        )

    def broker(kind: type[AlpacaPaperBroker], server: FakeAlpacaServer) -> AlpacaPaperBroker:
        return kind(
            DEFAULT_API_KEY,
            DEFAULT_SECRET,
            url_override=server.url,
            retry=setup.broker_retry,
            request_timeout_s=1.0,
        )

    with (
        FakeAlpacaServer(initial_cash=setup.spec.env_spec.initial_amount) as server,
        TradingStateStore.sqlite(tmp_path / "state.db") as store,
    ):
        store.create_schema()
        with pytest.raises(SimulatedKill):
            loop(store, broker(_DiesReconciling, server)).run(market(server))
        sent = {order["client_order_id"] for order in server.orders}
        assert len(sent) >= 2  # the first bar trades several symbols
        # The replayed bar's first re-send and its look-ups fail past the retries: an outage begins.
        attempts = setup.broker_retry.max_attempts
        server.inject(503, method="POST", path_prefix="/v2/orders", times=attempts)
        server.inject(503, method="GET", path_prefix="/v2/orders:by_client_order_id", times=attempts)
        loop(store, broker(AlpacaPaperBroker, server)).run(market(server))
        at_broker = {order["client_order_id"]: order["status"] for order in server.orders}
        orders = store.orders("resent")

    first_bar = orders[orders["decision_time"] == events[0].timestamp]
    assert set(first_bar["client_order_id"]) == sent
    # Each as the broker holds it (filled on the next bar), none canceled as if the broker never had it.
    assert {cid: at_broker[cid] for cid in sent} == dict(
        zip(first_bar["client_order_id"], first_bar["status"], strict=True)
    )


def test_the_report_table_has_a_total_line():
    rows = [
        {"scenario": "a", "duplicated": 0, "lost": 1, "alerts_identical": True, "wrong_promotions": None},
        {"scenario": "b", "duplicated": 0, "lost": 0, "alerts_identical": False, "wrong_promotions": 0},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split()[0] == "scenario" and lines[-1].split()[0] == "total"
    assert " NO " in f" {lines[-1]} " and len(lines) == 6
