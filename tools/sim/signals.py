"""Deterministic, seeded sensor signals with injected anomalies and ground-truth labels.

One stream is one device's quantity sampled every ``cadence_s`` seconds of wall-clock
time. Its value is a pure function of (seed, stream id, step index):

    value = base + daily cycle + weekly cycle + slow drift + AR(1) noise + anomalies

rounded to the sensor's resolution. ``compression`` maps wall-clock time to "signal
time" (signal seconds = wall seconds x compression), so with compression 300 a signal
day passes in 288 wall seconds: the demo shows daily cycles within minutes while the
timestamps stay real (the ingester refuses readings far in the future).

Randomness is drawn per block of ``BLOCK`` steps from ``SeedSequence([seed, crc32(id),
block, channel])``, with separate channels for values, anomalies and delivery, so

- ``generate(spec, start_ns, n, seed)`` and the live iterator ``iter_readings`` give the
  same readings for the same arguments, however the steps are chunked;
- switching delivery effects (gaps, duplicates, jitter) on or off never changes values.

Labels are int8 codes: 0 normal, ``k + 1`` for ``ANOMALY_KINDS[k]``; ``labels > 0`` is
the boolean truth. Random anomalies start inside a block and end before it does, so
blocks are independent; ``StreamSpec.scheduled`` places anomalies at exact steps (the
demo and tests use that to know when an alert is due).

>>> spec = StreamSpec("dev1", QUANTITIES["temperature"], cadence_s=60.0)
>>> ts, values, labels = generate(spec, start_ns=0, n_steps=3, seed=7)
>>> [int(t) for t in ts]
[0, 60000000000, 120000000000]
>>> bool((generate(spec, 0, 3, 7).values == values).all())
True
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from service.records import NS_PER_S

ANOMALY_KINDS: tuple[str, ...] = ("spike", "level_shift", "stuck", "variance_burst", "drift")
BLOCK = 2048  # steps per independently seeded block (~1.4 days at 1-minute cadence)
MAX_EVENT_STEPS = 160  # random anomalies last at most this long, so they fit in a block
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
_AR_PHI = 0.6  # noise autocorrelation: real sensors are smoother than white noise

# Channels of the per-block seed: values, anomalies, delivery (see module docstring).
_VALUES, _EVENTS, _DELIVERY, _STREAM, _SCHEDULED = 0, 1, 2, 3, 4

# (min, max) duration in steps and magnitude in noise sigmas for random anomalies.
_KIND_DURATION: dict[str, tuple[int, int]] = {
    "spike": (1, 3),
    "level_shift": (30, 120),
    "stuck": (20, 80),
    "variance_burst": (20, 60),
    "drift": (40, MAX_EVENT_STEPS),
}
_KIND_MAGNITUDE: dict[str, tuple[float, float]] = {
    "spike": (8.0, 15.0),
    "level_shift": (5.0, 10.0),
    "stuck": (0.0, 0.0),  # holds the last value; no magnitude
    "variance_burst": (4.0, 8.0),  # noise multiplier
    "drift": (8.0, 14.0),  # offset reached at the end of the ramp
}


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
    lower: float | None = None  # physical limits (humidity 0..100, power >= 0)
    upper: float | None = None


QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        Quantity("temperature", "degC", 21.0, 3.0, 0.6, 0.12, 1.0, 15.0, 2),
        Quantity("humidity", "%", 48.0, 8.0, 1.5, 0.5, 3.0, 5.0, 1, 0.0, 100.0),
        Quantity("power", "kW", 3.0, 1.4, 0.8, 0.08, 0.3, 19.0, 3, 0.0, None),
        Quantity("pressure", "hPa", 1013.0, 0.6, 0.2, 0.15, 6.0, 10.0, 1),
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
    magnitude: float = 10.0  # noise sigmas (signed); a multiplier for variance_burst

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
    kinds: tuple[str, ...] = ANOMALY_KINDS  # kinds random anomalies are drawn from
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


class Series(NamedTuple):
    """Delivered readings of one stream, in delivery order."""

    ts_ns: NDArray[np.int64]
    values: NDArray[np.float64]
    labels: NDArray[np.int8]  # 0 normal, k + 1 for ANOMALY_KINDS[k]


class Sample(NamedTuple):
    """One delivered reading; ``step`` is its index on the regular grid."""

    ts_ns: int
    value: float
    label: int
    step: int


@dataclass(frozen=True, slots=True)
class Event:
    """A labelled anomaly: grid steps ``[start, end)``."""

    kind: str
    start: int
    end: int
    magnitude: float


@dataclass(frozen=True, slots=True)
class _Block:
    values: NDArray[np.float64]  # (BLOCK,) final values on the grid
    labels: NDArray[np.int8]  # (BLOCK,)
    clean: NDArray[np.float64]  # (BLOCK,) values before anomalies


@dataclass(frozen=True, slots=True)
class _StreamParams:
    """Per-stream variation around the quantity's defaults, drawn once from the seed."""

    base: float
    amp: float  # multiplier on the cycle amplitudes
    phase_s: float  # shift of the daily peak in signal seconds
    sigma: float  # noise standard deviation
    drift_periods_s: tuple[float, ...]
    drift_phases: tuple[float, ...]
    harmonic_phase: float


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _rng(seed: int, stream_id: str, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, _crc(stream_id), *more]))


