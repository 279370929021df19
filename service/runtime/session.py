"""Model runtimes: run a model's step or window graph on a batch of streams.

``ModelRuntime`` is the small interface the streams layer talks to. ``OrtRuntime`` runs
the ONNX file with onnxruntime (sequential execution, intra-op threads from settings);
``FunctionRuntime`` is the in-memory twin that runs plain numpy callables, for unit
tests. The contract tests (tests/contract/test_runtime_contract.py) run over both.

Outputs are always fresh arrays owned by the caller: the streams layer copies rows into
its state table and never keeps views into runtime outputs (docs/measured.md: views pin
the whole output buffer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from service.arrays import F32
from service.errors import ModelError
from service.runtime.manifest import Manifest, check_model_bytes, read_sequence

log = logging.getLogger(__name__)
StepFn = Callable[[F32, F32, F32 | None], tuple[F32, F32 | None, F32]]
WindowFn = Callable[[F32, F32 | None], tuple[F32, F32 | None]]


@runtime_checkable
class ModelRuntime(Protocol):
    """One loaded model. Shapes: B streams, F features, S state, K time features, H horizon."""

    manifest: Manifest

    def step(self, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32 | None, F32]:
        """x (B, F), state (B, S), tf (B, K) | None -> forecast (B, H, Fo), scale | None, state_out (B, S)."""
        ...

    def window(self, x: F32, tf: F32 | None) -> tuple[F32, F32 | None]:
        """x (B, L, F), tf (B, L, K) | None -> forecast (B, H, Fo), scale (B, H, Fo) | None."""
        ...

    def sequence(self, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32 | None, F32]:
        """T steps at once: x (B, T, F), state (B, S), tf (B, T, K) | None -> the forecast and
        scale made at the last step and the state after it; equal to T calls of ``step``."""
        ...


def roll(rt: ModelRuntime, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32 | None, F32]:
    """``sequence`` done as a call of ``step`` per step (models without a sequence graph)."""
    if x.shape[1] < 1:
        raise ValueError(f"{rt.manifest.name}: a sequence needs at least one step, got x of shape {x.shape}")
    fc: F32 | None = None
    sc: F32 | None = None
    for t in range(x.shape[1]):
        fc, sc, state = rt.step(x[:, t], state, None if tf is None else tf[:, t])
    assert fc is not None
    return fc, sc, state


def _check_batch(m: Manifest, x: F32, state: F32 | None, tf: F32 | None, window: bool) -> None:
    f, k = len(m.features), len(m.time_features)
    want_x = (x.shape[0], m.window, f) if window else (x.shape[0], f)
    if x.shape != want_x:
        raise ValueError(f"{m.name}/{m.version}: x has shape {x.shape}, expected {want_x}")
    if state is not None and state.shape != (x.shape[0], m.state_size):
        raise ValueError(f"{m.name}/{m.version}: state has shape {state.shape}, expected {(x.shape[0], m.state_size)}")
    if k and tf is None:
        raise ValueError(f"{m.name}/{m.version}: the model needs time features {m.time_features}")
    if tf is not None and tf.shape != (*want_x[:-1], k):
        raise ValueError(f"{m.name}/{m.version}: tf has shape {tf.shape}, expected {(*want_x[:-1], k)}")


class OrtRuntime:
    """onnxruntime session for one model folder; validates the graph's I/O against the manifest.

    The session is built from bytes checked against the manifest's SHA-256: ``model_bytes``
    as ``read_model`` returned them, else the file read here once and hashed. onnxruntime
    never reopens the file by path, so a file swapped after the check is never loaded.
    """

    def __init__(
        self, folder: Path, manifest: Manifest, threads: int = 1, model_bytes: bytes | None = None,
        sequence_bytes: bytes | None = None,
    ) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ORT's spinning worker threads burn a core while idle; a gateway shares its cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        path = folder / manifest.onnx_file
        if model_bytes is None:
            try:
                model_bytes = path.read_bytes()
            except OSError as e:
                raise ModelError(f"{path}: cannot read model ({e.strerror})") from e
        check_model_bytes(manifest, model_bytes, str(path))
        try:
            self._sess = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"{path}: onnxruntime cannot load the model: {e}") from e
        self._inputs = {i.name: i.shape for i in self._sess.get_inputs()}
        self._outputs = [o.name for o in self._sess.get_outputs()]
        self._validate(path)
        self._want = ["forecast", "scale", "state_out"] if manifest.kind == "step" else ["forecast", "scale"]
        if not manifest.probabilistic or "scale" not in self._outputs:
            self._want.remove("scale")
        self._seq: Any = None  # the sequence graph's session
        self.sequence_source = "none"  # "shipped" | "none" (a call per step)
        self.sequence_form = "none"  # "native" | "scan" | "none"
        if manifest.kind == "step":
            self._open_sequence(folder, opts, sequence_bytes)

    def _open_sequence(self, folder: Path, opts: Any, shipped: bytes | None) -> None:
        """The shipped sequence graph (hash-checked: a bad one refuses the model); without
        one, ``sequence`` rolls the step graph. (Building it here would need the ``onnx``
        package, which the service does not install: tools/seqform.py builds it.)"""
        import onnxruntime as ort

        shipped = shipped if shipped is not None else read_sequence(folder, self.manifest)
        if shipped is None:
            return
        try:
            sess = ort.InferenceSession(shipped, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"{folder}: onnxruntime cannot load the sequence graph: {e}") from e
        names_in = {i.name for i in sess.get_inputs()}
        names_out = [o.name for o in sess.get_outputs()]
        if names_in != set(self._inputs) or not set(self._want) <= set(names_out):
            raise ModelError(f"{folder}: sequence graph has inputs {sorted(names_in)}, outputs {names_out}; "
                             f"expected {sorted(self._inputs)} -> {self._want}")
        self._seq, self.sequence_source = sess, "shipped"
        # "native" (the recurrence in one RNN op) or "scan" (a Scan over the step graph):
        # tools/seqform.py writes it into the graph's metadata (KIND_KEY in tools/seqnative.py).
        self.sequence_form = sess.get_modelmeta().custom_metadata_map.get("sensorcast.sequence", "scan")

    def _validate(self, path: Path) -> None:
        m = self.manifest
        need_in = {"x"} | ({"state"} if m.kind == "step" else set()) | ({"tf"} if m.time_features else set())
        need_out = {"forecast"} | ({"state_out"} if m.kind == "step" else set()) | (
            {"scale"} if m.probabilistic else set()
        )
        if set(self._inputs) != need_in:
            raise ModelError(f"{path}: graph inputs {sorted(self._inputs)}, manifest expects {sorted(need_in)}")
        missing = need_out - set(self._outputs)
        if missing:
            raise ModelError(f"{path}: graph lacks outputs {sorted(missing)} (has {self._outputs})")
        x_shape = self._inputs["x"]
        want_rank = 3 if m.kind == "window" else 2
        if len(x_shape) != want_rank or (isinstance(x_shape[-1], int) and x_shape[-1] != len(m.features)):
            raise ModelError(f"{path}: input x has shape {x_shape}, manifest says F={len(m.features)} ({m.kind})")
        if m.kind == "step":
            s_dim = self._inputs["state"][-1]
            if isinstance(s_dim, int) and s_dim != m.state_size:
                raise ModelError(f"{path}: state width {s_dim}, manifest says {m.state_size}")

    def step(self, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32 | None, F32]:
        if self.manifest.kind != "step":
            raise ValueError(f"{self.manifest.name}: a window model has no step graph")
        _check_batch(self.manifest, x, state, tf, window=False)
        feed = {"x": x, "state": state}
        if tf is not None:
            feed["tf"] = tf
        out = self._sess.run(self._want, feed)
        scale = out[1] if len(out) == 3 else None
        return out[0], scale, out[-1]

    def sequence(self, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32 | None, F32]:
        if self._seq is None or x.ndim != 3 or x.shape[1] < 2:
            return roll(self, x, state, tf)  # one step: the step graph is as fast
        _check_batch(self.manifest, x[:, 0], state, None if tf is None else tf[:, 0], window=False)
        if tf is not None and tf.shape[:2] != x.shape[:2]:
            raise ValueError(f"{self.manifest.name}: tf has shape {tf.shape}, x {x.shape}")
        feed = {"x": x, "state": state}
        if tf is not None:
            feed["tf"] = tf
        out = self._seq.run(self._want, feed)
        scale = out[1] if len(out) == 3 else None
        return out[0], scale, out[-1]

    def window(self, x: F32, tf: F32 | None) -> tuple[F32, F32 | None]:
        if self.manifest.kind != "window":
            raise ValueError(f"{self.manifest.name}: a step model has no window graph")
        _check_batch(self.manifest, x, None, tf, window=True)
        feed = {"x": x} if tf is None else {"x": x, "tf": tf}
        out = self._sess.run(self._want, feed)
        return out[0], (out[1] if len(out) == 2 else None)


class FunctionRuntime:
    """In-memory twin: the same interface over numpy callables (unit tests, no ONNX)."""

    def __init__(self, manifest: Manifest, step: StepFn | None = None, window: WindowFn | None = None) -> None:
        self.manifest = manifest
        self._step = step
        self._window = window

    def step(self, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32 | None, F32]:
        if self._step is None:
            raise ValueError(f"{self.manifest.name}: a window model has no step graph")
        _check_batch(self.manifest, x, state, tf, window=False)
        fc, sc, st = self._step(x, state, tf)
        return (
            np.array(fc, np.float32),
            None if sc is None else np.array(sc, np.float32),
            np.array(st, np.float32),
        )

    def sequence(self, x: F32, state: F32, tf: F32 | None) -> tuple[F32, F32 | None, F32]:
        return roll(self, x, state, tf)

    def window(self, x: F32, tf: F32 | None) -> tuple[F32, F32 | None]:
        if self._window is None:
            raise ValueError(f"{self.manifest.name}: a step model has no window graph")
        _check_batch(self.manifest, x, None, tf, window=True)
        fc, sc = self._window(x, tf)
        return np.array(fc, np.float32), None if sc is None else np.array(sc, np.float32)
