"""Engine with ``anomaly.scorer = "surprise"``: the score the decision and alerts use is
exactly ``SurpriseScorer`` over the engine's residual stream; its state survives checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.anomaly.surprise import SurpriseConfig, SurpriseScorer
from service.metrics import Metrics
from service.records import Alert, Reading, StreamKey
from service.runtime.registry import ModelRegistry
from service.streams.engine import Engine
from service.streams.scorers import SurpriseRows
from tests.modelkit import KitSpec, settings_for, write_model

C = 60 * 10**9  # kit cadence: 60 s
T0 = 1_700_000_000 // 60 * C
UNI = KitSpec(name="m", hidden=8, warmup_steps=6, mean=(20.0,), std=(3.0,))  # probabilistic: scale ignored
MV = KitSpec(name="mv", features=("t", "h"), hidden=8, warmup_steps=4, mean=(20.0, 20.0), std=(3.0, 3.0))
SURPRISE = {"scorer": "surprise", "min_count": 1, "window": 1, "cooldown_s": 0}


def make(tmp: Path, spec: KitSpec, **anomaly: object) -> tuple[Engine, list[Alert]]:
    models = tmp / "models"
    write_model(models, spec)
    alerts: list[Alert] = []
    settings = settings_for(tmp, models, anomaly={**SURPRISE, **anomaly})
    return Engine(settings, ModelRegistry(models), None, Metrics(), on_alert=alerts.append), alerts


def signal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sin(np.arange(n) / 4.0) * 3 + 20 + rng.normal(0, 0.3, n)


def run(eng: Engine, quantities: list[str], values: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feed rows of ``values`` (T, Q) one step each; (scores (T,), expected (T, Q)) after each step."""
    sid = "dev" if len(quantities) > 1 else f"dev/{quantities[0]}"
    scores, expected = [], []
    table = None
    for i, row in enumerate(values):
        ts = T0 + (start + i) * C
        eng.accept([Reading(StreamKey("dev", q), ts, float(v)) for q, v in zip(quantities, row, strict=True)])
        eng.tick(ts + eng.settings.streams.close_grace_s * 10**9 + 1)
        snap = eng.snapshot([sid])
        assert snap["last_ts_ns"][0] == ts
        scores.append(snap["score"][0])
        if table is None:
            (table,) = (lane.anomaly for lane in eng._lanes.values())
        expected.append(table.expected[0].copy())  # (Fo,) the forecast this step was scored against
    return np.array(scores), np.array(expected)


def reference(values: np.ndarray, expected: np.ndarray, warm_need: int) -> np.ndarray:
    """SurpriseScorer per feature over the same residual stream; the stream's score is the max."""
    t, q = values.shape
    out = np.zeros((t, q))
    for j in range(q):
        s = SurpriseScorer(SurpriseConfig())
        s.grow(1)
        for i in range(t):
            e = expected[i, j] if i >= warm_need else np.nan  # a cold model's forecast is not scored
            actual = np.float32(values[i, j]).astype(np.float64)  # the table holds inputs in float32
            out[i, j] = s.update(np.array([0]), np.array([actual]), np.array([e]))[0]
    ref = out.max(axis=1)
    ref[:warm_need] = np.nan  # no opinion while warming
    return ref


def test_univariate_scores_equal_surprise_scorer_and_a_spike_fires(tmp_path: Path) -> None:
    eng, alerts = make(tmp_path, UNI)
    vals = signal(360)
    vals[300] += 40
    scores, expected = run(eng, ["value"], vals[:, None])
    ref = reference(vals[:, None], expected, UNI.warmup_steps)
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-12, equal_nan=True)
    assert scores[300] == np.nanmax(scores) > 0.9  # range novelty: beyond anything seen
    # (A new high of the noisy sine may fire too: range novelty is meant to.)
    [spike] = [a for a in alerts if a.state == "firing" and a.ts_ns == T0 + 300 * C]
    assert spike.score == pytest.approx(scores[300]) and not (spike.lower <= spike.value <= spike.upper)
    assert all(a.score >= 0.5 for a in alerts if a.state == "firing")  # the surprise default threshold


