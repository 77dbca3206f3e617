"""Validation rules for intraday bars, per exchange session and ticker, and the whole-session split of them.

Intraday bars follow :func:`trading_core.live.sources.read_bars`: ``timestamp`` is the UTC bar END, then ``tic``,
``open``, ``high``, ``low``, ``close``, ``volume``. A session's expected bars come from the exchange calendar
(``exchange_calendars``): an early close (2018-11-23, 2019-07-03 close at 13:00) expects fewer. The bar length is
inferred from the bars (1, 5 or 15 minutes) unless the config names it.

The row rules (types, nulls, prices, OHLC consistency, volume, duplicates, order, outliers) are the daily suite's
(:mod:`trading_core.data.validation`, Great Expectations) run with the bar end as the date; the session rules
(bars outside the session or off its grid, gaps, halts, zero-volume bars, completeness) are this module's. Each
rule yields one :class:`~trading_core.data.validation.RuleOutcome` naming the column, the rows (0-based positions
in the bars as given) and, for missing bars, the ticker and the bar ends.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from trading_core.data.calendar import EXCHANGE_TIMEZONE, infer_bar_length
from trading_core.data.schema import OHLCV_COLUMNS
from trading_core.data.splits import DateSplit
from trading_core.data.validation import (
    MAX_ROWS_SHOWN,
    DataValidationError,
    RuleOutcome,
    Severity,
    ValidationConfig,
    _check_dates,
    _check_outliers,
    _run_expectation_suite,
    blocking_failures,
)

INTRADAY_COLUMNS: tuple[str, ...] = ("timestamp", "tic", *OHLCV_COLUMNS)

# Rule names in the order they are reported; the first nine are the daily suite's row rules under intraday names.
INTRADAY_RULES: dict[str, tuple[Severity, str]] = {
    "required_columns": ("ERROR", "columns timestamp, tic, open, high, low, close, volume are present"),
    "column_types": ("ERROR", "OHLCV columns are numeric and tic is text"),
    "no_nulls": ("ERROR", "no nulls in timestamp, tic and OHLCV"),
    "positive_prices": ("ERROR", "open, high, low, close > 0"),
    "high_is_max": ("ERROR", "high >= max(open, close)"),
    "low_is_min": ("ERROR", "low <= min(open, close)"),
    "non_negative_volume": ("ERROR", "volume >= 0"),
    "duplicate_timestamps": ("ERROR", "one bar per (timestamp, tic)"),
    "sorted_timestamps": ("ERROR", "timestamps parse and increase within each ticker"),
    "outside_session": (
        "ERROR",
        "every bar ends inside an exchange session (early closes included) on the session's bar grid",
    ),
    "session_completeness": (
        "ERROR",
        "each session has at least the minimum share of its expected bars (tickers trading that day)",
    ),
    "session_gaps": ("WARN", "no bar missing inside a ticker's session"),
    "halts": ("WARN", "no run of missing or flat zero-volume bars as long as a halt"),
    "zero_volume": ("WARN", "every bar traded some volume"),
    "bar_outliers": ("WARN", "bar-to-bar close moves within the outlier threshold"),
}
# The daily suite's rules this module reuses, by their intraday names.
_DAILY_NAMES = {
    "required_columns": "required_columns",
    "column_types": "column_types",
    "no_nulls": "no_nulls",
    "positive_prices": "positive_prices",
    "high_is_max": "high_is_max",
    "low_is_min": "low_is_min",
    "non_negative_volume": "non_negative_volume",
    "unique_date_tic": "duplicate_timestamps",
    "parseable_sorted_dates": "sorted_timestamps",
    "return_outliers": "bar_outliers",
}


@dataclass(frozen=True)
class IntradayValidationConfig:
    """Thresholds of the intraday rules.

    :param min_session_completeness: share of a session's expected bars (of the tickers with bars that day) that
        must be present; below it the session is blocked. Illiquid tickers miss minutes without trades, so the
        share is over the universe: the shared 1-minute file's lowest session holds 91.6%.
    :param halt_bars: consecutive missing or flat zero-volume bars that read as a halt (a warning)
    :param outlier_abs_return: absolute bar-to-bar close move reported as an outlier (a warning)
    :param bar_minutes: the bar length in minutes; ``None`` infers it from the bars
    :param calendar: exchange_calendars code of the exchange
    """

    min_session_completeness: float = 0.9
    halt_bars: int = 30
    outlier_abs_return: float = 0.1
    bar_minutes: int | None = None
    calendar: str = "XNYS"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """One line per setting out of range, naming the field, its value and what is expected."""
        import exchange_calendars as xcals

        checks = (
            (0 < self.min_session_completeness <= 1, "min_session_completeness", "a share in (0, 1]"),
            (self.halt_bars >= 2, "halt_bars", "a whole number of bars >= 2"),
            (self.outlier_abs_return > 0, "outlier_abs_return", "a return > 0"),
            (self.bar_minutes is None or self.bar_minutes >= 1, "bar_minutes", "None or minutes >= 1"),
            (
                self.calendar in xcals.get_calendar_names(include_aliases=True),
                "calendar",
                "an exchange_calendars code such as XNYS",
            ),
        )
        return [
            f"IntradayValidationConfig.{name}={getattr(self, name)!r}: expected {expected}"
            for ok, name, expected in checks
            if not ok
        ]


def _local_ends(timestamps: pd.Series) -> pd.Series:
    """Bar ends in exchange time, tz-naive (NaT where unparseable)."""
    parsed = pd.to_datetime(timestamps, errors="coerce", utc=True)
    return parsed.dt.tz_convert(EXCHANGE_TIMEZONE).dt.tz_localize(None)


def session_days(bars: pd.DataFrame) -> list[str]:
    """The exchange dates (``YYYY-MM-DD``) the bars' ends fall on, sorted: the sessions a source holds.

    :param bars: intraday bars with a ``timestamp`` column (UTC bar end)
    """
    days = _local_ends(bars["timestamp"]).dropna().dt.normalize().unique()
    return [pd.Timestamp(d).date().isoformat() for d in np.sort(days)]


def _row_label(tic: object, end: pd.Timestamp, row: int) -> str:
    when = end.strftime("%Y-%m-%d %H:%M") if pd.notna(end) else "?"
    return f"row {row} ({when} {tic})"


def _rows_outcome(
    name: str, bars: pd.DataFrame, ends: pd.Series, rows: np.ndarray, column: str, what: str
) -> RuleOutcome:
    """Rule ``name`` failing on ``rows`` (positions), each labelled with its exchange-time bar end and ticker."""
    severity, text = INTRADAY_RULES[name]
    rows = np.unique(rows.astype(np.int64))
    examples = tuple(_row_label(bars["tic"].iloc[r], ends.iloc[r], int(r)) for r in rows[:MAX_ROWS_SHOWN])
    if not len(rows):
        return RuleOutcome(name, True, severity, f"passed: {text}", column=column)
    more = f" and {len(rows) - MAX_ROWS_SHOWN} more" if len(rows) > MAX_ROWS_SHOWN else ""
    return RuleOutcome(
        name,
        False,
        severity,
        f"{what}: {len(rows)} row(s) in column {column}: {', '.join(examples)}{more}",
        column=column,
        failing_rows=tuple(int(r) for r in rows),
        failing_count=len(rows),
        examples=examples,
    )


def _cells_outcome(
    name: str, findings: list[str], count: int, what: str, details: dict[str, object]
) -> RuleOutcome:
    """Rule ``name`` on bars that are missing (no rows to name): ``findings`` name ticker, day and bar ends."""
    severity, text = INTRADAY_RULES[name]
    if not findings:
        return RuleOutcome(name, True, severity, f"passed: {text}", column="timestamp", details=details)
    more = f" and {len(findings) - MAX_ROWS_SHOWN} more" if len(findings) > MAX_ROWS_SHOWN else ""
    return RuleOutcome(
        name,
        False,
        severity,
        f"{what} in column timestamp: {'; '.join(findings[:MAX_ROWS_SHOWN])}{more}",
        column="timestamp",
        failing_count=count,
        examples=tuple(findings[:MAX_ROWS_SHOWN]),
        details=details,
    )


def _skipped(name: str, reason: str) -> RuleOutcome:
    severity, _ = INTRADAY_RULES[name]
    return RuleOutcome(name, False, severity, f"not evaluated: {reason}")


def _daily_suite(bars: pd.DataFrame, ends: pd.Series, config: IntradayValidationConfig) -> list[RuleOutcome]:
    """The daily row rules on the bars, the bar end (exchange time, minutes shown) standing in for the date."""
    frame = bars.loc[:, ["tic", *OHLCV_COLUMNS]].copy()
    frame.insert(0, "date", ends.dt.strftime("%Y-%m-%d %H:%M").where(ends.notna(), None))
    outcomes = _run_expectation_suite(frame)
    dates_outcome, parsed = _check_dates(frame)
    outliers = _check_outliers(frame, parsed, ValidationConfig(outlier_abs_return=config.outlier_abs_return))
    renamed = []
    for outcome in [*outcomes, dates_outcome, outliers]:
        name = _DAILY_NAMES[outcome.name]
        _, text = INTRADAY_RULES[name]
        description = (
            f"passed: {text}"
            if outcome.passed
            else outcome.description.replace("(date, tic)", "(timestamp, tic)")
            .replace("column date", "column timestamp")
            .replace("daily return", "bar return")
        )
        column = outcome.column.replace("date", "timestamp") if outcome.column else outcome.column
        renamed.append(replace(outcome, name=name, description=description, column=column))
    return renamed


@dataclass(frozen=True)
class _Grid:
    """Where each bar sits in its session: session index, bar index, and the sessions' expected bar counts."""

    days: pd.DatetimeIndex
    opens: np.ndarray
    lengths: np.ndarray
    session: np.ndarray
    bar: np.ndarray
    on_grid: np.ndarray


