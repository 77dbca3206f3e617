"""Validation rules for daily bars: a Great Expectations suite plus calendar completeness and outlier rules.

Each rule yields one :class:`RuleOutcome` naming the column and the offending rows (0-based positions in the
data as loaded, plus their date and ticker), so a failure can be traced back to the source file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np
import pandas as pd

from trading_core.data.schema import OHLCV_COLUMNS, PRICE_COLUMNS, REQUIRED_COLUMNS

Severity = Literal["ERROR", "WARN"]
MAX_ROWS_SHOWN = 10

# Validation rule names, in the order they are reported. Every one is blocking except the outlier warning.
RULES: dict[str, tuple[Severity, str]] = {
    "required_columns": ("ERROR", "columns date, tic, open, high, low, close, volume are present"),
    "column_types": ("ERROR", "OHLCV columns are numeric and tic is text"),
    "no_nulls": ("ERROR", "no nulls in date, tic and OHLCV"),
    "positive_prices": ("ERROR", "open, high, low, close > 0"),
    "high_is_max": ("ERROR", "high >= max(open, close)"),
    "low_is_min": ("ERROR", "low <= min(open, close)"),
    "non_negative_volume": ("ERROR", "volume >= 0"),
    "unique_date_tic": ("ERROR", "one row per (date, tic)"),
    "parseable_sorted_dates": ("ERROR", "dates parse and increase within each ticker"),
    "completeness": ("ERROR", "each ticker has >= the minimum share of exchange sessions in its range"),
    "return_outliers": ("WARN", "daily close-to-close moves within the outlier threshold"),
}


@dataclass(frozen=True)
class RuleOutcome:
    """The result of one validation rule."""

    name: str
    passed: bool
    severity: Severity
    description: str
    column: str | None = None
    failing_rows: tuple[int, ...] = ()
    failing_count: int = 0
    examples: tuple[str, ...] = ()
    details: dict[str, object] = field(default_factory=dict)

    @property
    def blocking(self) -> bool:
        return self.severity == "ERROR" and not self.passed


class DataValidationError(ValueError):
    """Raised when bars break a blocking rule; its message names the source, columns and rows."""

    def __init__(self, source: str, failures: list[RuleOutcome]):
        self.source = source
        self.failures = failures
        lines = [f"{source}: {len(failures)} blocking validation rule(s) failed"]
        lines += [f"  - {f.name}: {f.description}" for f in failures]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the validation rules.

    :param min_completeness: share of exchange sessions each ticker must have between its first and last bar
    :param outlier_abs_return: absolute daily return above which a bar is reported as an outlier (warning)
    :param calendar: exchange_calendars code of the exchange the bars come from
    """

    min_completeness: float = 0.99
    outlier_abs_return: float = 0.25
    calendar: str = "XNYS"


def _row_label(bars: pd.DataFrame, row: int) -> str:
    date = bars["date"].iloc[row] if "date" in bars.columns else "?"
    tic = bars["tic"].iloc[row] if "tic" in bars.columns else "?"
    if isinstance(date, pd.Timestamp):
        date = date.date().isoformat()
    return f"row {row} ({date} {tic})"


def _outcome(
    name: str,
    bars: pd.DataFrame,
    rows: Iterable[int],
    column: str | None,
    what: str,
    details: dict[str, object] | None = None,
) -> RuleOutcome:
    severity, rule_text = RULES[name]
    rows = sorted({int(r) for r in rows})
    examples = tuple(_row_label(bars, r) for r in rows[:MAX_ROWS_SHOWN])
    if rows:
        more = f" and {len(rows) - MAX_ROWS_SHOWN} more" if len(rows) > MAX_ROWS_SHOWN else ""
        description = f"{what}: {len(rows)} row(s) in column {column}: {', '.join(examples)}{more}"
    else:
        description = f"passed: {rule_text}"
    return RuleOutcome(
        name=name,
        passed=not rows,
        severity=severity,
        description=description,
        column=column,
        failing_rows=tuple(rows),
        failing_count=len(rows),
        examples=examples,
        details=details or {},
    )


def _skipped(name: str, reason: str) -> RuleOutcome:
    severity, _ = RULES[name]
    return RuleOutcome(name=name, passed=False, severity=severity, description=f"not evaluated: {reason}")


