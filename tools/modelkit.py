"""Tiny contract-conforming models built with ``onnx.helper`` and numpy (no torch).

Tests, the inference benchmark and the backtest's examples need real ONNX models before
(and independently of) the trainer. A kit model is a GRU or Elman RNN written as plain
MatMuls (the fast form, see docs/measured.md) with random weights, an anchored forecast
(offsets from the current normalised value) and a softplus spread. The same weights drive
``NumpyKitModel``, the in-memory twin used by the runtime contract tests.

``onnx`` is needed only to *build* (the ``train`` extra); the service itself never imports
this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.arrays import F32
from service.runtime.manifest import SCHEMA_VERSION, sha256_file
from service.runtime.timefeatures import time_features

OPSET = 17
SCALE_FLOOR = 0.05  # keeps the predicted spread strictly positive


@dataclass(frozen=True, slots=True)
class KitSpec:
    """What to build; defaults give a 1x8 GRU step model on one feature."""

    name: str = "kit"
    version: str = "1"
    kind: str = "step"  # "step" | "window"
    cell: str = "gru"  # "gru" | "rnn"
    layers: int = 1
    hidden: int = 8
    features: tuple[str, ...] = ("value",)
    time_features: tuple[str, ...] = ()
    horizon: int = 4
    window: int = 8
    cadence_s: float = 60.0
    warmup_steps: int = 5
    probabilistic: bool = True
    default_threshold: float = 0.99
    seed: int = 0
    mean: tuple[float, ...] | None = None  # per-feature normalisation; zeros when None
    std: tuple[float, ...] | None = None  # ones when None
    weight_scale: float = 0.3
    sequence: bool = True  # step models: ship the sequence form too (tools/seqform.py, model.seq.onnx)


@dataclass(slots=True)
class KitWeights:
    spec: KitSpec
    mu: F32
    sd: F32
    layers: list[dict[str, F32]] = field(default_factory=list)
    v: F32 = field(default_factory=lambda: np.zeros((1, 1), np.float32))
    vb: F32 = field(default_factory=lambda: np.zeros(1, np.float32))
    vs: F32 = field(default_factory=lambda: np.zeros((1, 1), np.float32))
    vsb: F32 = field(default_factory=lambda: np.zeros(1, np.float32))

    @property
    def state_size(self) -> int:
        return self.spec.layers * self.spec.hidden


def make_weights(spec: KitSpec) -> KitWeights:
    rng = np.random.default_rng(spec.seed)
    f, k, h = len(spec.features), len(spec.time_features), spec.hidden
    gates = 3 if spec.cell == "gru" else 1
    mu = np.asarray(spec.mean if spec.mean is not None else [0.0] * f, np.float32)
    sd = np.asarray(spec.std if spec.std is not None else [1.0] * f, np.float32)
    w = KitWeights(spec, mu, sd)
    s = spec.weight_scale
    for layer in range(spec.layers):
        n_in = (f + k) if layer == 0 else h
        w.layers.append({
            "W": (rng.standard_normal((n_in, gates * h)) * s / np.sqrt(n_in)).astype(np.float32),
            "U": (rng.standard_normal((h, gates * h)) * s / np.sqrt(h)).astype(np.float32),
            "b": (rng.standard_normal(gates * h) * 0.1).astype(np.float32),
            "c": (rng.standard_normal(gates * h) * 0.1).astype(np.float32),
        })
    w.v = (rng.standard_normal((h, spec.horizon * f)) * 0.1 / np.sqrt(h)).astype(np.float32)
    w.vb = (rng.standard_normal(spec.horizon * f) * 0.05).astype(np.float32)
    w.vs = (rng.standard_normal((h, spec.horizon * f)) * 0.1 / np.sqrt(h)).astype(np.float32)
    w.vsb = np.full(spec.horizon * f, -1.0, np.float32)
    return w


# ---------------------------------------------------------------- numpy twin


def _sigmoid(a: F32) -> F32:
    return (1.0 / (1.0 + np.exp(-a))).astype(np.float32)


def _softplus(a: F32) -> F32:
    return np.logaddexp(np.float32(0), a).astype(np.float32)


class NumpyKitModel:
    """The kit model's math in numpy: the same weights as the ONNX graph."""

    def __init__(self, weights: KitWeights) -> None:
        self.w = weights

    def _cell(self, layer: dict[str, F32], x: F32, h: F32) -> F32:
        hid = self.w.spec.hidden
        xw = x @ layer["W"] + layer["b"]  # (B, G*H)
        hu = h @ layer["U"] + layer["c"]  # (B, G*H)
        if self.w.spec.cell == "rnn":
            out: F32 = np.tanh(xw + hu).astype(np.float32)
            return out
        z = _sigmoid(xw[:, :hid] + hu[:, :hid])
        r = _sigmoid(xw[:, hid : 2 * hid] + hu[:, hid : 2 * hid])
        n = np.tanh(xw[:, 2 * hid :] + r * hu[:, 2 * hid :]).astype(np.float32)
        gated: F32 = (n + z * (h - n)).astype(np.float32)
        return gated

    def _advance(self, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32, F32]:
        xn = (x - self.w.mu) / self.w.sd  # (B, F)
        xn = np.where(np.isnan(xn), np.float32(0), xn).astype(np.float32)
        inp = xn if tf is None else np.concatenate([xn, tf], axis=1)
        hid = self.w.spec.hidden
        outs = []
        for i, layer in enumerate(self.w.layers):
            h = self._cell(layer, inp, state[:, i * hid : (i + 1) * hid])
            outs.append(h)
            inp = h
        return xn, inp, np.concatenate(outs, axis=1)

    def _head(self, xn: F32, top: F32) -> tuple[F32, F32]:
        b, f, hz = xn.shape[0], len(self.w.spec.features), self.w.spec.horizon
        delta = (top @ self.w.v + self.w.vb).reshape(b, hz, f)  # (B, H, F)
        fc = (xn[:, None, :] + delta) * self.w.sd + self.w.mu
        sc = (_softplus((top @ self.w.vs + self.w.vsb).reshape(b, hz, f)) + SCALE_FLOOR) * self.w.sd
        return fc.astype(np.float32), sc.astype(np.float32)

    def step(self, x: F32, state: F32, tf: F32 | None = None) -> tuple[F32, F32, F32]:
        xn, top, new_state = self._advance(x, state, tf)
        fc, sc = self._head(xn, top)
        return fc, sc, new_state

    def window(self, x: F32, tf: F32 | None = None) -> tuple[F32, F32]:
        b, length, _ = x.shape
        state = np.zeros((b, self.w.state_size), np.float32)
        xn = top = np.zeros((b, 1), np.float32)
        for t in range(length):
            xn, top, state = self._advance(x[:, t], state, None if tf is None else tf[:, t])
        return self._head(xn, top)


