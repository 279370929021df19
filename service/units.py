"""The unit of each stream (°C, kWh...): ``UnitBook.unit_of(stream_id)`` is the one place to ask.

Three sources, strongest first:

1. the stream's own settings (``PUT /v1/streams/{id}/settings``, ``StreamRules.unit``);
2. its binding's rules (``models.bindings[].rules.unit``): the first binding whose globs
   match the stream, as routing reads them;
3. what its readings said last: a ``unit`` in the payload or a ``{unit}`` level in the
   topic template (``seen``, fed by the decoder).

In a configuration layer a multivariate stream's ``features.<name>.unit`` wins over the
layer's stream-wide ``unit`` for that feature, as for the other rules (service/streams/rules.py).

The decoder calls ``seen`` only when a stream's unit differs from the last one it passed
on, so the 20k readings/s path pays a dict lookup for readings that carry a unit and nothing
for the others. The seen units are a bounded table (``max_streams``): beyond it a new
stream's unit is refused, like a bad one (empty, longer than ``MAX_UNIT_CHARS``, control
characters, not a string): counted in ``sensorcast_units_refused_total{reason}`` and logged
at most every ``LOG_EVERY_S`` per reason. A refused unit never costs the reading.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase

from prometheus_client import Counter

from service.config import ModelBinding, StreamRules
from service.metrics import Metrics
from service.records import StreamKey, escape_id_part

log = logging.getLogger(__name__)

MAX_UNIT_CHARS = 32  # as StreamRules.unit
LOG_EVERY_S = 10.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def unit_problem(unit: object) -> str | None:
    """Why ``unit`` cannot be a stream's unit (a reason label), or None when it can."""
    if not isinstance(unit, str):
        return "not_string"
    if not unit.strip():
        return "empty"
    if len(unit) > MAX_UNIT_CHARS:
        return "too_long"
    if _CONTROL.search(unit):
        return "control_characters"
    return None


def _layer_unit(rules: StreamRules | None, feature: str | None) -> str | None:
    """A configuration layer's unit for ``feature`` (its features entry first), or None."""
    if rules is None:
        return None
    if feature is not None and rules.features:
        f = rules.features.get(feature)
        if f is not None and f.unit is not None:
            return f.unit
    return rules.unit


def _has_unit(rules: StreamRules | None) -> bool:
    return rules is not None and (
        rules.unit is not None or any(f.unit is not None for f in (rules.features or {}).values())
    )