def _grid(ends: pd.Series, bar_length: pd.Timedelta, calendar_name: str) -> _Grid:
    import exchange_calendars as xcals

    valid = ends.notna().to_numpy()
    local_day = ends.dt.normalize()
    calendar = xcals.get_calendar(calendar_name)
    days = pd.DatetimeIndex(np.sort(local_day.dropna().unique()))
    in_range = (days >= calendar.first_session) & (days <= calendar.last_session)
    sessions = days[in_range][[calendar.is_session(d) for d in days[in_range]]]
    schedule = calendar.schedule.loc[sessions]
    opens = pd.DatetimeIndex(schedule["open"]).tz_convert(EXCHANGE_TIMEZONE).tz_localize(None).to_numpy()
    closes = pd.DatetimeIndex(schedule["close"]).tz_convert(EXCHANGE_TIMEZONE).tz_localize(None).to_numpy()
    step = bar_length.to_timedelta64()
    lengths = ((closes - opens) // step).astype(np.int64)
    session = sessions.get_indexer(local_day)
    known = valid & (session >= 0)
    offset = np.full(len(ends), np.nan)
    offset[known] = (ends.to_numpy()[known] - opens[session[known]]) / step
    bar = np.where(known, np.rint(np.nan_to_num(offset)).astype(np.int64) - 1, -1)
    limit = np.where(known, lengths[np.maximum(session, 0)], 0)
    on_grid = known & (bar >= 0) & (bar < limit) & np.isclose(np.nan_to_num(offset), bar + 1)
    return _Grid(sessions, opens, lengths, session, bar, on_grid)


def infer_bar_minutes(ends: pd.Series) -> pd.Timedelta:
    """The bars' length (:func:`~trading_core.data.calendar.infer_bar_length`) of bar ends in exchange time.

    :param ends: bar ends in exchange time (tz-naive)
    :raises ValueError: when no session holds two bars
    """
    return infer_bar_length(ends.dropna().dt.tz_localize(EXCHANGE_TIMEZONE))


def _session_rules(
    bars: pd.DataFrame, ends: pd.Series, bar_length: pd.Timedelta, config: IntradayValidationConfig
) -> list[RuleOutcome]:
    """Outside-session bars, completeness, gaps, halts and zero-volume bars on the session grid."""
    grid = _grid(ends, bar_length, config.calendar)
    minutes = int(bar_length / pd.Timedelta(minutes=1))
    outside = np.flatnonzero(ends.notna().to_numpy() & ~grid.on_grid)
    outcomes = [
        _rows_outcome(
            "outside_session",
            bars,
            ends,
            outside,
            "timestamp",
            f"bar ends outside {config.calendar} sessions or off their {minutes}-minute grid",
        )
    ]
    volume = pd.to_numeric(bars["volume"], errors="coerce").to_numpy(dtype=float)
    prices = {
        c: pd.to_numeric(bars[c], errors="coerce").to_numpy(dtype=float) for c in ("open", "high", "low")
    }
    close = pd.to_numeric(bars["close"], errors="coerce").to_numpy(dtype=float)
    flat = (volume == 0) & (prices["high"] == prices["low"]) & (prices["open"] == close)
    zero = np.flatnonzero(volume == 0)
    tickers = pd.Index(pd.unique(bars["tic"].astype(str)))
    column = tickers.get_indexer(bars["tic"].astype(str))
    n_bars = int(grid.lengths.max()) if len(grid.lengths) else 0
    shape = (len(grid.days), n_bars, len(tickers))
    present = np.zeros(shape, dtype=bool)
    halted = np.zeros(shape, dtype=bool)
    on = grid.on_grid
    present[grid.session[on], grid.bar[on], column[on]] = True
    halted[grid.session[on], grid.bar[on], column[on]] = flat[on]
    expected = np.arange(n_bars)[None, :] < grid.lengths[:, None]  # [S, M]
    trading = present.any(axis=1)  # [S, N] the tickers with bars that day
    cells = expected[:, :, None] & trading[:, None, :]
    share_by_day = present.sum(axis=(1, 2)) / np.maximum(cells.sum(axis=(1, 2)), 1)
    incomplete = [
        f"{day.date()} has {share:.1%} of {int(cells[s].sum())} expected bars "
        f"({int(grid.lengths[s])} per ticker x {int(trading[s].sum())} tickers)"
        for s, (day, share) in enumerate(zip(grid.days, share_by_day, strict=True))
        if share < config.min_session_completeness
    ]
    completeness = {
        day.date().isoformat(): round(float(v), 5) for day, v in zip(grid.days, share_by_day, strict=True)
    }
    outcomes.append(
        _cells_outcome(
            "session_completeness",
            incomplete,
            len(incomplete),
            f"sessions below {config.min_session_completeness:.0%} of their expected bars",
            {"completeness_by_session": completeness},
        )
    )
    outcomes += _missing_runs(grid, present, halted, cells, tickers, bar_length, config)
    outcomes.append(_rows_outcome("zero_volume", bars, ends, zero, "volume", "bars with zero volume"))
    return outcomes


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _span(grid: _Grid, session: int, tic: str, start: int, length: int, step: np.timedelta64) -> str:
    """A run of ``length`` bars from grid bar ``start`` of a session: ticker, day and the bar ends it covers."""
    first = pd.Timestamp(grid.opens[session] + (start + 1) * step).strftime("%H:%M")
    last = pd.Timestamp(grid.opens[session] + (start + length) * step).strftime("%H:%M")
    return f"{tic} {grid.days[session].date()} bars ending {first}..{last} ({length})"


def _missing_runs(
    grid: _Grid,
    present: np.ndarray,
    halted: np.ndarray,
    cells: np.ndarray,
    tickers: pd.Index,
    bar_length: pd.Timedelta,
    config: IntradayValidationConfig,
) -> list[RuleOutcome]:
    """Gaps (missing bars inside a ticker's session) and halts (long runs of missing or flat zero-volume bars)."""
    gaps, halts = [], []
    missing_bars = halted_bars = 0
    step = bar_length.to_timedelta64()
    for s, n in zip(*np.nonzero(cells.any(axis=1)), strict=True):
        expected = cells[s, :, n]
        missing = expected & ~present[s, :, n]
        still = expected & (~present[s, :, n] | halted[s, :, n])

        for start, length in _runs(missing):
            missing_bars += length
            gaps.append(_span(grid, s, str(tickers[n]), start, length, step))
        for start, length in _runs(still):
            if length >= config.halt_bars:
                halted_bars += length
                halts.append(_span(grid, s, str(tickers[n]), start, length, step))
    return [
        _cells_outcome("session_gaps", gaps, missing_bars, "missing bars", {"missing_bars": missing_bars}),
        _cells_outcome(
            "halts",
            halts,
            halted_bars,
            f"runs of >= {config.halt_bars} missing or flat zero-volume bars",
            {"halted_bars": halted_bars},
        ),
    ]


def validate_intraday_bars(
    bars: pd.DataFrame, config: IntradayValidationConfig | None = None
) -> list[RuleOutcome]:
    """Run every rule of :data:`INTRADAY_RULES` on intraday bars and return one outcome per rule, in order.

    :param bars: bars as loaded (``timestamp`` the UTC bar end); a fresh ``RangeIndex`` is applied, rows are
        positions
    :param config: thresholds; defaults to :class:`IntradayValidationConfig`
    """
    config = config or IntradayValidationConfig()
    bars = bars.reset_index(drop=True)
    missing = [c for c in INTRADAY_COLUMNS if c not in bars.columns]
    if missing:
        present = ", ".join(map(str, bars.columns))
        first = RuleOutcome(
            "required_columns",
            False,
            "ERROR",
            f"missing column(s) {', '.join(missing)}; present: {present}",
            column=", ".join(missing),
        )
        return [first] + [_skipped(name, "required columns are missing") for name in list(INTRADAY_RULES)[1:]]
    ends = _local_ends(bars["timestamp"])
    row_rules = {o.name: o for o in _daily_suite(bars, ends, config)}
    _, text = INTRADAY_RULES["required_columns"]
    row_rules["required_columns"] = RuleOutcome("required_columns", True, "ERROR", f"passed: {text}")
    try:
        bar_length = (
            pd.Timedelta(minutes=config.bar_minutes) if config.bar_minutes else infer_bar_minutes(ends)
        )
        session_rules = {o.name: o for o in _session_rules(bars, ends, bar_length, config)}
    except ValueError as error:
        session_rules = {name: _skipped(name, str(error)) for name in _SESSION_RULES}
    return [row_rules.get(name) or session_rules[name] for name in INTRADAY_RULES]


_SESSION_RULES = ("outside_session", "session_completeness", "session_gaps", "halts", "zero_volume")


def require_valid_intraday_bars(
    bars: pd.DataFrame, source: str, config: IntradayValidationConfig | None = None
) -> list[RuleOutcome]:
    """Run every intraday rule on bars read from ``source`` and return the outcomes, warnings included.

    :raises DataValidationError: when a blocking rule fails; its first line names the source, rules and rows
    """
    outcomes = validate_intraday_bars(bars, config)
    failures = blocking_failures(outcomes)
    if failures:
        raise DataValidationError(source, failures)
    return outcomes


def to_validated_intraday_bars(bars: pd.DataFrame) -> pd.DataFrame:
    """Typed, sorted copy of intraday bars that passed validation: UTC ``timestamp``, OHLCV as float, and the
    source's ``trade_count`` where it gives one (the microstructure's trade intensity reads it)."""
    extra = [c for c in ("trade_count",) if c in bars.columns]
    validated = bars.loc[:, [*INTRADAY_COLUMNS, *extra]].copy()
    validated["timestamp"] = pd.to_datetime(validated["timestamp"], utc=True)
    validated["tic"] = validated["tic"].astype(str)
    for column in OHLCV_COLUMNS:
        validated[column] = validated[column].astype("float64")
    return validated.sort_values(["timestamp", "tic"], ignore_index=True)


@dataclass(frozen=True)
class SessionSplitConfig:
    """Whole sessions per period of a chronological intraday split: the first ``train_fraction`` of the
    sessions train, the next ``validation_fraction`` validate, the rest test (each at least one session).

    :param train_fraction: share of sessions for training
    :param validation_fraction: share of sessions for validation
    """

    train_fraction: float = 0.6
    validation_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.train_fraction < 1 and 0 < self.validation_fraction < 1 - self.train_fraction):
            raise ValueError(
                f"SessionSplitConfig: need 0 < train_fraction < 1 and 0 < validation_fraction < "
                f"1 - train_fraction, got {self.train_fraction} and {self.validation_fraction}"
            )


