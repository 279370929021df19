"""One settings object, grouped by component, built once in the entry point.

Every field is documented; the README's configuration table is generated from these
descriptions (``sensorcast config --markdown``). Environment variables use the prefix
``SENSORCAST_`` and ``__`` between group and field, e.g. ``SENSORCAST_MQTT__URL``.
Secrets can come from files (``*_file`` fields) so they never sit in the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Role = Literal["ingest", "inference", "api"]
ROLES: tuple[Role, ...] = get_args(Role)
# The URL schemes service/mqtt/address.py and service/store/__init__.py understand.
MQTT_SCHEMES = ("mqtt", "tcp", "mqtts", "ssl")
STORE_SCHEMES = ("influxdb", "influxdbs", "influxdb2", "influxdb2s", "sqlite", "memory")


def read_secret(value: SecretStr | None, file: Path | None) -> str | None:
    """The secret from ``file`` when given (trailing newline stripped), else ``value``."""
    if file is not None:
        return file.read_text(encoding="utf-8").rstrip("\r\n")
    return value.get_secret_value() if value is not None else None


class MqttSettings(BaseModel):
    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://[user[:pass]@]host:port, or mqtts:// for TLS.",
    )
    client_id: str = Field(
        "sensorcast-ingest",
        description="Fixed client id; with a persistent session the broker queues readings while we are away.",
    )
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT version of the ingester: 5 (session expiry, receive maximum) or 3.1.1 "
        "(persistent session via clean_session=false; for brokers without MQTT 5, e.g. the demo's amqtt).",
    )
    session_expiry_s: int = Field(
        7 * 24 * 3600, description="MQTT 5 session expiry: how long the broker keeps our queue."
    )
    keepalive_s: int = Field(30, description="MQTT keepalive interval in seconds.")
    password_file: Path | None = Field(None, description="File holding the MQTT password.")
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker (mqtts).")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key for mutual TLS.")
    tls_insecure: bool = Field(False, description="Skip broker hostname verification (testing only).")
    receive_maximum: int = Field(
        65535,
        description="Unacknowledged QoS 1 messages the broker may send us at once (MQTT 5 Receive Maximum).",
    )
    reconnect_min_s: float = Field(0.5, description="First reconnect delay; doubles up to the max.")
    reconnect_max_s: float = Field(30.0, description="Longest reconnect delay.")

    @field_validator("url")
    @classmethod
    def _mqtt_scheme(cls, v: str) -> str:
        # Checked here, not only where the client connects, so a typo is refused before anything starts.
        try:
            parts = urlsplit(v)
            ok = parts.scheme.lower() in MQTT_SCHEMES and bool(parts.hostname) and parts.port == parts.port
        except ValueError:  # a port that is not a number, or out of range
            ok = False
        if not ok:
            raise ValueError("expected mqtt://host:port or mqtts://host:port")
        return v


class IngestSettings(BaseModel):
    topic: str = Field(
        "sensors/{device}/{quantity}",
        description="Topic template (Telegraf-style). {device}, {quantity} and {tag_*} fields; "
        "without {quantity} the payload's named fields give the quantities.",
    )
    qos: int = Field(
        1, ge=0, le=2,
        description="Subscription QoS: 1 (at-least-once, acknowledged once durable) or 0. 2 is refused at start-up: "
        "paho answers PUBREC before the message is handled, so a crash would lose it.",
    )
    max_payload_bytes: int = Field(64 * 1024, description="Payloads larger than this are refused.")
    max_tags: int = Field(
        32, ge=0, description="Readings with more extra tags than this (device and quantity not counted) are refused "
        "(too_many_tags).",
    )
    max_series_key_bytes: int = Field(
        4096, gt=0, le=60_000,
        description="Readings whose escaped series key (device, quantity and tags as line protocol, measurement not "
        "counted) is longer than this are refused (key_too_long); influxd refuses keys over 64 KiB for good.",
    )
    max_past_s: float = Field(
        10 * 365 * 24 * 3600.0, description="Refuse readings older than this many seconds."
    )
    max_future_s: float = Field(
        24 * 3600.0, description="Refuse readings further ahead of the clock than this."
    )
    dead_letter_topic: str | None = Field(
        None, description="Republish refused payloads here (with the reason), when set."
    )
    share_group: str | None = Field(
        None,
        description="MQTT shared subscription group ($share/<group>/...): several ingesters (each with its own "
        "client_id and spool_dir) split the messages between them.",
    )
    batch_size: int = Field(5000, description="Store write batch size (points).")
    batch_interval_s: float = Field(
        0.05, description="Flush a partial batch after this long (bounds the store-then-alert latency)."
    )
    queue_max: int = Field(
        50_000, description="Messages (or HTTP submits) waiting for the writer before intake blocks (backpressure)."
    )

    @field_validator("qos")
    @classmethod
    def _no_qos2(cls, v: int) -> int:
        if v == 2:
            raise ValueError(
                "ingest.qos=2 is not supported: paho sends PUBREC (the broker then forgets the message) before "
                "sensorcast has stored it, so a crash would lose it; use 1 (at-least-once: acknowledged only "
                "once stored, a redelivered duplicate overwrites the same point)"
            )
        return v


class StoreSettings(BaseModel):
    url: str = Field(
        "sqlite:///./data/sensorcast.db",
        description="influxdb://[user:pass@]host:8086/db, influxdb2://host:8086/bucket?org=..., or sqlite:///path.",
    )
    measurement: str = Field("readings", description="InfluxDB measurement / SQLite table for readings.")
    password_file: Path | None = Field(None, description="File holding the InfluxDB 1.x password.")
    token_file: Path | None = Field(None, description="File holding the InfluxDB 2.x/3.x token.")
    timeout_s: float = Field(10.0, description="HTTP timeout for store requests.")
    spool_dir: Path = Field(Path("./data/spool"), description="Durable spool for batches the store could not take.")
    spool_max_bytes: int = Field(
        1024 * 1024 * 1024, description="Spool size limit; when full, intake stops acknowledging."
    )
    retention_days: float | None = Field(
        None, ge=1 / 24,
        description="Delete readings older than this many days (SQLite: pruned every prune_interval_s; InfluxDB: "
        "the database's default retention policy / the bucket's retention); empty: keep forever.",
    )
    downsample_after_days: float | None = Field(
        None, ge=1 / 24,
        description="Replace readings older than this many days by hourly means (SQLite, InfluxDB 1.x); "
        "empty: keep every reading.",
    )
    prune_interval_s: float = Field(
        3600.0, gt=0, description="How often the ingest process prunes and downsamples the SQLite store."
    )
    write_outputs: bool | None = Field(
        None,
        description="Write forecasts, anomaly scores and alert events to the store as their own measurements "
        "(for Grafana); empty: on with InfluxDB, off otherwise (InfluxDB only).",
    )
    outputs_interval_s: float = Field(
        10.0, ge=0,
        description="At most one forecast and one score point per stream per this many seconds (0: every step).",
    )
    outputs_queue_max: int = Field(
        100_000, gt=0, description="Output points waiting for the store; beyond it they are dropped and counted.",
    )
    forecasts_measurement: str = Field("forecasts", description="Measurement of the written forecasts.")
    scores_measurement: str = Field("scores", description="Measurement of the written anomaly scores.")
    alerts_measurement: str = Field("alerts", description="Measurement of the written alert events.")

    @field_validator("url")
    @classmethod
    def _store_scheme(cls, v: str) -> str:
        if v.split("://", 1)[0].lower() not in STORE_SCHEMES or "://" not in v:
            raise ValueError("expected influxdb://host:8086/db, influxdb2://host:8086/bucket?org=..., "
                             "sqlite:///path or memory://")
        return v

    @field_validator("downsample_after_days")
    @classmethod
    def _downsample_before_retention(cls, v: float | None, info: ValidationInfo) -> float | None:
        keep = info.data.get("retention_days")
        if v is not None and keep is not None and v >= keep:
            raise ValueError(f"must be less than store.retention_days ({keep:g}): older readings are deleted anyway")
        return v


class StreamRules(BaseModel):
    """Alert settings of a stream (or, in a binding, of every stream it serves). Every field
    is optional: empty inherits (anomaly settings < binding rules < the stream's own, set
    with PUT /v1/streams/{id}/settings). Limits are in the stream's raw units."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, gt=0, lt=1, description="Anomaly score threshold to fire.")
    accept_after_steps: int | None = Field(
        None, ge=0, description="Steps of persistent deviation after which the new level is accepted (0: never)."
    )
    min: float | None = Field(None, description="Physical lower limit: a reading below it is out_of_range.")
    max: float | None = Field(None, description="Physical upper limit: a reading above it is out_of_range.")
    max_rate: float | None = Field(None, gt=0, description="Largest plausible change per second (rate_of_change).")
    stuck_steps: int | None = Field(None, ge=0, description="Steps without change beyond the tolerance: stuck (0: off).")
    stuck_tolerance: float | None = Field(None, ge=0, description="A change up to this much counts as no change.")
    silent_after: float | None = Field(None, ge=0, description="Cadences without a reading: silent (0: off).")
    lower: float | None = Field(None, description="Operating lower limit for predicted_breach.")
    upper: float | None = Field(None, description="Operating upper limit for predicted_breach.")
    breach_probability: float | None = Field(
        None, gt=0, lt=1, description="Announce a predicted breach at this probability of crossing a limit."
    )
    unit: str | None = Field(
        None, min_length=1, max_length=32, description="Unit of the values (°C, kWh...): shown in the API, alerts, dashboard."
    )
    features: dict[str, StreamRules] | None = Field(
        None, description="Per-feature rules of a multivariate stream (by feature name); they win over these."
    )

    @field_validator("unit")
    @classmethod
    def _printable_unit(cls, v: str | None) -> str | None:
        # As units from payloads (service/units.py): shown in the API, alerts and dashboard.
        if v is not None and (not v.strip() or any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in v)):
            raise ValueError(f"expected a unit such as °C or kWh (not blank, no control characters), found {v!r}")
        return v


