"""Stage 5: out-of-sample backtest of the registered version and the promotion gate on it.

The gate criteria are blocking asset checks on ``backtest``: when one fails, ``champion_model`` does not run and
the version keeps only its ``challenger`` alias.
"""

from dataclasses import dataclass

import dagster as dg
import pandas as pd

from resources.mlflow_registry import (
    CHAMPION_ALIAS,
    PREVIOUS_ALIAS,
    MlflowRegistryResource,
    RegisteredVersion,
)
from trading_assets.features import DatasetSplits
from trading_assets.metadata import markdown_table, png_metadata
from trading_assets.robustness import SeedSweepReport, StressReport
from trading_assets.training import TrainedAgent
from trading_core.attribution import attribute_pnl, attribution_summary
from trading_core.backtest import BacktestResult, run_backtest
from trading_core.backtester import BacktestRecord
from trading_core.metrics import PerformanceMetrics
from trading_core.plots import equity_curve_png, grouped_bars_png
from trading_core.promotion import GateResult, PromotionThresholds, evaluate_gate

GATE_CHECKS = {
    "min_sharpe": "out-of-sample Sharpe after costs at least the configured minimum",
    "max_drawdown": "out-of-sample max drawdown at most the configured limit",
    "max_var_95": "out-of-sample one-day VaR95 at most the configured share of the portfolio",
    "beats_buy_and_hold": "out-of-sample Sharpe above equal-weight buy-and-hold",
}


class PromotionSettings(dg.Config):
    """Thresholds of the promotion gate (roadmap targets by default)."""

    min_sharpe: float = 1.0
    max_drawdown: float = 0.15
    max_var_95: float = 0.02
    must_beat_buy_and_hold: bool = True

    def thresholds(self) -> PromotionThresholds:
        return PromotionThresholds(**self.model_dump())


@dataclass(frozen=True)
class BacktestReport:
    """What the test period showed for one registered version."""

    model_name: str
    version: str
    equity: pd.Series
    benchmark_equity: pd.Series
    metrics: PerformanceMetrics
    benchmark_metrics: PerformanceMetrics
    total_cost: float
    trades: int
    gate: tuple[GateResult, ...]
    record: BacktestRecord | None = None

    @property
    def promotable(self) -> bool:
        return all(result.passed for result in self.gate)


@dg.multi_asset(
    outs={
        "backtest": dg.AssetOut(
            group_name="evaluation",
            description="Equity of the registered version over the unseen test period after costs, "
            "against equal-weight buy-and-hold.",
        ),
        "performance_attribution": dg.AssetOut(
            group_name="evaluation",
            description="Per-asset PnL of the out-of-sample backtest, gross and net of commission, spread and impact.",
        ),
    },
    compute_kind="backtest",
    check_specs=[
        dg.AssetCheckSpec(name=name, asset="backtest", description=text, blocking=True)
        for name, text in GATE_CHECKS.items()
    ],
)
def backtest(
    context: dg.AssetExecutionContext,
    config: PromotionSettings,
    registered_model: RegisteredVersion,
    trained_agent: TrainedAgent,
    learned_features: DatasetSplits,
    model_registry: MlflowRegistryResource,
):
    """Backtest the registered version out of sample and attribute its PnL; the gate checks judge the backtest.

    Both come from one step so that the attribution is stored even when the gate fails.
    """
    policy = model_registry.load_policy(registered_model.version)
    result = run_backtest(
        policy, trained_agent.observation_frame(learned_features.test), trained_agent.env_spec
    )
    gate = tuple(evaluate_gate(result.metrics, result.benchmark_metrics, config.thresholds()))
    report = BacktestReport(
        model_name=registered_model.name,
        version=registered_model.version,
        equity=result.equity,
        benchmark_equity=result.benchmark_equity,
        metrics=result.metrics,
        benchmark_metrics=result.benchmark_metrics,
        total_cost=result.total_cost,
        trades=result.trades,
        gate=gate,
        record=result.record,
    )
    png = equity_curve_png(
        {
            f"{registered_model.name} v{registered_model.version}": result.equity,
            "equal-weight buy and hold": result.benchmark_equity,
        },
        f"Out-of-sample test {learned_features.split.test_start.date()} .. {learned_features.split.test_end.date()}",
    )
    comparison = [
        {"metric": key, "agent": value, "buy_and_hold": result.benchmark_metrics.as_dict()[key]}
        for key, value in result.metrics.as_dict().items()
    ]
    model_registry.log_evaluation(
        registered_model.run_id,
        metrics={
            **{f"test_{k}": v for k, v in result.metrics.as_dict().items()},
            **{f"test_buy_and_hold_{k}": v for k, v in result.benchmark_metrics.as_dict().items()},
            "test_total_cost": result.total_cost,
        },
        files={"test_equity_curve.png": png},
        tables={"promotion_gate.json": {r.name: r.__dict__ for r in gate}},
    )
    verdict = (
        "promotable"
        if report.promotable
        else "rejected: " + "; ".join(r.description for r in gate if not r.passed)
    )
    model_registry.set_version_tags(registered_model.version, {"promotion_gate": verdict})
    context.log.info(f"{registered_model.name} v{registered_model.version}: {verdict}")

    yield dg.Output(
        report,
        output_name="backtest",
        metadata={
            "model": f"{registered_model.name} v{registered_model.version}",
            "sharpe": dg.MetadataValue.float(result.metrics.sharpe),
            "max_drawdown": dg.MetadataValue.float(result.metrics.max_drawdown),
            "buy_and_hold_sharpe": dg.MetadataValue.float(result.benchmark_metrics.sharpe),
            "total_cost": dg.MetadataValue.float(result.total_cost),
            "trades": result.trades,
            "metrics": markdown_table(comparison),
            "equity_curve": png_metadata(png),
        },
    )
    if result.record is not None:
        yield _attribution_output(result, learned_features, registered_model, model_registry)
    for gate_result in gate:
        yield dg.AssetCheckResult(
            check_name=gate_result.name,
            passed=gate_result.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=gate_result.description,
            metadata={"value": float(gate_result.value), "threshold": float(gate_result.threshold)},
        )
    if not config.must_beat_buy_and_hold:
        yield dg.AssetCheckResult(
            check_name="beats_buy_and_hold", passed=True, description="not required by the promotion settings"
        )


