"""Stage 7 (monitoring): the quality of the bar feeds over time, per feed and exchange day, from every
paper-trading session's stored bar arrivals, and optionally a historical intraday file; with the history plot and
checks on the last day and on the live feeds' freshness.

Freshness is judged on the data's own newest bar in market minutes (XNYS), not on when the asset last ran, and
not with Dagster's wall-clock freshness checks (``build_last_update_freshness_checks``): those count nights,
weekends and holidays as staleness and would judge a replay of 2019 bars too.
"""

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from resources.trading_state import TradingStateResource
from trading_assets.config_defaults import DomainCheckedConfig, default_of
from trading_assets.metadata import png_metadata
from trading_core.monitoring.data_quality import (
    DataQualityConfig,
    feed_day_quality,
    feed_freshness,
    file_day_quality,
)
from trading_core.monitoring.data_quality_plots import data_quality_history_png

ASSET = "data_quality_history"
DATA_QUALITY_CHECKS = {
    "feed_completeness": "every feed delivered at least the minimum share of its last day's expected bars",
    "feed_latency": "every live feed's bar latency p99 on its last day is within the late threshold",
    "feed_freshness": "every live feed's newest bar is at most the allowed market minutes old",
}
# Columns shown in the metadata preview of the last days, rounded for reading.
PREVIEW_COLUMNS = [
    "feed",
    "date",
    "completeness",
    "missing_bars",
    "gaps",
    "latency_p50_s",
    "latency_p99_s",
    "late_bars",
    "duplicates",
    "out_of_order",
    "stale_quotes",
]


class DataQualitySettings(DomainCheckedConfig):
    """Thresholds of the feed checks (defaults: :class:`DataQualityConfig`) and an optional intraday file."""

    late_after_s: float = default_of(DataQualityConfig, "late_after_s")
    stale_quote_s: float = default_of(DataQualityConfig, "stale_quote_s")
    min_completeness: float = default_of(DataQualityConfig, "min_completeness")
    max_stale_session_minutes: float = default_of(DataQualityConfig, "max_stale_session_minutes")
    intraday_file: str = ""  # a historical intraday bars file measured beside the feeds (completeness, gaps)

    def to_domain(self) -> DataQualityConfig:
        return DataQualityConfig(
            late_after_s=self.late_after_s,
            stale_quote_s=self.stale_quote_s,
            min_completeness=self.min_completeness,
            max_stale_session_minutes=self.max_stale_session_minutes,
        )


def _file_days(path: str, config: DataQualityConfig) -> pd.DataFrame:
    from trading_core.live.sources import read_bars

    # Measured as it is: data quality reports what validation would refuse, it does not refuse it.
    return file_day_quality(read_bars(path, validate=False), f"file:{Path(path).name}", config)


def _last_days(days: pd.DataFrame) -> pd.DataFrame:
    return days.sort_values("date").groupby("feed", sort=True).tail(1)


def _rounded(frame: pd.DataFrame) -> str:
    shown = frame[PREVIEW_COLUMNS].copy()
    shown["date"] = shown["date"].dt.date.astype(str)
    return shown.to_markdown(index=False, floatfmt=".3g")


def _completeness_check(days: pd.DataFrame, config: DataQualityConfig) -> dg.AssetCheckResult:
    if days.empty:
        return dg.AssetCheckResult(
            check_name="feed_completeness", passed=True, description="no feed recorded yet: nothing to judge"
        )
    last = _last_days(days)
    short = last[last["completeness"] < config.min_completeness]
    summary = ", ".join(
        f"{r.feed} {r.date.date()}: {r.completeness:.1%} ({r.missing_bars} missing)"
        for r in last.itertuples()
    )
    return dg.AssetCheckResult(
        check_name="feed_completeness",
        passed=short.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"last day, minimum {config.min_completeness:.0%}: {summary}",
        metadata={"lowest": float(round(last["completeness"].min(), 4))},
    )


