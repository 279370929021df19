"""Which model serves a reading's stream, and which feature the reading fills.

``settings.models.bindings`` is an ordered list; the first binding whose device glob
matches (and, for a univariate model, whose quantity glob matches) wins. A multivariate
model (F > 1) serves a *device*: its quantities fill the features of the same name, and the
stream id is the device (with its tags). A univariate model serves *device/quantity*.
With no bindings, every model serves the quantities named in its features (newest version,
models in name order), and the first univariate model whose feature is ``value`` (trained on
anonymous series, like the demo model) serves every quantity no other model claims.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

from service.config import ModelBinding, StreamRules
from service.errors import ModelError
from service.records import StreamKey
from service.runtime.registry import LoadedModel, ModelRegistry

GENERIC_FEATURE = "value"


@dataclass(frozen=True, slots=True)
class Route:
    model: LoadedModel
    stream_id: str
    feature: int  # index into the model's input features
    multivariate: bool
    rules: StreamRules | None = None  # the binding's alert rules


def device_id(key: StreamKey) -> str:
    """The multivariate stream's id: the device and tags, escaped like ``StreamKey.id``."""
    return key.device_id


def route(key: StreamKey, registry: ModelRegistry, bindings: list[ModelBinding]) -> Route | None:
    """The route for ``key``, or None when no model serves it."""
    if bindings:
        for b in bindings:
            if not fnmatchcase(key.device, b.device):
                continue
            try:
                model = registry.get(b.model, b.version)
            except ModelError:
                continue  # the bound model is not loaded (yet): try the next binding
            r = _fit(key, model, b.quantity)
            if r is not None:
                return r if b.rules is None else replace(r, rules=b.rules)
        return None
    generic: LoadedModel | None = None
    for name in registry.names():
        try:
            model = registry.get(name)
        except ModelError:
            continue
        features = model.manifest.features
        if key.quantity in features:
            return _fit(key, model, key.quantity)
        if generic is None and features == [GENERIC_FEATURE]:
            generic = model
    # A univariate model trained on anonymous series serves whatever nothing else claims.
    return None if generic is None else _fit(key, generic, "*")


def _fit(key: StreamKey, model: LoadedModel, quantity_glob: str) -> Route | None:
    features = model.manifest.features
    if len(features) == 1:
        if not fnmatchcase(key.quantity, quantity_glob):
            return None
        return Route(model, key.id, 0, multivariate=False)
    if key.quantity not in features:
        return None
    return Route(model, device_id(key), features.index(key.quantity), multivariate=True)
