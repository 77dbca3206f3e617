"""``make run``: materialize the whole asset graph on the configured data and print a readable summary.

Runs are recorded in the Dagster instance under the state home, so ``dagster dev`` and ``mlflow ui`` on the
same folder show exactly what this command produced.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, NoReturn

# Imported where used: importing the resources package imports Dagster's MLflow integration, whose beta notice
# the quiet console silences first.
if TYPE_CHECKING:
    from resources.state_home import StateHome

RULE = "=" * 78
DEBUG_FLAG = "--debug"
DATA_ASSET = "validated_daily_bars"
GATE_ASSETS = ("backtest", "stress_tests", "seed_sweep")


def _stored_value(result, asset: str) -> Any:
    """An asset's value from an in-process run, ``None`` when its step did not run (or failed)."""
    try:
        return result.asset_value(asset)
    except Exception:  # noqa: BLE001 - a step that did not run has no output
        return None


@dataclass(frozen=True)
class RunOutputs:
    """The outputs a summary reads, ``None`` for each asset whose step did not run (or failed)."""

    raw_daily_bars: Any = None
    validated_daily_bars: Any = None
    features: Any = None
    dataset_splits: Any = None
    cnn_lstm_model: Any = None
    trained_agent: Any = None
    candidate_leaderboard: Any = None
    registered_model: Any = None
    backtest: Any = None
    champion_model: Any = None
    stress_tests: Any = None
    seed_sweep: Any = None
    candidate_verdicts: Any = None
    agent_ensemble: Any = None
    walk_forward: Any = None
    performance_attribution: Any = None
    sector_map: Any = None
    classical_allocators: Any = None
    sized_candidates: Any = None
    execution_comparison: Any = None
    market_regimes: Any = None

    @classmethod
    def of(cls, result) -> RunOutputs:
        return cls(**{f.name: _stored_value(result, f.name) for f in fields(cls)})

    def gates(self) -> tuple:
        """Every gate result of the run: the backtest's, then the stress tests' and the seed sweep's."""
        upstream = (self.stress_tests, self.seed_sweep)
        return (*self.backtest.gate, *(g for u in upstream if u is not None for g in u.gate))


def _data_lines(out: RunOutputs) -> list[str]:
    lines = []
    raw, validated, splits = out.raw_daily_bars, out.validated_daily_bars, out.dataset_splits
    if raw is not None:
        lines.append(f"Data source : {raw.source}")
        lines.append(f"Location    : {raw.location}")
    if validated is not None:
        lines.append(f"Tickers     : {', '.join(sorted(validated['tic'].unique()))}")
        lines.append(
            f"Date range  : {validated['date'].min().date()} .. {validated['date'].max().date()} "
            f"({validated['date'].nunique()} sessions, {len(validated)} bars)"
        )
        lines += _coverage_lines(validated, out.features)
    if splits is not None:
        s = splits.split
        lines.append(
            f"Periods     : train {s.train_start.date()}..{s.train_end.date()} | validation "
            f"{s.validation_start.date()}..{s.validation_end.date()} | test {s.test_start.date()}..{s.test_end.date()}"
        )
    return lines


def _coverage_lines(validated, features) -> list[str]:
    """Each ticker's first and last date (and listing status), then every ticker the features exclude and why."""
    from trading_core.data.coverage import excluded_tickers, universe_coverage
    from trading_core.features.batch import indicator_warm_up

    coverage = universe_coverage(validated, features, indicator_warm_up())
    lines = []
    for index, row in enumerate(coverage.itertuples()):
        label = "Coverage    :" if index == 0 else " " * 13  # the label once, then aligned rows
        plural = "s" if row.missing_bars > 1 else ""
        missing = f", {row.missing_bars} missing bar{plural}" if row.missing_bars else ""
        lines.append(
            f"{label} {row.tic} {row.first_date.date()}..{row.last_date.date()} ({row.status}{missing})"
        )
    excluded = excluded_tickers(coverage)
    lines += [f"Excluded    : {tic}: {reason}" for tic, reason in excluded.items()]
    return lines


def _data_check_lines(evaluations) -> list[str]:
    data_checks = [e for e in evaluations if e.asset_key.to_user_string() == DATA_ASSET]
    passed = sum(e.passed for e in data_checks)
    lines = ["", f"Data checks : {passed} passed, {len(data_checks) - passed} failed"]
    lines += [f"  [{e.severity.value}] {e.check_name}: {e.description}" for e in data_checks if not e.passed]
    return lines


def _forecaster_lines(forecaster) -> list[str]:
    if forecaster is None:
        return []
    f = forecaster.forecaster
    return [
        "",
        f"Forecaster  : CNN+LSTM {forecaster.version.name} v{forecaster.version.version}, best epoch "
        f"{f.best_epoch}, validation directional accuracy {f.directional_accuracy:.1%}, IC "
        f"{f.information_coefficient:+.3f}",
    ]


def _environment_line(spec) -> str:
    if spec.engine != "fast":
        return f"Environment : FinRL StockTradingEnv, same-bar fills, {spec.finrl_cost_pct:.2%} costs"
    sim = spec.simulation
    return (
        f"Environment : fast engine, {sim.execution.fill_timing} {sim.execution.order_type} fills, "
        f"commission {type(sim.cost_model.commission).__name__}, spread {sim.spread}, "
        f"impact {type(sim.cost_model.impact).__name__}, risk manager {'on' if sim.risk else 'off'}"
    )


def _training_lines(agent) -> list[str]:
    if agent is None:
        return []
    return [
        "",
        f"Training    : {agent.algorithm}, seed {agent.seed}, {agent.ppo_config.total_timesteps} timesteps, "
        f"MLflow run {agent.run_id}",
        _environment_line(agent.env_spec),
    ]


def _promoted(decision) -> bool:
    """Whether ``champion_model`` ran and moved alias champion (a rejection completes it as not promoted)."""
    return decision is not None and bool(decision["promoted"])


def _model_lines(version, champion) -> list[str]:
    from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS

    if version is None:
        return []
    aliases = [CHALLENGER_ALIAS] + ([CHAMPION_ALIAS] if _promoted(champion) else [])
    return [
        f"Model       : {version.name} version {version.version} = {version.candidate} seed {version.seed} "
        f"(validation's pick from the leaderboard), aliases: {', '.join(aliases)}"
    ]


def _leaderboard_lines(report) -> list[str]:
    if report is None:
        return []
    table = report.table
    width = max(26, *(len(name) + 1 for name in table["candidate"]))
    lines = [
        "",
        f"Leaderboard : every candidate after costs, ranked on validation ({report.board.n_trials} trials; "
        "SR = Sharpe, p25/med over runs)",
        f"    {'candidate':<{width}}{'kind':<10}{'runs':>4}{'val p25':>8}{'test p25':>9}{'test med':>9}"
        f"{'return':>8}{'maxDD':>7}{'halted':>7}{'turn/yr':>8}{'cost/yr':>8}{'DSR':>6}",
    ]

    def number(value: float, fmt: str) -> str:
        return "-" if value != value else fmt.format(value)  # NaN: no such run (ensembles on validation)

    for row in table.to_dict(orient="records"):
        lines.append(
            f"    {row['candidate']:<{width}}{row['kind']:<10}{row['runs']:>4}"
            f"{number(row['validation_sharpe_p25'], '{:.2f}'):>8}{number(row['test_sharpe_p25'], '{:.2f}'):>9}"
            f"{number(row['test_sharpe_median'], '{:.2f}'):>9}{number(row['test_return_median'], '{:+.1%}'):>8}"
            f"{number(row['test_max_drawdown_worst'], '{:.1%}'):>7}{row['test_days_halted_median']:>7.0f}"
            f"{number(row['test_turnover_median'], '{:.1f}x'):>8}{number(row['test_cost_drag_median'], '{:.2%}'):>8}"
            f"{number(row['deflated_sharpe'], '{:.2f}'):>6}"
        )
    lines.append(
        f"    validation picks {report.pick or 'nothing'} to register; allocator to beat: "
        f"{report.allocator_pick or 'none'} (test Sharpe "
        f"{number(report.allocator_test_sharpe if report.allocator_test_sharpe is not None else float('nan'), '{:.2f}')}), "
        f"buy & hold test Sharpe {report.benchmark_test_sharpe:.2f}"
    )
    return lines


