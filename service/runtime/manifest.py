"""The model contract between ``training/`` and ``service/``: the manifest on disk.

A model artefact is a folder ``models/<name>/<version>/`` with ``model.onnx`` and
``manifest.json``. Two graph kinds:

- ``step``: inputs ``x`` float32 [B, F] (raw values, NaN = missing), ``state`` float32
  [B, S], and, when ``time_features`` is non-empty, ``tf`` float32 [B, K]; outputs
  ``forecast`` [B, H, F_out] (raw units), ``scale`` [B, H, F_out] when probabilistic,
  ``state_out`` [B, S]. One call advances every stream in the batch by one step.
- ``window``: input ``x`` float32 [B, L, F] (the last L raw steps, NaN = missing) and,
  with time features, ``tf`` float32 [B, L, K]; outputs ``forecast`` and ``scale`` as above.
  Recomputed over the whole window when a forecast is due.

``forecast[:, h]`` is the value expected ``h + 1`` cadence steps after the step just fed.
Normalisation lives inside the graph. Both halves validate against this one schema.
``streams`` (added later, empty in older manifests) names the streams the model serves.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.errors import ModelError

SCHEMA_VERSION: Final = 1
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
CELLS = ("rnn", "lstm", "gru", "seq2seq-gru", "seq2seq-lstm", "segrnn", "linear", "grid-rowlstm", "peephole", "jordan", "seq2seq-attn-gru", "seq2seq-attn-lstm")


class DataRange(BaseModel):
    source: str = Field(description="Where the training history came from (CSV path, store URL).")
    start: datetime | None = None
    end: datetime | None = None
    rows: int = 0


class AnomalyCalibration(BaseModel):
    """The anomaly evidence as measured on the trainer's validation data
    (``service.anomaly.evidence``): what makes a threshold mean a false-alarm rate."""

    model_config = ConfigDict(extra="forbid")

    precision: list[list[float]] | None = Field(
        None, description="(Fo, Fo) inverse of the shrunk correlation of standardised one-step residuals; "
        "empty for one output feature."
    )
    scales: list[float] = Field(
        default_factory=lambda: [1.0, 1.0, 1.0, 1.0], min_length=4, max_length=4,
        description="Per evidence part (instant, lag, mean, variance): factor on -log10 p fitted on validation.",
    )
    threshold: float = Field(gt=0, lt=1, description="Score that fires on M of N steps.")
    extreme_threshold: float = Field(gt=0, lt=1, description="Score that fires on a single step.")
    false_alerts_per_day: float = Field(ge=0, description="The false-alarm rate the thresholds were set for.")
    steps: int = Field(ge=0, description="Validation steps the calibration saw.")


class Manifest(BaseModel):
    """What the service needs to know to run a model; written by ``training.export``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(pattern=SAFE_NAME)
    version: str = Field(pattern=SAFE_NAME)
    kind: Literal["step", "window"]
    cell: str = Field(description=f"One of {CELLS}.")
    layers: int = Field(ge=0)
    hidden: int = Field(ge=0)
    state_size: int = Field(ge=0, description="S: flattened recurrent state width (0 for window graphs).")
    window: int | None = Field(None, ge=1, description="L: input length of a window graph.")
    features: list[str] = Field(min_length=1, description="Input feature names, in order.")
    output_features: list[str] = Field(min_length=1)
    time_features: list[str] = Field(default_factory=list, description="Names from service.runtime.timefeatures.")
    cadence_s: float = Field(gt=0)
    horizon: int = Field(ge=1)
    warmup_steps: int = Field(ge=0)
    probabilistic: bool = False
    default_threshold: float = Field(0.99, gt=0, lt=1)
    anomaly: AnomalyCalibration | None = None
    data: DataRange
    metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="split -> metric -> value, baselines beside the model."
    )
    streams: list[str] = Field(
        default_factory=list,
        description="Globs (fnmatch) on the stream ids this model serves without a binding: 'device/quantity' "
        "for a univariate model, the device for a multivariate one. Empty: only bindings or feature names route "
        "streams to it (service/streams/binding.py).",
    )
    grid: list[int] | None = Field(
        None, min_length=2, max_length=2,
        description="[H, W] of a sensor grid: the features are its H*W pixels in row-major order (the dashboard "
        "draws the stream as a heat map). None: not a grid.",
    )
    onnx_file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sequence_file: str | None = Field(
        None, description="Optional sequence form of a step graph (x [B, T, F], state, tf [B, T, K] -> the last "
        "forecast, scale and state_out), e.g. 'model.seq.onnx' (tools/seqform.py). Absent: the service rolls the "
        "step graph, a call per step.",
    )
    sequence_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    created_at: datetime


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(folder: Path) -> Manifest:
    """Read and validate ``folder/manifest.json`` and the ONNX file's hash."""
    return read_model(folder)[0]


def check_model_bytes(manifest: Manifest, data: bytes, where: str) -> None:
    """ModelError unless ``data`` hashes to the manifest's SHA-256."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ModelError(f"{where}: SHA-256 {digest[:12]}… does not match manifest {manifest.sha256[:12]}…")


def read_model(folder: Path) -> tuple[Manifest, bytes]:
    """The validated manifest and the ONNX file's bytes, read once and hashed.

    Whoever runs the model builds it from these bytes (``OrtRuntime(..., model_bytes=)``):
    a file swapped between the hash check and the load cannot be the one that runs.
    """
    path = folder / "manifest.json"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read manifest ({e.strerror})") from e
    try:
        import orjson

        data = orjson.loads(raw)
    except Exception as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object, found {type(data).__name__}")
    found = data.get("schema_version")
    if found != SCHEMA_VERSION:
        raise ModelError(f"{path}: schema_version {found!r} is not understood (expected {SCHEMA_VERSION})")
    try:
        manifest = Manifest.model_validate(data)
    except Exception as e:
        raise ModelError(f"{path}: invalid manifest: {e}") from e
    if manifest.cell not in CELLS:
        raise ModelError(f"{path}: cell {manifest.cell!r} unknown (expected one of {CELLS})")
    if manifest.grid is not None and (min(manifest.grid) < 1 or
                                      manifest.grid[0] * manifest.grid[1] != len(manifest.features)):
        raise ModelError(f"{path}: grid {manifest.grid} does not fold {len(manifest.features)} features "
                         "(expected H * W == len(features))")
    onnx_path = folder / manifest.onnx_file
    if onnx_path.resolve().parent != folder.resolve():
        raise ModelError(f"{path}: onnx_file {manifest.onnx_file!r} must be a file in the model folder")
    try:
        data = onnx_path.read_bytes()
    except OSError as e:
        raise ModelError(f"{onnx_path}: cannot read model ({e.strerror})") from e
    check_model_bytes(manifest, data, str(onnx_path))
    return manifest, data


def read_sequence(folder: Path, manifest: Manifest) -> bytes | None:
    """The shipped sequence graph's bytes, checked against ``sequence_sha256``; None when none is shipped."""
    if manifest.sequence_file is None:
        return None
    path = folder / manifest.sequence_file
    if manifest.kind != "step" or manifest.sequence_sha256 is None or path.resolve().parent != folder.resolve():
        raise ModelError(f"{folder / 'manifest.json'}: sequence_file {manifest.sequence_file!r} needs a step model, "
                         "sequence_sha256 and a file in the model folder")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read sequence graph ({e.strerror})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sequence_sha256:
        raise ModelError(f"{path}: SHA-256 {digest[:12]}… does not match manifest {manifest.sequence_sha256[:12]}…")
    return data
