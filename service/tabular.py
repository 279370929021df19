"""CSV history for ``sensorcast train`` and ``sensorcast backtest``: one reader for both.

- Delimiter: the one given, else detected from the header (``,``, ``;``, tab or ``|``). In
  a file not separated by commas, decimal commas (``26,5``) are read as numbers.
- Time column: the one given, else the header's one column named like a time
  (``TIME_COLUMNS``, any case). Times are ISO 8601 (naive = UTC) or epoch s/ms/us/ns.
- Value columns: the ones given, else every other column except those named like a label
  (``LABEL_COLUMNS``): a labelled benchmark's answer column must never become a model
  input by default. Naming one explicitly still uses it.

Every refusal is a ``DataError``: one line naming what was found and what was expected.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.records import NS_PER_S

# The default time column, for train and backtest alike: the one column with one of
# these names (case-insensitive). Two of them (a date and a time column) is ambiguous.
TIME_COLUMNS = ("timestamp", "time", "datetime", "date")
# Columns that hold answers, not measurements (compared lower-case, '-' and ' ' as '_').
LABEL_COLUMNS = ("anomaly", "anomalies", "is_anomaly", "anomaly_label", "label", "labels", "changepoint",
                 "change_point", "fault", "is_fault", "outlier", "is_outlier", "attack")


class DataError(ValueError):
    """The data, or the settings that describe it, do not fit: a user's error, not a bug.

    The message is one line naming what was found and what was expected; the commands
    print it and exit with status 2, without a traceback.
    """


@dataclass(frozen=True, slots=True)
class Table:
    """A CSV file's header and the rows that have as many fields as the header."""

    path: Path
    delimiter: str
    header: list[str]
    body: list[list[str]]
    dropped: int  # non-empty rows with another number of fields than the header

    @property
    def decimal_comma(self) -> bool:
        # ';'-separated files usually come with decimal commas (26,5).
        return self.delimiter != ","


def parse_time(text: str) -> int:
    """ISO 8601 (naive = UTC) or epoch seconds / milliseconds / microseconds / nanoseconds -> ns."""
    s = text.strip()
    try:
        whole = int(s)  # exact: a float cannot hold an epoch in nanoseconds
    except ValueError:
        pass
    else:
        return whole * _epoch_scale(abs(whole))
    try:
        v = float(s)
    except ValueError:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)  # naive timestamps are read as UTC
        return int(dt.timestamp()) * NS_PER_S + dt.microsecond * 1000
    if not math.isfinite(v):
        raise ValueError(f"{s!r} is not a finite number")
    return round(v * _epoch_scale(abs(v)))


def _epoch_scale(size: float) -> int:
    # By magnitude: seconds below 1e11 (the year 5138), then ms, us and ns.
    return NS_PER_S if size < 1e11 else 1_000_000 if size < 1e14 else 1000 if size < 1e17 else 1


def is_label(name: str) -> bool:
    return name.strip().lower().replace("-", "_").replace(" ", "_") in LABEL_COLUMNS


def read_table(path: Path, delimiter: str = "", source_flag: str = "--source") -> Table:
    """Read the whole file: the configured delimiter, else the one sniffed from the header."""
    if not path.is_file():
        what = "a directory" if path.is_dir() else "nothing"
        raise DataError(f"{path}: found {what}; expected a CSV file with a header row (check {source_flag})")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            if not delimiter:
                first = fh.readline()
                fh.seek(0)
                try:
                    delimiter = csv.Sniffer().sniff(first, delimiters=",;\t|").delimiter
                except csv.Error:
                    delimiter = ","  # one column, or no candidate in the header: the default
            rows = [r for r in csv.reader(fh, delimiter=delimiter) if r]  # blank lines
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); expected a CSV text file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); expected a readable CSV file") from None
    if len(rows) < 3:
        raise DataError(f"{path}: found {len(rows)} non-empty lines; expected a header and at least two rows")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DataError(f"{path}: found one column {header[0][:60]!r} with delimiter {delimiter!r}; expected a time "
                        "column and value columns (set --delimiter)")
    body = [r for r in rows[1:] if len(r) == len(header)]
    if len(body) < 2:
        raise DataError(f"{path}: found {len(body)} rows with {len(header)} fields (as the header has); "
                        f"expected at least two (is the delimiter {delimiter!r} right? set --delimiter)")
    return Table(path, delimiter, header, body, len(rows) - 1 - len(body))