def _format_metrics_table(report) -> list[str]:
    rows = [
        ("total return", "total_return", "{:+.1%}"),
        ("annual return", "annual_return", "{:+.1%}"),
        ("Sharpe", "sharpe", "{:.2f}"),
        ("Sortino", "sortino", "{:.2f}"),
        ("Calmar", "calmar", "{:.2f}"),
        ("max drawdown", "max_drawdown", "{:.1%}"),
        ("win rate", "win_rate", "{:.1%}"),
        ("VaR95 (1 day)", "var_95", "{:.2%}"),
        ("CVaR95 (1 day)", "cvar_95", "{:.2%}"),
        ("prob. Sharpe>0", "probabilistic_sharpe", "{:.1%}"),
        ("turnover / yr", "turnover", "{:.1f}x"),
        ("cost drag / yr", "cost_drag", "{:.2%}"),
    ]
    agent, bench = report.metrics.as_dict(), report.benchmark_metrics.as_dict()
    lines = [f"    {'metric':<16}{'agent':>12}{'buy & hold':>14}"]
    lines += [
        f"    {label:<16}{fmt.format(agent[key]):>12}{fmt.format(bench[key]):>14}" for label, key, fmt in rows
    ]
    return lines


def _backtest_lines(report) -> list[str]:
    if report is None:
        return []
    lines = [
        f"Backtest    : out of sample, after costs ({report.trades} trades, costs {report.total_cost:,.0f})"
    ]
    lines += _format_metrics_table(report)
    if report.record is not None:
        costs = report.record.cost_breakdown
        lines.append(
            "    costs: commission {commission:,.0f}, spread {spread_cost:,.0f}, impact {impact_cost:,.0f}; "
            "risk interventions: {n}".format(n=len(report.record.interventions), **costs)
        )
        halts = report.record.halt_statistics
        lines.append(
            f"    risk states: {halts.days_halted} days halted, {halts.halts} halts, {halts.rearms} re-arms"
        )
    return lines


def _gate_lines(out: RunOutputs, evaluations) -> list[str]:
    from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS

    report = out.backtest
    if report is None:
        return []
    gate_checks = [e for e in evaluations if e.asset_key.to_user_string() in GATE_ASSETS]
    lines = ["", f"Promotion gate ({sum(e.passed for e in gate_checks)}/{len(gate_checks)} checks passed):"]
    lines += [
        f"  [{'PASS' if gate.passed else 'FAIL'}] {gate.name}: {gate.description}" for gate in out.gates()
    ]
    decision = out.champion_model
    if _promoted(decision):
        lines.append(
            f"Verdict     : PROMOTED — version {out.registered_model.version} now holds alias '{CHAMPION_ALIAS}'"
        )
    else:
        lines.append(
            f"Verdict     : NOT PROMOTED — version {report.version} keeps alias '{CHALLENGER_ALIAS}' only; "
            f"'{CHAMPION_ALIAS}' is unchanged"
        )
    if decision is not None and not decision["promoted"]:
        holder = decision["champion"]
        lines += [f"  because {reason}" for reason in decision["reasons"]]
        lines.append(f"  '{CHAMPION_ALIAS}' stays with {f'version {holder}' if holder else 'no version'}")
    return lines


def _stress_lines(stress) -> list[str]:
    if stress is None:
        return []
    lines = ["", "Stress tests (agent return / max drawdown vs buy & hold return):"]
    lines += [
        f"  {scenario.name:<28}{scenario.total_return:>+8.1%} /{scenario.max_drawdown:>6.1%}   "
        f"b&h {scenario.benchmark_return:>+7.1%}"
        for scenario in stress.results
    ]
    return lines


def _seed_lines(sweep) -> list[str]:
    if sweep is None:
        return []
    lines = ["", f"Seed variance ({len(sweep.table)} seeds, {sweep.n_trials} trials in the experiment):"]
    lines.append(f"    {'metric':<20}{'min':>8}{'p25':>8}{'median':>8}{'max':>8}")
    for metric in ("validation_sharpe", "test_sharpe", "test_return", "test_max_drawdown"):
        row = sweep.distribution.loc[metric]
        lines.append(
            f"    {metric:<20}{row['min']:>8.2f}{row['p25']:>8.2f}{row['median']:>8.2f}{row['max']:>8.2f}"
        )
    return lines


