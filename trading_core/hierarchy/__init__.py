"""A hierarchical multi-timeframe layer: a slow allocator's daily target weights, decided at close ``d-1``,
worked during session ``d`` by fast executors (immediate, TWAP, VWAP, Almgren–Chriss) on intraday bars under the
shared fill logic and cost model, and the executors' execution quality compared."""

from trading_core.hierarchy.comparison import (
    ExecutionComparison,
    compare_executors,
    compare_files,
    comparison_table,
    read_daily_bars,
)
from trading_core.hierarchy.executors import (
    AlmgrenChrissExecutor,
    Executor,
    ImmediateExecutor,
    SessionPlan,
    TwapExecutor,
    VwapExecutor,
    default_executors,
    volume_profile,
)
from trading_core.hierarchy.session_loop import ExecutionRun, HierarchyConfig, execute_sessions
from trading_core.hierarchy.sessions import IntradaySessions, intraday_sessions
from trading_core.hierarchy.shortfall import parent_measures, summarise
from trading_core.hierarchy.targets import DailyTargets, daily_market, daily_targets

__all__ = [
    "AlmgrenChrissExecutor",
    "DailyTargets",
    "ExecutionComparison",
    "ExecutionRun",
    "Executor",
    "HierarchyConfig",
    "ImmediateExecutor",
    "IntradaySessions",
    "SessionPlan",
    "TwapExecutor",
    "VwapExecutor",
    "compare_executors",
    "compare_files",
    "comparison_table",
    "daily_market",
    "daily_targets",
    "default_executors",
    "execute_sessions",
    "intraday_sessions",
    "parent_measures",
    "read_daily_bars",
    "summarise",
    "volume_profile",
]
