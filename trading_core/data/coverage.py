"""Universe coverage: when each ticker trades, the bars it misses, and why a ticker has no features.

A ragged universe keeps every ticker's own history (see :mod:`trading_core.features.batch`); this report says
which tickers list late or delist inside the period and which ones the features leave out entirely.
"""

from __future__ import annotations

import pandas as pd

COVERAGE_COLUMNS = (
    "tic",
    "first_date",
    "last_date",
    "bars",
    "missing_bars",
    "status",
    "feature_rows",
    "excluded",
)


def listing_status(first: pd.Timestamp, last: pd.Timestamp, start: pd.Timestamp, end: pd.Timestamp) -> str:
    """``full``, ``late listing``, ``delisted`` or ``both``, for a ticker trading from ``first`` to ``last`` in a
    panel from ``start`` to ``end``."""
    late, early = first > start, last < end
    if late and early:
        return "both"
    return "late listing" if late else "delisted" if early else "full"


def exclusion_reason(bars: int, warm_up: int | None) -> str:
    """Why a ticker with ``bars`` bars has no row of complete features.

    :param warm_up: leading bars of each ticker that can never be complete (see
        :func:`trading_core.features.batch.indicator_warm_up`), if known
    """
    if warm_up is not None and bars <= warm_up:
        return f"{bars} bars, fewer than the {warm_up + 1} the indicator warm-up needs"
    return f"none of its {bars} bars has complete features"


def universe_coverage(
    bars: pd.DataFrame, features: pd.DataFrame | None = None, warm_up: int | None = None
) -> pd.DataFrame:
    """One row per ticker of ``bars``: its first and last date, bars, missing bars inside its life, listing
    status, and (given ``features``) its rows of features and, when it has none, the reason.

    A missing bar is a panel date (a date any ticker trades) between the ticker's first and last date on
    which it has no bar.

    :param bars: validated long-format bars
    :param features: the features built from ``bars``
    :param warm_up: leading bars of each ticker the indicators cannot complete, for the exclusion reason
    """
    calendar = pd.DatetimeIndex(bars["date"].drop_duplicates().sort_values())
    start, end = calendar[0], calendar[-1]
    per_ticker = bars.groupby("tic")["date"].agg(["min", "max", "nunique"])
    feature_rows = features.groupby("tic").size() if features is not None else pd.Series(dtype="int64")
    rows = []
    for tic, (first, last, count) in per_ticker.iterrows():
        life = calendar.searchsorted(last, "right") - calendar.searchsorted(first)
        kept = int(feature_rows.get(tic, 0))
        rows.append(
            {
                "tic": tic,
                "first_date": first,
                "last_date": last,
                "bars": int(count),
                "missing_bars": int(life - count),
                "status": listing_status(first, last, start, end),
                "feature_rows": kept if features is not None else None,
                "excluded": exclusion_reason(int(count), warm_up)
                if features is not None and not kept
                else "",
            }
        )
    return pd.DataFrame(rows, columns=list(COVERAGE_COLUMNS))


def excluded_tickers(coverage: pd.DataFrame) -> dict[str, str]:
    """The tickers a coverage report marks as excluded from the features, with the reason."""
    excluded = coverage[coverage["excluded"] != ""]
    return dict(zip(excluded["tic"], excluded["excluded"], strict=True))