@lru_cache(maxsize=1)
def _gx_batch_definition():
    """An ephemeral Great Expectations context with one whole-dataframe batch definition."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    source = context.data_sources.add_pandas("market_data")
    asset = source.add_dataframe_asset("daily_bars")
    return context, asset.add_batch_definition_whole_dataframe("all_rows")


def build_expectation_suite():
    """The Great Expectations suite of row-level rules, each tagged with the rule name it reports under."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations: list[tuple[str, object]] = []
    for column in ("tic", *OHLCV_COLUMNS):
        expectations.append(("column_types", _type_expectation(gxe, column)))
    for column in REQUIRED_COLUMNS:
        expectations.append(("no_nulls", gxe.ExpectColumnValuesToNotBeNull(column=column)))
    for column in PRICE_COLUMNS:
        expectations.append(
            (
                "positive_prices",
                gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0, strict_min=True),
            )
        )
    for other in ("open", "close"):
        expectations.append(
            (
                "high_is_max",
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A="high", column_B=other, or_equal=True, ignore_row_if="either_value_is_missing"
                ),
            )
        )
        expectations.append(
            (
                "low_is_min",
                gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                    column_A=other, column_B="low", or_equal=True, ignore_row_if="either_value_is_missing"
                ),
            )
        )
    expectations.append(
        ("non_negative_volume", gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0))
    )
    expectations.append(("unique_date_tic", gxe.ExpectCompoundColumnsToBeUnique(column_list=["date", "tic"])))

    suite = gx.ExpectationSuite(name="daily_bars")
    for rule, expectation in expectations:
        expectation.meta = {"rule": rule}
        suite.add_expectation(expectation)
    return suite


def _type_expectation(gxe, column: str):
    if column == "tic":
        return gxe.ExpectColumnValuesToBeInTypeList(
            column=column, type_list=["object", "str", "string", "StringDtype"]
        )
    return gxe.ExpectColumnValuesToBeInTypeList(
        column=column,
        type_list=["float64", "float32", "int64", "int32", "Float64", "Int64", "uint64", "uint32"],
    )


def _run_expectation_suite(bars: pd.DataFrame) -> list[RuleOutcome]:
    context, batch_definition = _gx_batch_definition()
    batch = batch_definition.get_batch(batch_parameters={"dataframe": bars})
    result = batch.validate(build_expectation_suite(), result_format={"result_format": "COMPLETE"})

    rows_by_rule: dict[str, set[int]] = {rule: set() for rule in RULES}
    columns_by_rule: dict[str, list[str]] = {rule: [] for rule in RULES}
    errors_by_rule: dict[str, list[str]] = {rule: [] for rule in RULES}
    for item in result.results:
        config = item.expectation_config
        rule = config.meta["rule"]
        kwargs = config.kwargs
        column = (
            kwargs.get("column")
            or "/".join(str(v) for v in (kwargs.get("column_A"), kwargs.get("column_B")) if v)
            or ",".join(kwargs.get("column_list", []))
        )
        if item.exception_info and item.exception_info.get("raised_exception"):
            errors_by_rule[rule].append(f"{column}: {item.exception_info.get('exception_message')}")
            continue
        if item.success:
            continue
        if config.type == "expect_column_values_to_be_in_type_list":
            observed = item.result.get("observed_value")
            errors_by_rule[rule].append(f"column {column} has type {observed}")
            continue
        rows_by_rule[rule].update(int(i) for i in item.result.get("unexpected_index_list") or [])
        columns_by_rule[rule].append(column)

    outcomes = []
    for rule, what in (
        ("column_types", "wrong type"),
        ("no_nulls", "null values"),
        ("positive_prices", "price <= 0"),
        ("high_is_max", "high below open or close"),
        ("low_is_min", "low above open or close"),
        ("non_negative_volume", "negative volume"),
        ("unique_date_tic", "duplicate (date, tic)"),
    ):
        if errors_by_rule[rule]:
            severity, _ = RULES[rule]
            outcomes.append(RuleOutcome(rule, False, severity, f"{what}: " + "; ".join(errors_by_rule[rule])))
            continue
        column = ", ".join(dict.fromkeys(columns_by_rule[rule])) or None
        outcomes.append(_outcome(rule, bars, rows_by_rule[rule], column, what))
    return outcomes


def _check_dates(bars: pd.DataFrame) -> tuple[RuleOutcome, pd.Series]:
    parsed = (
        pd.to_datetime(bars["date"], errors="coerce", format="mixed")
        if bars["date"].dtype == object
        else (pd.to_datetime(bars["date"], errors="coerce"))
    )
    bad = set(np.flatnonzero(parsed.isna() & bars["date"].notna()))
    # Within each ticker the dates must increase in the order they were delivered.
    ordered = pd.DataFrame({"tic": bars["tic"], "date": parsed}).dropna()
    previous = ordered.groupby("tic")["date"].shift()
    bad |= set(ordered.index[(ordered["date"] <= previous).to_numpy()])
    return _outcome("parseable_sorted_dates", bars, bad, "date", "unparseable or out-of-order dates"), parsed


