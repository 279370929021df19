"""Keep the store within bounds: ``store.retention_days`` and ``store.downsample_after_days``.

``Retention`` is an addon of the ingest process (``Pipeline.build``; the process that owns
the store's writes): started with the pipeline, watched by the watchdog, stopped with it.

SQLite: every ``store.prune_interval_s`` it deletes points older than ``retention_days``,
then folds raw readings older than ``downsample_after_days`` into hourly means
(``<table>_hourly``, which ``read_range`` merges back in), a bounded batch per
transaction with a pause between batches, so the writer waits at most one batch
(``BATCH_ROWS``). Freed pages go to SQLite's freelist and are reused by the next writes:
the file stops growing once pruning frees as much as ingest writes. No VACUUM: it rewrites
the whole file while holding the write lock and needs as much free disk as the file's size,
which is what a full gateway lacks; ``auto_vacuum`` only applies to files created with it.

InfluxDB 1.x: the server deletes old data itself. At start the database's default
retention policy gets ``DURATION`` ``retention_days`` (or ``downsample_after_days`` with
downsampling), created when there is none. Downsampling writes hourly means into a second
policy, ``sensorcast_hourly`` (``DURATION`` ``retention_days``, or ``INF``) with an INTO
query: at start over all the raw history, then every interval over the last complete
hours (a client-side continuous query, so a test can run it). ``read_range`` reads the
hourly policy before ``now - downsample_after_days`` and the raw one after it.

InfluxDB 2.x: the bucket's retention rule is set through the API when the token may; a
refusal is a WARNING. Downsampling needs an InfluxDB task there: a WARNING says so.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service.config import StoreSettings
from service.errors import StoreError
from service.store import influxql
from service.store.base import Store
from service.store.influx1 import HOURLY_RP, Influx1Store, InfluxQLStore
from service.store.influx2 import Influx2Store
from service.store.sqlite import HOUR_NS, SqliteStore

log = logging.getLogger(__name__)

BATCH_ROWS = 2000  # rows per transaction: the longest a writer waits behind the pruner
_DAY_S = 86_400.0
_CHUNK_NS = 7 * 24 * HOUR_NS  # one INTO query covers at most a week (stays within the HTTP timeout)


@dataclass
class PassReport:
    pruned: int = 0  # points deleted (raw readings and hourly means)
    folded: int = 0  # raw readings replaced by hourly means
    seconds: float = 0.0
    longest_batch_s: float = 0.0  # the longest the store's lock was held by one batch


def floor_hour(ns: int) -> int:
    return ns - ns % HOUR_NS


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M UTC")


class Retention:
    """Prunes and downsamples ``store`` per ``settings`` on a thread of its own (an addon)."""

    name = "store retention"

    def __init__(
        self, store: Store, settings: StoreSettings, *, batch_rows: int = BATCH_ROWS, pause_s: float = 0.002,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keep_s = None if settings.retention_days is None else settings.retention_days * _DAY_S
        self.after_s = None if settings.downsample_after_days is None else settings.downsample_after_days * _DAY_S
        self.interval_s = settings.prune_interval_s
        self.batch_rows = batch_rows
        self.pause_s = pause_s  # between batches, so a waiting writer gets the lock
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prepared = False
        self._hourly_done_ns: int | None = None  # InfluxDB: hours before this are averaged

    # -- the addon -------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="store-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as e:  # the store is down or refuses: the next pass tries again
                log.warning("store retention pass failed (next in %.0f s): %s", self.interval_s, e)
            self._stop.wait(self.interval_s)

    # -- one pass ----------------------------------------------------------------------------
    def run_once(self, now_ns: int | None = None) -> PassReport:
        now_ns = int(self._clock() * 1e9) if now_ns is None else now_ns
        if not self._prepared:
            self.prepare(now_ns)
            self._prepared = True
        t0 = time.perf_counter()
        rep = PassReport()
        if isinstance(self.store, SqliteStore):
            self._sqlite_pass(self.store, now_ns, rep)
        elif self.after_s is not None and getattr(self.store, "downsample_after_s", None) is not None:
            self._influx_downsample(now_ns)
        rep.seconds = time.perf_counter() - t0
        if rep.pruned or rep.folded:
            log.info("store retention: pruned %d points before %s, folded %d readings before %s into hourly means "
                     "(%.1f s, longest batch %.0f ms)", rep.pruned, self._cut(now_ns, self.keep_s), rep.folded,
                     self._cut(now_ns, self.after_s), rep.seconds, rep.longest_batch_s * 1e3)
        return rep

    @staticmethod
    def _cut(now_ns: int, age_s: float | None) -> str:
        return "-" if age_s is None else _when(now_ns - int(age_s * 1e9))

    def prepare(self, now_ns: int) -> None:
        """Once, before the first pass: the InfluxDB retention policy / bucket rule."""
        if isinstance(self.store, Influx2Store):
            set_bucket_retention(self.store, self.keep_s)
            if self.after_s is not None:
                log.warning("store.downsample_after_days: not done on InfluxDB 2.x/3.x (use an InfluxDB task); "
                            "readings are kept raw")
        elif isinstance(self.store, Influx1Store):
            if self.after_s is not None:  # average what the raw policy holds before it shrinks
                ensure_policy(self.store, HOURLY_RP, self.keep_s, default=False)
                self._influx_downsample(now_ns, since_ns=earliest(self.store))
            raw_s = self.after_s if self.after_s is not None else self.keep_s
            ensure_policy(self.store, None, raw_s, default=True)
        elif not isinstance(self.store, SqliteStore):
            log.info("store retention: nothing to do for %s", type(self.store).__name__)

    def _sqlite_pass(self, store: SqliteStore, now_ns: int, rep: PassReport) -> None:
        # Pruning first: folding readings into means that are deleted next is wasted work.
        jobs: list[tuple[Callable[[str, int, int], int], int, str]] = []
        if self.keep_s is not None:
            jobs.append((store.prune_batch, now_ns - int(self.keep_s * 1e9), "pruned"))
        if self.after_s is not None:
            jobs.append((store.downsample_batch, floor_hour(now_ns - int(self.after_s * 1e9)), "folded"))
        for batch, cutoff, counter in jobs:
            for stream in store.stream_keys():
                while not self._stop.is_set():
                    t = time.perf_counter()
                    n = batch(stream, cutoff, self.batch_rows)
                    rep.longest_batch_s = max(rep.longest_batch_s, time.perf_counter() - t)
                    setattr(rep, counter, getattr(rep, counter) + n)
                    if n < self.batch_rows:
                        break
                    time.sleep(self.pause_s)

    def _influx_downsample(self, now_ns: int, since_ns: int | None = None) -> None:
        assert isinstance(self.store, InfluxQLStore)
        end = floor_hour(now_ns)  # complete hours only
        # Two hours back: a reading a little late still lands in its hour's mean.
        start = since_ns if since_ns is not None else (self._hourly_done_ns or end) - 2 * HOUR_NS
        start = floor_hour(start)
        for a in range(start, end, _CHUNK_NS):
            into_hourly(self.store, a, min(a + _CHUNK_NS, end))
        self._hourly_done_ns = end


# -- InfluxDB 1.x ---------------------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    return "INF" if seconds is None else f"{max(60, math.ceil(seconds / 60))}m"


def _shard_duration(seconds: float | None) -> str:
    # InfluxDB's own choice for a new policy; ALTER keeps the old one unless told.
    if seconds is None or seconds > 183 * _DAY_S:
        return "7d"
    return "1d" if seconds >= 2 * _DAY_S else "1h"


def policies(store: Any) -> dict[str, tuple[str, bool]]:
    """name -> (duration, is default) of the database's retention policies."""
    body = store.query(f"SHOW RETENTION POLICIES ON {influxql.quote_ident(store.database)}")
    out: dict[str, tuple[str, bool]] = {}
    for result in body.get("results", []):
        if "error" in result:
            raise StoreError(f"influxdb: {result['error']}")
        for series in result.get("series", []):
            cols = series["columns"]
            for row in series.get("values") or []:
                r = dict(zip(cols, row, strict=False))
                out[str(r["name"])] = (str(r["duration"]), bool(r["default"]))
    return out


