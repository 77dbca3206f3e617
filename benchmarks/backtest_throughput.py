"""Backtest throughput in asset-bars per second: an equal-weight daily rebalance of the Dow-30 stocks over
2009-2021 through the project's event-driven backtester (one portfolio, and 64 portfolios at once) and through
vectorbt in the same process, on the same rebalance.

The workload: every close, rebalance to equal weights of the portfolio value (fractional shares), 10 bps
proportional costs, fills at that close, no spread, no impact, no risk manager, 1,000,000 initial cash. Tickers
without the full history are dropped (DOW starts in 2019). Both sides sell first, then buy while cash lasts:
vectorbt with ``size_type="targetpercent"``, ``cash_sharing`` and ``call_seq="auto"``. Beside the 64 identical
equal-weight portfolios, 64 portfolios of different seeded (Dirichlet) weights run at once through both.

Timings are warm: each side runs once untimed first (numba compiles vectorbt's kernels then), and the best of
``--repeats`` timed runs is reported; a project run includes building every portfolio's record (equity,
positions, trades, costs).

Run: ``python -m benchmarks.backtest_throughput [--repeats 3] [--batch 64]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from benchmarks.common import SHARED_DATA, Timer
from trading_core.data.files import read_bars_file
from trading_core.data.validation import to_validated_bars
from trading_core.evaluation.backtester import EventDrivenBacktester
from trading_core.market.arrays import MarketArrays
from trading_core.market.simulator import PortfolioSimulator, SimulationConfig

INITIAL_CASH = 1_000_000.0
COST = 0.001  # 10 bps of the traded value


def full_history_bars(start: str = "2009-01-01", end: str = "2021-12-31") -> tuple[pd.DataFrame, list[str]]:
    """Dow-30 bars of the tickers that trade on every date of the period, and the tickers dropped."""
    path = SHARED_DATA / "dow30_daily_2009_2021.csv.gz"
    if not path.exists():
        raise SystemExit(
            f"benchmark data {path} not found; set RL_TRADING_SHARED_DATA to the shared/data folder"
        )
    bars = to_validated_bars(read_bars_file(path))
    bars = bars[(bars["date"] >= start) & (bars["date"] <= end)]
    dates_per_ticker = bars.groupby("tic")["date"].nunique()
    full = dates_per_ticker[dates_per_ticker == bars["date"].nunique()].index
    dropped = sorted(set(dates_per_ticker.index) - set(full))
    return bars[bars["tic"].isin(full)].reset_index(drop=True), dropped


def rebalance_config() -> SimulationConfig:
    """Same-close fills, proportional costs, no spread, impact or risk manager, fractional shares."""
    return SimulationConfig.finrl_parity(INITIAL_CASH, COST, whole_shares=False)


def rebalance(weights: np.ndarray) -> Callable[[int, PortfolioSimulator], np.ndarray]:
    """Target holdings of a daily rebalance to fixed ``weights`` ``[B, N]`` of each portfolio's value."""

    def decide(day: int, simulator: PortfolioSimulator) -> np.ndarray:
        return weights * simulator.equity()[:, None] / simulator.prices

    return decide


def project_final_values(market: MarketArrays, weights: np.ndarray) -> np.ndarray:
    """Final values of the rebalance for each row of ``weights``, run as one batched backtest."""
    records = EventDrivenBacktester(market, rebalance_config()).run_batch(rebalance(weights), len(weights))
    return np.array([record.equity.iloc[-1] for record in records])


def vectorbt_final_values(market: MarketArrays, weights: np.ndarray) -> np.ndarray:
    """Final values of the same rebalance through vectorbt, one cash-sharing group per row of ``weights``."""
    import vectorbt as vbt

    n_books, n_assets = weights.shape
    columns = pd.MultiIndex.from_product([range(n_books), market.tickers], names=["portfolio", "tic"])
    close = pd.DataFrame(np.tile(market.close, (1, n_books)), index=market.dates, columns=columns)
    portfolio = vbt.Portfolio.from_orders(
        close,
        size=np.broadcast_to(weights.reshape(1, -1), close.shape),
        size_type="targetpercent",
        fees=COST,
        init_cash=INITIAL_CASH,
        group_by=np.repeat(np.arange(n_books), n_assets),
        cash_sharing=True,
        call_seq="auto",
    )
    return np.asarray(portfolio.final_value(), dtype=np.float64).reshape(-1)


