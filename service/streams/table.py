"""One model's state table: every stream it serves is a row; one batched call per step.

Rows are stream slots in preallocated, batch-major float32 arrays (``rows.py``; copying
rows out of ORT's outputs avoids pinning whole output buffers). ``step()`` advances a set
of *distinct* rows by one bucket each (the engine splits a stream's consecutive buckets
into consecutive calls) and returns what the anomaly stage scores: the values fed, and
the forecast made for them before this step.

After each step the row holds its latest forecast (``fc``, ``sc``), made ``fc_age`` steps
ago (always 0 for step models; window models recompute every ``window_every`` steps and
are read at that offset in between).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.arrays import F32, F64, I64, Arrays, Col, IntArr, RowArrays
from service.records import NS_PER_S
from service.runtime.registry import LoadedModel
from service.runtime.timefeatures import time_features

log = logging.getLogger(__name__)

# Rows per ONNX call: per-stream cost is lowest at B ~ 256-512 (activations stay in cache;
# measured here: 2.6 us/stream at 512 vs 3.8 us at 10,000).
MAX_CALL_BATCH = 512
AHEAD = 4  # forecast steps handed to the anomaly stage's multi-step evidence
_NAN = float("nan")


@dataclass(frozen=True, slots=True)
class Expected:
    """What the rows' latest forecasts say about the step about to be fed."""

    expected: F64  # (B, Fo) the forecast for this step, made before it
    scale: F64 | None  # (B, Fo) its predicted spread (probabilistic models)
    was_warm: npt.NDArray[np.bool_]  # (B,) that forecast came from a warm model


@dataclass(frozen=True, slots=True)
class Stepped:
    """What one ``ModelTable.step`` fed and what had been forecast for it."""

    rows: IntArr  # (B,) the rows stepped, distinct
    ts: I64  # (B,) step timestamps (bucket ends)
    x: F32  # (B, F) the values fed
    expected: F64  # (B, Fo) the forecast for this step, made before it
    scale: F64 | None  # (B, Fo) its predicted spread (probabilistic models)
    was_warm: npt.NDArray[np.bool_]  # (B,) that forecast came from a warm model
    restarted: IntArr  # rows whose state turned non-finite: reset, warm-up starts over
    ahead: F64  # (B, AHEAD, Fo) the forecasts now held for the next AHEAD steps (NaN beyond H)
    ahead_scale: F64 | None  # (B, AHEAD, Fo) their predicted spread (probabilistic models)


