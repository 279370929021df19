"""The native sequence form: a step graph's recurrence as ONE ONNX GRU/LSTM/RNN op over T.

The Scan form (tools/seqform.py) pays ORT's per-node cost at every step (46 ms for 2,000
steps of the demo model); here only the recurrent ops loop, inside ORT's kernels:

1. The step graph's input handling runs once on all T-1 history steps as one batch of
   (T-1)*B rows (its own nodes, copied): it depends on the previous step only through the
   state's ``last`` value (the last observation held over NaNs) and, with running (ema)
   scaling, the statistics n, m, v. Those carried values are computed first, over T, by
   GRU ops with identity activations and zero recurrent weights, which compute
   ``h = (1 - z) * x + z * h`` - a gate per step: z = 0 takes the observation exactly,
   z = 1 holds exactly (a NaN), z = 1 - alpha is the running mean's update.
2. The step graph's GRU/LSTM/RNN nodes run over [T-1, B, I] with their own weights.
3. The state after step T-2 is assembled in the step graph's layout ([rnn | last | lags |
   n, m, v]), and the whole step graph (copied) runs the last step: forecast, scale, state.

Only graphs whose recurrence is all in RNN ops qualify (gru, lstm, rnn, peephole,
seq2seq-*; not jordan, attention or grid, whose input or state needs the previous output):
``build_native`` raises NotNative otherwise, and ``check`` compares the result with rolling
the step graph over histories with NaNs and a gap; tools/seqform.py uses the native form
only when both pass and falls back to Scan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_RNN = ("GRU", "LSTM", "RNN")
_SHAPE_OPS = {"Squeeze", "Unsqueeze", "Transpose", "Reshape", "Identity", "Gather"}
_P = "seqnat__"
_BIG = 2**62
KIND_KEY = "sensorcast.sequence"  # metadata_props key: "native" | "scan"


class NotNative(ValueError):
    """The step graph's recurrence is not all in RNN ops (or its layout is not a StepNet's)."""


class _Layout:
    """What the probes found: widths, the state's parts, where ``last`` and ``m`` are made."""

    def __init__(self, step: Any) -> None:
        import onnxruntime as ort
        from onnx import helper

        g = step.graph
        self.inits = {t.name for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.inits]
        if any(a.HasField("g") or len(a.graphs) for n in g.node for a in n.attribute):
            raise NotNative("the step graph has subgraphs")
        producer = {o: n for n in g.node for o in n.output}
        dep = {"x"}  # values that depend on x (not through its shape)
        rnn_dep: set[str] = set()
        for n in g.node:
            if n.op_type not in ("Shape", "Size") and any(i in dep for i in n.input):
                dep.update(n.output)
            if n.op_type in _RNN or any(i in rnn_dep for i in n.input):
                rnn_dep.update(n.output)
        self.enc = [n for n in g.node if n.op_type in _RNN and n.input[0] in dep]
        if not self.enc:
            raise NotNative("no GRU/LSTM/RNN op reads the input")
        if self.enc[0].input[0] in rnn_dep:
            raise NotNative("the recurrent op's input depends on a recurrent output (fed back)")
        for k, n in enumerate(self.enc):
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("direction", b"forward") != b"forward" or attrs.get("layout", 0) != 0:
                raise NotNative(f"{n.op_type} {n.name}: only forward, layout 0")
            if len(n.input) > 4 and n.input[4]:
                raise NotNative(f"{n.op_type} {n.name}: has sequence_lens")
            if k:
                self._chained(n.input[0], self.enc[k - 1].output[0], producer)
        so = producer.get("state_out")
        if so is None or so.op_type != "Concat" or helper.get_attribute_value(so.attribute[0]) not in (1, -1):
            raise NotNative("state_out is not a concatenation along axis 1")
        dims = {i.name: i.type.tensor_type.shape.dim for i in g.input}
        self.F = dims["x"][1].dim_value
        self.S = dims["state"][1].dim_value
        if not self.F or not self.S:
            raise NotNative("x or state has no fixed width")
        self.K = dims["tf"][1].dim_value if "tf" in dims else 0
        self.rw = sum(int(helper.get_attribute_value(a)) * (2 if n.op_type == "LSTM" else 1)
                      for n in self.enc for a in n.attribute if a.name == "hidden_size")
        # Probes: widths of state_out's parts; g(x) of the ``last`` part; running stats or not.
        probe = helper.make_model(helper.make_graph(
            list(g.node), "probe", list(g.input),
            [*g.output, *(helper.make_tensor_value_info(p, 1, None) for p in so.input)],
            initializer=list(g.initializer)), opset_imports=list(step.opset_import), ir_version=step.ir_version)
        probe.functions.extend(step.functions)
        self._sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        out = self.run(np.zeros((1, self.F), np.float32))
        offsets, at = {}, 0
        for p in so.input:
            offsets[p] = (at, at + out[p].shape[1])
            at += out[p].shape[1]
        self.parts = offsets
        rest = self.S - self.rw - self.F
        self.ema = rest >= 3 * self.F and all(self._is_ema(v) for v in (2.5, -1.5))
        lag_w = rest - (3 * self.F if self.ema else 0)
        if lag_w % self.F:
            raise NotNative(f"state width {self.S}: not [rnn {self.rw} | last | lags | stats] for F={self.F}")
        self.L = lag_w // self.F
        self.last = self.part(self.rw)
        self.m = self.part(self.S - 2 * self.F) if self.ema else None
        g0 = out["state_out"][0, self.rw : self.rw + self.F]
        g1 = self.run(np.ones((1, self.F), np.float32))["state_out"][0, self.rw : self.rw + self.F]
        self.std = 1.0 / (g1 - g0).astype(np.float64)  # fixed: (x - mean) / std; ema: raw
        self.mean = -g0 * self.std

    @staticmethod
    def _chained(x: str, y: str, producer: dict[str, Any]) -> None:
        """Layer k's input must be layer k-1's output, reshaped only."""
        stack, seen = [x], False
        while stack:
            t = stack.pop()
            if t == y:
                seen = True
                continue
            p = producer.get(t)
            if p is None or p.op_type not in _SHAPE_OPS:
                raise NotNative(f"layer input {x} is not the previous layer's output")
            stack.append(p.input[0])  # the data; the other inputs are axes, indices, shapes
        if not seen:
            raise NotNative(f"layer input {x} does not come from the previous layer")

    def run(self, x: Any, state: Any = None) -> dict[str, Any]:
        feed = {"x": x, "state": np.zeros((x.shape[0], self.S), np.float32) if state is None else state}
        if self.K:
            feed["tf"] = np.zeros((x.shape[0], self.K), np.float32)
        names = [o.name for o in self._sess.get_outputs()]
        return dict(zip(names, self._sess.run(None, feed), strict=True))

    def _is_ema(self, v: float) -> bool:
        st = self.run(np.full((1, self.F), v, np.float32))["state_out"][0]
        want = np.concatenate([np.ones(self.F), np.full(self.F, v), np.zeros(self.F)])
        return bool(np.array_equal(st[-3 * self.F :], want) and np.array_equal(st[self.rw : self.rw + self.F],
                                                                                 np.full(self.F, v)))

    def part(self, col: int) -> tuple[str, int]:
        """(state_out part, column inside it) holding state columns col..col+F-1."""
        for name, (a, b) in self.parts.items():
            if a <= col and col + self.F <= b:
                return name, col - a
        raise NotNative(f"state columns {col}..{col + self.F} are not made by one tensor")


