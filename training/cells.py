"""Recurrent cells torch does not ship: the peephole LSTM and the Jordan network (GRU core).

Both keep nn.LSTM's contract with batch_first: ``forward(x (B, T, I), state) -> (out
(B, T, Hd), new_state)``, layers stacked with dropout between them, so StepNet uses them
like its torch cells. They are written as plain tensor code (one step = a few MatMuls and
elementwise ops), which the TorchScript exporter traces into the step graph as is.

- ``PeepholeLSTM`` (Gers & Schmidhuber 2001): the input and forget gates see the previous
  cell state, the output gate sees the new one. State (h, c), each (layers, B, Hd).
- ``JordanGRU`` (Jordan 1986): beside its hidden state, the network reads its own previous
  output - the model's last one-step forecast, normalised - as input. The output is made
  by the model's heads, so the caller passes ``readout(t, h_top) -> (B, F)``; the fed-back
  value lives in the state, (h (layers, B, Hd), y (B, F)), so the step contract holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

# Export the peephole LSTM as ONNX LSTM nodes with their P input (True) or as the traced
# MatMuls and elementwise ops (False); the engine timing that chose it: docs/training.md.
ONNX_LSTM_OP = True


def _uniform(module: nn.Module, hidden: int) -> None:
    # torch's own RNN initialisation: U(-1/sqrt(hidden), 1/sqrt(hidden)) for every weight.
    k = 1.0 / math.sqrt(hidden)
    for p in module.parameters():
        nn.init.uniform_(p, -k, k)


class _OnnxPeepholeLSTM(torch.autograd.Function):
    """One ONNX ``LSTM`` node with its ``P`` input (export only; ONNX gate order i, o, f, c).

    ``forward`` computes the node's own semantics, so the trace and its shapes are right;
    ``symbolic`` emits the node. x (T, B, I), w (1, 4H, I), r (1, 4H, H), b (1, 8H),
    p (1, 3H), h0 and c0 (1, B, H) -> y (T, 1, B, H), h_n, c_n (1, B, H).
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w: Tensor, r: Tensor, b: Tensor, p: Tensor, h0: Tensor, c0: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        h, c = h0[0], c0[0]
        pi, po, pf = p[0].chunk(3)
        ys = []
        for t in range(x.shape[0]):
            gi, go, gf, gc = (F_.linear(x[t], w[0]) + F_.linear(h, r[0]) + b[0].chunk(2)[0] + b[0].chunk(2)[1]).chunk(4, 1)
            i = torch.sigmoid(gi + pi * c)
            f = torch.sigmoid(gf + pf * c)
            c = f * c + i * torch.tanh(gc)
            h = torch.sigmoid(go + po * c) * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys)[:, None], h[None], c[None]

    @staticmethod
    def symbolic(g: Any, x: Any, w: Any, r: Any, b: Any, p: Any, h0: Any, c0: Any) -> Any:
        from torch.onnx.symbolic_opset9 import unused  # the absent sequence_lens input

        hidden = int(p.type().sizes()[1]) // 3
        missing = unused(g)  # type: ignore[no-untyped-call]
        return g.op("LSTM", x, w, r, b, missing, h0, c0, p, hidden_size_i=hidden, outputs=3)


class PeepholeLayer(nn.Module):
    """One peephole LSTM layer; gates in torch's order i, f, g, o; peepholes i, f, o."""

    def __init__(self, inp: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden, inp))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden, hidden))
        self.bias = nn.Parameter(torch.empty(4 * hidden))
        _uniform(self, hidden)
        # Peepholes start at zero: the layer starts as a plain LSTM and learns to look.
        self.peep = nn.Parameter(torch.zeros(3, hidden))

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, T, I), h and c (B, Hd) -> out (B, T, Hd), h, c."""
        if ONNX_LSTM_OP and torch.onnx.is_in_onnx_export():
            return self._onnx(x, h, c)
        gx = F_.linear(x, self.weight_ih, self.bias)  # input projection for all steps at once
        outs = []
        for t in range(x.shape[1]):
            gi, gf, gg, go = (gx[:, t] + F_.linear(h, self.weight_hh)).chunk(4, dim=1)
            i = torch.sigmoid(gi + self.peep[0] * c)
            f = torch.sigmoid(gf + self.peep[1] * c)
            c = f * c + i * torch.tanh(gg)
            o = torch.sigmoid(go + self.peep[2] * c)  # the new cell state, as in Gers 2001
            h = o * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1), h, c

    def _onnx(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # torch order i, f, g, o -> ONNX i, o, f, c; the exporter folds these reorderings
        # of parameters into constants.
        def iofc(m: Tensor) -> Tensor:
            i, f, g, o = m.chunk(4, dim=0)
            return torch.cat([i, o, f, g], dim=0)[None]

        b = torch.cat([iofc(self.bias), torch.zeros_like(iofc(self.bias))], dim=1)  # (1, 8H): Wb, Rb
        p = torch.cat([self.peep[0], self.peep[2], self.peep[1]])[None]  # (1, 3H): i, o, f
        y, hn, cn = _OnnxPeepholeLSTM.apply(  # type: ignore[no-untyped-call]
            x.transpose(0, 1), iofc(self.weight_ih), iofc(self.weight_hh), b, p, h[None], c[None]
        )
        return y[:, 0].transpose(0, 1), hn[0], cn[0]


class PeepholeLSTM(nn.Module):
    """Stacked peephole LSTM layers: x (B, T, I), (h0, c0) -> out, (h_n, c_n)."""

    def __init__(self, inp: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(PeepholeLayer(inp if i == 0 else hidden, hidden) for i in range(layers))
        self.drop = nn.Dropout(dropout if layers > 1 else 0.0)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h0, c0 = state
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            if i:
                x = self.drop(x)  # between layers only, as nn.LSTM does
            x, h, c = layer(x, h0[i], c0[i])
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


Readout = Callable[[int, Tensor], Tensor]


class JordanGRU(nn.Module):
    """GRU layers whose first layer also reads the model's previous output (Jordan feedback).

    The loop runs one step at a time (the output of step t is input of step t+1), which
    makes training slower than nn.GRU's fused loop; at T=1 (the exported step) it is
    nn.GRUCell plus the readout.
    """

    def __init__(self, inp: int, hidden: int, layers: int, dropout: float, n_out: int) -> None:
        super().__init__()
        self.n_out = n_out
        self.cells = nn.ModuleList(nn.GRUCell(inp + n_out if i == 0 else hidden, hidden) for i in range(layers))
        self.drop = nn.Dropout(dropout if layers > 1 else 0.0)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor], readout: Readout) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, I), state (h (layers, B, Hd), y (B, F)) -> out (B, T, Hd), new state."""
        h0, y = state
        hs = list(h0.unbind(0))
        outs = []
        for t in range(x.shape[1]):
            z = torch.cat([x[:, t], y], dim=1)
            for i, cell in enumerate(self.cells):
                hs[i] = cell(self.drop(z) if i else z, hs[i])
                z = hs[i]
            y = readout(t, z)  # this step's one-step forecast, fed back at the next step
            outs.append(z)
        return torch.stack(outs, dim=1), (torch.stack(hs), y)
