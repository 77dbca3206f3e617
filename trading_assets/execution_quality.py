"""Execution: a slow allocator's daily targets worked by fast executors on real intraday bars, compared.

The default ``make run`` data has no intraday bars: without an intraday file the asset returns an empty
comparison and says why in its metadata.
"""

import os
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pandas as pd

from trading_assets.config_defaults import DomainCheckedConfig, default_of
from trading_assets.metadata import markdown_table, png_metadata
from trading_core.allocators.config import AllocatorMethod
from trading_core.evaluation.plots import grouped_bars_png
from trading_core.hierarchy.comparison import compare_files, comparison_table
from trading_core.hierarchy.session_loop import HierarchyConfig, ImpactVolume
from trading_core.market.execution import ExecutionConfig
from trading_core.market.simulator import SimulationConfig

SHARED_DATA_ENV = "RL_TRADING_SHARED_DATA"
SHARED_INTRADAY_FILES = ("intraday_1min_us_equities_2019.csv.gz", "intraday_15min_us_equities_2019.csv.gz")
SHARED_DAILY_FILE = "dow30_daily_2009_2021.csv.gz"


class ExecutionComparisonSettings(DomainCheckedConfig):
    """The files, the slow allocator and the fill rules of the comparison (defaults: :class:`HierarchyConfig`).

    ``intraday_files`` and ``daily_file`` left unset mean the shared real-data files under
    ``$RL_TRADING_SHARED_DATA`` when that is set, else none (and an empty comparison). ``validate_intraday``
    runs the project's validation rules on each intraday file first (Great Expectations: seconds per file).
    """

    intraday_files: list[str] | None = None
    daily_file: str | None = None
    allocator_method: AllocatorMethod = default_of(HierarchyConfig, "allocator").method
    rebalance_every: int = default_of(HierarchyConfig, "allocator").rebalance_every
    participation_cap: float | None = default_of(ExecutionConfig, "participation_cap")
    initial_amount: float = default_of(HierarchyConfig, "initial_amount")
    impact_volume: ImpactVolume = default_of(HierarchyConfig, "impact_volume")
    validate_intraday: bool = default_of(compare_files, "validate")

    def to_domain(self) -> HierarchyConfig:
        simulation = SimulationConfig()
        return HierarchyConfig(
            initial_amount=self.initial_amount,
            allocator=replace(
                default_of(HierarchyConfig, "allocator"),
                method=self.allocator_method,
                rebalance_every=self.rebalance_every,
            ),
            simulation=replace(
                simulation, execution=replace(simulation.execution, participation_cap=self.participation_cap)
            ),
            impact_volume=self.impact_volume,
        )


def _files(settings: ExecutionComparisonSettings) -> tuple[list[Path], Path | None, str]:
    """The intraday files and the daily file to compare on, and why there are none when there are none."""
    shared = os.environ.get(SHARED_DATA_ENV)
    if settings.intraday_files is not None:
        intraday = [Path(f) for f in settings.intraday_files]
        missing = [str(f) for f in intraday if not f.exists()]
        if missing:
            raise dg.Failure(f"intraday_files: {', '.join(missing)} not found")
    elif shared:
        intraday = [Path(shared) / name for name in SHARED_INTRADAY_FILES if (Path(shared) / name).exists()]
    else:
        return [], None, f"no intraday file: set intraday_files or {SHARED_DATA_ENV}"
    if not intraday:
        return [], None, f"no intraday file under {SHARED_DATA_ENV}={shared}"
    if settings.daily_file is not None:
        daily = Path(settings.daily_file)
    elif shared:
        daily = Path(shared) / SHARED_DAILY_FILE
    else:
        raise dg.Failure(f"daily_file: not set and {SHARED_DATA_ENV} is not set")
    if not daily.exists():
        raise dg.Failure(f"daily_file: {daily} not found")
    return intraday, daily, ""


def _chart(table: pd.DataFrame) -> bytes:
    wide = table.pivot(index="executor", columns="bar_length", values=["shortfall_mean_bps", "cost_mean_bps"])
    wide.columns = [
        f"{'shortfall' if m.startswith('shortfall') else 'cost'} {bars}" for m, bars in wide.columns
    ]
    order = list(dict.fromkeys(table["executor"]))
    return grouped_bars_png(
        wide.loc[order], "Executors: mean shortfall vs the decision close, and cost", "basis points"
    )


@dg.asset(group_name="execution", compute_kind="pandas")
def execution_comparison(
    context: dg.AssetExecutionContext, config: ExecutionComparisonSettings
) -> dg.Output[pd.DataFrame]:
    """Immediate, TWAP, VWAP and Almgren–Chriss executors working a daily allocator's targets on intraday bars:
    shortfall, cost, fill rate and child orders per executor and file."""
    intraday, daily, reason = _files(config)
    if not intraday:
        context.log.info(f"execution comparison skipped: {reason}")
        return dg.Output(pd.DataFrame(), metadata={"executors": 0, "skipped": reason})
    domain = config.to_domain()
    comparisons = [compare_files(path, daily, domain, validate=config.validate_intraday) for path in intraday]
    table = comparison_table(comparisons)
    return dg.Output(
        table,
        metadata={
            "executors": dg.MetadataValue.int(int(table["executor"].nunique())),
            "files": ", ".join(c.label for c in comparisons),
            "tickers": ", ".join(comparisons[0].tickers),
            "allocator": domain.allocator.method,
            "participation_cap": str(config.participation_cap),
            "comparison": markdown_table(table.to_dict(orient="records")),
            "chart": png_metadata(_chart(table)),
        },
    )


__all__ = ["ExecutionComparisonSettings", "execution_comparison"]
