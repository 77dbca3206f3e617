"""Executors compared on the shared real intraday files: a daily allocator's targets (decided at close d-1) worked
during session d by immediate, TWAP, VWAP and Almgren–Chriss executors, each with its own book, under the shared
fill logic (whole shares, 10 % participation cap) and cost model (IB fixed commission, Corwin–Schultz spread,
linear impact).

Run: ``python -m benchmarks.execution_comparison``. One JSON line per (file, executor), then a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from benchmarks.common import SHARED_DATA, Timer
from trading_core.allocators.config import ALLOCATORS
from trading_core.hierarchy.comparison import compare_files, comparison_table
from trading_core.hierarchy.session_loop import HierarchyConfig

FILES = ("intraday_1min_us_equities_2019.csv.gz", "intraday_15min_us_equities_2019.csv.gz")
DAILY_FILE = "dow30_daily_2009_2021.csv.gz"
FIGURES = (
    "shortfall_mean_bps",
    "shortfall_median_bps",
    "shortfall_p90_bps",
    "shortfall_vw_bps",
    "shortfall_open_mean_bps",
    "cost_mean_bps",
    "cost_vw_bps",
    "perold_mean_bps",
    "fill_rate",
    "children_per_parent",
)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    defaults = HierarchyConfig()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--allocator", choices=ALLOCATORS, default=defaults.allocator.method)
    parser.add_argument("--initial-amount", type=float, default=defaults.initial_amount)
    parser.add_argument(
        "--participation-cap", type=float, default=defaults.simulation.execution.participation_cap
    )
    args = parser.parse_args(argv)
    missing = [name for name in (*FILES, DAILY_FILE) if not (SHARED_DATA / name).exists()]
    if missing:
        raise SystemExit(f"benchmark data {', '.join(missing)} not found; set RL_TRADING_SHARED_DATA")
    simulation = defaults.simulation
    config = replace(
        defaults,
        initial_amount=args.initial_amount,
        allocator=replace(defaults.allocator, method=args.allocator),
        simulation=replace(
            simulation, execution=replace(simulation.execution, participation_cap=args.participation_cap)
        ),
    )
    with Timer() as timer:
        comparisons = [compare_files(SHARED_DATA / f, SHARED_DATA / DAILY_FILE, config) for f in FILES]
    table = comparison_table(comparisons)
    rows = []
    for record in table.to_dict(orient="records"):
        row = {"bars": record["bar_length"], "executor": record["executor"], "parents": record["parents"]}
        row.update({name: round(float(record[name]), 2) for name in FIGURES})
        row["child_orders"] = int(record["child_orders"])
        print(json.dumps(row))
        rows.append(row)
    print(
        json.dumps(
            {
                "allocator": args.allocator,
                "initial_amount": args.initial_amount,
                "participation_cap": args.participation_cap,
                "tickers": list(comparisons[0].tickers),
                "sessions": {c.label: len(c.dates) for c in comparisons},
                "seconds": round(timer.seconds, 1),
            }
        )
    )
    return rows


if __name__ == "__main__":
    main()
