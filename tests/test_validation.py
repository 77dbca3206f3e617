"""Data rules: real data passes; each kind of bad input fails its rule and names the rows."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SHARED_DATA
from trading_core.data.sample import load_sample_daily_bars
from trading_core.data.schema import select_window
from trading_core.data.validation import (
    RULES,
    AllowListError,
    DataValidationError,
    ValidationConfig,
    blocking_failures,
    find_split_jumps,
    require_valid_bars,
    to_validated_bars,
    validate_daily_bars,
)


@pytest.fixture()
def raw_slice(dow30_bars: pd.DataFrame) -> pd.DataFrame:
    return select_window(dow30_bars, ["AAPL", "KO"], "2019-01-01", "2019-06-30")


@pytest.fixture()
def shared_index_file():
    """The path of an index file of the shared real data, skipping the test when it is missing."""

    def path(name: str) -> Path:
        file = SHARED_DATA / name
        if not file.exists():
            pytest.skip(f"real market data {file} not found (set RL_TRADING_SHARED_DATA)")
        return file

    return path


def outcome(outcomes, name):
    return next(o for o in outcomes if o.name == name)


def test_real_slice_passes_every_blocking_rule(raw_slice):
    outcomes = validate_daily_bars(raw_slice)
    assert [o.name for o in outcomes] == list(RULES)
    assert blocking_failures(outcomes) == []


def test_sample_package_data_passes_with_one_real_outlier_warning():
    outcomes = validate_daily_bars(load_sample_daily_bars())
    assert blocking_failures(outcomes) == []
    outliers = outcome(outcomes, "return_outliers")
    assert not outliers.passed and outliers.severity == "WARN"
    assert "2000-09-29 AAPL" in outliers.description  # Apple's real -52% day


def corrupt(frame: pd.DataFrame, case: str) -> pd.DataFrame:
    bad = frame.copy()
    if case == "null":
        bad.loc[3, "open"] = np.nan
    elif case == "negative_price":
        bad.loc[3, "close"] = -1.0
    elif case == "high_below_low":
        bad.loc[3, "high"] = bad.loc[3, "low"] * 0.5
    elif case == "duplicate":
        bad = pd.concat([bad, bad.iloc[[3]]], ignore_index=True)
    elif case == "bad_date":
        bad.loc[3, "date"] = "2019-13-45"
    elif case == "missing_column":
        bad = bad.drop(columns=["volume"])
    elif case == "negative_volume":
        bad.loc[3, "volume"] = -100
    return bad


@pytest.mark.parametrize(
    ("case", "rule", "column"),
    [
        ("null", "no_nulls", "open"),
        ("negative_price", "positive_prices", "close"),
        ("high_below_low", "high_is_max", "high"),
        ("duplicate", "unique_date_tic", "date,tic"),
        ("bad_date", "parseable_sorted_dates", "date"),
        ("missing_column", "required_columns", "volume"),
        ("negative_volume", "non_negative_volume", "volume"),
    ],
)
def test_bad_input_fails_its_rule_and_names_the_rows(raw_slice, case, rule, column):
    outcomes = validate_daily_bars(corrupt(raw_slice, case))
    failed = outcome(outcomes, rule)
    assert failed.blocking
    assert column in (failed.column or "")
    if case != "missing_column":
        assert 3 in failed.failing_rows
        assert "row 3" in failed.description
    error = DataValidationError("bars.csv", blocking_failures(outcomes))
    assert "bars.csv" in str(error) and rule in str(error)


def test_out_of_order_dates_are_reported(raw_slice):
    swapped = raw_slice.copy()
    swapped.loc[[0, 2], "date"] = swapped.loc[[2, 0], "date"].to_numpy()  # AAPL rows 0 and 2 trade places
    failed = outcome(validate_daily_bars(swapped), "parseable_sorted_dates")
    assert failed.blocking and failed.failing_rows


def test_completeness_counts_exchange_sessions(raw_slice):
    aapl_dates = raw_slice.loc[raw_slice["tic"] == "AAPL", "date"]
    dropped = raw_slice.drop(index=aapl_dates.index[10:14])  # 4 of ~124 sessions missing: ~96.8%
    result = outcome(validate_daily_bars(dropped), "completeness")
    assert result.blocking
    assert "AAPL" in result.description and "KO" not in result.description
    assert result.details["completeness_by_ticker"]["KO"] == 1.0
    lenient = outcome(validate_daily_bars(dropped, ValidationConfig(min_completeness=0.95)), "completeness")
    assert lenient.passed


def test_validated_bars_are_typed_and_sorted(raw_slice):
    validated = to_validated_bars(raw_slice.sample(frac=1.0, random_state=0))
    assert pd.api.types.is_datetime64_any_dtype(validated["date"])
    assert validated.equals(validated.sort_values(["date", "tic"], ignore_index=True))
    assert (validated.dtypes[["open", "high", "low", "close", "volume"]] == "float64").all()


# ------------------------------------------------------------------------------------ unadjusted splits

SYNTHETIC_TICKER = "SYNTH"  # a made-up ticker: the series below is synthetic, not market data


def synthetic_split_bars(share_ratio: float = 2.0, volume: str = "raw", at: int = 40) -> pd.DataFrame:
    """A synthetic random-walk price series (1% daily moves) whose bars from ``at`` on are not adjusted for a
    ``share_ratio`` split: prices divided by it, and volume multiplied by it (``raw``), left as it was
    (``adjusted``) or absent (``none``, all zeros)."""
    rng = np.random.default_rng(7)
    dates = pd.bdate_range("2021-01-04", periods=80)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(dates))))
    shares = 1_000_000 * np.exp(rng.normal(0, 0.2, len(dates)))
    after = np.arange(len(dates)) >= at
    close = np.where(after, close / share_ratio, close)
    if volume == "raw":
        shares = np.where(after, shares * share_ratio, shares)
    elif volume == "none":
        shares = np.zeros(len(dates))
    return pd.DataFrame(
        {
            "date": dates.strftime("%Y-%m-%d"),
            "tic": SYNTHETIC_TICKER,
            "open": close,
            "high": close * 1.005,
            "low": close * 0.995,
            "close": close,
            "volume": shares,
        }
    )


def test_a_synthetic_unadjusted_split_is_blocked_naming_ticker_date_and_ratio():
    bars = synthetic_split_bars()
    outcomes = validate_daily_bars(bars)
    failed = outcome(outcomes, "unadjusted_splits")
    assert failed.blocking and failed.column == "close" and failed.failing_rows == (40,)
    assert f"row 40 (2021-03-01 {SYNTHETIC_TICKER}) close x0." in failed.description
    assert "~ 2:1 split" in failed.description
    assert blocking_failures(outcomes) == [failed]  # the other rules see nothing wrong
    with pytest.raises(DataValidationError) as error:
        require_valid_bars(bars, "synthetic_split.csv")
    # One line naming the file, the rule, the column and the row.
    assert str(error.value).count("\n") == 0
    assert str(error.value).startswith("synthetic_split.csv: unadjusted_splits: close jumps by a split ratio")
    assert "column close: row 40 (2021-03-01 SYNTH)" in str(error.value)


@pytest.mark.parametrize(
    ("share_ratio", "volume", "label"),
    [
        (2.0, "adjusted", "2:1"),
        (2.0, "none", "2:1"),
        (3.0, "raw", "3:1"),
        (1.5, "raw", "3:2"),
        (0.1, "raw", "1:10"),
    ],
)
def test_splits_are_found_whatever_the_ratio_and_the_volume(share_ratio, volume, label):
    jumps = find_split_jumps(synthetic_split_bars(share_ratio, volume))
    assert [(j.row, j.tic, j.ratio, j.allowed) for j in jumps] == [(40, SYNTHETIC_TICKER, label, False)]


def test_the_allow_list_lets_a_flagged_jump_pass_inline_or_from_a_file(tmp_path):
    bars = synthetic_split_bars()
    inline = ValidationConfig(allowed_jumps=(f"{SYNTHETIC_TICKER}:2021-03-01",))
    result = outcome(validate_daily_bars(bars, inline), "unadjusted_splits")
    assert result.passed and "1 allowed: SYNTH 2021-03-01 2:1" in result.description
    assert result.details["allowed_jumps"] == {"SYNTH 2021-03-01 2:1": pytest.approx(0.5, abs=0.05)}

    allow_list = tmp_path / "real_events.csv"
    allow_list.write_text(
        "tic,date,reason\nSYNTH,2021-03-01,a synthetic event\nAAPL,2000-09-29,profit warning\n"
    )
    from_file = ValidationConfig(allowed_jumps_path=str(allow_list))
    assert require_valid_bars(bars, "synthetic_split.csv", from_file)  # passes, outcomes returned
    # Another date of the same ticker is not allowed.
    other_day = ValidationConfig(allowed_jumps=(f"{SYNTHETIC_TICKER}:2021-03-02",))
    assert outcome(validate_daily_bars(bars, other_day), "unadjusted_splits").blocking


def test_a_spike_that_reverts_is_no_split():
    bars = synthetic_split_bars(share_ratio=1.0)
    bars.loc[40, ["open", "high", "low", "close"]] /= 2  # one bad bar, back to the level the next day
    assert find_split_jumps(bars) == []


def test_real_crash_days_are_not_splits():
    sample = load_sample_daily_bars()
    aapl = sample[sample["tic"] == "AAPL"].set_index("date")["close"]
    # Apple's real -52% day: close ratio 0.48 sits on 2:1, but its volume surged 17-fold.
    assert aapl.loc["2000-09-29"] / aapl.loc["2000-09-28"] == pytest.approx(0.48, abs=0.01)
    assert find_split_jumps(sample) == []


def test_already_adjusted_real_data_has_no_split_flags(dow30_bars, shared_index_file):
    # Every Dow-30 bar of 2009-2021, the 2020 crash included, and the S&P 500 index of 2005-2021 (2008 too).
    assert find_split_jumps(dow30_bars) == []
    sp500 = pd.read_csv(shared_index_file("sp500_index_daily_2005_2021.csv.gz")).assign(tic="^GSPC")
    assert find_split_jumps(sp500) == []
    # VIX (no volume) jumped x2.16 on 2018-02-05, next to a 1:2 reverse split, but fell back within days.
    vix = pd.read_csv(shared_index_file("vix_index_daily_2005_2021.csv.gz")).assign(tic="^VIX")
    assert find_split_jumps(vix) == []


def test_the_real_unadjusted_splits_in_the_sample_packages_raw_prices_are_found():
    from bokeh_sampledata import stocks

    raw = pd.concat(
        [pd.DataFrame(getattr(stocks, tic)).assign(tic=tic) for tic in ("AAPL", "GOOG", "IBM", "MSFT", "FB")],
        ignore_index=True,
    )
    labels = sorted(j.label for j in find_split_jumps(raw))
    # The package's own close column is not split-adjusted: these are the three real 2:1 splits in it.
    assert labels == ["AAPL 2000-06-21 2:1", "AAPL 2005-02-28 2:1", "MSFT 2003-02-18 2:1"]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"min_completeness": 1.5}, "ValidationConfig.min_completeness=1.5: expected a share in (0, 1]"),
        ({"outlier_abs_return": 0}, "ValidationConfig.outlier_abs_return=0: expected a return > 0"),
        ({"calendar": "MOON"}, "ValidationConfig.calendar='MOON': expected an exchange_calendars code"),
        ({"split_confirm_bars": 0}, "ValidationConfig.split_confirm_bars=0: expected a whole number >= 1"),
        ({"split_ratios": ("2-1",)}, "split ratio '2-1' must be NEW:OLD shares"),
        ({"allowed_jumps": ("AAPL 2000",)}, "allowed jump 'AAPL 2000' must be TICKER:YYYY-MM-DD"),
    ],
)
def test_validation_config_refuses_settings_out_of_range(settings, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        ValidationConfig(**settings)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("tic,day\nAAPL,2000-09-29\n", "missing column(s) date; present: tic, day"),
        (
            "tic,date\nAAPL,2000-09-29\nMSFT,29/09/2000\nIBM,soon\n",
            "column date needs a date YYYY-MM-DD in every row; bad row(s) 1, 2",
        ),
        ("tic,date\n,2000-09-29\n", "column tic needs a ticker in every row; bad row(s) 0"),
    ],
)
def test_a_bad_allow_list_file_is_named_with_its_column_and_rows(tmp_path, content, message):
    path = tmp_path / "allow.csv"
    path.write_text(content)
    with pytest.raises(AllowListError, match=re.escape(f"allow-list {path}: {message}")):
        ValidationConfig(allowed_jumps_path=str(path)).allowed_jump_keys()
    with pytest.raises(AllowListError, match="does not exist"):
        ValidationConfig(allowed_jumps_path=str(tmp_path / "missing.csv")).allowed_jump_keys()


def test_the_validation_asset_blocks_a_synthetic_split_and_its_config_refuses_bad_settings():
    import dagster as dg
    from pydantic import ValidationError

    from resources.market_data import RawBars
    from trading_assets.validation import ValidationSettings, validated_daily_bars

    raw = RawBars(synthetic_split_bars(), "synthetic bars", "synthetic_split.csv")
    events = []
    with dg.build_asset_context() as context, pytest.raises(dg.Failure) as failure:
        for event in validated_daily_bars(context, config=ValidationSettings(), raw_daily_bars=raw):
            events.append(event)
    assert not any(isinstance(e, dg.Output) for e in events)  # nothing stored
    check = next(
        e for e in events if isinstance(e, dg.AssetCheckResult) and e.check_name == "unadjusted_splits"
    )
    assert not check.passed and check.metadata["flagged_jumps"].value == {
        "SYNTH 2021-03-01 2:1": pytest.approx(0.5, abs=0.05)
    }
    # Chained, so the run summary names the DataValidationError, not Dagster's Failure.
    assert isinstance(failure.value.__cause__, DataValidationError)
    assert "synthetic_split.csv: unadjusted_splits" in str(failure.value.__cause__)

    allowed = ValidationSettings(allowed_jumps=["SYNTH:2021-03-01"])
    with dg.build_asset_context() as context:
        outputs = list(validated_daily_bars(context, config=allowed, raw_daily_bars=raw))
    assert any(isinstance(e, dg.Output) for e in outputs)
    # The launchpad gets the domain's range checks.
    with pytest.raises(
        ValidationError,
        match=re.escape("ValidationConfig.split_max_recovery=2.0: expected a share in (0, 1)"),
    ):
        ValidationSettings(split_max_recovery=2.0)
