"""Truncate-and-compare: every feature and observation at date t must be computable from bars up to t."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class LeakageFinding:
    """Columns whose values at ``cutoff`` differ when the data is cut at ``cutoff``."""

    cutoff: pd.Timestamp
    columns: tuple[str, ...]
    max_abs_difference: float


def truncate_and_compare(
    bars: pd.DataFrame,
    build: Callable[[pd.DataFrame], pd.DataFrame],
    cutoffs: list[pd.Timestamp],
    tolerance: float = 1e-8,
) -> list[LeakageFinding]:
    """Rebuild features from bars cut at each cutoff and compare them with the full build at that date.

    :param bars: validated bars over the whole history
    :param build: bars -> long features frame (``date``, ``tic`` and feature columns)
    :param cutoffs: dates to cut at (each must be a date of the full build)
    :param tolerance: largest absolute difference accepted (float noise of re-ordered sums)
    :return: one finding per cutoff with any differing column (empty when nothing leaks)
    """
    full = build(bars).set_index(["date", "tic"]).sort_index()
    findings = []
    for cutoff in cutoffs:
        cut = build(bars[bars["date"] <= cutoff]).set_index(["date", "tic"]).sort_index()
        expected = full.loc[[cutoff]] if cutoff in full.index.get_level_values("date") else full.iloc[:0]
        observed = cut.loc[[cutoff]] if cutoff in cut.index.get_level_values("date") else cut.iloc[:0]
        if expected.empty or observed.empty or not expected.index.equals(observed.index):
            findings.append(LeakageFinding(cutoff, ("<rows>",), float("inf")))
            continue
        numeric = expected.select_dtypes("number").columns
        difference = (expected[numeric] - observed[numeric]).abs().max()
        leaking = difference[~(difference <= tolerance)]
        if len(leaking):
            findings.append(
                LeakageFinding(cutoff, tuple(leaking.index), float(np.nanmax(leaking.to_numpy())))
            )
    return findings


def spread_cutoffs(
    dates: pd.Series | pd.DatetimeIndex, count: int = 3, skip: int = 300
) -> list[pd.Timestamp]:
    """``count`` dates spread over the panel after the first ``skip`` (indicator and window warm-up)."""
    unique = pd.DatetimeIndex(pd.Series(dates).drop_duplicates().sort_values())
    usable = unique[min(skip, len(unique) - 1) :]
    positions = np.linspace(0, len(usable) - 1, count + 2)[1:-1].astype(int)
    return [usable[p] for p in positions]
