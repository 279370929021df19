"""The data-quality stage: stuck, silent, out-of-range and rate-of-change alerts per row.

It runs on the raw readings before the model step (``assess``) and from the engine's
wall-clock watchdog (``silent``). Each check fires and resolves on its own, at most one
firing alert per (row, check); a multivariate row tracks which input feature fired.

- ``out_of_range``: a reading outside the row's [min, max] fires at once; it resolves
  after ``RECOVER_STEPS`` readings back in range.
- ``rate_of_change``: |delta| / dt above ``max_rate`` (units per second) against the
  previous reading and against the last valid one (``quality.rate_exceeded``); fires at
  once, resolves after ``RECOVER_STEPS`` normal readings. A reading already out of range
  is not judged again for its rate (one fault, one alert).
- ``stuck``: no change beyond ``stuck_tolerance`` for ``stuck_steps`` readings and longer
  than 3x the longest run the stream showed while it was not stuck (``stuck_learned``,
  learned online and saved: quantised sensors repeat readings). Judged only once the
  stream showed 10 x ``stuck_steps`` readings and changed at least once (``stuck_limit``).
  Onset: the run's first reading; resolves on the first real change.
- ``silent``: ``silent()`` fires when no reading came for ``silent_after_s``; the next
  reading resolves it (in ``assess``).

Values that violate out_of_range or rate_of_change come back in ``invalid``: the engine
feeds them to the model as missing, so the state never sees them. ``hold``: a quality
alert is firing on the row, so the engine holds its ML alerts back. Missing readings
(NaN) never violate a check, never count as normal, and neither break nor extend a run.

Limits come from ``configure`` (a stream's ``ResolvedRules``); rows never configured use
the stage's defaults. They are not saved: the engine re-applies a stream's rules when it
(re)loads it; state and the learned runs are saved (checkpoint keys ``quality.*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.anomaly import quality as q
from service.arrays import F32, F64, I64, Col, IntArr, RowArrays
from service.config import AnomalySettings
from service.records import NS_PER_S
from service.streams.rules import ResolvedRules, resolve

Bool = npt.NDArray[np.bool_]

CHECKS = ("out_of_range", "rate_of_change", "stuck", "silent")
OOR, ROC, STUCK, SILENT = range(len(CHECKS))
_NAN = float("nan")
_R = q.RECOVER_STEPS
_INT_MAX = np.iinfo(np.int64).max
_SEEN_CAP = 1 << 40  # readings counted for the stuck warm-up; capped, never wraps


def _g(v: float) -> str:
    return f"{float(v):.6g}"


@dataclass(frozen=True, slots=True)
class Flag:
    """One data-quality alert event."""

    row: int
    check: str  # stuck | silent | out_of_range | rate_of_change
    feature: int  # input feature index (-1: the whole stream, e.g. silent)
    value: float  # the offending reading (fired) or the reading that resolved it; NaN for silent
    ts_ns: int  # step time (silent: the watchdog's now)
    onset_ns: int  # when the condition began (stuck: the run's first reading)
    detail: dict[str, str] = field(default_factory=dict)  # limit, rate, run_steps, silent_s, reason...


@dataclass(frozen=True, slots=True)
class QualityVerdicts:
    fired: list[Flag]
    resolved: list[Flag]
    invalid: Bool  # (B, F) values kept out of the model state (out_of_range, rate_of_change)
    hold: Bool  # (B,) a data-quality alert is firing on the row after this step


class QualityStage(RowArrays):
    prefix = "quality."
    # Limits (configure); reset keeps them, clear restores the defaults; not saved.
    lo = Col(np.float64, ("n_in",), _NAN, reset=False, saved=False)  # (N, F) min, NaN: none
    hi = Col(np.float64, ("n_in",), _NAN, reset=False, saved=False)  # (N, F) max
    max_rate = Col(np.float64, ("n_in",), _NAN, reset=False, saved=False)  # (N, F) units/s
    stuck_steps = Col(np.int64, ("n_in",), 0, reset=False, saved=False)  # (N, F) 0: off
    stuck_tol = Col(np.float64, ("n_in",), 0.0, reset=False, saved=False)  # (N, F)
    silent_after_s = Col(np.float64, fill=0.0, reset=False, saved=False)  # 0: off
    stuck_first = Col(np.int64, ("n_in",), 0, reset=False, saved=False)  # stuck_steps, int64 max: off
    checks_on = Col(np.uint8, fill=0, reset=False, saved=False)  # bit c: check c has a limit on the row
    # Readings: the last one (rate) and the last valid one (rate; never an invalid value).
    prev = Col(np.float64, ("n_in",), _NAN)
    prev_ts = Col(np.int64, ("n_in",), 0)
    valid = Col(np.float64, ("n_in",), _NAN)
    valid_ts = Col(np.int64, ("n_in",), 0)
    # Consecutive normal readings since the last violation (< RECOVER_STEPS: active).
    oor_ok = Col(np.int64, ("n_in",), _R)
    roc_ok = Col(np.int64, ("n_in",), _R)
    # The current run of unchanged readings: its first reading, steps without change since.
    run_ref = Col(np.float64, ("n_in",), _NAN)
    run_start = Col(np.int64, ("n_in",), 0)
    run_steps = Col(np.int64, ("n_in",), 0)
    stuck_on = Col(np.bool_, ("n_in",), False)
    # The longest run seen while not stuck; -1: never changed. Kept when a stream starts over.
    stuck_learned = Col(np.int64, ("n_in",), -1, reset=False)
    stuck_seen = Col(np.int64, ("n_in",), 0, reset=False)  # readings seen (capped): the warm-up
    # Per (row, check): firing, on which feature, since when.
    firing = Col(np.bool_, (len(CHECKS),), False)
    fire_feature = Col(np.int64, (len(CHECKS),), -1)
    fire_onset = Col(np.int64, (len(CHECKS),), 0)
    silent_since = Col(np.int64, fill=-1)  # the last reading before a silent alert

    def __init__(self, n_in: int, cadence_ns: int, defaults: ResolvedRules | None = None) -> None:
        """``defaults``: the rules of rows never configured; None: ``resolve`` of the
        default ``AnomalySettings`` at this cadence."""
        if n_in < 1 or cadence_ns <= 0:
            raise ValueError(f"n_in >= 1 and cadence_ns > 0 expected, found {n_in}, {cadence_ns}")
        self.n_in = n_in
        self.cadence_ns = cadence_ns
        if defaults is None:
            names = [f"f{i}" for i in range(n_in)]
            defaults = resolve(AnomalySettings(), None, None, names, cadence_ns / NS_PER_S)
        self._check(defaults)
        self.defaults = defaults
        super().__init__({"n_in": n_in})

    # -- rows ----------------------------------------------------------------------------
    def grow(self, capacity: int) -> None:
        old = self.capacity
        super().grow(capacity)
        if self.capacity > old:
            self._apply_defaults(np.arange(old, self.capacity, dtype=np.intp))

    def clear(self, rows: IntArr) -> None:
        super().clear(rows)
        self._apply_defaults(rows)

    def drop(self, rows: IntArr) -> None:
        """Forget what is firing, and the conditions behind it, without emitting."""
        self.firing[rows] = False
        self.fire_feature[rows] = -1
        self.oor_ok[rows] = _R
        self.roc_ok[rows] = _R
        self.stuck_on[rows] = False
        self.run_ref[rows] = np.nan  # the run starts over, or it would fire again at once
        self.run_steps[rows] = 0
        self.silent_since[rows] = -1

    def configure(self, rows: IntArr, rules: Sequence[ResolvedRules]) -> None:
        """Each row's limits from its stream's rules (NaN: no limit; stuck_steps 0: off)."""
        if len(rules) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(rules)} rules")
        if not rules:
            return
        for r in rules:
            self._check(r)
        self._write(
            rows, np.stack([r.min for r in rules]), np.stack([r.max for r in rules]),
            np.stack([r.max_rate for r in rules]), np.stack([r.stuck_steps for r in rules]),
            np.stack([r.stuck_tolerance for r in rules]), np.array([r.silent_after_s for r in rules], np.float64),
        )

    def _check(self, r: ResolvedRules) -> None:
        for name in ("min", "max", "max_rate", "stuck_steps", "stuck_tolerance"):
            shape = np.shape(getattr(r, name))
            if shape != (self.n_in,):
                raise ValueError(f"rules.{name} has shape {shape}, the model has {self.n_in} input features")

    def _apply_defaults(self, rows: IntArr) -> None:
        d = self.defaults
        self._write(rows, d.min, d.max, d.max_rate, d.stuck_steps, d.stuck_tolerance, np.float64(d.silent_after_s))

    def _write(
        self, rows: IntArr, lo: F64, hi: F64, rate: F64, steps: I64, tol: F64, silent: F64 | np.float64
    ) -> None:
        self.lo[rows] = lo
        self.hi[rows] = hi
        self.max_rate[rows] = rate
        self.stuck_steps[rows] = np.maximum(steps, 0)
        self.stuck_tol[rows] = np.nan_to_num(tol, nan=0.0)
        self.silent_after_s[rows] = np.maximum(silent, 0.0)
        st = self.stuck_steps[rows]
        self.stuck_first[rows] = np.where(st > 0, st, _INT_MAX)
        bits = (
            (np.isfinite(self.lo[rows]) | np.isfinite(self.hi[rows])).any(axis=1) * (1 << OOR)
            + np.isfinite(self.max_rate[rows]).any(axis=1) * (1 << ROC)
            + (st > 0).any(axis=1) * (1 << STUCK)
        )
        self.checks_on[rows] = bits
        # A stuck check turned off lets its alert resolve at the row's next reading.
        self.stuck_on[rows] &= self.stuck_steps[rows] > 0

    # -- reads ---------------------------------------------------------------------------
    def holding(self, rows: IntArr) -> Bool:
        """(B,) a data-quality alert is firing on the row."""
        out: Bool = np.logical_or.reduce(self.firing[rows], axis=1)
        return out

    def firing_checks(self, rows: IntArr) -> list[tuple[int, str]]:
        """(row, check) currently firing."""
        i, c = np.nonzero(self.firing[rows])
        return [(int(rows[a]), CHECKS[b]) for a, b in zip(i, c, strict=True)]

    # -- the stage -----------------------------------------------------------------------
    def assess(self, rows: IntArr, ts: I64, x: F32 | F64) -> QualityVerdicts:
        """Judge one raw reading per row (``rows`` distinct; ``x`` (B, F), NaN missing)."""
        rows = np.asarray(rows, np.intp)
        ts = np.asarray(ts, np.int64)
        x = np.asarray(x, np.float64)
        seen = ~np.isnan(x)
        ts2 = np.broadcast_to(ts[:, None], x.shape)
        resolved: list[Flag] = []
        firing = self.firing[rows]
        onset = self.fire_onset[rows]

        # silent: the first reading after the silence resolves it.
        back = np.flatnonzero(firing[:, SILENT] & seen.any(axis=1))
        for b in back.tolist():
            quiet = max(0, int(ts[b]) - int(self.silent_since[rows[b]])) / NS_PER_S
            detail = {"reason": "reading", "silent_s": _g(quiet)}
            resolved.append(Flag(int(rows[b]), "silent", -1, _NAN, int(ts[b]), int(onset[b, SILENT]), detail))
        firing[back, SILENT] = False
        self.silent_since[rows[back]] = -1

        # A check no row of the batch has on (and none is firing) is skipped: most streams
        # run with the defaults, which set no limits.
        on = np.bitwise_or.reduce(self.checks_on[rows]) if len(rows) else 0
        no = np.zeros(x.shape, np.bool_)
        oor, roc, stuck, oor_active, roc_active = no, no, no, no, no
        info: dict[int, tuple[F64, ...]] = {}
        if on & (1 << OOR) or firing[:, OOR].any():
            oor, oor_active, info[OOR] = self._range(rows, x, seen)
        if on & (1 << ROC) or firing[:, ROC].any():
            # Only the rate check reads the last (valid) readings; left stale while it is
            # off, they give low rates (long dt) when it comes on: no false alert.
            roc, roc_active, info[ROC] = self._rate(rows, ts, x, seen, oor)
            good = seen & ~(oor | roc)
            self.prev[rows] = np.where(seen, x, self.prev[rows])
            self.prev_ts[rows] = np.where(seen, ts2, self.prev_ts[rows])
            self.valid[rows] = np.where(good, x, self.valid[rows])
            self.valid_ts[rows] = np.where(good, ts2, self.valid_ts[rows])
        if on & (1 << STUCK):
            stuck, info[STUCK] = self._stuck(rows, ts2, x, seen)

        fired: list[Flag] = []
        invalid = oor | roc
        feature = self.fire_feature[rows]
        active = ((OOR, oor_active), (ROC, roc_active), (STUCK, stuck))
        for c, act in active:
            now = act.any(axis=1)
            fire = np.flatnonzero(~firing[:, c] & now)
            done = np.flatnonzero(firing[:, c] & ~now)
            if fire.size:
                f = q.first(act[fire])
                firing[fire, c] = True
                feature[fire, c] = f
                onset[fire, c] = info[STUCK][1][fire, f] if c == STUCK else ts[fire]
                for i, j in zip(fire.tolist(), f.tolist(), strict=True):
                    detail = self._detail(c, info[c], i, j)
                    fired.append(Flag(int(rows[i]), CHECKS[c], j, float(x[i, j]), int(ts[i]), int(onset[i, c]), detail))
            if done.size:
                firing[done, c] = False
                reason = "changed" if c == STUCK else f"{_R} normal readings"
                for i in done.tolist():
                    j = int(feature[i, c])
                    v = float(x[i, j]) if j >= 0 else _NAN
                    resolved.append(Flag(int(rows[i]), CHECKS[c], j, v, int(ts[i]), int(onset[i, c]), {"reason": reason}))
        self.firing[rows] = firing
        self.fire_feature[rows] = feature
        self.fire_onset[rows] = onset
        return QualityVerdicts(fired, resolved, invalid, np.logical_or.reduce(firing, axis=1))

    def _range(self, rows: IntArr, x: F64, seen: Bool) -> tuple[Bool, Bool, tuple[F64, ...]]:
        """(out of range, active, (lo, hi, above)) and the recovery counts updated."""
        lo, hi = self.lo[rows], self.hi[rows]
        below, above = q.out_of_range(x, lo, hi)
        oor = below | above
        ok = q.recover(self.oor_ok[rows], oor, seen)
        self.oor_ok[rows] = ok
        return oor, ok < _R, (lo, hi, above.astype(np.float64))

    def _rate(self, rows: IntArr, ts: I64, x: F64, seen: Bool, oor: Bool) -> tuple[Bool, Bool, tuple[F64, ...]]:
        """(too fast, active, (rate, max_rate, previous)); an out-of-range value is not judged again."""
        prev, max_rate = self.prev[rows], self.max_rate[rows]
        roc, rate = q.rate_exceeded(
            x, ts, prev, self.prev_ts[rows], self.valid[rows], self.valid_ts[rows], max_rate
        )
        roc &= ~oor
        ok = q.recover(self.roc_ok[rows], roc, seen)
        self.roc_ok[rows] = ok
        return roc, ok < _R, (rate, max_rate, prev)

    def _stuck(self, rows: IntArr, ts2: I64, x: F64, seen: Bool) -> tuple[Bool, tuple[F64, ...]]:
        """(stuck, (steps, run start, limit, learned)): runs of readings within tolerance of
        the run's first one; the limit is worked out only where a run is long enough."""
        ref, steps, on = self.run_ref[rows], self.run_steps[rows], self.stuck_on[rows]
        learned = self.stuck_learned[rows]
        count = np.minimum(self.stuck_seen[rows] + seen, _SEEN_CAP)
        cont, changed = q.run_step(x, ref, self.stuck_tol[rows])
        ended = changed & ~on & ~np.isnan(ref)  # a normal run ended: learn its length
        learned = np.maximum(learned, np.where(ended, steps, -1))
        steps = np.where(cont, steps + 1, np.where(changed, 0, steps))
        start = np.where(changed, ts2, self.run_start[rows])
        on &= ~changed
        limit = np.full(x.shape, -1, np.int64)
        cand = np.nonzero(cont & ~on & (steps >= self.stuck_first[rows]))
        if cand[0].size:
            r = rows[cand[0]], cand[1]
            limit[cand] = q.stuck_limit(self.stuck_steps[r], learned[cand], count[cand])
            on[cand] = steps[cand] >= limit[cand]
        self.stuck_learned[rows] = learned
        self.stuck_seen[rows] = count
        self.run_steps[rows] = steps
        self.run_start[rows] = start
        self.run_ref[rows] = np.where(changed, x, ref)
        self.stuck_on[rows] = on
        return on, (steps.astype(np.float64), start, limit.astype(np.float64), learned.astype(np.float64))

    @staticmethod
    def _detail(c: int, info: tuple[F64, ...], i: int, j: int) -> dict[str, str]:
        if c == OOR:
            lo, hi, above = info
            return {"side": "above", "limit": _g(hi[i, j])} if above[i, j] else {"side": "below", "limit": _g(lo[i, j])}
        if c == ROC:
            rate, max_rate, prev = info
            return {"rate": _g(rate[i, j]), "max_rate": _g(max_rate[i, j]), "previous": _g(prev[i, j])}
        steps, _, limit, learned = info
        return {"run_steps": str(int(steps[i, j])), "limit_steps": str(int(limit[i, j])),
                "learned_run": str(int(learned[i, j]))}

    def silent(self, rows: IntArr, last_ns: I64, now_ns: int) -> QualityVerdicts:
        """The wall-clock watchdog: rows whose last reading (``last_ns``, -1: unknown) is
        ``silent_after_s`` or more before ``now_ns`` fire ``silent``; nothing resolves here."""
        rows = np.asarray(rows, np.intp)
        last = np.asarray(last_ns, np.int64)
        lim = self.silent_after_s[rows]
        quiet = now_ns - last
        due = (lim > 0) & (last >= 0) & ~self.firing[rows, SILENT] & (quiet >= np.round(lim * NS_PER_S))
        fired: list[Flag] = []
        i = np.flatnonzero(due)
        if i.size:
            r = rows[i]
            self.firing[r, SILENT] = True
            self.fire_feature[r, SILENT] = -1
            self.fire_onset[r, SILENT] = last[i]
            self.silent_since[r] = last[i]
            for k in i.tolist():
                fired.append(Flag(int(rows[k]), "silent", -1, _NAN, int(now_ns), int(last[k]), {
                    "last_seen_ns": str(int(last[k])), "silent_s": _g(quiet[k] / NS_PER_S),
                    "silent_after_s": _g(lim[k]),
                }))
        invalid = np.zeros((len(rows), self.n_in), np.bool_)
        return QualityVerdicts(fired, [], invalid, self.holding(rows))
