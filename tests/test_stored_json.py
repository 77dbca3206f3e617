"""Stored state and decision specs as JSON documents: exact round trips, and blobs that cannot run code."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trading_core.agents.decision_spec import SPEC_SCHEMA, SPEC_VERSION, DecisionSpec
from trading_core.allocators.config import AllocatorConfig
from trading_core.envs.fast import ActionSpec
from trading_core.envs.normalization import NormalizationConfig
from trading_core.envs.rewards import RewardConfig
from trading_core.envs.spec import EnvSpec
from trading_core.market.costs import (
    BpsCommission,
    CostModel,
    LinearImpact,
    NoImpact,
    PerOrderCommission,
    PerShareCommission,
    ProportionalCommission,
    SquareRootImpact,
    ZeroCommission,
)
from trading_core.market.execution import ExecutionConfig
from trading_core.market.limits import RiskLimits
from trading_core.market.simulator import SimulationConfig
from trading_core.runtime import stored_json
from trading_core.runtime.stored_json import (
    TAG,
    PickledStateError,
    StoredStateError,
    dumps,
    loads,
    register_stored,
    stored_dataclasses,
)

COST_MODELS = [
    CostModel(PerShareCommission(0.005, minimum=1.0, maximum_pct=0.01), LinearImpact(0.2, 0.01)),
    CostModel(ProportionalCommission(0.001), SquareRootImpact(eta=0.7, beta=0.02)),
    CostModel(BpsCommission(5.0), NoImpact()),
    CostModel(PerOrderCommission(4.95), NoImpact()),
    CostModel(ZeroCommission(), LinearImpact()),
]


def rich_spec(cost_model: CostModel) -> DecisionSpec:
    """A spec with every stored dataclass in it, and values JSON has no literal for (infinity)."""
    simulation = SimulationConfig(
        initial_amount=250_000.5,
        cost_model=cost_model,
        spread="fixed",
        spread_bps=7.25,
        execution=ExecutionConfig(order_type="limit", participation_cap=None, whole_shares=False),
        risk=RiskLimits.disabled(),  # max_margin is infinite
        var_lookback=45,
    )
    action = ActionSpec(
        mode="tilt",
        reward=RewardConfig(kind="differential_sharpe", drawdown_penalty=0.3),
        prior=AllocatorConfig(method="risk_parity", covariance="shrunk", max_weight=None),
    )
    return DecisionSpec(
        tickers=("AAPL", "JPM", "MSFT"),
        feature_columns=("macd", "rsi_30", "prior_weight"),
        env_spec=EnvSpec(
            simulation=simulation, action=action, n_envs=3, normalization=NormalizationConfig(clip=3.0)
        ),
        forecaster_uri="models:/forecaster/4",
        use_turbulence=False,
        uses_vix=True,
        reference_quantiles={"rsi_30": (30.1, 41.25, 55.0), "cci_30": (-1e-300, 0.0, 1e300)},
    )


@pytest.mark.parametrize("cost_model", COST_MODELS, ids=lambda m: type(m.commission).__name__)
def test_a_decision_spec_round_trips_exactly_through_its_file(cost_model: CostModel, tmp_path: Path) -> None:
    spec = rich_spec(cost_model)
    path = spec.save(tmp_path / "decision_spec.pkl")
    assert path.suffix == ".json"
    loaded = DecisionSpec.load(path)
    assert loaded == spec
    assert math.isinf(loaded.env_spec.simulation.risk.max_margin)
    assert dumps(SPEC_SCHEMA, SPEC_VERSION, loaded) == path.read_text()  # not one bit moved
    limits = RiskLimits(max_weight=np.float64(0.3), cooldown_bars=np.int64(2))  # numpy numbers in fields
    numpy_spec = DecisionSpec(("KO",), ("macd",), EnvSpec(simulation=SimulationConfig(risk=limits)))
    assert DecisionSpec.load(numpy_spec.save(tmp_path / "numpy")) == numpy_spec
    assert (
        DecisionSpec.load(DecisionSpec(("KO",), ("macd",), EnvSpec()).save(tmp_path / "plain")).prior is None
    )


def test_the_allow_list_holds_what_specs_and_risk_managers_store() -> None:
    encoded = str(stored_json.encode([rich_spec(model) for model in COST_MODELS]))
    assert {name for name in stored_dataclasses() if f"'type': '{name}'" in encoded} == set(
        stored_dataclasses()
    )
    register_stored(RiskLimits)  # once more is harmless
    with pytest.raises(TypeError, match="only dataclasses"):
        register_stored(dict)

    impostor = dataclasses.make_dataclass("RiskLimits", [("value", float)], frozen=True)
    with pytest.raises(ValueError, match="two stored dataclasses are named RiskLimits"):
        register_stored(impostor)


def test_values_json_lacks_round_trip_with_the_same_bits_and_types() -> None:
    value = {
        "floats": [0.1, -0.0, 5e-324, 1.7976931348623157e308, float("nan"), float("inf"), -float("inf")],
        "arrays": [
            np.array([[1.5, np.nan], [np.inf, -0.0]]),
            np.arange(6, dtype=np.int64).reshape(2, 3),
            np.array([True, False]),
            np.array([1.25], dtype=np.float32),
            np.zeros((0, 4)),
            np.array(3.0),
        ],
        "scalars": [np.float64(2.5), np.int64(-7), np.bool_(True)],
        "tuple": (1, "a", None, (2.0,)),
        "int keys": {3: "x", (1, 2): "y"},
        TAG: "a key that looks like a tag",
        "stamps": [pd.Timestamp("2019-02-12 14:31:00.000000001", tz="UTC"), pd.Timestamp("2020-01-01")],
        "zoned": pd.Timestamp("2019-02-12 09:31", tz="America/New_York"),
        "big": 2**70,
    }
    text = dumps("test", 1, value)
    back = loads(text, "test", 1, "test")
    assert dumps("test", 1, back) == text
    assert [math.copysign(1.0, f) if f == 0 else f for f in back["floats"][:4]] == [
        0.1,
        -1.0,
        5e-324,
        1.7976931348623157e308,
    ]
    assert math.isnan(back["floats"][4]) and back["floats"][5:] == [float("inf"), -float("inf")]
    for restored, original in zip(back["arrays"], value["arrays"], strict=True):
        assert restored.dtype == original.dtype and restored.shape == original.shape
        np.testing.assert_array_equal(restored, original)
    assert [type(s) for s in back["scalars"]] == [np.float64, np.int64, np.bool_]
    assert (
        back["tuple"] == value["tuple"] and back["int keys"] == value["int keys"] and back[TAG] == value[TAG]
    )
    assert back["stamps"] == value["stamps"] and back["stamps"][0].value == value["stamps"][0].value
    assert back["zoned"] == value["zoned"] and str(back["zoned"].tz) == "America/New_York"
    assert back["big"] == 2**70


class _WritesMarker:
    """A pickle that, when unpickled, creates a file: what a crafted blob in a store would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_crafted_pickle_as_the_decision_spec_is_refused_and_never_run(tmp_path: Path) -> None:
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_WritesMarker(control))).close()  # the blob is armed: unpickling runs it
    assert control.exists()
    marker = tmp_path / "marker"
    for protocol in (0, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"decision_spec_{protocol}.pkl"
        path.write_bytes(pickle.dumps(_WritesMarker(marker), protocol=protocol))
        with pytest.raises(PickledStateError, match=f"decision spec {path} is a pickle, the old format"):
            DecisionSpec.load(path)
    assert not marker.exists()


def test_a_spec_pickled_by_older_code_is_refused_with_the_retrain_line(tmp_path: Path) -> None:
    path = tmp_path / "decision_spec.pkl"
    path.write_bytes(pickle.dumps(DecisionSpec(("AAPL",), ("macd",), EnvSpec())))
    with pytest.raises(PickledStateError, match="pickles are never loaded"):
        DecisionSpec.load(path)


def _document(data: object, schema: str = "test", version: int = 1) -> str:
    import json

    return json.dumps({"schema": schema, "version": version, "data": data})


def _npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return base64.b64encode(buffer.getvalue()).decode()


def _zip_archive() -> str:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(2))
    return base64.b64encode(buffer.getvalue()).decode()