class ModelBinding(BaseModel):
    model: str = Field(description="Model name under the models directory.")
    version: str | None = Field(None, description="Pinned version; newest when empty.")
    device: str = Field("*", description="Glob on device names this model serves.")
    quantity: str = Field("*", description="Glob on quantities (univariate models).")
    rules: StreamRules | None = Field(None, description="Alert rules and limits for the streams of this binding.")


class ModelsSettings(BaseModel):
    dir: Path = Field(Path("./models"), description="Models directory: <name>/<version>/{model.onnx,manifest.json}.")
    bindings: list[ModelBinding] = Field(
        default_factory=list,
        description="Which streams each model serves (JSON list, first match wins); they win over the streams a "
        "model's manifest declares. Empty: the models' declared streams, then the feature-name rule (docs/engine.md).",
    )
    watch: bool = Field(True, description="Reload models when files under the directory change.")
    threads: int = Field(1, description="ONNX Runtime intra-op threads per model.")


class StreamsSettings(BaseModel):
    late_tolerance_steps: int = Field(
        2,
        description="Out-of-order readings are merged while their bucket has not been fed; an empty bucket waits "
        "this many cadence steps for a late reading before it is fed as missing. Readings for buckets already "
        "fed are counted drops (reason late).",
    )
    max_gap_steps: int = Field(
        12, description="Gaps up to this many steps are bridged with missing values; longer gaps re-warm the stream."
    )
    checkpoint_dir: Path = Field(Path("./data/state"), description="Where stream state checkpoints are written.")
    checkpoint_interval_s: float = Field(60.0, description="Seconds between state checkpoints.")
    settings_path: Path = Field(
        Path("./data/stream_settings.sqlite"),
        description="SQLite file of the per-stream alert rules set with PUT /v1/streams/{id}/settings.",
    )
    tick_s: float = Field(0.05, description="Inference loop period: due streams are stepped in one batch per tick.")
    gather_s: float = Field(
        0.002, ge=0, le=1,
        description="After a reading arrives, the engine waits this long for more before it steps: one batched "
        "call per burst instead of one per message (a call has ~180 us of fixed cost). Adds at most this much "
        "to a reading's path to its forecast and alert.",
    )
    window_every: int = Field(
        1, ge=1,
        description="Window models recompute their forecast every this many steps (capped at the horizon); in "
        "between, each step is scored against the latest forecast at the right offset and GET .../forecast "
        "serves that forecast with its own made_at. Step models always advance every step.",
    )
    max_buffered: int = Field(
        1_000_000,
        description="Readings buffered for the engine between ticks; beyond this, new ones are dropped for "
        "inference (counted, reason overload; they are still stored) instead of exhausting memory.",
    )
    close_grace_s: float = Field(
        2.0,
        description="A multivariate (device) bucket still missing some quantities is held this long past its end "
        "for them to arrive before it is fed with those features missing.",
    )
    max_future_s: float = Field(
        300.0,
        description="Readings stamped further than this ahead of the engine's clock are dropped (reason future): "
        "one bad clock must not push a stream's state ahead of time.",
    )
    max_streams: int = Field(
        100_000, ge=0,
        description="Streams the engine serves at most (0: no limit). A reading that would start a stream beyond "
        "this is refused for inference (counted in sensorcast_streams_refused{reason=max_streams}, logged at most "
        "every 10 s) and still stored; known streams keep forecasting. About 2 KB per stream for a 2x64 GRU.",
    )
    max_streams_per_device: int = Field(
        1_000, ge=0,
        description="Streams one device (topic device level, any quantities and tags) may have at most (0: no "
        "limit); beyond it a new stream is refused like max_streams (reason max_streams_per_device).",
    )
    idle_evict_s: float = Field(
        3600.0, ge=0,
        description="A stream without a reading for this long (engine clock, and at least two cadences) is "
        "evicted: its row is freed, its state kept in memory while it could still be continued (max_gap_steps "
        "buckets after its last step) and restored if it returns. A firing stream stays until then, and its alert "
        "resolves with reason evicted. 0: never evict.",
    )
    warmup_wait_s: float = Field(
        0.2, ge=0,
        description="Store reads for warm-up and catch-up run off the engine's lock; the tick that asked waits "
        "up to this long for them (after stepping the other streams) so new streams start in the same tick. "
        "A slower answer is applied by a later tick; the new streams' readings wait for it.",
    )