def _check_completeness(bars: pd.DataFrame, parsed: pd.Series, config: ValidationConfig) -> RuleOutcome:
    import exchange_calendars as xcals

    frame = pd.DataFrame({"tic": bars["tic"], "date": parsed.dt.normalize()}).dropna()
    if frame.empty:
        return _skipped("completeness", "no parseable dates")
    calendar = xcals.get_calendar(config.calendar, start=frame["date"].min(), end=frame["date"].max())
    per_ticker: dict[str, float] = {}
    incomplete: list[str] = []
    for tic, dates in frame.groupby("tic")["date"]:
        sessions = calendar.sessions_in_range(dates.min(), dates.max())
        expected = len(sessions)
        present = int(pd.DatetimeIndex(dates.unique()).isin(sessions.tz_localize(None)).sum())
        share = present / expected if expected else 1.0
        per_ticker[str(tic)] = round(share, 5)
        if share < config.min_completeness:
            missing = sessions.tz_localize(None).difference(pd.DatetimeIndex(dates.unique()))
            incomplete.append(
                f"{tic} has {present}/{expected} sessions ({share:.2%}), first missing "
                + ", ".join(d.date().isoformat() for d in missing[:5])
            )
    severity, rule_text = RULES["completeness"]
    if incomplete:
        description = (
            f"completeness below {config.min_completeness:.0%} of {config.calendar} sessions in column date: "
            + "; ".join(incomplete)
        )
    else:
        description = (
            f"passed: {rule_text} ({config.min_completeness:.0%}, min {min(per_ticker.values()):.2%})"
        )
    return RuleOutcome(
        "completeness",
        passed=not incomplete,
        severity=severity,
        description=description,
        column="date",
        failing_count=len(incomplete),
        details={"completeness_by_ticker": per_ticker},
    )


def _check_outliers(bars: pd.DataFrame, parsed: pd.Series, config: ValidationConfig) -> RuleOutcome:
    frame = pd.DataFrame(
        {"tic": bars["tic"], "date": parsed, "close": pd.to_numeric(bars["close"], errors="coerce")}
    )
    frame = frame.dropna().sort_values(["tic", "date"])
    returns = frame.groupby("tic")["close"].pct_change()
    rows = returns.index[(returns.abs() > config.outlier_abs_return).to_numpy()]
    return _outcome(
        "return_outliers",
        bars,
        rows,
        "close",
        f"|daily return| > {config.outlier_abs_return:.0%}",
        details={"max_abs_return": float(returns.abs().max()) if returns.notna().any() else 0.0},
    )


def validate_daily_bars(bars: pd.DataFrame, config: ValidationConfig | None = None) -> list[RuleOutcome]:
    """Run every rule of :data:`RULES` on long-format bars and return one outcome per rule, in order.

    :param bars: bars as loaded from a source (a fresh ``RangeIndex`` is applied; rows are positions)
    :param config: thresholds; defaults to :class:`ValidationConfig`
    """
    config = config or ValidationConfig()
    bars = bars.reset_index(drop=True)
    missing = [c for c in REQUIRED_COLUMNS if c not in bars.columns]
    if missing:
        outcomes = [
            RuleOutcome(
                "required_columns",
                passed=False,
                severity="ERROR",
                description=f"missing column(s) {', '.join(missing)}; present: {', '.join(map(str, bars.columns))}",
                column=", ".join(missing),
            )
        ]
        return outcomes + [_skipped(name, "required columns are missing") for name in list(RULES)[1:]]
    outcomes = [_outcome("required_columns", bars, [], None, "")]
    outcomes += _run_expectation_suite(bars)
    dates_outcome, parsed = _check_dates(bars)
    outcomes.append(dates_outcome)
    outcomes.append(_check_completeness(bars, parsed, config))
    outcomes.append(_check_outliers(bars, parsed, config))
    return outcomes


def blocking_failures(outcomes: list[RuleOutcome]) -> list[RuleOutcome]:
    """The outcomes that must stop the pipeline."""
    return [o for o in outcomes if o.blocking]


def to_validated_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Typed, sorted copy of bars that passed validation: ``date`` as timestamps, OHLCV as float."""
    validated = bars.loc[:, list(REQUIRED_COLUMNS)].copy()
    validated["date"] = pd.to_datetime(validated["date"], format="mixed").dt.normalize()
    validated["tic"] = validated["tic"].astype(str)
    for column in OHLCV_COLUMNS:
        validated[column] = validated[column].astype("float64")
    return validated.sort_values(["date", "tic"], ignore_index=True)
