"""``sensorcast bench NAME``: benchmarks that print measured numbers.

Each benchmark lives in ``tools/bench/<name>.py`` with ``add_arguments`` and ``run``. The
accuracy benchmarks need data and (ETTh1) torch, so they are make targets beside these:
``make bench-ett``, ``make bench-nab``, ``make bench-tep``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib

# name -> what it measures (the listing of `sensorcast bench --help`)
BENCHES = {
    "ingest": "MQTT -> store readings/s and the write path's cost (make bench-ingest).",
    "inference": "Engine cost per stream-step at 1k-100k streams beside the bare ONNX call (make bench-inference).",
    "soak": "The whole stack under steady load for minutes: nothing lost, memory and latency (make soak).",
    "latency": "Publish -> alert and GET forecast latency at 10k readings/s (make bench-latency).",
    "scale": "Inference replicas on NATS JetStream: CPU per reading for 1-3 replicas, failover, catch-up "
             "(make bench-scale).",
    "faults": "Simulated faults of every kind: recall, delay, false alerts per 1,000 stream-hours (make bench-faults).",
}
ACCURACY = ("Accuracy benchmarks on data (make targets, not subcommands): bench-ett (ETTh1 forecasting), "
            "bench-nab (NAB anomaly score), bench-tep (Tennessee Eastman fault detection).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ACCURACY
    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, text in BENCHES.items():
        p = sub.add_parser(name, help=text, description=text)
        # A benchmark whose optional dependencies are missing still lists, without flags.
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(f"tools.bench.{name}").add_arguments(p)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"tools.bench.{args.bench}")
    return int(module.run(args) or 0)
