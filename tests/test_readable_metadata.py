"""Metadata people read: rounded numbers, escaped tables, dated plots with their benchmark, links to MLflow, and a
run summary that reports a rejection as a verdict."""

from __future__ import annotations

import dagster as dg
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from pipelines import run_pipeline
from tests.test_pipeline_cli import HOME, FakeResult, check, evaluated_outputs
from trading_assets.metadata import (
    DEFAULT_MLFLOW_UI_URL,
    MLFLOW_UI_URL_ENV,
    markdown_table,
    mlflow_plot,
    mlflow_run_link,
    mlflow_version_link,
    number,
    readable,
    rounded,
)
from trading_core.evaluation.plots import BENCHMARK_STYLE, equity_curve_figure, scenario_panels_figure

BENCHMARK = "equal-weight buy and hold"


def test_floats_read_to_four_significant_digits_without_losing_the_integer_part():
    assert rounded(0.9227666389797625) == 0.9228
    assert rounded(-0.000123456) == -0.0001235
    assert rounded(12345.678) == 12346.0
    assert rounded(0.0) == 0.0 and np.isnan(rounded(float("nan"))) and rounded(float("inf")) == float("inf")
    assert number(0.9227666389797625).value == 0.9228


def test_readable_rounds_bare_and_float_metadata_and_leaves_the_rest():
    metadata = readable(
        {
            "sharpe": 0.9227666389797625,
            "drawdown": dg.MetadataValue.float(0.123456789),
            "trades": 17,
            "model": "rl_trading_agent v3",
            "note": dg.MetadataValue.text("0.9227666389797625"),
        }
    )
    assert metadata["sharpe"] == 0.9228
    assert metadata["drawdown"] == dg.MetadataValue.float(0.1235)
    assert metadata["trades"] == 17 and metadata["model"] == "rl_trading_agent v3"
    assert metadata["note"].value == "0.9227666389797625"  # text is text


def test_a_pipe_in_a_rule_text_does_not_break_the_table():
    # The outlier rule's text (trading_core/data/validation.py) holds the absolute value bars.
    rows = [
        {"rule": "no_outlier_returns", "passed": True, "result": "0 rows with |daily return| > 50%"},
        {"rule": "two\nlines", "passed": False, "result": "plain"},
    ]
    lines = markdown_table(rows).value.splitlines()
    assert len(lines) == 4  # header, rule, one line per row: the newline did not start a row
    assert "0 rows with \\|daily return\\| > 50%" in lines[2]
    unescaped = [line.replace("\\|", "") for line in lines]
    assert {line.count("|") for line in unescaped} == {4}  # three columns on every line


def test_markdown_tables_round_their_floats():
    table = markdown_table([{"metric": "sharpe", "agent": 0.9227666389797625}]).value
    assert "0.9228" in table and "0.92276" not in table


def test_links_point_at_the_mlflow_ui_from_the_environment(monkeypatch):
    monkeypatch.delenv(MLFLOW_UI_URL_ENV, raising=False)
    assert mlflow_run_link("abc123").value == f"{DEFAULT_MLFLOW_UI_URL}/#/runs/abc123"
    assert (
        mlflow_version_link("rl_trading_agent", "3").value
        == f"{DEFAULT_MLFLOW_UI_URL}/#/models/rl_trading_agent/versions/3"
    )
    monkeypatch.setenv(MLFLOW_UI_URL_ENV, "https://mlflow.example.org/")
    assert mlflow_run_link("abc123").value == "https://mlflow.example.org/#/runs/abc123"
    plot = mlflow_plot("abc123", "evaluation/stress_tests.png", "stress scenarios").value
    assert plot.startswith("![stress scenarios")
    assert (
        "https://mlflow.example.org/get-artifact?path=evaluation%2Fstress_tests.png&run_uuid=abc123" in plot
    )
    assert len(plot) < 1000  # the Dagster UI shows Markdown this short inline, not behind "[Show Markdown]"


def _curve(start: str, drift: float, n: int = 60) -> pd.Series:
    dates = pd.bdate_range(start, periods=n)
    return pd.Series(100_000 * np.exp(drift * np.arange(n)), index=dates)


