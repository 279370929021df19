"""``sensorcast bench soak``: the whole stack under steady load for minutes, verified.

Starts mosquitto and influxd (tools/localservers.py), the real ``sensorcast serve``
process (tools/bench/serveproc.py) and a publisher process, then publishes
``--rate`` readings/s spread over ``--streams`` streams (one reading per stream every
``streams / rate`` seconds, QoS 1, real-time timestamps) for ``--duration`` seconds.
Half-way through, ``--anomalies`` streams get a burst of large, alternating spikes.

It reports, as measured numbers:

* readings published, acknowledged by the broker, and counted in influxd at the end
  (``lost = acknowledged - stored``, must be 0);
* RSS of the serve process after warm-up and at the end (growth in %), its CPU use;
* step latency percentiles (from the ``sensorcast_step_batch_seconds`` histogram, so
  bucket upper bounds) and stream-steps computed;
* alerts emitted on the injected streams (detected / injected) and elsewhere.

Default model: a kit GRU (random weights, tools/modelkit.py) with a 1 s
cadence, so the benchmark needs nothing trained; ``--models-dir`` uses real models
(the quantity published is ``--quantity``, which must be one of its features).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from tools.bench.serveproc import ServeProcess, stack_env
from tools.localservers import free_port, start_influxd, start_mosquitto

# paho walks its whole list of unacknowledged messages on every PUBACK: a window of
# 20,000 cost ~0.5 ms CPU per message, 200 costs ~45 us and still keeps the pipe full.
_MAX_INFLIGHT = 200
_SPIKE_STEPS = 4  # consecutive anomalous readings per injected stream (M-of-N needs >= 2)
_SPIKE = 50.0  # spike height in units of the signal's amplitude (1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=600.0, help="Seconds of load (600 = the 10 minute soak).")
    parser.add_argument("--rate", type=float, default=10_000.0, help="Readings per second.")
    parser.add_argument("--streams", type=int, default=10_000, help="Distinct streams.")
    parser.add_argument("--publishers", type=int, default=2, help="Publisher processes (disjoint streams).")
    parser.add_argument("--anomalies", type=int, default=20, help="Streams that get injected spikes half-way.")
    parser.add_argument("--models-dir", type=Path, help="Models directory (default: a generated kit model).")
    parser.add_argument("--quantity", default="value", help="Quantity published (a feature of the model).")
    parser.add_argument("--warmup", type=float, default=30.0, help="Seconds before the 'start' RSS is taken.")
    parser.add_argument("--workdir", type=Path, help="Keep state and logs here (default: a temp dir, removed).")
    parser.add_argument("--json", type=Path, help="Also write the report as JSON here.")


def _value(stream: int, t_s: float) -> float:
    """A smooth signal per stream: a 5-minute cycle with its own phase, amplitude 1."""
    return 20.0 + math.sin(2 * math.pi * t_s / 300.0 + stream * 0.618)


def _publisher(port: int, rate: float, streams: int, quantity: str, duration: float, t0: float,
               anomalies: int, spike_at: int, part: int, parts: int, out: Any) -> None:
    """Publish on schedule: reading k goes to stream k % streams at t0 + k / rate.

    Publisher ``part`` of ``parts`` sends the readings whose stream % parts == part.
    """
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-publisher-{part}", protocol=paho.MQTTv311)
    c.max_inflight_messages_set(_MAX_INFLIGHT)
    c.max_queued_messages_set(0)
    acked = [0]

    def on_publish(*_: Any) -> None:
        acked[0] += 1

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    topic_s = [f"sensors/s{i:05d}/{quantity}" for i in range(streams)]
    period = streams / rate  # seconds between two readings of one stream
    total = int(duration * rate)
    sent = errors = behind_max = 0
    chunk = max(1, int(rate / 100))  # publish in 10 ms slices
    k = 0
    while k < total:
        due = t0 + k / rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
        else:
            behind_max = max(behind_max, int((now - due) * 1000))
        for j in range(k, min(k + chunk, total)):
            s = j % streams
            if s % parts != part:
                continue
            rnd = j // streams
            ts_s = t0 + rnd * period
            v = _value(s, ts_s)
            if s < anomalies and spike_at <= rnd < spike_at + _SPIKE_STEPS:
                v += _SPIKE if (rnd - spike_at) % 2 == 0 else -_SPIKE
            payload = b'{"ts":%d,"value":%r}' % (int(ts_s * 1e9), v)
            while sent - acked[0] >= _MAX_INFLIGHT:
                time.sleep(0.0005)
            info = c.publish(topic_s[s], payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                errors += 1
            else:
                sent += 1
        k += chunk
    publish_end = time.time()
    deadline = time.time() + 120
    while acked[0] < sent and time.time() < deadline:
        time.sleep(0.05)
    c.disconnect()
    c.loop_stop()
    out.put({"sent": sent, "acked": acked[0], "errors": errors, "behind_max_ms": behind_max,
             "publish_s": publish_end - t0})


class _AlertCounter:
    def __init__(self, port: int) -> None:
        self.firing: dict[str, int] = {}
        self.resolved = 0
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="soak-alerts", protocol=paho.MQTTv311)
        self.client.on_connect = lambda c, *_: c.subscribe("sensorcast/alerts/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            body = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        with self._lock:
            if body.get("state") == "firing":
                sid = str(body.get("stream_id"))
                self.firing[sid] = self.firing.get(sid, 0) + 1
            else:
                self.resolved += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _histogram(metrics_text: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) of a Prometheus histogram, summed over labels."""
    sums: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            sums[bound] = sums.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return sorted(sums.items())


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    if not buckets or buckets[-1][1] <= 0:
        return None
    want = q * buckets[-1][1]
    for bound, count in buckets:
        if count >= want:
            return bound
    return math.inf


