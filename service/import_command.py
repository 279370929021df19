"""``sensorcast import FILE.csv``: history straight into the configured store, no broker.

The CSV is read as ``train`` and ``backtest`` read it (``service/tabular.py``): the
delimiter detected or ``--delimiter``, decimal commas in files not separated by commas,
the time column ``timestamp``/``time``/``datetime``/``date`` or ``--time-column``, and
every other column a quantity of device ``--device`` (default: the file's stem), except
columns named like a label. A header ``temp [°C]`` or ``temp (degC)`` is quantity
``temp`` with unit ``°C`` / ``degC``; ``--unit`` sets units (one for all, or ``col=unit``).
Configured units go into the stream settings (``StreamRules.unit``), beside the stream's
other rules.

History may be as old as it is: ``ingest.max_past_s`` guards live data, not an import.
What cannot be history is refused and counted by reason, never written:

- rows: ``bad_timestamp`` (not a time), ``duplicate_timestamp`` (the same time as an
  earlier row), ``out_of_order`` (earlier than a row before it), ``future`` (further
  ahead of the clock than ``ingest.max_future_s``), ``wrong_field_count``;
- cells: ``empty``, ``non_numeric``, ``not_finite`` (NaN, inf).

Writes go through ``Store.write`` in batches of ``ingest.batch_size``; the store
overwrites a point of the same stream and time, so importing a file twice stores it once.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from service.config import Settings, StreamRules
from service.errors import StoreError
from service.records import NS_PER_S, Reading, StreamKey
from service.store import open_store
from service.store.lineproto import series_key_bytes, stream_problem
from service.store.streamsettings import SettingsStoreError, StreamSettings
from service.tabular import DataError, Table, parse_time, read_table, time_index, value_indices

ROW_REASONS = ("bad_timestamp", "duplicate_timestamp", "out_of_order", "future", "wrong_field_count")
CELL_REASONS = ("empty", "non_numeric", "not_finite")
# "temp [°C]", "temp (degC)": a name, then a short unit in brackets at the end.
_HEADER_UNIT = re.compile(r"^(?P<name>.*?\S)\s*[\[(]\s*(?P<unit>[^\[\]()]{1,32}?)\s*[\])]$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="CSV file: a time column and value columns, with a header row.")
    p.add_argument("--device", help="device of every stream (default: the file's stem)")
    p.add_argument("--time-column", default="", help="time column (default: the one column named timestamp, "
                   "time, datetime or date, any case)")
    p.add_argument("--columns", help="comma-separated value columns, by header or by name without its unit "
                   "(default: all but the time column and columns named like a label)")
    p.add_argument("--delimiter", default="", help="one character (default: detected from the header: ',', ';', "
                   "tab or '|')")
    p.add_argument("--unit", action="append", default=[], metavar="UNIT|COL=UNIT",
                   help="unit of every column, or of one column (repeatable); default: from headers like "
                   "'temp [°C]' or 'temp (degC)'")
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="extra tag of every stream (repeatable)")
    p.add_argument("--store-url", help="store URL (default: SENSORCAST_STORE__URL or the settings' default)")


@dataclass
class Column:
    header: str
    index: int
    key: StreamKey
    unit: str | None
    unit_given: bool  # from --unit (overrides a configured unit), not from the header
    first_ns: int | None = None
    last_ns: int | None = None
    stored: int = 0


@dataclass
class ImportReport:
    rows: int = 0
    stored: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    columns: list[Column] = field(default_factory=list)


def split_unit(header: str) -> tuple[str, str | None]:
    """``temp [°C]`` -> (``temp``, ``°C``); a header without a bracketed unit -> (header, None)."""
    m = _HEADER_UNIT.match(header.strip())
    return (m["name"], m["unit"]) if m else (header.strip(), None)


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise DataError(f"{flag} {item!r}: expected key=value")
        out.append((k.strip(), v.strip()))
    return out


def plan(table: Table, args: argparse.Namespace, settings: Settings) -> tuple[int, list[Column], list[str]]:
    """The time column's index, the columns to import with their stream keys and units, and notes."""
    ti = time_index(table, args.time_column)
    bare = {h: split_unit(h)[0] for h in table.header}
    wanted = []
    for name in ([c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else []):
        by_name = [h for h in table.header if bare[h] == name]
        wanted.append(name if name in table.header or len(by_name) != 1 else by_name[0])
    names, indices, labels = value_indices(table, wanted, {ti}, "--columns")
    tags = tuple(sorted(_pairs(args.tag, "--tag")))
    if len({k for k, _ in tags}) != len(tags):
        raise DataError(f"--tag: a key given twice in {args.tag}; expected each key once")
    if len(tags) > settings.ingest.max_tags:
        raise DataError(f"--tag: {len(tags)} tags; expected at most ingest.max_tags = {settings.ingest.max_tags}")
    every_unit = [u.strip() for u in args.unit if "=" not in u]
    per_column = dict(_pairs([u for u in args.unit if "=" in u], "--unit"))
    if len(every_unit) > 1:
        raise DataError(f"--unit: {len(every_unit)} units for every column {every_unit}; expected one, or col=unit")
    device = args.device or table.path.stem
    columns = []
    for header, index in zip(names, indices, strict=True):
        quantity, header_unit = split_unit(header)
        given = per_column.pop(header, None) or per_column.pop(quantity, None) or (every_unit[0] if every_unit else None)
        unit = given or header_unit
        if unit is not None and not 1 <= len(unit) <= 32:
            raise DataError(f"unit {unit!r} of column {header!r}: expected 1 to 32 characters")
        key = StreamKey(device, quantity, tags)
        problem = stream_problem(key)
        if problem is None and series_key_bytes(key) > settings.ingest.max_series_key_bytes:
            problem = f"its series key is longer than ingest.max_series_key_bytes = {settings.ingest.max_series_key_bytes}"
        if problem:
            raise DataError(f"column {header!r}: stream {key.id!r} cannot be stored: {problem} (set --device or "
                            "--columns)")
        columns.append(Column(header, index, key, unit, given is not None))
    if per_column:
        raise DataError(f"--unit names columns {sorted(per_column)} that are not imported; found {names}")
    if len({c.key for c in columns}) != len(columns):
        raise DataError(f"columns {names} give the same quantity twice once their units are taken off; "
                        "expected one column per quantity (set --columns)")
    note = f"columns {labels} look like labels and are not imported (name them with --columns to import them)"
    return ti, columns, [note] if labels else []


def _cell(text: str, decimal_comma: bool) -> float | str:
    """The cell's number, or the reason it is refused."""
    s = text.strip()
    if not s:
        return "empty"
    try:
        v = float(s.replace(",", ".") if decimal_comma else s)
    except ValueError:
        return "non_numeric"
    return v if math.isfinite(v) else "not_finite"


def import_rows(table: Table, ti: int, columns: list[Column], write: Callable[[Sequence[Reading]], None],
                batch_size: int, max_future_s: float) -> ImportReport:
    """Parse, check and write every row; returns what was stored and refused."""
    rep = ImportReport(rows=len(table.body) + table.dropped, columns=columns)
    rep.refused["wrong_field_count"] += table.dropped
    limit_ns = time.time_ns() + round(max_future_s * NS_PER_S)
    comma = table.decimal_comma
    prev: int | None = None
    batch: list[Reading] = []
    for row in table.body:
        try:
            ts = parse_time(row[ti])
        except (ValueError, OverflowError):
            rep.refused["bad_timestamp"] += 1
            continue
        if ts > limit_ns:
            rep.refused["future"] += 1
            continue
        if prev is not None and ts <= prev:
            rep.refused["duplicate_timestamp" if ts == prev else "out_of_order"] += 1
            continue
        prev = ts
        for c in columns:
            v = _cell(row[c.index], comma)
            if isinstance(v, str):
                rep.refused[v] += 1
                continue
            batch.append(Reading(c.key, ts, v))
            c.first_ns = ts if c.first_ns is None else c.first_ns
            c.last_ns = ts
            c.stored += 1
        if len(batch) >= batch_size:
            write(batch)
            rep.stored += len(batch)
            batch = []
    if batch:
        write(batch)
        rep.stored += len(batch)
    return rep


def save_units(path: Path, columns: list[Column]) -> list[str]:
    """Store the columns' units as their streams' ``StreamRules.unit``, keeping the other rules."""
    lines: list[str] = []
    todo = [c for c in columns if c.unit is not None and c.stored]
    if not todo:
        return lines
    settings = StreamSettings(path)
    try:
        for c in todo:
            sid = c.key.id
            old = settings.get(sid)
            if old is not None and old.unit and old.unit != c.unit and not c.unit_given:
                lines.append(f"unit of {sid}: kept the configured {old.unit!r} (the header says {c.unit!r}; "
                             "--unit overrides)")
                continue
            if old is None or old.unit != c.unit:
                rules = old.model_copy(update={"unit": c.unit}) if old else StreamRules(unit=c.unit)
                settings.put(sid, rules)
    finally:
        settings.close()
    return lines


def _iso(ns: int | None) -> str:
    return "-" if ns is None else datetime.fromtimestamp(ns / NS_PER_S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _refused_text(refused: Counter[str]) -> str:
    parts = [f"{refused[r]} rows {r}" for r in ROW_REASONS if refused[r]]
    parts += [f"{refused[r]} cells {r}" for r in CELL_REASONS if refused[r]]
    return ", ".join(parts) or "nothing"


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.store_url:
        settings.store.url = args.store_url
    try:
        if len(args.delimiter) > 1:
            raise DataError(f"--delimiter {args.delimiter!r}: expected one character")
        table = read_table(args.file, args.delimiter, "FILE")
        ti, columns, notes = plan(table, args, settings)
    except DataError as e:
        print(f"sensorcast import: {e}", file=sys.stderr)
        return 2
    where = settings.store.url.split("@")[-1]  # never a password in the output
    try:
        store = open_store(settings.store)
    except StoreError as e:
        print(f"sensorcast import: cannot open the store {where}: {e}", file=sys.stderr)
        return 1
    try:
        rep = import_rows(table, ti, columns, store.write, settings.ingest.batch_size, settings.ingest.max_future_s)
    except StoreError as e:
        stored = sum(c.stored for c in columns)
        print(f"sensorcast import: the store {where} refused a write: {e} (up to {stored} readings may be stored "
              "already; importing again overwrites them, never doubles them)", file=sys.stderr)
        return 1
    finally:
        store.close()
    for note in notes:
        print(f"import: {note}")
    print(f"import: read {rep.rows} rows from {args.file} (delimiter {table.delimiter!r}, time column "
          f"{table.header[ti]!r}); stored {rep.stored} readings in {where}; refused {_refused_text(rep.refused)}")
    if rep.refused["out_of_order"] > rep.rows // 2:
        print("import: most rows are earlier than a row before them: sort the file by time (oldest first)")
    for c in columns:
        unit = f" [{c.unit}]" if c.unit else ""
        print(f"  {c.key.id}{unit}: {c.stored} readings, {_iso(c.first_ns)} .. {_iso(c.last_ns)}")
    keep = settings.store.retention_days
    if keep is not None:
        cut = time.time_ns() - round(keep * 86_400 * NS_PER_S)
        if any(c.first_ns is not None and c.first_ns < cut for c in columns):
            print(f"import: warning: readings before {_iso(cut)} are older than store.retention_days = {keep:g}: "
                  "the next prune deletes them (train on them first, or raise the retention)")
    try:
        for line in save_units(settings.streams.settings_path, columns):
            print(f"import: {line}")
    except SettingsStoreError as e:
        print(f"sensorcast import: the readings are stored, but not their units: {e}", file=sys.stderr)
        return 1
    if rep.stored == 0:
        print("sensorcast import: nothing stored", file=sys.stderr)
        return 1
    ids = shlex.quote(",".join(c.key.id for c in columns if c.stored))  # tags hold ';'

    # --from-store reads the store the settings name: the one written here unless --store-url said otherwise.
    source = f"--source {settings.store.url}" if args.store_url and "@" not in args.store_url else "--from-store"
    print(f"next: sensorcast train {source} --streams {ids} --name {columns[0].key.device}")
    return 0
