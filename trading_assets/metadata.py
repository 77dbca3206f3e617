"""Metadata shown in the Dagster UI for frames and figures: rounded numbers, escaped tables, plots and links to
the MLflow UI."""

import base64
import math
import os
from collections.abc import Mapping
from urllib.parse import quote, urlencode

import dagster as dg
import pandas as pd

SIGNIFICANT_DIGITS = 4
MLFLOW_UI_URL_ENV = "MLFLOW_UI_URL"
DEFAULT_MLFLOW_UI_URL = "http://127.0.0.1:5000"  # where `make mlflow-ui` serves


def frame_metadata(frame: pd.DataFrame, preview_rows: int = 5) -> dict[str, dg.MetadataValue]:
    """Row count, tickers, date range and a Markdown preview of a long-format frame."""
    metadata: dict[str, dg.MetadataValue] = {
        "rows": dg.MetadataValue.int(len(frame)),
        "columns": dg.MetadataValue.text(", ".join(map(str, frame.columns))),
    }
    if "tic" in frame.columns:
        tickers = sorted(map(str, frame["tic"].dropna().unique()))
        metadata["tickers"] = dg.MetadataValue.text(", ".join(tickers))
        metadata["ticker_count"] = dg.MetadataValue.int(len(tickers))
    if "date" in frame.columns and pd.api.types.is_datetime64_any_dtype(frame["date"]) and len(frame):
        metadata["first_date"] = dg.MetadataValue.text(frame["date"].min().date().isoformat())
        metadata["last_date"] = dg.MetadataValue.text(frame["date"].max().date().isoformat())
        metadata["dates"] = dg.MetadataValue.int(frame["date"].nunique())
    metadata["preview"] = dg.MetadataValue.md(
        frame.head(preview_rows).to_markdown(index=False, floatfmt=".4g")
    )
    return metadata


def png_metadata(png: bytes) -> dg.MetadataValue:
    """An inline PNG rendered by the Dagster UI's Markdown viewer."""
    return dg.MetadataValue.md(f"![plot](data:image/png;base64,{base64.b64encode(png).decode()})")


def markdown_cell(value: object) -> object:
    """A value safe inside a Markdown table cell: a ``|`` would end the cell and a newline the row."""
    if not isinstance(value, str):
        return value
    return value.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(rows: list[dict[str, object]]) -> dg.MetadataValue:
    """Rows as a Markdown table, floats to four significant digits, text cells escaped."""
    frame = pd.DataFrame([{key: markdown_cell(value) for key, value in row.items()} for row in rows])
    return dg.MetadataValue.md(frame.to_markdown(index=False, floatfmt=".4g"))


def rounded(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` to ``digits`` significant digits, never rounding away its integer part (12345.678 reads
    12346.0, 0.9227666 reads 0.9228); NaN, infinities and zero stay as they are."""
    if not math.isfinite(value) or value == 0:
        return value
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return round(value, max(decimals, 0))


def number(value: float) -> dg.MetadataValue:
    """A float metadata value people read: rounded by :func:`rounded`."""
    return dg.MetadataValue.float(rounded(float(value)))


def readable(metadata: Mapping[str, object]) -> dict[str, object]:
    """The metadata with every float, bare or a float metadata value, rounded by :func:`rounded`."""

    def one(value: object) -> object:
        if isinstance(value, dg.FloatMetadataValue) and value.value is not None:
            return number(value.value)
        if isinstance(value, float):
            return rounded(value)
        return value

    return {key: one(value) for key, value in metadata.items()}


def mlflow_ui_url() -> str:
    """The MLflow UI the links point at: ``$MLFLOW_UI_URL``, else the local ``make mlflow-ui``."""
    return os.environ.get(MLFLOW_UI_URL_ENV, DEFAULT_MLFLOW_UI_URL).rstrip("/")


def mlflow_run_link(run_id: str) -> dg.MetadataValue:
    """A link to an MLflow run (the UI finds its experiment)."""
    return dg.MetadataValue.url(f"{mlflow_ui_url()}/#/runs/{quote(run_id)}")


def mlflow_version_link(model_name: str, version: str) -> dg.MetadataValue:
    """A link to a registered model version in the MLflow UI."""
    return dg.MetadataValue.url(
        f"{mlflow_ui_url()}/#/models/{quote(model_name)}/versions/{quote(str(version))}"
    )


def mlflow_plot(run_id: str, artifact: str, title: str) -> dg.MetadataValue:
    """A plot logged to an MLflow run, shown inline in the Dagster UI (short Markdown is not folded behind
    "[Show Markdown]", an embedded PNG always is) while the MLflow UI serves it.

    :param artifact: the file's path among the run's artifacts (e.g. ``evaluation/stress_tests.png``)
    """
    query = urlencode({"path": artifact, "run_uuid": run_id})
    return dg.MetadataValue.md(
        f"![{title} (shown while the MLflow UI runs)]({mlflow_ui_url()}/get-artifact?{query})"
    )
