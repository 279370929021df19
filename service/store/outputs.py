"""Forecasts, anomaly scores and alert events written to the store as their own measurements.

For Grafana (deploy/grafana/): beside ``readings``, with the same ``device`` and
``quantity`` tags plus ``stream`` (the engine's stream id), so a panel selects a stream's
readings and outputs with one condition.

- ``forecasts``: the first step of a stream's forecast, at the time it is for (made at
  ``ts_ns``, for ``ts_ns + cadence``): fields ``mean``, and ``lower``/``upper`` at
  ``api.band_z`` spreads when the model predicts one. A multivariate stream writes one
  point per output feature (``quantity`` = the feature).
- ``scores``: a stream's last scored step: fields ``score``, ``value``, ``expected``,
  ``lower``, ``upper`` (the band the score was measured in).

Both are sampled every ``store.outputs_interval_s`` (at least 1 s) on the writer's thread,
from the engine's stream statuses and its lock-free forecast read: a step between two
samples is not written (an alert event carries its own score exactly). Sampling, because a
``Forecast`` record per stream-step costs the engine's thread ~11 us at 10k streams (GC
frozen as serve does; ~20 us otherwise) against ~3.3 us for the whole step without
(``python -m tools.bench.outputs``). ``outputs_interval_s=0`` writes every step's forecast
through ``on_forecast`` (a ``pipe.forecast_sinks`` entry) and pays that cost.
- ``alerts``: every alert event; tag ``check`` (a tag, not a field, so two checks changing
  state in the same step are two points, not one overwriting the other); fields ``state``,
  ``kind``, ``score``, ``value``, ``expected``, ``lower``, ``upper``, ``model``.

The sinks run on the engine's thread and only append to a bounded deque; a writer thread
samples, formats and writes the batches. A store outage costs the batch, counted in ``sensorcast_outputs_dropped``
(reason ``store_error``) and logged: outputs are derived data, never spooled, and the engine
never waits for them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from service.config import Settings
from service.errors import ConfigError, StoreError
from service.metrics import Metrics
from service.records import NS_PER_S, Alert, Forecast
from service.store.lineproto import escape_measurement, escape_tag, name_problem

log = logging.getLogger(__name__)

_BATCH = 5000  # points per write (the readings writer's default batch size)
_FLUSH_S = 1.0  # how long points may wait for a batch
_MAX_THINNED = 200_000  # streams remembered for thinning before the memory is cleared


@runtime_checkable
class LineWriter(Protocol):
    """The store's raw line protocol write (``InfluxQLStore.write_lines``)."""

    def write_lines(self, body: bytes) -> None: ...

