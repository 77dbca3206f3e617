"""Metadata shown in the Dagster UI for frames and figures."""

import base64

import dagster as dg
import pandas as pd


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


def markdown_table(rows: list[dict[str, object]]) -> dg.MetadataValue:
    return dg.MetadataValue.md(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
