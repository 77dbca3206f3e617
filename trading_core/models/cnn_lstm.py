"""A CNN-LSTM that forecasts each asset's next-period return from a trailing window of its own inputs.

For every asset and date t the model reads the inputs of dates t-window+1..t and outputs the mean and
log-variance of the close-to-close return from t to t+1, plus a small embedding. Those outputs are meant to
join the RL observation at date t, so everything at t is computed from data up to t only:

* inputs at t use bars and features at t and the close / volume at t-1 (never t+1);
* standardization statistics are fit on the training frame only and stored with the model;
* windows are never padded or back-filled: a date without ``window`` complete input dates before it (inside
  the frame given) gets no output.

Model inputs per (date, asset), all standardized with the training statistics and clipped to +-10 standard
deviations (so a market crash outside the training period cannot blow up the activations):

* ``log_return``: log(close_t / close_{t-1});
* ``range``: (high_t - low_t) / close_t;
* ``log_volume_change``: log1p(volume_t) - log1p(volume_{t-1});
* one input per feature column, made scale-free first so that one set of weights serves assets at any price:
  price levels (``boll``, ``boll_ub``, ``boll_lb``, ``*_sma``, ``*_ema``) become ``level / close - 1``,
  price differences (``macd``, ``macds``, ``macdh``) become ``value / close``, ``turbulence`` (a heavy-tailed
  squared distance) becomes ``log1p``; every other column (RSI, CCI, DX, VIX, ...) is used as is.

The target is the simple return close_{t+1} / close_t - 1 (what a portfolio earns), standardized by the
training mean and standard deviation while fitting; forecasts are reported in return units.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from trading_core.data.schema import feature_columns_of
from trading_core.features.batch import build_features
from trading_core.runtime.distributed import single_torch_thread

LEARNED_PREFIX = "cnn_lstm_"
BASE_INPUTS: tuple[str, ...] = ("log_return", "range", "log_volume_change")
PRICE_LEVEL_FEATURES: frozenset[str] = frozenset({"boll", "boll_ub", "boll_lb"})
PRICE_LEVEL_SUFFIXES: tuple[str, ...] = ("_sma", "_ema")
PRICE_DIFFERENCE_FEATURES: frozenset[str] = frozenset({"macd", "macds", "macdh"})
LOG1P_FEATURES: frozenset[str] = frozenset({"turbulence"})
INPUT_CLIP = 10.0
STATE_FILE = "cnn_lstm_state.pt"
METADATA_FILE = "cnn_lstm.json"
# Inference runs in fixed-size chunks so that a sample's output does not depend on how many others exist.
_PREDICT_CHUNK = 4096


@dataclass(frozen=True)
class CNNLSTMConfig:
    """Architecture, optimisation and early-stopping settings of the CNN-LSTM forecaster.

    :param window: number of dates (t-window+1..t) the model reads to forecast the return from t to t+1
    :param conv_channels: channels of the two temporal convolutions
    :param kernel_size: length in dates of each convolution kernel (no padding: the window shrinks)
    :param lstm_hidden: size of the LSTM hidden state
    :param embedding_dim: size of the tanh embedding exported as learned features
    :param dropout: dropout on the last LSTM hidden state while training
    :param learning_rate: Adam learning rate
    :param batch_size: samples per gradient step
    :param max_epochs: most passes over the training samples
    :param patience: epochs without a lower validation loss before training stops
    :param seed: seeds weight initialisation, dropout and shuffling
    """

    window: int = 20
    conv_channels: int = 16
    kernel_size: int = 3
    lstm_hidden: int = 32
    embedding_dim: int = 4
    dropout: float = 0.1
    learning_rate: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 30
    patience: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.window < 2 * (self.kernel_size - 1) + 1:
            raise ValueError(
                f"window ({self.window}) must be at least 2 * (kernel_size - 1) + 1 for two unpadded convolutions"
            )
        if min(self.conv_channels, self.lstm_hidden, self.embedding_dim, self.batch_size) < 1:
            raise ValueError("conv_channels, lstm_hidden, embedding_dim and batch_size must be positive")
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError("max_epochs and patience must be at least 1")
        if not 0.0 <= self.dropout < 1.0 or self.learning_rate <= 0.0:
            raise ValueError("dropout must be in [0, 1) and learning_rate positive")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InputNormalization:
    """Standardization statistics fit on the training frame only.

    :param mean: mean of each model input over the training rows
    :param std: standard deviation (ddof 0) of each model input; 1 where an input is constant
    :param target_mean: mean of the next-period return over the training samples
    :param target_std: standard deviation of the next-period return over the training samples
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    target_mean: float
    target_std: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InputNormalization:
        return cls(
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            target_mean=float(values["target_mean"]),
            target_std=float(values["target_std"]),
        )


