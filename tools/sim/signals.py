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
the boolean truth. The fault kinds are in inject.py. A ``silent`` step has no reading:
``grid`` gives NaN for it (its label says silent), ``delivered`` and ``iter_readings``
leave it out. Random anomalies are drawn from ``CLASSIC_KINDS`` unless a spec names
others, so seeds give the same series they gave before the newer kinds existed. Random anomalies start inside a block and end before it does, so
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
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from service.records import NS_PER_S
from tools.sim import inject

# Re-exported: callers import these from here.
from tools.sim.inject import ANOMALY_KINDS as ANOMALY_KINDS
from tools.sim.inject import CLASSIC_KINDS as CLASSIC_KINDS
from tools.sim.inject import KIND_DURATION, KIND_MAGNITUDE, UNSIGNED_KINDS
from tools.sim.inject import MAX_EVENT_STEPS as MAX_EVENT_STEPS
from tools.sim.inject import Event as Event
from tools.sim.specs import DEMO_CADENCE_S as DEMO_CADENCE_S
from tools.sim.specs import DEMO_COMPRESSION as DEMO_COMPRESSION
from tools.sim.specs import DEMO_QUANTITIES as DEMO_QUANTITIES
from tools.sim.specs import DEMO_SEED as DEMO_SEED
from tools.sim.specs import QUANTITIES as QUANTITIES
from tools.sim.specs import Quantity as Quantity
from tools.sim.specs import Scheduled as Scheduled
from tools.sim.specs import StreamSpec as StreamSpec
from tools.sim.specs import demo_fleet as demo_fleet
from tools.sim.specs import fleet as fleet

BLOCK = 2048  # steps per independently seeded block (~1.4 days at 1-minute cadence)
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
_AR_PHI = 0.6  # noise autocorrelation: real sensors are smoother than white noise

# Channels of the per-block seed: values, anomalies, delivery (see module docstring).
_VALUES, _EVENTS, _DELIVERY, _STREAM, _SCHEDULED = 0, 1, 2, 3, 4

OPERATING_MARGIN = 6.0  # noise sigmas between a stream's normal envelope and its operating limits




class Series(NamedTuple):
    """Delivered readings of one stream, in delivery order."""

    ts_ns: NDArray[np.int64]
    values: NDArray[np.float64]  # NaN on the grid for silent steps (never delivered)
    labels: NDArray[np.int8]  # 0 normal, k + 1 for ANOMALY_KINDS[k]


class Sample(NamedTuple):
    """One delivered reading; ``step`` is its index on the regular grid."""

    ts_ns: int
    value: float
    label: int
    step: int


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
            lo, hi = KIND_DURATION[kind]
            duration = int(r.integers(lo, hi + 1))
            start = b0 + int(r.integers(1, BLOCK - MAX_EVENT_STEPS))
            mlo, mhi = KIND_MAGNITUDE[kind]
            magnitude = float(r.uniform(mlo, mhi)) * (1.0 if r.random() < 0.5 else -1.0)
            if kind in UNSIGNED_KINDS:
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

    def _burst_noise(self, ev: Event) -> NDArray[np.float64]:
        # Extra noise drawn per event from its own seed, so it does not depend on which
        # block asks (scheduled events may span blocks).
        r = _rng(self.seed, self.spec.stream_id, _SCHEDULED, ev.start)
        return r.normal(0.0, 1.0, size=ev.end - ev.start)

    def _context(self) -> inject.Context:
        q = self.spec.quantity
        return inject.Context(
            sigma=self._params.sigma, decimals=q.decimals, physical=(q.lower, q.upper),
            operating=self.operating_limits(), clean_at=self._clean_at, burst_noise=self._burst_noise,
        )

    def operating_limits(self) -> tuple[float | None, float | None]:
        """(lower, upper) operating limits of this stream: its normal envelope (base, cycles
        and slow drift at their extremes) plus ``OPERATING_MARGIN`` noise sigmas, so clean
        readings stay inside. A side too close to a physical limit is None."""
        p, q = self._params, self.spec.quantity
        reach = p.amp * (q.daily_amp + q.weekly_amp) + q.drift + OPERATING_MARGIN * p.sigma
        lo, hi = round(p.base - reach, q.decimals), round(p.base + reach, q.decimals)
        lower = None if q.lower is not None and lo <= q.lower + p.sigma else lo
        upper = None if q.upper is not None and hi >= q.upper - p.sigma else hi
        return lower, upper

    @property
    def sigma(self) -> float:
        """This stream's noise standard deviation (magnitudes are in these units)."""
        return self._params.sigma

    def _block(self, block: int) -> _Block:
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        b0 = block * BLOCK
        clean = self._clean(block)
        values = clean.copy()
        labels = np.zeros(BLOCK, dtype=np.int8)
        events = self._random_events(block) + [
            Event(s.kind, s.step, s.step + s.duration, s.magnitude) for s in self.spec.scheduled
        ]
        unclipped = np.zeros(BLOCK, dtype=bool)
        ctx = self._context()
        for ev in events:
            s, e = max(ev.start, b0), min(ev.end, b0 + BLOCK)
            if s >= e:
                continue
            inject.apply(ev, values, clean, b0, ctx, unclipped)
            labels[s - b0 : e - b0] = ANOMALY_KINDS.index(ev.kind) + 1
        q = self.spec.quantity
        values = np.round(values, q.decimals)
        if q.lower is not None or q.upper is not None:
            # Out-of-range faults keep their value: the point is a reading beyond the limits.
            values = np.where(unclipped, values, np.clip(values, q.lower, q.upper))
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
        hits = sorted((e for e in found.values() if e.start < i1 and e.end > i0), key=lambda e: e.start)
        return [self._with_crossing(e) if e.kind == "degradation" else e for e in hits]

    def _with_crossing(self, ev: Event) -> Event:
        limit, direction = inject.pick_limit(ev.magnitude, *self.operating_limits())
        values = self.grid(ev.start, ev.end).values
        return replace(ev, crossing=inject.crossing(values, ev.start, limit, direction))

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
        values, labels = g.values[steps - i0], g.labels[steps - i0]
        sent = ~np.isnan(values)  # silent steps publish nothing
        return Series(ts[sent], values[sent], labels[sent])

    def iter_readings(self, start_step: int = 0) -> Iterator[Sample]:
        """Every delivered reading from ``start_step`` on, forever, block by block."""
        b = start_step // BLOCK
        while True:
            b0 = b * BLOCK
            steps, ts = self._delivered_block(b)
            blk = self._block(b)
            for step, t in zip(steps.tolist(), ts.tolist(), strict=True):
                k = step - b0
                if step >= start_step and blk.values[k] == blk.values[k]:  # NaN: silent, nothing sent
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




def label_name(code: int) -> str:
    """``0`` -> ``"normal"``, ``k + 1`` -> ``ANOMALY_KINDS[k]``."""
    return "normal" if code == 0 else ANOMALY_KINDS[code - 1]
