"""Validation rules for daily bars: a Great Expectations suite plus calendar completeness, unadjusted-split and
outlier rules.

Each rule yields one :class:`RuleOutcome` naming the column and the offending rows (0-based positions in the
data as loaded, plus their date and ticker), so a failure can be traced back to the source file.
:func:`require_valid_bars` runs every rule on a frame read from a file and raises one error naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
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
    "unadjusted_splits": (
        "ERROR",
        "no close-to-close jump by a split ratio whose level (and volume) stays shifted: an unadjusted split",
    ),
    "return_outliers": ("WARN", "daily close-to-close moves within the outlier threshold"),
}

# Share ratios (new shares : old shares) of common forward and reverse splits. An unadjusted split moves the close
# by the inverse: a 2:1 split halves it, a 1:10 reverse split multiplies it by ten. 5:4 and 4:3 are left out: a
# real +25% or -20% day (AMZN 2009-10-23, JPM 2009-01-21) sits on them.
COMMON_SPLIT_RATIOS: tuple[str, ...] = (
    "3:2",
    "2:1",
    "3:1",
    "4:1",
    "5:1",
    "7:1",
    "8:1",
    "10:1",
    "15:1",
    "20:1",
    "1:2",
    "1:3",
    "1:4",
    "1:5",
    "1:8",
    "1:10",
    "1:15",
    "1:20",
    "1:25",
    "1:50",
)
ALLOW_LIST_COLUMNS: tuple[str, ...] = ("tic", "date")


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
    """Raised when bars break a blocking rule; one line per failed rule, each naming the source, column and rows.

    With several failures a first line names them all, so the first line alone says what is wrong.
    """

    def __init__(self, source: str, failures: list[RuleOutcome]):
        self.source = source
        self.failures = failures
        lines = [f"{source}: {f.name}: {f.description}" for f in failures]
        if len(failures) > 1:
            names = ", ".join(f.name for f in failures)
            lines.insert(0, f"{source}: {len(failures)} blocking validation rules failed: {names}")
        super().__init__("\n".join(lines))


class AllowListError(ValueError):
    """An allow-list of real price jumps that cannot be used; the message names the file, column and rows."""


def parse_split_ratio(ratio: str) -> float:
    """The share ratio of a split written ``new:old`` (``"2:1"`` is 2.0, ``"1:10"`` is 0.1).

    :raises ValueError: when ``ratio`` is not two positive numbers that differ, joined by ``:``
    """
    parts = str(ratio).split(":")
    try:
        new, old = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"split ratio {ratio!r} must be NEW:OLD shares, e.g. 2:1 or 1:10") from None
    if not (new > 0 and old > 0 and new != old and np.isfinite(new / old)):
        raise ValueError(f"split ratio {ratio!r} must be two different positive numbers, e.g. 2:1 or 1:10")
    return new / old


def parse_allowed_jump(entry: str) -> tuple[str, pd.Timestamp]:
    """``"AAPL:2000-09-29"`` as ``("AAPL", Timestamp("2000-09-29"))``.

    :raises ValueError: when ``entry`` is not ``TICKER:YYYY-MM-DD``
    """
    tic, _, day = str(entry).rpartition(":")
    try:
        parsed = pd.Timestamp(datetime.strptime(day.strip(), "%Y-%m-%d"))
    except ValueError:
        parsed = None
    if not tic.strip() or parsed is None:
        raise ValueError(f"allowed jump {entry!r} must be TICKER:YYYY-MM-DD, e.g. AAPL:2000-09-29")
    return tic.strip(), parsed


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the validation rules.

    A close-to-close jump is an unadjusted split when its ratio is within ``split_ratio_tolerance`` of the inverse
    of a ratio in ``split_ratios``, the level stays shifted (within ``split_confirm_bars`` bars on either side the
    price neither undoes nor anticipates more than ``split_max_recovery`` of the jump) and, where the bars carry
    volume, the volume around it stays within ``split_volume_tolerance`` of a split's: stepped by the share ratio
    (raw volume) or unchanged (a source that adjusted volume but not prices). A real crash fails the last two: it
    rebounds or keeps sliding, and its volume surges far past the share ratio (AAPL's -52% day of 2000-09-29 traded
    17 times the volume of the days before it).

    :param min_completeness: share of exchange sessions each ticker must have between its first and last bar
    :param outlier_abs_return: absolute daily return above which a bar is reported as an outlier (warning)
    :param calendar: exchange_calendars code of the exchange the bars come from
    :param split_ratios: split share ratios ``NEW:OLD`` the unadjusted-split rule looks for
    :param split_ratio_tolerance: relative distance of a close ratio from a split's price ratio that still matches
    :param split_confirm_bars: bars before and after a jump that must show the level shifted
    :param split_max_recovery: share of a jump the price may undo after it (or reach before it) and still be a split
    :param split_volume_tolerance: factor by which volume may stray from a split's (the share ratio, or 1)
    :param allowed_jumps: real corporate events or crashes a flagged jump may be, as ``TICKER:YYYY-MM-DD``
    :param allowed_jumps_path: CSV file of more of them, with columns ``tic`` and ``date`` (others ignored)
    """

    min_completeness: float = 0.99
    outlier_abs_return: float = 0.25
    calendar: str = "XNYS"
    split_ratios: tuple[str, ...] = COMMON_SPLIT_RATIOS
    split_ratio_tolerance: float = 0.1
    split_confirm_bars: int = 5
    split_max_recovery: float = 0.25
    split_volume_tolerance: float = 2.0
    allowed_jumps: tuple[str, ...] = ()
    allowed_jumps_path: str | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """One line per setting out of range, naming the field, its value and what is expected."""
        import exchange_calendars as xcals

        problems = []

        def expect(ok: bool, name: str, expected: str) -> None:
            if not ok:
                problems.append(f"ValidationConfig.{name}={getattr(self, name)!r}: expected {expected}")

        expect(0 < self.min_completeness <= 1, "min_completeness", "a share in (0, 1]")
        expect(self.outlier_abs_return > 0, "outlier_abs_return", "a return > 0")
        expect(
            self.calendar in xcals.get_calendar_names(include_aliases=True),
            "calendar",
            "an exchange_calendars code such as XNYS",
        )
        expect(0 < self.split_ratio_tolerance < 0.2, "split_ratio_tolerance", "a share in (0, 0.2)")
        expect(self.split_confirm_bars >= 1, "split_confirm_bars", "a whole number >= 1")
        expect(0 < self.split_max_recovery < 1, "split_max_recovery", "a share in (0, 1)")
        expect(self.split_volume_tolerance > 1, "split_volume_tolerance", "a factor > 1")
        for ratio in self.split_ratios:
            try:
                parse_split_ratio(ratio)
            except ValueError as error:
                problems.append(f"ValidationConfig.split_ratios: {error}")
        for entry in self.allowed_jumps:
            try:
                parse_allowed_jump(entry)
            except ValueError as error:
                problems.append(f"ValidationConfig.allowed_jumps: {error}")
        return problems

    def share_ratios(self) -> dict[str, float]:
        """Each split ratio's label and share ratio."""
        return {ratio: parse_split_ratio(ratio) for ratio in self.split_ratios}

    def allowed_jump_keys(self) -> frozenset[tuple[str, pd.Timestamp]]:
        """(ticker, date) of every allowed jump: ``allowed_jumps`` and the rows of ``allowed_jumps_path``.

        :raises AllowListError: when the file is missing, unreadable, lacks a column or has bad rows
        """
        keys = {parse_allowed_jump(entry) for entry in self.allowed_jumps}
        if self.allowed_jumps_path:
            keys |= read_allow_list(self.allowed_jumps_path)
        return frozenset(keys)