def _latency_check(days: pd.DataFrame, config: DataQualityConfig) -> dg.AssetCheckResult:
    live = _last_days(days.dropna(subset=["latency_p99_s"])) if len(days) else days
    if live.empty:
        return dg.AssetCheckResult(
            check_name="feed_latency",
            passed=True,
            description="no live feed with arrival times (replays and files have none): nothing to judge",
        )
    slow = live[live["latency_p99_s"] > config.late_after_s]
    summary = ", ".join(
        f"{r.feed} {r.date.date()}: p99 {r.latency_p99_s:.2f} s, {r.late_bars} late"
        for r in live.itertuples()
    )
    return dg.AssetCheckResult(
        check_name="feed_latency",
        passed=slow.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"last day, limit {config.late_after_s:g} s: {summary}",
        metadata={"worst_p99_s": float(round(live["latency_p99_s"].max(), 3))},
    )


def _freshness_check(freshness: pd.DataFrame, config: DataQualityConfig) -> dg.AssetCheckResult:
    if freshness.empty:
        return dg.AssetCheckResult(
            check_name="feed_freshness",
            passed=True,
            description="no live feed recorded (replays are as old as their files): nothing to judge",
        )
    summary = ", ".join(
        f"{r.feed}: newest bar {r.newest_bar.isoformat()}, {r.session_minutes_since:.0f} market min old"
        for r in freshness.itertuples()
    )
    return dg.AssetCheckResult(
        check_name="feed_freshness",
        passed=bool(freshness["fresh"].all()),
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"limit {config.max_stale_session_minutes:g} market minutes: {summary}",
        metadata={"stalest_minutes": float(freshness["session_minutes_since"].max())},
    )


@dg.asset(
    name=ASSET,
    group_name="monitoring",
    compute_kind="pandas",
    check_specs=[
        dg.AssetCheckSpec(name, asset=ASSET, description=text) for name, text in DATA_QUALITY_CHECKS.items()
    ],
)
def data_quality_history(config: DataQualitySettings, trading_state: TradingStateResource):
    """Per feed and exchange day: completeness, gaps, bar latency p50/p99/max, late, repeated and out-of-order
    bars, stale quotes, over every paper-trading session's bar arrivals (and the intraday file when set)."""
    quality = config.to_domain()
    with trading_state.store() as store:
        arrivals = store.bar_arrivals()
        database = store.url
    days = feed_day_quality(arrivals, quality)
    if config.intraday_file:
        days = pd.concat([days, _file_days(config.intraday_file, quality)], ignore_index=True)
    days = days.sort_values(["feed", "date"], ignore_index=True) if len(days) else days
    freshness = feed_freshness(arrivals, pd.Timestamp.now(tz="UTC"), quality)
    metadata: dict[str, object] = {
        "feeds": dg.MetadataValue.int(int(days["feed"].nunique()) if len(days) else 0),
        "days": dg.MetadataValue.int(len(days)),
        "arrivals": dg.MetadataValue.int(len(arrivals)),
        "database": database,
    }
    if days.empty:
        metadata["description"] = dg.MetadataValue.text(
            "no paper-trading session has recorded bar arrivals yet (and no intraday file is set): empty table"
        )
    else:
        metadata["last_days"] = dg.MetadataValue.md(_rounded(_last_days(days)))
        metadata["mean_completeness"] = dg.MetadataValue.float(
            float(np.round(days["completeness"].mean(), 4))
        )
        p99 = days["latency_p99_s"].dropna()
        if len(p99):
            metadata["worst_latency_p99_s"] = dg.MetadataValue.float(float(np.round(p99.max(), 3)))
        metadata["history"] = png_metadata(data_quality_history_png(days, quality))
    yield dg.Output(days, metadata=metadata)
    yield _completeness_check(days, quality)
    yield _latency_check(days, quality)
    yield _freshness_check(freshness, quality)
