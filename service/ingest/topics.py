"""Topic templates, Telegraf-style: ``sensors/{device}/{quantity}``.

Segments are literals, ``{device}``, ``{quantity}``, ``{tag_<name>}`` (an extra tag),
``{unit}`` (the values' unit, e.g. ``°C``: not part of the stream's identity), ``+`` (any
one level, ignored) or a final ``#`` (any rest, ignored). The subscription
filter is the template with every placeholder replaced by ``+``. Without ``{quantity}``
the quantities come from the payload's named fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.errors import ConfigError, DecodeError

_PLACEHOLDER = re.compile(r"^\{(device|quantity|unit|tag_[A-Za-z0-9_]+)\}$")


@dataclass(frozen=True, slots=True)
class TopicFields:
    device: str | None
    quantity: str | None
    tags: tuple[tuple[str, str], ...]
    unit: str | None = None  # the topic's {unit} level (checked where it is recorded)


class TopicTemplate:
    def __init__(self, template: str) -> None:
        self.template = template
        segs = template.split("/")
        if not template or any(s == "" for s in segs[:-1]):
            raise ConfigError(f"topic template {template!r} has an empty level")
        self._kinds: list[tuple[str, str]] = []  # (kind, name): literal / field / any / rest
        for i, s in enumerate(segs):
            m = _PLACEHOLDER.match(s)
            if m:
                self._kinds.append(("field", m.group(1)))
            elif s == "+":
                self._kinds.append(("any", ""))
            elif s == "#":
                if i != len(segs) - 1:
                    raise ConfigError(f"topic template {template!r}: '#' must be the last level")
                self._kinds.append(("rest", ""))
            elif "{" in s or "}" in s or "+" in s or "#" in s:
                raise ConfigError(
                    f"topic template {template!r}: level {s!r} is not a literal, +, # or one of "
                    "{device}, {quantity}, {unit}, {tag_<name>}"
                )
            else:
                self._kinds.append(("literal", s))
        names = [n for k, n in self._kinds if k == "field"]
        if len(names) != len(set(names)):
            raise ConfigError(f"topic template {template!r} repeats a placeholder")
        self.has_device = "device" in names
        self.has_quantity = "quantity" in names
        self._rest = bool(self._kinds) and self._kinds[-1][0] == "rest"
        self._fixed = len(self._kinds) - (1 if self._rest else 0)

    @property
    def subscription(self) -> str:
        parts = []
        for kind, name in self._kinds:
            parts.append({"literal": name, "field": "+", "any": "+", "rest": "#"}[kind])
        return "/".join(parts)

    def match(self, topic: str) -> TopicFields:
        """The fields of ``topic``; raises DecodeError("topic_mismatch") when it does not fit."""
        levels = topic.split("/")
        if len(levels) < self._fixed or (not self._rest and len(levels) != self._fixed):
            raise DecodeError("topic_mismatch", f"topic {topic[:200]!r} does not fit {self.template!r}")
        device = quantity = unit = None
        tags = []
        for (kind, name), level in zip(self._kinds, levels, strict=False):
            if kind == "literal":
                if level != name:
                    raise DecodeError("topic_mismatch", f"topic {topic[:200]!r} does not fit {self.template!r}")
            elif kind == "field":
                if name == "device":
                    device = level
                elif name == "quantity":
                    quantity = level
                elif name == "unit":
                    unit = level
                else:
                    tags.append((name[4:], level))
        return TopicFields(device, quantity, tuple(sorted(tags)), unit)