def _candidate_lines(out: RunOutputs) -> list[str]:
    verdicts, report, registered = out.candidate_verdicts, out.backtest, out.registered_model
    if verdicts is None:
        return []
    lines = [
        "",
        f"Candidates  : gate verdict per candidate ({verdicts.n_trials} trials; buy & hold Sharpe "
        f"{verdicts.benchmark_sharpe:.2f})",
        f"    {'candidate':<20}{'runs':>5}{'SR':>7}{'p25 SR':>8}{'med SR':>8}{'worst DD':>10}{'DSR':>6}  verdict",
    ]
    for row in verdicts.table().to_dict(orient="records"):
        lines.append(
            f"    {row['candidate']:<20}{row['runs']:>5}{row['sharpe']:>7.2f}{row['p25_sharpe']:>8.2f}{row['median_sharpe']:>8.2f}"
            f"{row['worst_drawdown']:>10.1%}{row['deflated_sharpe']:>6.2f}  {row['verdict']}"
        )
    if report is not None:
        failed = [g.name for g in out.gates() if not g.passed]
        lines.append(
            f"    {'registered ' + (registered.candidate if registered else ''):<20} v{report.version}: "
            + ("pass (promoted)" if _promoted(out.champion_model) else "fail: " + ", ".join(failed))
        )
    passing = [row for row in verdicts.table().to_dict(orient="records") if row["verdict"] == "pass"]
    if passing:
        lines.append("    Passing candidates: only validation's pick is registered and gated for promotion")
        lines += [f"      {row['candidate']}: {row.get('promotion') or 'not registered'}" for row in passing]
    return lines


def _ensemble_lines(ensemble) -> list[str]:
    if ensemble is None:
        return []
    return [
        f"Ensemble    : {ensemble.version.name} v{ensemble.version.version} (pyfunc, alias challenger), weights "
        + ", ".join(f"{k} {w:.2f}" for k, w in ensemble.weights.items())
    ]


def _walk_forward_lines(walk) -> list[str]:
    if walk is None:
        return []
    return [
        f"Walk-forward: {len(walk.windows)} windows, stitched out-of-sample Sharpe {walk.metrics.sharpe:.2f} "
        f"(return {walk.metrics.total_return:+.1%}) vs buy & hold {walk.benchmark_metrics.sharpe:.2f} "
        f"({walk.benchmark_metrics.total_return:+.1%})"
    ]


def _regime_line(regimes, leaderboard) -> list[str]:
    if regimes is None:
        return []
    from trading_core.evaluation.leaderboard import BENCHMARK

    n = regimes.config.n_regimes
    test = None
    if leaderboard is not None:
        test_dates = leaderboard.board.representative(BENCHMARK).test.returns.index
        test = regimes.frame.reindex(test_dates).dropna(subset=["regime"])
    line = f"Regimes     : {n}-state HMM on market return and volatility, fit on training dates, filtered forward"
    if test is not None and len(test):
        shares = test["regime"].value_counts(normalize=True).reindex(range(n), fill_value=0.0)
        line += "; test days per regime " + " / ".join(f"{share:.0%}" for share in shares)
    if leaderboard is not None and leaderboard.board.regimes is not None:
        shown = [name for name in (leaderboard.pick, BENCHMARK) if name]

        def sharpes(name: str) -> str:
            return " / ".join(f"{value:.2f}" for value in leaderboard.board.regime_sharpes(name).values())

        line += "; test Sharpe per regime (calm first) " + ", ".join(
            f"{name} {sharpes(name)}" for name in shown
        )
    return [line]


def _sector_line(sectors, allocators) -> list[str]:
    if sectors is None:
        return []
    counts = sectors["sector"].value_counts()
    unclassified = sorted(sectors.loc[sectors["source"] == "unclassified", "tic"])
    line = (
        f"Sectors     : {len(sectors)} tickers in {len(counts)} sectors ("
        + ", ".join(f"{name} {count}" for name, count in counts.items())
        + f"); unclassified: {', '.join(unclassified) or 'none'}"
    )
    rotation = {run.candidate: run for run in allocators.runs} if allocators is not None else {}
    if "sector_momentum" in rotation and "equal_weight" in rotation:
        line += (
            f"; sector_momentum test Sharpe {rotation['sector_momentum'].test.sharpe:.2f} vs equal weight "
            f"{rotation['equal_weight'].test.sharpe:.2f}"
        )
    return [line]


def _sizing_line(sized) -> list[str]:
    if sized is None:
        return []
    return ["Sizing      : " + "; ".join(sized.best_lines())]


def _execution_line(table) -> list[str]:
    if table is None:
        return []
    if table.empty:
        return ["Execution   : executor comparison skipped (no intraday file: set RL_TRADING_SHARED_DATA)"]
    parts = []
    for bar_length, rows in table.groupby("bar_length", sort=False):
        figures = ", ".join(
            f"{row.executor} {row.shortfall_mean_bps:.1f} bps (fill {row.fill_rate:.0%})"
            for row in rows.itertuples()
        )
        parts.append(f"{bar_length}: {figures}")
    return ["Execution   : mean shortfall vs the decision close, " + "; ".join(parts)]