class ModelTable(RowArrays):
    """Recurrent state, window rings, forecasts and warm-up per row; the model call."""

    state = Col(np.float32, ("state",), 0.0)  # (N, S)
    fc = Col(np.float32, ("horizon", "n_out"), _NAN)  # (N, H, Fo) latest forecast
    sc = Col(np.float32, ("horizon", "n_out"), _NAN)  # (N, H, Fo) its predicted scale
    fc_age = Col(np.int64, fill=0, optional=True)  # steps since fc was computed
    ring = Col(np.float32, ("window", "n_in"), _NAN)  # (N, L, F) window models' inputs
    ring_ts = Col(np.int64, ("window",), 0, reset=False)  # (N, L)
    warm_have = Col(np.int64, fill=0)
    last_bucket = Col(np.int64, fill=-1, reset=False)  # the last bucket fed
    last_x = Col(np.float32, ("n_in",), _NAN)  # (N, F) the values read last (fed, unless kept out)

    def __init__(self, model: LoadedModel, window_every: int = 1) -> None:
        m = model.manifest
        self.model = model
        # Seqlock over what a forecast read needs (fc, sc, warm_have, last_bucket): odd
        # while a write is under way. The API reads forecasts without the engine's lock and
        # retries (or takes the lock) when the version was odd or changed meanwhile.
        self.version = 0
        self.poisoned = 0  # rows reset because the model returned a non-finite state
        self.runtime = model.runtime
        self.cadence_ns = round(m.cadence_s * NS_PER_S)
        self.n_in = len(m.features)
        self.n_out = len(m.output_features)
        self.horizon = m.horizon
        self.window = m.window if m.kind == "window" else None
        self.tf_names = list(m.time_features)
        self.warm_need = max(m.warmup_steps, self.window or 0, 1)
        self.has_scale = m.probabilistic
        # A window model's forecast is recomputed every this many steps (at most the horizon,
        # so there is always a forecast for the next step).
        self.window_every = 1 if self.window is None else max(1, min(window_every, self.horizon))
        dims = {"state": m.state_size, "horizon": self.horizon, "n_out": self.n_out, "n_in": self.n_in,
                "window": self.window or 0}
        # Warm-up in one call: steps of a row that stays warming for more than AHEAD more
        # steps wait here (no forecast of theirs is ever read) and run through the model's
        # sequence form at once when the row is next stepped for real or exported
        # (``_flush``). Only with a shipped sequence graph: rolling the step graph gains nothing.
        self.defers = self.window is None and getattr(self.runtime, "sequence_form", "none") != "none"
        self._held_n = np.zeros(0, np.int64)  # (N,) steps waiting per row
        self._held_x: F32 | None = None  # (N, warm_need, F) their inputs, allocated while any wait
        self._held_ts: I64 | None = None  # (N, warm_need) their timestamps (time features only)
        super().__init__(dims)

    # -- rows: writes bump the seqlock ---------------------------------------------------
    def grow(self, capacity: int) -> None:
        self.version += 1
        super().grow(capacity)
        self._held_n = np.concatenate([self._held_n, np.zeros(self.capacity - len(self._held_n), np.int64)])
        if self._held_x is not None and self._held_ts is not None:
            extra = self.capacity - len(self._held_x)
            self._held_x = np.concatenate([self._held_x, np.zeros((extra, *self._held_x.shape[1:]), np.float32)])
            self._held_ts = np.concatenate([self._held_ts, np.zeros((extra, self._held_ts.shape[1]), np.int64)])
        self.version += 1

    def reset(self, rows: IntArr) -> None:
        """Zero the recurrent state and forget forecasts and warm-up."""
        self.version += 1
        super().reset(rows)
        self._held_n[rows] = 0
        self.version += 1

    def clear(self, rows: IntArr) -> None:
        self.version += 1
        super().clear(rows)
        self._held_n[rows] = 0
        self.version += 1

    def load(self, rows: IntArr, arrays: Mapping[str, npt.NDArray[np.generic]], prefix: str | None = None) -> None:
        self.version += 1
        try:
            super().load(rows, arrays, prefix)
            self._held_n[rows] = 0
        finally:
            self.version += 1

    def export(self, rows: IntArr, prefix: str | None = None) -> Arrays:
        """As ``RowArrays.export``, with the rows' waiting warm-up steps run first."""
        poisoned = self._flush(rows)
        if poisoned.size:
            self.reset(poisoned)
        return super().export(rows, prefix)

    # -- warm-up steps that wait for one sequence call --------------------------------------
    def _hold(self, rows: IntArr, x: F32, ts: I64) -> None:
        if self._held_x is None or self._held_ts is None:
            self._held_x = np.zeros((self.capacity, self.warm_need, self.n_in), np.float32)
            # Timestamps only for time features (int64: twice the inputs' bytes at F = 1).
            self._held_ts = np.zeros((self.capacity, self.warm_need if self.tf_names else 0), np.int64)
        k = self._held_n[rows]
        self._held_x[rows, k] = x
        if self.tf_names:
            self._held_ts[rows, k] = ts
        self._held_n[rows] = k + 1

    def _flush(self, rows: IntArr) -> IntArr:
        """Run the waiting steps of ``rows`` (one sequence call per count of steps and 512
        rows); returns the rows whose state turned non-finite (the caller resets them)."""
        if self._held_x is None or self._held_ts is None:
            return np.zeros(0, np.intp)
        rows = rows[self._held_n[rows] > 0]
        bad = []
        for n in np.unique(self._held_n[rows]).tolist():
            group = rows[self._held_n[rows] == n]
            for lo in range(0, len(group), MAX_CALL_BATCH):
                r = group[lo : lo + MAX_CALL_BATCH]
                tfs = time_features(self._held_ts[r, :n], self.tf_names) if self.tf_names else None  # (b, n, K)
                _, _, state = self.runtime.sequence(self._held_x[r, :n], self.state[r], tfs)
                self.state[r] = state
                self._held_n[r] = 0
                bad.append(r[~np.isfinite(state).all(axis=1)])
        if not self._held_n.any():  # nothing waits: give the buffers back
            self._held_x = self._held_ts = None
        poisoned = np.concatenate(bad) if bad else np.zeros(0, np.intp)
        self.poisoned += poisoned.size
        return poisoned

    # -- stepping -------------------------------------------------------------------------
    def expect(self, rows: IntArr) -> Expected:
        """The latest forecasts' values for the next step of ``rows`` (read before stepping)."""
        age = self.fc_age[rows] if self.window_every > 1 else 0
        expected = self.fc[rows, age, :].astype(np.float64)  # (B, Fo)
        scale = self.sc[rows, age, :].astype(np.float64) if self.has_scale else None
        return Expected(expected, scale, self.warm_have[rows] >= self.warm_need)

    def step(
        self, rows: IntArr, buckets: I64, x: F32, pre: Expected | None = None, read: F32 | None = None
    ) -> Stepped:
        """Advance distinct ``rows`` (B,) by one bucket each with inputs ``x`` (B, F)
        (NaN: missing; the anomaly stage masks readings it keeps out of the state).
        ``pre``: ``expect(rows)`` when the caller read it already; ``read``: the readings
        as read when ``x`` masks some (``last_x`` reports those)."""
        ts = buckets * self.cadence_ns  # (B,) step timestamps
        pre = self.expect(rows) if pre is None else pre
        was_warm, expected, prev_scale = pre.was_warm, pre.expected, pre.scale
        age = self.fc_age[rows] if self.window_every > 1 else 0
        due = rows
        at = np.arange(len(rows))  # positions in rows/x/ts of the rows stepped now
        restart = []
        if self.defers:
            wait = self.warm_have[rows] + 1 + AHEAD < self.warm_need  # the last AHEAD+1 steps make forecasts
            if wait.any():
                self._hold(rows[wait], x[wait], ts[wait])
                at = np.flatnonzero(~wait)
                due = rows[at]
            flushed_bad = self._flush(due)
            if flushed_bad.size:  # re-warm after this step (as a state poisoned by it would); step on from zero
                self.state[flushed_bad] = 0.0
                restart.append(flushed_bad)
        if self.window is not None:
            # Shift each ring left by one and append x: (B, L, F).
            self.ring[rows, :-1] = self.ring[rows, 1:]
            self.ring[rows, -1] = x
            self.ring_ts[rows, :-1] = self.ring_ts[rows, 1:]
            self.ring_ts[rows, -1] = ts
            if self.window_every > 1:
                # Recompute when the forecast is window_every steps old, or the row just got
                # warm; a warming row's forecast is never read, so it is not computed.
                have = self.warm_have[rows] + 1
                due = rows[(have == self.warm_need) | ((have > self.warm_need) & (age + 1 >= self.window_every))]
        outputs = []  # the model calls first (they release the GIL), then one short write
        for lo in range(0, len(due), MAX_CALL_BATCH):
            r = due[lo : lo + MAX_CALL_BATCH]
            if self.window is None:
                i = at[lo : lo + MAX_CALL_BATCH]
                tf = time_features(ts[i], self.tf_names) if self.tf_names else None  # (b, K)
                fc, sc, state_out = self.runtime.step(x[i], self.state[r], tf)
                self.state[r] = state_out
                poisoned = ~np.isfinite(state_out).all(axis=1)
                if poisoned.any():  # a NaN/inf state would stay so forever: start those rows over
                    self.poisoned += int(poisoned.sum())
                    restart.append(r[poisoned])
            else:
                tfw = time_features(self.ring_ts[r], self.tf_names) if self.tf_names else None  # (b, L, K)
                fc, sc = self.runtime.window(self.ring[r], tfw)
            outputs.append((r, fc, sc))
        self.version += 1
        if self.window_every > 1:
            self.fc_age[rows] += self.warm_have[rows] >= self.warm_need  # warm rows age; due rows reset below
        for r, fc, sc in outputs:
            self.fc[r] = fc
            if sc is not None:
                self.sc[r] = sc
            if self.window_every > 1:
                self.fc_age[r] = 0
        self.warm_have[rows] += 1
        self.last_bucket[rows] = buckets
        self.version += 1
        restarted = np.concatenate(restart) if restart else np.zeros(0, np.intp)
        if restarted.size:
            self.reset(restarted)  # after the write above: the poisoned forecast goes too, warm-up restarts at 0
            log.warning("model %s returned a non-finite state for %d streams: they re-warm",
                        self.model.key, restarted.size)
        self.last_x[rows] = x if read is None else read
        ahead, ahead_scale = self.ahead(rows)
        return Stepped(rows, ts, x, expected, prev_scale, was_warm, restarted, ahead, ahead_scale)

    def ahead(self, rows: IntArr) -> tuple[F64, F64 | None]:
        """(B, AHEAD, Fo): the rows' forecasts for the next AHEAD steps (window models read
        their latest forecast at its age), NaN beyond the horizon; and their scale."""
        idx = np.arange(AHEAD)[None, :] + (self.fc_age[rows][:, None] if self.window_every > 1 else 0)
        idx = np.broadcast_to(idx, (len(rows), AHEAD))
        at = (rows[:, None], np.minimum(idx, self.horizon - 1))
        out: F64 = self.fc[at].astype(np.float64)
        out[idx >= self.horizon] = np.nan
        if not self.has_scale:
            return out, None
        sc: F64 = self.sc[at].astype(np.float64)
        sc[idx >= self.horizon] = np.nan
        return out, sc

    def replay(self, rows: IntArr, xs: F32, ts: I64) -> None:
        """Re-baseline ``rows``: run the model over ``xs`` (B, R, F), the rows' recent
        readings, from their current state (step models), or put them at the end of the
        window (window models); the forecasts then start from the new level. Warm-up,
        buckets and time are unchanged (time features use ``ts``, the latest step's)."""
        if rows.size == 0:
            return
        self.version += 1
        try:
            if self.window is None:
                poisoned = self._flush(rows)  # (warm rows wait for nothing; kept safe all the same)
                if poisoned.size:
                    self.reset(poisoned)
                tf = time_features(ts, self.tf_names) if self.tf_names else None  # (B, K): the latest step's
                tfs = None if tf is None else np.repeat(tf[:, None, :], xs.shape[1], axis=1)  # (B, R, K)
                fc, sc, state = self.runtime.sequence(xs, self.state[rows], tfs) if xs.shape[1] else (None, None, None)
                if fc is not None and state is not None and np.isfinite(state).all():
                    self.state[rows] = state
                    self.fc[rows] = fc
                    if sc is not None:
                        self.sc[rows] = sc
            else:
                k = min(xs.shape[1], self.window)
                self.ring[rows, -k:] = xs[:, -k:]
                tfw = time_features(self.ring_ts[rows], self.tf_names) if self.tf_names else None
                fc, sc = self.runtime.window(self.ring[rows], tfw)
                self.fc[rows] = fc
                if sc is not None:
                    self.sc[rows] = sc
                if self.window_every > 1:
                    self.fc_age[rows] = 0
        finally:
            self.version += 1