def read_allow_list(path: str | Path) -> set[tuple[str, pd.Timestamp]]:
    """(ticker, date) pairs of a CSV allow-list with columns ``tic`` and ``date`` (YYYY-MM-DD).

    :raises AllowListError: naming the file, and the column and rows when the content is bad
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise AllowListError(f"allow-list {path} {what}; expected a CSV file with columns tic, date")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise AllowListError(f"allow-list {path} is not a readable CSV file: {error}") from None
    missing = [c for c in ALLOW_LIST_COLUMNS if c not in table.columns]
    if missing:
        raise AllowListError(
            f"allow-list {path}: missing column(s) {', '.join(missing)}; present: {', '.join(table.columns)}"
        )
    dates = pd.to_datetime(table["date"].str.strip(), errors="coerce", format="%Y-%m-%d")
    tickers = table["tic"].str.strip()
    for column, bad in (("date", dates.isna()), ("tic", tickers == "")):
        if bad.any():
            rows = ", ".join(str(r) for r in np.flatnonzero(bad)[:MAX_ROWS_SHOWN])
            expected = "a date YYYY-MM-DD" if column == "date" else "a ticker"
            raise AllowListError(
                f"allow-list {path}: column {column} needs {expected} in every row; bad row(s) {rows}"
            )
    return set(zip(tickers, dates.dt.normalize(), strict=True))


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
    notes: Mapping[int, str] | None = None,
    passed_note: str = "",
) -> RuleOutcome:
    """The outcome of rule ``name`` failing on ``rows``; ``notes`` adds a word on a row to its label."""
    severity, rule_text = RULES[name]
    rows = sorted({int(r) for r in rows})
    notes = notes or {}
    examples = tuple(
        _row_label(bars, r) + (f" {notes[r]}" if r in notes else "") for r in rows[:MAX_ROWS_SHOWN]
    )
    if rows:
        more = f" and {len(rows) - MAX_ROWS_SHOWN} more" if len(rows) > MAX_ROWS_SHOWN else ""
        description = f"{what}: {len(rows)} row(s) in column {column}: {', '.join(examples)}{more}"
    else:
        description = f"passed: {rule_text}{passed_note}"
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


@dataclass(frozen=True)
class SplitJump:
    """A close-to-close jump that looks like an unadjusted split.

    :param row: position of the jump's bar in the bars as loaded
    :param ratio: the split ratio it matches, ``NEW:OLD``
    :param close_ratio: the bar's close over the previous bar's close
    :param volume_ratio: median volume from the jump on over the median before it; ``None`` without volume
    :param allowed: whether the allow-list names it as a real event
    """

    row: int
    tic: str
    date: pd.Timestamp
    ratio: str
    close_ratio: float
    volume_ratio: float | None
    allowed: bool

    @property
    def label(self) -> str:
        return f"{self.tic} {self.date.date().isoformat()} {self.ratio}"


def _level_shifted(close: np.ndarray, at: int, bars: int, max_recovery: float) -> bool:
    """Whether the level stays where the jump at ``at`` moved it: within ``bars`` bars after it the price undoes at
    most ``max_recovery`` of the jump, and within ``bars`` bars before it had not already gone that far towards
    the new level (a spike reverting). A jump on the last bar has nothing after it to confirm it."""
    jump = np.log(close[at] / close[at - 1])
    undone = np.log(close[at + 1 : at + 1 + bars] / close[at]) / -jump
    reached = np.log(close[max(at - 1 - bars, 0) : at - 1] / close[at - 1]) / jump
    return undone.size > 0 and undone.max() <= max_recovery and reached.max(initial=-np.inf) <= max_recovery


def _volume_shift(
    volume: np.ndarray, at: int, share_ratio: float, bars: int, tolerance: float
) -> tuple[bool, float | None]:
    """Whether volume around the jump at ``at`` is a split's, and the median-volume ratio (``None`` when the bars
    carry no volume, which leaves the price conditions to decide).

    A split multiplies share volume by its share ratio (or leaves it as it was where the source adjusted volume
    only); both the jump's own bar and the median of the bars from it on must stay in that band widened by
    ``tolerance``. A real crash's volume surges far past it.
    """
    before = volume[max(at - bars, 0) : at]
    after = volume[at : at + bars]
    base = np.nanmedian(before) if np.isfinite(before).any() else np.nan
    if not base > 0 or not np.isfinite(after).any():
        return True, None
    on_bar, median_after = volume[at] / base, np.nanmedian(after) / base
    low, high = min(1.0, share_ratio) / tolerance, max(1.0, share_ratio) * tolerance
    in_band = bool(low <= on_bar <= high and low <= median_after <= high)
    return in_band, float(median_after)


def find_split_jumps(
    bars: pd.DataFrame, config: ValidationConfig | None = None, parsed_dates: pd.Series | None = None
) -> list[SplitJump]:
    """Every jump in ``bars`` that looks like an unadjusted split (see :class:`ValidationConfig`), allowed or not.

    :param bars: long-format bars; rows without a parseable date or a positive close are left out
    :param config: thresholds, split ratios and allow-list; defaults to :class:`ValidationConfig`
    :param parsed_dates: ``bars["date"]`` already parsed, to skip parsing it again
    """
    config = config or ValidationConfig()
    bars = bars.reset_index(drop=True)
    dates = parsed_dates if parsed_dates is not None else pd.to_datetime(bars["date"], errors="coerce")
    frame = pd.DataFrame(
        {
            "tic": bars["tic"],
            "date": pd.to_datetime(dates).dt.normalize(),
            "close": pd.to_numeric(bars["close"], errors="coerce"),
            "volume": pd.to_numeric(bars["volume"], errors="coerce") if "volume" in bars else np.nan,
        }
    )
    frame = frame[frame["date"].notna() & (frame["close"] > 0) & np.isfinite(frame["close"])]
    frame = frame.sort_values(["tic", "date"], kind="stable")
    labels = list(config.share_ratios())
    share_ratios = np.array(list(config.share_ratios().values()))
    allowed = config.allowed_jump_keys()
    reach = np.log1p(config.split_ratio_tolerance)
    jumps: list[SplitJump] = []
    for tic, group in frame.groupby("tic", sort=False):
        close, volume = group["close"].to_numpy(float), group["volume"].to_numpy(float)
        if close.size < 2:
            continue
        # Distance of each log close ratio from each split's log price ratio, -log(share ratio).
        distance = np.abs(np.log(close[1:] / close[:-1])[:, None] + np.log(share_ratios)[None, :])
        nearest = distance.argmin(axis=1)
        for i in np.flatnonzero(distance[np.arange(len(nearest)), nearest] <= reach):
            at, match = i + 1, nearest[i]
            if not _level_shifted(close, at, config.split_confirm_bars, config.split_max_recovery):
                continue
            is_split, volume_ratio = _volume_shift(
                volume, at, share_ratios[match], config.split_confirm_bars, config.split_volume_tolerance
            )
            if not is_split:
                continue
            day = pd.Timestamp(group["date"].iloc[at])
            jumps.append(
                SplitJump(
                    row=int(group.index[at]),
                    tic=str(tic),
                    date=day,
                    ratio=labels[match],
                    close_ratio=float(close[at] / close[at - 1]),
                    volume_ratio=volume_ratio,
                    allowed=(str(tic), day) in allowed,
                )
            )
    return jumps


def _check_unadjusted_splits(bars: pd.DataFrame, parsed: pd.Series, config: ValidationConfig) -> RuleOutcome:
    jumps = find_split_jumps(bars, config, parsed)
    flagged = [j for j in jumps if not j.allowed]
    passed = [j for j in jumps if j.allowed]
    notes = {j.row: f"close x{j.close_ratio:.3f} ~ {j.ratio} split" for j in flagged}
    return _outcome(
        "unadjusted_splits",
        bars,
        list(notes),
        "close",
        "close jumps by a split ratio and stays there (an unadjusted split; adjust the data, or allow-list a "
        "real event by ticker and date)",
        details={
            "flagged_jumps": {j.label: round(j.close_ratio, 4) for j in flagged},
            "allowed_jumps": {j.label: round(j.close_ratio, 4) for j in passed},
        },
        notes=notes,
        passed_note=f" ({len(passed)} allowed: {', '.join(j.label for j in passed)})" if passed else "",
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
    outcomes.append(_check_unadjusted_splits(bars, parsed, config))
    outcomes.append(_check_outliers(bars, parsed, config))
    return outcomes


def blocking_failures(outcomes: list[RuleOutcome]) -> list[RuleOutcome]:
    """The outcomes that must stop the pipeline."""
    return [o for o in outcomes if o.blocking]


def require_valid_bars(
    bars: pd.DataFrame, source: str, config: ValidationConfig | None = None
) -> list[RuleOutcome]:
    """Run every rule on bars read from ``source`` (a file name) and return the outcomes, warnings included.

    :raises DataValidationError: when a blocking rule fails; its first line names the source, rules, columns and
        rows
    """
    outcomes = validate_daily_bars(bars, config)
    failures = blocking_failures(outcomes)
    if failures:
        raise DataValidationError(source, failures)
    return outcomes


def to_validated_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Typed, sorted copy of bars that passed validation: ``date`` as timestamps, OHLCV as float."""
    validated = bars.loc[:, list(REQUIRED_COLUMNS)].copy()
    validated["date"] = pd.to_datetime(validated["date"], format="mixed").dt.normalize()
    validated["tic"] = validated["tic"].astype(str)
    for column in OHLCV_COLUMNS:
        validated[column] = validated[column].astype("float64")
    return validated.sort_values(["date", "tic"], ignore_index=True)