def _is_date_axis(axis) -> bool:
    return isinstance(axis.xaxis.get_major_formatter(), mdates.ConciseDateFormatter)


def _line(axis, label: str):
    return next(line for line in axis.get_lines() if line.get_label() == label)


def test_the_equity_plot_has_dates_on_x_and_a_dashed_benchmark():
    agent, benchmark = _curve("2020-01-02", 0.001), _curve("2020-01-02", 0.0005)
    figure = equity_curve_figure({"agent": agent, BENCHMARK: benchmark}, "test", benchmark=BENCHMARK)
    try:
        (axis,) = figure.axes
        assert _is_date_axis(axis)
        line = _line(axis, BENCHMARK)
        assert line.get_linestyle() == BENCHMARK_STYLE["linestyle"]
        np.testing.assert_array_equal(pd.to_datetime(line.get_xdata()), benchmark.index)
        assert _line(axis, "agent").get_linestyle() == "-"
    finally:
        plt.close(figure)


def test_an_undated_curve_keeps_a_numeric_axis():
    epochs = pd.Series([1.0, 0.8, 0.7], index=[1, 2, 3])
    figure = equity_curve_figure({"train": epochs}, "loss", "loss")
    try:
        assert not _is_date_axis(figure.axes[0])
    finally:
        plt.close(figure)


def test_each_stress_panel_is_dated_on_its_own_period_with_the_benchmark():
    panels = {
        "covid crash": {"agent": _curve("2020-02-20", -0.002), BENCHMARK: _curve("2020-02-20", -0.003)},
        "gap shock": {"agent": _curve("2023-06-01", 0.001), BENCHMARK: _curve("2023-06-01", 0.0)},
        "vol shock": {"agent": _curve("2023-06-01", 0.0), BENCHMARK: _curve("2023-06-01", 0.0)},
    }
    figure = scenario_panels_figure(panels, "stress", benchmark=BENCHMARK)
    try:
        visible = [axis for axis in figure.axes if axis.get_visible()]
        assert [axis.get_title() for axis in visible] == list(panels)
        for axis, curves in zip(visible, panels.values(), strict=True):
            assert _is_date_axis(axis)
            dates = pd.to_datetime(_line(axis, BENCHMARK).get_xdata())
            np.testing.assert_array_equal(dates, curves[BENCHMARK].index)
    finally:
        plt.close(figure)


def _not_promoted(version: str, champion: str | None, reasons: list[str]) -> dict:
    return {
        "model_name": "rl_trading_agent",
        "version": version,
        "promoted": False,
        "verdict": "not promoted",
        "reasons": reasons,
        "champion": champion,
        "previous": None,
        "dagster_run_id": "run-3",
    }


def test_the_summary_reports_a_rejection_as_a_verdict_with_its_reasons():
    reason = "backtest min_sharpe: Sharpe 0.35 vs required >= 1.00"
    outputs = {**evaluated_outputs("3", passed=False), "champion_model": _not_promoted("3", "2", [reason])}
    result = FakeResult(outputs, checks=[check("backtest", "min_sharpe", False)])
    text, ok = run_pipeline.summarize(result, HOME, "sqlite:///synthetic.db")
    lines = text.splitlines()
    assert ok  # the run completed: a rejection is the gate working
    assert (
        "Verdict     : NOT PROMOTED — version 3 keeps alias 'challenger' only; 'champion' is unchanged"
        in lines
    )
    assert f"  because {reason}" in lines
    assert "  'champion' stays with version 2" in lines
    assert "Traceback" not in text and not any(line.startswith("FAILED steps") for line in lines)
    model_line = next(line for line in lines if line.startswith("Model       :"))
    assert model_line.endswith("aliases: challenger")  # not champion


@pytest.mark.parametrize("champion", [None, "1"])
def test_the_summary_names_who_holds_champion_after_a_rejection(champion):
    outputs = {**evaluated_outputs("3", passed=False), "champion_model": _not_promoted("3", champion, ["x"])}
    text, _ = run_pipeline.summarize(FakeResult(outputs), HOME, "sqlite:///synthetic.db")
    holder = f"version {champion}" if champion else "no version"
    assert f"  'champion' stays with {holder}" in text.splitlines()
