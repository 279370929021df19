"""deploy/prometheus/rules.yml against a real ``sensorcast serve``'s /metrics.

- Every metric a rule's expression names is one the running service exports (family or
  sample name), so a renamed metric cannot leave a rule that never fires.
- ``promtool check rules`` and ``promtool test rules`` (deploy/prometheus/rules_test.yml)
  pass, when promtool is installed (Debian's ``prometheus`` package, ``make setup-system``).
- The per-stream firing series are capped at ``api.metrics_firing_streams``, and
  ``sensorcast_alerts_firing{check}`` still counts every firing stream.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.serving import REPO, ServeProcess
from tests.mqttwatch import publish_all
from tests.waiting import wait_until
from tools.localservers import Mosquitto
from tools.modelkit import KitSpec, write_model

pytestmark = pytest.mark.integration

RULES = REPO / "deploy" / "prometheus" / "rules.yml"
C = 60 * 10**9
# Metrics Prometheus makes itself, not the service.
PROMETHEUS_OWN = {"up"}


def rule_expressions() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [(rule["alert"], rule["expr"]) for group in doc["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: ours all start with sensorcast_; label names never do."""
    return set(re.findall(r"\b(sensorcast_[a-z0-9_]+|up)\b(?=\s*[{\[)\s=!<>*+/-]|\s*$)", expr))


def exported(metrics_text: str) -> set[str]:
    """Family names and every sample name they may carry (a labelled metric without children has none yet)."""
    names: set[str] = set()
    for fam in text_string_to_metric_families(metrics_text):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def publish(port: int, device: str, values: list[float], t0: int) -> None:
    publish_all(port, [(f"sensors/{device}/value", orjson.dumps({"ts": t0 + i * C, "value": v}))
                       for i, v in enumerate(values)])


@pytest.fixture
def service(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[ServeProcess]:
    write_model(tmp_path / "models", KitSpec(name="m", mean=(20.0,), std=(3.0,), warmup_steps=5))
    svc = ServeProcess(
        tmp_path / "svc", mosquitto.url, f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "models",
        extra_env={
            "SENSORCAST_MODELS__BINDINGS": '[{"model": "m", "rules": {"max": 50}}]',
            "SENSORCAST_API__METRICS_FIRING_STREAMS": "1",
        },
    )
    svc.start()
    yield svc
    svc.kill()


def test_rules_name_only_exported_metrics_and_per_stream_series_are_capped(
    service: ServeProcess, mosquitto: Mosquitto
) -> None:
    rules = rule_expressions()
    assert len(rules) >= 10
    for name, expr in rules:
        assert metric_names(expr), f"{name}: no metric found in {expr!r}"

    # Two streams go out of range (max 50 from the binding's rules): both fire out_of_range.
    t0 = (time.time_ns() // C - 30) * C
    for device in ("hot-a", "hot-b"):
        publish(mosquitto.port, device, [20.0 + 0.1 * (i % 3) for i in range(24)] + [80.0] * 5, t0)

    def firing() -> dict[str, float]:
        text = service.get("/metrics").text
        return {f"{s.name}{sorted(s.labels.items())}": s.value for fam in text_string_to_metric_families(text)
                for s in fam.samples if s.name in ("sensorcast_alerts_firing", "sensorcast_stream_alert_firing")}

    wait_until(lambda: firing().get("sensorcast_alerts_firing[('check', 'out_of_range')]") == 2, timeout=30,
               what="both streams firing out_of_range")
    got = firing()
    per_stream = {k: v for k, v in got.items() if k.startswith("sensorcast_stream_alert_firing")}
    assert len(per_stream) == 1, got  # api.metrics_firing_streams=1: one stream listed
    assert list(per_stream.values()) == [1.0]
    assert "'check', 'out_of_range'" in next(iter(per_stream))
    assert got["sensorcast_alerts_firing[('check', 'anomaly')]"] == 0  # every check is listed, 0 included

    text = service.get("/metrics").text
    have = exported(text)
    assert "sensorcast_ready 1.0" in text
    missing = {name: sorted(metric_names(expr) - have - PROMETHEUS_OWN) for name, expr in rules}
    assert not any(missing.values()), f"rules name metrics the service does not export: {missing}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_checks_and_unit_tests_pass() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "rules_test.yml"], cwd=RULES.parent, capture_output=True,
                          text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr
