"""The promotion gate: out-of-sample backtest figures against thresholds."""

from __future__ import annotations

from dataclasses import dataclass

from trading_core.metrics import PerformanceMetrics


@dataclass(frozen=True)
class PromotionThresholds:
    """Limits a candidate must meet on the test period to become ``champion``.

    :param min_sharpe: lowest acceptable annualised Sharpe ratio
    :param max_drawdown: largest acceptable peak-to-trough loss (fraction)
    :param max_var_95: largest acceptable one-day historical VaR95 (fraction of the portfolio)
    :param must_beat_buy_and_hold: require a higher Sharpe than equal-weight buy-and-hold
    """

    min_sharpe: float = 1.0
    max_drawdown: float = 0.15
    max_var_95: float = 0.02
    must_beat_buy_and_hold: bool = True


@dataclass(frozen=True)
class GateResult:
    """One criterion of the gate with the measured value and the limit."""

    name: str
    passed: bool
    value: float
    threshold: float
    description: str


def evaluate_gate(
    metrics: PerformanceMetrics, benchmark: PerformanceMetrics, thresholds: PromotionThresholds
) -> list[GateResult]:
    """Every gate criterion, evaluated on out-of-sample metrics after costs."""
    results = [
        GateResult(
            "min_sharpe",
            metrics.sharpe >= thresholds.min_sharpe,
            metrics.sharpe,
            thresholds.min_sharpe,
            f"Sharpe {metrics.sharpe:.2f} vs required >= {thresholds.min_sharpe:.2f}",
        ),
        GateResult(
            "max_drawdown",
            metrics.max_drawdown <= thresholds.max_drawdown,
            metrics.max_drawdown,
            thresholds.max_drawdown,
            f"max drawdown {metrics.max_drawdown:.1%} vs allowed <= {thresholds.max_drawdown:.1%}",
        ),
        GateResult(
            "max_var_95",
            metrics.var_95 <= thresholds.max_var_95,
            metrics.var_95,
            thresholds.max_var_95,
            f"VaR95 {metrics.var_95:.2%} vs allowed <= {thresholds.max_var_95:.2%}",
        ),
    ]
    if thresholds.must_beat_buy_and_hold:
        results.append(
            GateResult(
                "beats_buy_and_hold",
                metrics.sharpe > benchmark.sharpe,
                metrics.sharpe,
                benchmark.sharpe,
                f"Sharpe {metrics.sharpe:.2f} vs equal-weight buy-and-hold {benchmark.sharpe:.2f}",
            )
        )
    return results