@dg.asset(group_name="evaluation", compute_kind="mlflow")
def champion_model(
    context: dg.AssetExecutionContext,
    backtest: BacktestReport,
    stress_tests: StressReport,
    seed_sweep: SeedSweepReport,
    registered_model: RegisteredVersion,
    model_registry: MlflowRegistryResource,
) -> dg.Output[dict]:
    """The registry version holding alias ``champion``, moved here only when every gate check passed."""
    failed = [r.description for r in (*backtest.gate, *stress_tests.gate, *seed_sweep.gate) if not r.passed]
    if failed or stress_tests.version != registered_model.version:
        # Also guards materializations that run without the blocking checks upstream in the same run.
        reasons = "; ".join(failed) or f"stress tests are of version {stress_tests.version}"
        raise dg.Failure(description=f"version {backtest.version} failed the promotion gate: {reasons}")
    former = model_registry.version_for_alias(CHAMPION_ALIAS)
    if former and former != registered_model.version:
        model_registry.set_alias(former, PREVIOUS_ALIAS)
    model_registry.set_alias(registered_model.version, CHAMPION_ALIAS)
    context.log.info(
        f"{registered_model.name} v{registered_model.version} is now {CHAMPION_ALIAS} (was v{former})"
    )
    champion = {"model_name": registered_model.name, "version": registered_model.version, "previous": former}
    return dg.Output(champion, metadata={k: str(v) for k, v in champion.items()})


def _attribution_output(
    result: BacktestResult,
    dataset_splits: DatasetSplits,
    registered_model: RegisteredVersion,
    model_registry: MlflowRegistryResource,
) -> dg.Output:
    closes = dataset_splits.test.pivot(index="date", columns="tic", values="close")
    table = attribute_pnl(result.record, closes)
    summary = attribution_summary(table, float(result.equity.iloc[0]), result.benchmark_metrics.total_return)
    png = grouped_bars_png(
        table[["gross_pnl", "net_pnl"]], "Out-of-sample PnL per asset, before and after costs", "PnL"
    )
    model_registry.log_evaluation(
        registered_model.run_id,
        metrics={f"attribution_{k}": v for k, v in summary.items() if pd.notna(v)},
        files={"performance_attribution.png": png},
        tables={"performance_attribution.json": table.reset_index(names="tic").to_dict(orient="records")},
    )
    return dg.Output(
        table,
        output_name="performance_attribution",
        metadata={
            "per_asset": dg.MetadataValue.md(table.to_markdown(floatfmt=",.0f")),
            "summary": markdown_table([summary]),
            "pnl_per_asset": png_metadata(png),
        },
    )
