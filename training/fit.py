"""The training loop: AdamW, clipping, cosine LR, weight averaging, early stopping.

Step models learn by truncated BPTT: every batch row walks a contiguous strand of a
series in chunks of ``chunk`` steps, carrying (detached) state from chunk to chunk,
so the model is trained in the regime it runs in (state carried for ever). The first
chunk of a strand is a burn-in without loss: a zero state is not what the service has.
Window models learn from random windows. Validation runs every epoch on the averaged
weights; the best averaged weights are kept.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from training import rollout
from training.config import TrainConfig
from training.data import F32, Split, targets
from training.metrics import score
from training.nets import SegRNN, StepNet


@dataclass(frozen=True, slots=True)
class Prepared:
    """One series ready for training: raw values, time features, train stats for loss units."""

    values: F32  # (N, F)
    tf: F32 | None  # (N, K)
    split: Split
    mean: F32  # (F,) this series' train stats: errors are measured in these units
    std: F32


@dataclass(slots=True)
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = math.inf
    seconds: float = 0.0
    stopped: str = ""


def seed_all(seed: int, threads: int) -> np.random.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed)


def _losses(fc: Tensor, sc: Tensor, y: Tensor, unit: Tensor, nll_weight: float) -> Tensor:
    """MSE teaches the mean; Gaussian NLL (with the mean held fixed) teaches the spread.

    fc, sc, y (..., H, F) raw; unit (..., 1, F) the series' train std.
    """
    ok = ~torch.isnan(y)
    y0 = torch.where(ok, y, fc.detach())
    err = (fc - y0) / unit
    mse = (err**2 * ok).sum() / ok.sum().clamp(min=1)
    if nll_weight <= 0:
        return mse
    s = sc / unit
    z = (y0 - fc.detach()) / s
    nll = ((0.5 * z**2 + torch.log(s)) * ok).sum() / ok.sum().clamp(min=1)
    return mse + nll_weight * nll


def _val_step(net: StepNet, data: Sequence[Prepared], horizon: int) -> float:
    total, count = 0.0, 0
    for d in data:
        pos = rollout.split_positions(d.split.train_end, d.split.val_end, horizon)
        if len(pos) == 0:
            continue
        fc = rollout.stream(net, d.values, d.tf, pos)
        y = targets(d.values, horizon, d.split.val_end)[pos]
        s = score(fc, y, d.mean, d.std)
        total += s.mse * s.count
        count += s.count
    return total / max(count, 1)


def _val_window(net: SegRNN, data: Sequence[Prepared], horizon: int) -> float:
    total, count = 0.0, 0
    L = net.cfg.window
    for d in data:
        pos = rollout.split_positions(d.split.train_end, d.split.val_end, horizon, first_valid=L - 1)
        if len(pos) == 0:
            continue
        fc, _ = rollout.windowed(net, d.values, pos)
        y = targets(d.values, horizon, d.split.val_end)[pos]
        s = score(fc, y, d.mean, d.std)
        total += s.mse * s.count
        count += s.count
    return total / max(count, 1)


class _Loop:
    """Shared epoch bookkeeping: averaging, early stopping, time limit, progress bar."""

    def __init__(self, net: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.net, self.cfg = net, cfg
        self.opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, cfg.epochs * steps_per_epoch)
        # Short linear warm-up then cosine decay: stable start, small steps near the end.
        warm = max(1, total // 20)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
        )
        self.avg = (
            AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)  # type: ignore[no-untyped-call]
            if cfg.ema_decay > 0
            else None
        )
        self.best: dict[str, Tensor] | None = None
        self.hist = History()
        self.t0 = time.monotonic()
        self.bar = tqdm(range(cfg.epochs), desc="train", disable=not cfg.progress, leave=False)

    def update(self, loss: Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip)
        self.opt.step()
        self.sched.step()
        if self.avg is not None:
            self.avg.update_parameters(self.net)

    def evaluated(self) -> nn.Module:
        return self.avg.module if self.avg is not None else self.net

    def end_epoch(self, epoch: int, train_loss: float, val: float) -> bool:
        """Record the epoch; True when training should stop."""
        secs = time.monotonic() - self.t0
        self.hist.epochs.append({"epoch": epoch, "train_loss": train_loss, "val_mse": val, "seconds": secs})
        if val < self.hist.best_val:
            self.hist.best_val, self.hist.best_epoch = val, epoch
            self.best = copy.deepcopy(self.evaluated().state_dict())
        self.bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val:.4f}", best=f"{self.hist.best_val:.4f}")
        self.bar.update(1)
        if epoch - self.hist.best_epoch >= self.cfg.patience:
            self.hist.stopped = f"early stop: no validation gain for {self.cfg.patience} epochs"
        elif secs > self.cfg.max_minutes * 60:
            self.hist.stopped = f"time limit {self.cfg.max_minutes} min"
        return bool(self.hist.stopped)

    def finish(self) -> History:
        self.bar.close()
        if self.best is not None:
            self.net.load_state_dict(self.best)
        self.net.eval()
        self.hist.seconds = time.monotonic() - self.t0
        if not self.hist.stopped:
            self.hist.stopped = "epochs done"
        return self.hist


def fit_step(
    net: StepNet, data: Sequence[Prepared], cfg: TrainConfig, carried: dict[tuple[int, int], Tensor] | None = None
) -> History:
    """Truncated BPTT over strands; ``carried`` (filled with carry_state) maps (series, row)
    to the state a strand ended with at that row."""
    rng = seed_all(cfg.seed, cfg.threads)
    H = net.cfg.horizon
    ys = [targets(d.values, H, d.split.train_end) for d in data]  # (N, H, F) each, masked past train
    units = [torch.from_numpy(d.std) for d in data]
    strand = max(cfg.strand, 2 * cfg.chunk)

    # carry_state: strands sit at fixed places, so the state one strand ended with is where
    # the next strand of the series starts in the next epoch (keyed by (series, row)).
    carried = {} if carried is None else carried
    offsets = [int(rng.integers(0, strand)) for _ in data] if cfg.carry_state else []  # drawn once

    def strands() -> list[tuple[int, int]]:
        out = []
        for i, d in enumerate(data):
            off = offsets[i] if cfg.carry_state else int(rng.integers(0, strand))
            for s in range(off, d.split.train_end - strand, strand):
                out.append((i, s))
            if not out or out[-1][0] != i:  # a short series still gets one strand
                out.append((i, 0))
        return out

    per_epoch = max(1, math.ceil(len(strands()) / cfg.batch)) * max(1, strand // cfg.chunk - 1)
    loop = _Loop(net, cfg, per_epoch)
    for epoch in range(cfg.epochs):
        net.train()
        order = strands()
        rng.shuffle(order)
        losses = []
        for b in range(0, len(order), cfg.batch):
            rows = order[b : b + cfg.batch]
            span = min(strand, *(data[i].split.train_end - s for i, s in rows))
            state = net.initial_state(len(rows))
            warm = [(i, s) in carried for i, s in rows]
            for r, (i, s) in enumerate(rows):
                if warm[r]:
                    state[r] = carried[(i, s)]
            unit = torch.stack([units[i] for i, _ in rows])[:, None, None, :]  # (B, 1, 1, F)
            # Level augmentation: the whole strand (inputs and targets) moves by one random
            # constant per channel, so the forecast of a change cannot lean on the level.
            # (With carry_state the handed-on state saw another shift: a level jump the
            # network meets like any other.)
            shift = (torch.randn(len(rows), 1, len(units[0])) * cfg.level_noise * unit[:, 0]  # (B, 1, F)
                     if cfg.level_noise > 0 else None)
            for c0 in range(0, span, cfg.chunk):
                c1 = min(c0 + cfg.chunk, span)
                x = torch.from_numpy(np.stack([data[i].values[s + c0 : s + c1] for i, s in rows]))  # (B, T, F)
                x = x if shift is None else x + shift
                tf = (
                    torch.from_numpy(np.stack([data[i].tf[s + c0 : s + c1] for i, s in rows]))  # type: ignore[index]
                    if net.n_time
                    else None
                )
                if c0 == 0 and not all(warm):  # burn-in: settle the state, no loss
                    with torch.no_grad():
                        _, _, state = net.seq(x, tf, state, positions=torch.tensor([c1 - 1]))
                    continue
                y = torch.from_numpy(np.stack([ys[i][s + c0 : s + c1] for i, s in rows]))  # (B, T, H, F)
                y = y if shift is None else y + shift[:, :, None, :]
                pos = None
                if net.seq2seq and cfg.decoder_positions < c1 - c0:
                    pos = torch.from_numpy(np.sort(rng.choice(c1 - c0, cfg.decoder_positions, replace=False)))
                    y = y[:, pos]
                fc, sc, state = net.seq(x, tf, state, positions=pos)
                loss = _losses(fc, sc, y, unit, cfg.nll_weight)
                if torch.isfinite(loss):
                    loop.update(loss)
                    losses.append(float(loss.detach()))
                state = state.detach()
            if cfg.carry_state:
                for r, (i, s) in enumerate(rows):
                    carried[(i, s + span)] = state[r].clone()
        val = _val_step(loop.evaluated(), data, H)  # type: ignore[arg-type]
        if loop.end_epoch(epoch, float(np.mean(losses)) if losses else math.nan, val):
            break
    return loop.finish()


def fit_window(net: SegRNN, data: Sequence[Prepared], cfg: TrainConfig) -> History:
    rng = seed_all(cfg.seed, cfg.threads)
    H, L = net.cfg.horizon, net.cfg.window
    ys = [targets(d.values, H, d.split.train_end) for d in data]
    units = [torch.from_numpy(d.std) for d in data]
    pool = [(i, p) for i, d in enumerate(data) for p in range(L - 1, d.split.train_end - H)]
    if not pool:
        raise ValueError(f"no training windows: each series needs more than window {L} + horizon {H} train rows")
    pool_arr = np.array(pool, dtype=np.int64)
    per_epoch = math.ceil(len(pool_arr) / cfg.batch)
    loop = _Loop(net, cfg, per_epoch)
    for epoch in range(cfg.epochs):
        net.train()
        perm = rng.permutation(len(pool_arr))
        losses = []
        for b in range(0, len(perm), cfg.batch):
            sel = pool_arr[perm[b : b + cfg.batch]]
            x = torch.from_numpy(np.stack([data[i].values[p - L + 1 : p + 1] for i, p in sel]))  # (B, L, F)
            y = torch.from_numpy(np.stack([ys[i][p] for i, p in sel]))  # (B, H, F)
            unit = torch.stack([units[i] for i, _ in sel])[:, None, :]  # (B, 1, F)
            fc, sc = net(x)
            loss = _losses(fc, sc, y, unit, cfg.nll_weight)
            if torch.isfinite(loss):
                loop.update(loss)
                losses.append(float(loss.detach()))
        val = _val_window(loop.evaluated(), data, H)  # type: ignore[arg-type]
        if loop.end_epoch(epoch, float(np.mean(losses)) if losses else math.nan, val):
            break
    return loop.finish()
