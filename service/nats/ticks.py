"""A partition's messages -> engine ticks in event time (service/nats/partition.py).

The reference is one engine tick per message, the clock its newest reading: a replay after a
failover, fetched in batches of up to ``nats.fetch_batch``, must give what the live run gave.
``Ticks`` groups messages into fewer ticks only where grouping cannot change a result.
"""

from __future__ import annotations

from service.records import Reading, StreamKey
from service.streams.engine import SILENT_CHECK_NS, Engine


class Ticks:
    """Messages -> engine ticks in event time, grouped only where grouping cannot change a result.

    One tick per message is the reference: each message moves the clock, and the engine closes
    the buckets the clock passed. Ticking several at once at the newest clock differs only when
    a later message brings a reading for a bucket an earlier message's clock would have closed:
    a reading not newer than the clock for a stream (key) with readings in this group or in an
    open bucket; or, for a device stream missing a quantity, one older than the clock less
    ``streams.close_grace_s`` (an incomplete bucket waits that long) of a device with readings
    in this group or an open bucket. Such a message starts a new tick; a device's quantities
    sent one by one with the same time stay together. A tick also ends where the clock passes
    a whole second: the silent watchdog looks then (Engine.use_event_time).
    """

    def __init__(self, engine: Engine, clock: int) -> None:
        self.engine = engine
        self.clock = clock
        self.grace_ns = round(engine.settings.streams.close_grace_s * 1e9)
        self.group: list[Reading] = []
        self.keys: set[StreamKey] = set()
        self.devices: set[str] = set()
        self._unfed: tuple[dict[StreamKey, int], set[str]] | None = None

    def _cuts(self, readings: list[Reading]) -> bool:
        behind = [r for r in readings if r.ts_ns <= self.clock]
        if not behind:
            return False
        if self._unfed is None:
            keys = self.engine.unfed()
            self._unfed = keys, {k.device for k in keys}
        open_keys, open_devices = self._unfed
        late = self.clock - self.grace_ns
        return any(r.stream in self.keys or r.stream in open_keys
                   or (r.ts_ns <= late and (r.stream.device in self.devices or r.stream.device in open_devices))
                   for r in behind)

    def add(self, readings: list[Reading], received_ns: int) -> int:
        """Add one message's readings; returns its newest reading's time."""
        if self.group and self._cuts(readings):
            self.flush()
        newest = max(r.ts_ns for r in readings)
        # Capped by the server's receive time: one device with its clock ahead cannot push the others'.
        clock = max(self.clock, min(newest, received_ns))
        crossed = clock // SILENT_CHECK_NS > self.clock // SILENT_CHECK_NS
        self.clock = clock
        self.group.extend(readings)
        self.keys.update(r.stream for r in readings)
        self.devices.update(r.stream.device for r in readings)
        if crossed:
            self.flush()
        return newest

    def flush(self) -> None:
        if self.group:
            self.engine.accept(self.group)
            self.engine.tick(now_ns=self.clock)
            self.group, self.keys, self.devices, self._unfed = [], set(), set(), None
