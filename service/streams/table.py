"""One model's state table: every stream it serves is a row; one batched call per step.

Rows are stream slots in preallocated, batch-major float32 arrays (MEASURED.md: a table
with rows gathered and scattered by index beats a dict of per-stream arrays, and copying
rows out of ORT's outputs avoids pinning whole output buffers). ``step()`` advances a set
of *distinct* rows by one bucket each: the engine splits a stream's consecutive buckets
into consecutive calls.

After each step the row holds its latest forecast (``fc``, ``sc``), made ``fc_age`` steps
ago (always 0 for step models; window models recompute every ``window_every`` steps and
are read at that offset in between), the score of the value just fed against the forecast
for its step, and the band that score was measured in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from service.anomaly.decision import Decider
from service.arrays import F32, F64, I64, IntArr
from service.config import AnomalySettings
from service.records import NS_PER_S
from service.runtime.registry import LoadedModel
from service.runtime.timefeatures import time_features
from service.streams.scorers import default_threshold, make_scorer

log = logging.getLogger(__name__)

# Rows per ONNX call: per-stream cost is lowest at B ~ 256-512 (activations stay in cache;
# MEASURED.md, re-measured here: 2.6 us/stream at 512 vs 3.8 us at 10,000).
MAX_CALL_BATCH = 512


@dataclass(frozen=True, slots=True)
class StepOutcome:
    rows: IntArr  # the rows stepped, in call order
    fired: IntArr  # rows that started firing
    resolved: IntArr  # rows that resolved


class ModelTable:
    def __init__(
        self, model: LoadedModel, anomaly: AnomalySettings, capacity: int = 64, window_every: int = 1
    ) -> None:
        m = model.manifest
        self.model = model
        self.uid = 0  # set by the engine: a small int naming this table in hot loops
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
        self.state_size = m.state_size
        self.window = m.window if m.kind == "window" else None
        self.tf_names = list(m.time_features)
        self.warm_need = max(m.warmup_steps, self.window or 0, 1)
        # A window model's forecast is recomputed every this many steps (at most the horizon,
        # so there is always a forecast for the next step).
        self.window_every = 1 if self.window is None else max(1, min(window_every, self.horizon))
        # Output feature j is scored against input feature out_in[j] (-1: not an input).
        self.out_in = np.array([m.features.index(f) if f in m.features else -1 for f in m.output_features])
        threshold = default_threshold(anomaly, m.default_threshold)
        self.decider = Decider(
            threshold, anomaly.clear_threshold, anomaly.min_count, anomaly.window, round(anomaly.cooldown_s * NS_PER_S)
        )
        self.scorer = make_scorer(anomaly, self.n_out, threshold)  # anomaly.scorer: spread or surprise
        self.band_z = self.scorer.band_z
        self.capacity = 0
        self.used = 0
        self.owners: list[Any] = []  # row -> the engine's stream object (None: free)
        self.free: list[int] = []
        self.state: F32 = np.zeros((0, self.state_size), np.float32)  # (N, S)
        self.fc: F32 = np.zeros((0, self.horizon, self.n_out), np.float32)  # (N, H, Fo)
        self.sc: F32 = np.zeros((0, self.horizon, self.n_out), np.float32)  # (N, H, Fo)
        self.has_scale = m.probabilistic
        self.ring: F32 = np.zeros((0, self.window or 0, self.n_in), np.float32)  # (N, L, F)
        self.ring_ts: I64 = np.zeros((0, self.window or 0), np.int64)  # (N, L)
        self.warm_have: I64 = np.zeros(0, np.int64)
        self.fc_age: I64 = np.zeros(0, np.int64)  # steps since fc was computed
        self.last_bucket: I64 = np.zeros(0, np.int64)
        self.last_x: F32 = np.zeros((0, self.n_in), np.float32)  # (N, F)
        self.score: F64 = np.zeros(0)
        self.expected: F64 = np.zeros((0, self.n_out))  # (N, Fo) forecast for the last fed step
        self.spread: F64 = np.zeros((0, self.n_out))
        self.top_feature: I64 = np.zeros(0, np.int64)
        # Resampler position per row (authoritative unless has_pending: then the stream's
        # Resampler object holds it, see engine.py).
        self.next_bucket: I64 = np.zeros(0, np.int64)  # -1: nothing fed yet
        self.last_fed_ts: I64 = np.zeros(0, np.int64)
        self.has_pending: npt.NDArray[np.bool_] = np.zeros(0, bool)
        self.occupied: npt.NDArray[np.bool_] = np.zeros(0, bool)  # row serves a stream
        # Engine clock (ns) of the row's latest reading, for idle eviction (-1: not stamped
        # yet; the eviction scan stamps such rows, e.g. ones restored from a checkpoint).
        self.seen: I64 = np.zeros(0, np.int64)
        self.onset_ts: I64 = np.zeros(0, np.int64)  # first hot step of the current run
        self.onset_value: F64 = np.zeros(0)
        self.onset_expected: F64 = np.zeros(0)
        self.onset_score: F64 = np.zeros(0)
        self.grow(capacity)

    # ------------------------------------------------------------ rows

    def grow(self, capacity: int) -> None:
        old = self.capacity
        if capacity <= old:
            return
        extra = capacity - old
        self.version += 1

        def more(a: npt.NDArray[np.generic], fill: float | int) -> npt.NDArray[np.generic]:
            return np.concatenate([a, np.full((extra, *a.shape[1:]), fill, dtype=a.dtype)])

        self.state = more(self.state, 0.0)  # type: ignore[assignment]
        self.fc = more(self.fc, np.nan)  # type: ignore[assignment]
        self.sc = more(self.sc, np.nan)  # type: ignore[assignment]
        self.ring = more(self.ring, np.nan)  # type: ignore[assignment]
        self.ring_ts = more(self.ring_ts, 0)  # type: ignore[assignment]
        self.warm_have = more(self.warm_have, 0)  # type: ignore[assignment]
        self.fc_age = more(self.fc_age, 0)  # type: ignore[assignment]
        self.last_bucket = more(self.last_bucket, -1)  # type: ignore[assignment]
        self.last_x = more(self.last_x, np.nan)  # type: ignore[assignment]
        self.score = more(self.score, np.nan)  # type: ignore[assignment]
        self.expected = more(self.expected, np.nan)  # type: ignore[assignment]
        self.spread = more(self.spread, np.nan)  # type: ignore[assignment]
        self.top_feature = more(self.top_feature, 0)  # type: ignore[assignment]
        self.next_bucket = more(self.next_bucket, -1)  # type: ignore[assignment]
        self.last_fed_ts = more(self.last_fed_ts, 0)  # type: ignore[assignment]
        self.has_pending = more(self.has_pending, False)  # type: ignore[assignment]
        self.occupied = more(self.occupied, False)  # type: ignore[assignment]
        self.seen = more(self.seen, -1)  # type: ignore[assignment]
        self.onset_ts = more(self.onset_ts, 0)  # type: ignore[assignment]
        self.onset_value = more(self.onset_value, np.nan)  # type: ignore[assignment]
        self.onset_expected = more(self.onset_expected, np.nan)  # type: ignore[assignment]
        self.onset_score = more(self.onset_score, np.nan)  # type: ignore[assignment]
        self.scorer.grow(capacity)
        self.decider.grow(capacity)
        self.free.extend(range(capacity - 1, old - 1, -1))
        self.owners.extend([None] * extra)
        self.capacity = capacity
        self.version += 1

    def add_row(self) -> int:
        if not self.free:
            self.grow(max(64, self.capacity * 3 // 2))  # 1.5x: less slack than doubling at 100k rows
        row = self.free.pop()  # clean: new from grow(), or cleaned by release()
        self.used += 1
        self.occupied[row] = True
        return row

    def release(self, row: int) -> None:
        rows = np.array([row], np.intp)
        self.reset(rows)
        self.forget_position(rows)
        self.decider.row_threshold[row] = np.nan  # a per-stream override leaves with its stream
        self.free.append(row)
        self.owners[row] = None
        self.occupied[row] = False
        self.seen[row] = -1
        self.used -= 1

    def reset(self, rows: IntArr) -> None:
        """Zero the recurrent state and forget forecasts, warm-up, scores and decisions."""
        self.version += 1
        self.state[rows] = 0.0
        self.fc[rows] = np.nan
        self.sc[rows] = np.nan
        self.ring[rows] = np.nan
        self.warm_have[rows] = 0
        self.fc_age[rows] = 0
        self.version += 1
        self.last_x[rows] = np.nan
        self.score[rows] = np.nan
        self.expected[rows] = np.nan
        self.spread[rows] = np.nan
        self.scorer.reset(rows)
        self.decider.reset(rows)

    def forget_position(self, rows: IntArr) -> None:
        """A fresh stream: no bucket fed yet."""
        self.next_bucket[rows] = -1
        self.last_fed_ts[rows] = 0
        self.has_pending[rows] = False

    # ------------------------------------------------------------ stepping

    def step(self, rows: IntArr, buckets: I64, x: F32) -> StepOutcome:
        """Advance distinct ``rows`` (B,) by one bucket each with inputs ``x`` (B, F)."""
        ts = buckets * self.cadence_ns  # (B,) step timestamps
        was_warm = self.warm_have[rows] >= self.warm_need
        # The latest forecast's value for this bucket, and its spread.
        age = self.fc_age[rows] if self.window_every > 1 else 0
        expected = self.fc[rows, age, :].astype(np.float64)  # (B, Fo)
        prev_scale = self.sc[rows, age, :].astype(np.float64) if self.has_scale else None
        due = rows
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
        restart = []
        for lo in range(0, len(due), MAX_CALL_BATCH):
            r = due[lo : lo + MAX_CALL_BATCH]
            if self.window is None:
                tf = time_features(ts[lo : lo + MAX_CALL_BATCH], self.tf_names) if self.tf_names else None  # (b, K)
                fc, sc, state_out = self.runtime.step(x[lo : lo + MAX_CALL_BATCH], self.state[r], tf)
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
        for r in restart:
            self.reset(r)  # after the write above: the poisoned forecast goes too, warm-up restarts at 0
        self.last_x[rows] = x

        # Score the fed values against the earlier forecast (only when it was made warm).
        actual = np.full((len(rows), self.n_out), np.nan)
        has_in = self.out_in >= 0
        actual[:, has_in] = x[:, self.out_in[has_in]]
        fire_t, _ = self.decider.thresholds(rows)
        # The scorer learns from this step itself, keeping anomalies out of its baseline.
        score, spread, top = self.scorer.step(rows, actual, expected, prev_scale, was_warm, fire_t)
        actual[~was_warm] = np.nan  # a cold model's forecast is not scored
        if self.n_out > 1:
            self.top_feature[rows] = top
        self.score[rows] = score
        self.expected[rows] = expected
        self.spread[rows] = spread
        quiet_before = self.decider.hot[rows] == 0
        fired, resolved = self.decider.update(rows, score, ts)
        # Onset: the first hot step of a run (with M > 1 the alert fires on a later step,
        # and for a spike that later step is often the return to normal).
        onset = quiet_before & (score >= fire_t)
        if onset.any():
            i = np.flatnonzero(onset)
            o = rows[i]
            j = self.top_feature[o] if self.n_out > 1 else np.zeros(len(o), np.int64)  # the worst feature
            self.onset_ts[o] = ts[i]
            self.onset_value[o] = actual[i, j]
            self.onset_expected[o] = expected[i, j]
            self.onset_score[o] = score[i]
        return StepOutcome(rows, rows[fired], rows[resolved])

    def band(self, row: int, feature: int) -> tuple[float, float]:
        """Lower/upper of the band the last score of ``row`` was measured in."""
        e = float(self.expected[row, feature])
        half = self.band_z * float(self.spread[row, feature])
        return e - half, e + half

    # ------------------------------------------------------------ checkpoints

    _ROW_ARRAYS = (
        "state", "fc", "sc", "fc_age", "ring", "ring_ts", "warm_have", "last_bucket", "last_x",
        "score", "expected", "spread", "top_feature", "next_bucket", "last_fed_ts",
        "onset_ts", "onset_value", "onset_expected", "onset_score",
    )

    def export_rows(self, rows: IntArr) -> dict[str, npt.NDArray[np.generic]]:
        out: dict[str, npt.NDArray[np.generic]] = {k: getattr(self, k)[rows] for k in self._ROW_ARRAYS}
        out.update(self.scorer.export_rows(rows))
        for k in ("hot", "warm", "firing", "quiet_until", "row_threshold"):
            out[f"decider.{k}"] = getattr(self.decider, k)[rows]
        return out

    def import_rows(self, rows: IntArr, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        """Load rows saved by ``export_rows`` (shapes must match this model)."""
        self.version += 1
        try:
            self._import_rows(rows, arrays)
        finally:
            self.version += 1

    def _import_rows(self, rows: IntArr, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        for k in self._ROW_ARRAYS:
            target = getattr(self, k)
            # Checkpoints written before fc_age existed: every forecast is fresh.
            src = arrays[k] if k in arrays or k != "fc_age" else np.zeros(len(rows), np.int64)
            if src.shape[1:] != target.shape[1:]:
                raise ValueError(f"checkpoint array {k} has shape {src.shape[1:]}, table has {target.shape[1:]}")
            target[rows] = src
        try:
            self.scorer.import_rows(rows, arrays)
        except KeyError as e:  # saved under the other anomaly.scorer: keep the streams, re-learn scores
            log.warning("checkpoint has no state for this scorer (%s): scores of %d streams start over", e, len(rows))
            self.scorer.reset(rows)
        for k in ("hot", "warm", "firing", "quiet_until", "row_threshold"):
            getattr(self.decider, k)[rows] = arrays[f"decider.{k}"]