def _start_mode_line(walk) -> list[str]:
    comparison = getattr(walk, "comparison", None)
    if comparison is None:
        return []
    return [
        f"Start mode  : weekly retraining would use {comparison.verdict} ({comparison.reason}); fine-tune "
        f"{comparison.warm_start_timesteps} vs scratch {comparison.scratch_timesteps} timesteps, "
        f"{sum(comparison.warm_start_seconds):.0f} s vs {sum(comparison.scratch_seconds):.0f} s"
    ]


def _attribution_lines(attribution) -> list[str]:
    if attribution is None:
        return []
    gross, net = attribution["gross_pnl"].sum(), attribution["net_pnl"].sum()
    return [f"Attribution : gross PnL {gross:,.0f}, costs {gross - net:,.0f}, net PnL {net:,.0f}"]


def _is_gate_failure(event) -> bool:
    """A gate step (backtest, stress tests, seed sweep) fails when a blocking gate check does: that is a
    verdict, not a broken step."""
    error = event.event_specific_data.error
    return (
        event.step_key in GATE_ASSETS
        and error is not None
        and error.cls_name == "DagsterAssetCheckFailedError"
    )


def failed_steps(result) -> list:
    """The run's step failures other than the promotion gate's."""
    return [e for e in result.all_events if e.event_type_value == "STEP_FAILURE" and not _is_gate_failure(e)]


def step_failure_line(event) -> str:
    """A failed step's console line: the gate's verdict, or the failure's cause in one line (no traceback)."""
    if _is_gate_failure(event):
        return "rejected by the promotion gate (a verdict, not an error: the summary says why)"
    info = event.event_specific_data.error
    return f"FAILED: {failure_cause(info) if info is not None else 'no error recorded'}"


def _validation_error_text(text: str) -> str:
    """A pydantic ValidationError's errors as one line: pydantic writes each as a line naming the field (none for a
    model-level error), then its ``Value error, message [type=...]`` line."""
    parts, field = [], None
    for line in (line.strip() for line in text.splitlines()[1:]):
        if "[type=" in line:
            message = line.split(" [type=")[0].removeprefix("Value error, ")
            parts.append(f"{field}: {message}" if field else message)
            field = None
        elif line and not line.startswith("For further information"):
            field = line
    return "; ".join(parts)


