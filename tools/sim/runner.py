"""The simulator loop: take due readings from the fleet clock and publish them.

Used by ``sensorcast simulate`` (in the foreground) and ``sensorcast demo`` (in a
thread). Stops at ``until_ns`` (simulated timestamp) or when ``stop`` is set.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tools.sim.live import FleetClock, SimReading, TruthLog
from tools.sim.mqttout import MqttOut, TsFormat, reading_payload

log = logging.getLogger(__name__)

# Malformed payloads for --bad-rate: each exercises one refusal path of the ingester.
BAD_PAYLOADS: tuple[bytes, ...] = (
    b"not json at all",
    b'{"ts": "yesterday", "value": 1.0}',
    b'{"ts": 1700000000000, "value": "hot"}',
    b'{"value": NaN}',
    b"[1, 2, 3]",
)


@dataclass
class SimCounts:
    published: int = 0
    bad: int = 0
    anomalies: int = 0
    by_stream: dict[str, int] = field(default_factory=dict)


@dataclass
class SimRunner:
    clock: FleetClock
    out: MqttOut
    topic: str = "sensors/{device}/{quantity}"
    ts_format: TsFormat = "ms"
    bad_rate: float = 0.0
    truth: TruthLog | None = None
    on_reading: Callable[[SimReading], None] | None = None
    wall_ns: Callable[[], int] = time.time_ns
    counts: SimCounts = field(default_factory=SimCounts)
    _bad_rng: random.Random = field(default_factory=lambda: random.Random(0))

    def step(self, now_ns: int) -> int:
        """Publish everything due at ``now_ns``; returns how many readings went out."""
        batch = self.clock.due(now_ns)
        for r in batch:
            self.publish(r)
        return len(batch)

    def publish(self, r: SimReading) -> None:
        spec = r.spec
        topic = self.topic.format(device=spec.device, quantity=spec.quantity.name)
        if self.bad_rate > 0 and self._bad_rng.random() < self.bad_rate:
            bad = BAD_PAYLOADS[self._bad_rng.randrange(len(BAD_PAYLOADS))]
            if self.out.send(topic, bad):
                self.counts.bad += 1
        if self.out.send(topic, reading_payload(r.sample.ts_ns, r.sample.value, self.ts_format)):
            self.counts.published += 1
            self.counts.by_stream[spec.stream_id] = self.counts.by_stream.get(spec.stream_id, 0) + 1
        else:
            log.warning("publish of %s refused by the MQTT client", topic)
        if self.truth is not None:
            self.counts.anomalies += self.truth.observe(r)
        if self.on_reading is not None:
            self.on_reading(r)

    def run(self, until_ns: int | None, stop: threading.Event) -> SimCounts:
        """Publish paced by the wall clock until ``until_ns`` or ``stop``."""
        while not stop.is_set():
            now = self.wall_ns()
            limit = now if until_ns is None else min(now, until_ns)
            self.step(limit)
            if until_ns is not None and self.clock.next_ns > until_ns:
                break
            wait_s = (self.clock.next_ns - self.wall_ns()) / 1e9
            if wait_s > 0:
                stop.wait(min(wait_s, 0.25))
        return self.counts
