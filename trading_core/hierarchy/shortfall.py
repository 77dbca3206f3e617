"""Execution quality of parent orders: implementation shortfall, cost, fill rate and child orders.

Signs: a positive shortfall or cost is money lost. For a parent with fills ``q_i`` (signed) at prices ``p_i``,
commissions ``c_i`` and an arrival price ``a``:

- ``shortfall_bps = 1e4 * (sum q_i (p_i - a) + sum c_i) / (|sum q_i| a)`` on the filled shares, with ``a`` the
  decision close of ``d-1`` (``shortfall_close_bps``, the decision price) or the open of the session's first
  bar (``shortfall_open_bps``); fill prices already hold the spread and the impact;
- ``perold_bps``: Perold's implementation shortfall against the decision close over the whole parent, the
  unfilled rest valued at the session's last close (its opportunity cost);
- ``cost_bps = 1e4 * (commission + spread + impact) / sum |q_i| ref_i``, the cost model's part alone;
- ``fill_rate = sum q_i / parent``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BPS = 1e4


def parent_measures(parents: pd.DataFrame) -> pd.DataFrame:
    """The parents of :class:`~trading_core.hierarchy.session_loop.ExecutionRun` with their measures added (NaN for
    a measure on filled shares where nothing filled).

    :param parents: one row per parent order
    """
    frame = parents.copy()
    filled, parent = frame["filled"], frame["parent"]
    cost = frame["commission"] + frame["spread_cost"] + frame["impact_cost"]
    # The fills' notional at their reference prices: a fill at ref (1 + side * slip) pays |q| ref slip more.
    reference_notional = (frame["paid"] - frame["spread_cost"] - frame["impact_cost"]).abs()
    traded = filled != 0
    for column, arrival in (("close", frame["arrival_close"]), ("open", frame["first_open"])):
        shortfall = frame["paid"] - filled * arrival + frame["commission"]
        frame[f"shortfall_{column}_bps"] = (BPS * shortfall / (filled.abs() * arrival)).where(traded)
    execution = frame["paid"] - filled * frame["arrival_close"] + frame["commission"]
    opportunity = (parent - filled) * (frame["last_close"] - frame["arrival_close"])
    frame["perold_bps"] = BPS * (execution + opportunity) / (parent.abs() * frame["arrival_close"])
    frame["cost_bps"] = (BPS * cost / reference_notional).where(traded)
    frame["fill_rate"] = filled / parent
    frame["reference_notional"] = reference_notional
    return frame


def _p90(values: pd.Series) -> float:
    return float(values.quantile(0.9)) if values.notna().any() else float("nan")


def summarise(measured: pd.DataFrame) -> pd.DataFrame:
    """One row per executor, over all its parents (days and tickers): shortfall mean, median and p90 (bps,
    against the decision close), the mean against the first open, the value-weighted shortfall, cost, fill rate
    (filled over parent shares), Perold's shortfall and the child orders.

    :param measured: the output of :func:`parent_measures`
    """
    rows = []
    for executor, group in measured.groupby("executor", sort=False):
        traded = group[group["filled"] != 0]
        weight = traded["filled"].abs() * traded["arrival_close"]
        cost = traded["commission"] + traded["spread_cost"] + traded["impact_cost"]
        shortfall_value = traded["shortfall_close_bps"] * weight / BPS
        rows.append(
            {
                "executor": executor,
                "parents": len(group),
                "shortfall_mean_bps": float(traded["shortfall_close_bps"].mean()),
                "shortfall_median_bps": float(traded["shortfall_close_bps"].median()),
                "shortfall_p90_bps": _p90(traded["shortfall_close_bps"]),
                "shortfall_vw_bps": float(BPS * shortfall_value.sum() / weight.sum())
                if len(traded)
                else np.nan,
                "shortfall_open_mean_bps": float(traded["shortfall_open_bps"].mean()),
                "shortfall_open_median_bps": float(traded["shortfall_open_bps"].median()),
                "cost_mean_bps": float(traded["cost_bps"].mean()),
                "cost_vw_bps": (
                    float(BPS * cost.sum() / traded["reference_notional"].sum()) if len(traded) else np.nan
                ),
                "perold_mean_bps": float(group["perold_bps"].mean()),
                "fill_rate": float(group["filled"].abs().sum() / group["parent"].abs().sum()),
                "children_per_parent": float(group["children"].mean()),
                "child_orders": int(group["children"].sum()),
            }
        )
    return pd.DataFrame(rows)


__all__ = ["BPS", "parent_measures", "summarise"]