def _dataclass(name: str, **fields: object) -> dict:
    return {TAG: "dataclass", "type": name, "fields": fields}


BAD_DOCUMENTS = [
    (_document(1, schema="other"), "holds a 'other' document, not 'test'"),
    (_document(1, version=2), "test version 2 is not the supported version 1"),
    ('{"schema": "test", "data": 1}', "not a stored document"),
    ("[1, 2]", "not a stored document"),
    (b"\x00\xffgarbage", "is not a JSON document"),
    ('{"schema": "test", "version": 1, "data": NaN}', "is not a JSON document"),
    (_document({TAG: "module", "name": "os"}), "unknown tag 'module'"),
    (_document(_dataclass("Popen", args="touch x")), "'Popen' is not a registered stored dataclass"),
    (
        _document({"x": _dataclass("RiskLimits", var_confidence="high")}),
        "data.x.var_confidence: 'high' is not a float",
    ),
    (_document(_dataclass("RiskLimits", nonsense=1)), r"RiskLimits has no fields \['nonsense'\]"),
    (_document(_dataclass("RiskLimits", var_confidence=1.5)), "invalid RiskLimits"),
    (_document(_dataclass("ActionSpec", mode="tilt")), "invalid ActionSpec"),
    (_document(_dataclass("ActionSpec", mode="everything")), "'everything' is not a"),
    (_document({TAG: "ndarray", "npy": _npy(np.array([{"a": 1}], dtype=object))}), "corrupt array"),
    (_document({TAG: "ndarray", "npy": _zip_archive()}), "corrupt array"),
    (_document({TAG: "ndarray", "npy": "not base64!"}), "corrupt array"),
    (_document({TAG: "tuple", "items": 3}), "items must be a list"),
    (_document({TAG: "float", "value": "1e400"}), "not a non-finite float"),
    (_document({TAG: "timestamp", "ns": "yesterday", "tz": None}), "integer ns"),
    (_document({TAG: "timestamp", "ns": 0, "tz": "Mars/Olympus"}), "invalid timestamp"),
    (_document({TAG: "tuple", "items": [], "extra": 1}), "a tuple needs the keys"),
]


