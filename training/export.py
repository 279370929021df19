"""Export a trained network as ``models/<name>/<version>/{model.onnx, manifest.json}``.

The ONNX graph is checked with ``onnx.checker`` and rolled through onnxruntime against
the PyTorch model before the manifest is written: step graphs over a long sequence with
the state fed back (NaNs included), window graphs over a batch of windows. An untrained
network is refused, so a random model never ships by accident.
"""

from __future__ import annotations

import contextlib
import glob
import json
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.errors import ModelError
from service.records import escape_id_part
from service.runtime.manifest import DataRange, Manifest, load_manifest, sha256_file
from tools.seqform import ship_sequence
from training.calibrate import Segment, calibrate, open_model, summary, write_block
from training.config import DataConfig
from training.data import F32, Series
from training.nets import SegRNN, StepGraph, StepNet
from training.trainer import Assessment, Trained, time_names

OPSET = 17
PARITY_TOL = 1e-4  # max abs difference in normalised units (raw / train std) ...
# ... or, when larger, this fraction of the channel's largest output: float32 holds ~7
# digits, so a thermocouple at 26 with a std of 0.02 cannot be represented closer than
# ~1e-4 std (one ulp of 26 is 1.9e-6), and torch and onnxruntime round the final
# ``* std + mean`` differently. 1e-6 is about 8 ulps: a wrong graph is far beyond it.
PARITY_REL = 1e-6


@dataclass(frozen=True, slots=True)
class Exported:
    folder: Path
    manifest: Manifest
    parity: float  # max abs diff ONNX vs torch, in train-std units
    calibration: str = ""  # the anomaly calibration's summary ("" when not calibrated)


@dataclass(frozen=True, slots=True)
class Parity:
    gap: float  # max |ONNX - torch| in train-std units (reported in the manifest)
    excess: float  # max over channels of |ONNX - torch| / allowed; <= 1 passes
    channel: int  # the channel where ``excess`` is reached


def _compare(pairs: list[tuple[F32, F32]], std: F32) -> Parity:
    """Per output channel: allowed = max(PARITY_TOL * std, PARITY_REL * max |torch output|).

    ``pairs`` hold (onnx, torch) arrays whose last axis is the channel. Non-finite
    differences (NaN where torch has a number) count as infinitely far.
    """
    F = len(std)
    diff = np.zeros(F, np.float64)
    mag = np.zeros(F, np.float64)
    for a, b in pairs:
        d = np.abs(a.astype(np.float64) - b.astype(np.float64)).reshape(-1, F)
        d = np.where(np.isnan(a).reshape(-1, F) & np.isnan(b).reshape(-1, F), 0.0, d)
        diff = np.maximum(diff, np.where(np.isfinite(d), d, np.inf).max(axis=0))
        mag = np.maximum(mag, np.nanmax(np.abs(b.astype(np.float64)).reshape(-1, F), axis=0, initial=0.0))
    allowed = np.maximum(PARITY_TOL * std.astype(np.float64), PARITY_REL * mag)
    ratio = diff / allowed
    return Parity(float((diff / std).max()), float(ratio.max()), int(ratio.argmax()))


def _io(net: StepNet | SegRNN) -> tuple[tuple[torch.Tensor, ...], list[str], dict[str, dict[int, str]]]:
    F = net.n_features
    if isinstance(net, StepNet):
        args: tuple[torch.Tensor, ...] = (torch.zeros(2, F), net.initial_state(2))
        names = ["x", "state"]
        if net.n_time:
            args += (torch.zeros(2, net.n_time),)
            names.append("tf")
        # seq2seq-attn adds ``attention`` (B, H, K): the service asks only for what it uses.
        outs = ["forecast", "scale", "state_out"] + (["attention"] if net.ring is not None else [])
    else:
        args = (torch.zeros(2, net.cfg.window, F),)
        names = ["x"]
        outs = ["forecast", "scale"]
    axes = {n: {0: "B"} for n in names + outs}
    return args, names, axes


