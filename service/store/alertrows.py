"""The alert history's row types and body codec (service/store/alertlog.py stores them)."""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import orjson

from service.records import Alert, StreamKey

_FLOATS = ("value", "expected", "lower", "upper", "score", "onset_value", "onset_expected")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in newest-first order: the last row of a page."""

    ts_ns: int
    id: int

    def token(self) -> str:
        return base64.urlsafe_b64encode(f"{self.ts_ns}.{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> Cursor:
        """ValueError for anything ``token()`` did not produce."""
        try:
            text = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True).decode()
            ts, row = (int(part) for part in text.split("."))
            if not (-(2**63) <= ts < 2**63 and 0 < row < 2**63):
                raise ValueError(text)
            return cls(ts, row)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise ValueError("cursor is not one this API gave out (pass X-Next-Cursor as it is)") from None


@dataclass(frozen=True, slots=True)
class Query:
    """Filters of a page; None: any."""

    stream: str | None = None
    state: str | None = None
    check: str | None = None
    kind: str | None = None
    since_ns: int | None = None  # at or after
    until_ns: int | None = None  # before
    acked: bool | None = None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One stored alert event with its id, whether it was silenced, and its acknowledgement."""

    id: int
    alert: Alert
    silenced: bool = False
    acked_ns: int | None = None
    acked_by: str | None = None
    ack_note: str | None = None


def encode(a: Alert) -> bytes:
    """Every field of the record (NaN -> null); the key is kept whole, not as its display id."""
    return orjson.dumps({
        "device": a.key.device, "key_quantity": a.key.quantity, "tags": [list(t) for t in a.key.tags],
        "multivariate": a.multivariate, "quantity": a.quantity, "state": a.state, "ts_ns": a.ts_ns,
        "value": a.value, "expected": a.expected, "lower": a.lower, "upper": a.upper, "score": a.score,
        "model": a.model, "model_version": a.model_version, "warm": a.warm, "extra": a.extra, "check": a.check,
        "kind": a.kind, "onset_ns": a.onset_ns, "onset_value": a.onset_value, "onset_expected": a.onset_expected,
        "contributors": [[n, s] for n, s in a.contributors], "unit": a.unit,
    })


def decode(body: bytes) -> Alert:
    d: dict[str, Any] = orjson.loads(body)
    floats = {k: math.nan if d[k] is None else float(d[k]) for k in _FLOATS}
    return Alert(
        StreamKey(d["device"], d["key_quantity"], tuple((k, v) for k, v in d["tags"])), d["quantity"], d["state"],
        int(d["ts_ns"]), floats["value"], floats["expected"], floats["lower"], floats["upper"], floats["score"],
        d["model"], d["model_version"], bool(d["warm"]), dict(d["extra"]), bool(d["multivariate"]), d["check"],
        d["kind"], d["onset_ns"], floats["onset_value"], floats["onset_expected"],
        tuple((str(n), float(s)) for n, s in d["contributors"]), d.get("unit"),  # rows before units: None
    )
