"""Forecasts at chosen positions of a series, the way the service would make them.

Position ``p`` means: the model has been fed rows ``0..p`` and forecasts rows
``p+1 .. p+H``. Step models stream through the whole series with state carried
(``stream``), or start from a fresh state ``L`` rows back (``fresh``) to measure what
carried state is worth; window models see the last ``L`` rows (``windowed``).
"""

from __future__ import annotations

import numpy as np
import torch

from training.data import F32
from training.nets import SegRNN, StepNet

_CHUNK = 1024  # rows per streaming call: long enough to be quick, short enough for memory


def stream(net: StepNet, values: F32, tf: F32 | None, positions: np.ndarray) -> F32:
    """(P, H, F) raw forecasts at ``positions`` from one stateful pass over the series."""
    return stream_with_scale(net, values, tf, positions)[0]


@torch.no_grad()
def stream_with_scale(net: StepNet, values: F32, tf: F32 | None, positions: np.ndarray) -> tuple[F32, F32]:
    """(P, H, F) forecasts and predicted spreads at ``positions``, one stateful pass."""
    net.eval()
    want = np.zeros(len(values), dtype=bool)
    want[positions] = True
    state = net.initial_state(1)
    out: list[torch.Tensor] = []
    scales: list[torch.Tensor] = []
    stop = int(positions.max()) + 1
    for a in range(0, stop, _CHUNK):
        b = min(a + _CHUNK, stop)
        x = torch.from_numpy(values[a:b])[None]  # (1, T, F)
        t = torch.from_numpy(tf[a:b])[None] if tf is not None else None
        pos = np.nonzero(want[a:b])[0]
        if len(pos) == 0:
            # Still need the state: run without asking for forecasts at any position.
            _, _, state = net.seq(x, t, state, positions=torch.tensor([b - a - 1]))
            continue
        fc, sc, state = net.seq(x, t, state, positions=torch.from_numpy(pos))
        out.append(fc[0])  # (P_chunk, H, F)
        scales.append(sc[0])
    return torch.cat(out).numpy(), torch.cat(scales).numpy()


@torch.no_grad()
def fresh(net: StepNet, values: F32, tf: F32 | None, positions: np.ndarray, length: int, batch: int = 512) -> F32:
    """(P, H, F): each forecast from a zero state fed only the ``length`` rows before it."""
    net.eval()
    res = []
    for i in range(0, len(positions), batch):
        ps = positions[i : i + batch]
        idx = ps[:, None] - length + 1 + np.arange(length)[None]  # (b, L)
        x = torch.from_numpy(values[idx])  # (b, L, F)
        t = torch.from_numpy(tf[idx]) if tf is not None else None
        fc, _, _ = net.seq(x, t, net.initial_state(len(ps)), positions=torch.tensor([length - 1]))
        res.append(fc[:, 0])
    return torch.cat(res).numpy()


@torch.no_grad()
def windowed(net: SegRNN, values: F32, positions: np.ndarray, batch: int = 512) -> tuple[F32, F32]:
    """(P, H, F) forecasts and scales of a window model at ``positions``."""
    net.eval()
    L = net.cfg.window
    fcs, scs = [], []
    for i in range(0, len(positions), batch):
        ps = positions[i : i + batch]
        idx = ps[:, None] - L + 1 + np.arange(L)[None]  # (b, L)
        fc, sc = net(torch.from_numpy(values[idx]))
        fcs.append(fc)
        scs.append(sc)
    return torch.cat(fcs).numpy(), torch.cat(scs).numpy()


def split_positions(start_row: int, end_row: int, horizon: int, first_valid: int = 0) -> np.ndarray:
    """Positions whose whole horizon lies in rows [start_row, end_row)."""
    lo = max(start_row - 1, first_valid)
    return np.arange(lo, end_row - horizon, dtype=np.int64)
