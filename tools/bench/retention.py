"""How long a SQLite prune (or downsampling) of a large table holds writers up.

    python -m tools.bench.retention --streams 20 --rows 50000 [--downsample] [--db PATH]

Fills a store with ``streams x rows`` readings at 1 s, half of them older than the
retention, then runs one ``Retention`` pass while a writer thread writes a batch of 100
readings every 10 ms, as the ingester would. Prints one JSON line: rows pruned (or folded),
the pass's duration, the longest batch (the longest the store's lock was held), and the
writer's batch latency during the pass (median, p99, max) against a baseline without it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from service.config import StoreSettings
from service.records import Reading, StreamKey
from service.store.retention import Retention
from service.store.sqlite import SqliteStore

DAY_NS = 86_400 * 10**9


def _writer(store: SqliteStore, stop: threading.Event, lat: list[float], t0_ns: int) -> None:
    key, i = StreamKey("live", "value"), 0
    while not stop.is_set():
        batch = [Reading(key, t0_ns + (i + j) * 10**6, 1.0) for j in range(100)]
        i += 100
        t = time.perf_counter()
        store.write(batch)
        lat.append(time.perf_counter() - t)
        time.sleep(0.01)


def _summary(lat: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(lat, n=100) if len(lat) > 1 else [0.0] * 99
    return {"n": len(lat), "median_ms": round(statistics.median(lat) * 1e3, 2), "p99_ms": round(qs[98] * 1e3, 2),
            "max_ms": round(max(lat) * 1e3, 2)}


def run(db: Path, streams: int, rows: int, downsample: bool) -> dict[str, object]:
    store = SqliteStore(db)
    now = time.time_ns()
    old_start = now - 100 * DAY_NS  # half the rows 100 days back, half in the last day
    for s in range(streams):
        key = StreamKey(f"dev{s}", "value")
        for base in (old_start, now - DAY_NS):
            for i in range(0, rows // 2, 20_000):
                store.write([Reading(key, base + k * 10**9, float(k % 97)) for k in range(i, min(i + 20_000, rows // 2))])
    size_before = db.stat().st_size
    settings = StoreSettings(url="sqlite:///x", **({"downsample_after_days": 30} if downsample else {"retention_days": 90}))  # type: ignore[arg-type]

    def measured(work: bool) -> tuple[list[float], dict[str, object]]:
        lat: list[float] = []
        stop = threading.Event()
        th = threading.Thread(target=_writer, args=(store, stop, lat, now + (2 if work else 1) * DAY_NS))
        th.start()
        out: dict[str, object] = {}
        if work:
            rep = Retention(store, settings).run_once(now)
            out = {"pruned": rep.pruned, "folded": rep.folded, "pass_s": round(rep.seconds, 2),
                   "longest_batch_ms": round(rep.longest_batch_s * 1e3, 1)}
        else:
            time.sleep(3)
        stop.set()
        th.join()
        return lat, out

    base_lat, _ = measured(False)
    lat, out = measured(True)
    store.close()
    return {"streams": streams, "rows": streams * rows, "db_mb": round(size_before / 1e6, 1), **out,
            "writer_baseline": _summary(base_lat), "writer_during_pass": _summary(lat)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=20, help="Streams in the table.")
    p.add_argument("--rows", type=int, default=50_000, help="Readings per stream (half older than the retention).")
    p.add_argument("--downsample", action="store_true", help="Fold into hourly means instead of deleting.")
    p.add_argument("--db", type=Path, help="SQLite file to create (default: a temporary one).")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(a.db or Path(tmp) / "bench.db", a.streams, a.rows, a.downsample)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