class AnomalySettings(BaseModel):
    scorer: Literal["evidence", "spread", "surprise"] = Field(
        "evidence",
        description="Alert score. 'evidence' (default): the largest of one-step, multi-step (forecasts made up to "
        "4 steps earlier), EWMA-mean and variance evidence of the residual vector (Mahalanobis with the model's "
        "validation covariance), each a calibrated tail probability; readings above the threshold are kept out "
        "of the model state. 'spread': the residual's two-sided normal tail in units of the model's "
        "predicted spread, else an EWMA of |residual| (0.99 = a 1-in-100 residual). 'surprise': the "
        "NAB-benchmarked composite (service/anomaly/surprise.py: residual in learnt-spread units vs its past "
        "peak, range novelty, rising edge); one threshold fits streams of any scale, use it with min_count=1.",
    )
    spread_alpha: float | None = Field(
        None,
        gt=0,
        le=1,
        description="EWMA rate of the robust residual spread; empty: the scorer's own (spread 0.05, ~20 steps; "
        "surprise 0.003, ~300 steps, as benchmarked on NAB).",
    )
    threshold: float | None = Field(
        None,
        description="Score threshold to fire; empty: the model's default (scorer spread) or 0.5 (scorer surprise).",
    )
    extreme_threshold: float | None = Field(
        None, gt=0, lt=1,
        description="Score that fires on a single step (M of N is for borderline evidence); empty: the model's "
        "calibration, else 30x rarer than threshold.",
    )
    clear_threshold: float | None = Field(None, description="Score below which a firing alert resolves (hysteresis).")
    min_count: int = Field(2, description="M: anomalous steps among the last N needed to fire.")
    window: int = Field(3, description="N: the window for the M-of-N rule.")
    cooldown_s: float = Field(300.0, description="After resolving, no new firing for this long.")
    accept_after_steps: int | None = Field(
        None, ge=0,
        description="A deviation that persists this many steps is accepted as the new level: the model re-baselines "
        "from the recent readings and a level_shift event resolves the alert. Empty: 10 minutes of steps, at least "
        "8 and at most 600. 0: never (a fault is never the new normal).",
    )
    stuck_steps: int = Field(
        30, ge=0,
        description="A stream whose readings do not change beyond stuck_tolerance for this many steps (and longer "
        "than 3x its longest such run in normal operation: quantised sensors repeat) is stuck. 0: off.",
    )
    stuck_tolerance: float = Field(0.0, ge=0, description="A change up to this much counts as no change (stuck).")
    silent_after: float = Field(
        10.0, ge=0,
        description="Cadences without a reading (wall clock, checked every second, at least 30 s; a stream's or "
        "binding's own silent_after is taken as given) before a silent alert. 0: off.",
    )
    breach_probability: float = Field(
        0.9, gt=0, lt=1, description="predicted_breach fires when a limit is crossed within the horizon with at "
        "least this probability (from the forecast's spread).",
    )


