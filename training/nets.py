"""The networks: a streaming step forecaster (rnn / lstm / gru / seq2seq) and SegRNN.

Both take raw values (NaN = missing) and return raw-unit forecasts, so the exported
graph is the whole model: normalisation, missing-value handling and the anchor to the
last observed value all live here, not in the service.

Step models keep everything they need in one flat state row [B, S]:

    [ h (layers*hidden) | c (layers*hidden, lstm only) | last (F) | lags (lags*F)
      | count, mean, var (3F, scaling='ema' only) ]

``last`` and ``lags`` are in "stored units": normalised by the train statistics when
scaling='fixed', raw when scaling='ema' (whose statistics move every step).
One code path (``seq``) serves training (T steps) and export (T=1), which is what
makes the ONNX step equal to the PyTorch rollout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from training.attention import RingAttention, by_lag
from training.cells import JordanGRU, PeepholeLSTM
from training.config import STEP_CELLS, ModelConfig

_CLIP = 10.0  # normalised inputs beyond +-10 sigma are clipped: a spike must not blow up the state
_SCALE_FLOOR = 1e-4  # smallest predicted spread in normalised units (keeps NLL finite)


def _rnn(
    cell: str, inp: int, hidden: int, layers: int, dropout: float, bidirectional: bool = False, n_out: int = 0
) -> nn.Module:
    if cell == "peephole":
        return PeepholeLSTM(inp, hidden, layers, dropout)
    if cell == "jordan":  # n_out: the width of the fed-back forecast (the model's F)
        return JordanGRU(inp, hidden, layers, dropout, n_out)
    kw = dict(num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0, bidirectional=bidirectional)
    if cell == "rnn":
        return nn.RNN(inp, hidden, nonlinearity="tanh", **kw)
    if cell == "lstm":
        return nn.LSTM(inp, hidden, **kw)
    if cell == "gru":
        return nn.GRU(inp, hidden, **kw)
    raise ValueError(f"unknown recurrent cell {cell!r}")


class StepNet(nn.Module):
    """A stateful forecaster that advances one cadence step per call."""

    mean: Tensor  # (F,) buffers, typed for mypy
    std: Tensor
    scale_mult: Tensor  # (H, 1)

    def __init__(
        self,
        cfg: ModelConfig,
        n_features: int,
        n_time: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        if cfg.cell not in STEP_CELLS:
            raise ValueError(f"StepNet serves {STEP_CELLS}, not {cfg.cell!r}")
        if cfg.bidirectional:
            raise ValueError("a step model cannot be bidirectional: it never sees the future of its window")
        self.cfg = cfg
        self.n_features = n_features
        self.n_time = n_time
        self.seq2seq = cfg.cell.startswith("seq2seq")
        # seq2seq-attn-*: the decoder attends over the last attn_window encoder states,
        # kept at the end of the state (training/attention.py); last weights in .attention.
        self.ring = RingAttention(cfg.hidden, cfg.attn_window) if cfg.cell.startswith("seq2seq-attn") else None
        self.attention: Tensor | None = None  # (B, P, H, K) oldest first, set by seq()
        self.base_cell = cfg.cell.split("-")[-1]
        self.ema = cfg.scaling == "ema"
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))
        # Per-horizon-step spread multiplier, fitted on validation after training (calibration).
        self.register_buffer("scale_mult", torch.ones(cfg.horizon, 1))  # (H, 1)
        F, Hd, H = n_features, cfg.hidden, cfg.horizon
        self.rnn: nn.Module
        if cfg.cell == "grid-rowlstm":  # a row LSTM over each frame, a GRU across frames
            from training.grid import GridRecurrence

            self.rnn = GridRecurrence(cfg, F, n_time)
        else:
            self.rnn = _rnn(self.base_cell, 2 * F + n_time, Hd, cfg.layers, cfg.dropout, n_out=F)
        self.drop = nn.Dropout(cfg.dropout)
        if self.seq2seq:
            # Decoder unrolled over the horizon inside the graph: its inputs are learned
            # per-step queries, its initial state the encoder's top layer.
            self.queries = nn.Parameter(torch.randn(H, 16) * 0.1)  # (H, E)
            self.decoder = _rnn(self.base_cell, 16, Hd, 1, 0.0)
            self.head = nn.Linear(Hd, F)
            self.scale_head = nn.Linear(Hd, F)
        else:
            self.head = nn.Linear(Hd, H * F)
            self.scale_head = nn.Linear(Hd, H * F)
        for lin in (self.head, self.scale_head):  # start as repeat-last with unit spread
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.lag_head = nn.Linear(cfg.lags, H) if cfg.lags > 0 else None
        if self.lag_head is not None:
            nn.init.zeros_(self.lag_head.weight)
            nn.init.zeros_(self.lag_head.bias)

    # -- state layout ---------------------------------------------------------------
    @property
    def rnn_width(self) -> int:
        per = self.cfg.layers * self.cfg.hidden
        if self.base_cell == "jordan":  # h, then the fed-back forecast (F)
            return per + self.n_features
        return 2 * per if self.base_cell in ("lstm", "peephole") else per

    @property
    def state_size(self) -> int:
        F = self.n_features
        tail = self.ring.width if self.ring is not None else 0
        return self.rnn_width + F + self.cfg.lags * F + (3 * F if self.ema else 0) + tail

    def initial_state(self, batch: int) -> Tensor:
        return torch.zeros(batch, self.state_size)

    def _split(self, state: Tensor) -> tuple[Tensor | tuple[Tensor, Tensor], Tensor, Tensor | None, Tensor | None]:
        B = state.shape[0]
        F, Ly, Hd, lags = self.n_features, self.cfg.layers, self.cfg.hidden, self.cfg.lags
        per = Ly * Hd
        i = 0

        def take(n: int) -> Tensor:
            nonlocal i
            out = state[:, i : i + n]
            i += n
            return out

        # torch keeps recurrent state as (layers, B, hidden): the batch is axis 1.
        h = take(per).reshape(B, Ly, Hd).transpose(0, 1).contiguous()
        rnn_state: Tensor | tuple[Tensor, Tensor] = h
        if self.base_cell in ("lstm", "peephole"):
            c = take(per).reshape(B, Ly, Hd).transpose(0, 1).contiguous()
            rnn_state = (h, c)
        elif self.base_cell == "jordan":
            rnn_state = (h, take(F))  # (B, F): the last one-step forecast, normalised
        last = take(F)  # (B, F)
        # Zero-width parts are left out altogether: the ONNX exporter cannot reshape them.
        lagbuf = take(lags * F).reshape(B, lags, F) if lags else None  # (B, lags, F), oldest first
        stats = take(3 * F) if self.ema else None  # (B, 3F)
        return rnn_state, last, lagbuf, stats

    def _join(
        self, rnn_state: Tensor | tuple[Tensor, Tensor], last: Tensor, lagbuf: Tensor | None, stats: Tensor | None
    ) -> Tensor:
        B = last.shape[0]
        parts: list[Tensor] = []
        hs = list(rnn_state) if isinstance(rnn_state, tuple) else [rnn_state]
        for t in hs:  # (layers, B, Hd) -> (B, layers*Hd); jordan's fed-back (B, F) as is
            parts.append(t.transpose(0, 1).reshape(B, -1) if t.dim() == 3 else t)
        parts.append(last)
        if lagbuf is not None:
            parts.append(lagbuf.reshape(B, -1))
        if stats is not None:
            parts.append(stats)
        return torch.cat(parts, dim=1)

    # -- the one forward path ---------------------------------------------------------
    def _prepare(
        self, x: Tensor, last: Tensor, lagbuf: Tensor | None, stats: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor | None, Tensor | None, Tensor]:
        """One step of input handling. x (B, F) raw with NaN.

        Returns rnn input (B, 2F), anchor u (B, F) in stored units, sigma (B, F),
        lag features (B, lags, F), and the new last / lag buffer / stats.
        """
        obs = ~torch.isnan(x)  # (B, F)
        x0 = torch.where(obs, x, torch.zeros_like(x))
        if stats is not None:
            F = self.n_features
            n, m, v = stats[:, :F], stats[:, F : 2 * F], stats[:, 2 * F :]
            n1 = n + obs.float()
            # Running mean/var: exact for the first 1/alpha readings, then an EMA.
            alpha = torch.clamp(1.0 / torch.clamp(n1, min=1.0), min=self.cfg.ema_alpha)
            d = x0 - m
            m1 = torch.where(obs, m + alpha * d, m)
            v1 = torch.where(obs, (1.0 - alpha) * (v + alpha * d * d), v)
            # The floor keeps a flat signal from dividing by zero (relative, so unit-free).
            sigma = torch.sqrt(v1) + 0.01 * torch.abs(m1) + 1e-3
            u = torch.where(obs, x0, last)  # raw units
            xn = torch.clamp((u - m1) / sigma, -_CLIP, _CLIP)
            new_stats = torch.cat([n1, m1, v1], dim=1)
        else:
            u = torch.where(obs, (x0 - self.mean) / self.std, last)  # normalised units
            xn = torch.clamp(u, -_CLIP, _CLIP)
            sigma = torch.ones_like(u)
            new_stats = None  # fixed scaling keeps no statistics in the state
        newbuf: Tensor | None = None
        lagfeat: Tensor | None = None
        if lagbuf is not None:
            newbuf = torch.cat([lagbuf[:, 1:], u[:, None, :]], dim=1)  # (B, lags, F)
            lagfeat = torch.clamp((newbuf - u[:, None, :]) / sigma[:, None, :], -_CLIP, _CLIP)
        rnn_in = torch.cat([xn, (~obs).float()], dim=1)
        return rnn_in, u, sigma, lagfeat, u, newbuf, new_stats, obs

    def _feedback(self, h: Tensor, rnn_in: Tensor, lagfeat: Tensor | None) -> Tensor:
        """Jordan: this step's one-step forecast in normalised units (B, F), from h (B, Hd).

        The same heads as the forecast's first horizon step (dropout aside), added to the
        normalised anchor, which is the first F columns of the rnn input.
        """
        F = self.n_features
        d0 = F_.linear(h, self.head.weight[:F], self.head.bias[:F])  # head rows are (H, F), step 0 first
        if self.lag_head is not None and lagfeat is not None:
            d0 = d0 + (lagfeat * self.lag_head.weight[0][None, :, None]).sum(dim=1) + self.lag_head.bias[0]
        return torch.clamp(rnn_in[:, :F] + d0, -_CLIP, _CLIP)

    def seq(
        self,
        x: Tensor,
        tf: Tensor | None,
        state: Tensor,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run T steps. x (B, T, F) raw, tf (B, T, K), state (B, S).

        Returns forecast (B, P, H, F) raw, scale (B, P, H, F) raw, state_out (B, S), where
        P = T, or len(positions) when only some positions are asked for (training).
        """
        B, T, F = x.shape
        H = self.cfg.horizon
        tail = None
        if self.ring is not None:  # the attention's ring and count close the state
            state, tail = state[:, : -self.ring.width], state[:, -self.ring.width :]
        rnn_state, last, lagbuf, stats = self._split(state)
        ins, anchors, sigmas, lagfeats = [], [], [], []
        for t in range(T):  # cheap elementwise work; the recurrent part runs once below
            rnn_in, u, sigma, lagfeat, last, lagbuf, stats, _ = self._prepare(x[:, t], last, lagbuf, stats)
            ins.append(rnn_in)
            anchors.append(u)
            sigmas.append(sigma)
            lagfeats.append(lagfeat)
        inp = torch.stack(ins, dim=1)  # (B, T, 2F)
        if self.n_time:
            assert tf is not None, "this model needs time features"
            inp = torch.cat([inp, tf], dim=2)  # (B, T, 2F+K)
        if self.base_cell == "jordan":
            out, new_rnn = self.rnn(inp, rnn_state, lambda t, h: self._feedback(h, ins[t], lagfeats[t]))
        else:
            out, new_rnn = self.rnn(inp, rnn_state)  # out (B, T, Hd)
        anchor = torch.stack(anchors, dim=1)  # (B, T, F)
        sigma = torch.stack(sigmas, dim=1)  # (B, T, F)
        window = valid = None
        if self.ring is not None and tail is not None:  # windows before ``out`` is cut to positions
            window, valid, tail = self.ring.windows(tail, out, positions)  # (B, P, K, Hd), (B, P, K)
        if positions is not None:
            out, anchor, sigma = out[:, positions], anchor[:, positions], sigma[:, positions]
            lagfeats = [lagfeats[int(p)] for p in positions] if self.lag_head is not None else lagfeats
        P = out.shape[1]
        top = self.drop(out)
        if self.seq2seq:
            h0 = top.reshape(1, B * P, -1)  # (1, B*P, Hd)
            init: Tensor | tuple[Tensor, Tensor] = (h0, torch.zeros_like(h0)) if self.base_cell == "lstm" else h0
            q = self.queries[None].expand(B * P, H, self.queries.shape[1])  # (B*P, H, E)
            dec, _ = self.decoder(q, init)  # (B*P, H, Hd)
            if self.ring is not None and window is not None and valid is not None:
                K = self.ring.window
                dec, att = self.ring(dec, window.reshape(B * P, K, -1), valid.reshape(B * P, K))
                self.attention = att.detach().reshape(B, P, H, K)  # for explanation: holds no graph
            feat = self.drop(dec)
        else:
            feat = top
        # The spread head reads detached features by default: its NLL gradient must not
        # reshape the recurrent state the mean depends on (see ModelConfig.detach_scale).
        delta = self.head(feat).reshape(B, P, H, F)
        pre_scale = self.scale_head(feat.detach() if self.cfg.detach_scale else feat).reshape(B, P, H, F)
        if self.lag_head is not None:
            lf = torch.stack(lagfeats, dim=1)  # type: ignore[arg-type]  # (B, P, lags, F)
            delta = delta + self.lag_head(lf.transpose(2, 3)).transpose(2, 3)  # (B, P, H, F)
        # Forecast = last observed value + predicted change; spread via softplus (>0).
        fc = anchor[:, :, None, :] + delta * sigma[:, :, None, :]
        sc = (F_.softplus(pre_scale + math.log(math.e - 1)) + _SCALE_FLOOR) * sigma[:, :, None, :] * self.scale_mult
        if not self.ema:  # stored units are normalised: back to raw
            fc = fc * self.std + self.mean
            sc = sc * self.std
        state_out = self._join(new_rnn, last, lagbuf, stats)
        return fc, sc, state_out if tail is None else torch.cat([state_out, tail], dim=1)


