"""Each Dagster ``Config`` takes its defaults from the domain dataclass or function it feeds: at its defaults it
builds exactly the domain defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from trading_assets.config_defaults import default_of, name_of
from trading_assets.evaluation import (
    CandidateGateSettings,
    PromotionSettings,
    SeedSweepSettings,
    StressSettings,
    WalkForwardSettings,
)
from trading_assets.learning import ForecasterSettings
from trading_assets.training import AgentZooSettings, EnsembleSettings, TrainingSettings
from trading_assets.tuning import HyperparameterSearchSettings
from trading_assets.validation import ValidationSettings
from trading_core.agents.ensemble import EnsembleConfig
from trading_core.agents.training import PPOConfig
from trading_core.agents.zoo import DEFAULT_CONFIGS
from trading_core.data.validation import ValidationConfig
from trading_core.envs.spec import EnvSpec
from trading_core.evaluation.promotion import CandidateThresholds, PromotionThresholds
from trading_core.evaluation.seed_sweep import SeedSweepConfig, ZooConfig
from trading_core.evaluation.stress import StressConfig
from trading_core.evaluation.tuning import SearchConfig
from trading_core.evaluation.walk_forward import WalkForwardConfig
from trading_core.models.cnn_lstm import CNNLSTMConfig


def test_default_of_reads_dataclass_fields_and_signatures():
    @dataclass(frozen=True)
    class Example:
        plain: int = 3
        made: tuple[int, ...] = field(default_factory=lambda: (1, 2))
        required: str = field(default="x")

    def function(a, b: float = 0.5, *, c: str = "c"):
        return a, b, c

    assert default_of(Example, "plain") == 3
    assert default_of(Example, "made") == (1, 2)
    assert default_of(function, "b") == 0.5
    assert default_of(function, "c") == "c"
    with pytest.raises(ValueError, match="no default"):
        default_of(function, "a")
    with pytest.raises(KeyError):
        default_of(Example, "missing")
    assert name_of({"one": 1, "two": 2}, 2) == "two"
    with pytest.raises(ValueError):
        name_of({"one": 1}, 3)


def test_the_candidates_ppo_is_the_zoos_ppo():
    assert PPOConfig().as_agent_config() == DEFAULT_CONFIGS["ppo"]


def test_training_settings_describe_the_default_recipe_and_environment():
    settings = TrainingSettings()
    assert settings.ppo_config() == PPOConfig()
    assert settings.env_spec() == EnvSpec()


@pytest.mark.parametrize(
    ("settings", "domain"),
    [
        (PromotionSettings, PromotionThresholds),
        (CandidateGateSettings, CandidateThresholds),
        (SeedSweepSettings, SeedSweepConfig),
        (WalkForwardSettings, WalkForwardConfig),
        (AgentZooSettings, ZooConfig),
        (ForecasterSettings, CNNLSTMConfig),
        (ValidationSettings, ValidationConfig),
    ],
)
def test_to_domain_at_the_defaults_is_the_domain_default(settings, domain):
    assert settings().to_domain() == domain()


@pytest.mark.parametrize(
    ("settings", "domain"),
    [
        (StressSettings, StressConfig),
        (EnsembleSettings, EnsembleConfig),
        (HyperparameterSearchSettings, SearchConfig),
    ],
)
def test_settings_fields_default_to_the_domain_fields(settings, domain):
    values = settings().model_dump()
    assert values == {name: getattr(domain(), name) for name in values}


@pytest.mark.parametrize(
    ("settings", "values", "named"),
    [
        (TrainingSettings, {"total_timesteps": -5}, "total_timesteps must be a positive integer, got -5"),
        (TrainingSettings, {"seed": -1}, "seed must be at least 0, got -1"),
        (TrainingSettings, {"learning_rate": 0.0}, "learning_rate must be positive"),
        (AgentZooSettings, {"timesteps": 0}, "timesteps must be positive, got 0"),
        (AgentZooSettings, {"n_seeds": 0}, "n_seeds must be at least 1"),
        (
            WalkForwardSettings,
            {"timesteps_per_window": -1},
            "timesteps_per_window must be a positive integer",
        ),
        (SeedSweepSettings, {"n_seeds": 0}, "n_seeds must be at least 1, got 0"),
    ],
)
def test_a_bad_budget_or_seed_is_refused_when_the_config_is_built(settings, values, named):
    # The launchpad and the CLI build the Config before any step starts: the domain's own check refuses it there.
    with pytest.raises(ValueError, match=named):
        settings(**values)