class AlertsSettings(BaseModel):
    topic: str = Field(
        "sensorcast/alerts/{stream}",
        description="Alert event topic (QoS 1). {stream} is the stream id (device/quantity[;k=v...], names "
        "percent-escaped): one topic per stream; {device} and {quantity} are also available.",
    )
    state_topic: str = Field(
        "sensorcast/state/{stream}/{check}",
        description="Retained current alert state per stream and check (same placeholders, plus {check}: anomaly, "
        "stuck, silent, out_of_range, rate_of_change or predicted_breach).",
    )
    forecast_topic: str | None = Field(None, description="Publish each new forecast here when set.")
    outbox_dir: Path = Field(Path("./data/outbox"), description="Alerts not yet acknowledged by the broker.")
    history_path: Path = Field(
        Path("./data/alerts.sqlite"),
        description="SQLite file of the alert history that GET /v1/alerts reads (whatever the readings store is).",
    )
    history_max_rows: int = Field(
        100_000, ge=0, description="Alert history keeps at most this many events, the oldest go first (0: no limit)."
    )
    history_max_days: float = Field(
        90.0, ge=0, description="Alert history events older than this (since written) are deleted (0: no limit)."
    )
    client_id: str = Field(
        "sensorcast-alerts", description="MQTT client id of the alert publisher (must differ from the ingester's)."
    )
    enabled: bool = Field(True, description="Publish alerts on MQTT (off: alerts are only listed over REST).")


