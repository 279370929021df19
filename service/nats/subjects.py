"""Readings' subjects on NATS, and the servers' partition mapping built from the topic template.

Devices publish MQTT to NATS's MQTT listener; NATS turns the topic's ``/`` into ``.`` (and a
``.`` inside a level into ``//``), so ``sensors/dev1/temp`` is the subject
``sensors.dev1.temp``. The servers' mapping prefixes a partition picked by hashing the
device level: ``p.3.sensors.dev1.temp``. Every quantity of one device lands in the same
partition, so multivariate models keep their features together.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from service.errors import ConfigError
from service.ingest.topics import TopicTemplate

if TYPE_CHECKING:
    from nats.aio.msg import Msg

PREFIX = "p"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def mapping(topic_template: str, partitions: int, prefix: str = PREFIX) -> tuple[str, str]:
    """(source, destination) of the subject mapping for ``ingest.topic``: each placeholder or ``+``
    level is a wildcard, and the partition hashes the ``{device}`` level.

    >>> mapping("sensors/{device}/{quantity}", 16)
    ('sensors.*.*', 'p.{{partition(16,1)}}.sensors.{{wildcard(1)}}.{{wildcard(2)}}')
    """
    TopicTemplate(topic_template)  # the same refusals as the MQTT path
    levels = topic_template.split("/")
    if levels[-1] == "#":
        raise ConfigError(
            f"ingest.topic {topic_template!r}: a final '#' cannot be partitioned on NATS (a mapping needs "
            "a fixed number of levels); spell the levels out"
        )
    src: list[str] = []
    dst: list[str] = []
    device = 0
    n = 0
    for level in levels:
        if level.startswith("{") or level == "+":
            n += 1
            src.append("*")
            dst.append(f"{{{{wildcard({n})}}}}")
            if level == "{device}":
                device = n
        else:
            src.append(level)
            dst.append(level)
    if not device:
        raise ConfigError(f"ingest.topic {topic_template!r}: no {{device}} level to partition on")
    return ".".join(src), f"{prefix}.{{{{partition({partitions},{device})}}}}." + ".".join(dst)


def server_mapping_conf(topic_template: str, partitions: int, prefix: str = PREFIX) -> str:
    """The ``mappings`` block of a nats-server configuration."""
    src, dst = mapping(topic_template, partitions, prefix)
    return f'mappings {{\n  "{src}": "{dst}"\n}}\n'


def readings_subjects(prefix: str = PREFIX) -> str:
    return f"{prefix}.>"


def partition_filter(partition: int, prefix: str = PREFIX) -> str:
    return f"{prefix}.{partition}.>"


def partition_of(subject: str) -> int:
    """``p.3.sensors.dev1.temp`` -> 3; ValueError for a subject outside the mapping."""
    parts = subject.split(".", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        raise ValueError(f"subject {subject!r} is not a partitioned reading (p.<n>.<topic>)")
    return int(parts[1])


def topic_of(subject: str) -> str:
    """``p.3.sensors.dev1.temp`` -> ``sensors/dev1/temp``, the MQTT topic the device used."""
    parts = subject.split(".", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        raise ValueError(f"subject {subject!r} is not a partitioned reading (p.<n>.<topic>)")
    return "/".join(token.replace("//", ".") for token in parts[2].split("."))


def subject_of(topic: str) -> str:
    """An MQTT topic as NATS spells it: ``a/b.c`` -> ``a.b//c``."""
    return ".".join(level.replace(".", "//") for level in topic.split("/"))


def js_time_ns(msg: Msg) -> int:
    """When the stream stored ``msg``, in ns at microsecond precision: the same value on every
    redelivery and replay, for the writers and the inference replicas alike, so a reading
    without its own time gets one time everywhere."""
    return (msg.metadata.timestamp - _EPOCH) // _US * 1000