# ---------------------------------------------------------------- ONNX graph


class _Graph:
    def __init__(self) -> None:
        import onnx.helper as oh

        self.oh = oh
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, name: str, arr: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(self.oh.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def rename(self, src: str, dst: str) -> None:
        self.nodes.append(self.oh.make_node("Identity", [src], [dst]))


def _onnx_cell(g: _Graph, spec: KitSpec, i: int, x: str, h: str) -> str:
    hid = spec.hidden
    xw = g.op("Add", g.op("MatMul", x, f"W{i}"), f"b{i}")  # (B, G*H)
    hu = g.op("Add", g.op("MatMul", h, f"U{i}"), f"c{i}")  # (B, G*H)
    if spec.cell == "rnn":
        return g.op("Tanh", g.op("Add", xw, hu))

    def part(t: str, k: int) -> str:
        return g.op("Slice", t, f"s{k}", f"e{k}", "ax1")

    z = g.op("Sigmoid", g.op("Add", part(xw, 0), part(hu, 0)))
    r = g.op("Sigmoid", g.op("Add", part(xw, 1), part(hu, 1)))
    n = g.op("Tanh", g.op("Add", part(xw, 2), g.op("Mul", r, part(hu, 2))))
    _ = hid
    return g.op("Add", n, g.op("Mul", z, g.op("Sub", h, n)))


def _onnx_advance(g: _Graph, w: KitWeights, x: str, state_parts: list[str], tf: str | None) -> tuple[str, str, list[str]]:
    xn = g.op("Div", g.op("Sub", x, "mu"), "sd")
    xn = g.op("Where", g.op("IsNaN", xn), "zero", xn)
    inp = xn if tf is None else g.op("Concat", xn, tf, axis=1)
    outs: list[str] = []
    for i in range(w.spec.layers):
        h = _onnx_cell(g, w.spec, i, inp, state_parts[i])
        outs.append(h)
        inp = h
    return xn, inp, outs


def _onnx_head(g: _Graph, xn: str, top: str) -> tuple[str, str]:
    delta = g.op("Reshape", g.op("Add", g.op("MatMul", top, "V"), "Vb"), "bhf")  # (B, H, F)
    fc = g.op("Add", g.op("Mul", g.op("Add", g.op("Unsqueeze", xn, "one"), delta), "sd"), "mu")
    sp = g.op("Softplus", g.op("Reshape", g.op("Add", g.op("MatMul", top, "Vs"), "Vsb"), "bhf"))
    sc = g.op("Mul", g.op("Add", sp, "floor"), "sd")
    return fc, sc


def build_onnx(w: KitWeights) -> Any:
    """The ONNX ModelProto for ``w`` (step or window graph per ``w.spec.kind``)."""
    import onnx
    import onnx.helper as oh
    from onnx import TensorProto

    spec = w.spec
    f, k, hid, hz = len(spec.features), len(spec.time_features), spec.hidden, spec.horizon
    g = _Graph()
    g.const("mu", w.mu)
    g.const("sd", w.sd)
    g.const("zero", np.zeros(1, np.float32))
    g.const("floor", np.asarray([SCALE_FLOOR], np.float32))
    g.const("one", np.asarray([1], np.int64))
    g.const("ax1", np.asarray([1], np.int64))
    g.const("bhf", np.asarray([-1, hz, f], np.int64))
    for j in range(3):
        g.const(f"s{j}", np.asarray([j * hid], np.int64))
        g.const(f"e{j}", np.asarray([(j + 1) * hid], np.int64))
    for i, layer in enumerate(w.layers):
        for key in ("W", "U", "b", "c"):
            g.const(f"{key}{i}", layer[key])
    g.const("V", w.v)
    g.const("Vb", w.vb)
    g.const("Vs", w.vs)
    g.const("Vsb", w.vsb)
    fl = TensorProto.FLOAT
    inputs = []
    if spec.kind == "step":
        inputs.append(oh.make_tensor_value_info("x", fl, ["B", f]))
        inputs.append(oh.make_tensor_value_info("state", fl, ["B", w.state_size]))
        if k:
            inputs.append(oh.make_tensor_value_info("tf", fl, ["B", k]))
        parts = []
        for i in range(spec.layers):
            g.const(f"ls{i}", np.asarray([i * hid], np.int64))
            g.const(f"le{i}", np.asarray([(i + 1) * hid], np.int64))
            parts.append(g.op("Slice", "state", f"ls{i}", f"le{i}", "ax1"))
        xn, top, outs = _onnx_advance(g, w, "x", parts, "tf" if k else None)
        g.rename(outs[0] if len(outs) == 1 else g.op("Concat", *outs, axis=1), "state_out")
    else:
        inputs.append(oh.make_tensor_value_info("x", fl, ["B", spec.window, f]))
        if k:
            inputs.append(oh.make_tensor_value_info("tf", fl, ["B", spec.window, k]))
        # A zero state of dynamic batch: ConstantOfShape([B, H]).
        g.const("b_idx", np.asarray([0], np.int64))
        g.const("h_dim", np.asarray([hid], np.int64))
        batch = g.op("Gather", g.op("Shape", "x"), "b_idx", axis=0)
        h0 = g.op(
            "ConstantOfShape", g.op("Concat", batch, "h_dim", axis=0),
            value=oh.make_tensor("z", fl, [1], [0.0]),
        )
        parts = [h0] * spec.layers
        xn = top = ""
        for t in range(spec.window):
            g.const(f"t{t}", np.asarray(t, np.int64))
            xt = g.op("Gather", "x", f"t{t}", axis=1)  # (B, F)
            tft = g.op("Gather", "tf", f"t{t}", axis=1) if k else None
            xn, top, parts = _onnx_advance(g, w, xt, parts, tft)
    fc, sc = _onnx_head(g, xn, top)
    g.rename(fc, "forecast")
    outputs = [oh.make_tensor_value_info("forecast", fl, ["B", hz, f])]
    if spec.probabilistic:
        g.rename(sc, "scale")
        outputs.append(oh.make_tensor_value_info("scale", fl, ["B", hz, f]))
    if spec.kind == "step":
        outputs.append(oh.make_tensor_value_info("state_out", fl, ["B", w.state_size]))
    graph = oh.make_graph(g.nodes, f"{spec.name}_{spec.kind}", inputs, outputs, g.inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], producer_name="sensorcast-modelkit")
    model.ir_version = 9  # old enough for every onnxruntime we support
    onnx.checker.check_model(model)
    return model


