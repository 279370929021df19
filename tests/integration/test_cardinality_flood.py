"""A cardinality flood: 1,000,000 distinct topics through the real decoder and engine.

The shipped ACL lets the shared device user write ``sensors/#``, so random topics are
what a misbehaving or hostile device can send at message rate. With ``streams.max_streams``
at 1,000 the engine keeps at most 1,000 streams: every flood topic is decoded, each one
either becomes a stream (while there is room, and again when idle flood streams are
evicted) or is refused and counted, the 100 known streams forecast every bucket
throughout, and the process's memory stays bounded (RSS read from /proc/self/statm).

In-process (decoder -> ``Engine.accept`` -> ``Engine.tick``), no broker: what is measured
is the engine's and decoder's memory, not a broker's queue. The readings would still be
stored: the store path is the ingester's and does not depend on the engine
(tests/unit/test_engine_cardinality.py::test_refused_streams_are_still_stored).
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest

from service.config import IngestSettings
from service.ingest.decode import Decoder
from service.metrics import Metrics
from service.records import Reading
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine
from tests.modelkit import KitSpec, settings_for, write_model

pytestmark = pytest.mark.slow

C = 60 * 10**9
T0 = 1_700_000_000 // 60 * C
FLOOD = 1_000_000
PER_TICK = 10_000  # flood messages per bucket: 100 buckets (100 min of engine clock)
KNOWN = 100
MAX_STREAMS = 1_000
# Measured on the 2-core box: +57 MB at peak (the bounded negative route cache, the
# decoder's bounded caches, 1,000 rows, a 10k-message batch in flight, allocator slack),
# in 23 s. The same engine without limits (max_streams=0) grew by 1.5 KB per topic
# (100k topics: +150 MB), i.e. ~1.5 GB for this flood.
RSS_GROWTH_BOUND_MB = 250


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_million_topics_keep_memory_bounded_and_known_streams_forecasting(tmp_path: Path) -> None:
    write_model(tmp_path / "models", KitSpec(name="m", layers=1, hidden=16, warmup_steps=4, mean=(20.0,), std=(3.0,)))
    settings = settings_for(tmp_path, tmp_path / "models", streams={"max_streams": MAX_STREAMS})
    metrics = Metrics()
    eng = Engine(settings, ModelRegistry(tmp_path / "models"), None, metrics)
    decoder = Decoder(IngestSettings())  # type: ignore[call-arg]
    known = [f"sensors/known{i:03d}/temp" for i in range(KNOWN)]

    def decode(topics: list[str], i: int) -> list[Reading]:
        out: list[Reading] = []
        for n, topic in enumerate(topics):
            res = decoder.decode(topic, b"%.3f" % (20 + (n + i) % 7 * 0.5), T0 + i * C)
            assert not res.refusals, (topic, res.refusals)
            out += res.readings
        return out

    for i in range(6):  # the known streams warm up
        eng.accept(decode(known, i))
        eng.tick(T0 + i * C)
    assert all(s.status == "ok" for s in eng.streams())
    gc.collect()
    rss0, t0 = rss_mb(), time.perf_counter()
    peak = rss0
    made_at: dict[str, list[int]] = {f"known{i:03d}/temp": [] for i in range(KNOWN)}
    for b in range(FLOOD // PER_TICK):
        i = 6 + b
        flood = [f"sensors/f{b:03d}x{j:05d}/q{j % 5}" for j in range(PER_TICK)]
        eng.accept(decode(known + flood, i))
        eng.tick(T0 + i * C)
        for sid, seen in made_at.items():
            fc = eng.forecast(sid)
            seen.append(-1 if fc is None else fc.ts_ns)
        peak = max(peak, rss_mb())
    elapsed = time.perf_counter() - t0
    last = 6 + FLOOD // PER_TICK - 1

    # Known streams forecast every bucket, the last one included.
    for sid, seen in made_at.items():
        assert seen == [T0 + (6 + b) * C for b in range(FLOOD // PER_TICK)], sid
    # Never more than max_streams; every flood topic became a stream or was refused.
    streams = eng.streams()
    assert KNOWN < len(streams) <= MAX_STREAMS
    refused = metrics.streams_refused.labels("max_streams")._value.get()
    evicted = sum(metrics.streams_evicted.labels(o)._value.get() for o in ("saved", "dropped"))
    admitted = len(streams) - KNOWN + evicted
    assert refused + admitted == FLOOD
    assert refused >= FLOOD - 10 * MAX_STREAMS  # admissions only while there was room
    assert len(eng._slots.routes) <= 65_536 + 2 * MAX_STREAMS
    growth = peak - rss0
    print(f"\nflood: {FLOOD} topics in {elapsed:.1f} s ({FLOOD / elapsed:,.0f}/s incl. decoding), "
          f"RSS {rss0:.0f} -> peak {peak:.0f} MB (+{growth:.0f}), refused {refused:.0f}, admitted {admitted:.0f}, "
          f"evicted {evicted:.0f}, last bucket {last}")
    assert growth < RSS_GROWTH_BOUND_MB
