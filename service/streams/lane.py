"""A model's lane: the rows of every stream it serves, across the stages; and ``Stream``.

One model version serves many streams; each stream is a row, and the same row index
addresses the stream in every stage's arrays:

- ``table`` (``ModelTable``): recurrent state, window ring, forecasts, warm-up;
- ``anomaly`` (``AnomalyStage``): scores, bands, onsets, its scorer's and decider's rows;
- ``quality`` (``QualityStage``): data-quality checks on the raw readings (stuck, silent,
  out_of_range, rate_of_change);
- ``breach`` (``BreachStage``): predicted crossings of operating limits;
- ``pos`` (``resample.Positions``): the next bucket to feed;
- the lane itself: which rows are in use and when each last had a reading.

Rows are allocated here (``add_row``/``release``; ``StreamSlots`` decides when). A freed
row is cleared to its fills in every stage, so a reused row starts exactly like a new
one. Export and import cover every stage, under the array names checkpoints use.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.arrays import Arrays, Col, IntArr, RowArrays
from service.config import Settings
from service.records import StreamKey
from service.runtime.registry import LoadedModel
from service.streams.anomaly_stage import AnomalyStage
from service.streams.binding import Route
from service.streams.breach_stage import BreachStage
from service.streams.quality_stage import QualityStage
from service.streams.resample import Positions, Resampler
from service.streams.rules import ResolvedRules, resolve
from service.streams.table import ModelTable


def table_name(model: LoadedModel) -> str:
    return f"{model.name}@{model.version}"


class Lane(RowArrays):
    occupied = Col(np.bool_, fill=False, saved=False)  # the row serves a stream
    # Engine clock (ns) of the row's latest reading, for idle eviction (-1: not stamped
    # yet; the eviction scan stamps such rows, e.g. ones restored from a checkpoint).
    seen = Col(np.int64, fill=-1, saved=False)

    def __init__(self, model: LoadedModel, settings: Settings, uid: int, capacity: int = 64) -> None:
        self.model = model
        self.name = table_name(model)
        self.uid = uid  # a small int naming this lane in hot loops
        self.table = ModelTable(model, window_every=settings.streams.window_every)
        self.anomaly = AnomalyStage(model, settings.anomaly)
        m = model.manifest
        self.quality = QualityStage(
            self.table.n_in, self.table.cadence_ns, resolve(settings.anomaly, None, None, m.features, m.cadence_s)
        )
        self.breach = BreachStage(
            self.anomaly.n_out, self.anomaly.out_in.astype(np.int64), self.table.horizon, self.table.cadence_ns
        )
        self.pos = Positions()
        self.cadence_ns = self.table.cadence_ns
        self.n_in = self.table.n_in
        self.owners: list[Stream | None] = []  # row -> its stream (None: free)
        self.free: list[int] = []
        self.used = 0
        super().__init__()
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        old = self.capacity
        if capacity <= old:
            return
        super().grow(capacity)
        for stage in (self.table, self.anomaly, self.quality, self.breach, self.pos):
            stage.grow(capacity)
        self.free.extend(range(capacity - 1, old - 1, -1))
        self.owners.extend([None] * (capacity - old))

    def add_row(self, owner: Stream) -> int:
        if not self.free:
            self.grow(max(64, self.capacity * 3 // 2))  # 1.5x: less slack than doubling at 100k rows
        row = self.free.pop()  # clean: new from grow(), or cleared by release()
        self.used += 1
        self.occupied[row] = True
        self.owners[row] = owner
        return row

    def release(self, row: int) -> None:
        """The row's stream left: every stage forgets it."""
        rows = np.array([row], np.intp)
        self.clear(rows)
        for stage in (self.table, self.anomaly, self.quality, self.breach, self.pos):
            stage.clear(rows)
        self.free.append(row)
        self.owners[row] = None
        self.used -= 1

    def reset(self, rows: IntArr) -> None:
        """These streams start over (a long gap, a failed model call): state, warm-up,
        scores and decisions; their bucket position stays, and so do the data-quality
        checks (they judge raw readings, not the model: a silent alert resolves on the
        next reading, saying how long the stream was silent)."""
        self.table.reset(rows)
        self.anomaly.reset(rows)
        self.breach.reset(rows)  # its forecast is gone (the engine resolves a firing breach first)

    def wipe(self, rows: IntArr) -> None:
        """Every stage's arrays of these (occupied) rows back to their fills: fresh streams."""
        for stage in (self.table, self.anomaly, self.quality, self.breach, self.pos):
            stage.clear(rows)

    def configure(self, rows: IntArr, rules: Sequence[ResolvedRules]) -> None:
        """Each stage takes its part of the streams' effective alert rules."""
        self.anomaly.configure(rows, rules)
        self.quality.configure(rows, rules)
        self.breach.configure(rows, rules)

    def export_rows(self, rows: IntArr) -> Arrays:
        """Copies of every stage's saved arrays at ``rows`` (checkpoints, eviction)."""
        return {**self.table.export(rows), **self.anomaly.export(rows), **self.quality.export(rows),
                **self.breach.export(rows), **self.pos.export(rows)}

    def import_rows(self, rows: IntArr, arrays: Arrays) -> None:
        """Rows saved by ``export_rows`` from a lane of the same model. On KeyError or
        ValueError (a damaged file) the caller wipes the rows: no half-restored streams."""
        self.table.load(rows, arrays)
        self.anomaly.load(rows, arrays)
        try:
            self.quality.load(rows, arrays)
        except KeyError:  # saved before the data-quality checks existed: they start fresh
            self.quality.reset(rows)
        self.breach.load(rows, arrays)  # its columns are optional: older checkpoints load
        self.pos.load(rows, arrays)

    def status_counts(self) -> tuple[int, int, int]:
        """(warming, ok, firing) streams, from the arrays (cheap at 100k rows)."""
        occupied = self.occupied
        firing = occupied & (self.anomaly.decider.firing | self.quality.firing.any(axis=1) | self.breach.firing)
        warming = occupied & ~firing & (self.table.warm_have < self.table.warm_need)
        n_firing, n_warming = int(firing.sum()), int(warming.sum())
        return n_warming, int(occupied.sum()) - n_firing - n_warming, n_firing


class Stream:
    """Mutable per-stream bookkeeping (the numbers live in the lane's arrays)."""

    __slots__ = ("binding_rules", "id", "key", "keys", "lane", "multivariate", "res", "row", "ticket")

    def __init__(self, sid: str, key: StreamKey, rt: Route, lane: Lane) -> None:
        self.id = sid
        self.multivariate = rt.multivariate
        self.binding_rules = rt.rules
        # The stream's own key: a multivariate (device) stream's quantity is "*"; its
        # readings come under one key per feature (``keys``, in feature order).
        self.key = StreamKey(key.device, "*", key.tags) if rt.multivariate else key
        features = lane.model.manifest.features
        self.keys = tuple(StreamKey(key.device, f, key.tags) for f in features) if rt.multivariate else (key,)
        self.lane = lane
        self.row = lane.add_row(self)
        # The resample stage's pending readings while the stream is on its slow path
        # (None otherwise: saves memory at 100k streams). Its position is a working copy
        # of ``lane.pos``: see resample_batch.py.
        self.res: Resampler | None = None
        self.ticket = 0  # a history read in flight (warmup.py): readings wait, no steps

    @property
    def device(self) -> str:
        return self.key.device

    @property
    def quantity(self) -> str:
        return self.key.quantity

    @property
    def tags(self) -> tuple[tuple[str, str], ...]:
        return self.key.tags
