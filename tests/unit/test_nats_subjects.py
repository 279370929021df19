"""Subjects of readings on NATS and the servers' partition mapping (pure functions)."""

from __future__ import annotations

import pytest

from service.errors import ConfigError
from service.nats import subjects


def test_mapping_partitions_on_the_device_level() -> None:
    assert subjects.mapping("sensors/{device}/{quantity}", 16) == (
        "sensors.*.*", "p.{{partition(16,1)}}.sensors.{{wildcard(1)}}.{{wildcard(2)}}")
    src, dst = subjects.mapping("plant/+/{device}/{quantity}", 8)
    assert src == "plant.*.*.*"
    assert dst.startswith("p.{{partition(8,2)}}.plant.")


@pytest.mark.parametrize("template", ["sensors/{quantity}", "sensors/{device}/#"])
def test_mapping_refuses_what_cannot_be_partitioned(template: str) -> None:
    with pytest.raises(ConfigError):
        subjects.mapping(template, 4)


@pytest.mark.parametrize("topic", ["sensors/dev1/temp", "sensors/dev.1/temp", "sensors/a.b.c/x"])
def test_topic_round_trip(topic: str) -> None:
    subject = subjects.subject_of(topic)  # a '.' inside a level is '//' (as NATS's MQTT side spells it)
    assert len(subject.split(".")) == 3
    assert subjects.topic_of(f"p.7.{subject}") == topic
    assert subjects.partition_of(f"p.7.{subject}") == 7


@pytest.mark.parametrize("bad", ["sensors.dev1.temp", "p.x.sensors.a", "p.3"])
def test_unpartitioned_subjects_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        subjects.topic_of(bad)
    with pytest.raises(ValueError):
        subjects.partition_of(bad)