def _diff(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    before = dict(a)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in b]


def _counter(metrics_text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines() if line.startswith(name))


def _stored(influx_url: str) -> int:
    r = httpx.post(f"{influx_url}/query", params={"db": "sensorcast"},
                   data={"q": "SELECT count(value) FROM readings"}, timeout=120)
    series = r.json()["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def run(args: argparse.Namespace) -> int:
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sc-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    models = args.models_dir
    if models is None:
        from tools.modelkit import KitSpec, write_model

        models = work / "models"
        shutil.rmtree(models, ignore_errors=True)
        period = args.streams / args.rate
        write_model(models, KitSpec(name="soak", version="1", cadence_s=period, warmup_steps=5,
                                    features=(args.quantity,), hidden=16))
    mosq = start_mosquitto()
    influxd = start_influxd()
    report: dict[str, Any] = {"duration_s": args.duration, "rate": args.rate, "streams": args.streams,
                              "anomalies": args.anomalies}
    sp = ServeProcess(
        stack_env(work / "svc", mosq.url, f"influxdb://127.0.0.1:{influxd.port}/sensorcast", models, free_port(),
                  SENSORCAST_MQTT__CLIENT_ID="soak-serve", SENSORCAST_LOG_LEVEL="WARNING"),
        work / "serve.log",
    )
    (work / "svc").mkdir(exist_ok=True)
    alerts: _AlertCounter | None = None
    try:
        sp.start()
        alerts = _AlertCounter(mosq.port)
        period = args.streams / args.rate
        rounds = int(args.duration / period)
        spike_at = rounds // 2
        t0 = math.ceil(time.time()) + 1.0
        ctx = mp.get_context("spawn")
        out: Any = ctx.Queue()
        pubs = [
            ctx.Process(target=_publisher, args=(mosq.port, args.rate, args.streams, args.quantity, args.duration,
                                                 t0, args.anomalies, spike_at, p, args.publishers, out))
            for p in range(args.publishers)
        ]
        for proc in pubs:
            proc.start()
        print(f"soak: {args.rate:.0f} readings/s over {args.streams} streams for {args.duration:.0f} s "
              f"(serve pid {sp.pid}, logs in {work})", flush=True)
        time.sleep(max(0.0, t0 + args.warmup - time.time()))
        rss_start = sp.rss_bytes()
        cpu_start = sp.cpu_seconds()
        text_start = sp.http.get("/metrics").text
        hist_start = _histogram(text_start, "sensorcast_step_batch_seconds")
        steps_start = _counter(text_start, "sensorcast_steps_total")
        rss_max = rss_start
        not_ready = 0
        next_print = time.time() + 30
        while any(proc.is_alive() for proc in pubs) and out.qsize() < len(pubs):
            time.sleep(1.0)
            rss_max = max(rss_max, sp.rss_bytes())
            ready = sp.ready()  # sampled once a second
            if ready["http_status"] != 200:
                not_ready += 1
            if time.time() >= next_print:
                next_print += 30
                print(f"  t={time.time() - t0:5.0f} s  rss={sp.rss_bytes() / 2**20:6.1f} MiB  "
                      f"readiness={ready['status']}", flush=True)
        parts = [out.get(timeout=150) for _ in pubs]
        for proc in pubs:
            proc.join(10)
        pubres = {k: sum(p[k] for p in parts) for k in ("sent", "acked", "errors")}
        pubres["behind_max_ms"] = max(p["behind_max_ms"] for p in parts)
        pubres["publish_s"] = max(p["publish_s"] for p in parts)
        # Let the last readings through the writer and the engine, then read the end state.
        deadline = time.time() + 120
        stored = _stored(influxd.url)
        while stored < pubres["acked"] and time.time() < deadline:
            time.sleep(1.0)
            stored = _stored(influxd.url)
        time.sleep(3.0)
        text = sp.http.get("/metrics").text
        rss_end = sp.rss_bytes()
        cpu_end = sp.cpu_seconds()
        steady = _diff(hist_start, _histogram(text, "sensorcast_step_batch_seconds"))
        streams_status, cursor = [], None
        while True:  # GET /v1/streams is paged (X-Next-Cursor while more follow)
            page = sp.http.get("/v1/streams", params={"limit": 10_000, **({"cursor": cursor} if cursor else {})})
            streams_status += page.json()
            cursor = page.headers.get("x-next-cursor")
            if cursor is None:
                break
        by_status: dict[str, int] = {}
        for s in streams_status:
            by_status[s["status"]] = by_status.get(s["status"], 0) + 1
        measured_s = max(1e-9, pubres["publish_s"] - args.warmup)
        injected = {f"s{i:05d}/{args.quantity}" for i in range(args.anomalies)}
        firing = dict(alerts.firing)
        report.update({
            "published": pubres["sent"], "acked_by_broker": pubres["acked"], "publish_errors": pubres["errors"],
            "publisher_behind_max_ms": pubres["behind_max_ms"],
            "achieved_rate": round(pubres["sent"] / max(pubres["publish_s"], 1e-9), 1),
            "stored_in_influxd": stored, "lost": pubres["acked"] - stored,
            "rss_start_mib": round(rss_start / 2**20, 1), "rss_end_mib": round(rss_end / 2**20, 1),
            "rss_max_mib": round(rss_max / 2**20, 1),
            "rss_growth_pct": round(100.0 * (rss_end - rss_start) / max(rss_start, 1), 2),
            "serve_cpu_cores": round((cpu_end - cpu_start) / measured_s, 2),
            "step_batches": int(steady[-1][1]) if steady else 0,
            "step_p50_s": _quantile(steady, 0.5), "step_p90_s": _quantile(steady, 0.9),
            "step_p99_s": _quantile(steady, 0.99), "step_max_bucket_s": _quantile(steady, 1.0),
            "stream_steps": _counter(text, "sensorcast_steps_total") - steps_start,
            "readyz_not_ready_seconds": not_ready,
            "streams_by_status": by_status,
            "refused": sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                           if line.startswith("sensorcast_readings_refused_total")),
            "late_dropped": sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                if line.startswith("sensorcast_readings_late_dropped_total")),
            "alerts_injected_streams_detected": len(injected & set(firing)),
            "alerts_on_other_streams": sum(n for s, n in firing.items() if s not in injected),
            "other_streams_alerting": len(set(firing) - injected),
            "alerts_resolved": alerts.resolved,
        })
    finally:
        if alerts is not None:
            alerts.close()
        sp.close()
        mosq.stop()
        influxd.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report.get("lost", 1) == 0 else 1