def test_multivariate_score_is_the_worst_feature(tmp_path: Path) -> None:
    eng, _ = make(tmp_path, MV)
    vals = np.stack([signal(280, 1), signal(280, 2)], axis=1)
    vals[250, 1] -= 40
    scores, expected = run(eng, ["t", "h"], vals)
    ref = reference(vals, expected, MV.warmup_steps)
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-12, equal_nan=True)
    assert scores[250] > 0.9
    s = eng.stream("dev")
    assert s is not None


def test_anomalous_residuals_do_not_widen_the_spread(tmp_path: Path) -> None:
    eng, _ = make(tmp_path, UNI)
    vals = signal(260)
    vals[250] += 40
    run(eng, ["value"], vals[:250, None])
    (table,) = (lane.anomaly for lane in eng._lanes.values())
    assert isinstance(table.scorer, SurpriseRows)
    before = table.scorer.scorer.spread.abs_ewma.copy()
    run(eng, ["value"], vals[250:251, None], start=250)
    np.testing.assert_array_equal(table.scorer.scorer.spread.abs_ewma, before)
    run(eng, ["value"], vals[251:, None], start=251)
    assert not np.array_equal(table.scorer.scorer.spread.abs_ewma, before)  # normal steps do learn


def test_checkpoint_round_trip_carries_the_surprise_state(tmp_path: Path) -> None:
    vals = signal(330)
    vals[310] += 25
    ref, _ = make(tmp_path / "ref", UNI)
    want, _ = run(ref, ["value"], vals[:, None])

    eng, _ = make(tmp_path / "a", UNI)
    run(eng, ["value"], vals[:250, None])
    assert eng.checkpoint() == 1
    eng.close()
    again = Engine(eng.settings, ModelRegistry(eng.settings.models.dir), None, Metrics())
    assert again.restore() == 1
    got, _ = run(again, ["value"], vals[250:, None], start=250)
    # Every stage (spread, peak, range, rising edge) continued where it stopped: same scores.
    np.testing.assert_array_equal(got, want[250:])
    assert got[60] > 0.9


def test_checkpoint_from_the_spread_scorer_keeps_streams_and_relearns_scores(tmp_path: Path) -> None:
    eng, _ = make(tmp_path, UNI, scorer="spread", min_count=2, window=3)
    run(eng, ["value"], signal(40)[:, None])
    assert eng.checkpoint() == 1
    surprise = settings_for(tmp_path, eng.settings.models.dir, anomaly=SURPRISE)
    again = Engine(surprise, ModelRegistry(surprise.models.dir), None, Metrics())
    assert again.restore() == 1  # recurrent state kept: no warm-up
    s = again.stream("dev/value")
    assert s is not None and s.status == "ok"
    scores, _ = run(again, ["value"], signal(10, 3)[:, None], start=40)
    assert (scores == 0.0).all()  # the surprise scorer learns anew: no verdicts yet


def test_backtest_command_selects_the_scorer(tmp_path: Path) -> None:
    import csv

    from service.backtest import backtest_frame
    from service.cli import main

    write_model(tmp_path / "models", UNI)
    vals = signal(260)
    vals[240] += 40
    stamps = [T0 + i * C for i in range(len(vals))]
    src = tmp_path / "in.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        w.writerows([t // 10**9, repr(float(x))] for t, x in zip(stamps, vals, strict=True))
    out = tmp_path / "out.csv"
    args = ["backtest", "--model", "m", "--models-dir", str(tmp_path / "models"), "--csv", str(src), "--out", str(out)]
    assert main([*args, "--scorer", "surprise", "--min-count", "1", "--window", "1"]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    settings = settings_for(tmp_path, tmp_path / "models", anomaly=SURPRISE)
    want = backtest_frame(tmp_path / "models", "m", stamps, [[v] for v in vals], ["value"], settings)
    assert [r["score"] for r in rows] == ["" if r.score is None else repr(r.score) for r in want]
    assert float(rows[240]["score"]) > 0.9 and rows[240]["event"] == "firing"
    assert main([*args, "--scorer", "surprise", "--spread-alpha", "2"]) == 2  # refused: alpha must be <= 1