def write_model(models_dir: Path, spec: KitSpec, **manifest_overrides: Any) -> tuple[Path, KitWeights]:
    """Write ``models_dir/<name>/<version>/{model.onnx, manifest.json}``; return folder and weights."""
    import orjson

    w = make_weights(spec)
    folder = Path(models_dir) / spec.name / spec.version
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    onnx_path.write_bytes(build_onnx(w).SerializeToString())
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": spec.name,
        "version": spec.version,
        "kind": spec.kind,
        "cell": spec.cell,
        "layers": spec.layers,
        "hidden": spec.hidden,
        "state_size": w.state_size if spec.kind == "step" else 0,
        "window": spec.window if spec.kind == "window" else None,
        "features": list(spec.features),
        "output_features": list(spec.features),
        "time_features": list(spec.time_features),
        "cadence_s": spec.cadence_s,
        "horizon": spec.horizon,
        "warmup_steps": spec.warmup_steps,
        "probabilistic": spec.probabilistic,
        "default_threshold": spec.default_threshold,
        "data": {"source": "modelkit (random weights)", "rows": 0},
        "metrics": {},
        "onnx_file": "model.onnx",
        "sha256": sha256_file(onnx_path),
        "created_at": datetime.now(UTC).isoformat(),
    }
    manifest.update(manifest_overrides)
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    if spec.kind == "step" and spec.sequence and "sequence_file" not in manifest_overrides:
        from tools.seqform import ship_sequence

        ship_sequence(folder)
    return folder, w


def kit_time_features(ts_ns: npt.ArrayLike, spec: KitSpec) -> F32 | None:
    """The ``tf`` input a kit model expects for timestamps ``ts_ns`` (None without time features)."""
    return time_features(ts_ns, spec.time_features) if spec.time_features else None
