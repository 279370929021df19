"""Internal records: frozen, slotted dataclasses that flow through the pipeline.

Pydantic lives only at the edges (settings, API schemas, manifests on disk).
Timestamps are integer nanoseconds since the Unix epoch, UTC: exact, cheap to compare,
and what InfluxDB line protocol speaks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

NS_PER_S = 1_000_000_000


# Characters that carry structure in a stream id (``/`` ``;`` ``=``), the escape itself,
# and control characters (C0, DEL, C1): each becomes its UTF-8 bytes as ``%XX`` (uppercase
# hex), URL-style, inside an id component.
_ID_SPECIAL = re.compile(r"[%/;=\x00-\x1f\x7f-\x9f]")
_ESCAPES = re.compile(r"(?:%[0-9A-F]{2})+")


def _pct(m: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in m.group().encode())


def escape_id_part(s: str) -> str:
    """One component of a stream id (device, quantity, tag key or value), escaped."""
    if _ID_SPECIAL.search(s) is None:  # ordinary names (almost all) stay as they are
        return s
    return _ID_SPECIAL.sub(_pct, s)


def _unesc(s: str, text: str, what: str) -> str:
    """Invert ``escape_id_part`` exactly: only the canonical escapes of special characters."""
    if "%" in s:
        rest = _ESCAPES.sub("", s)
        if "%" in rest:
            raise ValueError(
                f"stream id {text[:200]!r}: {what} has a '%' not followed by two uppercase hex digits "
                "(expected %25 for a literal '%')"
            )
    else:
        rest = s
    bad = _ID_SPECIAL.search(rest)
    if bad is not None:
        raise ValueError(f"stream id {text[:200]!r}: {what} holds {bad.group()!r} unescaped (expected %XX)")
    if rest is s:
        return s

    def run(m: re.Match[str]) -> str:
        try:
            chars = bytes.fromhex(m.group().replace("%", "")).decode("utf-8")
        except UnicodeDecodeError:
            chars = ""
        if not chars or escape_id_part(chars) != m.group():  # every char special, canonical hex
            raise ValueError(
                f"stream id {text[:200]!r}: {what} has escape {m.group()[:40]!r}; expected only %25, %2F, %3B, "
                "%3D and control characters escaped (UTF-8 bytes, uppercase hex)"
            )
        return chars

    return _ESCAPES.sub(run, s)


def _tags_text(tags: tuple[tuple[str, str], ...]) -> str:
    if not tags:
        return ""
    return "".join(f";{escape_id_part(k)}={escape_id_part(v)}" for k, v in (tags if len(tags) == 1 else sorted(tags)))


def _parse_tags(parts: list[str], text: str) -> tuple[tuple[str, str], ...]:
    tags: list[tuple[str, str]] = []
    for part in parts:
        kv = part.split("=")
        if len(kv) != 2:
            raise ValueError(f"stream id {text[:200]!r}: tag {part[:80]!r} has {len(kv) - 1} unescaped '='; expected key=value")
        k, v = _unesc(kv[0], text, "a tag key"), _unesc(kv[1], text, "a tag value")
        if tags and k <= tags[-1][0]:
            raise ValueError(
                f"stream id {text[:200]!r}: tag {k[:40]!r} after {tags[-1][0][:40]!r}; expected tags sorted by key, "
                "each key once"
            )
        tags.append((k, v))
    return tuple(tags)


@dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    """Identity of one series: a device's quantity, plus any extra tags (sorted by key, unique)."""

    device: str
    quantity: str
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        """Injective text id used in the API, topics and checkpoints: ``device/quantity[;k=v...]``.

        Each component is escaped: ``%``, ``/``, ``;``, ``=`` and control characters become
        ``%XX`` (uppercase hex), so ordinary names read as before (``pump-1/temperature;site=hq``)
        while quantity ``temperature;site=hq`` gives ``pump-1/temperature%3Bsite%3Dhq``, and
        two different keys never share an id. ``StreamKey.parse`` inverts it exactly.
        """
        return f"{escape_id_part(self.device)}/{escape_id_part(self.quantity)}{_tags_text(self.tags)}"

    @property
    def device_id(self) -> str:
        """Id of the device's multivariate stream: ``device[;k=v...]``, escaped like ``id``.

        It holds no unescaped ``/``, so it can never equal a ``device/quantity`` id.
        """
        return escape_id_part(self.device) + _tags_text(self.tags)

    @classmethod
    def parse(cls, text: str) -> StreamKey:
        """The key whose ``id`` is ``text``; ValueError (what was found, what was expected) otherwise."""
        base, *tag_parts = text.split(";")
        halves = base.split("/")
        if len(halves) != 2:
            raise ValueError(
                f"stream id {text[:200]!r} has {len(halves) - 1} unescaped '/'; expected exactly one, as in "
                "device/quantity[;tag=value...] (a '/' inside a name is written %2F)"
            )
        device = _unesc(halves[0], text, "the device")
        quantity = _unesc(halves[1], text, "the quantity")
        return cls(device, quantity, _parse_tags(tag_parts, text))

    @staticmethod
    def parse_device_id(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        """(device, tags) of a multivariate stream id (``device_id``); ValueError when malformed."""
        base, *tag_parts = text.split(";")
        if "/" in base:
            raise ValueError(f"device stream id {text[:200]!r} holds an unescaped '/'; expected device[;tag=value...]")
        return _unesc(base, text, "the device"), _parse_tags(tag_parts, text)


@dataclass(frozen=True, slots=True)
class Reading:
    """One measured value of one stream at one instant."""

    stream: StreamKey
    ts_ns: int
    value: float

    @property
    def time(self) -> datetime:
        """The timestamp as an aware UTC datetime (microsecond precision)."""
        return datetime.fromtimestamp(self.ts_ns // 1000 / 1_000_000, tz=UTC)


def stream_id_of(key: StreamKey, multivariate: bool) -> str:
    """The engine's id of the stream ``key`` names: ``key.device_id`` for a multivariate
    (device) stream, whose key's quantity is ``*``; ``key.id`` otherwise."""
    return key.device_id if multivariate else key.id


@dataclass(frozen=True, slots=True)
class Forecast:
    """A forecast for one stream made at ``ts_ns`` for ``horizon`` steps of ``cadence_s``.

    ``key`` is the stream's key (None: not a stream's, e.g. ``POST /v1/predict``). A
    multivariate (device) stream's key has quantity ``*`` and ``multivariate`` is True: its
    id is the device's (``stream_id``), and the forecast covers every output feature.
    """

    key: StreamKey | None
    ts_ns: int
    cadence_s: float
    features: tuple[str, ...]
    mean: tuple[tuple[float, ...], ...]  # (H, F_out) raw units
    scale: tuple[tuple[float, ...], ...] | None  # (H, F_out) predicted spread, or None
    model: str
    model_version: str
    multivariate: bool = False

    @property
    def stream_id(self) -> str:
        """The stream's id (``StreamKey.id`` or ``device_id``); "" when not a stream's."""
        return "" if self.key is None else stream_id_of(self.key, self.multivariate)


AlertState = Literal["firing", "resolved"]
# Which detector an alert comes from; a stream has at most one firing alert per check.
CHECKS = ("anomaly", "stuck", "silent", "out_of_range", "rate_of_change", "predicted_breach")
# What happened. The ML check ("anomaly") names one of the first five; the others their own.
KINDS = ("spike", "level_shift", "drift", "variance", "multivariate", "stuck", "silent", "out_of_range",
         "rate_of_change", "predicted_breach")


@dataclass(frozen=True, slots=True)
class Alert:
    """A state change of one of a stream's checks (``check``), explained.

    ``key`` is the stream's key (for a multivariate stream: quantity ``*``, and
    ``multivariate`` True); ``quantity`` is what the numbers refer to: the stream's
    quantity, or a multivariate stream's worst output feature. ``onset_*`` describe the
    first anomalous reading of the episode and the value expected before it;
    ``contributors`` the features behind multivariate evidence with their shares; ``unit``
    the unit of ``value`` (service/units.py, set by the pipeline; None: not known).
    """

    key: StreamKey
    quantity: str
    state: AlertState
    ts_ns: int
    value: float
    expected: float
    lower: float
    upper: float
    score: float
    model: str
    model_version: str
    warm: bool
    extra: dict[str, str] = field(default_factory=dict)
    multivariate: bool = False
    check: str = "anomaly"
    kind: str = ""
    onset_ns: int | None = None
    onset_value: float = math.nan
    onset_expected: float = math.nan
    contributors: tuple[tuple[str, float], ...] = ()
    unit: str | None = None

    @property
    def stream_id(self) -> str:
        return stream_id_of(self.key, self.multivariate)

    @property
    def device(self) -> str:
        return self.key.device