def best_time(run: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    """Seconds of the fastest of ``repeats`` warm runs (after one untimed run), and the run's result."""
    result = run()
    seconds = []
    for _ in range(repeats):
        with Timer() as timer:
            result = run()
        seconds.append(timer.seconds)
    return min(seconds), result


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed warm runs per measurement (best kept)")
    parser.add_argument("--batch", type=int, default=64, help="portfolios backtested at once")
    parser.add_argument("--seed", type=int, default=0, help="seeds the mixed weights")
    args = parser.parse_args(argv)

    bars, dropped = full_history_bars()
    market = MarketArrays.from_features(bars, feature_names=[])
    n_assets, bars_per_book = market.n_assets, market.n_steps * market.n_assets
    print(
        f"Dow-30 panel: {n_assets} tickers x {market.n_steps} dates "
        f"({market.dates[0].date()}..{market.dates[-1].date()}), dropped without full history: {dropped}"
    )
    equal = np.full((1, n_assets), 1.0 / n_assets)
    batch = np.repeat(equal, args.batch, axis=0)
    mixed = np.random.default_rng(args.seed).dirichlet(np.ones(n_assets), args.batch)

    single_s, single_value = best_time(lambda: project_final_values(market, equal), args.repeats)
    batch_s, batch_values = best_time(lambda: project_final_values(market, batch), args.repeats)
    mixed_s, mixed_values = best_time(lambda: project_final_values(market, mixed), args.repeats)
    vbt_s, vbt_value = best_time(lambda: vectorbt_final_values(market, equal), args.repeats)
    vbt_mixed_s, vbt_mixed_values = best_time(lambda: vectorbt_final_values(market, mixed), args.repeats)
    if not (batch_values == single_value[0]).all():
        raise SystemExit("the batched portfolios differ from the single one")

    result = {
        "asset_bars_per_s": round(bars_per_book / single_s),
        "batch_asset_bars_per_s": round(args.batch * bars_per_book / batch_s),
        "batch_mixed_asset_bars_per_s": round(args.batch * bars_per_book / mixed_s),
        "vectorbt_batch_mixed_asset_bars_per_s": round(args.batch * bars_per_book / vbt_mixed_s),
        "n_portfolios": args.batch,
        "n_assets": n_assets,
        "n_dates": market.n_steps,
        "final_value": round(float(single_value[0]), 2),
        "vectorbt_final_value": round(float(vbt_value[0]), 2),
        "mixed_final_value_max_rel_diff": float(np.max(np.abs(mixed_values / vbt_mixed_values - 1.0))),
        "vectorbt_asset_bars_per_s": round(bars_per_book / vbt_s),
        "final_value_rel_diff": float(abs(single_value[0] / vbt_value[0] - 1.0)),
    }
    vbt_rate = result["vectorbt_asset_bars_per_s"]
    print("warm runs, best of", args.repeats, "(vectorbt's numba compilation excluded)")
    print(f"project, 1 portfolio          : {result['asset_bars_per_s']:12,} asset-bars/s")
    print(f"project, {args.batch} portfolios at once : {result['batch_asset_bars_per_s']:12,} asset-bars/s")
    print(
        f"project, {args.batch} mixed weightings  : {result['batch_mixed_asset_bars_per_s']:12,} asset-bars/s"
    )
    print(f"vectorbt, 1 portfolio         : {vbt_rate:12,} asset-bars/s")
    print(
        f"vectorbt, {args.batch} mixed weightings : {result['vectorbt_batch_mixed_asset_bars_per_s']:12,} asset-bars/s"
    )
    print(
        f"ratios to vectorbt: 1 portfolio {result['asset_bars_per_s'] / vbt_rate:.2f}x (goal 0.1x), "
        f"{args.batch} at once {result['batch_asset_bars_per_s'] / vbt_rate:.2f}x (goal 1x)"
    )
    print(
        f"final value {result['final_value']:,.2f} vs vectorbt {result['vectorbt_final_value']:,.2f}: "
        f"relative difference {result['final_value_rel_diff']:.2e} (goal < 1e-3); mixed weightings at most "
        f"{result['mixed_final_value_max_rel_diff']:.2e}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
