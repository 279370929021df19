"""``sensorcast config``: print every setting as a markdown table or a .env example."""

from __future__ import annotations

import argparse
import json

from pydantic import BaseModel

from service.config import Settings


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += _rows(ann, f"{prefix}{name.upper()}__")
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump()
        shown = json.dumps(default, default=str) if not isinstance(default, str) else default
        rows.append((f"{prefix}{name.upper()}", shown, field.description or ""))
    return rows


def settings_rows() -> list[tuple[str, str, str]]:
    return _rows(Settings, "SENSORCAST_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["markdown", "env"], default="markdown")


def run(args: argparse.Namespace) -> int:
    rows = settings_rows()
    if args.format == "markdown":
        print("| variable | default | meaning |\n|---|---|---|")
        for var, default, desc in rows:
            print(f"| `{var}` | `{default}` | {desc} |")
    else:
        for var, default, desc in rows:
            print(f"# {desc}\n# {var}={'' if default == 'null' else default}")
    return 0
