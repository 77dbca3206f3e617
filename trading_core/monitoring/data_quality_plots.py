"""The data-quality history as a figure: completeness and latency p99 per feed and day, thresholds drawn."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from trading_core.monitoring.data_quality import DataQualityConfig  # noqa: E402


def data_quality_history_png(days: pd.DataFrame, config: DataQualityConfig) -> bytes:
    """Two panels over the days: completeness (the minimum drawn) and latency p99 (the late threshold drawn),
    one line per feed; feeds without arrival times (replays, files) have no latency line.

    :param days: the per-feed-day table (:func:`~trading_core.monitoring.data_quality.feed_day_quality`)
    :param config: the thresholds drawn
    """
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), dpi=100, sharex=True)
    for feed, rows in days.groupby("feed"):
        rows = rows.sort_values("date")
        top.plot(rows["date"], rows["completeness"], marker="o", markersize=3, label=str(feed))
        latency = rows.dropna(subset=["latency_p99_s"])
        if len(latency):
            bottom.plot(latency["date"], latency["latency_p99_s"], marker="o", markersize=3, label=str(feed))
    top.axhline(config.min_completeness, color="red", linestyle="--", linewidth=1, label="minimum")
    top.set_ylabel("completeness")
    top.set_title("Bar feed quality per day")
    bottom.axhline(config.late_after_s, color="red", linestyle="--", linewidth=1, label="late threshold")
    bottom.set_ylabel("latency p99 (s)")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


__all__ = ["data_quality_history_png"]
