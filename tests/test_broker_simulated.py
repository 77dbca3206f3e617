"""The broker interface's value types and the simulated broker, on real 1-minute bars.

The simulated broker must fill exactly like ``execute_orders`` (a differential check), one bar after the
order, and survive a snapshot round trip without changing what happens next.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SHARED_DATA
from trading_core.broker import (
    Bar,
    Broker,
    OrderRejected,
    OrderRequest,
    SimulatedBroker,
    make_client_order_id,
)
from trading_core.market.costs import (
    CostModel,
    NoImpact,
    ZeroCommission,
    corwin_schultz_half_spread,
    trailing_adv,
    trailing_volatility,
)
from trading_core.market.execution import ExecutionConfig, FillBar, execute_orders
from trading_core.market.simulator import SimulationConfig

INTRADAY_FILE: Path = SHARED_DATA / "intraday_1min_us_equities_2019.csv.gz"
SYMBOLS = ["AAPL", "JPM", "MSFT", "SPY"]
Step = tuple[pd.Timestamp, dict[str, Bar]]


@pytest.fixture(scope="module")
def steps() -> list[Step]:
    """The first trading day of the file for four symbols, minutes where all four traded, as broker input."""
    if not INTRADAY_FILE.exists():
        pytest.skip(f"real intraday data {INTRADAY_FILE} not found (set RL_TRADING_SHARED_DATA)")
    frame = pd.read_csv(INTRADAY_FILE, parse_dates=["datetime"])
    frame = frame[
        frame["tic"].isin(SYMBOLS) & (frame["datetime"].dt.date == pd.Timestamp("2019-02-11").date())
    ]
    complete = frame.groupby("datetime")["tic"].transform("nunique") == len(SYMBOLS)
    result = []
    for when, group in frame[complete].groupby("datetime", sort=True):
        bars = {r.tic: Bar(r.open, r.high, r.low, r.close, float(r.volume)) for r in group.itertuples()}
        result.append((pd.Timestamp(when).tz_localize("America/New_York"), bars))
    assert len(result) > 300
    return result


def frictionless(participation_cap: float | None = None) -> SimulationConfig:
    """No commission, spread or impact: fill prices are the raw open (or limit) prices."""
    return SimulationConfig(
        cost_model=CostModel(ZeroCommission(), NoImpact()),
        spread="none",
        execution=ExecutionConfig(participation_cap=participation_cap),
    )


def feed(broker: SimulatedBroker, steps: list[Step]) -> list:
    fills = []
    for when, bars in steps:
        fills += broker.on_bar(when, bars)
    return fills


# ------------------------------------------------------------------------------------------------ value types


def test_order_request_validation():
    assert OrderRequest("id-1", "AAPL", "sell", 3).signed_qty == -3
    for bad in (
        dict(qty=0),
        dict(qty=-1),
        dict(qty=math.nan),
        dict(side="short"),
        dict(order_type="limit"),
        dict(order_type="limit", limit_price=-1.0),
        dict(limit_price=100.0),  # a market order with a limit price is ambiguous
        dict(client_order_id=""),
    ):
        arguments = {"client_order_id": "id-1", "symbol": "AAPL", "side": "buy", "qty": 1.0, **bad}
        with pytest.raises(ValueError):
            OrderRequest(**arguments)


def test_client_order_ids_are_deterministic_short_and_safe():
    when = pd.Timestamp("2019-02-11 09:31", tz="America/New_York")
    first = make_client_order_id("session-1", when, "AAPL", "buy")
    assert first == make_client_order_id("session-1", when.tz_convert("Asia/Tokyo"), "AAPL", "buy")
    assert len(first) <= 48 and re.fullmatch(r"[a-z0-9-]+", first)
    others = {
        make_client_order_id("session-2", when, "AAPL", "buy"),
        make_client_order_id("session-1", when + pd.Timedelta(minutes=1), "AAPL", "buy"),
        make_client_order_id("session-1", when, "MSFT", "buy"),
        make_client_order_id("session-1", when, "AAPL", "sell"),
    }
    assert first not in others and len(others) == 4
    with pytest.raises(ValueError, match="timezone"):
        make_client_order_id("session-1", pd.Timestamp("2019-02-11 09:31"), "AAPL", "buy")


def test_simulated_broker_is_a_broker():
    assert isinstance(SimulatedBroker(SYMBOLS, SimulationConfig()), Broker)


# ------------------------------------------------------------------------------------------------- fills


def panel(steps: list[Step], field: str) -> np.ndarray:
    """One bar field as a ``[T, N]`` array over ``SYMBOLS``."""
    return np.array([[getattr(bars[s], field) for s in SYMBOLS] for _, bars in steps])


def test_fills_equal_execute_orders_for_the_same_inputs(steps):
    """A differential check: the broker's fills against ``execute_orders`` fed by the estimators over the
    whole history, with the default costs (IBKR commission, Corwin-Schultz spread, linear impact, 10 % cap)."""
    config = SimulationConfig()
    broker = SimulatedBroker(SYMBOLS, config, initial_cash=1_000_000.0)
    checked, seen_count = 0, 0
    for decided, wanted in (
        (29, {"AAPL": 400, "MSFT": 900, "SPY": 150}),
        (59, {"AAPL": -250, "JPM": 700, "MSFT": 2000}),
    ):
        feed(broker, steps[seen_count : decided + 1])
        orders = np.array([[wanted.get(s, 0) for s in SYMBOLS]], dtype=float)
        holdings = np.array([[broker.positions().get(s, 0.0) for s in SYMBOLS]])
        cash = np.array([broker.account().cash])
        for symbol, qty in wanted.items():
            broker.submit_order(
                OrderRequest(f"o{decided}-{symbol}", symbol, "buy" if qty > 0 else "sell", abs(qty))
            )

        seen, fill_step = steps[: decided + 1], steps[decided + 1 : decided + 2]
        fill_bar = FillBar(
            reference_price=panel(fill_step, "open"),
            high=panel(fill_step, "high"),
            low=panel(fill_step, "low"),
            volume=panel(fill_step, "volume"),
            half_spread=corwin_schultz_half_spread(
                panel(seen, "high"), panel(seen, "low"), fallback_bps=config.spread_bps
            )[-1:],
            adv=trailing_adv(panel(seen, "volume"), config.stats_window)[-1:],
            sigma=trailing_volatility(panel(seen, "close"), config.stats_window)[-1:],
        )
        expected = execute_orders(
            orders, holdings, cash, panel(seen, "close")[-1:], fill_bar, config.cost_model, config.execution
        )

        fills = {f.symbol: f for f in broker.on_bar(*fill_step[0])}
        seen_count = decided + 2
        for i, symbol in enumerate(SYMBOLS):
            if expected.shares[0, i] == 0:
                assert symbol not in fills
                continue
            fill = fills[symbol]
            assert fill.qty * (1 if fill.side == "buy" else -1) == expected.shares[0, i]
            np.testing.assert_allclose(
                [fill.price, fill.commission, fill.spread_cost, fill.impact_cost],
                [
                    e[0, i]
                    for e in (expected.price, expected.commission, expected.spread_cost, expected.impact_cost)
                ],
                rtol=1e-9,
            )
            assert fill.impact_cost > 0 and fill.spread_cost > 0  # the cost models were really exercised
            checked += 1
        np.testing.assert_allclose(broker.account().cash, cash[0] + expected.cash_change[0], rtol=1e-12)
    assert checked == 6


def test_an_order_fills_at_the_next_bars_open_never_on_a_bar_already_seen(steps):
    broker = SimulatedBroker(SYMBOLS, frictionless())
    (t0, bars0), (t1, bars1), (t2, bars2) = steps[:3]
    broker.on_bar(t0, bars0)
    order = broker.submit_order(OrderRequest("buy-1", "AAPL", "buy", 10))
    assert order.status == "new" and order.is_open
    with pytest.raises(ValueError, match="not after"):
        broker.on_bar(t0, bars0)  # replaying the bar the order saw must not fill it
    assert broker.on_bar(t1, {s: b for s, b in bars1.items() if s != "AAPL"}) == []  # AAPL missing: waits
    assert broker.get_order("buy-1").status == "new"
    [fill] = broker.on_bar(t2, bars2)
    assert fill.price == bars2["AAPL"].open and fill.filled_at == t2.tz_convert("UTC")
    assert bars2["AAPL"].open != bars0["AAPL"].open
    state = broker.get_order("buy-1")
    assert (state.status, state.filled_qty, state.signed_filled_qty, state.is_open) == (
        "filled",
        10,
        10,
        False,
    )
    assert broker.positions() == {"AAPL": 10.0}
    assert broker.account().cash == pytest.approx(100_000.0 - 10 * bars2["AAPL"].open)
    assert broker.account().equity == pytest.approx(
        100_000.0 + 10 * (bars2["AAPL"].close - bars2["AAPL"].open)
    )


def test_submit_is_idempotent_on_client_order_id(steps):
    broker = SimulatedBroker(SYMBOLS, frictionless())
    broker.on_bar(*steps[0])
    first = broker.submit_order(OrderRequest("same", "MSFT", "buy", 5))
    assert broker.submit_order(OrderRequest("same", "MSFT", "buy", 5)) == first
    assert len(broker.open_orders()) == 1
    assert len(broker.on_bar(*steps[1])) == 1
    filled = broker.get_order("same")
    assert broker.submit_order(OrderRequest("same", "MSFT", "buy", 5)) == filled  # also after the fill
    assert broker.on_bar(*steps[2]) == [] and broker.positions() == {"MSFT": 5.0}


def test_participation_cap_fills_part_and_cancels_the_rest(steps):
    broker = SimulatedBroker(SYMBOLS, frictionless(participation_cap=0.1), initial_cash=1e8)
    broker.on_bar(*steps[0])
    next_volume = steps[1][1]["JPM"].volume
    wanted = int(next_volume)  # ten times what the cap allows
    broker.submit_order(OrderRequest("big", "JPM", "buy", wanted))
    [fill] = broker.on_bar(*steps[1])
    assert fill.qty == math.floor(0.1 * next_volume) > 0
    state = broker.get_order("big")
    assert state.status == "canceled" and 0 < state.filled_qty < wanted and not state.is_open
    assert broker.on_bar(*steps[2]) == []  # the remainder does not come back


def test_a_symbol_fills_one_order_per_bar_oldest_market_order_first(steps):
    broker = SimulatedBroker(SYMBOLS, frictionless(participation_cap=0.1), initial_cash=1e8)
    broker.on_bar(*steps[0])
    cap = math.floor(0.1 * steps[1][1]["JPM"].volume)
    broker.submit_order(OrderRequest("resting", "JPM", "buy", 5, "limit", 1.0))
    broker.submit_order(OrderRequest("first", "JPM", "buy", cap - 10))
    broker.submit_order(OrderRequest("second", "JPM", "buy", 100))
    # Both market orders in one bar would trade more than the cap allows: the second waits a bar.
    assert [(f.client_order_id, f.qty) for f in broker.on_bar(*steps[1])] == [("first", cap - 10)]
    assert [(f.client_order_id, f.qty) for f in broker.on_bar(*steps[2])] == [("second", 100)]
    assert [o.client_order_id for o in broker.open_orders()] == ["resting"]


def test_a_limit_rests_until_a_bar_trades_through_it(steps):
    broker = SimulatedBroker(SYMBOLS, frictionless())
    broker.on_bar(*steps[0])
    limit = steps[1][1]["SPY"].low  # touching the limit is not trading through it
    broker.submit_order(OrderRequest("dip", "SPY", "buy", 20, "limit", limit))
    through = next(k for k in range(1, len(steps)) if steps[k][1]["SPY"].low < limit)
    assert through > 1
    assert feed(broker, steps[1:through]) == []
    assert [o.client_order_id for o in broker.open_orders()] == ["dip"]
    [fill] = broker.on_bar(*steps[through])
    assert fill.price == min(steps[through][1]["SPY"].open, limit)


def test_cash_never_goes_negative_and_the_rest_of_a_buy_is_canceled(steps):
    broker = SimulatedBroker(SYMBOLS, SimulationConfig(), initial_cash=5_000.0)
    broker.on_bar(*steps[0])
    broker.submit_order(OrderRequest("too-big", "AAPL", "buy", 1_000))
    [fill] = broker.on_bar(*steps[1])
    assert 0 < fill.qty < 1_000
    assert 0 <= broker.account().cash < fill.price + fill.commission
    assert broker.get_order("too-big").status == "canceled"
    broker.submit_order(OrderRequest("no-shares", "MSFT", "sell", 10))
    assert broker.on_bar(*steps[2]) == []  # nothing to sell and no shorting: canceled, not filled
    assert broker.get_order("no-shares").status == "canceled"


def test_rejections_and_configuration_errors(steps):
    broker = SimulatedBroker(SYMBOLS, SimulationConfig())
    with pytest.raises(OrderRejected, match="not tradable"):
        broker.submit_order(OrderRequest("x", "TSLA", "buy", 1))
    with pytest.raises(OrderRejected, match="whole shares"):
        broker.submit_order(OrderRequest("y", "AAPL", "buy", 1.5))
    with pytest.raises(ValueError, match="quotes"):
        SimulatedBroker(SYMBOLS, SimulationConfig(spread="quotes"))
    with pytest.raises(ValueError, match="next_open"):
        SimulatedBroker(SYMBOLS, SimulationConfig.finrl_parity())
    with pytest.raises(ValueError, match="timezone"):
        broker.on_bar(pd.Timestamp("2019-02-11 09:31"), steps[0][1])


def test_cancel_all_and_close_all_positions(steps):
    broker = SimulatedBroker(SYMBOLS, frictionless())
    broker.on_bar(*steps[0])
    broker.submit_order(OrderRequest("a", "AAPL", "buy", 10))
    broker.submit_order(OrderRequest("m", "MSFT", "buy", 7))
    broker.on_bar(*steps[1])
    broker.submit_order(OrderRequest("resting", "JPM", "buy", 5, "limit", 1.0))
    broker.close_all_positions()
    assert broker.get_order("resting").status == "canceled"
    assert sorted((o.symbol, o.side, o.qty) for o in broker.open_orders()) == [
        ("AAPL", "sell", 10),
        ("MSFT", "sell", 7),
    ]
    broker.on_bar(*steps[2])
    assert broker.positions() == {} and broker.open_orders() == []
    assert broker.cancel_all_orders() == 0


def test_snapshot_round_trip_continues_identically(steps):
    config = SimulationConfig()
    original = SimulatedBroker(SYMBOLS, config, initial_cash=250_000.0)
    feed(original, steps[:40])
    original.submit_order(OrderRequest("m1", "AAPL", "buy", 300))
    original.submit_order(OrderRequest("l1", "MSFT", "buy", 200, "limit", steps[39][1]["MSFT"].close * 0.999))
    feed(original, steps[40:41])
    original.submit_order(OrderRequest("m2", "JPM", "buy", 400))  # pending at the snapshot

    restored = SimulatedBroker.from_snapshot(json.loads(json.dumps(original.snapshot())), config)
    assert restored.snapshot() == original.snapshot()
    later = steps[41:120]
    for k, (when, bars) in enumerate(later):
        if k % 10 == 5:
            for broker in (original, restored):
                broker.submit_order(OrderRequest(f"s{k}", "AAPL", "sell", 50))
                broker.submit_order(OrderRequest(f"b{k}", "SPY", "buy", 30))
        assert original.on_bar(when, bars) == restored.on_bar(when, bars)
    assert original.fills == restored.fills and len(original.fills) > 10
    assert original.orders == restored.orders
    assert original.account() == restored.account()
    assert original.positions() == restored.positions()


@settings(max_examples=25, deadline=None)
@given(
    actions=st.lists(
        st.tuples(
            st.integers(0, 39),  # bar after which the order is sent
            st.sampled_from(SYMBOLS),
            st.sampled_from(["buy", "sell"]),
            st.integers(1, 400),
            st.one_of(st.none(), st.floats(-0.003, 0.003)),  # limit distance from the last close
        ),
        max_size=30,
    )
)
def test_cash_and_positions_never_go_negative(steps, actions):
    broker = SimulatedBroker(SYMBOLS, SimulationConfig(), initial_cash=30_000.0)
    for k, (when, bars) in enumerate(steps[:40]):
        broker.on_bar(when, bars)
        for n, (after, symbol, side, qty, distance) in enumerate(actions):
            if after != k:
                continue
            limit = None if distance is None else round(bars[symbol].close * (1 + distance), 2)
            broker.submit_order(
                OrderRequest(f"h{n}", symbol, side, qty, "market" if limit is None else "limit", limit)
            )
        assert broker.account().cash >= 0
        assert all(qty > 0 for qty in broker.positions().values())
