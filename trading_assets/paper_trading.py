"""Stage 8: what paper trading recorded — sessions, fill reconciliation against the simulator, champion vs challenger."""

import dagster as dg
import pandas as pd

from resources.trading_state import TradingStateResource
from trading_assets.config_defaults import default_of
from trading_assets.metadata import markdown_table, png_metadata
from trading_core.evaluation.plots import equity_curve_png
from trading_core.live.analysis import compare_champion_challenger, slippage_drift, slippage_table
from trading_core.live.state import CHALLENGER, CHAMPION


@dg.asset(group_name="paper_trading", compute_kind="sqlalchemy")
def paper_trading_sessions(trading_state: TradingStateResource) -> dg.Output[pd.DataFrame]:
    """Every paper-trading session in the state database with its bars, orders, fills, alerts and return."""
    with trading_state.store() as store:
        rows = []
        for session in store.sessions().itertuples(index=False):
            curve = store.equity_curve(session.session_id, CHAMPION)
            fills = store.fills(session.session_id)
            rows.append(
                {
                    "session_id": session.session_id,
                    "model_version": session.model_version,
                    "challenger_version": session.challenger_version,
                    "broker": session.broker,
                    "status": session.status,
                    "bars": len(curve),
                    "orders": len(store.orders(session.session_id)),
                    "broker_fills": int((fills["source"] == "broker").sum()),
                    "alerts": len(store.alerts(session.session_id)),
                    "return": float(curve["equity"].iloc[-1] / curve["equity"].iloc[0] - 1)
                    if len(curve) > 1
                    else 0.0,
                }
            )
        table = pd.DataFrame(rows)
        return dg.Output(
            table,
            metadata={
                "sessions": len(table),
                "table": markdown_table(table.to_dict(orient="records")) if len(table) else "no sessions yet",
                "database": store.url,
            },
        )


class ReconciliationSettings(dg.Config):
    """When slippage counts as drift (defaults: :func:`slippage_drift`)."""

    alpha: float = default_of(slippage_drift, "alpha")
    tolerance_bps: float = default_of(slippage_drift, "tolerance_bps")


@dg.asset(
    group_name="paper_trading",
    compute_kind="scipy",
    check_specs=[
        dg.AssetCheckSpec(
            name="slippage_drift",
            asset="fill_reconciliation",
            description="broker fills do not drift from the shared cost model's fills",
        )
    ],
)
def fill_reconciliation(
    config: ReconciliationSettings, paper_trading_sessions: pd.DataFrame, trading_state: TradingStateResource
):
    """The broker's fills against the simulated fills of the same orders: slippage in bps and its drift."""
    with trading_state.store() as store:
        fills = pd.concat(
            [store.fills(s) for s in paper_trading_sessions.get("session_id", [])]
            or [pd.DataFrame(columns=["source"])],
            ignore_index=True,
        )
        table = slippage_table(fills) if len(fills) else pd.DataFrame(columns=["slippage_bps", "filled_at"])
        drift = slippage_drift(table, config.alpha, config.tolerance_bps)
        by_symbol = (
            table.groupby("symbol")["slippage_bps"].agg(["count", "mean", "median"]) if len(table) else None
        )
        yield dg.Output(
            table,
            metadata={
                "summary": markdown_table([drift.as_dict()]),
                "by_symbol": dg.MetadataValue.md(by_symbol.to_markdown(floatfmt=".2f"))
                if by_symbol is not None
                else "no fills",
            },
        )
        yield dg.AssetCheckResult(
            check_name="slippage_drift",
            passed=not drift.drifted,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{drift.fills} fills, mean slippage {drift.mean_bps:+.2f} bps (p={drift.p_value:.3f}), "
            f"trend {drift.trend_bps_per_day:+.2f} bps/day",
        )


class ABTestSettings(dg.Config):
    """Sessions needed before the A/B test gives a verdict, and its significance level (defaults:
    :func:`compare_champion_challenger`)."""

    min_sessions: int = default_of(compare_champion_challenger, "min_sessions")
    alpha: float = default_of(compare_champion_challenger, "alpha")
    seed: int = default_of(compare_champion_challenger, "seed")


@dg.asset(group_name="paper_trading", compute_kind="scipy")
def ab_test(
    config: ABTestSettings, paper_trading_sessions: pd.DataFrame, trading_state: TradingStateResource
) -> dg.Output[dict]:
    """Champion against the shadow challenger on the same bars: paired test of per-session returns."""
    with trading_state.store() as store:
        champion, challenger = [], []
        for session_id in paper_trading_sessions.get("session_id", []):
            a, b = store.equity_curve(session_id, CHAMPION), store.equity_curve(session_id, CHALLENGER)
            if len(a) > 1 and len(b) > 1:
                # Chain sessions as returns so separate sessions form one comparable curve.
                champion.append(a["equity"] / a["equity"].iloc[0])
                challenger.append(b["equity"] / b["equity"].iloc[0])
        if not champion:
            return dg.Output({"verdict": "no session with a challenger yet"}, metadata={"verdict": "no data"})
        a, b = _chain(champion), _chain(challenger)
        result = compare_champion_challenger(a, b, config.min_sessions, config.alpha, config.seed)
        png = equity_curve_png(
            {"champion": a, "challenger (shadow)": b}, "Paper trading: champion vs challenger", "growth of 1"
        )
        return dg.Output(
            result.as_dict(),
            metadata={
                "comparison": markdown_table([result.as_dict()]),
                "verdict": result.verdict,
                "equity": png_metadata(png),
            },
        )


def _chain(curves: list[pd.Series]) -> pd.Series:
    chained, level = [], 1.0
    for curve in curves:
        chained.append(curve * level)
        level = float(chained[-1].iloc[-1])
    return pd.concat(chained).sort_index()
