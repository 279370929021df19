"""``sensorcast replay FILE.csv``: publish a CSV's rows to MQTT at a chosen speed.

The CSV has a timestamp column (ISO 8601 like ``2016-07-01 00:00:00``, naive = UTC, or
epoch seconds/ms/ns) and value columns (ETTh1: ``date,HUFL,...,OT``; NAB:
``timestamp,value``). Each value column becomes the quantity of one stream of device
``--device`` (default: the file's stem): ``sensors/{device}/{column}``.

Timing: row times are kept as they are (default), or shifted so the first row is now
(``--rebase``); ``--speed`` sets how many seconds of data pass per wall second (0: as
fast as the broker takes them). With ``--rebase --scale-time`` the spacing is divided
by the speed too, so timestamps follow the wall clock (a live-looking stream).
``--backfill`` keeps the real spacing and shifts the times so the newest row lands at now:
the whole file is recent history the service takes (nothing ``too_old`` or
``too_far_future``) and its streams go on live from there.
Cells that are not numbers are counted and skipped; their row's other cells still go out.

The broker's acknowledgement is not the service's: with ``--api`` (default: the
local serve, http://127.0.0.1:<api.port>) replay reads the service's refusal counters (``GET /metrics``)
before and after and reports what it accepted, refused and dropped, by reason
(``servicecheck.py``); it says so when the service cannot be reached.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.config import Settings
from service.records import NS_PER_S
from tools.sim.mqttout import TS_FORMATS, MqttOut, PublishError, TsFormat, reading_payload
from tools.sim.servicecheck import FIX, ServiceCheck, Unreachable, summary

log = logging.getLogger("sensorcast.replay")


class CsvError(ValueError):
    """The CSV has no usable header or timestamp column."""


def parse_ts(text: str) -> int:
    """Epoch ns from ISO 8601 (naive = UTC) or an epoch number in s, ms, us or ns."""
    text = text.strip()
    try:
        x = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(x):
            raise ValueError(f"timestamp {text!r} is not finite")
        # Pick the unit by magnitude: 1e9 s is 2001; the same instant in ms is 1e12, etc.
        for limit, factor in ((1e11, 1e9), (1e14, 1e6), (1e17, 1e3)):
            if abs(x) < limit:
                return round(x * factor)
        return round(x)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    ts_ns: int
    values: tuple[tuple[str, float], ...]  # (column, value) of the numeric cells


@dataclass
class ReadCounts:
    rows: int = 0
    bad_rows: int = 0  # unparseable timestamp or wrong cell count
    bad_cells: int = 0  # not a finite number


def read_rows(
    path: Path, ts_column: str | None, columns: Sequence[str] | None, counts: ReadCounts
) -> tuple[list[str], Iterator[Row]]:
    """The value columns and an iterator over parsed rows (bad ones counted, skipped)."""
    f = path.open(newline="", encoding="utf-8")
    reader = csv.reader(f)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        f.close()
        raise CsvError(f"{path}: empty file, expected a header row") from None
    ts_col = ts_column or header[0]
    if ts_col not in header:
        f.close()
        raise CsvError(f"{path}: no timestamp column {ts_col!r} (columns: {header})")
    ts_idx = header.index(ts_col)
    wanted = list(columns) if columns else [h for h in header if h != ts_col]
    missing = [c for c in wanted if c not in header]
    if missing or not wanted:
        f.close()
        raise CsvError(f"{path}: value columns {missing or wanted} not found (columns: {header})")
    idx = [(c, header.index(c)) for c in wanted]

    def rows() -> Iterator[Row]:
        with f:
            for cells in reader:
                line = reader.line_num
                if not cells or all(not c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    counts.bad_rows += 1
                    log.warning("%s:%d: %d cells, expected %d; skipped", path, line, len(cells), len(header))
                    continue
                try:
                    ts = parse_ts(cells[ts_idx])
                except ValueError as e:
                    counts.bad_rows += 1
                    log.warning("%s:%d: bad timestamp %r (%s); skipped", path, line, cells[ts_idx], e)
                    continue
                vals: list[tuple[str, float]] = []
                for name, i in idx:
                    try:
                        v = float(cells[i])
                    except ValueError:
                        v = math.nan
                    if not math.isfinite(v):
                        counts.bad_cells += 1
                        continue
                    vals.append((name, v))
                counts.rows += 1
                yield Row(line, ts, tuple(vals))

    return wanted, rows()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="CSV: a timestamp column and value columns.")
    p.add_argument("--mqtt-url", help="Broker URL (default: SENSORCAST_MQTT__URL or settings).")
    p.add_argument("--client-id", default="sensorcast-replay", help="MQTT client id (default: sensorcast-replay).")
    p.add_argument("--topic", default="sensors/{device}/{quantity}", help="Topic template.")
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1, help="Publish QoS (default 1: acknowledged).")
    p.add_argument("--device", help="Device name (default: the file's stem).")
    p.add_argument("--timestamp-column", help="Default: the first column.")
    p.add_argument("--columns", help="Comma-separated value columns (default: all others).")
    p.add_argument("--speed", type=float, default=0.0, help="Data seconds per wall second (0: as fast as possible).")
    p.add_argument("--rebase", action="store_true", help="Shift timestamps so the first row is now.")
    p.add_argument("--backfill", action="store_true", help="Keep the real spacing and shift timestamps so the "
                   "newest row is now: history the service takes (old data would be too_old, --rebase puts "
                   "it in the future).")
    p.add_argument("--scale-time", action="store_true", help="With --rebase: divide spacing by --speed too.")
    p.add_argument("--start-row", type=int, default=0, help="Skip this many data rows first.")
    p.add_argument("--limit", type=int, default=0, help="Publish at most this many rows (0: all).")
    p.add_argument("--ts-format", choices=TS_FORMATS, default="ms", help="How the payload's ts is written "
                   "(default ms: epoch milliseconds).")
    p.add_argument("--api", help="The service's API, whose /metrics tell what it refused (default: "
                   "http://127.0.0.1:<SENSORCAST_API__PORT, 8080>, the local serve; '' to skip the check).")
    p.add_argument("--api-key-file", type=Path, help="File with a read-scope API key for --api.")
    p.add_argument("--drain-s", type=float, default=10.0, help="Wait at most this long after the last publish "
                   "for the service's counters to settle (default 10).")


@dataclass
class Replayer:
    out: MqttOut
    device: str
    topic: str = "sensors/{device}/{quantity}"
    speed: float = 0.0
    rebase_to_ns: int | None = None
    scale_time: bool = False
    ts_format: TsFormat = "ms"
    published: int = 0

    def run(self, rows: Iterator[Row], stop: threading.Event, limit: int = 0) -> int:
        """Publish rows, paced by ``speed``; returns the number of readings sent."""
        first_ts: int | None = None
        wall0 = time.monotonic()
        for row in itertools.islice(rows, limit) if limit > 0 else rows:
            if stop.is_set():
                break
            if first_ts is None:
                first_ts = row.ts_ns
            offset_ns = row.ts_ns - first_ts
            if self.speed > 0:
                due = wall0 + offset_ns / NS_PER_S / self.speed
                wait = due - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    break
            ts = row.ts_ns
            if self.rebase_to_ns is not None:
                scaled = offset_ns / self.speed if self.scale_time and self.speed > 0 else offset_ns
                ts = self.rebase_to_ns + int(scaled)
            for name, value in row.values:
                topic = self.topic.format(device=self.device, quantity=name)
                if self.out.send(topic, reading_payload(ts, value, self.ts_format)):
                    self.published += 1
        return self.published


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per /metrics scrape otherwise
    if args.speed < 0 or args.limit < 0 or args.start_row < 0:
        print("sensorcast replay: --speed, --limit and --start-row must be >= 0", file=sys.stderr)
        return 2
    if args.scale_time and not (args.rebase and args.speed > 0):
        print("sensorcast replay: --scale-time needs --rebase and --speed > 0", file=sys.stderr)
        return 2
    if args.backfill and args.rebase:
        print("sensorcast replay: --backfill (newest row at now) and --rebase (first row at now) exclude each other",
              file=sys.stderr)
        return 2
    settings = Settings()  # fields come from the environment
    if args.mqtt_url:
        settings.mqtt.url = args.mqtt_url
    counts = ReadCounts()
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    try:
        names, rows = read_rows(args.file, args.timestamp_column, columns, counts)
    except (OSError, CsvError) as e:
        print(f"sensorcast replay: {e}", file=sys.stderr)
        return 2
    for _ in range(args.start_row):
        if next(rows, None) is None:
            break
    rebase_to_ns = time.time_ns() if args.rebase else None
    if args.backfill:
        # The newest row's time must be known before the first publish: read them all.
        rows_list = list(itertools.islice(rows, args.limit) if args.limit > 0 else rows)
        if rows_list:
            first, newest = rows_list[0].ts_ns, max(r.ts_ns for r in rows_list)
            rebase_to_ns = time.time_ns() - (newest - first)
        rows = iter(rows_list)
    api = f"http://127.0.0.1:{settings.api.port}" if args.api is None else args.api
    check = ServiceCheck(api, args.api_key_file) if api else None
    if check is not None:
        try:
            check.start()
        except (Unreachable, OSError) as e:
            log.warning("the service at %s cannot be reached (%s): replay can only report what the broker "
                        "acknowledged, not what the service refused", api, e)
            check = None
    device = args.device or args.file.stem
    out = MqttOut(settings.mqtt, args.client_id, qos=args.qos)
    try:
        out.start()
    except PublishError as e:
        print(f"sensorcast replay: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    replayer = Replayer(
        out, device, topic=args.topic, speed=args.speed,
        rebase_to_ns=rebase_to_ns,
        scale_time=args.scale_time, ts_format=args.ts_format,
    )
    log.info("replaying %s as %s/{%s} to %s", args.file, device, ",".join(names), settings.mqtt.url)
    t0 = time.monotonic()
    try:
        sent = replayer.run(rows, stop, args.limit)
    finally:
        flushed = out.stop(flush_timeout_s=30.0)
    dt = time.monotonic() - t0
    log.info(
        "done: %d rows, %d readings in %.1f s (%.0f/s); skipped %d bad rows, %d bad cells; %s",
        counts.rows, sent, dt, sent / dt if dt > 0 else 0.0, counts.bad_rows, counts.bad_cells,
        "all acknowledged" if flushed else f"{out.pending} not acknowledged",
    )
    refused = 0
    if check is not None:
        try:
            text, refused, by_time = summary(check.settle(args.drain_s))
        except (Unreachable, OSError) as e:
            log.warning("the service at %s stopped answering (%s): what it refused is unknown", api, e)
        else:
            log.info("service %s: %s", api, text)
            if refused and by_time:
                log.warning("fix: %s", FIX)
    return 0 if flushed and out.stats.refused == 0 and refused == 0 else 1