def _ms(v: Any) -> str:
    return "n/a" if v is None else ("inf" if v == math.inf else f"<= {v * 1000:g} ms")


def _print(r: dict[str, Any]) -> None:
    print("\nsoak results")
    print(f"  load          {r['rate']:.0f} readings/s over {r['streams']} streams for {r['duration_s']:.0f} s "
          f"(achieved {r.get('achieved_rate')}/s, publisher at most {r.get('publisher_behind_max_ms')} ms behind)")
    print(f"  readings      published {r.get('published')}, broker acked {r.get('acked_by_broker')}, "
          f"stored in influxd {r.get('stored_in_influxd')}, LOST {r.get('lost')}")
    print(f"  memory        RSS {r.get('rss_start_mib')} MiB after warm-up -> {r.get('rss_end_mib')} MiB at end "
          f"({r.get('rss_growth_pct')} %), max {r.get('rss_max_mib')} MiB; serve used {r.get('serve_cpu_cores')} cores")
    print(f"  steps         after warm-up {r.get('stream_steps'):.0f} stream-steps in {r.get('step_batches')} batched "
          f"calls; readyz not ready for {r.get('readyz_not_ready_seconds')} s of the run")
    print(f"                "
          f"latency p50 {_ms(r.get('step_p50_s'))}, p90 {_ms(r.get('step_p90_s'))}, p99 {_ms(r.get('step_p99_s'))}")
    print(f"  streams       {r.get('streams_by_status')}; refused {r.get('refused'):.0f}, "
          f"late/duplicate dropped {r.get('late_dropped'):.0f}")
    print(f"  alerts        injected streams detected {r.get('alerts_injected_streams_detected')}/{r['anomalies']}; "
          f"{r.get('alerts_on_other_streams')} firing events on {r.get('other_streams_alerting')} other streams")
