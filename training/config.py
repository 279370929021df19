"""Training configuration: three frozen dataclasses, loadable from TOML or YAML.

The checkpoint stores ``asdict(config)`` so a model file always says how it was made.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

STEP_CELLS = ("rnn", "lstm", "gru", "seq2seq-gru", "seq2seq-lstm", "grid-rowlstm", "peephole", "jordan", "seq2seq-attn-gru", "seq2seq-attn-lstm")
WINDOW_CELLS = ("segrnn",)


@dataclass(frozen=True, slots=True)
class DataConfig:
    source: str = ""  # CSV path or store URL (influxdb://, sqlite:///, memory://)
    streams: tuple[str, ...] = ()  # store: stream ids "device/quantity"; CSV: value columns
    # Globs on the stream ids the exported model serves (Manifest.streams); empty: the
    # store's stream ids it was trained on, none for a CSV (service/streams/binding.py).
    serve: tuple[str, ...] = ()
    time_column: str = ""  # CSV: empty = the one column named timestamp, time, datetime or date (service/tabular.py)
    delimiter: str = ""  # CSV: one character; empty: detected from the header (',', ';', tab or '|')
    series_column: str | None = None  # CSV: one column naming the series (long format)
    cadence_s: float = 0.0  # 0: inferred from the median timestamp step
    start: str | None = None  # ISO time range for store reads
    end: str | None = None
    split: tuple[float, float] = (0.7, 0.1)  # train, validation fractions; rest is test
    # Explicit (train_end, val_end[, test_end]) rows; without test_end (or test_end == val_end)
    # there is no test part: training reports validation only.
    split_rows: tuple[int, ...] | None = None
    time_features: tuple[str, ...] = ("hour_sin", "hour_cos", "dow_sin", "dow_cos")
    # "series": each series (stream) is one multivariate asset with these features.
    # "univariate": every column/stream becomes its own F=1 series (global model).
    layout: str = "series"
    season_steps: int = 0  # seasonal-naive baseline period in steps; 0: a day when sensible


@dataclass(frozen=True, slots=True)
class ModelConfig:
    cell: str = "gru"  # rnn | lstm | gru | peephole | jordan | seq2seq-gru | seq2seq-lstm | segrnn
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.1
    horizon: int = 12
    scaling: str = "fixed"  # fixed: train mean/std in the graph; ema: per-stream running stats in state
    ema_alpha: float = 0.01  # floor of the running-stats weight (~1/alpha steps of memory)
    lags: int = 0  # step models: last `lags` values kept in the state for a linear skip head
    window: int = 96  # window models: input length L
    segment: int = 24  # segrnn: segment length w (window % segment == 0)
    bidirectional: bool = False  # window models only
    probabilistic: bool = True
    # The spread head reads detached features, so its NLL cannot reshape the recurrent
    # state. Measured both ways: detached learns the mean far better on the demo streams
    # (val MSE 0.350 vs 0.445); attached regularises the ETT lag models (test 0.38 vs 0.42).
    detach_scale: bool = True
    # Sensor grids: (H, W) of a frame whose H*W pixels are the features in row-major order.
    # Required by cell 'grid-rowlstm' (training/grid.py); any step model may declare it
    # (the manifest's ``grid``: the dashboard draws the stream as a heat map).
    grid: tuple[int, ...] = ()
    # seq2seq-attn-*: the decoder attends over the last attn_window encoder states, kept
    # in the state (attn_window x hidden + 1 floats more per stream; training/attention.py).
    attn_window: int = 48


@dataclass(frozen=True, slots=True)
class TrainConfig:
    epochs: int = 30
    batch: int = 32
    chunk: int = 48  # truncated BPTT length
    strand: int = 384  # step models: contiguous run each batch row walks through per epoch
    # Step models: strands keep their places from epoch to epoch and each starts from the
    # state the strand before it ended with in the previous epoch (state carried across
    # epochs, as in service, where it is never reset); no burn-in after the first epoch.
    carry_state: bool = False
    # Step models: each strand (inputs and targets) is shifted by a random constant per
    # channel with this std in train-std units, so the network learns changes, not levels.
    level_noise: float = 0.0
    lr: float = 3e-3
    weight_decay: float = 1e-2
    clip: float = 1.0
    patience: int = 5
    ema_decay: float = 0.99  # weight averaging; 0 disables
    nll_weight: float = 0.2  # the spread head learns by Gaussian NLL; the mean by MSE
    seed: int = 0
    threads: int = 1
    max_minutes: float = 15.0
    progress: bool = True
    decoder_positions: int = 8  # seq2seq: positions per chunk that run the decoder in training
    # Anomaly thresholds are set on validation data for this many false alerts per stream-day
    # (training/calibrate.py; 0.024: one per 1,000 stream-hours).
    false_alerts_per_day: float = 0.024


@dataclass(frozen=True, slots=True)
class Config:
    name: str = "model"
    version: str = ""  # empty: a UTC timestamp at export
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    out = {}
    for k, v in raw.items():
        out[k] = tuple(v) if isinstance(v, list) else v
    return cls(**out)


def from_dict(raw: dict[str, Any]) -> Config:
    top = dict(raw)
    data = _build(DataConfig, top.pop("data", {}) or {}, "[data]")
    model = _build(ModelConfig, top.pop("model", {}) or {}, "[model]")
    train = _build(TrainConfig, top.pop("train", {}) or {}, "[train]")
    base = _build(Config, top, "top level")
    cfg: Config = replace(base, data=data, model=model, train=train)
    validate(cfg)
    return cfg


def load(path: Path) -> Config:
    """Read a TOML (.toml) or YAML (.yaml/.yml) config file."""
    text = path.read_text()
    if path.suffix == ".toml":
        raw = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml  # type: ignore[import-untyped]

        raw = yaml.safe_load(text) or {}
    else:
        raise ValueError(f"{path}: config must be .toml, .yaml or .yml, found {path.suffix!r}")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return from_dict(raw)


def validate(cfg: Config) -> None:
    """Refuse contradictory settings with a message that says what was found."""
    m = cfg.model
    if m.cell not in STEP_CELLS + WINDOW_CELLS:
        raise ValueError(f"model.cell {m.cell!r} unknown; expected one of {STEP_CELLS + WINDOW_CELLS}")
    if m.bidirectional and m.cell in STEP_CELLS:
        raise ValueError(
            f"model.bidirectional needs the whole window recomputed; step model {m.cell!r} "
            "sees one reading at a time. Use cell='segrnn' or bidirectional=false."
        )
    if m.grid and (len(m.grid) != 2 or min(m.grid) < 1 or m.cell not in STEP_CELLS):
        raise ValueError(f"model.grid {list(m.grid)}: expected [H, W] (two sizes >= 1) on a step model")
    if m.cell == "grid-rowlstm" and not m.grid:
        raise ValueError("model.cell 'grid-rowlstm' needs model.grid [H, W] (--grid HxW, e.g. 8x8)")
    if m.attn_window < 1:
        raise ValueError(f"model.attn_window {m.attn_window}: expected >= 1 (encoder steps the decoder attends over)")
    if m.scaling not in ("fixed", "ema"):
        raise ValueError(f"model.scaling {m.scaling!r}: expected 'fixed' or 'ema'")
    if m.cell in WINDOW_CELLS and m.window % m.segment:
        raise ValueError(f"model.window {m.window} must be a multiple of model.segment {m.segment}")
    if m.cell in WINDOW_CELLS and m.scaling != "fixed":
        raise ValueError("window models normalise by the window's last value; use scaling='fixed'")
    if m.horizon < 1 or m.hidden < 1 or m.layers < 1:
        raise ValueError("model.horizon, hidden and layers must be >= 1")
    if len(cfg.data.delimiter) > 1:
        raise ValueError(f"data.delimiter {cfg.data.delimiter!r}: expected one character (or empty to detect it)")
    rows = cfg.data.split_rows
    if rows is not None and (len(rows) not in (2, 3) or not all(isinstance(r, int) for r in rows)
                             or not 0 < rows[0] < rows[1] <= rows[-1]):
        raise ValueError(f"data.split_rows {list(rows)}: expected train_end, val_end[, test_end] row numbers "
                         "with 0 < train_end < val_end <= test_end (e.g. [400, 500] or [400, 500, 600])")
    if not cfg.train.level_noise >= 0:
        raise ValueError(f"train.level_noise {cfg.train.level_noise}: expected 0 (off) or a std above 0")
    if not cfg.train.false_alerts_per_day > 0:
        raise ValueError(f"train.false_alerts_per_day {cfg.train.false_alerts_per_day}: expected a rate above 0")
    if cfg.data.layout not in ("series", "univariate"):
        raise ValueError(f"data.layout {cfg.data.layout!r}: expected 'series' or 'univariate'")
