"""The grid recurrence behind cell ``grid-rowlstm``: sensor arrays (8x8 infrared grids...).

A step model over an ``H x W`` grid whose pixels are the model's ``H*W`` features, in
row-major order (the simulator names them ``r{row}c{col}``; any names work, the
manifest's ``grid: [H, W]`` says how to fold them). Per frame:

1. a **row LSTM** (PixelRNN, van den Oord et al. 2016) runs down the rows: row ``i``'s
   state comes from the input-to-state term, a (1 x 3) convolution along row ``i`` of
   the frame (normalised value and missing mask per pixel), plus the state-to-state term,
   a width-3 1-D convolution over row ``i-1``'s state. No masking is needed: the whole
   frame is observed before anything is forecast;
2. the row states of all rows are flattened and projected to a frame embedding;
3. a **GRU across frames** (``layers`` x ``hidden``) takes the embedding (and the time
   features); its state is the model's recurrent state.

It stands in for the ``nn.GRU`` of ``StepNet``: same call ``(inp (B, T, 2F+K), h (layers, B,
hidden)) -> (out (B, T, hidden), h)``, so normalisation, NaN handling, the anchor to the
last observed value, the per-pixel forecast head, the flat state [B, S], training,
export, parity and the engine are all StepNet's, unchanged. The row recurrence of every
frame runs in one batch (frames do not depend on each other), only the GRU is sequential.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from training.config import ModelConfig
from training.data import DataError, Dataset

ROW_CHANNELS = 8  # row-LSTM state channels per pixel; 8 is plenty for an 8x8 thermal array
GRID_CELL = "grid-rowlstm"


def grid_shape(cfg: ModelConfig, n_features: int) -> tuple[int, int]:
    """The (H, W) the config declares, checked against the feature count."""
    if len(cfg.grid) != 2 or min(cfg.grid) < 1:
        raise DataError(f"cell {cfg.cell!r} needs a grid shape (--grid HxW, e.g. 8x8); found {list(cfg.grid)}")
    h, w = cfg.grid
    if h * w != n_features:
        raise DataError(f"grid {h}x{w} has {h * w} pixels but the data has {n_features} features; "
                        "expected one feature per pixel, in row-major order")
    return int(h), int(w)


_PIXEL = re.compile(r"^r(\d+)c(\d+)$")


def row_major(ds: Dataset, shape: Sequence[int]) -> Dataset:
    """``ds`` with its features in row-major order when they are named ``r{row}c{col}``.

    The store lists a device's quantities sorted by name, which is row-major only below
    10 rows and columns ("r10c0" sorts before "r2c0"); a CSV may list them in any order.
    Other names are taken in the order given. A pixel missing from the grid is an error.
    """
    h, w = shape
    cells = [_PIXEL.match(f) for f in ds.features]
    if not all(cells):
        return ds
    pos = [(int(m.group(1)), int(m.group(2))) for m in cells if m]
    want = [(r, c) for r in range(h) for c in range(w)]
    if sorted(pos) != want:
        extra = sorted(set(pos) - set(want))[:3]
        missing = sorted(set(want) - set(pos))[:3]
        raise DataError(f"grid {h}x{w}: the pixel features do not fill it (missing {[f'r{r}c{c}' for r, c in missing]}, "
                        f"outside {[f'r{r}c{c}' for r, c in extra]}, {len(pos)} pixels for {h * w}); "
                        f"expected r0c0 .. r{h - 1}c{w - 1} once each")
    order = sorted(range(len(pos)), key=lambda i: pos[i])
    if order == list(range(len(pos))):
        return ds
    series = tuple(replace(s, values=np.ascontiguousarray(s.values[:, order])) for s in ds.series)
    return replace(ds, features=tuple(ds.features[i] for i in order), series=series)


class RowLSTM(nn.Module):
    """Row-wise LSTM over a frame: (N, C, H, W) -> row states (N, R, H, W)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.input_to_state = nn.Conv2d(in_channels, 4 * channels, kernel_size=(1, 3), padding=(0, 1))
        self.state_to_state = nn.Conv1d(channels, 4 * channels, kernel_size=3, padding=1, bias=False)

    def forward(self, frames: Tensor) -> Tensor:
        R = self.channels
        pre = self.input_to_state(frames)  # (N, 4R, H, W): every row's input term at once
        h = torch.zeros_like(pre[:, :R, 0])  # (N, R, W)
        c = torch.zeros_like(h)
        rows = []
        for i in range(frames.shape[2]):
            gates = pre[:, :, i] + self.state_to_state(h)  # (N, 4R, W)
            ig, fg, gg, og = gates.chunk(4, dim=1)
            c = torch.sigmoid(fg) * c + torch.sigmoid(ig) * torch.tanh(gg)
            h = torch.sigmoid(og) * torch.tanh(c)
            rows.append(h)
        return torch.stack(rows, dim=2)  # (N, R, H, W)


class GridRecurrence(nn.Module):
    """Row LSTM per frame + GRU across frames, called like a batch-first ``nn.GRU``."""

    def __init__(self, cfg: ModelConfig, n_features: int, n_time: int) -> None:
        super().__init__()
        self.shape = grid_shape(cfg, n_features)
        self.n_features = n_features
        h, w = self.shape
        self.rows = RowLSTM(2, ROW_CHANNELS)  # per pixel: normalised value, missing flag
        self.embed = nn.Sequential(nn.Linear(ROW_CHANNELS * h * w, cfg.hidden), nn.Tanh())
        self.temporal = nn.GRU(cfg.hidden + n_time, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                               dropout=cfg.dropout if cfg.layers > 1 else 0.0)

    def forward(self, inp: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        B, T, _ = inp.shape
        F = self.n_features
        h, w = self.shape
        frames = torch.stack([inp[:, :, :F], inp[:, :, F : 2 * F]], dim=2)  # (B, T, 2, F)
        rows = self.rows(frames.reshape(-1, 2, h, w))  # (B*T, R, H, W)
        emb = self.embed(rows.reshape(B, T, -1))  # (B, T, hidden)
        if inp.shape[2] > 2 * F:  # time features go to the temporal recurrence
            emb = torch.cat([emb, inp[:, :, 2 * F :]], dim=2)
        out, new_state = self.temporal(emb, state)
        return out, new_state
