"""Stage 3a: causal market regimes, a Gaussian HMM fitted on the training period and filtered forward."""

import dagster as dg
import numpy as np
import pandas as pd

from trading_assets.config_defaults import DomainCheckedConfig, default_of
from trading_assets.metadata import markdown_table, number, png_metadata
from trading_core.data.splits import DatasetSplits
from trading_core.evaluation.plots import regime_shading_png
from trading_core.market.measures import PERIODS_PER_YEAR
from trading_core.regimes.history import MarketRegimes, fit_market_regimes, regime_summary
from trading_core.regimes.settings import RegimeConfig

__all__ = ["MarketRegimes", "RegimeSettings", "market_regimes"]


class RegimeSettings(DomainCheckedConfig):
    """Hidden regimes, the volatility window and the seed of the regime model (defaults: :class:`RegimeConfig`)."""

    n_regimes: int = default_of(RegimeConfig, "n_regimes")
    volatility_window: int = default_of(RegimeConfig, "volatility_window")
    seed: int = default_of(RegimeConfig, "seed")

    def to_domain(self) -> RegimeConfig:
        """The model's settings; those not exposed here keep their defaults."""
        return RegimeConfig(**self.model_dump())


@dg.asset(group_name="features", compute_kind="hmmlearn")
def market_regimes(
    config: RegimeSettings, validated_daily_bars: pd.DataFrame, dataset_splits: DatasetSplits
) -> dg.Output[MarketRegimes]:
    """Market regimes per date (0 the calmest): an HMM fitted on the training dates, read by its forward filter."""
    split = dataset_splits.split
    # The traded universe only: the live loop sees these tickers' bars and must rebuild the same signals.
    bars = validated_daily_bars[validated_daily_bars["tic"].isin(dataset_splits.tickers)]
    regimes = fit_market_regimes(bars, split.train_start, split.train_end, config.to_domain())
    periods = {
        "train": (split.train_start, split.train_end),
        "validation": (split.validation_start, split.validation_end),
        "test": (split.test_start, split.test_end),
    }
    summary = regime_summary(regimes, periods)
    model = regimes.regime_model()
    frame = regimes.frame.dropna(subset=["market_return"])
    market_index = (1.0 + frame["market_return"]).cumprod()
    png = regime_shading_png(
        market_index, frame["regime"], "Market index (equal weight) and its filtered regime"
    )
    transition = pd.DataFrame(
        model.transition_matrix,
        index=[f"from {k}" for k in range(model.n_regimes)],
        columns=[f"to {k}" for k in range(model.n_regimes)],
    )
    metadata = {
        "regime_counts_per_period": markdown_table(summary["counts"]),
        "regime_share": markdown_table(
            [
                {
                    "regime": k,
                    "share": summary["share"][k],
                    "mean_daily_volatility": summary["mean_volatility"][k],
                    "annualised_volatility": summary["mean_volatility"][k] * np.sqrt(PERIODS_PER_YEAR),
                }
                for k in range(model.n_regimes)
            ]
        ),
        "transition_matrix": dg.MetadataValue.md(transition.to_markdown(floatfmt=".4f")),
        "regime_changes": dg.MetadataValue.int(len(regimes.changes())),
        "converged": dg.MetadataValue.bool(model.converged),
        "train_log_likelihood": number(model.log_likelihood),
        "fit_dates": f"{model.train_start.date()} .. {model.train_end.date()}",
        "regimes_plot": png_metadata(png),
    }
    return dg.Output(regimes, metadata=metadata)
