"""The intraday rules: the shared real 1- and 15-minute files pass them; synthetic broken sessions fail the rule
they break, naming the column, rows, ticker and bar ends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SHARED_DATA, _require
from trading_core.data.intraday import (
    INTRADAY_RULES,
    IntradayValidationConfig,
    SessionSplitConfig,
    require_valid_intraday_bars,
    session_days,
    session_split,
    to_validated_intraday_bars,
    validate_intraday_bars,
)
from trading_core.data.validation import DataValidationError, blocking_failures
from trading_core.live.sources import read_bars

FILES = {1: "intraday_1min_us_equities_2019.csv.gz", 15: "intraday_15min_us_equities_2019.csv.gz"}


def synthetic_session(
    day: str, bar_minutes: int = 15, tickers: tuple[str, ...] = ("AAA", "BBB"), close: str = "16:00"
) -> pd.DataFrame:
    """Synthetic bars of a whole session (every bar present, prices drifting, volume 1,000): the frame each test
    breaks one way."""
    opening = pd.Timestamp(f"{day} 09:30").tz_localize("America/New_York")
    closing = pd.Timestamp(f"{day} {close}").tz_localize("America/New_York")
    ends = pd.date_range(opening + pd.Timedelta(minutes=bar_minutes), closing, freq=f"{bar_minutes}min")
    rows = []
    for n, tic in enumerate(tickers):
        price = 100.0 + 10 * n + np.arange(len(ends)) * 0.01
        rows.append(
            pd.DataFrame(
                {
                    "timestamp": ends.tz_convert("UTC"),
                    "tic": tic,
                    "open": price,
                    "high": price + 0.05,
                    "low": price - 0.05,
                    "close": price + 0.01,
                    "volume": 1_000.0,
                }
            )
        )
    return pd.concat(rows).sort_values(["timestamp", "tic"], ignore_index=True)


def outcome(bars: pd.DataFrame, name: str, config: IntradayValidationConfig | None = None):
    return next(o for o in validate_intraday_bars(bars, config) if o.name == name)


@pytest.mark.parametrize("minutes", sorted(FILES))
def test_the_shared_real_files_pass_every_blocking_rule(minutes):
    bars = read_bars(_require(SHARED_DATA / FILES[minutes]), validate=False)
    outcomes = validate_intraday_bars(bars)
    assert [o.name for o in outcomes] == list(INTRADAY_RULES)
    assert blocking_failures(outcomes) == []
    completeness = outcome(bars, "session_completeness").details["completeness_by_session"]
    assert len(completeness) == len(session_days(bars)) and min(completeness.values()) > 0.9
    # Real illiquid tickers miss bars: warnings, never blocks.
    assert not outcome(bars, "session_gaps").passed and outcome(bars, "session_gaps").severity == "WARN"


def test_the_shared_1_minute_file_shows_its_real_halts_and_zero_volume_bars():
    bars = read_bars(_require(SHARED_DATA / FILES[1]), validate=False)
    halts, zero = outcome(bars, "halts"), outcome(bars, "zero_volume")
    assert not halts.passed and halts.examples[0].startswith("UGA 2019-02-11 bars ending 13:43..14:17 (35)")
    assert zero.failing_count == int((bars["volume"] == 0).sum()) == 19
    assert zero.examples[0] == "row 12 (2019-02-11 09:31 TRV)"


def test_a_clean_synthetic_session_passes_every_rule():
    assert all(o.passed for o in validate_intraday_bars(synthetic_session("2019-02-11")))


@pytest.mark.parametrize("minutes", [1, 5, 15])
def test_the_bar_length_is_inferred(minutes):
    bars = synthetic_session("2019-02-11", minutes)
    assert all(o.passed for o in validate_intraday_bars(bars))
    gaps = outcome(bars.drop(index=[4, 5]), "session_gaps")  # rows 4, 5: the third bar of AAA and of BBB
    third = (pd.Timestamp("2019-02-11 09:30") + pd.Timedelta(minutes=3 * minutes)).strftime("%H:%M")
    assert gaps.examples == (
        f"AAA 2019-02-11 bars ending {third}..{third} (1)",
        f"BBB 2019-02-11 bars ending {third}..{third} (1)",
    )


@pytest.mark.parametrize("early_close", ["2018-11-23", "2019-07-03"])
def test_an_early_close_expects_bars_to_13_00_only(early_close):
    short = synthetic_session(early_close, 1, close="13:00")
    assert all(o.passed for o in validate_intraday_bars(short))
    completeness = outcome(short, "session_completeness").details["completeness_by_session"]
    assert completeness == {early_close: 1.0}  # 210 bars expected, not 390
    full_day = synthetic_session(early_close, 1)
    outside = outcome(full_day, "outside_session")
    assert outside.blocking and outside.failing_count == 2 * 180  # 13:01 .. 16:00, both tickers
    assert outside.examples[0] == f"row 420 ({early_close} 13:01 AAA)"


def test_bars_outside_the_session_or_off_its_grid_block():
    bars = synthetic_session("2019-02-11")
    late = bars.iloc[[-1]].assign(timestamp=bars["timestamp"].iloc[-1] + pd.Timedelta(minutes=15))
    off_grid = bars.iloc[[0]].assign(timestamp=bars["timestamp"].iloc[0] + pd.Timedelta(minutes=7))
    holiday = synthetic_session("2019-01-21").iloc[[0]]  # Martin Luther King Jr. Day: no session
    broken = pd.concat([bars, late, off_grid, holiday], ignore_index=True)
    result = outcome(broken, "outside_session")
    assert result.blocking and result.column == "timestamp"
    assert result.examples == (
        f"row {len(bars)} (2019-02-11 16:15 BBB)",
        f"row {len(bars) + 1} (2019-02-11 09:52 AAA)",
        f"row {len(bars) + 2} (2019-01-21 09:45 AAA)",
    )


def test_an_incomplete_session_blocks_and_a_missing_bar_warns():
    bars = synthetic_session("2019-02-11")
    thinned = bars.drop(index=bars.index[bars["tic"] == "AAA"][:8])  # 8 of 52 expected bars: 84.6% left
    completeness = outcome(thinned, "session_completeness")
    assert completeness.blocking
    assert "2019-02-11 has 84.6% of 52 expected bars (26 per ticker x 2 tickers)" in completeness.description
    assert outcome(
        thinned, "session_completeness", IntradayValidationConfig(min_session_completeness=0.8)
    ).passed
    gaps = outcome(thinned, "session_gaps")
    assert not gaps.passed and not gaps.blocking and gaps.failing_count == 8
    assert gaps.examples == ("AAA 2019-02-11 bars ending 09:45..11:30 (8)",)


def test_a_long_run_of_missing_or_flat_zero_volume_bars_reads_as_a_halt():
    bars = synthetic_session("2019-02-11", 1)
    aaa = bars.index[bars["tic"] == "AAA"]
    missing = bars.drop(index=aaa[60:80])
    flat = bars.index.isin(aaa[80:90])
    bars_after = missing.copy()
    frozen = flat[bars.index.isin(missing.index)]
    bars_after.loc[frozen, ["open", "high", "low", "close"]] = 100.0
    bars_after.loc[frozen, "volume"] = 0.0
    halts = outcome(bars_after, "halts")
    assert not halts.passed and halts.severity == "WARN" and halts.failing_count == 30
    assert halts.examples == ("AAA 2019-02-11 bars ending 10:31..11:00 (30)",)
    assert outcome(bars_after, "halts", IntradayValidationConfig(halt_bars=31)).passed
    zero = outcome(bars_after, "zero_volume")
    assert zero.failing_count == 10 and zero.column == "volume" and not zero.blocking


def test_duplicate_timestamps_block_with_the_rows_named():
    bars = synthetic_session("2019-02-11")
    broken = pd.concat([bars, bars.iloc[[3]]], ignore_index=True)
    result = outcome(broken, "duplicate_timestamps")
    assert result.blocking and result.column == "timestamp,tic"
    assert result.failing_rows == (3, len(bars)) and "(timestamp, tic)" in result.description
    assert result.examples[0] == "row 3 (2019-02-11 10:00 BBB)"


@pytest.mark.parametrize(
    ("rule", "column", "value"),
    [
        ("high_is_max", "high", 50.0),
        ("low_is_min", "low", 500.0),
        ("positive_prices", "open", -1.0),
        ("non_negative_volume", "volume", -5.0),
        ("no_nulls", "close", np.nan),
    ],
)
def test_the_daily_row_rules_apply_to_each_bar(rule, column, value):
    bars = synthetic_session("2019-02-11")
    bars.loc[7, column] = value
    result = outcome(bars, rule)
    assert result.blocking and 7 in result.failing_rows
    assert "row 7 (2019-02-11 10:30 BBB)" in result.description


def test_out_of_order_bars_block():
    bars = synthetic_session("2019-02-11")
    swapped = bars.iloc[[2, 0, 1, *range(3, len(bars))]].reset_index(drop=True)
    result = outcome(swapped, "sorted_timestamps")
    assert result.blocking and result.column == "timestamp"


def test_a_missing_column_is_named_and_nothing_else_is_evaluated():
    outcomes = validate_intraday_bars(synthetic_session("2019-02-11").drop(columns="volume"))
    assert outcomes[0].blocking and outcomes[0].description.startswith("missing column(s) volume; present:")
    assert all(o.description.startswith("not evaluated") for o in outcomes[1:])


def test_require_valid_intraday_bars_raises_one_line_per_rule_naming_the_source():
    bars = synthetic_session("2019-02-11")
    bars.loc[7, "high"] = 50.0
    with pytest.raises(DataValidationError) as raised:
        require_valid_intraday_bars(bars, "synthetic.csv")
    assert str(raised.value).splitlines() == [
        "synthetic.csv: high_is_max: high below open or close: 1 row(s) in column high/open, high/close: "
        "row 7 (2019-02-11 10:30 BBB)"
    ]


def test_validated_bars_are_typed_and_sorted():
    bars = synthetic_session("2019-02-11").sample(frac=1.0, random_state=3)
    validated = to_validated_intraday_bars(bars)
    assert validated["timestamp"].is_monotonic_increasing and str(validated["timestamp"].dt.tz) == "UTC"
    assert (validated.dtypes[["open", "volume"]] == "float64").all()


def test_config_problems_name_the_field():
    with pytest.raises(ValueError, match=r"IntradayValidationConfig.halt_bars=1: expected a whole number"):
        IntradayValidationConfig(halt_bars=1)
    with pytest.raises(ValueError, match="min_session_completeness=0"):
        IntradayValidationConfig(min_session_completeness=0)


def test_the_session_split_keeps_whole_sessions_in_time_order():
    days = ["2019-02-11", "2019-02-12", "2019-02-13", "2019-02-14", "2019-02-15"]
    ends = pd.concat([synthetic_session(d)["timestamp"] for d in days])
    local = ends.dt.tz_convert("America/New_York").dt.tz_localize(None)
    split = session_split(local, SessionSplitConfig(train_fraction=0.6, validation_fraction=0.2))
    assert split.train_start == pd.Timestamp("2019-02-11 09:45")
    assert split.train_end == pd.Timestamp("2019-02-13 16:00")
    assert (split.validation_start, split.validation_end) == (
        pd.Timestamp("2019-02-14 09:45"),
        pd.Timestamp("2019-02-14 16:00"),
    )
    assert split.test_start == pd.Timestamp("2019-02-15 09:45")
    with pytest.raises(ValueError, match="need at least 3 sessions"):
        session_split(local[local.dt.day < 13])
