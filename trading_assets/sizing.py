"""Stage 4b: the sizing layer measured — classical allocators and the trained recipe re-sized by fractional Kelly,
risk parity, inverse volatility and volatility targeting, against the same candidates unsized.

Sizing reads trailing returns up to each decision's close only and trades only when the candidate trades; the
risk manager reviews every sized target. Validation and test are both reported; nothing here chooses.
"""

from dataclasses import replace

import dagster as dg
import pandas as pd

from resources.mlflow_registry import MlflowRegistryResource
from trading_assets.config_defaults import default_of
from trading_assets.metadata import markdown_table
from trading_assets.selection import AllocatorReport, allocator_market, recipe_name
from trading_assets.training import TrainedAgent, agent_market
from trading_core.allocators.config import ALLOCATORS
from trading_core.data.splits import DatasetSplits
from trading_core.evaluation.allocator_backtests import simulation_of
from trading_core.evaluation.backtester import EventDrivenBacktester
from trading_core.evaluation.sizing_overlays import (
    SizedCandidates,
    backtest_sized,
    backtest_sized_allocator,
    every_sizing,
    sized_candidate_runs,
    sizing_comparison,
)
from trading_core.market.sizing import SIZING_MODES, SizingConfig


class SizingSettings(dg.Config):
    """Which candidates are re-sized and how (defaults: :class:`SizingConfig`)."""

    modes: list[str] = list(SIZING_MODES[1:])
    allocators: list[str] = ["equal_weight", "risk_parity", "momentum"]
    size_recipe_agent: bool = True
    lookback: int = default_of(SizingConfig, "lookback")
    kelly_fraction: float = default_of(SizingConfig, "kelly_fraction")
    kelly_cap: float = default_of(SizingConfig, "kelly_cap")
    target_volatility: float = default_of(SizingConfig, "target_volatility")
    max_leverage: float = default_of(SizingConfig, "max_leverage")

    def configs(self) -> tuple[SizingConfig, ...]:
        """One sizing per selected mode; a bad mode or figure is refused with the field it came from."""
        unknown = sorted(set(self.modes) - set(SIZING_MODES[1:]))
        if unknown:
            raise ValueError(
                f"sized_candidates.modes: unknown {unknown}; choose from {', '.join(SIZING_MODES[1:])}"
            )
        base = SizingConfig(**self.model_dump(exclude={"modes", "allocators", "size_recipe_agent"}))
        return tuple(config for config in every_sizing(base) if config.mode in self.modes)


@dg.asset(group_name="selection", compute_kind="numpy")
def sized_candidates(
    context: dg.AssetExecutionContext,
    config: SizingSettings,
    trained_agent: TrainedAgent,
    learned_features: DatasetSplits,
    classical_allocators: AllocatorReport,
    sector_map: pd.DataFrame,
    model_registry: MlflowRegistryResource,
) -> dg.Output[SizedCandidates]:
    """Classical allocators (their fitted schedules) and the trained recipe re-sized by each sizing mode on
    trailing returns only, on validation and test after costs, beside the same candidates unsized."""
    unknown = sorted(set(config.allocators) - set(ALLOCATORS))
    if unknown:
        raise ValueError(
            f"sized_candidates.allocators: unknown {unknown}; choose from {', '.join(ALLOCATORS)}"
        )
    sizings = config.configs()
    split, spec = learned_features.split, trained_agent.env_spec
    periods = {
        "validation": (split.validation_start, split.validation_end),
        "test": (split.test_start, split.test_end),
    }
    full = allocator_market(trained_agent, learned_features, sector_map)
    simulation = simulation_of(spec)
    records: dict[str, dict[str, dict]] = {}
    for method in config.allocators:
        if method not in classical_allocators.schedules:
            context.log.warning(f"sizing: allocator {method} did not run in classical_allocators; skipped")
            continue
        records[method] = {
            period: backtest_sized_allocator(
                full,
                start,
                end,
                simulation,
                replace(classical_allocators.config, method=method),
                sizings,
                schedule=classical_allocators.schedules[method][period],
            )
            for period, (start, end) in periods.items()
        }
    if config.size_recipe_agent and spec.engine == "fast":
        policy = model_registry.load_logged_policy(trained_agent.model_uri)
        market = agent_market(trained_agent, learned_features, spec)
        agent_records = {}
        for period, (start, end) in periods.items():
            window = market.between(start, end)
            backtester = EventDrivenBacktester(window, spec.simulation, spec.engine_action)
            inner = backtester.policy_targets([policy] * (1 + len(sizings)))
            agent_records[period] = backtest_sized(inner, window, spec.simulation, sizings, history=market)
        records[recipe_name(trained_agent)] = agent_records
    runs = tuple(
        run
        for candidate, by_period in records.items()
        for run in sized_candidate_runs(candidate, by_period["validation"], by_period["test"])
    )
    comparison = pd.concat(
        [sizing_comparison(candidate, by["validation"], by["test"]) for candidate, by in records.items()],
        ignore_index=True,
    )
    report = SizedCandidates(runs, comparison)
    context.log.info(f"sizing: {len(runs)} sized variants of {len(records)} candidates")
    shown = comparison[
        [
            "candidate",
            "mode",
            "validation_sharpe",
            "test_sharpe",
            "test_sharpe_vs_unsized",
            "test_max_drawdown",
            "test_turnover",
        ]
    ]
    return dg.Output(
        report,
        metadata={
            "sizing_comparison": markdown_table(shown.round(3).to_dict(orient="records")),
            "best_per_candidate": dg.MetadataValue.md("\n".join(f"- {line}" for line in report.best_lines())),
        },
    )
