"""Which past steps a forecast looked at: the ``attention`` output of seq2seq-attn models.

A ``seq2seq-attn-*`` step graph has a fourth output, ``attention`` [B, H, K]: for each
horizon step, the decoder's softmax weights over the last K encoder steps, index k = lag k
(0 = the step just fed; steps a fresh stream has not seen yet weigh exactly 0). The engine
never asks for it (``OrtRuntime`` fetches only forecast, scale and state_out); this module
replays a history through the graph with it, for ``sensorcast backtest --attention``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.arrays import F32
from service.errors import ModelError
from service.runtime.manifest import read_model
from service.runtime.timefeatures import time_features

OUTPUT = "attention"


class AttentionReplay:
    """The model's step graph with its ``attention`` output, from bytes checked against the manifest."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort

        self.manifest, data = read_model(folder)
        if self.manifest.kind != "step":
            raise ModelError(f"{self.manifest.name}: a window model has no attention output")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        self._sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        if OUTPUT not in [o.name for o in self._sess.get_outputs()]:
            raise ModelError(f"{self.manifest.name}/{self.manifest.version} (cell {self.manifest.cell}) has no "
                             f"{OUTPUT!r} output: only seq2seq-attn-gru / seq2seq-attn-lstm models attend")

    def run(self, x: F32, ts_ns: np.ndarray) -> F32:
        """x (T, B, F) raw (NaN: missing), one model step per row, ts_ns (T,) step times
        -> weights (T, B, H, K) by lag, the state carried from a fresh (zero) state."""
        m = self.manifest
        T, B, _ = x.shape
        state = np.zeros((B, m.state_size), np.float32)
        tf = time_features(ts_ns, m.time_features) if m.time_features else None  # (T, K)
        out: list[F32] = []
        for t in range(T):
            feed = {"x": np.ascontiguousarray(x[t], np.float32), "state": state}
            if tf is not None:
                feed["tf"] = np.repeat(tf[t][None], B, axis=0)
            state, weights = self._sess.run(["state_out", OUTPUT], feed)
            out.append(weights)
        return np.stack(out) if out else np.zeros((0, B, m.horizon, 0), np.float32)


def top_lags(weights: F32, n: int = 3) -> tuple[tuple[int, float], ...]:
    """(H, K) weights of one forecast -> its ``n`` most looked-at lags, averaged over the
    horizon: ((lag, weight), ...), heaviest first; lags with no weight are left out."""
    mean = weights.astype(np.float64).mean(axis=0)  # (K,)
    order = np.argsort(-mean, kind="stable")[:n]
    return tuple((int(k), float(mean[k])) for k in order if mean[k] > 0)