class UnitBook:
    """Stream id -> unit, from settings, binding rules and the readings (see the module doc)."""

    def __init__(
        self,
        max_streams: int = 100_000,
        metrics: Metrics | None = None,
        own: Callable[[str], StreamRules | None] | None = None,
        bindings: Sequence[ModelBinding] = (),
    ) -> None:
        self.max_streams = max_streams if max_streams > 0 else 1_000_000
        self.own = own  # the stream's own rules by id (StreamSettings.get); None: none
        # Only bindings that set a unit somewhere matter: usually none, and then no stream
        # id is parsed to match globs.
        self._bindings = [(b.device, b.quantity, b.rules) for b in bindings]
        self._bindings_have_units = any(_has_unit(b.rules) for b in bindings)
        self._seen: dict[str, str] = {}  # univariate stream id -> last unit its readings gave
        self._lock = threading.Lock()
        # Registered here, not in service/metrics.py: one book per process's Metrics.
        self._refused = None if metrics is None else Counter(
            "sensorcast_units_refused", "Units from payloads or topics refused, by reason (the readings are kept).",
            ["reason"], registry=metrics.registry,
        )
        self.refused: dict[str, int] = {}
        self._logged: dict[str, float] = {}

    # -- the readings' side (decoder threads) ------------------------------------------
    def seen(self, key: StreamKey, unit: object) -> None:
        """The unit a reading of ``key`` carried (payload or topic). Never raises."""
        try:
            problem = unit_problem(unit)
            if problem is None:
                assert isinstance(unit, str)
                sid = key.id
                with self._lock:
                    if sid not in self._seen and len(self._seen) >= self.max_streams:
                        problem = "full"
                    else:
                        self._seen[sid] = unit
            if problem is not None:
                self._refuse(key, unit, problem)
        except Exception:  # a bug here must not cost the message it came with
            log.exception("units: could not record the unit of %r", key)

    def _refuse(self, key: StreamKey, unit: object, reason: str) -> None:
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1
            now = time.monotonic()
            quiet = now - self._logged.get(reason, -1e9) < LOG_EVERY_S
            if not quiet:
                self._logged[reason] = now
        if self._refused is not None:
            self._refused.labels(reason).inc()
        if not quiet:
            why = {"not_string": "not a string", "empty": "empty", "too_long": f"longer than {MAX_UNIT_CHARS} characters",
                   "control_characters": "holds control characters",
                   "full": f"the unit table is full ({self.max_streams} streams)"}.get(reason, reason)
            log.warning("unit %r of %s refused (%s); the readings are kept, without it (further '%s' refusals "
                        "counted in sensorcast_units_refused_total, logged every %.0f s)",
                        str(unit)[:60], key.id[:200], why, reason, LOG_EVERY_S)

    def forget(self, stream_id: str) -> None:
        """Drop what readings said of ``stream_id`` (a univariate id) or of every feature of a device id."""
        with self._lock:
            if "/" in stream_id.split(";", 1)[0]:
                self._seen.pop(stream_id, None)
                return
            for sid in [s for s in self._seen if _device_of(s) == stream_id]:
                del self._seen[sid]

    def __len__(self) -> int:
        return len(self._seen)

    # -- the readers' side (API, alerts, discovery) ---------------------------------------
    def unit_of(self, stream_id: str, feature: str | None = None) -> str | None:
        """The unit of stream ``stream_id`` (an engine id: ``device/quantity[;tags]``, or a
        multivariate stream's ``device[;tags]`` with ``feature`` naming the quantity), or None.
        """
        base, sep, tags = stream_id.partition(";")
        multivariate = "/" not in base
        own = self.own(stream_id) if self.own is not None else None
        unit = _layer_unit(own, feature if multivariate else None)
        if unit is not None:
            return unit
        quantity_id = None if not multivariate or feature is None else f"{base}/{escape_id_part(feature)}{sep}{tags}"
        if quantity_id is not None and self.own is not None:
            # A device's quantity may have its own settings as a univariate stream (what
            # `sensorcast import` writes): its unit holds when the device's stream says none.
            unit = _layer_unit(self.own(quantity_id), None)
            if unit is not None:
                return unit
        if self._bindings_have_units:
            unit = _layer_unit(self._binding_rules(stream_id, multivariate), feature if multivariate else None)
            if unit is not None:
                return unit
        if not multivariate:
            return self._seen.get(stream_id)
        return None if quantity_id is None else self._seen.get(quantity_id)

    def units_of(self, stream_id: str, features: Iterable[str]) -> dict[str, str]:
        """``{feature: unit}`` of a multivariate stream, for the features that have one."""
        out: dict[str, str] = {}
        for f in features:
            u = self.unit_of(stream_id, f)
            if u is not None:
                out[f] = u
        return out

    def _binding_rules(self, stream_id: str, multivariate: bool) -> StreamRules | None:
        """The rules of the first binding whose globs match (routing's order; the quantity glob
        only for a univariate stream). It does not know whether the bound model is loaded."""
        try:
            if multivariate:
                device, _ = StreamKey.parse_device_id(stream_id)
                quantity = None
            else:
                key = StreamKey.parse(stream_id)
                device, quantity = key.device, key.quantity
        except ValueError:
            return None
        for dev_glob, q_glob, rules in self._bindings:
            if fnmatchcase(device, dev_glob) and (quantity is None or fnmatchcase(quantity, q_glob)):
                return rules
        return None


def _device_of(univariate_id: str) -> str:
    """``device[;tags]`` of ``device/quantity[;tags]`` (both escaped)."""
    base, sep, tags = univariate_id.partition(";")
    return base.split("/", 1)[0] + sep + tags