def to_onnx(net: StepNet | SegRNN, path: Path) -> None:
    """Write the graph (dynamic batch) and run onnx.checker on it."""
    import onnx

    if not getattr(net, "trained", False):
        raise ModelError("refusing to export an untrained network: train it first (training.trainer.train)")
    net.eval()
    module: torch.nn.Module = StepGraph(net) if isinstance(net, StepNet) else net
    # export() restores the wrapper's train/eval mode afterwards, recursively: a fresh
    # wrapper is in train mode and would silently switch dropout back on in `net`.
    module.eval()
    args, names, axes = _io(net)
    outs = [n for n in axes if n not in names]  # _io's outputs, in order
    # dynamo=False: a lighter graph, faster at B=1 (docs/measured.md); batch axes declared explicitly.
    # The tracer warns about shape checks inside torch's own RNN code and about the
    # deprecation of this exporter; the parity check below is what proves the trace right.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=outs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def parity(net: StepNet | SegRNN, path: Path, sample: F32, tf: F32 | None, steps: int = 300) -> Parity:
    """ONNX vs torch over a rollout (step) or a window batch, per output channel.

    ``sample`` (N, F) raw values, ``tf`` (N, K); NaNs are sprinkled in to exercise the mask.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    net.eval()
    std = net.std.numpy()
    rng = np.random.default_rng(0)
    B = 3
    pairs: list[tuple[F32, F32]] = []
    if isinstance(net, StepNet):
        T = min(steps, len(sample) - B)
        x = np.stack([sample[b : b + T] for b in range(B)]).astype(np.float32)  # (B, T, F)
        x[rng.random(x.shape) < 0.05] = np.nan
        t = np.stack([tf[b : b + T] for b in range(B)]).astype(np.float32) if tf is not None and net.n_time else None
        with torch.no_grad():
            fc_t, sc_t, st_t = net.seq(torch.from_numpy(x), None if t is None else torch.from_numpy(t), net.initial_state(B))
        state = np.zeros((B, net.state_size), dtype=np.float32)
        for i in range(T):
            feed = {"x": x[:, i], "state": state}
            if t is not None:
                feed["tf"] = t[:, i]
            fc, sc, state = sess.run(["forecast", "scale", "state_out"], feed)
            pairs += [(fc, fc_t[:, i].numpy()), (sc, sc_t[:, i].numpy())]
        result = _compare(pairs, std)
        if not np.allclose(state, st_t.numpy(), atol=1e-3, rtol=1e-3):
            bad = float(np.abs(state - st_t.numpy()).max())
            return Parity(max(result.gap, bad), max(result.excess, bad / 1e-3), result.channel)
        return result
    L = net.cfg.window
    n = min(16, len(sample) - L)
    x = np.stack([sample[i : i + L] for i in range(n)]).astype(np.float32)  # (n, L, F)
    x[rng.random(x.shape) < 0.05] = np.nan
    with torch.no_grad():
        fc_t, sc_t = net(torch.from_numpy(x))
    fc, sc = sess.run(None, {"x": x})
    return _compare([(fc, fc_t.numpy()), (sc, sc_t.numpy())], std)


def _metrics(a: dict[str, Assessment]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for split, s in a.items():
        m: dict[str, float] = {"mse": s.model.mse, "mae": s.model.mae, "repeat_last_mse": s.repeat_last.mse,
                               "repeat_last_mae": s.repeat_last.mae}
        if s.seasonal_naive is not None:
            m["seasonal_naive_mse"] = s.seasonal_naive.mse
            m["seasonal_naive_mae"] = s.seasonal_naive.mae
        if s.fresh is not None:
            m["fresh_state_mse"] = s.fresh.mse
        for h in sorted({0, len(s.model.mse_by_step) // 2, len(s.model.mse_by_step) - 1}):
            m[f"mse_h{h + 1}"] = s.model.mse_by_step[h]
        out[split] = m
    return out


def warmup_steps(t: Trained) -> int:
    if isinstance(t.net, SegRNN):
        return t.cfg.model.window
    # The training burn-in (one chunk) and the lag buffer: before that the state is not
    # what the model was trained on. Running (ema) statistics need longer to settle:
    # from a fresh state the demo model raised false alarms up to step ~85 of 400.
    ema = round(0.25 / t.cfg.model.ema_alpha) if t.cfg.model.scaling == "ema" else 0
    return max(t.cfg.train.chunk, t.cfg.model.lags, ema)


def export(
    t: Trained,
    models_dir: Path,
    assessments: dict[str, Assessment],
    version: str | None = None,
    default_threshold: float = 0.999,
    extra_metrics: dict[str, dict[str, float]] | None = None,
    false_alerts_per_day: float | None = None,
) -> Exported:
    """Write the artefact; returns its folder, the validated manifest and the parity gap.

    Everything is written into a hidden temporary folder beside the version folder (the
    registry skips names starting with '.') and renamed into place once the manifest
    validates: a failed export leaves no empty or partial ``<name>/<version>/`` that the
    registry would refuse on every reload. With ``false_alerts_per_day``, the anomaly
    evidence is calibrated on the validation rows with the exported graph (training/calibrate.py)
    before the rename, so the model is never served uncalibrated.
    """
    version = version or t.cfg.version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    parent = models_dir / t.cfg.name
    folder = parent / version
    made_parent = not parent.exists()
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
    try:
        _write(t, tmp, version, assessments, default_threshold, extra_metrics)
        note = "" if false_alerts_per_day is None else calibrate_trained(t, tmp, false_alerts_per_day)
        if folder.exists():  # re-exporting a version replaces it, as writing over it did
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if still empty
        raise
    m = load_manifest(folder)
    return Exported(folder, m, float(m.metrics["parity"]["max_abs_diff_std_units"]), note)


def calibrate_trained(t: Trained, folder: Path, false_alerts_per_day: float) -> str:
    """Calibrate the exported graph in ``folder`` on ``t``'s validation rows; the summary line."""
    segments = [Segment(s.name, s.ts_ns, d.values, d.split.train_end, d.split.val_end)
                for s, d in zip(t.dataset.series, t.data, strict=True)]
    model = open_model(folder)
    result = calibrate(model, segments, false_alerts_per_day)
    write_block(folder, result.block)
    return summary(result, model.manifest.cadence_s)


