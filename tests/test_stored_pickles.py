"""Decision specs and session state written before modules moved still load (they live in users' stores)."""

from __future__ import annotations

import pickle

import pytest

from trading_core.agents.decision_spec import DecisionSpec
from trading_core.envs.fast import ActionSpec
from trading_core.envs.spec import EnvSpec
from trading_core.runtime.stored_pickles import load_project_pickle


def _as_written_by_old_layout(obj: object) -> bytes:
    """Protocol 0 names every class as ``module\\nname`` text, so the old paths can be written back in."""
    data = pickle.dumps(obj, protocol=0)
    data = data.replace(b"trading_core.envs.spec\nEnvSpec", b"trading_core.environment\nEnvSpec")
    data = data.replace(b"trading_core.market.limits\nRiskLimits", b"trading_core.market.risk\nRiskLimits")
    assert b"trading_core.environment\n" in data and b"trading_core.market.risk\nRiskLimits" in data
    return data


def test_a_decision_spec_pickled_under_the_old_module_paths_loads(tmp_path):
    spec = DecisionSpec(tickers=("AAPL", "MSFT"), feature_columns=("macd", "rsi_30"), env_spec=EnvSpec())
    old = _as_written_by_old_layout(spec)
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(old)
    path = tmp_path / "decision_spec.pkl"
    path.write_bytes(old)
    assert DecisionSpec.load(path) == spec


def test_current_pickles_load_unchanged():
    spec = EnvSpec(action=ActionSpec(hmax=7))
    assert load_project_pickle(pickle.dumps(spec)) == spec
