"""The ``sensorcast`` command: one subcommand per job, each in the module that does it.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; modules
are imported only when their command runs, so ``sensorcast serve`` never imports torch
and ``train``/``evaluate`` (in ``training/``) load it only when called. ``simulate``,
``replay``, ``demo`` and ``bench`` live in ``tools/``: this module sits at the top of the
import graph and is the only one in ``service/`` that names them.

Settings that are invalid or contradictory (a pydantic ``ValidationError``, a
``ConfigError``) end the command with one line naming the variable, the value and what is
expected, and exit code 2, not a traceback. ``SENSORCAST_*`` variables that are no
setting are warned about first, with the closest valid name.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("service.ingest_command", "Run the MQTT -> store ingester."),
    "import": ("service.import_command", "Write a CSV's history straight into the store (no broker), report what was refused."),
    "serve": ("service.serve", "Run ingest + inference + REST API in one process."),
    "backtest": ("service.backtest", "Replay history through the live forecast/alert path."),
    "simulate": ("tools.sim.command", "Publish simulated sensor streams to MQTT."),
    "replay": ("tools.sim.replay", "Publish a CSV file to MQTT at a chosen speed."),
    "demo": ("tools.demo", "Whole job on embedded defaults: broker, store, model, simulator."),
    "config": ("service.config_doc", "Print the settings (markdown table or .env example)."),
    "bench": ("tools.bench.command", "Benchmarks: ingest, inference, soak, latency, faults."),
    "train": ("training.command", "Train a model and export it to ONNX (needs the train extra)."),
    "evaluate": ("training.evaluate", "Evaluate a model next to naive baselines, with plots."),
    "calibrate": ("training.calibrate_command", "Recompute a model's anomaly calibration from history (no retraining)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sensorcast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Arguments are added lazily in main() for the chosen command only.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage / error and exits
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        print(f"sensorcast {name}: not available ({e.name} is missing)", file=sys.stderr)
        return 2
    cmd = argparse.ArgumentParser(prog=f"sensorcast {name}", description=help_text)
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    from service.config_doc import CONFIG_ERRORS, describe_config_error, unknown_variables

    for warning in unknown_variables():  # a typo would otherwise be silently ignored
        print(f"sensorcast {name}: warning: {warning}", file=sys.stderr)
    try:
        return int(module.run(args) or 0)
    except CONFIG_ERRORS as e:
        print(f"sensorcast {name}: refusing to start: {describe_config_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
