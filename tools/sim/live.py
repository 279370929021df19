"""Live simulation: many streams merged in time order, paced to the wall clock.

``FleetClock`` turns specs into one time-ordered sequence of readings; ``due(now_ns)``
returns every reading whose timestamp has come (a backfill of history comes out at once,
the rest as time passes). ``TruthLog`` writes each anomaly to a CSV the first time one of
its readings goes out, so the ground truth on disk matches what was published.
"""

from __future__ import annotations

import csv
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from tools.sim.signals import Event, Sample, StreamSignal, StreamSpec, label_name


@dataclass(frozen=True, slots=True)
class SimReading:
    """One reading on its way out, with the stream it belongs to."""

    spec: StreamSpec
    sample: Sample


class FleetClock:
    """Readings of every stream in timestamp order, starting at ``start_ns``."""

    def __init__(self, specs: Sequence[StreamSpec], start_ns: int, seed: int) -> None:
        if not specs:
            raise ValueError("no streams to simulate")
        ids = [s.stream_id for s in specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate stream ids in {ids}")
        self.signals = [StreamSignal(s, start_ns, seed) for s in specs]
        self._iters: list[Iterator[Sample]] = [sig.iter_readings() for sig in self.signals]
        self._heap: list[tuple[int, int, Sample]] = []
        for i, it in enumerate(self._iters):
            first = next(it)
            self._heap.append((first.ts_ns, i, first))
        heapq.heapify(self._heap)

    @property
    def next_ns(self) -> int:
        """Timestamp of the next reading."""
        return self._heap[0][0]

    def pop(self) -> SimReading:
        _, i, sample = self._heap[0]
        nxt = next(self._iters[i])
        heapq.heapreplace(self._heap, (nxt.ts_ns, i, nxt))
        return SimReading(self.signals[i].spec, sample)

    def due(self, now_ns: int, limit: int = 10_000) -> list[SimReading]:
        """Every reading with a timestamp <= ``now_ns`` (at most ``limit`` per call)."""
        out: list[SimReading] = []
        while self._heap[0][0] <= now_ns and len(out) < limit:
            out.append(self.pop())
        return out


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TruthLog:
    """Ground-truth anomalies as CSV: stream, kind, start/end (grid steps and times)."""

    HEADER = ("stream", "kind", "start_step", "end_step", "start", "end", "magnitude")

    def __init__(self, path: Path | None, clock: FleetClock) -> None:
        self._signals = {sig.spec.stream_id: sig for sig in clock.signals}
        self._seen: set[tuple[str, int]] = set()
        self._last_step: dict[str, int] = {}  # per stream, the latest step observed
        self._file: IO[str] | None = None
        self.rows: list[tuple[str, str, int, int, str, str, float]] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(self.HEADER)
            self._file.flush()

    def observe(self, r: SimReading) -> int:
        """Record the anomalies this reading reveals, once each; returns how many are new.

        A labelled reading reveals its own anomaly. A silent anomaly sends no reading: the
        first reading after a jump in steps reveals the silent ones in between.
        """
        sid, step = r.spec.stream_id, r.sample.step
        sig = self._signals[sid]
        last = self._last_step.get(sid, -1)
        self._last_step[sid] = max(last, step)
        new = 0
        if step > last + 1:  # usually consecutive: look for silent anomalies only after a jump
            for ev in sig.events(last + 1, step):
                if ev.kind == "silent" and ev.end <= step:
                    new += self._record(sid, sig, ev)
        if r.sample.label != 0:
            for ev in sig.events(step, step + 1):
                if ev.kind == label_name(r.sample.label):
                    new += self._record(sid, sig, ev)
                    break
        return new

    def _record(self, sid: str, sig: StreamSignal, ev: Event) -> int:
        if (sid, ev.start) in self._seen:
            return 0
        self._seen.add((sid, ev.start))
        cadence_ns = sig.spec.cadence_ns
        row = (
            sid, ev.kind, ev.start, ev.end,
            _iso(sig.start_ns + ev.start * cadence_ns), _iso(sig.start_ns + ev.end * cadence_ns),
            round(ev.magnitude, 3),
        )
        self.rows.append(row)
        if self._file is not None:
            self._writer.writerow(row)
            self._file.flush()
        return 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