class WebhookSettings(BaseModel):
    urls: list[str] = Field(
        [], description='POST every alert event (JSON) to each of these http(s) URLs, e.g. ["https://h/x"] (JSON '
        "list in the environment). Empty: no webhooks.",
    )
    secret_file: Path | None = Field(
        None, description="File with the HMAC-SHA256 key: requests carry X-Sensorcast-Signature (see docs/api.md). "
        "Unset: unsigned.",
    )
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook request.")
    backoff_s: float = Field(1.0, gt=0, description="First retry delay after a failed delivery; doubles per failure.")
    backoff_max_s: float = Field(300.0, gt=0, description="Longest retry delay.")
    max_attempts: int = Field(
        0, ge=0, description="Give an event up after this many failed attempts (0: no limit, see max_age_s)."
    )
    max_age_s: float = Field(
        3 * 86_400.0, ge=0, description="Give an event up when undelivered this long after it was queued (0: never)."
    )
    outbox_path: Path = Field(
        Path("./data/webhooks.sqlite"), description="SQLite file of the webhook events not yet delivered."
    )
    checks: list[str] = Field([], description="Send only alerts of these checks (empty: every check).")
    states: list[Literal["firing", "resolved"]] = Field(
        ["firing", "resolved"], description="Send only these alert states."
    )

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            try:
                parts = urlsplit(url)
                ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and parts.port == parts.port
            except ValueError:
                ok = False
            if not ok:
                # Not the URL itself: its path may be a token, and the message is printed.
                raise ValueError(f"item {v.index(url)}: expected http(s)://host[:port]/path")
        return v