def column_index(table: Table, name: str, what: str, flag: str) -> int:
    n = table.header.count(name)
    if n == 0:
        raise DataError(f"{table.path}: {what} {name!r} not in the header; found columns {table.header} (set {flag})")
    if n > 1:
        raise DataError(f"{table.path}: {what} {name!r} is ambiguous: the header names it {n} times; "
                        "expected unique column names")
    return table.header.index(name)


def time_index(table: Table, name: str = "", flag: str = "--time-column") -> int:
    """The named time column, or with no name the one column named like a time."""
    if name:
        return column_index(table, name, "time column", flag)
    found = [i for i, h in enumerate(table.header) if h.lower() in TIME_COLUMNS]
    if len(found) != 1:
        what = "no time column" if not found else f"time columns {[table.header[i] for i in found]}"
        raise DataError(f"{table.path}: found {what} in {table.header}; expected one column named "
                        f"{', '.join(TIME_COLUMNS)} (any case), or set {flag}")
    return found[0]


def value_indices(table: Table, names: Sequence[str], skip: set[int], flag: str) -> tuple[list[str], list[int], list[str]]:
    """Columns, their indices, and the label-like columns left out (only when none is named)."""
    if names:
        idx = [column_index(table, c, "column", flag) for c in names]
        return list(names), idx, []
    rest = [i for i in range(len(table.header)) if i not in skip]
    labels = [table.header[i] for i in rest if is_label(table.header[i])]
    idx = [i for i in rest if not is_label(table.header[i])]
    for i in idx:
        column_index(table, table.header[i], "column", flag)  # a name given twice is ambiguous
    if not idx:
        raise DataError(f"{table.path}: found no value columns in {table.header}; expected at least one besides the "
                        f"time column{' and label columns' if labels else ''} (or name them with {flag})")
    return [table.header[i] for i in idx], idx, labels


def label_note(labels: Sequence[str], flag: str) -> str:
    return (f"columns {list(labels)} look like labels and are not used as features "
            f"(name them with {flag} to use them)")


def times(table: Table, index: int) -> npt.NDArray[np.int64]:
    out = np.empty(len(table.body), dtype=np.int64)
    for k, r in enumerate(table.body):
        try:
            out[k] = parse_time(r[index])
        except (ValueError, OverflowError):
            raise DataError(f"{table.path}: row {k + 2}: time {r[index]!r} in column {table.header[index]!r} is not "
                            "a time; expected ISO 8601 (2024-01-31T12:00:00Z) or epoch seconds/ms/us/ns") from None
    return out


def numbers(table: Table, indices: Sequence[int]) -> npt.NDArray[np.float64]:
    """(rows, columns) float64; an empty or garbled cell is missing (NaN), a column without any number an error."""
    comma = table.decimal_comma
    vals = np.array([[_float(r[i], comma) for i in indices] for r in table.body], dtype=np.float64)
    vals = vals.reshape(len(table.body), len(indices))
    for f, i in enumerate(indices):
        if np.isnan(vals[:, f]).all():
            example = next((r[i] for r in table.body if r[i].strip()), "")
            raise DataError(f"{table.path}: column {table.header[i]!r} has no number in {len(table.body)} rows "
                            f"(found e.g. {example!r}); expected numeric values")
    return vals


def _float(text: str, decimal_comma: bool) -> float:
    try:
        return float(text.replace(",", ".") if decimal_comma else text)
    except ValueError:
        return math.nan  # empty or garbled cell: missing, not a crash