def _write(
    t: Trained,
    folder: Path,
    version: str,
    assessments: dict[str, Assessment],
    default_threshold: float,
    extra_metrics: dict[str, dict[str, float]] | None,
) -> None:
    onnx_path = folder / "model.onnx"
    to_onnx(t.net, onnx_path)
    d0 = t.data[0]
    p = parity(t.net, onnx_path, d0.values[: d0.split.train_end], d0.tf)
    gap = p.gap
    if not p.excess <= 1.0:
        feature = t.dataset.features[p.channel]
        raise ModelError(
            f"ONNX and torch disagree on {feature!r} by {p.excess:.1f}x what float32 allows "
            f"(max(abs {PARITY_TOL} x train std, {PARITY_REL:g} x the output's magnitude); "
            f"{gap:.2e} in train-std units)"
        )
    net = t.net
    ts = np.concatenate([s.ts_ns for s in t.dataset.series])
    metrics = _metrics(assessments)
    metrics["parity"] = {"max_abs_diff_std_units": gap}
    metrics["training"] = {"seconds": t.history.seconds, "best_epoch": float(t.history.best_epoch),
                           "best_val_mse": t.history.best_val}
    metrics.update(extra_metrics or {})
    manifest = Manifest(
        name=t.cfg.name,
        version=version,
        kind="step" if isinstance(net, StepNet) else "window",
        cell=t.cfg.model.cell,
        layers=t.cfg.model.layers,
        hidden=t.cfg.model.hidden,
        state_size=net.state_size if isinstance(net, StepNet) else 0,
        window=t.cfg.model.window if isinstance(net, SegRNN) else None,
        features=list(t.dataset.features),
        output_features=list(t.dataset.features),
        time_features=list(time_names(t.cfg)),
        cadence_s=t.dataset.cadence_s,
        horizon=t.cfg.model.horizon,
        warmup_steps=warmup_steps(t),
        probabilistic=True,
        default_threshold=default_threshold,
        data=DataRange(
            source=t.dataset.source,
            start=datetime.fromtimestamp(int(ts.min()) / 1e9, tz=UTC),
            end=datetime.fromtimestamp(int(ts.max()) / 1e9, tz=UTC),
            rows=int(sum(len(s.values) for s in t.dataset.series)),
        ),
        metrics=metrics,
        streams=served_streams(t.cfg.data, t.dataset.series, t.dataset.features),
        grid=list(t.cfg.model.grid) or None,
        sha256=sha256_file(onnx_path),
        created_at=datetime.now(UTC),
    )
    (folder / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    if isinstance(net, StepNet):  # the sequence form beside it: predict and replay in one call
        try:
            ship_sequence(folder)
        except Exception as e:  # optional: without it the service rolls the step graph; never lose the export
            warnings.warn(f"no sequence form for this model ({e}); the service steps through histories instead",
                          stacklevel=1)
            (folder / "model.seq.onnx").unlink(missing_ok=True)
            (folder / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    load_manifest(folder)  # validates before the folder is renamed into place


def served_streams(data: DataConfig, series: Sequence[Series], features: Sequence[str] = ()) -> list[str]:
    """The manifest's ``streams``: ``data.serve`` when given; else, for history read from the
    store, the ids of the streams trained on (escaped: ids are matched as globs); a CSV's
    columns name no stream, so none."""
    if data.serve:
        return list(data.serve)
    if "://" not in data.source:
        return []
    # Univariate series are named by stream id; a multivariate series by its device. A
    # device's series of ONE feature makes a one-feature model, which the engine serves per
    # device/quantity (binding._fit), so that is the id it must declare.
    if data.layout != "univariate" and len(features) == 1:
        ids = [f"{escape_id_part(s.name)}/{escape_id_part(features[0])}" for s in series]
    else:
        ids = [s.name if data.layout == "univariate" else escape_id_part(s.name) for s in series]
    return [glob.escape(i) for i in ids]


def save_checkpoint(t: Trained, path: Path) -> None:
    """Weights plus everything needed to rebuild the network (the config travels along)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    blob: dict[str, Any] = {
        "config": t.cfg.to_dict(),
        "features": list(t.dataset.features),
        "cadence_s": t.dataset.cadence_s,
        "mean": t.mean.tolist(),
        "std": t.std.tolist(),
        "state_dict": t.net.state_dict(),
        "history": t.history.epochs,
    }
    torch.save(blob, path)
