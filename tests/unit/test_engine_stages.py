"""The engine's stages on their own: declared row arrays, lanes, routes, record keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.arrays import Col, RowArrays
from service.records import Alert, Forecast, Reading, StreamKey
from service.streams.slots import Hit
from tests.modelkit import KitSpec
from tests.unit.test_engine import T0, C, make, signal


class Demo(RowArrays):
    prefix = "demo."
    level = Col(np.float32, ("n",), np.nan)
    count = Col(np.int64, fill=0)
    label = Col(np.int64, fill=-1, reset=False)
    since = Col(np.int64, fill=7, optional=True)
    scratch = Col(np.bool_, fill=False, saved=False)


def test_row_arrays_are_declared_once_and_grow_reset_clear_generically() -> None:
    d = Demo({"n": 3}, capacity=2)
    assert d.level.shape == (2, 3) and d.level.dtype == np.float32 and np.isnan(d.level).all()
    d.level[:] = 1.0
    d.count[:] = 5
    d.label[:] = 9
    d.grow(5)
    assert d.capacity == 5 and d.level.shape == (5, 3)
    assert d.count.tolist() == [5, 5, 0, 0, 0] and d.label.tolist() == [9, 9, -1, -1, -1]
    rows = np.array([0], np.intp)
    d.reset(rows)  # reset=False columns keep their value
    assert np.isnan(d.level[0]).all() and d.count[0] == 0 and d.label[0] == 9
    d.clear(rows)  # every column back to its fill
    assert d.label[0] == -1
    d.grow(3)  # never shrinks
    assert d.capacity == 5


def test_export_and_load_round_trip_with_prefix_optional_and_shape_checks() -> None:
    a = Demo({"n": 2}, capacity=4)
    a.level[1] = (1.0, 2.0)
    a.count[1] = 3
    a.label[1] = 4
    a.since[1] = 11
    saved = a.export(np.array([1]))
    assert set(saved) == {"demo.level", "demo.count", "demo.label", "demo.since"}  # not the unsaved column
    b = Demo({"n": 2}, capacity=4)
    b.load(np.array([3]), saved)
    assert b.level[3].tolist() == [1.0, 2.0] and (b.count[3], b.label[3], b.since[3]) == (3, 4, 11)
    del saved["demo.since"]  # saved before the column existed: its fill
    b.since[2] = 0
    b.load(np.array([2]), saved)
    assert b.since[2] == 7
    wrong = Demo({"n": 5}, capacity=1)
    b.count[0] = 1
    with pytest.raises(ValueError, match=r"demo\.level"):
        b.load(np.array([0]), wrong.export(np.array([0])))
    assert b.count[0] == 1  # shapes are checked before anything is written
    del saved["demo.count"]
    with pytest.raises(KeyError):
        b.load(np.array([0]), saved)


def test_route_hits_have_named_fields(tmp_path: Path) -> None:
    eng, _, _ = make(tmp_path, KitSpec(name="m"))
    key = StreamKey("dev", "value")
    eng.accept([Reading(key, T0, 1.0)])
    eng.tick(T0)
    hit = eng._slots.routes[key]
    assert isinstance(hit, Hit)
    assert hit.stream.id == "dev/value" and hit.row == hit.stream.row and hit.feature == 0
    assert eng._slots.by_uid[hit.uid] is hit.stream.lane


def test_a_reused_row_starts_like_a_new_one(tmp_path: Path) -> None:
    mv = KitSpec(name="mv", features=("t", "h"), hidden=8, warmup_steps=3)
    eng, _, _ = make(tmp_path, mv, streams={"idle_evict_s": 600})
    vals = signal(20)
    for i, v in enumerate(vals):
        ts = T0 + i * C
        eng.accept([Reading(StreamKey("old", "t"), ts, float(v)), Reading(StreamKey("old", "h"), ts, float(-v))])
        eng.tick(ts)
    lane = eng._lanes["mv@1"]
    row = eng._streams["old"].row
    lane.anomaly.top_feature[row] = 1  # as if "h" had been its worst feature
    later = T0 + 20 * C + 3600 * 10**9
    eng.tick(later)  # idle for an hour: evicted, its row freed
    assert "old" not in eng._streams
    # Its bucket is still open: bound, not stepped yet.
    eng.accept([Reading(StreamKey("new", "t"), later + C // 2, 1.0), Reading(StreamKey("new", "h"), later + C // 2, 1.0)])
    eng.tick(later)
    assert eng._streams["new"].row == row  # the freed row was reused ...
    fresh = lane.export_rows(np.array([lane.capacity - 1], np.intp))  # ... and holds a new row's values
    used = lane.export_rows(np.array([row], np.intp))
    assert set(used) == set(fresh)
    for k in used:
        np.testing.assert_array_equal(used[k], fresh[k], err_msg=k)
    status = eng.stream("new")
    assert status is not None and status.feature == "t"


def test_records_carry_their_stream_key() -> None:
    key = StreamKey("pump/1", "temp", (("site", "n"),))
    a = Alert(key, "temp", "firing", 0, 1.0, 1.0, 0.0, 2.0, 0.9, "m", "1", True)
    assert (a.stream_id, a.device, a.quantity) == (key.id, "pump/1", "temp") == ("pump%2F1/temp;site=n", "pump/1", "temp")
    device = StreamKey("pump/1", "*", (("site", "n"),))
    b = Alert(device, "h", "firing", 0, 1.0, 1.0, 0.0, 2.0, 0.9, "m", "1", True, multivariate=True)
    assert (b.stream_id, b.quantity) == (device.device_id, "h") == ("pump%2F1;site=n", "h")
    f = Forecast(StreamKey("d", "*"), 0, 60.0, ("t", "h"), ((1.0, 2.0),), None, "m", "1", multivariate=True)
    assert f.stream_id == "d" and f.key is not None and f.key.quantity == "*"
    # A univariate stream whose quantity is literally "*" keeps its own id.
    assert Forecast(StreamKey("d", "*"), 0, 60.0, ("v",), ((1.0,),), None, "m", "1").stream_id == "d/*"
    assert Forecast(None, 0, 60.0, ("v",), ((1.0,),), None, "m", "1").stream_id == ""


def test_engine_records_of_a_multivariate_stream(tmp_path: Path) -> None:
    mv = KitSpec(name="mv", features=("t", "h"), hidden=8, warmup_steps=3)
    got: list[Forecast] = []
    eng, alerts, _ = make(tmp_path, mv, alerts={"forecast_topic": "fc/{stream}"})
    eng.on_forecast = got.append
    vals = signal(40)
    vals[35] += 50
    for i, v in enumerate(vals):
        ts = T0 + i * C
        eng.accept([Reading(StreamKey("dev", "t", (("s", "1"),)), ts, float(v)),
                    Reading(StreamKey("dev", "h", (("s", "1"),)), ts, 1.0)])
        eng.tick(ts)
    want = StreamKey("dev", "*", (("s", "1"),))
    assert got and {(f.key, f.multivariate, f.stream_id) for f in got} == {(want, True, "dev;s=1")}
    fc = eng.forecast("dev;s=1")
    assert fc is not None and fc.key == want and fc.multivariate
    assert alerts, "the spike fires"
    assert {(a.key, a.stream_id, a.device) for a in alerts} == {(want, "dev;s=1", "dev")}
    assert {a.quantity for a in alerts} <= {"t", "h"}


@pytest.mark.parametrize("failure", ["model_error", "restart"])
def test_a_firing_stream_that_starts_over_resolves(tmp_path: Path, failure: str) -> None:
    """A failed model call or a non-finite state restarts a stream; a firing alert it had
    resolves (saying why) instead of staying firing on the broker."""
    from service.metrics import Metrics
    from service.runtime.registry import ModelRegistry
    from service.runtime.session import FunctionRuntime
    from service.streams.engine import Engine
    from tests.modelkit import settings_for, write_model

    broken = {"now": False}

    def persistence(x, state, tf):  # type: ignore[no-untyped-def]
        if broken["now"] and failure == "model_error":
            raise RuntimeError("boom")
        new = state + (np.nan if broken["now"] else 1.0)
        return np.repeat(x[:, None, :], 4, axis=1), np.ones((len(x), 4, 1), np.float32), new

    models = tmp_path / "models"
    write_model(models, KitSpec(name="a", hidden=4, warmup_steps=1, features=("va",)))
    settings = settings_for(tmp_path, models, anomaly={"min_count": 1, "window": 1, "cooldown_s": 0})
    registry = ModelRegistry(models, factory=lambda folder, m: FunctionRuntime(m, step=persistence))
    alerts: list[Alert] = []
    eng = Engine(settings, registry, None, Metrics(), on_alert=alerts.append)
    key = StreamKey("d", "va")
    for i, v in enumerate([1.0, 1.0, 1.0, 50.0]):  # the jump fires (persistence forecast, scale 1)
        eng.accept([Reading(key, T0 + i * C, v)])
        eng.tick(T0 + i * C)
    assert [a.state for a in alerts] == ["firing"]
    broken["now"] = True
    eng.accept([Reading(key, T0 + 4 * C, 50.0)])
    eng.tick(T0 + 4 * C)
    assert [(a.state, a.extra.get("reason")) for a in alerts] == [("firing", None), ("resolved", failure)]
    assert alerts[-1].stream_id == "d/va" and not alerts[-1].warm
    status = eng.stream("d/va")
    assert status is not None and status.status != "firing"