def failure_cause(error) -> str:
    """The innermost exception of a Dagster error info as one line, ``Type: message`` (never Dagster's
    ``Error occurred while executing op`` wrapper around it)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    lines = error.message.strip().splitlines()
    # The message starts with the qualified class name ("pkg.module.ValueError: ..."); keep what follows it.
    heading = re.compile(rf"^(?:[\w.]+\.)?{re.escape(error.cls_name)}(?::\s?(.*))?$")
    for index, line in enumerate(lines):
        match = heading.match(line)
        if match:
            lines = [match.group(1) or "", *lines[index + 1 :]]
            break
    text = "\n".join(lines).strip()
    if error.cls_name == "ValidationError" and "\n" in text:
        text = _validation_error_text(text)
    first = text.splitlines()[0].strip() if text else ""
    return f"{error.cls_name}: {first}" if first else error.cls_name


def _failure_lines(failures) -> list[str]:
    if not failures:
        return []
    lines = ["", f"FAILED steps: {', '.join(e.step_key for e in failures)} (see the Dagster UI for details)"]
    for e in failures:
        info = e.event_specific_data.error
        cause = failure_cause(info) if info is not None else "no error recorded"
        lines.append(f"  step '{e.step_key}' failed: {cause}")
    return lines


def _ui_lines(home: StateHome, tracking_uri: str) -> list[str]:
    from resources.state_home import STATE_HOME_ENV

    home_export = f"{STATE_HOME_ENV}={home.root}"
    return [
        "",
        "Open the UIs on the same stores:",
        f"  Dagster : DAGSTER_HOME={home.dagster_home} {home_export} .venv/bin/dagster dev -w workspace.yaml"
        "   (or: make dagster-ui)",
        f"  MLflow  : .venv/bin/mlflow ui --backend-store-uri {tracking_uri} "
        f"--default-artifact-root {home.mlflow_artifact_root} --port 5000   (or: make mlflow-ui)",
    ]


def summarize(result, home: StateHome, tracking_uri: str) -> tuple[str, bool]:
    """A plain-text summary of a full-pipeline run and whether anything other than the gate failed."""
    out = RunOutputs.of(result)
    evaluations = result.get_asset_check_evaluations()
    failures = failed_steps(result)
    lines = [
        "",
        RULE,
        "RL trading pipeline — run summary",
        RULE,
        *_data_lines(out),
        *_data_check_lines(evaluations),
        *_forecaster_lines(out.cnn_lstm_model),
        *_training_lines(out.trained_agent),
        *_leaderboard_lines(out.candidate_leaderboard),
        *_model_lines(out.registered_model, out.champion_model),
        *_backtest_lines(out.backtest),
        *_gate_lines(out, evaluations),
        *_stress_lines(out.stress_tests),
        *_seed_lines(out.seed_sweep),
        *_candidate_lines(out),
        *_ensemble_lines(out.agent_ensemble),
        *_walk_forward_lines(out.walk_forward),
        *_start_mode_line(out.walk_forward),
        *_attribution_lines(out.performance_attribution),
        *_regime_line(out.market_regimes, out.candidate_leaderboard),
        *_sector_line(out.sector_map, out.classical_allocators),
        *_sizing_line(out.sized_candidates),
        *_execution_line(out.execution_comparison),
        *_failure_lines(failures),
        *_ui_lines(home, tracking_uri),
        RULE,
    ]
    # Only the gate may fail (a rejected candidate), or nothing at all (a promoted one).
    ok = out.backtest is not None and (not failures or _promoted(out.champion_model))
    return "\n".join(lines), ok


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def _whole_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number") from None


def _day(value: str) -> date:
    return datetime.strptime(value, "%Y-%m-%d").date()


def _iso_date(value: str) -> str:
    try:
        _day(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a date YYYY-MM-DD") from None
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Budget, seed, split and allow-list overrides; each default shown is the one the asset's Dagster config
    falls back to. A value that does not parse ends the program (one line, exit 2); ranges and the order of dates
    are checked by :func:`argument_problems`."""
    from trading_assets.evaluation import WalkForwardSettings
    from trading_assets.features import SplitSettings
    from trading_assets.training import AgentZooSettings, TrainingSettings

    training, walk_forward, zoo = TrainingSettings(), WalkForwardSettings(), AgentZooSettings()
    split = SplitSettings()
    parser = _OneLineParser(prog="make run", description=__doc__)
    parser.add_argument(
        "--timesteps",
        type=_whole_number,
        default=None,
        help=f"PPO training budget (default {training.total_timesteps})",
    )
    parser.add_argument(
        "--seed", type=_whole_number, default=None, help=f"training seed (default {training.seed})"
    )
    parser.add_argument(
        "--walk-forward-timesteps",
        type=_whole_number,
        default=None,
        help=f"PPO budget per walk-forward window (default {walk_forward.timesteps_per_window})",
    )
    parser.add_argument(
        "--zoo-timesteps",
        type=_whole_number,
        default=None,
        help=f"budget of each agent-zoo run (default {zoo.timesteps})",
    )
    parser.add_argument(
        "--train-end",
        type=_iso_date,
        default=None,
        help=f"last training date, YYYY-MM-DD (default: the first {split.train_fraction * 100:.0f}%% of the dates)",
    )
    parser.add_argument(
        "--validation-end",
        type=_iso_date,
        default=None,
        help="last validation date, YYYY-MM-DD; the test period runs from the next date to the end (default: "
        f"the next {split.validation_fraction * 100:.0f}%% of the dates)",
    )
    parser.add_argument(
        "--split-allow-list",
        default=None,
        metavar="CSV",
        help="CSV file (columns tic, date) of real corporate events or crashes the unadjusted-split rule lets pass",
    )
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help="print Dagster's full DEBUG event log and the libraries' own output instead of one line per step",
    )
    return parser.parse_args(argv)


# A seed seeds NumPy, whose seeds are unsigned 32-bit integers.
_SEED_LIMIT = 2**32
_BUDGET_FLAGS = (
    ("--timesteps", "timesteps"),
    ("--walk-forward-timesteps", "walk_forward_timesteps"),
    ("--zoo-timesteps", "zoo_timesteps"),
)