@pytest.mark.parametrize(("blob", "reason"), BAD_DOCUMENTS, ids=[r for _, r in BAD_DOCUMENTS])
def test_a_foreign_or_corrupt_document_is_refused_with_one_line(blob: str | bytes, reason: str) -> None:
    with pytest.raises(StoredStateError, match=reason) as refused:
        loads(blob, "test", 1, "state.json")
    message = str(refused.value)
    assert message.startswith("state.json") and "\n" not in message


def test_values_that_cannot_be_stored_are_refused_when_written() -> None:
    class Foreign:
        pass

    with pytest.raises(StoredStateError, match=r"data\.x\[0\]: a .*Foreign cannot be stored"):
        dumps("test", 1, {"x": [Foreign()]})
    with pytest.raises(StoredStateError, match="arrays of Python objects"):
        dumps("test", 1, np.array([None], dtype=object))
    from trading_core.broker.base import Bar

    with pytest.raises(StoredStateError, match="Bar is not a registered stored dataclass"):
        dumps("test", 1, Bar(1.0, 1.0, 1.0, 1.0, 100.0))


def test_a_registered_version_with_a_pickled_spec_fails_with_one_clear_line(tmp_path: Path) -> None:
    import gymnasium as gym
    import mlflow
    from stable_baselines3 import PPO

    from resources.mlflow_registry import MlflowRegistryResource
    from trading_core.agents.pyfunc import DECISION_SPEC_KEY, SB3_ARTIFACT_KEY, StableBaselinesPolicy

    registry = MlflowRegistryResource(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri()
    )
    weights = tmp_path / "agent.zip"
    PPO("MlpPolicy", gym.make("Pendulum-v1"), n_steps=64, batch_size=64, seed=0).save(weights)
    marker = tmp_path / "marker"
    spec = tmp_path / "decision_spec.pkl"  # what older versions registered, here armed
    spec.write_bytes(pickle.dumps(_WritesMarker(marker)))
    registry._client()
    with mlflow.start_run(experiment_id=registry.experiment_id()) as run:
        info = mlflow.pyfunc.log_model(
            name="agent",
            python_model=StableBaselinesPolicy(),
            artifacts={SB3_ARTIFACT_KEY: str(weights), DECISION_SPEC_KEY: str(spec)},
            pip_requirements=["mlflow"],
        )
    version = registry.register(info.model_uri, run.info.run_id, tags={}).version
    with pytest.raises(PickledStateError) as refused:
        registry.load_decision_bundle(version)
    assert str(refused.value).startswith(
        f"decision spec of rl_trading_agent v{version} is in the old pickle format"
    )
    assert "retrain or re-register" in str(refused.value)
    assert not marker.exists()