class StepGraph(nn.Module):
    """What gets exported: x (B, F), state (B, S)[, tf (B, K)] -> forecast, scale, state_out
    [, attention (B, H, K): seq2seq-attn only, index k = lag k, 0 = the step just fed]."""

    def __init__(self, net: StepNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, state: Tensor, tf: Tensor | None = None) -> tuple[Tensor, ...]:
        fc, sc, st = self.net.seq(x[:, None, :], None if tf is None else tf[:, None, :], state)
        if self.net.ring is not None and self.net.attention is not None:
            return fc[:, 0], sc[:, 0], st, by_lag(self.net.attention[:, 0])
        return fc[:, 0], sc[:, 0], st  # (B, H, F), (B, H, F), (B, S)


class SegRNN(nn.Module):
    """Segment-recurrent window model (Lin et al. 2023, "SegRNN"), channel-independent.

    The window is last-value normalised, cut into segments of length w, each embedded
    and run through a GRU (optionally bidirectional); all output segments are decoded in
    parallel from the final state with position + channel queries.
    """

    mean: Tensor
    std: Tensor
    scale_mult: Tensor

    def __init__(self, cfg: ModelConfig, n_features: int, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_features = n_features
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))
        self.register_buffer("scale_mult", torch.ones(cfg.horizon, 1))  # (H, 1), see StepNet
        w, d = cfg.segment, cfg.hidden
        self.n_in = cfg.window // w
        self.n_out = math.ceil(cfg.horizon / w)
        self.embed = nn.Sequential(nn.Linear(w, d), nn.ReLU())
        self.encoder = nn.GRU(d, d, num_layers=cfg.layers, batch_first=True, bidirectional=cfg.bidirectional,
                              dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.merge = nn.Linear(2 * d, d) if cfg.bidirectional else None
        self.pos = nn.Parameter(torch.randn(self.n_out, d // 2) * 0.1)
        self.chan = nn.Parameter(torch.randn(n_features, d - d // 2) * 0.1)
        self.decoder = nn.GRU(d, d, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(d, w)
        self.out_scale = nn.Linear(d, w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, L, F) raw with NaN -> forecast (B, H, F), scale (B, H, F), raw units."""
        B, L, F = x.shape
        w, d, H = self.cfg.segment, self.cfg.hidden, self.cfg.horizon
        obs = ~torch.isnan(x)  # (B, L, F)
        xn = (torch.where(obs, x, torch.zeros_like(x)) - self.mean) / self.std
        # Index of the last observed step per channel (argmax of position * observed).
        pos = torch.arange(1, L + 1, dtype=x.dtype)[None, :, None]  # (1, L, 1)
        idx = torch.argmax(obs.to(x.dtype) * pos, dim=1, keepdim=True)  # (B, 1, F)
        last = torch.gather(xn, 1, idx)  # (B, 1, F)
        xn = torch.where(obs, xn, last)  # missing steps read as the last observed value
        z = torch.clamp(xn - last, -_CLIP, _CLIP).transpose(1, 2).reshape(B * F, self.n_in, w)  # (BF, n, w)
        _, h = self.encoder(self.embed(z))  # h (layers*dirs, BF, d)
        hf = self.merge(torch.cat([h[-2], h[-1]], dim=1)) if self.merge is not None else h[-1]  # (BF, d)
        q = torch.cat(
            [
                self.pos[None].expand(F, self.n_out, d // 2),
                self.chan[:, None].expand(F, self.n_out, d - d // 2),
            ],
            dim=2,
        )  # (F, m, d)
        q = q[None].expand(B, F, self.n_out, d).reshape(B * F * self.n_out, 1, d)  # (BFm, 1, d)
        h0 = hf[:, None, :].expand(B * F, self.n_out, d).reshape(1, B * F * self.n_out, d)
        y, _ = self.decoder(q, h0)  # (BFm, 1, d)
        feat = self.drop(y)
        mu = self.out(feat).reshape(B, F, self.n_out * w)[:, :, :H].transpose(1, 2)  # (B, H, F)
        # Spread from detached features by default, as in StepNet.
        ps = self.out_scale(feat.detach() if self.cfg.detach_scale else feat)
        ps = ps.reshape(B, F, self.n_out * w)[:, :, :H].transpose(1, 2)
        fc = (mu + last) * self.std + self.mean
        sc = (F_.softplus(ps + math.log(math.e - 1)) + _SCALE_FLOOR) * self.std * self.scale_mult
        return fc, sc