def _domain_problems(args: argparse.Namespace, skip: set[str]) -> list[str]:
    """Build the Dagster configs and domain objects each flag feeds, the way its asset does, so any rule of theirs
    refuses the run now rather than when the step starts; flags in ``skip`` are already refused."""
    from dataclasses import replace

    from pydantic import ValidationError

    from trading_assets.evaluation import WalkForwardSettings
    from trading_assets.training import AgentZooSettings, TrainingSettings
    from trading_assets.validation import ValidationSettings

    def walk_forward_recipe(timesteps: int) -> object:
        window = WalkForwardSettings(timesteps_per_window=timesteps).to_domain()
        ppo = replace(TrainingSettings().ppo_config(), total_timesteps=window.timesteps_per_window)
        return ppo.as_agent_config()

    # Each as its asset builds it, down to the agents' configs, which check the budgets.
    checks = (
        (
            "--timesteps",
            args.timesteps,
            lambda v: TrainingSettings(total_timesteps=v).ppo_config().as_agent_config(),
        ),
        ("--walk-forward-timesteps", args.walk_forward_timesteps, walk_forward_recipe),
        (
            "--zoo-timesteps",
            args.zoo_timesteps,
            lambda v: AgentZooSettings(timesteps=v).to_domain().configs(),
        ),
        (
            "--split-allow-list",
            args.split_allow_list,
            lambda v: ValidationSettings(allowed_jumps_path=v).to_domain().allowed_jump_keys(),
        ),
    )
    problems = []
    for flag, value, build in checks:
        if value is None or flag in skip:
            continue
        try:
            build(value)
        except ValidationError as error:
            problems.append(
                f"{flag} {value}: {'; '.join(e['msg'].removeprefix('Value error, ') for e in error.errors())}"
            )
        except ValueError as error:  # AllowListError is one
            problems.append(f"{flag} {value}: {str(error).splitlines()[0]}")
    return problems


def _split_date_problems(
    args: argparse.Namespace, start: str | None, end: str | None, window: tuple | None
) -> list[str]:
    """``start < --train-end < --validation-end < end``: the bounds given, else the data's first and last bar."""
    from pipelines.resources_by_env import MARKET_DATA_ENV

    first = (_day(start), f"{MARKET_DATA_ENV['start_date']} {start}") if start else None
    last = (_day(end), f"{MARKET_DATA_ENV['end_date']} {end}") if end else None
    if window is not None:
        first = first or (window[0].date(), f"the first bar {window[0].date()}")
        last = last or (window[1].date(), f"the last bar {window[1].date()}")
    train_end = _day(args.train_end) if args.train_end else None
    validation_end = _day(args.validation_end) if args.validation_end else None
    problems = []
    if train_end and first and train_end <= first[0]:
        problems.append(f"--train-end {args.train_end}: expected a date after {first[1]}")
    if train_end and last and train_end >= last[0]:
        problems.append(f"--train-end {args.train_end}: expected a date before {last[1]}")
    if validation_end and train_end and validation_end <= train_end:
        problems.append(
            f"--validation-end {args.validation_end}: expected a date after --train-end {args.train_end}"
        )
    elif validation_end and first and validation_end <= first[0]:
        problems.append(f"--validation-end {args.validation_end}: expected a date after {first[1]}")
    if validation_end and last and validation_end >= last[0]:
        problems.append(
            f"--validation-end {args.validation_end}: expected a date before {last[1]} (the test period follows it)"
        )
    return problems