class HomeAssistantSettings(BaseModel):
    enabled: bool = Field(
        False,
        description="Publish Home Assistant MQTT discovery (retained): each stream's value, forecast and alert "
        "state as entities. Needs alerts.enabled; sets alerts.forecast_topic to sensorcast/forecasts/{stream} "
        "when it is empty.",
    )
    discovery_prefix: str = Field(
        "homeassistant", pattern=r"^[^/+#]+(/[^/+#]+)*$", description="Home Assistant's MQTT discovery prefix."
    )
    node_id: str = Field(
        "sensorcast", pattern=r"^[a-zA-Z0-9_-]+$",
        description="Node id in the discovery topics (<prefix>/sensor/<node_id>/...); distinct per sensorcast "
        "instance on one broker.",
    )
    availability_topic: str = Field(
        "sensorcast/{node_id}/availability",
        description="Retained online/offline of this instance (offline: its MQTT last will), which the forecast "
        "and alert entities follow. {node_id} is filled in.",
    )
    max_streams: int = Field(
        200, ge=1, description="Streams discovered at most (each: value and forecast entities, one per check that alerted); "
        "later ones are logged once."
    )
    refresh_s: float = Field(
        60.0, gt=0, description="Seconds between checks for changed discovery documents (a unit set meanwhile)."
    )
    client_id: str = Field("sensorcast-homeassistant", description="MQTT client id of the discovery publisher.")


class ApiSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Bind address of the REST API and dashboard.")
    port: int = Field(8080, description="Port of the REST API and dashboard.")
    api_key_file: Path | None = Field(None, description="File with the write-scope API key; unset: no auth.")
    read_key_file: Path | None = Field(
        None, description="File with the read-scope API key; unset: reads open. Alone (no write key), write routes "
        "need this key too.",
    )
    allow_open: bool = Field(
        False,
        description="Start even though the API binds a non-loopback address with no key, leaving POST /v1/readings "
        "and /v1/models/reload open to anyone who can reach it (off: such a start is refused).",
    )
    max_body_bytes: int = Field(1024 * 1024, description="Request bodies larger than this get 413.")
    band_z: float = Field(
        1.96, gt=0, description="Forecast bands are mean ± band_z · scale (1.96: 95% if the spread is Gaussian)."
    )
    predict_max_steps: int = Field(
        10_000, ge=1, le=100_000,
        description="POST /v1/predict: history rows (model steps) accepted at most; more get 413. A step model "
        "makes one model call per row.",
    )
    predict_max_values: int = Field(
        200_000, ge=1,
        description="POST /v1/predict: history rows x features accepted at most (the work of one request); more "
        "get 413.",
    )
    metrics_firing_streams: int = Field(
        50, ge=0,
        description="/metrics lists sensorcast_stream_alert_firing{stream,check} for at most this many firing "
        "streams (highest score first); sensorcast_alerts_firing{check} counts them all.",
    )


class GcSettings(BaseModel):
    freeze: bool = Field(
        True,
        description="Freeze long-lived objects after start so Python's full collections skip them "
        "(measured: 50-70 ms pauses every few seconds at 10k readings/s without it, 2-5 ms with it).",
    )
    refreeze_s: float = Field(
        600.0, gt=0, description="Seconds between collections of the objects made since the last freeze, "
        "whose survivors (new streams, mostly) are frozen too (the first after 60 s).",
    )
    full_collect_s: float = Field(
        3600.0, gt=0, description="Seconds between full collections (frozen objects included) that reclaim "
        "reference cycles among frozen objects: one pause the size of the whole heap.",
    )


class WatchdogSettings(BaseModel):
    interval_s: float = Field(
        1.0, gt=0,
        description="Seconds between checks that the pipeline threads (MQTT intake, store writer, engine ticks) "
        "are alive. A dead one fails /readyz at once; at the next check the process exits with code 70 so its "
        "supervisor restarts it.",
    )
    exit_grace_s: float = Field(
        30.0, gt=0,
        description="After a dead thread, time for the orderly stop (flush, checkpoint) before the process is "
        "ended anyway.",
    )


