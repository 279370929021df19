"""sensorcast_stream_alert_firing: bounded to the top N streams by score, rebuilt at each scrape."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from service.metrics import Metrics


def samples(m: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for fam in text_string_to_metric_families(m.render().decode())
            for s in fam.samples if s.name == name}


def test_top_n_by_score_and_totals_over_every_stream() -> None:
    m = Metrics()
    firing = [
        ("low/t", ["anomaly"], 0.2),
        ("high/t", ["anomaly", "out_of_range"], 0.9),
        ("nan/t", ["stuck"], math.nan),  # unscored checks rank last, never first
        ("none/t", ["silent"], None),
        ("mid/t", ["anomaly"], 0.5),
    ]
    m.set_firing(firing, 2, ("anomaly", "stuck", "silent", "out_of_range", "rate_of_change"))
    per = samples(m, "sensorcast_stream_alert_firing")
    assert {dict(k)["stream"] for k in per} == {"high/t", "mid/t"}
    assert len(per) == 3 and set(per.values()) == {1.0}  # high/t's two checks, mid/t's one
    totals = {dict(k)["check"]: v for k, v in samples(m, "sensorcast_alerts_firing").items()}
    assert totals == {"anomaly": 3, "stuck": 1, "silent": 1, "out_of_range": 1, "rate_of_change": 0}


def test_a_stream_that_stops_firing_loses_its_series() -> None:
    m = Metrics()
    m.set_firing([("a/t", ["anomaly"], 0.9), ("b/t", ["anomaly"], 0.8)], 5)
    m.set_firing([("b/t", ["anomaly"], 0.8)], 5)
    assert [dict(k)["stream"] for k in samples(m, "sensorcast_stream_alert_firing")] == ["b/t"]
    m.set_firing([], 5)
    assert samples(m, "sensorcast_stream_alert_firing") == {}
    assert samples(m, "sensorcast_alerts_firing") == {(("check", "anomaly"),): 0.0}
