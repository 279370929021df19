"""Every ``sensorcast`` command, subcommand and flag explains itself in ``--help``."""

from __future__ import annotations

import argparse
import importlib

import pytest

from service.cli import COMMANDS


def _undocumented(name: str, parser: argparse.ArgumentParser) -> list[str]:
    missing: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest for a in action._choices_actions if a.help}
            missing += [f"{name} {sub} (subcommand)" for sub in action.choices if sub not in listed]
            for sub, subparser in action.choices.items():
                missing += _undocumented(f"{name} {sub}", subparser)
            continue
        if not action.help:
            missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return missing


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_has_help_text(name: str) -> None:
    module_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:  # train/evaluate without the train extra
        pytest.skip(f"{module_name} needs {e.name}")
    parser = argparse.ArgumentParser(prog=f"sensorcast {name}")
    module.add_arguments(parser)
    assert _undocumented(name, parser) == []
