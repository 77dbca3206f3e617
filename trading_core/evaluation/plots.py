"""Figures rendered to PNG bytes (shown in the Dagster UI and logged to MLflow)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def equity_curve_png(curves: dict[str, pd.Series], title: str, ylabel: str = "portfolio value") -> bytes:
    """Line chart of several curves (equity, prices) on one date axis."""
    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    for label, curve in curves.items():
        axis.plot(curve.index, curve.to_numpy(), label=label, linewidth=1.4)
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def grouped_bars_png(table: pd.DataFrame, title: str, ylabel: str) -> bytes:
    """Grouped bar chart: one group per index entry, one bar per column."""
    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    table.plot.bar(ax=axis, rot=0)
    axis.axhline(0.0, color="black", linewidth=0.8)
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3, axis="y")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def learning_curve_png(curves: dict[str, list[tuple[int, float]]], title: str, ylabel: str) -> bytes:
    """Line chart of training curves: ``(timesteps, value)`` points per label."""
    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    for label, points in curves.items():
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, label=label, linewidth=1.4, marker="o", markersize=3)
    axis.set_title(title)
    axis.set_xlabel("timesteps")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def regime_shading_png(
    index: pd.Series, regimes: pd.Series, title: str, ylabel: str = "market index"
) -> bytes:
    """A dated line (a market index) over bands shaded by regime, darker for higher regimes.

    :param index: the line's values by date
    :param regimes: the integer regime of each date (same dates), 0 the calmest
    """
    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    axis.plot(index.index, index.to_numpy(), color="black", linewidth=1.2, label=ylabel)
    labels = regimes.reindex(index.index).to_numpy()
    dates = index.index
    n_regimes = int(regimes.max()) + 1 if len(regimes) else 1
    colours = plt.get_cmap("Reds")([0.15 + 0.7 * k / max(n_regimes - 1, 1) for k in range(n_regimes)])
    start = 0
    for position in range(1, len(labels) + 1):
        if position == len(labels) or labels[position] != labels[start]:
            end = dates[min(position, len(labels) - 1)]
            axis.axvspan(dates[start], end, color=colours[int(labels[start])], alpha=0.5, linewidth=0)
            start = position
    for k in range(n_regimes):
        axis.fill_between([], [], color=colours[k], alpha=0.5, label=f"regime {k}")
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    figure.autofmt_xdate()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
