"""Payloads to readings: bare number, JSON object or array of objects, line protocol.

``Decoder.decode(topic, payload, received_ns)`` never raises: it returns the good
readings and one ``Refusal(reason, detail)`` per thing it refused, so a batch with one
bad element keeps the rest. Reasons are short labels used as metric labels:

    too_large, empty, bad_encoding, bad_json, bad_line_protocol, bad_shape, topic_mismatch,
    no_device, no_value, non_numeric, not_finite, bad_timestamp, too_old, too_far_future,
    bad_name

JSON objects: ``{"ts": ..., "value": 1.5}`` when the topic names the quantity; otherwise
every numeric field is a quantity (``{"ts": ..., "temperature": 21.5, "humidity": 40}``).
``ts`` (or ``time``/``timestamp``) is optional (receive time), ``device`` names the device
when the topic does not, and ``tags`` may add string tags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson

from service.config import IngestSettings
from service.errors import DecodeError
from service.ingest.lineparse import field_number, parse_line
from service.ingest.timestamps import to_ns
from service.ingest.topics import TopicFields, TopicTemplate
from service.records import NS_PER_S, Reading, StreamKey
from service.store.lineproto import stream_problem

TS_KEYS = ("ts", "time", "timestamp")
_META_KEYS = frozenset((*TS_KEYS, "tags", "device"))
_JSON_START = frozenset(b'{["')
_CACHE_MAX = 100_000  # topics/streams remembered as valid; cleared when full


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    detail: str


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
        self._topic_streams: dict[str, tuple[StreamKey, str | None]] = {}
        self._streams: dict[StreamKey, str | None] = {}

    # --- entry point ---------------------------------------------------------------------
    def decode(self, topic: str, payload: bytes, received_ns: int) -> DecodeResult:
        out = DecodeResult()
        try:
            fields = self._topic(topic)
            if len(payload) > self.settings.max_payload_bytes:
                raise DecodeError(
                    "too_large", f"{len(payload)} bytes > limit {self.settings.max_payload_bytes}"
                )
            body = payload.strip()
            if not body:
                raise DecodeError("empty", "empty payload")
            if body[0] in _JSON_START or body in (b"true", b"false", b"null"):
                self._json(topic, fields, body, received_ns, out)
            else:
                try:
                    value = float(body)
                except ValueError:
                    if b" " in body and b"=" in body:  # `series field=value [ts]` at least
                        self._lines(fields, body, received_ns, out)
                    else:
                        raise DecodeError("non_numeric", f"payload {body[:40]!r} is not a number") from None
                else:
                    self._add_topic(topic, fields, value, received_ns, received_ns, out)
        except DecodeError as e:
            out.refusals.append(Refusal(e.reason, e.detail))
        return out

    # --- parts ---------------------------------------------------------------------------
    def _topic(self, topic: str) -> TopicFields:
        f = self._topics.get(topic)
        if f is None:
            f = self.template.match(topic)
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
                else:
                    out.refusals.append(Refusal("bad_shape", f"[{i}] is {type(item).__name__}, not an object"))
        elif isinstance(doc, bool) or doc is None or isinstance(doc, str):
            raise DecodeError("non_numeric", f"payload is JSON {type(doc).__name__}")
        else:  # a JSON number that float() did not take (cannot happen) or another type
            raise DecodeError("bad_shape", f"payload is JSON {type(doc).__name__}")

    def _object(
        self, topic: str, fields: TopicFields, obj: dict[str, object], received_ns: int, out: DecodeResult
    ) -> None:
        fields0 = fields
        ts_ns = received_ns
        for k in TS_KEYS:
            if k in obj:
                ts_ns = to_ns(obj[k])
                break
        if fields.device is None:
            dev = obj.get("device")
            if not isinstance(dev, str):
                raise DecodeError("no_device", "topic has no {device} and the object no \"device\" string")
            fields = TopicFields(dev, fields.quantity, fields.tags)
        tags = fields.tags
        extra = obj.get("tags")
        if extra is not None:
            if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
                raise DecodeError("bad_shape", "\"tags\" must be an object of strings")
            tags = tuple(sorted({**dict(tags), **extra}.items()))
        if fields.quantity is not None or ("value" in obj and "quantity" in obj):
            if "value" not in obj:
                raise DecodeError("no_value", "object has no \"value\"")
            if fields.quantity is not None and extra is None and fields is fields0:
                self._add_topic(topic, fields, obj["value"], ts_ns, received_ns, out)
                return
            q = obj.get("quantity") if fields.quantity is None else fields.quantity
            if not isinstance(q, str):
                raise DecodeError("bad_shape", "\"quantity\" must be a string")
            self._add(fields, q, obj["value"], ts_ns, received_ns, tags, out)
            return
        named = [(k, v) for k, v in obj.items() if k not in _META_KEYS]
        if not named:
            raise DecodeError("no_value", "object has no named value fields")
        for k, v in named:
            try:
                self._add(fields, k, v, ts_ns, received_ns, tags, out)
            except DecodeError as e:
                out.refusals.append(Refusal(e.reason, f"{k[:40]!r}: {e.detail}"))

    def _lines(self, fields: TopicFields, body: bytes, received_ns: int, out: DecodeResult) -> None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("bad_encoding", "payload is not UTF-8") from None
        for n, line in enumerate(text.split("\n"), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                p = parse_line(line)
                ts_ns = received_ns if p.ts is None else to_ns(p.ts)
                tags = dict(p.tags)
                device = fields.device or tags.pop("device", None) or p.measurement
                tq = tags.pop("quantity", None)
                tags.update(fields.tags)
                f = TopicFields(device, fields.quantity, ())
                tag_t = tuple(sorted(tags.items()))
                for key, raw in p.fields.items():
                    q = (fields.quantity or tq or p.measurement) if key == "value" else key
                    try:
                        self._add(f, q, field_number(raw), ts_ns, received_ns, tag_t, out)
                    except DecodeError as e:
                        out.refusals.append(Refusal(e.reason, f"line {n} field {key[:40]!r}: {e.detail}"))
            except DecodeError as e:
                out.refusals.append(Refusal(e.reason, f"line {n}: {e.detail}"))

    def _add_topic(
        self, topic: str, fields: TopicFields, value: object, ts_ns: int, received_ns: int, out: DecodeResult
    ) -> None:
        """``_add`` for the stream named by the topic alone (the common case), cached."""
        cached = self._topic_streams.get(topic)
        if cached is None:
            stream = StreamKey(fields.device or "", self._quantity(fields, None), fields.tags)
            cached = (stream, stream_problem(stream))
            if len(self._topic_streams) >= _CACHE_MAX:
                self._topic_streams.clear()
            self._topic_streams[topic] = cached
        stream, problem = cached
        v = self._check(value, ts_ns, received_ns)
        if problem:
            raise DecodeError("bad_name", problem)
        out.readings.append(Reading(stream, ts_ns, v))

    def _check(self, value: object, ts_ns: int, received_ns: int) -> float:
        """The value as a finite float within the time window, or DecodeError."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DecodeError("non_numeric", f"value {str(value)[:40]!r} is not a number")
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
        fields: TopicFields,
        quantity: str,
        value: object,
        ts_ns: int,
        received_ns: int,
        tags: tuple[tuple[str, str], ...],
        out: DecodeResult,
    ) -> None:
        v = self._check(value, ts_ns, received_ns)
        stream = StreamKey(fields.device or "", quantity, tags or fields.tags)
        problem = self._streams.get(stream, "")
        if problem == "":
            problem = stream_problem(stream)
            if len(self._streams) >= _CACHE_MAX:
                self._streams.clear()
            self._streams[stream] = problem
        if problem:
            raise DecodeError("bad_name", problem)
        out.readings.append(Reading(stream, ts_ns, v))