class NatsSettings(BaseModel):
    """Scale-out on NATS JetStream (docs/scale.md). Off unless ``url`` is set: the single-gateway
    path (mosquitto, one process) is the default."""

    url: str | None = Field(
        None,
        description="NATS servers, comma-separated (nats://host:4222,...). Set: readings come from JetStream "
        "(ingest role: a writer in the writers' consumer group; inference role: a replica owning partitions).",
    )
    partitions: int = Field(
        16, ge=1, le=1024,
        description="Partitions of the readings stream; must equal N in the servers' mapping "
        "p.{{partition(N,1)}}.<topic> (deploy/nats/). Fixed once readings flow: see docs/scale.md to grow it.",
    )
    stream: str = Field(
        "SENSORCAST", pattern=r"^[A-Za-z0-9_-]+$",
        description="JetStream stream of the readings (subjects p.>); the other buckets are named after it.",
    )
    replicas: int = Field(1, ge=1, le=5, description="JetStream replicas of the streams and buckets (3 on a cluster).")
    retention_h: float = Field(
        168.0, gt=0,
        description="Hours the readings stream keeps messages: how far back a new partition owner can catch up.",
    )
    lease_ttl_s: float = Field(
        6.0, ge=1,
        description="Partition lease lifetime; renewed every third of it. A dead replica's partitions move "
        "after at most this long.",
    )
    replica_id: str = Field("", description="This process's name in leases and logs (empty: hostname-pid).")
    writer_durable: str = Field(
        "sensorcast-writers", pattern=r"^[A-Za-z0-9_-]+$",
        description="Durable pull consumer shared by every writer process (one consumer group over all partitions).",
    )
    checkpoint_interval_s: float = Field(
        10.0, gt=0,
        description="Seconds between a replica's checkpoints of each owned partition (to the JetStream object "
        "store); a new owner replays the stream from the checkpoint on.",
    )
    fetch_batch: int = Field(1000, ge=1, le=100_000, description="Messages fetched per pull request.")
    creds_file: Path | None = Field(None, description="NATS credentials file (user JWT and seed); unset: none.")

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in (self.url or "").split(",") if u.strip()]


class Settings(BaseSettings):
    """Everything sensorcast can be told, grouped by component."""

    model_config = SettingsConfigDict(
        env_prefix="SENSORCAST_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    log_level: str = Field("INFO", description="Python logging level.")
    # NoDecode: the environment gives "ingest,api", not JSON; the validator splits it.
    roles: Annotated[frozenset[Role], NoDecode] = Field(
        "ingest,inference,api",  # text, as the environment gives it
        validate_default=True, description="Roles this process runs (comma-separated).",
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    streams: StreamsSettings = Field(default_factory=StreamsSettings)
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    gc: GcSettings = Field(default_factory=GcSettings)
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: object) -> frozenset[str]:
        """``"ingest, api"`` (or a collection of names) -> the set of roles; unknown names refused."""
        names = value.split(",") if isinstance(value, str) else value
        if not isinstance(names, (list, tuple, set, frozenset)):
            raise ValueError(f"roles: expected comma-separated names, found {value!r}")
        roles = frozenset(str(n).strip() for n in names if str(n).strip())
        unknown = roles - set(ROLES)
        if unknown:
            raise ValueError(f"roles: {sorted(unknown)} not understood (expected some of {ROLES})")
        if not roles:
            raise ValueError(f"roles: none given (expected some of {ROLES})")
        return roles

    @field_validator("homeassistant")
    @classmethod
    def _homeassistant_topics(cls, v: HomeAssistantSettings, info: ValidationInfo) -> HomeAssistantSettings:
        # Discovery points entities at what sensorcast publishes: without alerts on MQTT they would stay empty.
        # (A field validator, not a model one, so a refusal names SENSORCAST_HOMEASSISTANT__*.)
        alerts = info.data.get("alerts")
        if v.enabled and isinstance(alerts, AlertsSettings):
            if not alerts.enabled:
                raise ValueError("homeassistant.enabled needs alerts.enabled (the entities' states are the alerts' "
                                 "MQTT messages)")
            if not alerts.forecast_topic:
                alerts.forecast_topic = "sensorcast/forecasts/{stream}"
        return v
