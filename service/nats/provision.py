"""The JetStream streams and buckets sensorcast uses, created or updated at start.

Every process calls ``ensure_all`` (it is idempotent), so a fresh cluster needs no set-up step.
Calls made while the cluster elects a leader (a node just died) time out for a few seconds
(measured: about 6 s): they are retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from service.config import NatsSettings
from service.nats import subjects
from service.nats.link import why

log = logging.getLogger(__name__)
T = TypeVar("T")

JS_NO_PLACEMENT = 10005  # JetStream's error code for "no suitable peers for placement"
ALERT_DUPLICATE_WINDOW_S = 3600.0  # a replayed alert (failover) is dropped by its message id within this


@dataclass(frozen=True, slots=True)
class Names:
    readings: str  # stream: p.<partition>.<topic>
    alerts: str  # stream: the alert events, deduplicated by message id
    alert_subjects: str  # what the alerts stream captures: alert_prefix + the alert topic's subjects
    leases: str  # KV: partition leases and replica membership (TTL = lease_ttl_s)
    ckpt: str  # KV: each partition's checkpoint record (sequence, epoch, object)
    alert_state: str  # KV: the retained state of each stream's checks
    state: str  # object store: the checkpoints' engine state
    alert_prefix: str = ""  # publishers send an alert to alert_prefix + its topic's subject

    @classmethod
    def of(cls, settings: NatsSettings, alert_subjects: str = "sensorcast.alerts.>") -> Names:
        """``alert_subjects``: the subjects subscribers see (the alert topic's). The stream captures
        them under a prefix holding the stream name: two deployments on one cluster never capture
        the same subjects (JetStream refuses that), and what subscribers see is published apart,
        once the stream took an alert as new (service/nats/outputs.py)."""
        s = settings.stream
        prefix = f"sc.{s}."
        return cls(s, f"{s}_ALERTS", prefix + alert_subjects, f"{s}_leases", f"{s}_ckpt", f"{s}_alert_state",
                   f"{s}_state", prefix)


async def retrying(what: str, call: Callable[[], Awaitable[T]], timeout_s: float = 60.0) -> T:
    """``call()`` until it succeeds or ``timeout_s`` passes (JetStream answers nothing during an election)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.2
    while True:
        try:
            return await call()
        except BadRequestError as e:
            # "no suitable peers for placement": a cluster that just started does not know all its
            # peers yet (seen here right after start_nats(3)); any other refusal is real.
            # (getattr: nats-py's KeyWrongLastSequenceError is a BadRequestError without err_code.)
            if getattr(e, "err_code", None) != JS_NO_PLACEMENT or loop.time() + delay >= deadline:
                raise
            log.info("NATS: %s: no placement yet; retrying in %.1f s", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        except NotFoundError:
            raise  # a real refusal, not an election
        except Exception as e:  # timeouts, "no responders", connection blips
            if loop.time() + delay >= deadline:
                raise
            log.info("NATS: %s failed (%s); retrying in %.1f s", what, why(e), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    try:
        await js.stream_info(cfg.name or "")
    except NotFoundError:
        await js.add_stream(cfg)
        log.info("NATS: created stream %s (%s, %s replicas)", cfg.name, cfg.subjects, cfg.num_replicas)
        return
    await js.update_stream(cfg)


async def ensure_all(js: JetStreamContext, settings: NatsSettings, names: Names | None = None,
                     timeout_s: float = 60.0) -> Names:
    """Create or update every stream and bucket; returns their names."""
    n = names or Names.of(settings)
    r = settings.replicas
    readings = StreamConfig(
        name=n.readings, subjects=[subjects.readings_subjects()], num_replicas=r,
        max_age=settings.retention_h * 3600.0, duplicate_window=120.0,
    )
    alerts = StreamConfig(
        name=n.alerts, subjects=[n.alert_subjects], num_replicas=r,
        max_age=settings.retention_h * 3600.0, duplicate_window=ALERT_DUPLICATE_WINDOW_S,
    )
    await retrying(f"stream {n.readings}", lambda: _stream(js, readings), timeout_s)
    await retrying(f"stream {n.alerts}", lambda: _stream(js, alerts), timeout_s)
    buckets = [
        KeyValueConfig(bucket=n.leases, history=1, ttl=settings.lease_ttl_s, replicas=r),
        KeyValueConfig(bucket=n.ckpt, history=1, replicas=r),
        KeyValueConfig(bucket=n.alert_state, history=1, replicas=r),
    ]
    for cfg in buckets:
        await retrying(f"bucket {cfg.bucket}", lambda cfg=cfg: js.create_key_value(cfg), timeout_s)  # type: ignore[misc]
    await retrying(f"object store {n.state}", lambda: js.create_object_store(n.state, ObjectStoreConfig(
        bucket=n.state, replicas=r)), timeout_s)
    return n


async def remove_all(js: JetStreamContext, names: Names) -> list[str]:
    """Delete every stream and bucket ``ensure_all`` made (a reset; tests). Returns what existed.

    One cluster holds one readings stream at a time (its subjects ``p.>`` may not overlap
    another's), so a deployment's set must go before another can be created.
    """
    gone = []
    for stream in (names.readings, names.alerts, f"KV_{names.leases}", f"KV_{names.ckpt}",
                   f"KV_{names.alert_state}", f"OBJ_{names.state}"):
        try:
            await js.delete_stream(stream)
            gone.append(stream)
        except NotFoundError:
            pass
    return gone