@dataclass
class StreamSignal:
    """The signal of one stream for one (start_ns, seed); computes blocks on demand."""

    spec: StreamSpec
    start_ns: int
    seed: int
    _cache: dict[int, _Block] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        q, sid = self.spec.quantity, self.spec.stream_id
        r = _rng(self.seed, sid, _STREAM)
        spread = abs(q.base) * 0.03 + q.daily_amp * 0.2
        self._params = _StreamParams(
            base=q.base + float(r.normal(0.0, spread)),
            amp=float(r.uniform(0.8, 1.2)),
            phase_s=float(r.uniform(-1.5, 1.5)) * 3600.0,
            sigma=q.noise * float(r.uniform(0.8, 1.25)),
            drift_periods_s=tuple(float(p) * DAY_S for p in r.uniform(3.0, 30.0, size=3)),
            drift_phases=tuple(float(p) for p in r.uniform(0.0, 2 * math.pi, size=3)),
            harmonic_phase=float(r.uniform(0.0, 2 * math.pi)),
        )

    # ---- the regular grid -------------------------------------------------------------

    def timestamps(self, i0: int, i1: int) -> NDArray[np.int64]:
        return self.start_ns + np.arange(i0, i1, dtype=np.int64) * self.spec.cadence_ns

    def _baseline(self, i0: int, i1: int) -> NDArray[np.float64]:
        """Cycles and drift without noise, steps [i0, i1)."""
        p, q = self._params, self.spec.quantity
        t = self.timestamps(i0, i1).astype(np.float64) / NS_PER_S * self.spec.compression  # signal s
        day = 2 * math.pi * (t - q.peak_hour * 3600.0 - p.phase_s) / DAY_S
        # A second harmonic makes the day asymmetric, like heating or occupancy curves.
        daily = (np.cos(day) + 0.3 * np.cos(2 * day + p.harmonic_phase)) / 1.3
        weekly = np.cos(2 * math.pi * (t - 3 * DAY_S) / WEEK_S)
        drift = sum(
            np.sin(2 * math.pi * t / period + phase)
            for period, phase in zip(p.drift_periods_s, p.drift_phases, strict=True)
        ) / 3.0
        out = p.base + p.amp * (q.daily_amp * daily + q.weekly_amp * weekly) + q.drift * drift
        return np.asarray(out, dtype=np.float64)

    def _noise(self, block: int) -> NDArray[np.float64]:
        r = _rng(self.seed, self.spec.stream_id, block, _VALUES)
        eps = r.normal(0.0, 1.0, size=BLOCK)
        ar = np.empty(BLOCK)
        ar[0] = eps[0]  # stationary start: AR(1) with unit marginal variance
        k = math.sqrt(1 - _AR_PHI**2)
        for i in range(1, BLOCK):
            ar[i] = _AR_PHI * ar[i - 1] + k * eps[i]
        return ar * self._params.sigma

    def _random_events(self, block: int) -> list[Event]:
        spec = self.spec
        if spec.anomalies_per_1k <= 0 or not spec.kinds:
            return []
        r = _rng(self.seed, spec.stream_id, block, _EVENTS)
        n = int(r.poisson(spec.anomalies_per_1k * BLOCK / 1000.0))
        b0 = block * BLOCK
        taken = [(s.step, s.step + s.duration) for s in spec.scheduled]
        events: list[Event] = []
        for _ in range(n):
            # Draw every parameter before deciding to keep the event, so the sequence of
            # draws (and hence every later event) does not depend on earlier rejections.
            kind = spec.kinds[int(r.integers(len(spec.kinds)))]
            lo, hi = _KIND_DURATION[kind]
            duration = int(r.integers(lo, hi + 1))
            start = b0 + int(r.integers(1, BLOCK - MAX_EVENT_STEPS))
            mlo, mhi = _KIND_MAGNITUDE[kind]
            magnitude = float(r.uniform(mlo, mhi)) * (1.0 if r.random() < 0.5 else -1.0)
            if kind in ("variance_burst", "stuck"):
                magnitude = abs(magnitude)
            end = start + duration
            if start < spec.anomaly_free_steps:
                continue
            # Keep a quiet margin around events so each one is separately detectable.
            margin = 10
            if any(start < e + margin and s < end + margin for s, e in taken):
                continue
            taken.append((start, end))
            events.append(Event(kind, start, end, magnitude))
        return events

    def _clean(self, block: int) -> NDArray[np.float64]:
        b0 = block * BLOCK
        return self._baseline(b0, b0 + BLOCK) + self._noise(block)

    def _clean_at(self, step: int) -> float:
        step = max(step, 0)
        return float(self._clean(step // BLOCK)[step % BLOCK])

    def _block(self, block: int) -> _Block:
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        b0 = block * BLOCK
        clean = self._clean(block)
        values = clean.copy()
        labels = np.zeros(BLOCK, dtype=np.int8)
        sigma = self._params.sigma
        events = self._random_events(block) + [
            Event(s.kind, s.step, s.step + s.duration, s.magnitude) for s in self.spec.scheduled
        ]
        for ev in events:
            s, e = max(ev.start, b0), min(ev.end, b0 + BLOCK)
            if s >= e:
                continue
            ls, le = s - b0, e - b0  # local slice
            steps = np.arange(s, e)
            if ev.kind in ("spike", "level_shift"):
                values[ls:le] += ev.magnitude * sigma
            elif ev.kind == "drift":
                # Ramp from near zero to the full offset over the event, then snap back.
                values[ls:le] += ev.magnitude * sigma * (steps - ev.start + 1) / (ev.end - ev.start)
            elif ev.kind == "stuck":
                prev = ev.start - 1
                held = clean[prev - b0] if b0 <= prev < b0 + BLOCK else self._clean_at(prev)
                values[ls:le] = held
            elif ev.kind == "variance_burst":
                # Extra noise drawn per event from its own seed, so it does not depend on
                # which block asks (scheduled events may span blocks).
                r = _rng(self.seed, self.spec.stream_id, _SCHEDULED, ev.start)
                extra = r.normal(0.0, 1.0, size=ev.end - ev.start)
                values[ls:le] += extra[s - ev.start : e - ev.start] * sigma * ev.magnitude
            labels[ls:le] = ANOMALY_KINDS.index(ev.kind) + 1
        q = self.spec.quantity
        values = np.round(values, q.decimals)
        if q.lower is not None or q.upper is not None:
            values = np.clip(values, q.lower, q.upper)
        result = _Block(values=values, labels=labels, clean=clean)
        if len(self._cache) > 8:
            self._cache.pop(next(iter(self._cache)))
        self._cache[block] = result
        return result

    def grid(self, i0: int, i1: int) -> Series:
        """Values and labels on the regular grid for steps [i0, i1) (no delivery effects)."""
        if i0 < 0 or i1 < i0:
            raise ValueError(f"need 0 <= i0 <= i1, found {i0}, {i1}")
        values = np.empty(i1 - i0, dtype=np.float64)
        labels = np.empty(i1 - i0, dtype=np.int8)
        i = i0
        while i < i1:
            b = i // BLOCK
            blk = self._block(b)
            j = min(i1, (b + 1) * BLOCK)
            values[i - i0 : j - i0] = blk.values[i - b * BLOCK : j - b * BLOCK]
            labels[i - i0 : j - i0] = blk.labels[i - b * BLOCK : j - b * BLOCK]
            i = j
        return Series(self.timestamps(i0, i1), values, labels)

    def events(self, i0: int, i1: int) -> list[Event]:
        """Every anomaly (random and scheduled) overlapping steps [i0, i1), by start."""
        found: dict[tuple[int, str], Event] = {}
        for b in range(i0 // BLOCK, (max(i1, i0 + 1) - 1) // BLOCK + 1):
            for ev in self._random_events(b):
                found[(ev.start, ev.kind)] = ev
        for s in self.spec.scheduled:
            found[(s.step, s.kind)] = Event(s.kind, s.step, s.step + s.duration, s.magnitude)
        return sorted((e for e in found.values() if e.start < i1 and e.end > i0), key=lambda e: e.start)

    # ---- delivery: what a broker would actually see ----------------------------------

    def _delivered_block(self, block: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """(steps, ts_ns) of the readings delivered in one block, in delivery order."""
        spec = self.spec
        b0 = block * BLOCK
        steps = np.arange(b0, b0 + BLOCK, dtype=np.int64)
        ts = self.timestamps(b0, b0 + BLOCK)
        r = _rng(self.seed, spec.stream_id, block, _DELIVERY)
        gap_start = r.random(BLOCK) < spec.gap_rate
        gap_len = r.integers(1, max(spec.gap_max_steps, 1) + 1, size=BLOCK)
        dup = r.random(BLOCK) < spec.duplicate_rate
        jit = r.uniform(-spec.jitter, spec.jitter, size=BLOCK) * spec.cadence_ns
        keep = np.ones(BLOCK, dtype=bool)
        for i in np.flatnonzero(gap_start):
            keep[i : i + int(gap_len[i])] = False
        ts = ts + jit.astype(np.int64)
        counts = keep.astype(np.int64) + (keep & dup)
        return np.repeat(steps, counts), np.repeat(ts, counts)

    def delivered(self, i0: int, i1: int) -> Series:
        """Readings of grid steps [i0, i1) as delivered: gaps dropped, duplicates repeated."""
        all_steps: list[NDArray[np.int64]] = []
        all_ts: list[NDArray[np.int64]] = []
        for b in range(i0 // BLOCK, (max(i1, i0 + 1) - 1) // BLOCK + 1):
            steps, ts = self._delivered_block(b)
            sel = (steps >= i0) & (steps < i1)
            all_steps.append(steps[sel])
            all_ts.append(ts[sel])
        steps = np.concatenate(all_steps) if all_steps else np.empty(0, np.int64)
        ts = np.concatenate(all_ts) if all_ts else np.empty(0, np.int64)
        g = self.grid(i0, i1)
        return Series(ts, g.values[steps - i0], g.labels[steps - i0])

    def iter_readings(self, start_step: int = 0) -> Iterator[Sample]:
        """Every delivered reading from ``start_step`` on, forever, block by block."""
        b = start_step // BLOCK
        while True:
            b0 = b * BLOCK
            steps, ts = self._delivered_block(b)
            blk = self._block(b)
            for step, t in zip(steps.tolist(), ts.tolist(), strict=True):
                if step >= start_step:
                    k = step - b0
                    yield Sample(int(t), float(blk.values[k]), int(blk.labels[k]), int(step))
            b += 1
            self._cache.pop(b - 2, None)


def generate(spec: StreamSpec, start_ns: int, n_steps: int, seed: int) -> Series:
    """Readings of grid steps [0, n_steps) of one stream, as delivered.

    With ``spec.clean()`` (the defaults) this is the regular grid: ``n_steps`` readings
    at ``start_ns + i * cadence``. Gaps drop readings, duplicates repeat them.
    """
    return StreamSignal(spec, start_ns, seed).delivered(0, n_steps)


def iter_readings(spec: StreamSpec, start_ns: int, seed: int, start_step: int = 0) -> Iterator[Sample]:
    """The live form of ``generate``: the same readings, one at a time, without end."""
    return StreamSignal(spec, start_ns, seed).iter_readings(start_step)


def events(spec: StreamSpec, start_ns: int, n_steps: int, seed: int) -> list[Event]:
    """The ground-truth anomalies of grid steps [0, n_steps), by start step."""
    return StreamSignal(spec, start_ns, seed).events(0, n_steps)


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


def label_name(code: int) -> str:
    """``0`` -> ``"normal"``, ``k + 1`` -> ``ANOMALY_KINDS[k]``."""
    return "normal" if code == 0 else ANOMALY_KINDS[code - 1]