@dataclass(frozen=True)
class ForecastMetrics:
    """Quality of the forecasts over one period.

    :param loss: Gaussian negative log-likelihood (constant dropped) of the standardized next return
    :param directional_accuracy: share of samples whose forecast mean has the sign of the realized return
        (samples with a realized return of exactly zero are left out)
    :param information_coefficient: Spearman rank correlation of forecast mean with realized return, pooled
        over all dates and assets of the period
    :param n_samples: number of (date, asset) samples scored
    """

    loss: float
    directional_accuracy: float
    information_coefficient: float
    n_samples: int


class CNNLSTMForecaster(nn.Module):
    """Two temporal convolutions, an LSTM, a tanh embedding and a Gaussian head.

    Assets are a batch dimension: one set of weights serves every asset.

    :param n_inputs: inputs per date (convolution input channels)
    :param conv_channels: channels of both convolutions
    :param kernel_size: kernel length in dates
    :param lstm_hidden: LSTM hidden size
    :param embedding_dim: size of the embedding the head reads
    :param dropout: dropout on the last hidden state
    """

    def __init__(
        self,
        n_inputs: int,
        conv_channels: int = 16,
        kernel_size: int = 3,
        lstm_hidden: int = 32,
        embedding_dim: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_inputs, conv_channels, kernel_size),
            nn.ReLU(),
            nn.Conv1d(conv_channels, conv_channels, kernel_size),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(conv_channels, lstm_hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.embedding = nn.Linear(lstm_hidden, embedding_dim)
        self.head = nn.Linear(embedding_dim, 2)

    def forward(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forecast from windows of standardized inputs.

        :param windows: ``(batch, window, n_inputs)``, oldest date first
        :return: mean ``(batch,)``, log-variance ``(batch,)`` (both of the standardized target) and
            embedding ``(batch, embedding_dim)``
        """
        hidden = self.conv(windows.transpose(1, 2)).transpose(1, 2)
        _, (last_hidden, _) = self.lstm(hidden)
        embedding = torch.tanh(self.embedding(self.dropout(last_hidden[-1])))
        out = self.head(embedding)
        return out[:, 0], out[:, 1], embedding


@dataclass
class TrainedForecaster:
    """A fitted CNN-LSTM with everything needed to compute its features on new data.

    :param module: the network, holding the best epoch's weights
    :param config: settings it was trained with
    :param feature_columns: feature columns of the frame it reads (besides OHLCV)
    :param input_columns: names of the model inputs, in channel order
    :param normalization: training-frame statistics of inputs and target
    :param history: one entry per epoch: ``epoch`` (from 1), ``train_loss`` (mean over the epoch's batches,
        dropout on) and ``validation_loss``
    :param best_epoch: epoch whose weights were kept (lowest validation loss)
    :param validation_loss: validation loss of the kept weights
    :param directional_accuracy: on validation, see :class:`ForecastMetrics`
    :param information_coefficient: on validation, Spearman (see :class:`ForecastMetrics`)
    """

    module: CNNLSTMForecaster
    config: CNNLSTMConfig
    feature_columns: list[str]
    input_columns: list[str]
    normalization: InputNormalization
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    validation_loss: float = math.nan
    directional_accuracy: float = math.nan
    information_coefficient: float = math.nan

    @property
    def output_columns(self) -> list[str]:
        """Columns :func:`learned_features` adds besides ``date`` and ``tic``."""
        embedding = [f"{LEARNED_PREFIX}emb_{i}" for i in range(self.config.embedding_dim)]
        return [f"{LEARNED_PREFIX}mean", f"{LEARNED_PREFIX}logvar", *embedding]

    def metadata(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready values."""
        return {
            "config": self.config.as_dict(),
            "feature_columns": list(self.feature_columns),
            "input_columns": list(self.input_columns),
            "normalization": self.normalization.as_dict(),
            "history": [dict(entry) for entry in self.history],
            "best_epoch": self.best_epoch,
            "validation_loss": self.validation_loss,
            "directional_accuracy": self.directional_accuracy,
            "information_coefficient": self.information_coefficient,
        }

    def state_for_saving(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The weights (for ``torch.save``) and the metadata (for JSON); :meth:`from_state` inverts it."""
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}, self.metadata()

    @classmethod
    def from_state(cls, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> TrainedForecaster:
        """Rebuild a forecaster from :meth:`state_for_saving`'s output.

        :param state_dict: the network weights
        :param metadata: the JSON-ready metadata
        """
        config = CNNLSTMConfig(**metadata["config"])
        module = _make_module(len(metadata["input_columns"]), config)
        module.load_state_dict(state_dict)
        module.eval()
        return cls(
            module=module,
            config=config,
            feature_columns=list(metadata["feature_columns"]),
            input_columns=list(metadata["input_columns"]),
            normalization=InputNormalization.from_dict(metadata["normalization"]),
            history=[dict(entry) for entry in metadata["history"]],
            best_epoch=int(metadata["best_epoch"]),
            validation_loss=float(metadata["validation_loss"]),
            directional_accuracy=float(metadata["directional_accuracy"]),
            information_coefficient=float(metadata["information_coefficient"]),
        )

    def save(self, directory: str | Path) -> Path:
        """Write the weights (``torch.save``) and the metadata (JSON) into a directory.

        :param directory: created if missing
        :return: the directory
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        state_dict, metadata = self.state_for_saving()
        torch.save(state_dict, path / STATE_FILE)
        # Python's float repr round-trips exactly, so the statistics come back bit for bit.
        (path / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TrainedForecaster:
        """Restore a forecaster written by :meth:`save`.

        :param directory: the directory given to :meth:`save`
        """
        path = Path(directory)
        state_dict = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        metadata = json.loads((path / METADATA_FILE).read_text())
        return cls.from_state(state_dict, metadata)


@dataclass(frozen=True)
class _Panel:
    """Raw (scale-free, not yet standardized) inputs on a date x asset grid."""

    dates: pd.DatetimeIndex
    tics: pd.Index
    inputs: np.ndarray  # (dates, assets, inputs), NaN where undefined
    target: np.ndarray  # (dates, assets): return from this date to the next date of the frame


@dataclass(frozen=True)
class _Samples:
    windows: np.ndarray  # (n, window, inputs) float32, standardized
    target: np.ndarray  # (n,) next-period return, NaN where unknown
    dates: np.ndarray
    tics: np.ndarray


def _make_module(n_inputs: int, config: CNNLSTMConfig) -> CNNLSTMForecaster:
    return CNNLSTMForecaster(
        n_inputs,
        conv_channels=config.conv_channels,
        kernel_size=config.kernel_size,
        lstm_hidden=config.lstm_hidden,
        embedding_dim=config.embedding_dim,
        dropout=config.dropout,
    )


def _model_feature_columns(frame: pd.DataFrame) -> list[str]:
    # Learned features already joined onto a frame must not feed the model that produces them.
    return [c for c in feature_columns_of(frame) if not c.startswith(LEARNED_PREFIX)]


def _input_name(column: str) -> str:
    if column in PRICE_LEVEL_FEATURES or column.endswith(PRICE_LEVEL_SUFFIXES):
        return f"{column}_over_close"
    if column in PRICE_DIFFERENCE_FEATURES:
        return f"{column}_per_close"
    if column in LOG1P_FEATURES:
        return f"log1p_{column}"
    return column


def _scale_free(column: str, values: np.ndarray, close: np.ndarray) -> np.ndarray:
    kind = _scale_free_kind(column)
    if kind == "level":
        return values / close - 1.0
    if kind == "difference":
        return values / close
    if kind == "log1p":
        return np.log1p(np.maximum(values, 0.0))
    return values


def _scale_free_kind(column: str) -> str:
    """Which transform makes a feature column scale-free (:func:`_scale_free`; the live path applies each
    transform to every column of its kind at once)."""
    if column in PRICE_LEVEL_FEATURES or column.endswith(PRICE_LEVEL_SUFFIXES):
        return "level"
    if column in PRICE_DIFFERENCE_FEATURES:
        return "difference"
    if column in LOG1P_FEATURES:
        return "log1p"
    return "raw"


def _previous(grid: np.ndarray) -> np.ndarray:
    """The grid shifted one date later (row t holds date t-1); the first date has no predecessor."""
    shifted = np.full_like(grid, np.nan)
    shifted[1:] = grid[:-1]
    return shifted


def _panel(frame: pd.DataFrame, feature_columns: list[str]) -> _Panel:
    """Pivot a long frame to a date x asset grid and compute the raw inputs and next-period returns.

    A (date, asset) missing from the frame becomes NaN, so every window touching it is dropped later.
    """
    missing = [
        c for c in ("date", "tic", "high", "low", "close", "volume", *feature_columns) if c not in frame
    ]
    if missing:
        raise ValueError(f"features frame lacks columns {missing}")
    if frame.duplicated(["date", "tic"]).any():
        raise ValueError("features frame holds more than one row for some (date, tic)")
    dates = pd.DatetimeIndex(np.sort(frame["date"].unique()))
    tics = pd.Index(np.sort(frame["tic"].unique()), dtype=object)
    row = dates.get_indexer(frame["date"])
    col = tics.get_indexer(frame["tic"])
    values: dict[str, np.ndarray] = {}
    for c in ("high", "low", "close", "volume", *feature_columns):
        grid = np.full((len(dates), len(tics)), np.nan)
        grid[row, col] = frame[c].to_numpy(dtype=np.float64)
        values[c] = grid
    close, volume = values["close"], values["volume"]
    log_volume = np.log1p(np.maximum(volume, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        inputs = [
            np.log(close / _previous(close)),
            (values["high"] - values["low"]) / close,
            log_volume - _previous(log_volume),
            *(_scale_free(c, values[c], close) for c in feature_columns),
        ]
        target = np.full_like(close, np.nan)
        target[:-1] = close[1:] / close[:-1] - 1.0
    stacked = np.stack(inputs, axis=-1)
    stacked[~np.isfinite(stacked)] = np.nan
    target[~np.isfinite(target)] = np.nan
    return _Panel(dates=dates, tics=tics, inputs=stacked, target=target)


def _fit_normalization(panel: _Panel) -> InputNormalization:
    rows = panel.inputs.reshape(-1, panel.inputs.shape[-1])
    rows = rows[np.isfinite(rows).all(axis=1)]
    target = panel.target[np.isfinite(panel.target)]
    if len(rows) == 0 or len(target) < 2:
        raise ValueError("the training frame has too few dates to fit the input statistics")
    std = rows.std(axis=0)
    target_std = float(target.std())
    return InputNormalization(
        mean=tuple(float(v) for v in rows.mean(axis=0)),
        std=tuple(float(v) if v > 0 else 1.0 for v in std),
        target_mean=float(target.mean()),
        target_std=target_std if target_std > 0 else 1.0,
    )


def _samples(
    panel: _Panel,
    normalization: InputNormalization,
    window: int,
    first_date: pd.Timestamp | None = None,
    require_target: bool = False,
) -> _Samples:
    """Every complete window of the panel ending on or after ``first_date``, in (date, tic) order."""
    n_inputs = panel.inputs.shape[-1]
    n_dates, n_assets = panel.target.shape
    if n_dates < window:
        return _Samples(
            windows=np.empty((0, window, n_inputs), dtype=np.float32),
            target=np.empty(0),
            dates=np.empty(0, dtype="datetime64[ns]"),
            tics=np.empty(0, dtype=object),
        )
    mean = np.asarray(normalization.mean)
    std = np.asarray(normalization.std)
    standardized = np.clip((panel.inputs - mean) / std, -INPUT_CLIP, INPUT_CLIP)
    # (windows, assets, inputs, window) -> (windows, assets, window, inputs); window k ends at date k+window-1.
    windows = sliding_window_view(standardized, window, axis=0).transpose(0, 1, 3, 2)
    end = np.arange(window - 1, n_dates)
    keep = np.isfinite(windows).all(axis=(2, 3))
    if first_date is not None:
        keep &= (panel.dates[end] >= first_date)[:, None]
    target = panel.target[end]
    if require_target:
        keep &= np.isfinite(target)
    date_index, asset_index = np.nonzero(keep)
    return _Samples(
        windows=np.ascontiguousarray(windows[date_index, asset_index], dtype=np.float32),
        target=target[date_index, asset_index],
        dates=panel.dates[end][date_index].to_numpy(),
        tics=panel.tics.to_numpy()[asset_index],
    )


def _with_history(frame: pd.DataFrame, history: pd.DataFrame | None, window: int) -> pd.DataFrame:
    """Prepend the last ``window`` dates of an earlier frame (past data) so early dates get full windows."""
    if history is None or history.empty or frame.empty:
        return frame
    if history["date"].max() >= frame["date"].min():
        raise ValueError("the history frame must end before the frame it precedes begins")
    # window - 1 earlier dates fill the window; one more gives the first of them its return and volume change.
    history_dates = np.sort(history["date"].unique())[-window:]
    earlier = history[history["date"].isin(history_dates)]
    return pd.concat([earlier, frame[earlier.columns.intersection(frame.columns)]], ignore_index=True)


def _predict(module: CNNLSTMForecaster, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standardized mean, log-variance and embedding, in eval mode without gradients."""
    was_training = module.training
    module.eval()
    means, logvars, embeddings = [], [], []
    try:
        # One thread: for a few hundred small windows hand-offs cost more than they save, and the bits of the
        # result stop depending on the core count.
        with torch.inference_mode(), single_torch_thread():
            for start in range(0, len(windows), _PREDICT_CHUNK):
                chunk = torch.from_numpy(windows[start : start + _PREDICT_CHUNK])
                mean, logvar, embedding = module(chunk)
                means.append(mean.numpy())
                logvars.append(logvar.numpy())
                embeddings.append(embedding.numpy())
    finally:
        module.train(was_training)
    if not means:
        width = module.embedding.out_features
        return np.empty(0, np.float32), np.empty(0, np.float32), np.empty((0, width), np.float32)
    return np.concatenate(means), np.concatenate(logvars), np.concatenate(embeddings)


def _gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # The head predicts log-variance so the variance stays positive without a constraint.
    return nn.functional.gaussian_nll_loss(mean, target, torch.exp(logvar), reduction="none")


def _metrics(
    module: CNNLSTMForecaster, samples: _Samples, normalization: InputNormalization
) -> ForecastMetrics:
    if len(samples.target) == 0:
        return ForecastMetrics(math.nan, math.nan, math.nan, 0)
    mean, logvar, _ = _predict(module, samples.windows)
    standardized = (samples.target - normalization.target_mean) / normalization.target_std
    loss = _gaussian_nll(
        torch.from_numpy(mean), torch.from_numpy(logvar), torch.from_numpy(standardized.astype(np.float32))
    )
    forecast = normalization.target_mean + normalization.target_std * mean.astype(np.float64)
    moved = samples.target != 0
    direction = np.sign(forecast[moved]) == np.sign(samples.target[moved])
    ic = pd.Series(forecast).corr(pd.Series(samples.target), method="spearman")
    return ForecastMetrics(
        loss=float(loss.double().mean()),
        directional_accuracy=float(direction.mean()) if moved.any() else math.nan,
        information_coefficient=float(ic),
        n_samples=len(samples.target),
    )


@contextlib.contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch and enforce deterministic kernels, restoring the caller's RNG and settings afterwards."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]), single_torch_thread():
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def train_cnn_lstm(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: CNNLSTMConfig | None = None,
    report: Callable[[str], None] | None = None,
) -> TrainedForecaster:
    """Fit the forecaster on the training frame, early-stopping on the validation frame.

    Input statistics come from ``train`` only. Validation windows may reach back into the last ``window``
    training dates: that is past data at every validation date, not leakage. The last date of each frame has
    no next return inside it and gets no target (so no training target peeks into the validation period).
    Same data, config and seed give identical weights; the caller's torch RNG state is left untouched.

    :param train: training split of the features frame (long format, one row per date and ticker)
    :param validation: validation split, later than every training date
    :param config: settings; defaults to :class:`CNNLSTMConfig`
    :param report: receives one progress line per epoch
    :return: the forecaster holding the weights of the epoch with the lowest validation loss
    """
    config = config or CNNLSTMConfig()
    if train.empty or validation.empty:
        raise ValueError("the training and validation frames must not be empty")
    feature_columns = _model_feature_columns(train)
    input_columns = [*BASE_INPUTS, *(_input_name(c) for c in feature_columns)]
    train_panel = _panel(train, feature_columns)
    normalization = _fit_normalization(train_panel)
    train_samples = _samples(train_panel, normalization, config.window, require_target=True)
    validation_panel = _panel(_with_history(validation, train, config.window), feature_columns)
    validation_samples = _samples(
        validation_panel, normalization, config.window, validation["date"].min(), require_target=True
    )
    if len(train_samples.target) == 0 or len(validation_samples.target) == 0:
        raise ValueError(
            f"need complete {config.window}-date windows with a next return in both frames: got "
            f"{len(train_samples.target)} training and {len(validation_samples.target)} validation samples"
        )
    x = torch.from_numpy(train_samples.windows)
    y = torch.from_numpy(
        ((train_samples.target - normalization.target_mean) / normalization.target_std).astype(np.float32)
    )
    history: list[dict[str, float]] = []
    with _deterministic_torch(config.seed):
        module = _make_module(len(input_columns), config)
        optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
        shuffle = torch.Generator().manual_seed(config.seed)
        best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
        for epoch in range(1, config.max_epochs + 1):
            module.train()
            order = torch.randperm(len(y), generator=shuffle)
            total = 0.0
            for start in range(0, len(order), config.batch_size):
                batch = order[start : start + config.batch_size]
                mean, logvar, _ = module(x[batch])
                loss = _gaussian_nll(mean, logvar, y[batch]).mean()
                optimizer.zero_grad()
                loss.backward()
                # LSTMs occasionally see exploding gradients on return outliers.
                nn.utils.clip_grad_norm_(module.parameters(), max_norm=1.0)
                optimizer.step()
                total += loss.item() * len(batch)
            validation_loss = _metrics(module, validation_samples, normalization).loss
            history.append({"epoch": epoch, "train_loss": total / len(y), "validation_loss": validation_loss})
            if report is not None:
                report(
                    f"CNN-LSTM epoch {epoch}/{config.max_epochs}: train loss {total / len(y):.4f}, "
                    f"validation loss {validation_loss:.4f}"
                )
            if validation_loss < best_loss:
                best_loss, best_epoch, stale = validation_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
                if stale >= config.patience:
                    break
    assert best_state is not None, "validation loss was NaN in every epoch"
    module.load_state_dict(best_state)
    module.eval()
    metrics = _metrics(module, validation_samples, normalization)
    if report is not None:
        report(
            f"CNN-LSTM kept epoch {best_epoch}: validation loss {metrics.loss:.4f}, directional accuracy "
            f"{metrics.directional_accuracy:.3f}, IC {metrics.information_coefficient:.3f}"
        )
    return TrainedForecaster(
        module=module,
        config=config,
        feature_columns=feature_columns,
        input_columns=input_columns,
        normalization=normalization,
        history=history,
        best_epoch=best_epoch,
        validation_loss=metrics.loss,
        directional_accuracy=metrics.directional_accuracy,
        information_coefficient=metrics.information_coefficient,
    )


def evaluate_forecaster(
    forecaster: TrainedForecaster, features: pd.DataFrame, history: pd.DataFrame | None = None
) -> ForecastMetrics:
    """Score the forecasts over a period (e.g. the test split) against the realized next returns.

    :param forecaster: a trained forecaster
    :param features: the period to score; its last date has no realized return and is not scored
    :param history: an earlier frame whose last ``window`` dates give the period's first dates full windows
    """
    panel = _panel(_with_history(features, history, forecaster.config.window), forecaster.feature_columns)
    first_date = features["date"].min() if len(features) else None
    samples = _samples(
        panel, forecaster.normalization, forecaster.config.window, first_date, require_target=True
    )
    return _metrics(forecaster.module, samples, forecaster.normalization)


def learned_features(forecaster: TrainedForecaster, features: pd.DataFrame) -> pd.DataFrame:
    """The forecaster's outputs at every (date, tic) with a full window of history inside ``features``.

    The output at date t uses rows of dates up to t only. The first ``window`` dates of the frame (and any
    window with a missing row) get no output: they are dropped, never back-filled.

    :param forecaster: a trained forecaster
    :param features: long features frame holding OHLCV and the forecaster's feature columns
    :return: ``date, tic, cnn_lstm_mean, cnn_lstm_logvar, cnn_lstm_emb_0..`` sorted by date then tic; mean
        and log-variance are of the next-period simple return, in return units
    """
    panel = _panel(features, forecaster.feature_columns)
    samples = _samples(panel, forecaster.normalization, forecaster.config.window)
    mean, logvar, embedding = _predict(forecaster.module, samples.windows)
    norm = forecaster.normalization
    columns = forecaster.output_columns
    out = pd.DataFrame(
        {
            "date": pd.to_datetime(samples.dates),
            "tic": samples.tics.astype(object),
            columns[0]: norm.target_mean + norm.target_std * mean.astype(np.float64),
            columns[1]: logvar.astype(np.float64) + 2.0 * math.log(norm.target_std),
        }
    )
    for i, name in enumerate(columns[2:]):
        out[name] = embedding[:, i].astype(np.float64)
    return out


@dataclass(frozen=True)
class LatestForecast:
    """The forecaster's outputs at the last date of a frame, as arrays (what :func:`learned_features` gives
    for that date).

    :param date: the frame's last date
    :param tics: tickers with a full window at that date, sorted
    :param values: ``(tics, outputs)`` float64, columns in :attr:`TrainedForecaster.output_columns` order
    :param columns: the output column names
    """

    date: Any
    tics: np.ndarray
    values: np.ndarray
    columns: list[str]

    def frame(self) -> pd.DataFrame:
        """As :func:`learned_features`'s rows of the last date."""
        out = pd.DataFrame(
            {"date": pd.to_datetime([self.date] * len(self.tics)), "tic": self.tics.astype(object)}
        )
        for i, name in enumerate(self.columns):
            out[name] = self.values[:, i]
        return out


@dataclass(frozen=True)
class _InputPlan:
    """How a panel of raw columns becomes the model's standardized inputs, prepared once per forecaster: the
    normalisation as arrays and, per way of making a feature scale-free, the feature positions it applies to."""

    mean: np.ndarray
    std: np.ndarray
    level: np.ndarray  # level / close - 1
    difference: np.ndarray  # value / close
    log1p: np.ndarray  # log1p(max(value, 0))
    raw: np.ndarray  # as is

    @classmethod
    def of(cls, forecaster: TrainedForecaster) -> _InputPlan:
        kinds: dict[str, list[int]] = {"level": [], "difference": [], "log1p": [], "raw": []}
        for position, column in enumerate(forecaster.feature_columns):
            kinds[_scale_free_kind(column)].append(position)
        norm = forecaster.normalization
        return cls(
            mean=np.asarray(norm.mean),
            std=np.asarray(norm.std),
            **{kind: np.array(positions, dtype=np.intp) for kind, positions in kinds.items()},
        )


def _standardized_windows(plan: _InputPlan, panel: np.ndarray) -> np.ndarray:
    """``(tickers, window, inputs)`` standardized inputs of the panel's last ``window`` dates, the arithmetic of
    :func:`_panel` and :func:`_samples` (NaN where an input is undefined).

    :param panel: ``(window + 1, tickers, 4 + features)``: high, low, close, volume, then the forecaster's feature
        columns in order; its first date only gives the second one its previous close and volume
    """
    high, low, close, volume = (panel[..., i] for i in range(4))
    today, features = close[1:], panel[1:, :, 4:]
    log_volume = np.log1p(np.maximum(volume, 0.0))
    inputs = np.empty((*today.shape, len(BASE_INPUTS) + features.shape[-1]))
    scaled = inputs[..., len(BASE_INPUTS) :]  # a view: the assignments below fill ``inputs``
    with np.errstate(divide="ignore", invalid="ignore"):
        inputs[..., 0] = np.log(today / close[:-1])
        inputs[..., 1] = (high[1:] - low[1:]) / today
        inputs[..., 2] = log_volume[1:] - log_volume[:-1]
        scaled[..., plan.level] = features[..., plan.level] / today[..., None] - 1.0
        scaled[..., plan.difference] = features[..., plan.difference] / today[..., None]
        scaled[..., plan.log1p] = np.log1p(np.maximum(features[..., plan.log1p], 0.0))
        scaled[..., plan.raw] = features[..., plan.raw]
    inputs[~np.isfinite(inputs)] = np.nan
    standardized = np.clip((inputs - plan.mean) / plan.std, -INPUT_CLIP, INPUT_CLIP)
    return standardized.transpose(1, 0, 2)


def _output_values(
    norm: InputNormalization, mean: np.ndarray, logvar: np.ndarray, embedding: np.ndarray
) -> np.ndarray:
    """The model's standardized outputs in return units, ``(samples, outputs)``, as :func:`learned_features`."""
    return np.column_stack(
        [
            norm.target_mean + norm.target_std * mean.astype(np.float64),
            logvar.astype(np.float64) + 2.0 * math.log(norm.target_std),
            embedding.astype(np.float64),
        ]
    )


def _model_columns(forecaster: TrainedForecaster) -> list[str]:
    """The raw columns a panel for :func:`_standardized_windows` holds, in order."""
    return ["high", "low", "close", "volume", *forecaster.feature_columns]


def _latest_panel(features: pd.DataFrame, columns: list[str], n_dates: int):
    """(last date, sorted tickers, ``(n_dates, tickers, columns)`` panel, NaN where a row is missing) over the
    last ``n_dates`` dates only, ``None`` when the frame holds fewer dates."""
    missing = [c for c in ("date", "tic", *columns) if c not in features]
    if missing:
        raise ValueError(f"features frame lacks columns {missing}")
    # ``.values`` keeps timezone-aware dates as datetime64 (``to_numpy`` would box each into a Timestamp).
    all_dates = features["date"].values
    dates = np.unique(all_dates)
    if len(dates) < n_dates:
        return None
    keep = all_dates >= dates[-n_dates]
    tics, col = np.unique(features["tic"].to_numpy()[keep], return_inverse=True)
    row = np.searchsorted(dates[-n_dates:], all_dates[keep])
    if len(np.unique(row * len(tics) + col)) != len(row):
        raise ValueError("features frame holds more than one row for some (date, tic)")
    panel = np.full((n_dates, len(tics), len(columns)), np.nan)
    panel[row, col] = features.loc[:, columns].to_numpy(dtype=np.float64)[keep]
    return features["date"].max(), tics, panel


def latest_learned_features(forecaster: TrainedForecaster, features: pd.DataFrame) -> LatestForecast | None:
    """The forecaster's outputs at the frame's last date only: :func:`learned_features`'s rows of that date
    (within float rounding), from the last ``window + 1`` dates alone and one model call.

    :param forecaster: a trained forecaster
    :param features: long features frame holding OHLCV and the forecaster's feature columns
    :return: ``None`` while the frame holds fewer than ``window + 1`` dates (the first input needs the
        previous close); tickers without a complete window are left out, as the batch leaves them out
    """
    latest = _latest_panel(features, _model_columns(forecaster), forecaster.config.window + 1)
    if latest is None:
        return None
    last_date, tics, panel = latest
    windows = _standardized_windows(_InputPlan.of(forecaster), panel)
    complete = np.isfinite(windows).all(axis=(1, 2))
    mean, logvar, embedding = _predict(
        forecaster.module, np.ascontiguousarray(windows[complete], dtype=np.float32)
    )
    values = _output_values(forecaster.normalization, mean, logvar, embedding)
    return LatestForecast(last_date, tics[complete], values, forecaster.output_columns)


class LiveForecaster:
    """A trained forecaster prepared once for one forecast per bar from arrays (the live engine's): no frame, the
    normalisation and the input layout precomputed, the network a private copy in eval mode without gradients
    (nothing toggles its mode per call, and training the original elsewhere cannot switch its dropout on), one
    ``inference_mode`` call on a reused input buffer.

    :param forecaster: a trained forecaster
    """

    def __init__(self, forecaster: TrainedForecaster) -> None:
        self.forecaster = forecaster
        self.n_dates = forecaster.config.window + 1
        self._plan = _InputPlan.of(forecaster)
        self._module = copy.deepcopy(forecaster.module).eval().requires_grad_(False)
        self._positions: dict[tuple[str, ...], np.ndarray] = {}
        self._buffer = np.empty((0, forecaster.config.window, len(forecaster.input_columns)), np.float32)
        self._tensor = torch.from_numpy(self._buffer)

    @property
    def output_columns(self) -> list[str]:
        return self.forecaster.output_columns

    @property
    def read_columns(self) -> list[str]:
        """The feature columns a forecast reads: high, low, close, volume and the model's features."""
        return _model_columns(self.forecaster)

    def forecast(self, rows: np.ndarray, columns: tuple[str, ...]) -> np.ndarray | None:
        """The outputs at the last date, ``(tickers, outputs)`` float64 in :attr:`output_columns` order: what
        :func:`latest_learned_features` gives for the same rows.

        :param rows: ``(dates, tickers, columns)`` feature rows, oldest date first, tickers sorted
        :param columns: the names of the last axis of ``rows``
        :return: ``None`` while fewer than ``window + 1`` dates exist, or when a ticker's window is incomplete
            (the batch gives it no output, so the bar cannot be decided)
        """
        if len(rows) < self.n_dates:
            return None
        panel = rows[-self.n_dates :][..., self._panel_positions(columns)]
        windows = _standardized_windows(self._plan, panel)
        if not np.isfinite(windows).all():
            return None
        inputs = self._inputs(windows)
        # One thread, as _predict: the bits of the result do not depend on the core count.
        with torch.inference_mode(), single_torch_thread():
            mean, logvar, embedding = self._module(inputs)
        return _output_values(self.forecaster.normalization, mean.numpy(), logvar.numpy(), embedding.numpy())

    def _panel_positions(self, columns: tuple[str, ...]) -> np.ndarray:
        positions = self._positions.get(columns)
        if positions is None:
            index = {name: i for i, name in enumerate(columns)}
            needed = _model_columns(self.forecaster)
            missing = [c for c in needed if c not in index]
            if missing:
                raise ValueError(f"features lack columns the forecaster reads: {missing}")
            positions = self._positions[columns] = np.array([index[c] for c in needed], dtype=np.intp)
        return positions

    def _inputs(self, windows: np.ndarray) -> torch.Tensor:
        """The windows as float32 in the reused buffer, and the tensor sharing its memory."""
        if self._buffer.shape != windows.shape:
            self._buffer = np.empty(windows.shape, np.float32)
            self._tensor = torch.from_numpy(self._buffer)
        np.copyto(self._buffer, windows, casting="same_kind")
        return self._tensor


def add_learned_features(features: pd.DataFrame, learned: pd.DataFrame) -> pd.DataFrame:
    """Inner-join learned features onto a features frame by (date, tic), sorted by date then tic.

    Rows without learned features (the warm-up window) are dropped.

    :param features: the features frame
    :param learned: output of :func:`learned_features`
    """
    clashes = [c for c in learned.columns if c not in ("date", "tic") and c in features.columns]
    if clashes:
        raise ValueError(f"features already hold columns {clashes}")
    joined = features.merge(learned, on=["date", "tic"], how="inner", validate="one_to_one")
    return joined.sort_values(["date", "tic"], kind="stable", ignore_index=True)


class ForecasterExport(nn.Module):
    """The forecaster as one tensor in, one tensor out, for MLflow's pytorch flavour.

    Input: normalized windows ``[B, window, n_inputs]``; output ``[B, 2 + embedding_dim]``: mean and
    log-variance of the standardized next return, then the embedding.
    """

    def __init__(self, module: CNNLSTMForecaster) -> None:
        super().__init__()
        self.module = module

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        mean, logvar, embedding = self.module(windows)
        return torch.cat([mean.reshape(-1, 1), logvar.reshape(-1, 1), embedding], dim=1)


def feature_builder(features: pd.DataFrame, forecaster: TrainedForecaster):
    """bars -> features with the forecaster's outputs, built the way the ``features`` asset built them."""
    vix = features.drop_duplicates("date").set_index("date")["vix"] if "vix" in features.columns else None
    use_turbulence = "turbulence" in features.columns

    def build(bars: pd.DataFrame) -> pd.DataFrame:
        cut_vix = vix[vix.index <= bars["date"].max()] if vix is not None else None
        base = build_features(bars, use_turbulence=use_turbulence, vix=cut_vix)
        return add_learned_features(base, learned_features(forecaster, base))

    return build