def _prune(nodes: list[Any], outputs: set[str]) -> list[Any]:
    need, keep = set(outputs), []
    for node in reversed(nodes):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
    return keep[::-1]


class _Builder:
    def __init__(self, lay: _Layout) -> None:
        self.lay = lay
        self.nodes: list[Any] = []
        self.consts: list[Any] = []
        self._n = 0

    def op(self, op: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        self._n += 1
        outs = [f"{_P}{op}_{self._n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{_P}{op}_{self._n}", **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        from onnx import numpy_helper

        self._n += 1
        name = f"{_P}c{self._n}"
        self.consts.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def copy(self, nodes: list[Any], prefix: str, bind: dict[str, str]) -> dict[str, str]:
        """Copy step-graph nodes with inputs rebound; returns old name -> new name."""
        from onnx import NodeProto

        names = dict(bind)

        def ren(t: str) -> str:
            if not t or t in self.lay.inits:
                return t
            return names.setdefault(t, _P + prefix + t)

        for n in nodes:
            c = NodeProto()
            c.CopyFrom(n)
            c.name = _P + prefix + n.name
            c.input[:] = [ren(i) for i in n.input]
            c.output[:] = [ren(o) for o in n.output]
            self.nodes.append(c)
        return names

    def slice(self, t: str, start: Any, end: Any, axis: int) -> str:
        s = start if isinstance(start, str) else self.const([start])
        e = end if isinstance(end, str) else self.const([end])
        return str(self.op("Slice", [t, s, e, self.const([axis])]))

    def carry(self, z: str, h: str, h0: str, width: int) -> tuple[str, str]:
        """GRU with identity activations: h_t = (1 - z_t) * h_t' + z_t * h_{t-1}, per column.
        z, h [T, B, width]; h0 [B, width] -> all h [T, B, width], the last [B, width]."""
        eye, zero = np.eye(width, dtype=np.float32), np.zeros((width, width), np.float32)
        w = np.concatenate([np.concatenate([eye, zero], 1), np.zeros((width, 2 * width), np.float32),
                            np.concatenate([zero, eye], 1)])[None]  # gates z, r, h
        y, yh = self.op("GRU", [self.op("Concat", [z, h], axis=2), self.const(w, np.float32),
                                self.const(np.zeros((1, 3 * width, width)), np.float32), "", "",
                                self.op("Unsqueeze", [h0, self.const([0])])],
                        n_out=2, hidden_size=width, activations=["Affine", "Affine"],
                        activation_alpha=[1.0, 1.0], activation_beta=[0.0, 0.0])
        return self.op("Squeeze", [y, self.const([1])]), self.op("Squeeze", [yh, self.const([0])])


def _history(b: _Builder, nodes: list[Any], t1: str, x_last: str, tf_last: str | None) -> str:
    """Nodes that make the state after steps 0..T-2 (T1 = T-1 >= 1 steps); returns its name."""
    lay = b.lay
    F, S, rw, L = lay.F, lay.S, lay.rw, lay.L
    has_tf = "tf" in lay.inputs

    def time_major(t: str, w: int) -> tuple[str, str]:
        tm = b.op("Transpose", [b.slice(t, 0, t1, 1)], perm=[1, 0, 2])  # (T1, B, w)
        return tm, b.op("Reshape", [tm, b.const([-1, w])])  # (T1*B, w)

    xt, xf = time_major("x", F)
    tff = time_major("tf", lay.K)[1] if has_tf else None
    shp = b.op("Shape", [xt])  # [T1, B, F]
    tb = b.slice(shp, 0, 2, 0)

    def zeros(w: int) -> str:  # (T1, B, w)
        return str(b.op("ConstantOfShape", [b.op("Concat", [tb, b.const([w])], axis=0)]))

    def flat(t: str) -> str:
        return str(b.op("Reshape", [t, b.const([-1, S])]))

    def batch(prefix: str, target: str, x: str, state: str) -> str:  # step graph on all rows at once
        bind = {"x": x, "state": state} | ({"tf": tff} if tff else {})
        return b.copy(_prune(nodes, {target}), prefix, bind)[target]

    obs = b.op("Not", [b.op("IsNaN", [xt])])
    obsf = b.op("Cast", [obs], to=1)
    zf, onef = b.const(0.0, np.float32), b.const(1.0, np.float32)
    hold = b.op("Sub", [onef, obsf])  # 1 on a NaN

    def prev(seq: str, first: str) -> str:  # (T1, B, w): the value before each step
        return str(b.op("Concat", [b.op("Unsqueeze", [first, b.const([0])]), b.slice(seq, 0, -1, 0)], axis=0))

    def state_col(a: int, w: int) -> str:
        return b.slice("state", a, a + w, 1)
    # ``last``: the step graph's own value of each observation, held over NaNs.
    if lay.ema:  # running scaling holds the raw value (the probe checked): no batch of the graph needed
        g = b.op("Where", [obs, xt, zf])
    else:
        name, off = lay.last
        g = b.slice(batch("A_", name, xf, flat(zeros(S))), off, off + F, 1)
        g = b.op("Where", [obs, b.op("Reshape", [g, shp]), zf])
    last0 = state_col(rw, F)
    stats_mid: list[str] = []
    stats: list[str] = []
    if lay.ema and lay.m is not None:
        n0, m0, v0 = (state_col(S - (3 - i) * F, F) for i in range(3))
        n_after = b.op("Add", [n0, b.op("CumSum", [obsf, b.const(0)])])
        n_prev = b.op("Sub", [n_after, obsf])
        # alpha_t as the step graph makes it: its m update from m = 0 towards x = 1.
        st = flat(b.op("Concat", [zeros(S - 3 * F), n_prev, zeros(2 * F)], axis=2))
        name, off = lay.m
        alpha = b.op("Reshape", [b.slice(batch("M_", name, b.op("ConstantOfShape", [b.op("Shape", [xf])],
                                                                   value=_one()), st), off, off + F, 1), shp])
        z = b.op("Where", [obs, b.op("Sub", [onef, alpha]), onef])
        x0 = g
        # One carry op for the held value and the running mean (the variance needs the mean).
        both, both_mid = b.carry(b.op("Concat", [hold, z], axis=2), b.op("Concat", [g, x0], axis=2),
                                 b.op("Concat", [last0, m0], axis=1), 2 * F)
        last_seq, m_seq = b.slice(both, 0, F, 2), b.slice(both, F, 2 * F, 2)
        last_mid, m_mid = b.slice(both_mid, 0, F, 1), b.slice(both_mid, F, 2 * F, 1)
        m_prev = prev(m_seq, m0)
        d = b.op("Sub", [x0, m_prev])
        dv = b.op("Where", [obs, b.op("Mul", [b.op("Sub", [onef, alpha]), b.op("Mul", [d, d])]), zf])
        v_seq, v_mid = b.carry(z, dv, v0, F)
        stats = [n_prev, m_prev, prev(v_seq, v0)]
        stats_mid = [b.op("Squeeze", [b.slice(n_after, -1, _BIG, 0), b.const([0])]), m_mid, v_mid]
    else:
        last_seq, last_mid = b.carry(hold, g, last0, F)
    parts = [zeros(rw), prev(last_seq, last0)] + ([zeros(L * F)] if L else []) + stats
    # The recurrent input of every step, by the step graph's own nodes, then the RNN ops.
    x0_name = lay.enc[0].input[0]
    xin = batch("B_", x0_name, xf, flat(b.op("Concat", parts, axis=2)))
    xin = b.op("Reshape", [xin, b.op("Concat", [tb, b.const([-1])], axis=0)])  # (T1, B, I)
    want = {i for n in lay.enc for i in n.input[1:] if i}
    bind = {"x": x_last, "state": "state"} | ({"tf": tf_last} if tf_last else {})
    init = b.copy(_prune(nodes, want), "C_", bind)
    hs, cs = [], []
    for k, n in enumerate(lay.enc):
        outs = b.op(n.op_type, [xin] + [init.get(i, i) if i else "" for i in n.input[1:]], n_out=len(n.output),
                    **{a.name: _attr(a) for a in n.attribute})
        hs.append(b.op("Squeeze", [outs[1], b.const([0])]))
        if n.op_type == "LSTM":
            cs.append(b.op("Squeeze", [outs[2], b.const([0])]))
        if k + 1 < len(lay.enc):
            xin = b.op("Squeeze", [outs[0], b.const([1])])
        else:  # the top layer's outputs over T are not needed: ORT then does not write them (~10% at B=512)
            b.nodes[-1 - (2 if n.op_type == "LSTM" else 1)].output[0] = ""
    mid = [*hs, *cs, last_mid]
    if L:
        lag0 = b.op("Reshape", [state_col(rw + F, L * F), b.const([0, L, F])])
        lags = b.op("Concat", [lag0, b.op("Transpose", [last_seq], perm=[1, 0, 2])], axis=1)
        mid.append(b.op("Reshape", [b.slice(lags, -L, _BIG, 1), b.const([0, L * F])]))
    return str(b.op("Concat", mid + stats_mid, axis=1))


def _one() -> Any:
    from onnx import helper

    return helper.make_tensor("one", 1, [1], [1.0])


def _attr(a: Any) -> Any:
    from onnx import helper

    v = helper.get_attribute_value(a)
    return [s.decode() for s in v] if isinstance(v, list) and v and isinstance(v[0], bytes) else (
        v.decode() if isinstance(v, bytes) else v)


def build_native(step: Any) -> Any:
    """The native sequence model (onnx ModelProto) for a step model; NotNative when it cannot."""
    import onnx
    from onnx import TensorProto, helper

    lay = _Layout(step)
    g = step.graph
    nodes = list(g.node)
    has_tf = "tf" in lay.inputs
    outer = _Builder(lay)
    t = outer.slice(outer.op("Shape", ["x"]), 1, 2, 0)
    t1 = outer.op("Sub", [t, outer.const([1])])
    t1s = outer.op("Squeeze", [t1, outer.const([0])])
    x_last = outer.op("Gather", ["x", t1s], axis=1)
    tf_last = outer.op("Gather", ["tf", t1s], axis=1) if has_tf else None
    inner = _Builder(lay)
    inner._n = 10_000  # names apart from the outer graph's
    mid = _history(inner, nodes, t1, x_last, tf_last)

    def vi(n: str) -> Any:
        return helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
    outer.consts += inner.consts
    skip = helper.make_graph([helper.make_node("Identity", ["state"], [_P + "mid_skip"])], "one_step", [],
                             [vi(_P + "mid_skip")])
    run = helper.make_graph([*inner.nodes, helper.make_node("Identity", [mid], [_P + "mid_run"])], "history", [],
                            [vi(_P + "mid_run")])
    none = outer.op("Squeeze", [outer.op("Equal", [t1, outer.const([0])]), outer.const([0])])
    state_mid = outer.op("If", [none], then_branch=skip, else_branch=run)
    outs = {o.name for o in g.output} & {"forecast", "scale", "state_out"}
    bind = {"x": x_last, "state": state_mid} | ({"tf": tf_last} if tf_last else {}) | {o: o for o in outs}
    outer.copy(nodes, "D_", bind)
    graph = helper.make_graph(outer.nodes, (g.name or "step") + "_native_seq",
                              [_seq_input(i) for i in g.input if i.name not in lay.inits],
                              [o for o in g.output if o.name in outs],
                              initializer=[*g.initializer, *outer.consts])
    model = helper.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version)
    model.functions.extend(step.functions)
    helper.set_model_props(model, {KIND_KEY: "native"})
    onnx.checker.check_model(model)
    return model


def _seq_input(i: Any) -> Any:
    import onnx

    vi = onnx.ValueInfoProto()
    vi.CopyFrom(i)
    if i.name != "state":  # (B, F) -> (B, T, F)
        dims = vi.type.tensor_type.shape.dim
        last = onnx.TensorShapeProto.Dimension()
        last.CopyFrom(dims[1])
        del dims[1:]
        dims.add().dim_param = "T"
        dims.add().CopyFrom(last)
    return vi


def check(step_bytes: bytes, seq_bytes: bytes, steps: tuple[int, ...] = (2, 3, 130)) -> float:
    """Largest gap between the sequence graph and rolling the step graph (histories with NaNs
    and a gap, from a state the step graph reached), relative to what is allowed: <= 1 passes.
    Allowed: 1e-4 train std (from the graph's own normalisation) or 1e-6 of the value."""
    import onnx
    import onnxruntime as ort

    lay = _Layout(onnx.load_from_string(step_bytes))
    step = ort.InferenceSession(step_bytes, providers=["CPUExecutionProvider"])
    seq = ort.InferenceSession(seq_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in step.get_outputs() if o.name in ("forecast", "scale", "state_out")]
    rng = np.random.default_rng(0)
    B, F, K = 3, lay.F, lay.K
    std = np.abs(lay.std).astype(np.float32)

    def history(t: int) -> tuple[Any, Any]:
        x = (lay.mean + lay.std * rng.standard_normal((B, t, F))).astype(np.float32)
        x[rng.random(x.shape) < 0.1] = np.nan
        x[0, t // 4 : t // 2] = np.nan  # a gap
        return x, rng.uniform(-1, 1, (B, t, K)).astype(np.float32)

    def roll(x: Any, tf: Any, s: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(x.shape[1]):
            feed = {"x": x[:, i], "state": s} | ({"tf": tf[:, i]} if K else {})
            out = dict(zip(names, step.run(names, feed), strict=True))
            s = out["state_out"]
        return out

    worst = 0.0
    for t in steps:
        s0 = roll(*history(25), np.zeros((B, lay.S), np.float32))["state_out"]
        x, tf = history(t)
        want = roll(x, tf, s0)
        got = dict(zip(names, seq.run(names, {"x": x, "state": s0} | ({"tf": tf} if K else {})), strict=True))
        for n in names:
            a, w = got[n].astype(np.float64), want[n].astype(np.float64)
            allowed = np.maximum(1e-4 * (std if n != "state_out" else 1.0), 1e-6 * np.abs(w))
            if n == "state_out":
                allowed = np.maximum(1e-4 * np.maximum(1.0, np.abs(w)), allowed)
            worst = max(worst, float(np.nan_to_num(np.abs(a - w) / allowed, nan=np.inf).max()))
    return worst
