"""CPU per reading of one NATS writer (the ingest role with nats.url): ``python -m tools.bench.natswriter``.

Starts its own one-node nats-server (loopback, temp dir), publishes a backlog of one-reading
messages to JetStream, then starts a writer (``build_ingester``, in-memory store) and reports
the time and this process's CPU until every reading is stored and acknowledged. The
process's CPU is the writer's: fetch, decode, the writer thread and the acks.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from service.config import Settings
from service.metrics import Metrics
from service.nats import provision
from service.nats.link import NatsLink
from service.nats.outputs import names_for
from service.nats.writer_source import NatsReadingsSource
from service.store.memory import MemoryStore
from service.wiring import build_ingester
from tools.localservers import start_nats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--readings", type=int, default=50_000)
    ap.add_argument("--devices", type=int, default=1_000)
    ap.add_argument("--batch", type=int, default=1_000, help="nats.fetch_batch")
    args = ap.parse_args(argv)
    n = args.readings
    cluster = start_nats(1, partitions=4, mqtt=False)
    try:
        s = Settings()
        s.nats.url = cluster.url
        s.nats.fetch_batch = args.batch
        s.store.url = "memory://"
        s.store.spool_dir = Path(tempfile.mkdtemp(prefix="sc-natswriter-"))
        link = NatsLink(s.nats, "bench-publisher")
        link.start()
        link.run(provision.ensure_all(link.js, s.nats, names_for(s)), 90)
        base = (time.time_ns() // 10**9 - 3600) * 10**9

        async def publish() -> None:
            for k in range(0, n, 500):  # 500 acks in flight at a time
                await asyncio.gather(*(
                    link.js.publish(f"sensors.dev{i % args.devices}.temp",
                                    b'{"ts": %d, "value": %d}' % (base + i * 1000, i))
                    for i in range(k, min(n, k + 500))))

        t = time.monotonic()
        link.run(publish(), None)
        print(f"published {n:,} readings in {time.monotonic() - t:.1f} s")
        link.close()
        ing = build_ingester(s, MemoryStore(), Metrics())
        source = ing.source
        assert isinstance(source, NatsReadingsSource)
        cpu0, t0 = time.process_time(), time.monotonic()
        ing.start()
        while source.acked < n:
            time.sleep(0.005)
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        print(f"writer: {n:,} readings stored and acked in {wall:.2f} s ({n / wall:,.0f}/s); "
              f"CPU {cpu:.2f} s = {cpu / n * 1e6:.1f} us per reading (fetch batch {args.batch})")
        ing.stop()
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
