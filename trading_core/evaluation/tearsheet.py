"""A backtest's tearsheet: QuantStats' HTML report (equity, underwater, monthly heatmap, rolling Sharpe and
volatility against equal-weight buy-and-hold) with the portfolio's exposure added, and its trade log as CSV.

QuantStats downloads a ticker when the benchmark is a string: the benchmark here is always a returns series, so
the report builds offline.
"""

from __future__ import annotations

import base64
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from trading_core.evaluation.metrics import daily_returns
from trading_core.evaluation.plots import equity_curve_png

TEARSHEET_FILE = "tearsheet.html"
TRADE_LOG_FILE = "trade_log.csv"
EXPOSURE_FILE = "exposure.png"
TRADE_LOG_COLUMNS = (
    "date",
    "ticker",
    "side",
    "shares",
    "price",
    "notional",
    "commission",
    "spread_cost",
    "impact_cost",
    "cost",
)
# Ids of QuantStats' report sections a tearsheet must hold (the cumulative returns, the equity curve, has none)
# and of the one added here.
TEARSHEET_SECTIONS = (
    "log_returns",
    "dd_plot",
    "monthly_heatmap",
    "rolling_sharpe",
    "rolling_vol",
    "exposure",
)
_EXPOSURE_ANCHOR = '<div id="dd_periods">'


@dataclass(frozen=True)
class TearsheetFiles:
    """Where a tearsheet's files were written."""

    html: Path
    trade_log: Path
    exposure: Path

    def all(self) -> tuple[Path, ...]:
        return self.html, self.trade_log, self.exposure


def trade_log(trades: pd.DataFrame) -> pd.DataFrame:
    """A backtest's fills (``BacktestRecord.trades``) as a trade log: one row per fill, in the same order, with the
    side spelled out, shares unsigned and the fill's three costs summed in ``cost``."""
    costs = trades[["commission", "spread_cost", "impact_cost"]]
    log = pd.DataFrame(
        {
            "date": pd.to_datetime(trades["date"]).dt.date,
            "ticker": trades["tic"],
            "side": trades["shares"].gt(0).map({True: "buy", False: "sell"}),
            "shares": trades["shares"].abs(),
            "price": trades["price"],
            "notional": trades["notional"],
            **{column: costs[column] for column in costs.columns},
            "cost": costs.sum(axis=1),
        },
        columns=list(TRADE_LOG_COLUMNS),
    )
    return log.reset_index(drop=True)


def gross_exposure(positions: pd.DataFrame, closes: pd.DataFrame, equity: pd.Series) -> pd.Series:
    """Value of all positions (long plus short) as a fraction of equity, per date.

    :param positions: shares held, dates x tickers
    :param closes: closes on the same dates and tickers (carried over cells without a bar)
    """
    held = (positions * closes.reindex_like(positions)).abs().sum(axis=1)
    return (held / equity.reindex(held.index)).rename("gross_exposure")


@contextmanager
def _quiet_matplotlib():
    """QuantStats asks for Arial, which headless machines rarely have: its fallback is announced per figure."""
    font_logger = logging.getLogger("matplotlib.font_manager")
    level = font_logger.level
    font_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        font_logger.setLevel(level)


def _with_exposure(html: str, png: bytes) -> str:
    """QuantStats' report with an exposure figure in its column of charts (before the drawdown periods)."""
    figure = (
        '<div id="exposure"><h3>Exposure</h3><img style="width:100%" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}"/></div>\n'
    )
    if _EXPOSURE_ANCHOR not in html:
        return html.replace("</body>", figure + "</body>")
    return html.replace(_EXPOSURE_ANCHOR, figure + _EXPOSURE_ANCHOR, 1)


def write_tearsheet(
    folder: str | Path,
    title: str,
    equity: pd.Series,
    benchmark_equity: pd.Series,
    positions: pd.DataFrame,
    closes: pd.DataFrame,
    trades: pd.DataFrame,
) -> TearsheetFiles:
    """Write the tearsheet (HTML), the exposure figure (PNG) and the trade log (CSV) of one backtest.

    :param equity: the agent's equity by date
    :param benchmark_equity: equal-weight buy-and-hold over the same dates
    :param positions: shares held, dates x tickers
    :param closes: closes on the same dates and tickers
    :param trades: the backtest's fills (``BacktestRecord.trades``)
    """
    import quantstats as qs

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = TearsheetFiles(folder / TEARSHEET_FILE, folder / TRADE_LOG_FILE, folder / EXPOSURE_FILE)
    exposure_png = equity_curve_png(
        {"gross exposure": gross_exposure(positions, closes, equity)}, "Exposure", "fraction of equity"
    )
    files.exposure.write_bytes(exposure_png)
    returns = daily_returns(equity).rename("Strategy")
    benchmark = daily_returns(benchmark_equity).rename("Equal-weight buy and hold")
    with _quiet_matplotlib():
        qs.reports.html(
            returns,
            benchmark=benchmark,
            output=str(files.html),
            title=title,
            download_filename=files.html.name,
        )
    files.html.write_text(_with_exposure(files.html.read_text(), exposure_png))
    trade_log(trades).to_csv(files.trade_log, index=False)
    return files
