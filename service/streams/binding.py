"""Which model serves a reading's stream, and which feature the reading fills.

Three rules, in order; the first that gives a model wins:

1. ``settings.models.bindings``, an ordered list: the first binding whose device glob
   matches (and, for a univariate model, whose quantity glob matches) wins.
2. The models' declared streams (``Manifest.streams``: globs on the stream id a model was
   trained on, written by ``sensorcast train``): the newest model (manifest ``created_at``)
   with a glob matching the stream's id. A univariate model's stream id is
   ``device/quantity``; a multivariate model's is the device (with its tags).
3. Only when no bindings are configured, the models that declare no streams (older
   manifests, CSV trainings without ``--serve``): each serves the quantities named in its
   features (newest version, models in name order), and the first univariate model whose
   feature is ``value`` (trained on anonymous series) serves every quantity nothing else
   claims.

A model that declares streams serves those only (unless a binding names it): the shipped
demo model declares the demo simulator's devices, so a user's own sensors are never
silently served by it. A multivariate model (F > 1) serves a *device*: its quantities fill
the features of the same name. A univariate model serves *device/quantity*.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase, translate

from service.config import ModelBinding, StreamRules
from service.errors import ModelError
from service.records import StreamKey
from service.runtime.manifest import Manifest
from service.runtime.registry import LoadedModel, ModelRegistry

log = logging.getLogger(__name__)

GENERIC_FEATURE = "value"
NO_MODEL = "no model matches"  # why a stream has no route (the API's and the log's word)


@dataclass(frozen=True, slots=True)
class Route:
    model: LoadedModel
    stream_id: str
    feature: int  # index into the model's input features
    multivariate: bool
    rules: StreamRules | None = None  # the binding's alert rules
    why: str = "features"  # the rule that chose the model: "binding", "streams", "features" or "catch-all"


def device_id(key: StreamKey) -> str:
    """The multivariate stream's id: the device and tags, escaped like ``StreamKey.id``."""
    return key.device_id


def route(key: StreamKey, registry: ModelRegistry, bindings: list[ModelBinding]) -> Route | None:
    """The route for ``key``, or None when no model serves it."""
    for b in bindings:
        if not fnmatchcase(key.device, b.device):
            continue
        try:
            model = registry.get(b.model, b.version)
        except ModelError:
            continue  # the bound model is not loaded (yet): try the next binding
        r = _fit(key, model, b.quantity, "binding")
        if r is not None:
            return r if b.rules is None else replace(r, rules=b.rules)
    declared = _declared(key, registry.all())
    if declared is not None or bindings:
        return declared
    generic: LoadedModel | None = None
    for name in registry.names():
        try:
            model = registry.get(name)
        except ModelError:
            continue
        if model.manifest.streams:
            continue  # serves its declared streams only
        features = model.manifest.features
        if key.quantity in features:
            return _fit(key, model, key.quantity, "features")
        if generic is None and features == [GENERIC_FEATURE]:
            generic = model
    # A univariate model trained on anonymous series serves whatever nothing else claims.
    return None if generic is None else _fit(key, generic, "*", "catch-all")


def _declared(key: StreamKey, models: list[LoadedModel]) -> Route | None:
    """The newest model whose declared stream globs match ``key``'s stream id."""
    best: Route | None = None
    for model in models:
        globs = model.manifest.streams
        if not globs or (best is not None and _created(model) <= _created(best.model)):
            continue
        multivariate = len(model.manifest.features) > 1
        if _matcher(model.manifest)(device_id(key) if multivariate else key.id):
            best = _fit(key, model, "*", "streams") or best
    return best


_MATCHERS: dict[int, tuple[Manifest, Callable[[str], bool]]] = {}


def _matcher(m: Manifest) -> Callable[[str], bool]:
    """``m.streams`` as one test: a set for plain ids, one regex for the globs. A store
    training declares every stream id it read (thousands): binding 100k streams must not
    try each glob in turn."""
    hit = _MATCHERS.get(id(m))
    if hit is not None and hit[0] is m:
        return hit[1]
    exact = frozenset(g for g in m.streams if not any(c in g for c in "*?["))
    globs = [translate(g) for g in m.streams if g not in exact]
    rx = re.compile("|".join(globs)) if globs else None

    def match(sid: str) -> bool:
        return sid in exact or (rx is not None and rx.match(sid) is not None)

    if len(_MATCHERS) >= 64:  # models come and go with reloads: keep the cache small
        _MATCHERS.clear()
    _MATCHERS[id(m)] = (m, match)
    return match


def _created(model: LoadedModel) -> float:
    return model.manifest.created_at.timestamp()  # naive and aware times compare (naive: local time)


def _fit(key: StreamKey, model: LoadedModel, quantity_glob: str, why: str) -> Route | None:
    features = model.manifest.features
    if len(features) == 1:
        if not fnmatchcase(key.quantity, quantity_glob):
            return None
        return Route(model, key.id, 0, multivariate=False, why=why)
    if key.quantity not in features:
        return None
    return Route(model, device_id(key), features.index(key.quantity), multivariate=True, why=why)


LOG_EVERY_S = 10.0
_BIND_LINES = 20  # per-stream binding lines per LOG_EVERY_S; more are counted, then summed up


class BindLog:
    """At most ``_BIND_LINES`` per-stream lines per window; the rest are counted and the
    count is logged with the next line allowed (100k streams binding at start must not
    write 100k lines)."""

    def __init__(self) -> None:
        self._start = 0.0
        self._lines = 0
        self.skipped = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._start >= LOG_EVERY_S:
            if self.skipped:
                log.info("... and %d more streams bound, moved or left without a model (GET /v1/streams)",
                         self.skipped)
            self._start, self._lines, self.skipped = now, 0, 0
        if self._lines < _BIND_LINES:
            self._lines += 1
            return True
        self.skipped += 1
        return False


def summary(models: Sequence[LoadedModel], counts: Mapping[str, int], single: Mapping[str, str],
            unserved: Sequence[str]) -> str:
    """``demo/1 serves 6 streams (dev[0-9]*/*); machine/2 serves machine2/value; 3 streams
    have no model: ...``, bounded (10 models, 5 stream ids). ``counts``: streams per model
    key; ``single``: the stream id of a model serving one."""
    parts = []
    for m in models:
        n = counts.get(m.key, 0)
        globs = ", ".join(m.manifest.streams[:3]) + (" ..." if len(m.manifest.streams) > 3 else "")
        what = single[m.key] if n == 1 and m.key in single else f"{n} streams"
        parts.append(f"{m.key} serves {what}" + (f" ({globs})" if globs else ""))
    text = "; ".join(parts[:10]) + (f"; {len(parts) - 10} more models" if len(parts) > 10 else "")
    if not parts:
        text = "no model loaded"
    if unserved:
        more = " ..." if len(unserved) > 5 else ""
        text += f"; {len(unserved)} streams have no model: {', '.join(unserved[:5])}{more}"
    return text


def warn_no_models(registry: ModelRegistry) -> None:
    """A WARNING when the models folder is missing or holds no valid model: nothing is forecast."""
    folder = registry.dir
    if not folder.is_dir():
        log.warning("models folder %s does not exist: no stream is forecast (train a model with "
                    "`sensorcast train`, or set SENSORCAST_MODELS__DIR)", folder)
    elif not registry.names():
        errors = "; ".join(f"{k}: {v}" for k, v in list(registry.errors.items())[:3])
        log.warning("models folder %s holds no model (%s): no stream is forecast", folder,
                    errors or "expected <name>/<version>/{model.onnx,manifest.json}")
