"""A contract-conforming ONNX step model that forecasts "the next value equals this one".

Why persistence: on NAB a better one-step forecast did not buy a better anomaly score (an
AR(8) fitted per file on the probationary rows and an EWMA both scored below it, see
docs/nab.md); what matters is how residuals are turned into scores. Serving it as a real
ONNX step model keeps the NAB run on the service's own runtime path: the same manifest
checks, onnxruntime session and batched ``step`` call as any trained model.

Graph: x [B, 1] (NaN = missing), state [B, 1] (the last seen value) ->
forecast [B, 1, 1], state_out [B, 1]; a missing value carries the previous one forward.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from service.runtime.manifest import SCHEMA_VERSION, sha256_file

NAME = "nab-persistence"
VERSION = "1"
OPSET = 17


def build_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, ["B", 1])
    forecast = helper.make_tensor_value_info("forecast", TensorProto.FLOAT, ["B", 1, 1])
    state_out = helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["B", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("IsNaN", ["x"], ["missing"]),  # (B, 1) bool
        helper.make_node("Where", ["missing", "state", "x"], ["state_out"]),  # (B, 1)
        helper.make_node("Unsqueeze", ["state_out", "axes"], ["forecast"]),  # (B, 1, 1): H = 1
    ]
    graph = helper.make_graph(nodes, NAME, [x, state], [forecast, state_out], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sensorcast")
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write_model(models_dir: Path, cadence_s: float = 300.0) -> Path:
    """Write ``<models_dir>/nab-persistence/1/{model.onnx, manifest.json}``; returns the folder."""
    folder = models_dir / NAME / VERSION
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(build_onnx())
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": NAME,
        "version": VERSION,
        "kind": "step",
        "cell": "linear",
        "layers": 0,
        "hidden": 0,
        "state_size": 1,
        "features": ["value"],
        "output_features": ["value"],
        "cadence_s": cadence_s,
        "horizon": 1,
        "warmup_steps": 1,
        "probabilistic": False,
        "default_threshold": 0.99,
        "data": {"source": "none: persistence has no parameters", "rows": 0},
        "metrics": {},
        "onnx_file": "model.onnx",
        "sha256": sha256_file(folder / "model.onnx"),
        "created_at": datetime.now(UTC).isoformat(),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder
