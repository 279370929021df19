"""The sequence form of a step graph: T steps in one ONNX call (an ONNX ``Scan`` over the step).

``build_sequence(step_bytes)`` wraps ANY step graph (trained, modelkit, already shipped)
without retraining: the same nodes and weights, so the result equals rolling the step
graph call by call (the same kernels run on the same values). Inputs ``x`` [B, T, F]
(NaN = missing), ``state`` [B, S], ``tf`` [B, T, K] when the step graph has it; outputs
``state_out`` [B, S] after the last step and ``forecast`` / ``scale`` [B, H, Fo] made at
the last step.

Two scans share the weights (moved to the outer graph, which both bodies see):
the first runs steps 0..T-2 through the step graph pruned to what ``state_out`` needs
(no forecast head: most of a step's work at large horizons), the second runs the last
step through the whole graph. ORT pays ~0.5 us per node per iteration inside a Scan, so
the speed-up over a call per step is largest for small batches and small graphs (see
docs/engine.md, "Sequence form").

Needs the ``onnx`` package (the ``train`` extra), which the service image does not have:
the trainer's export and the modelkit ship ``model.seq.onnx`` (``ship_sequence``), and
``python -m tools.seqform models/<name>/<version>`` adds it to a model already shipped.
The service loads it when the manifest names it (``sequence_file``) and otherwise rolls
the step graph, a call per step (service/runtime/session.py).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

SEQ_FILE = "model.seq.onnx"
_P = "seqform__"  # prefix of the outer graph's own names (never clashes with a step graph's)


def _prune(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """The nodes needed for ``outputs`` (in their original order); inputs of nested
    subgraphs count as needed too (a node with a body may read outer names)."""
    need = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in need for o in node.output):
            keep.append(node)
            need.update(i for i in node.input if i)
            need.update(_subgraph_names(node))
    keep.reverse()
    return keep


def _subgraph_names(node: Any) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for n in g.node:
                names.update(n.input)
                names.update(_subgraph_names(n))
    return names


def build_sequence(step_bytes: bytes, native: bool = True) -> bytes:
    """The sequence graph (serialised) for the step graph ``step_bytes``: the native form
    (tools/seqnative.py: the recurrence in one RNN op) when the graph allows it and it
    matches rolling the step graph (``seqnative.check``), else the Scan form. ValueError
    when the step graph does not follow the step contract or its opset is older than 13."""
    if native:
        import onnx

        from tools.seqnative import NotNative, build_native, check

        try:
            blob = bytes(build_native(onnx.load_from_string(step_bytes)).SerializeToString())
            if check(step_bytes, blob) <= 1.0:
                return blob
        except NotNative:
            pass  # the recurrence is not all in RNN ops: the Scan form is the one
        except Exception as e:  # a graph the native builder misreads must not cost the export its sequence form
            warnings.warn(f"native sequence form failed ({e!r}); shipping the Scan form", stacklevel=2)
    return build_scan(step_bytes)


def sequence_kind(seq_bytes: bytes) -> str:
    """"native" | "scan": which form ``build_sequence`` made."""
    import onnx

    from tools.seqnative import KIND_KEY

    props = {p.key: p.value for p in onnx.load_from_string(seq_bytes).metadata_props}
    return str(props.get(KIND_KEY, "scan"))


def build_scan(step_bytes: bytes) -> bytes:
    """The Scan form: the step graph's nodes as the body of an ONNX Scan over T."""
    import onnx
    from onnx import TensorProto, helper

    step = onnx.load_from_string(step_bytes)
    g = step.graph
    opset = max((o.version for o in step.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        raise ValueError(f"step graph opset {opset}: the sequence form needs opset >= 13")
    ins = {i.name: i for i in g.input if i.name not in {t.name for t in g.initializer}}
    outs = {o.name: o for o in g.output}
    if not {"x", "state"} <= set(ins) or not {"forecast", "state_out"} <= set(outs):
        raise ValueError(f"not a step graph: inputs {sorted(ins)}, outputs {sorted(outs)}")
    has_tf = "tf" in ins
    outputs = ["forecast"] + (["scale"] if "scale" in outs else [])
    scanned = ["x"] + (["tf"] if has_tf else [])

    def body(name: str, nodes: list[Any], scan_outs: list[str]) -> Any:
        return helper.make_graph(
            nodes, name,
            [ins["state"]] + [ins[n] for n in scanned],
            [outs["state_out"]] + [outs[n] for n in scan_outs],
            value_info=list(g.value_info),
        )

    nodes = list(g.node)
    head = body("steps", _prune(nodes, {"state_out"}), [])
    last = body("last_step", nodes, outputs)

    def i64(name: str, vals: list[int]) -> Any:
        return helper.make_tensor(_P + name, TensorProto.INT64, [len(vals)], vals)

    outer_nodes = [
        helper.make_node("Shape", ["x"], [_P + "xshape"]),
        helper.make_node("Slice", [_P + "xshape", _P + "one", _P + "two"], [_P + "T"]),
        helper.make_node("Sub", [_P + "T", _P + "one"], [_P + "T1"]),
    ]
    head_in, last_in = ["state"], []
    for n in scanned:  # [:, :T-1] to the first scan, [:, T-1:] to the second
        outer_nodes.append(helper.make_node("Slice", [n, _P + "zero", _P + "T1", _P + "one"], [_P + n + "_head"]))
        outer_nodes.append(helper.make_node("Slice", [n, _P + "T1", _P + "T", _P + "one"], [_P + n + "_last"]))
        head_in.append(_P + n + "_head")
        last_in.append(_P + n + "_last")
    k = len(scanned)
    # ORT refuses a Scan over zero steps (T = 1): an If skips it.
    mid = helper.make_tensor_value_info(_P + "mid", TensorProto.FLOAT, None)
    skip = helper.make_graph([helper.make_node("Identity", ["state"], [_P + "mid"])], "no_steps", [], [mid])
    run = helper.make_graph(
        [helper.make_node("Scan", head_in, [_P + "mid"], body=head, num_scan_inputs=k, scan_input_axes=[1] * k)],
        "steps", [], [mid])
    outer_nodes.append(helper.make_node("Equal", [_P + "T1", _P + "zero"], [_P + "none"]))
    outer_nodes.append(helper.make_node("Squeeze", [_P + "none"], [_P + "none0"]))
    outer_nodes.append(helper.make_node("If", [_P + "none0"], [_P + "state_mid"], then_branch=skip, else_branch=run))
    outer_nodes.append(helper.make_node("Scan", [_P + "state_mid", *last_in], ["state_out"] + [_P + o for o in outputs],
                                        body=last, num_scan_inputs=k, scan_input_axes=[1] * k,
                                        scan_output_axes=[1] * len(outputs)))
    for o in outputs:  # (B, 1, H, Fo) -> (B, H, Fo)
        outer_nodes.append(helper.make_node("Squeeze", [_P + o, _P + "one"], [o]))

    def seq_input(n: str) -> Any:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(ins[n])
        if n != "state":  # (B, F) -> (B, T, F)
            dims = vi.type.tensor_type.shape.dim
            rest = [onnx.TensorShapeProto.Dimension() for _ in range(len(dims))]
            for a, b in zip(rest, dims, strict=True):
                a.CopyFrom(b)
            del dims[:]
            dims.add().CopyFrom(rest[0])
            dims.add().dim_param = "T"
            for d in rest[1:]:
                dims.add().CopyFrom(d)
        return vi

    graph = helper.make_graph(
        outer_nodes, (g.name or "step") + "_seq",
        [seq_input(n) for n in ["x", "state"] + (["tf"] if has_tf else [])],
        [outs[o] for o in outputs] + [outs["state_out"]],
        initializer=[*g.initializer, i64("zero", [0]), i64("one", [1]), i64("two", [2])],
    )
    model = helper.make_model(graph, opset_imports=list(step.opset_import), ir_version=step.ir_version)
    model.functions.extend(step.functions)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def ship_sequence(folder: Path) -> str:
    """Write ``folder/model.seq.onnx`` for the step model in ``folder`` and name it (and its
    SHA-256) in the manifest; returns the file name. Used by the trainer's export and the
    modelkit, so a model ships its sequence form and the service need not build it."""
    import orjson

    path = folder / "manifest.json"
    data = orjson.loads(path.read_bytes())
    seq = build_sequence((folder / data.get("onnx_file", "model.onnx")).read_bytes())
    (folder / SEQ_FILE).write_bytes(seq)
    data["sequence_file"] = SEQ_FILE
    data["sequence_sha256"] = hashlib.sha256(seq).hexdigest()
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    return SEQ_FILE


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tools.seqform",
                                description="Add the sequence form (model.seq.onnx) to step model folders.")
    p.add_argument("folders", nargs="+", type=Path, help="models/<name>/<version> folders of step models")
    args = p.parse_args(argv)
    for folder in args.folders:
        print(f"{folder}: wrote {ship_sequence(folder)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