def argument_problems(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of the flags and the environment, one line each, found without touching any store.

    Budgets must be > 0, the seed in [0, 2**32), the split dates ordered between the data's bounds, the allow-list
    a readable CSV; then the Dagster configs and domain objects the flags feed are built, and the environment
    checked (:func:`pipelines.resources_by_env.environment_problems`).
    """
    from pipelines.resources_by_env import deployment, environment_problems, market_data_settings
    from resources.market_data import source_window

    environ = os.environ if environ is None else environ
    problems = [
        f"{flag} {getattr(args, name)}: expected a whole number > 0"
        for flag, name in _BUDGET_FLAGS
        if getattr(args, name) is not None and getattr(args, name) <= 0
    ]
    if args.seed is not None and not 0 <= args.seed < _SEED_LIMIT:
        problems.append(f"--seed {args.seed}: expected a whole number in [0, {_SEED_LIMIT})")
    problems += _domain_problems(args, skip={problem.split()[0] for problem in problems})
    environment = environment_problems(environ)
    problems += environment
    # The bounds of the split dates are the window's, unless the environment describing it is broken.
    start = end = window = None
    if not environment:
        settings = market_data_settings(deployment(environ), environ)
        start, end, window = settings.get("start_date"), settings.get("end_date"), source_window(settings)
    return problems + _split_date_problems(args, start, end, window)


def run_config_for(args: argparse.Namespace) -> dict:
    """The run config of the flags given; an omitted flag leaves the asset's config default in force."""
    run_config: dict = {"ops": {}}
    training = {k: v for k, v in (("total_timesteps", args.timesteps), ("seed", args.seed)) if v is not None}
    if training:
        run_config["ops"]["trained_agent"] = {"config": training}
    if args.walk_forward_timesteps is not None:
        run_config["ops"]["walk_forward"] = {"config": {"timesteps_per_window": args.walk_forward_timesteps}}
    if args.zoo_timesteps is not None:
        run_config["ops"]["agent_zoo"] = {"config": {"timesteps": args.zoo_timesteps}}
    split = {k: v for k, v in (("train_end", args.train_end), ("validation_end", args.validation_end)) if v}
    if split:
        run_config["ops"]["dataset_splits"] = {"config": split}
    if getattr(args, "split_allow_list", None):
        run_config["ops"]["validated_daily_bars"] = {"config": {"allowed_jumps_path": args.split_allow_list}}
    return run_config


def record_retraining_weeks(instance, raw) -> str | None:
    """Add the weeks of the bars this run read as partitions of ``weekly_retraining`` (what new_market_data_sensor
    does each hour), so the Partitions tab lists them after the first run; one line saying what it holds."""
    from zoneinfo import ZoneInfo

    from pipelines.jobs import (
        RETRAINING_TIMEZONE,
        RETRAINING_WEEKS,
        apply_partition_requests,
        retraining_week_requests,
    )

    if raw is None:
        return None
    today = datetime.now(ZoneInfo(RETRAINING_TIMEZONE)).date()
    apply_partition_requests(instance, retraining_week_requests(instance, raw.frame["date"], today))
    weeks = sorted(instance.get_dynamic_partitions(RETRAINING_WEEKS.name))
    if not weeks:
        return None
    return (
        f"weekly_retraining: {len(weeks)} week partitions ({RETRAINING_WEEKS.name}), "
        f"{weeks[0]} .. {weeks[-1]}, each cut at its week's last trading day"
    )


def _wants_debug(argv: list[str] | None) -> bool:
    """Whether ``--debug`` is given, known before the imports that warn (argparse would import them first)."""
    return DEBUG_FLAG in (sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    debug = _wants_debug(argv)
    if not debug:
        from pipelines.console import quiet_console

        quiet_console()
    args = parse_args(argv)
    # Every bad flag or variable is refused here, before the state home, Dagster or MLflow is touched.
    problems = argument_problems(args)
    if problems:
        print("\n".join(f"make run: {problem}" for problem in problems), file=sys.stderr)
        return 2
    from resources.state_home import StateHome

    home = StateHome.from_env()
    os.environ["DAGSTER_HOME"] = str(home.dagster_home)
    home.prepare()  # after DAGSTER_HOME: the instance's schema is created under the home's lock too

    from dagster import DagsterInstance

    from pipelines.console import CONSOLE_LOGGERS, DEBUG_LOGGERS, console_job
    from pipelines.definitions import defs

    instance = DagsterInstance.get()
    job = defs.resolve_job_def("full_pipeline")
    run_config = {**run_config_for(args), **(DEBUG_LOGGERS if debug else CONSOLE_LOGGERS)}
    if not debug:
        job = console_job(job, step_failure_line)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or home.mlflow_tracking_uri
    # One retraining run at a time on this home; the summary reads the stored values, so it is written
    # before another run may replace them.
    with home.retraining_run(instance) as run_tags:
        print(
            f"make run: {job.name}, {len(job.nodes_in_topological_order)} steps, state home {home.root} "
            f"(every event in the Dagster UI; {DEBUG_FLAG} prints them here)",
            flush=True,
        )
        result = job.execute_in_process(
            instance=instance, run_config=run_config, raise_on_error=False, tags=run_tags
        )
        summary, ok = summarize(result, home, tracking_uri)
        weeks = record_retraining_weeks(instance, _stored_value(result, "raw_daily_bars"))
    if weeks:
        print(weeks)
    print(summary)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
