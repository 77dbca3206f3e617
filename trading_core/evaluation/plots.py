"""Figures rendered to PNG bytes (shown in the Dagster UI and logged to MLflow)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

BENCHMARK_STYLE = {"color": "grey", "linestyle": "--", "linewidth": 1.2}


def _date_axis(axis: Axes) -> None:
    """Dates on the x-axis that read without rotation (year once, then months or days)."""
    locator = mdates.AutoDateLocator(maxticks=8)
    axis.xaxis.set_major_locator(locator)
    axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _plot_curves(axis: Axes, curves: dict[str, pd.Series], benchmark: str | None) -> None:
    """Each curve on its own index, a date axis when they are dated (epochs or bar counts stay numbers); the
    ``benchmark`` curve dashed grey so the agent stands out against it."""
    for label, curve in curves.items():
        style = BENCHMARK_STYLE if label == benchmark else {"linewidth": 1.4}
        axis.plot(curve.index, curve.to_numpy(), label=label, **style)
    if curves and all(isinstance(curve.index, pd.DatetimeIndex) for curve in curves.values()):
        _date_axis(axis)
    axis.grid(alpha=0.3)


def equity_curve_figure(
    curves: dict[str, pd.Series],
    title: str,
    ylabel: str = "portfolio value",
    benchmark: str | None = None,
) -> Figure:
    """Line chart of several curves (equity, prices) on one axis, a date axis when each is indexed by date.

    :param benchmark: the label of the curve drawn as the benchmark (dashed grey)
    """
    figure, axis = plt.subplots(figsize=(9, 4.5), dpi=100)
    _plot_curves(axis, curves, benchmark)
    axis.set_title(title)
    axis.set_ylabel(ylabel)
    axis.legend()
    return figure


def equity_curve_png(
    curves: dict[str, pd.Series],
    title: str,
    ylabel: str = "portfolio value",
    benchmark: str | None = None,
) -> bytes:
    """:func:`equity_curve_figure` as PNG bytes."""
    return _png(equity_curve_figure(curves, title, ylabel, benchmark))


def scenario_panels_figure(
    panels: dict[str, dict[str, pd.Series]],
    title: str,
    ylabel: str = "growth of 1",
    benchmark: str | None = None,
    columns: int = 2,
) -> Figure:
    """One panel per scenario, each on its own dates (scenarios span different periods) with its benchmark.

    :param panels: per scenario title, its curves by label, each indexed by date
    """
    rows = max(math.ceil(len(panels) / columns), 1)
    figure, axes = plt.subplots(rows, columns, figsize=(11, 2.8 * rows), dpi=100, squeeze=False)
    for axis, (name, curves) in zip(axes.flat, panels.items(), strict=False):
        _plot_curves(axis, curves, benchmark)
        axis.set_title(name, fontsize=10)
        axis.set_ylabel(ylabel)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 1.0))
    figure.suptitle(title, y=1.03)
    figure.tight_layout()
    return figure


def scenario_panels_png(
    panels: dict[str, dict[str, pd.Series]],
    title: str,
    ylabel: str = "growth of 1",
    benchmark: str | None = None,
) -> bytes:
    """:func:`scenario_panels_figure` as PNG bytes."""
    return _png(scenario_panels_figure(panels, title, ylabel, benchmark))


def _png(figure: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open figure alive)."""
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
