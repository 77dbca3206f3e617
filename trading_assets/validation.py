"""Stage 2: the Great Expectations suite, calendar and unadjusted-split rules as blocking asset checks.

The asset runs every rule, reports each as an asset check, and stores nothing when a blocking rule fails: the
previously stored validated bars stay as they were and nothing downstream runs.
"""

import dagster as dg
from pydantic import model_validator

from resources.market_data import RawBars
from trading_assets.config_defaults import default_of
from trading_assets.metadata import frame_metadata, markdown_table, number, png_metadata
from trading_core.data.validation import (
    RULES,
    DataValidationError,
    ValidationConfig,
    blocking_failures,
    to_validated_bars,
    validate_daily_bars,
)
from trading_core.evaluation.plots import equity_curve_png


class ValidationSettings(dg.Config):
    """Thresholds, split ratios and allow-list of the data rules (defaults: :class:`ValidationConfig`).

    ``allowed_jumps`` (``TICKER:YYYY-MM-DD``) and the CSV ``allowed_jumps_path`` (columns ``tic``, ``date``) name real
    corporate events or crashes that the unadjusted-split rule would otherwise block.
    """

    min_completeness: float = default_of(ValidationConfig, "min_completeness")
    outlier_abs_return: float = default_of(ValidationConfig, "outlier_abs_return")
    calendar: str = default_of(ValidationConfig, "calendar")
    split_ratios: list[str] = list(default_of(ValidationConfig, "split_ratios"))
    split_ratio_tolerance: float = default_of(ValidationConfig, "split_ratio_tolerance")
    split_confirm_bars: int = default_of(ValidationConfig, "split_confirm_bars")
    split_max_recovery: float = default_of(ValidationConfig, "split_max_recovery")
    split_volume_tolerance: float = default_of(ValidationConfig, "split_volume_tolerance")
    allowed_jumps: list[str] = list(default_of(ValidationConfig, "allowed_jumps"))
    allowed_jumps_path: str | None = default_of(ValidationConfig, "allowed_jumps_path")

    @model_validator(mode="after")
    def _domain_rules_hold(self) -> "ValidationSettings":
        # The domain's range checks, so a launchpad config is refused the way the CLI refuses it.
        self.to_domain()
        return self

    def to_domain(self) -> ValidationConfig:
        values = self.model_dump()
        return ValidationConfig(
            **{**values, "split_ratios": tuple(self.split_ratios), "allowed_jumps": tuple(self.allowed_jumps)}
        )


VALIDATION_CHECKS = [
    dg.AssetCheckSpec(
        name=name,
        asset="validated_daily_bars",
        description=text,
        blocking=severity == "ERROR",
    )
    for name, (severity, text) in RULES.items()
]


@dg.asset(group_name="validation", compute_kind="great_expectations", check_specs=VALIDATION_CHECKS)
def validated_daily_bars(
    context: dg.AssetExecutionContext, config: ValidationSettings, raw_daily_bars: RawBars
):
    """Bars that passed every blocking data rule, typed and sorted by date and ticker."""
    outcomes = validate_daily_bars(
        raw_daily_bars.frame,
        config.to_domain(),
    )
    failures = blocking_failures(outcomes)
    if not failures:
        validated = to_validated_bars(raw_daily_bars.frame)
        metadata = frame_metadata(validated)
        metadata["source"] = dg.MetadataValue.text(raw_daily_bars.source)
        metadata["rules"] = markdown_table(
            [
                {"rule": o.name, "passed": o.passed, "severity": o.severity, "result": o.description}
                for o in outcomes
            ]
        )
        closes = validated.pivot(index="date", columns="tic", values="close")
        metadata["normalized_closes"] = png_metadata(
            equity_curve_png(
                {tic: closes[tic].dropna() / closes[tic].dropna().iloc[0] for tic in closes.columns},
                "Close relative to first bar",
                ylabel="growth of 1",
            )
        )
        yield dg.Output(validated, metadata=metadata)
    for outcome in outcomes:
        metadata: dict[str, dg.MetadataValue] = {
            "source": dg.MetadataValue.text(raw_daily_bars.location),
            "failing_rows": dg.MetadataValue.int(outcome.failing_count),
        }
        if outcome.column:
            metadata["column"] = dg.MetadataValue.text(outcome.column)
        if outcome.examples:
            metadata["examples"] = dg.MetadataValue.text("\n".join(outcome.examples))
        for key, value in outcome.details.items():
            metadata[key] = dg.MetadataValue.json(value) if isinstance(value, dict) else number(float(value))
        yield dg.AssetCheckResult(
            check_name=outcome.name,
            passed=outcome.passed,
            severity=dg.AssetCheckSeverity.ERROR
            if outcome.severity == "ERROR"
            else dg.AssetCheckSeverity.WARN,
            description=f"{raw_daily_bars.location}: {outcome.description}",
            metadata=metadata,
        )
    if failures:
        error = DataValidationError(raw_daily_bars.location, failures)
        context.log.error(str(error))
        # Chained, so the run summary reports the DataValidationError itself as the cause.
        raise dg.Failure(
            description=str(error), metadata={"failed_rules": ", ".join(f.name for f in failures)}
        ) from error
