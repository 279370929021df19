"""Payloads to readings: bare number, JSON object or array of objects, line protocol.

``Decoder.decode(topic, payload, received_ns)`` never raises: it returns the good
readings and one ``Refusal(reason, detail)`` per thing it refused, so a batch with one
bad element keeps the rest. An unexpected exception of any type (a bug) becomes a refusal
with reason ``internal`` rather than ending the caller's intake thread. Reasons are short
labels used as metric labels:

    too_large, empty, bad_encoding, bad_json, bad_line_protocol, bad_shape, topic_mismatch,
    no_device, no_value, non_numeric, not_finite, bad_timestamp, too_old, too_far_future,
    bad_name, too_many_tags, key_too_long, internal

JSON objects: ``{"ts": ..., "value": 1.5}`` when the topic names the quantity; otherwise
every numeric field is a quantity (``{"ts": ..., "temperature": 21.5, "humidity": 40}``).
``ts`` (or ``time``/``timestamp``) is optional (receive time), ``device`` names the device
when the topic does not, and ``tags`` may add string tags. ``unit``: the values' unit, a
string or per named field (``{"temperature": "°C"}``); a line-protocol ``unit`` tag or a
``{unit}`` topic level too. Never a value, a tag or part of the stream's identity: it goes to
``on_unit`` (service/units.py) only when it changes, and a bad one never costs the reading.

The topic always wins: a device, quantity or tag that the topic sets can be repeated by
the payload (JSON ``device``/``quantity``/``tags``, line-protocol ``device``/``quantity``
tags and tags, field names other than ``value``) but never changed; a different value
refuses that reading as ``topic_mismatch``. Payloads may add tags the topic does not set.
A reading with more than ``ingest.max_tags`` extra tags (``too_many_tags``) or an escaped
series key over ``ingest.max_series_key_bytes`` (``key_too_long``) is refused here, since
the store would refuse it later (influxd: 64 KiB keys) and block the batch around it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson

from service.config import IngestSettings
from service.errors import DecodeError
from service.ingest.lineparse import field_number, parse_line
from service.ingest.timestamps import to_ns
from service.ingest.topics import TopicFields, TopicTemplate
from service.records import NS_PER_S, Reading, StreamKey
from service.store.lineproto import series_key_bytes, stream_problem

log = logging.getLogger(__name__)

TS_KEYS = ("ts", "time", "timestamp")
_META_KEYS = frozenset((*TS_KEYS, "tags", "device", "unit"))
_JSON_START = frozenset(b'{["')
_CACHE_MAX = 100_000  # topics/streams remembered as valid; cleared when full
# Only short topics and keys are cached: hostile 64 KiB topics must not multiply memory.
_CACHE_KEY_MAX = 512
_INTERNAL_LOG_EVERY_S = 60.0
_UNIT_CACHE_MAX = 64  # longer units are refused downstream: remembered only as "a bad one"
_BAD_UNIT = object()
Problem = tuple[str, str] | None  # (reason, detail) of a stream that cannot be stored, or None


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    detail: str


def internal_refusal(e: BaseException, where: str = "") -> Refusal:
    """The refusal for an unexpected exception: its type and a truncated message."""
    return Refusal("internal", f"{where}{type(e).__name__}: {str(e)[:200]}")


@dataclass(frozen=True, slots=True)
class DecodeResult:
    readings: list[Reading] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)


class Decoder:
    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.template = TopicTemplate(settings.topic)
        self._max_past_ns = int(settings.max_past_s * NS_PER_S)
        self._max_future_ns = int(settings.max_future_s * NS_PER_S)
        self._topics: dict[str, TopicFields] = {}
        # topic -> (stream, problem) for readings whose stream is the topic's alone:
        # most traffic, so validation and StreamKey hashing happen once per topic.
        self._topic_streams: dict[str, tuple[StreamKey, Problem]] = {}
        self._streams: dict[StreamKey, Problem] = {}
        self._internal_logged = -1e9
        # Who hears of a stream's unit (the pipeline's UnitBook.seen); None: units are ignored.
        self.on_unit: Callable[[StreamKey, object], None] | None = None
        self._units: dict[StreamKey, object] = {}  # the last unit passed on, per stream...
        self._topic_units: dict[str, str] = {}  # ...and per topic, for the topic's own stream

    # --- entry point ---------------------------------------------------------------------
    def decode(self, topic: str, payload: bytes, received_ns: int) -> DecodeResult:
        out = DecodeResult()
        try:
            self._decode(topic, payload, received_ns, out)
        except DecodeError as e:
            out.refusals.append(Refusal(e.reason, e.detail))
        except Exception as e:  # a bug here must cost one message, never the intake thread
            out.refusals.append(internal_refusal(e))
            self._log_internal(e)
        return out

    def _decode(self, topic: str, payload: bytes, received_ns: int, out: DecodeResult) -> None:
        fields = self._topic(topic)
        if len(payload) > self.settings.max_payload_bytes:
            raise DecodeError("too_large", f"{len(payload)} bytes > limit {self.settings.max_payload_bytes}")
        body = payload.strip()
        if body.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some device firmware sends
            body = body[3:].strip()
        if not body:
            raise DecodeError("empty", "empty payload")
        if body[0] in _JSON_START or body in (b"true", b"false", b"null"):
            self._json(topic, fields, body, received_ns, out)
            return
        try:
            value: float | None = float(body)
        except ValueError:
            value = None  # decoded below, outside this handler (no chained tracebacks)
        if value is not None:
            self._add_topic(topic, fields, value, received_ns, received_ns, out, fields.unit)
        elif b" " in body and b"=" in body:  # `series field=value [ts]` at least
            self._lines(fields, body, received_ns, out)
        else:
            raise DecodeError("non_numeric", f"payload {body[:40]!r} is not a number")

    def _log_internal(self, e: BaseException) -> None:
        """Traceback of an unexpected exception, at most once a minute (the refusal is counted)."""
        now = time.monotonic()
        if now - self._internal_logged >= _INTERNAL_LOG_EVERY_S:
            self._internal_logged = now
            log.error("decoder raised %s (refused as 'internal')", type(e).__name__, exc_info=e)

    # --- parts ---------------------------------------------------------------------------
    def _topic(self, topic: str) -> TopicFields:
        f = self._topics.get(topic)
        if f is None:
            f = self.template.match(topic)
            if len(topic) <= _CACHE_KEY_MAX:
                if len(self._topics) >= _CACHE_MAX:
                    self._topics.clear()
                self._topics[topic] = f
        return f

    def _quantity(self, fields: TopicFields, name: str | None) -> str:
        if fields.quantity is not None:
            return fields.quantity
        if name is None:
            raise DecodeError(
                "no_value", f"template {self.template.template!r} has no {{quantity}}: send named fields"
            )
        return name

    def _json(self, topic: str, fields: TopicFields, body: bytes, received_ns: int, out: DecodeResult) -> None:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            reason = "bad_encoding" if "utf-8" in str(e).lower() else "bad_json"
            raise DecodeError(reason, str(e)[:200]) from None
        if isinstance(doc, dict):
            self._object(topic, fields, doc, received_ns, out)
        elif isinstance(doc, list):
            for i, item in enumerate(doc):
                if isinstance(item, dict):
                    try:
                        self._object(topic, fields, item, received_ns, out)
                    except DecodeError as e:
                        out.refusals.append(Refusal(e.reason, f"[{i}] {e.detail}"))
                    except Exception as e:  # one element's bug must not lose the rest of the batch
                        out.refusals.append(internal_refusal(e, f"[{i}] "))
                        self._log_internal(e)
                else:
                    out.refusals.append(Refusal("bad_shape", f"[{i}] is {type(item).__name__}, not an object"))
        elif isinstance(doc, bool) or doc is None or isinstance(doc, str):
            raise DecodeError("non_numeric", f"payload is JSON {type(doc).__name__}")
        else:  # a JSON number that float() did not take (cannot happen) or another type
            raise DecodeError("bad_shape", f"payload is JSON {type(doc).__name__}")

    def _object(
        self, topic: str, fields: TopicFields, obj: dict[str, object], received_ns: int, out: DecodeResult
    ) -> None:
        ts_ns = received_ns
        for k in TS_KEYS:
            if k in obj:
                ts_ns = to_ns(obj[k])
                break
        dev = obj.get("device")
        if fields.device is None:
            if not isinstance(dev, str):
                raise DecodeError("no_device", "topic has no {device} and the object no \"device\" string")
            device = dev
        else:
            device = fields.device
            _same("device", device, dev)
        unit = obj.get("unit")
        if unit is None:
            unit = fields.unit
        tags = fields.tags
        extra = obj.get("tags")
        if extra is not None:
            if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
                raise DecodeError("bad_shape", "\"tags\" must be an object of strings")
            tags = _merge_tags(fields.tags, extra)
        if fields.quantity is not None or ("value" in obj and "quantity" in obj):
            if "value" not in obj:
                raise DecodeError("no_value", "object has no \"value\"")
            q = obj.get("quantity")
            if fields.quantity is not None:
                _same("quantity", fields.quantity, q)
                if extra is None and fields.device is not None:  # the topic's stream alone: cached
                    self._add_topic(topic, fields, obj["value"], ts_ns, received_ns, out, unit)
                    return
                q = fields.quantity
            if not isinstance(q, str):
                raise DecodeError("bad_shape", "\"quantity\" must be a string")
            self._add(device, q, obj["value"], ts_ns, received_ns, tags, out, unit)
            return
        named = [(k, v) for k, v in obj.items() if k not in _META_KEYS]
        if not named:
            raise DecodeError("no_value", "object has no named value fields")
        by_field = unit if isinstance(unit, dict) else None  # {"temperature": "°C", ...}
        for k, v in named:
            try:
                u = unit if by_field is None else by_field.get(k, fields.unit)
                self._add(device, k, v, ts_ns, received_ns, tags, out, u)
            except DecodeError as e:
                out.refusals.append(Refusal(e.reason, f"{k[:40]!r}: {e.detail}"))

    def _lines(self, fields: TopicFields, body: bytes, received_ns: int, out: DecodeResult) -> None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("bad_encoding", "payload is not UTF-8") from None
        data_lines = 0
        for n, line in enumerate(text.split("\n"), 1):
            # Line protocol's whitespace is ASCII: str.strip() would also eat U+0085 and
            # friends and turn `\x85#...` into a comment, a message that vanishes unseen.
            line = line.strip(" \t\r")
            if not line or line.startswith("#"):
                continue
            data_lines += 1
            try:
                self._line(fields, line, n, received_ns, out)
            except DecodeError as e:
                out.refusals.append(Refusal(e.reason, f"line {n}: {e.detail}"))
            except Exception as e:  # one line's bug must not lose the other lines
                out.refusals.append(internal_refusal(e, f"line {n}: "))
                self._log_internal(e)
        if data_lines == 0:  # every message yields readings or a refusal, never nothing
            raise DecodeError("empty", "no data lines (only blank lines and comments)")

    def _line(self, fields: TopicFields, line: str, n: int, received_ns: int, out: DecodeResult) -> None:
        p = parse_line(line)
        ts_ns = received_ns if p.ts is None else to_ns(p.ts)
        tags = dict(p.tags)
        tag_device = tags.pop("device", None)
        tag_quantity = tags.pop("quantity", None)
        unit = tags.pop("unit", None) or fields.unit
        # The measurement is only a fallback name, never a claim against the topic.
        if fields.device is None:
            device = tag_device or p.measurement
        else:
            device = fields.device
            _same("device", device, tag_device)
        if fields.quantity is not None:
            _same("quantity", fields.quantity, tag_quantity)
        tag_t = _merge_tags(fields.tags, tags)
        for key, raw in p.fields.items():
            try:
                if fields.quantity is None:
                    q = (tag_quantity or p.measurement) if key == "value" else key
                else:
                    if key != "value":  # a named field is a quantity: the topic's, or a mismatch
                        _same("quantity", fields.quantity, key)
                    q = fields.quantity
                self._add(device, q, field_number(raw), ts_ns, received_ns, tag_t, out, unit)
            except DecodeError as e:
                out.refusals.append(Refusal(e.reason, f"line {n} field {key[:40]!r}: {e.detail}"))

    def _add_topic(
        self, topic: str, fields: TopicFields, value: object, ts_ns: int, received_ns: int, out: DecodeResult,
        unit: object = None,
    ) -> None:
        """``_add`` for the stream named by the topic alone (the common case), cached."""
        cached = self._topic_streams.get(topic)
        if cached is None:
            stream = StreamKey(fields.device or "", self._quantity(fields, None), fields.tags)
            cached = (stream, self._problem(stream))
            if len(topic) <= _CACHE_KEY_MAX:
                if len(self._topic_streams) >= _CACHE_MAX:
                    self._topic_streams.clear()
                self._topic_streams[topic] = cached
        stream, problem = cached
        v = self._check(value, ts_ns, received_ns)
        if problem:
            raise DecodeError(*problem)
        out.readings.append(Reading(stream, ts_ns, v))
        # Checked by topic (its hash is cached in the str): cheaper than hashing the StreamKey.
        if unit is not None and self.on_unit is not None and self._topic_units.get(topic) != unit:
            self._unit(stream, unit)
            if len(topic) <= _CACHE_KEY_MAX and isinstance(unit, str) and len(unit) <= _UNIT_CACHE_MAX:
                if len(self._topic_units) >= _CACHE_MAX:
                    self._topic_units.clear()
                self._topic_units[topic] = unit

    def _unit(self, stream: StreamKey, unit: object) -> None:
        """Pass ``unit`` on when it differs from the last one passed on for ``stream`` (units change rarely)."""
        on_unit = self.on_unit
        if on_unit is None:
            return
        key = unit if isinstance(unit, str) and len(unit) <= _UNIT_CACHE_MAX else _BAD_UNIT
        if self._units.get(stream) == key:
            return
        if len(self._units) >= _CACHE_MAX:
            self._units.clear()
        self._units[stream] = key
        try:
            on_unit(stream, unit)
        except Exception as e:  # a unit never costs the reading it came with
            self._log_internal(e)

    def _problem(self, stream: StreamKey) -> Problem:
        """Why the store could not take ``stream`` (reason, detail), or None."""
        s = self.settings
        if len(stream.tags) > s.max_tags:
            return "too_many_tags", f"{len(stream.tags)} tags > limit {s.max_tags}"
        p = stream_problem(stream)
        if p:
            return "bad_name", p
        n = series_key_bytes(stream)
        if n > s.max_series_key_bytes:
            return "key_too_long", f"escaped series key of {n} bytes > limit {s.max_series_key_bytes}"
        return None

    def _check(self, value: object, ts_ns: int, received_ns: int) -> float:
        """The value as a finite float within the time window, or DecodeError."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DecodeError("non_numeric", f"value of type {type(value).__name__} is not a number")
        try:
            v = float(value)
        except OverflowError:
            raise DecodeError("not_finite", "integer too large for a float") from None
        if not math.isfinite(v):
            raise DecodeError("not_finite", f"value {v!r}")
        if ts_ns < received_ns - self._max_past_ns:
            raise DecodeError("too_old", f"timestamp {ts_ns} ns is more than {self.settings.max_past_s:g} s old")
        if ts_ns > received_ns + self._max_future_ns:
            raise DecodeError(
                "too_far_future", f"timestamp {ts_ns} ns is more than {self.settings.max_future_s:g} s ahead"
            )
        return v

    def _add(
        self,
        device: str,
        quantity: str,
        value: object,
        ts_ns: int,
        received_ns: int,
        tags: tuple[tuple[str, str], ...],
        out: DecodeResult,
        unit: object = None,
    ) -> None:
        v = self._check(value, ts_ns, received_ns)
        stream = StreamKey(device, quantity, tags)
        problem = self._streams.get(stream, "")
        if problem == "":
            problem = self._problem(stream)
            if problem is None and sum(len(a) + len(b) for a, b in tags) <= _CACHE_KEY_MAX:
                if len(self._streams) >= _CACHE_MAX:
                    self._streams.clear()
                self._streams[stream] = problem
        if problem:
            raise DecodeError(*problem)
        out.readings.append(Reading(stream, ts_ns, v))
        if unit is not None:
            self._unit(stream, unit)


def _same(what: str, topic_value: str, payload_value: object) -> None:
    """Refuse a payload that names a different ``what`` than the topic (None: not named)."""
    if payload_value is not None and payload_value != topic_value:
        raise DecodeError(
            "topic_mismatch", f"payload {what} {str(payload_value)[:40]!r} differs from the topic's {topic_value[:40]!r}"
        )


def _merge_tags(topic_tags: tuple[tuple[str, str], ...], extra: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Topic tags plus the payload's; a payload tag may repeat a topic tag, never change it."""
    if not extra:
        return topic_tags
    merged = dict(topic_tags)
    for k, v in extra.items():
        _same(f"tag {k[:40]!r}", merged.setdefault(k, v), v)
    return tuple(sorted(merged.items()))
