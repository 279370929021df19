"""``sensorcast bench NAME``: benchmarks that print measured numbers.

Each benchmark lives in ``tools/bench/<name>.py`` with ``add_arguments`` and ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib

BENCHES = ("ingest", "inference", "soak", "latency", "faults")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True)
    for name in BENCHES:
        p = sub.add_parser(name)
        # A benchmark whose optional dependencies are missing still lists, without flags.
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(f"tools.bench.{name}").add_arguments(p)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"tools.bench.{args.bench}")
    return int(module.run(args) or 0)
