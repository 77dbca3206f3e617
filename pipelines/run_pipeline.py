"""``make run``: materialize the whole asset graph on the configured data and print a readable summary.

Runs are recorded in the Dagster instance under the state home, so ``dagster dev`` and ``mlflow ui`` on the
same folder show exactly what this command produced.
"""

from __future__ import annotations

import argparse
import os
import sys

from resources.state_home import STATE_HOME_ENV, StateHome


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


def summarize(result, home: StateHome, tracking_uri: str) -> tuple[str, bool]:
    """A plain-text summary of a full-pipeline run and whether anything other than the gate failed."""
    from resources.mlflow_registry import CHALLENGER_ALIAS, CHAMPION_ALIAS

    def output(name: str):
        try:
            return result.asset_value(name)
        except Exception:  # noqa: BLE001 - a step that did not run has no output
            return None

    lines = ["", "=" * 78, "RL trading pipeline — run summary", "=" * 78]
    raw = output("raw_daily_bars")
    validated = output("validated_daily_bars")
    if raw is not None:
        lines.append(f"Data source : {raw.source}")
        lines.append(f"Location    : {raw.location}")
    if validated is not None:
        lines.append(f"Tickers     : {', '.join(sorted(validated['tic'].unique()))}")
        lines.append(
            f"Date range  : {validated['date'].min().date()} .. {validated['date'].max().date()} "
            f"({validated['date'].nunique()} sessions, {len(validated)} bars)"
        )
    splits = output("dataset_splits")
    if splits is not None:
        s = splits.split
        lines.append(
            f"Periods     : train {s.train_start.date()}..{s.train_end.date()} | validation "
            f"{s.validation_start.date()}..{s.validation_end.date()} | test {s.test_start.date()}..{s.test_end.date()}"
        )

    evaluations = result.get_asset_check_evaluations()
    data_checks = [e for e in evaluations if e.asset_key.to_user_string() == "validated_daily_bars"]
    gate_checks = [
        e for e in evaluations if e.asset_key.to_user_string() in ("backtest", "stress_tests", "seed_sweep")
    ]
    passed = sum(e.passed for e in data_checks)
    lines.append("")
    lines.append(f"Data checks : {passed} passed, {len(data_checks) - passed} failed")
    for e in data_checks:
        if not e.passed:
            lines.append(f"  [{e.severity.value}] {e.check_name}: {e.description}")

    forecaster = output("cnn_lstm_model")
    if forecaster is not None:
        f = forecaster.forecaster
        lines.append("")
        lines.append(
            f"Forecaster  : CNN+LSTM {forecaster.version.name} v{forecaster.version.version}, best epoch "
            f"{f.best_epoch}, validation directional accuracy {f.directional_accuracy:.1%}, IC "
            f"{f.information_coefficient:+.3f}"
        )
    agent = output("trained_agent")
    version = output("registered_model")
    report = output("backtest")
    champion = output("champion_model")
    stress = output("stress_tests")
    sweep = output("seed_sweep")
    if agent is not None:
        lines.append("")
        lines.append(
            f"Training    : {agent.algorithm}, seed {agent.seed}, {agent.ppo_config.total_timesteps} timesteps, "
            f"MLflow run {agent.run_id}"
        )
    if agent is not None:
        spec = agent.env_spec
        if spec.engine == "fast":
            sim = spec.simulation
            lines.append(
                f"Environment : fast engine, {sim.execution.fill_timing} {sim.execution.order_type} fills, "
                f"commission {type(sim.cost_model.commission).__name__}, spread {sim.spread}, "
                f"impact {type(sim.cost_model.impact).__name__}, risk manager {'on' if sim.risk else 'off'}"
            )
        else:
            lines.append(
                f"Environment : FinRL StockTradingEnv, same-bar fills, {spec.finrl_cost_pct:.2%} costs"
            )
    if version is not None:
        aliases = [CHALLENGER_ALIAS] + ([CHAMPION_ALIAS] if champion is not None else [])
        lines.append(f"Model       : {version.name} version {version.version}, aliases: {', '.join(aliases)}")
    if report is not None:
        lines.append(
            f"Backtest    : out of sample, after costs ({report.trades} trades, costs {report.total_cost:,.0f})"
        )
        lines += _format_metrics_table(report)
        if report.record is not None:
            costs = report.record.cost_breakdown
            lines.append(
                "    costs: commission {commission:,.0f}, spread {spread_cost:,.0f}, impact {impact_cost:,.0f}; "
                "risk interventions: {n}".format(n=len(report.record.interventions), **costs)
            )
        lines.append("")
        lines.append(
            f"Promotion gate ({sum(e.passed for e in gate_checks)}/{len(gate_checks)} checks passed):"
        )
        for gate in report.gate:
            lines.append(f"  [{'PASS' if gate.passed else 'FAIL'}] {gate.name}: {gate.description}")
        for upstream in (stress, sweep):
            for gate in upstream.gate if upstream is not None else ():
                lines.append(f"  [{'PASS' if gate.passed else 'FAIL'}] {gate.name}: {gate.description}")
        if champion is not None:
            lines.append(
                f"Verdict     : PROMOTED — version {version.version} now holds alias '{CHAMPION_ALIAS}'"
            )
        else:
            lines.append(
                f"Verdict     : NOT PROMOTED — version {report.version} keeps alias '{CHALLENGER_ALIAS}' only; "
                f"'{CHAMPION_ALIAS}' is unchanged"
            )

    def gate_failure(event) -> bool:
        error = event.event_specific_data.error
        return (
            event.step_key == "backtest"
            and error is not None
            and error.cls_name == "DagsterAssetCheckFailedError"
        )

    if stress is not None:
        lines.append("")
        lines.append("Stress tests (agent return / max drawdown vs buy & hold return):")
        for scenario in stress.results:
            lines.append(
                f"  {scenario.name:<28}{scenario.total_return:>+8.1%} /{scenario.max_drawdown:>6.1%}   "
                f"b&h {scenario.benchmark_return:>+7.1%}"
            )
    if sweep is not None:
        lines.append("")
        lines.append(f"Seed variance ({len(sweep.table)} seeds, {sweep.n_trials} trials in the experiment):")
        stats = sweep.distribution
        lines.append(f"    {'metric':<20}{'min':>8}{'p25':>8}{'median':>8}{'max':>8}")
        for metric in ("validation_sharpe", "test_sharpe", "test_return", "test_max_drawdown"):
            row = stats.loc[metric]
            lines.append(
                f"    {metric:<20}{row['min']:>8.2f}{row['p25']:>8.2f}{row['median']:>8.2f}{row['max']:>8.2f}"
            )
    verdicts = output("candidate_verdicts")
    ensemble = output("agent_ensemble")
    if verdicts is not None:
        lines.append("")
        lines.append(
            f"Candidates  : gate verdict per candidate ({verdicts.n_trials} trials; buy & hold Sharpe "
            f"{verdicts.benchmark_sharpe:.2f})"
        )
        lines.append(
            f"    {'candidate':<20}{'runs':>5}{'SR':>7}{'p25 SR':>8}{'med SR':>8}{'worst DD':>10}{'DSR':>6}  verdict"
        )
        for row in verdicts.table().to_dict(orient="records"):
            lines.append(
                f"    {row['candidate']:<20}{row['runs']:>5}{row['sharpe']:>7.2f}{row['p25_sharpe']:>8.2f}{row['median_sharpe']:>8.2f}"
                f"{row['worst_drawdown']:>10.1%}{row['deflated_sharpe']:>6.2f}  {row['verdict']}"
            )
        if report is not None:
            failed = [
                g.name
                for g in (*report.gate, *(stress.gate if stress else ()), *(sweep.gate if sweep else ()))
                if not g.passed
            ]
            lines.append(
                f"    {'registered ' + (agent.algorithm if agent else ''):<20} v{report.version}: "
                + ("pass (promoted)" if champion is not None else "fail: " + ", ".join(failed))
            )
    if ensemble is not None:
        lines.append(
            f"Ensemble    : {ensemble.version.name} v{ensemble.version.version} (pyfunc, alias challenger), weights "
            + ", ".join(f"{k} {w:.2f}" for k, w in ensemble.weights.items())
        )
    walk = output("walk_forward")
    if walk is not None:
        lines.append(
            f"Walk-forward: {len(walk.windows)} windows, stitched out-of-sample Sharpe {walk.metrics.sharpe:.2f} "
            f"(return {walk.metrics.total_return:+.1%}) vs buy & hold {walk.benchmark_metrics.sharpe:.2f} "
            f"({walk.benchmark_metrics.total_return:+.1%})"
        )
    attribution = output("performance_attribution")
    if attribution is not None:
        gross, net = attribution["gross_pnl"].sum(), attribution["net_pnl"].sum()
        lines.append(f"Attribution : gross PnL {gross:,.0f}, costs {gross - net:,.0f}, net PnL {net:,.0f}")

    failed_steps = [
        e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE" and not gate_failure(e)
    ]
    gate_only = report is not None and not failed_steps
    if failed_steps:
        lines.append("")
        lines.append(f"FAILED steps: {', '.join(failed_steps)} (see the Dagster UI for details)")
        for e in result.all_events:
            if e.event_type_value == "STEP_FAILURE" and not gate_failure(e):
                info = e.event_specific_data.error
                lines.append(f"  {e.step_key}: {info.message.strip().splitlines()[-1] if info else ''}")

    home_export = f"{STATE_HOME_ENV}={home.root}"
    lines += [
        "",
        "Open the UIs on the same stores:",
        f"  Dagster : DAGSTER_HOME={home.dagster_home} {home_export} .venv/bin/dagster dev -w workspace.yaml"
        "   (or: make dagster-ui)",
        f"  MLflow  : .venv/bin/mlflow ui --backend-store-uri {tracking_uri} "
        f"--default-artifact-root {home.mlflow_artifact_root} --port 5000   (or: make mlflow-ui)",
        "=" * 78,
    ]
    return "\n".join(lines), gate_only or (report is not None and champion is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timesteps", type=int, default=None, help="PPO training budget (default 20000)")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default 42)")
    parser.add_argument(
        "--walk-forward-timesteps",
        type=int,
        default=None,
        help="PPO budget per walk-forward window (default 10000)",
    )
    parser.add_argument(
        "--zoo-timesteps", type=int, default=None, help="budget of each agent-zoo run (default 4000)"
    )
    args = parser.parse_args(argv)

    home = StateHome.from_env().prepare()
    os.environ["DAGSTER_HOME"] = str(home.dagster_home)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

    from dagster import DagsterInstance

    from pipelines.definitions import defs

    run_config: dict = {"ops": {}}
    training = {k: v for k, v in (("total_timesteps", args.timesteps), ("seed", args.seed)) if v is not None}
    if training:
        run_config["ops"]["trained_agent"] = {"config": training}
    if args.walk_forward_timesteps is not None:
        run_config["ops"]["walk_forward"] = {"config": {"timesteps_per_window": args.walk_forward_timesteps}}
    if args.zoo_timesteps is not None:
        run_config["ops"]["agent_zoo"] = {"config": {"timesteps": args.zoo_timesteps}}
    instance = DagsterInstance.get()
    job = defs.resolve_job_def("full_pipeline")
    result = job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or home.mlflow_tracking_uri
    summary, ok = summarize(result, home, tracking_uri)
    print(summary)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