def session_split(bar_ends: pd.Series, config: SessionSplitConfig | None = None) -> DateSplit:
    """Split bars into train, validation and test periods of whole exchange sessions, in time order.

    :param bar_ends: the bars' ends in exchange time (tz-naive), e.g. a minute features frame's ``date``
    :param config: the shares of sessions; defaults to :class:`SessionSplitConfig`
    :raises ValueError: fewer than three sessions
    """
    config = config or SessionSplitConfig()
    ends = pd.Series(pd.to_datetime(bar_ends)).sort_values(ignore_index=True)
    days = pd.DatetimeIndex(ends.dt.normalize().unique())
    if len(days) < 3:
        raise ValueError(
            f"need at least 3 sessions to split into train, validation and test, got {len(days)}"
        )
    n_train = min(max(int(len(days) * config.train_fraction), 1), len(days) - 2)
    n_validation = min(max(int(len(days) * config.validation_fraction), 1), len(days) - n_train - 1)
    periods = np.split(days, [n_train, n_train + n_validation])

    def bounds(sessions: pd.DatetimeIndex) -> tuple[pd.Timestamp, pd.Timestamp]:
        own = ends[ends.dt.normalize().isin(sessions)]
        return pd.Timestamp(own.iloc[0]), pd.Timestamp(own.iloc[-1])

    (train_start, train_end), (validation_start, validation_end), (test_start, test_end) = map(
        bounds, periods
    )
    return DateSplit(train_start, train_end, validation_start, validation_end, test_start, test_end)


__all__ = [
    "INTRADAY_COLUMNS",
    "INTRADAY_RULES",
    "IntradayValidationConfig",
    "SessionSplitConfig",
    "infer_bar_minutes",
    "require_valid_intraday_bars",
    "session_days",
    "session_split",
    "to_validated_intraday_bars",
    "validate_intraday_bars",
]
