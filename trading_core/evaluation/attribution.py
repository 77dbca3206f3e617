"""Performance attribution of a backtest: per-asset PnL, and what costs took from the gross result."""

from __future__ import annotations

import pandas as pd

from trading_core.evaluation.backtester import BacktestRecord
from trading_core.market.arrays import MarketArrays


def close_frame(market: MarketArrays) -> pd.DataFrame:
    """The arrays' closes as a frame (dates x tickers): carried over cells without a bar, never NaN."""
    return pd.DataFrame(market.close, index=market.dates, columns=list(market.tickers))


def attribute_pnl(record: BacktestRecord, closes: pd.DataFrame | MarketArrays) -> pd.DataFrame:
    """Per-asset gross PnL, costs by kind and net PnL; the net column sums to the change in equity.

    Net PnL of an asset is the value of its final position minus what was paid for it (fills at their
    execution prices, including spread and impact, plus commission; a delisting's settlement is a sale).
    Gross PnL adds its costs back.

    :param record: an event-driven backtest
    :param closes: the backtest's arrays (their carried closes value every position), or closes with dates as
        index and tickers as columns covering the backtest dates
    """
    if isinstance(closes, MarketArrays):
        closes = close_frame(closes)
    trades = record.trades
    final_value = record.positions.iloc[-1] * closes.loc[record.positions.index[-1], record.positions.columns]
    paid = (trades["shares"] * trades["price"]).groupby(trades["tic"]).sum()
    costs = trades.groupby("tic")[["commission", "spread_cost", "impact_cost"]].sum()
    table = pd.DataFrame(index=record.positions.columns)
    table["net_pnl"] = final_value - paid.reindex(table.index, fill_value=0.0)
    table = table.join(costs).fillna(0.0)
    table["net_pnl"] -= table["commission"]
    table["gross_pnl"] = table["net_pnl"] + table[["commission", "spread_cost", "impact_cost"]].sum(axis=1)
    table["traded_notional"] = (trades["shares"].abs() * trades["price"]).groupby(trades["tic"]).sum()
    table = table.fillna(0.0)
    return table[["gross_pnl", "commission", "spread_cost", "impact_cost", "net_pnl", "traded_notional"]]


def attribution_summary(
    table: pd.DataFrame, initial_equity: float, benchmark_return: float
) -> dict[str, float]:
    """Portfolio-level gross and net returns, the cost drag between them and the net excess over the benchmark."""
    gross = float(table["gross_pnl"].sum()) / initial_equity
    net = float(table["net_pnl"].sum()) / initial_equity
    return {
        "gross_return": gross,
        "costs_return": gross - net,
        "net_return": net,
        "buy_and_hold_return": benchmark_return,
        "net_excess_return": net - benchmark_return,
        "costs_share_of_gross": (gross - net) / gross if gross > 0 else float("nan"),
    }