class ScoredStream(Protocol):
    """What the score sampler reads of a stream status (``service.streams.status.StreamStatus``)."""

    @property
    def id(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def quantity(self) -> str: ...
    @property
    def feature(self) -> str | None: ...
    @property
    def last_ts_ns(self) -> int | None: ...
    @property
    def last_value(self) -> float | None: ...
    @property
    def score(self) -> float | None: ...
    @property
    def expected(self) -> float | None: ...
    @property
    def lower(self) -> float | None: ...
    @property
    def upper(self) -> float | None: ...


class _Lookup(Protocol):
    @property
    def forecast(self) -> Forecast | None: ...


class EngineView(Protocol):
    """What the sampler reads of the engine (``service.streams.engine.Engine``)."""

    def streams(self) -> Sequence[ScoredStream]: ...
    def lookup_forecast(self, stream_id: str) -> _Lookup | None: ...
    def forecast(self, stream_id: str) -> Forecast | None: ...


def enabled(settings: Settings) -> bool:
    """Whether outputs are written: ``store.write_outputs``, or by default when the store is InfluxDB."""
    on = settings.store.write_outputs
    return settings.store.url.lower().startswith("influxdb") if on is None else on


def _fields(pairs: Iterable[tuple[str, float | None]]) -> list[str]:
    # NaN/inf cannot be stored (influxd refuses the whole line); a missing band is just absent.
    return [f"{k}={float(v)!r}" for k, v in pairs if v is not None and math.isfinite(v)]


def _string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class StoreOutputs:
    """The addon: ``on_forecast``/``on_alert`` sinks, a score sampler and a writer thread."""

    name = "store outputs writer"

    def __init__(
        self,
        store: LineWriter,
        settings: Settings,
        metrics: Metrics,
        engine: EngineView | None = None,
    ) -> None:
        s = settings.store
        for m in (s.forecasts_measurement, s.scores_measurement, s.alerts_measurement):
            p = name_problem(m)
            if p:
                raise ConfigError(f"store output measurement {m!r} {p}")
        self._store = store
        self._metrics = metrics
        self._engine = engine
        # 0: every step's forecast through on_forecast (the engine builds a Forecast per
        # stream-step for it, costly); else sampled here with the scores, off the engine's thread.
        self.every_step = s.outputs_interval_s == 0
        self._band_z = settings.api.band_z
        self._poll_s = max(1.0, s.outputs_interval_s)
        self._max = s.outputs_queue_max
        self._m_fc = escape_measurement(s.forecasts_measurement)
        self._m_score = escape_measurement(s.scores_measurement)
        self._m_alert = escape_measurement(s.alerts_measurement)
        self._names = {"f": s.forecasts_measurement, "s": s.scores_measurement, "a": s.alerts_measurement}
        self._queue: deque[Forecast | Alert] = deque()
        self._scored_at: dict[str, int] = {}  # last step whose score was written, per stream
        self._sampled_at: dict[str, int] = {}  # last sampled forecast written, per stream
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropped_full = 0
        self._outage_logged = -math.inf

    # -- the sinks (engine thread): O(1), no I/O -----------------------------------
    def on_forecast(self, fc: Forecast) -> None:
        """Every step's forecast (registered only with ``outputs_interval_s=0``)."""
        if fc.key is not None:
            self._put(fc)

    def on_alert(self, alert: Alert) -> None:
        self._put(alert)

    def _put(self, item: Forecast | Alert) -> None:
        if len(self._queue) >= self._max:
            self._metrics.outputs_dropped.labels("queue_full").inc()
            self._dropped_full += 1
            if self._dropped_full == 1 or self._dropped_full % 10_000 == 0:
                log.warning("store outputs: queue full (%d points), %d dropped so far", self._max, self._dropped_full)
            return
        self._queue.append(item)

    # -- formatting (writer thread) ---------------------------------------------------
    def _tags(self, device: str, quantity: str, stream: str) -> str | None:
        for name in (device, quantity, stream):
            if name_problem(name):
                return None
        return f",device={escape_tag(device)},quantity={escape_tag(quantity)},stream={escape_tag(stream)}"

    def _forecast_lines(self, fc: Forecast) -> list[str]:
        assert fc.key is not None
        ts = fc.ts_ns + int(fc.cadence_s * NS_PER_S)  # the step the forecast is for
        sid = fc.stream_id
        out = []
        for j, feature in enumerate(fc.features):
            mean = fc.mean[0][j]
            pairs: list[tuple[str, float | None]] = [("mean", mean)]
            if fc.scale is not None:
                half = self._band_z * fc.scale[0][j]
                pairs += [("lower", mean - half), ("upper", mean + half)]
            tags = self._tags(fc.key.device, feature if fc.multivariate else fc.key.quantity, sid)
            fields = _fields(pairs)
            if tags is None or not fields:
                self._metrics.outputs_dropped.labels("invalid").inc()
                continue
            out.append(f"{self._m_fc}{tags} {','.join(fields)} {ts}")
        return out

    def _alert_line(self, a: Alert) -> str | None:
        tags = self._tags(a.key.device, a.quantity, a.stream_id)
        if tags is None or name_problem(a.check):
            return None
        fields = [f"state={_string(a.state)}", f"kind={_string(a.kind)}", f"model={_string(a.model)}"]
        fields += _fields([("score", a.score), ("value", a.value), ("expected", a.expected), ("lower", a.lower),
                           ("upper", a.upper)])
        return f"{self._m_alert}{tags},check={escape_tag(a.check)} {','.join(fields)} {a.ts_ns}"

    def _latest_forecast(self, stream_id: str) -> Forecast | None:
        assert self._engine is not None
        found = self._engine.lookup_forecast(stream_id)  # lock-free; None: a tick overlapped every try
        return self._engine.forecast(stream_id) if found is None else found.forecast

    def _sampled_lines(self) -> tuple[list[str], list[str]]:
        """(score lines, forecast lines) of every stream's newest step not yet written."""
        if self._engine is None:
            return [], []
        try:
            statuses = self._engine.streams()
        except Exception:
            log.exception("store outputs: could not read the streams' scores")
            return [], []
        out: list[str] = []
        fcs: list[str] = []
        seen, sampled = self._scored_at, self._sampled_at
        for st in statuses:
            ts = st.last_ts_ns
            if not self.every_step and ts is not None and sampled.get(st.id) != ts:
                fc = self._latest_forecast(st.id)
                if fc is not None:
                    sampled[st.id] = ts
                    fcs += self._forecast_lines(fc)
            if st.score is None or ts is None or seen.get(st.id) == ts:
                continue
            seen[st.id] = ts
            quantity = st.feature if st.quantity == "*" and st.feature else st.quantity
            tags = self._tags(st.device, quantity, st.id)
            fields = _fields([("score", st.score), ("value", st.last_value), ("expected", st.expected),
                              ("lower", st.lower), ("upper", st.upper)])
            if tags is None or not fields:
                self._metrics.outputs_dropped.labels("invalid").inc()
                continue
            out.append(f"{self._m_score}{tags} {','.join(fields)} {ts}")
        for d in (seen, sampled):
            if len(d) > _MAX_THINNED:  # streams come and go: forget, at worst a point is written twice
                d.clear()
        return out, fcs

    def _write_sampled(self) -> None:
        scores, fcs = self._sampled_lines()
        self._write(scores, "s")
        self._write(fcs, "f")

    # -- the writer thread ----------------------------------------------------------
    def start(self) -> None:
        n = self._names
        how = "every step's forecast" if self.every_step else f"sampled every {self._poll_s:g} s"
        log.info("store outputs: forecasts, scores and alerts into measurements %s, %s, %s (%s)",
                 n["f"], n["s"], n["a"], how)
        self._thread = threading.Thread(target=self._run, name="store-outputs", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def flush(self) -> None:
        """Sample scores (and forecasts) and write what is queued, now (the writer thread's step)."""
        self._write_sampled()
        self._drain()

    def _drain(self) -> None:
        while self._queue:
            fcs: list[str] = []
            alerts: list[str] = []
            for _ in range(min(_BATCH, len(self._queue))):
                item = self._queue.popleft()
                if isinstance(item, Alert):
                    line = self._alert_line(item)
                    if line is None:
                        self._metrics.outputs_dropped.labels("invalid").inc()
                    else:
                        alerts.append(line)
                else:
                    fcs += self._forecast_lines(item)
            self._write(fcs, "f")
            self._write(alerts, "a")

    def _write(self, lines: list[str], what: str) -> None:
        for i in range(0, len(lines), _BATCH):
            chunk = lines[i : i + _BATCH]
            try:
                self._store.write_lines("\n".join(chunk).encode())
            except StoreError as e:
                self._metrics.outputs_dropped.labels("store_error").inc(len(chunk))
                now = time.monotonic()
                if now - self._outage_logged > 60:  # once a minute while the store is away
                    self._outage_logged = now
                    log.warning("store outputs: %d %s points dropped, the store refused them: %s",
                                len(chunk), self._names[what], e)
                continue
            self._metrics.outputs_written.labels(self._names[what]).inc(len(chunk))

    def _run(self) -> None:
        next_poll = time.monotonic()
        while not self._stopping.is_set():
            self._wake.wait(_FLUSH_S)
            try:
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self._poll_s
                    self._write_sampled()
                self._drain()
            except Exception:  # one bad batch must not end the thread (the watchdog would stop serve)
                log.exception("store outputs: write failed")
        try:
            self.flush()  # what the engine's last tick produced
        except Exception:
            log.exception("store outputs: last write failed")


def line_writer(store: object) -> LineWriter:
    """The store's line protocol writer; a clear error when it has none (SQLite, memory)."""
    if not isinstance(store, LineWriter):
        raise ConfigError(
            "store.write_outputs=true needs an InfluxDB store (influxdb:// or influxdb2://); "
            "unset it (or false) with this store"
        )
    return store