def _statement(store: Any, q: str) -> None:
    for result in store.query(q).get("results", []):
        if "error" in result:
            raise StoreError(f"influxdb refused {q!r}: {result['error']}")


def ensure_policy(store: Any, name: str | None, seconds: float | None, *, default: bool) -> None:
    """Create or alter a retention policy; ``name`` None: the database's default one (keeps its data)."""
    have = policies(store)
    if name is None:
        name = next((n for n, (_, d) in have.items() if d), "autogen")
    db = influxql.quote_ident(store.database)
    verb = "ALTER" if name in have else "CREATE"
    spec = f"DURATION {_duration(seconds)}" + ("" if verb == "ALTER" else " REPLICATION 1")
    spec += f" SHARD DURATION {_shard_duration(seconds)}" + (" DEFAULT" if default else "")
    _statement(store, f"{verb} RETENTION POLICY {influxql.quote_ident(name)} ON {db} {spec}")
    log.info("store retention: InfluxDB policy %s on %s: %s", name, store.database, spec)


def earliest(store: Any) -> int | None:
    """The oldest raw reading's time (ns) in the default policy, None when there is none."""
    body = store.query(f'SELECT first("value") FROM {influxql.quote_ident(store.measurement)}')
    for result in body.get("results", []):
        for series in result.get("series", []):
            for row in series.get("values") or []:
                return int(row[0])
    return None


def into_hourly(store: Any, start_ns: int, end_ns: int) -> None:
    """Hourly means of ``[start_ns, end_ns)`` into the hourly policy (tags kept; rerunning overwrites)."""
    db, m = influxql.quote_ident(store.database), influxql.quote_ident(store.measurement)
    _statement(
        store,
        f'SELECT mean("value") AS "value" INTO {db}.{influxql.quote_ident(HOURLY_RP)}.{m} FROM {m} '
        f"WHERE time >= {start_ns} AND time < {end_ns} GROUP BY time(1h), * fill(none)",
    )


# -- InfluxDB 2.x -----------------------------------------------------------------------------
def set_bucket_retention(store: Any, seconds: float | None) -> None:
    """The bucket's expiry rule; a token without the permission (or an older server) is a WARNING."""
    if seconds is None:
        return
    from influxdb_client.domain.bucket_retention_rules import BucketRetentionRules

    try:
        api = store.buckets_api()
        bucket = api.find_bucket_by_name(store.database)
        if bucket is None:
            raise StoreError(f"bucket {store.database!r} not found")
        rule = BucketRetentionRules(type="expire", every_seconds=max(3600, int(seconds)))  # type: ignore[no-untyped-call]
        bucket.retention_rules = [rule]
        api.update_bucket(bucket)
    except Exception as e:  # influxdb_client's ApiException (401/403/404), urllib3 errors
        log.warning("store.retention_days: could not set the retention of bucket %s (%s); the bucket keeps its "
                    "own retention. Give the token write access to buckets, or set it in InfluxDB.",
                    store.database, str(e).splitlines()[0][:200])
        return
    log.info("store retention: bucket %s expires data after %.0f s", store.database, seconds)
