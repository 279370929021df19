"""A predicted breach in the read side: stream status, pages, and GET /v1/streams' schema.

A real engine and lane (a kit model); the breach stage is the lane's own when the engine
has one, else one attached here, fed the lane's latest forecast.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.api.schemas import StreamOut
from service.arrays import IntArr
from service.config import AnomalySettings, StreamRules
from service.records import StreamKey
from service.streams.breach_stage import BreachStage
from service.streams.engine import Engine
from service.streams.lane import Lane
from service.streams.rules import resolve
from tests.unit.test_engine import STEP, feed, make, signal


def breach_stage(lane: Lane) -> BreachStage:
    stage: BreachStage | None = getattr(lane, "breach", None)
    if stage is None:
        m = lane.model.manifest
        stage = BreachStage(1, np.array([0], np.int64), m.horizon, lane.cadence_ns)
        stage.grow(lane.capacity)
        lane.breach = stage  # type: ignore[attr-defined]
    return stage


def predict_breach(eng: Engine, sid: str) -> float:
    """Fire a predicted breach on ``sid``: an upper limit just under its next forecast
    step (ETA one cadence). Returns the limit."""
    st = eng._streams[sid]
    lane, rows = st.lane, np.array([st.row], np.intp)
    t, stage = lane.table, breach_stage(lane)
    limit = float(t.fc[st.row, 0, 0]) - 10 * float(t.sc[st.row, 0, 0])
    stage.configure(rows, [resolve(AnomalySettings(), None, StreamRules(upper=limit), ["value"], lane.cadence_ns / 1e9)])
    ts = t.last_bucket[rows] * lane.cadence_ns
    fired, _ = stage.assess(rows, ts, t.fc[rows], t.sc[rows], lane.anomaly.spread[rows], np.ones(1, bool))
    assert len(fired) == 1
    return limit


class Holding:
    """A data-quality stage as the read-out sees it: ``stuck`` fires on the given rows and holds their ML alerts."""

    def __init__(self, rows: set[int]) -> None:
        self.rows = rows

    def holding(self, rows: IntArr) -> npt.NDArray[np.bool_]:
        return np.isin(rows, list(self.rows))

    def firing_checks(self, rows: IntArr) -> list[tuple[int, str]]:
        return [(r, "stuck") for r in rows.tolist() if r in self.rows]


def test_a_predicted_breach_shows_in_the_status_pages_and_the_api_schema(tmp_path: Path) -> None:
    eng, _, _ = make(tmp_path, STEP)
    feed(eng, StreamKey("dev", "value"), signal(30))
    feed(eng, StreamKey("calm", "value"), signal(30, seed=1))
    limit = predict_breach(eng, "dev/value")
    s = eng.stream("dev/value")
    assert s is not None and s.status == "firing"  # an alert fires on it: predicted_breach
    assert s.breach_eta_s == 60.0 and s.breach_probability is not None and s.breach_probability >= 0.9
    assert s.breach_limit == limit and s.breach_side == "upper" and s.breach_feature == "value"
    assert s.checks_firing == ["predicted_breach"] and s.held_by is None
    calm = eng.stream("calm/value")
    assert calm is not None and calm.checks_firing == [] and calm.held_by is None
    assert (calm.breach_eta_s, calm.breach_probability, calm.breach_limit, calm.breach_feature) == (None,) * 4
    # The bulk read-outs gather the same numbers.
    page, _ = eng.streams_page(10)
    assert [(p.id, p.breach_eta_s) for p in page] == [("calm/value", None), ("dev/value", 60.0)]
    assert [p.breach_limit for p in eng.streams()] == [None, limit]
    assert [p.id for p in eng.streams_page(10, status="firing")[0]] == ["dev/value"]
    assert [p.id for p in eng.streams_page(10, status="ok")[0]] == ["calm/value"]
    # GET /v1/streams/{id}: the ETA as seconds and as a time.
    out = StreamOut.from_status(s)
    b = out.predicted_breach
    assert b is not None and b.eta_s == 60.0 and b.side == "upper" and b.limit == limit
    assert out.last_time is not None and b.time == out.last_time + timedelta(seconds=60)
    assert out.checks_firing == ["predicted_breach"]
    assert StreamOut.from_status(calm).predicted_breach is None
    assert '"predicted_breach":null' in StreamOut.from_status(calm).model_dump_json()


def test_checks_firing_and_held_by_read_the_quality_stage(tmp_path: Path) -> None:
    eng, _, _ = make(tmp_path, STEP)
    feed(eng, StreamKey("dev", "value"), signal(30))
    feed(eng, StreamKey("calm", "value"), signal(30, seed=1))
    predict_breach(eng, "dev/value")
    st = eng._streams["dev/value"]
    st.lane.quality = Holding({st.row})  # type: ignore[attr-defined]
    s = eng.stream("dev/value")
    assert s is not None and s.checks_firing == ["stuck", "predicted_breach"] and s.held_by == "stuck"
    out = StreamOut.from_status(s)
    assert out.held_by == "stuck" and out.checks_firing == ["stuck", "predicted_breach"]
    calm = eng.stream("calm/value")
    assert calm is not None and calm.held_by is None and calm.checks_firing == []
