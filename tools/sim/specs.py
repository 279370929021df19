"""What the simulator simulates: quantities, streams, scheduled anomalies, the demo preset.

signals.py turns a ``StreamSpec`` into values; it re-exports everything here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from service.records import NS_PER_S
from tools.sim.inject import ANOMALY_KINDS, CLASSIC_KINDS


@dataclass(frozen=True, slots=True)
class Quantity:
    """What a sensor measures and how it behaves when nothing is wrong."""

    name: str
    unit: str
    base: float
    daily_amp: float  # half the peak-to-trough swing of the daily cycle
    weekly_amp: float  # weekday/weekend swing
    noise: float  # standard deviation of the measurement noise
    drift: float  # amplitude of the slow wander over days to weeks
    peak_hour: float  # hour of (signal) day at which the daily cycle peaks
    decimals: int = 2  # sensor resolution
    lower: float | None = None  # physical limits (humidity 0..100, power >= 0; a sensor's range)
    upper: float | None = None


QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        Quantity("temperature", "degC", 21.0, 3.0, 0.6, 0.12, 1.0, 15.0, 2, -40.0, 125.0),
        Quantity("humidity", "%", 48.0, 8.0, 1.5, 0.5, 3.0, 5.0, 1, 0.0, 100.0),
        Quantity("power", "kW", 3.0, 1.4, 0.8, 0.08, 0.3, 19.0, 3, 0.0, None),
        Quantity("pressure", "hPa", 1013.0, 0.6, 0.2, 0.15, 6.0, 10.0, 1, 300.0, 1100.0),
        Quantity("vibration", "mm/s", 2.2, 0.5, 0.3, 0.12, 0.2, 13.0, 2, 0.0, None),
        Quantity("co2", "ppm", 600.0, 180.0, 60.0, 12.0, 30.0, 11.0, 0, 350.0, None),
    )
}


@dataclass(frozen=True, slots=True)
class Scheduled:
    """An anomaly placed at an exact step (relative to the stream's start)."""

    step: int
    kind: str
    duration: int
    magnitude: float = 10.0  # noise sigmas (signed); a multiplier for variance_burst (see inject.py)

    def __post_init__(self) -> None:
        if self.kind not in ANOMALY_KINDS:
            raise ValueError(f"anomaly kind {self.kind!r} unknown (expected one of {ANOMALY_KINDS})")
        if self.duration < 1 or self.step < 0:
            raise ValueError(f"scheduled anomaly needs step >= 0 and duration >= 1, found {self}")


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One simulated stream: a device's quantity and how its readings are delivered."""

    device: str
    quantity: Quantity
    cadence_s: float = 60.0  # wall-clock seconds between readings
    compression: float = 1.0  # signal seconds per wall second (300: a day in 4.8 minutes)
    anomalies_per_1k: float = 1.0  # expected random anomalies per 1,000 steps
    kinds: tuple[str, ...] = CLASSIC_KINDS  # kinds random anomalies are drawn from
    anomaly_free_steps: int = 0  # no random anomalies before this step (warm-up)
    scheduled: tuple[Scheduled, ...] = ()
    gap_rate: float = 0.0  # probability per step that a gap (lost readings) starts
    gap_max_steps: int = 10  # gaps last 1..gap_max_steps steps
    duplicate_rate: float = 0.0  # probability a reading is delivered twice (QoS 1 redelivery)
    jitter: float = 0.0  # timestamp jitter as a fraction of the cadence (< 0.5 keeps order)

    def __post_init__(self) -> None:
        if self.cadence_s <= 0 or self.compression <= 0:
            raise ValueError(f"cadence_s and compression must be > 0, found {self.cadence_s}, {self.compression}")
        if not 0 <= self.jitter < 0.5:
            raise ValueError(f"jitter must be in [0, 0.5), found {self.jitter}")
        bad = [k for k in self.kinds if k not in ANOMALY_KINDS]
        if bad:
            raise ValueError(f"anomaly kinds {bad} unknown (expected some of {ANOMALY_KINDS})")

    @property
    def stream_id(self) -> str:
        return f"{self.device}/{self.quantity.name}"

    @property
    def cadence_ns(self) -> int:
        return round(self.cadence_s * NS_PER_S)

    def clean(self) -> StreamSpec:
        """The same stream delivered perfectly: no gaps, duplicates or jitter."""
        return replace(self, gap_rate=0.0, duplicate_rate=0.0, jitter=0.0)


def fleet(
    devices: int | Sequence[str],
    quantities: Sequence[str] = ("temperature", "humidity", "power"),
    **spec_fields: object,
) -> list[StreamSpec]:
    """Specs for every (device, quantity); ``devices`` is a count (dev01, ...) or names.

    Extra keyword arguments are ``StreamSpec`` fields shared by every stream.
    """
    names = [f"dev{i + 1:02d}" for i in range(devices)] if isinstance(devices, int) else list(devices)
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown:
        raise ValueError(f"unknown quantities {unknown} (expected some of {sorted(QUANTITIES)})")
    return [
        StreamSpec(device=d, quantity=QUANTITIES[q], **spec_fields)  # type: ignore[arg-type]
        for d in names
        for q in quantities
    ]


# ---- the demo preset: the shipped demo model is trained on exactly this ---------------

DEMO_CADENCE_S = 1.0  # one reading per second per stream
DEMO_COMPRESSION = 300.0  # a signal day passes in 288 s (288 steps)
DEMO_QUANTITIES: tuple[str, ...] = ("temperature", "humidity", "power")
DEMO_SEED = 5


def demo_fleet(
    devices: int = 3,
    quantities: Sequence[str] = DEMO_QUANTITIES,
    scheduled: Sequence[tuple[str, Scheduled]] = (),
    **spec_fields: object,
) -> list[StreamSpec]:
    """The demo's streams: 1 s cadence, a day every 288 steps, realistic delivery.

    ``scheduled`` pairs a stream id (``dev01/temperature``) with an anomaly placed at an
    exact step; random anomalies are off unless ``anomalies_per_1k`` is given.
    """
    fields: dict[str, object] = {
        "cadence_s": DEMO_CADENCE_S,
        "compression": DEMO_COMPRESSION,
        "anomalies_per_1k": 0.0,
        "duplicate_rate": 0.002,
        "jitter": 0.05,
    }
    fields.update(spec_fields)
    specs = fleet(devices, quantities, **fields)
    by_id: dict[str, list[Scheduled]] = {}
    for sid, s in scheduled:
        by_id.setdefault(sid, []).append(s)
    unknown = set(by_id) - {s.stream_id for s in specs}
    if unknown:
        raise ValueError(f"scheduled anomalies for unknown streams {sorted(unknown)}")
    return [replace(s, scheduled=tuple(by_id.get(s.stream_id, ()))) for s in specs]
