"""``sensorcast bench latency``: publish -> alert latency and REST forecast latency under load.

Starts its own mosquitto and influxd, writes a kit model (random-weight GRU built with
onnx.helper; needs the ``train`` extra's onnx) unless ``--models-dir`` is given, and runs
the real ``sensorcast serve`` as a child process. Then, for ``--seconds``:

* the publisher (this process; raw-socket MQTT by default, see loadgen.py, or paho with
  ``--clients paho``) sends ``--rate`` readings/s over MQTT QoS 1, round-robin
  over ``--streams`` streams, each reading stamped one model cadence after the stream's
  previous one (so every reading is one model step, fed as soon as it arrives);
  once warm, every stream gets one spike (+10 spreads) at a known time;
* a watcher process subscribes to the alert topic and stamps each alert's arrival;
* a prober process calls ``GET /v1/streams/{id}/forecast`` at ``--http-rate`` req/s
  (raw-socket HTTP/1.1 by default, httpx with ``--clients paho``).

Publish -> alert latency is matched per (stream, reading timestamp) and includes the
whole path: broker, decode, engine (fed at decode time, beside the durable store write
to influxd), gather, tick, ONNX step, score, decision, outbox fsync, publish, broker.
All processes share this machine's cores with mosquitto and influxd, so the numbers are
for the whole stack on one box.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tools.localservers import free_port, start_influxd, start_mosquitto

C_S = 60.0  # kit cadence (s)
C = int(C_S * 1e9)
T0 = 1_700_000_000 // 60 * C  # cadence-aligned start: each reading fills its bucket exactly
WARM_ROUNDS = 30  # rounds before spikes start (kit warm-up is 10 steps)
# Unacknowledged publishes allowed: small, so a reading is on the wire when it is stamped
# (a deep client-side queue would be counted as service latency); a slow stack shows up
# as a lower achieved rate instead.
_MAX_UNACKED = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=10_000, help="Readings per second published.")
    parser.add_argument("--streams", type=int, default=1_000, help="Distinct streams.")
    parser.add_argument("--seconds", type=float, default=30.0, help="Publishing time.")
    parser.add_argument("--http-rate", type=float, default=200.0, help="GET forecast requests per second.")
    parser.add_argument("--hidden", type=int, default=64, help="Kit model hidden size (2 GRU layers).")
    parser.add_argument("--models-dir", type=Path, help="Use these models instead of a kit model "
                        "(must serve quantity 'value' with a 60 s cadence).")
    parser.add_argument("--tick-s", type=float, default=0.01, help="Engine tick period of the service.")
    parser.add_argument("--batch-interval-s", type=float, default=0.01, help="Ingest flush interval of the service.")
    parser.add_argument("--topology", choices=("one", "split"), default="one",
                        help="one: a single process with every role (as docker-compose runs it); split: an "
                        "ingest process and an inference+API process with its own subscription.")
    parser.add_argument("--gather-s", type=float, help="streams.gather_s of the service (default: its default).")
    parser.add_argument("--clients", choices=("raw", "paho"), default="raw",
                        help="Load generators: raw (pre-built packets on plain sockets, see loadgen.py) or "
                        "paho + httpx (~0.3 cores more on the box at 10k/s).")


def _watcher(port: int, out: Any, ready: Any, stop: Any) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[tuple[str, int, str, float]] = []

    def on_message(c: Any, u: Any, msg: Any) -> None:
        now = time.time()
        a = orjson.loads(msg.payload)
        got.append((a["stream_id"], a["ts_ns"], a["state"], now))

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-latency-watch")
    c.on_connect = lambda c, u, f, rc, p: c.subscribe("sensorcast/alerts/#", qos=1)
    c.on_subscribe = lambda *a: ready.set()
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    stop.wait()
    c.loop_stop()
    out.put(got)


def _prober(url: str, streams: int, rate: float, out: Any, go: Any, stop: Any, raw: bool, clients: int = 4) -> None:
    """``clients`` threads, each on its own keep-alive connection, together at ``rate`` req/s.

    Several connections keep the offered rate when one request is slow (one sequential
    client falls behind as soon as a request takes longer than 1/rate).
    """
    import threading

    import httpx

    from tools.bench.loadgen import RawHttp

    lat: list[float] = []
    codes: dict[int | str, int] = {}
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        interval = clients / rate
        host, port = url.removeprefix("http://").split(":")
        with (RawHttp(host, int(port)) if raw else httpx.Client(base_url=url, timeout=5)) as http:
            go.wait()
            nxt = time.perf_counter() + interval * seed / clients  # staggered starts
            while not stop.is_set():
                sleep = nxt - time.perf_counter()
                if sleep > 0:
                    time.sleep(sleep)
                s = int(rng.integers(streams))
                t = time.perf_counter()
                try:
                    got = http.get(f"/v1/streams/dev{s}/value/forecast")
                    code: int | str = got[0] if isinstance(got, tuple) else got.status_code
                except (httpx.HTTPError, OSError) as e:
                    code = type(e).__name__
                took = time.perf_counter() - t
                with lock:
                    lat.append(took)
                    codes[code] = codes.get(code, 0) + 1
                nxt += interval
                if nxt < time.perf_counter():
                    nxt = time.perf_counter()  # behind: do not burst to catch up

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((lat, codes))


def _pct(xs: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


class _Pub:
    """The publisher behind one interface: ``send``, ``acked``, ``pump(timeout)``, ``close``."""

    def __init__(self, send: Any, acked: Any, pump: Any, close: Any) -> None:
        self.send, self.acked, self.pump, self.close = send, acked, pump, close


def _publisher(port: int, raw: bool) -> _Pub:
    """Both drive the socket from the caller's thread: a reading's stamp is when it went on
    the wire, not when a network thread got the GIL to send it (that wait would be counted
    as service latency)."""
    if raw:
        from tools.bench.loadgen import RawPublisher

        rp = RawPublisher("127.0.0.1", port, "bench-latency-pub")
        return _Pub(rp.publish, lambda: rp.acked, rp.read_acks, rp.close)
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    pc = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-latency-pub", protocol=paho.MQTTv311)
    pc.max_inflight_messages_set(20_000)
    pc.max_queued_messages_set(0)
    acked = [0]
    pc.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    pc.connect("127.0.0.1", port)
    while not pc.is_connected():
        pc.loop(0.1)

    def send(topic: bytes, payload: bytes) -> None:
        info = pc.publish(topic.decode(), payload, qos=1)
        if info.rc != 0:
            raise RuntimeError(f"publish failed: rc {info.rc}")

    return _Pub(send, lambda: acked[0], lambda t: pc.loop(t), pc.disconnect)


def run(args: argparse.Namespace) -> int:
    from tools.bench.serveproc import ServeProcess, stack_env

    work = Path(tempfile.mkdtemp(prefix="sc-bench-latency-"))
    broker = start_mosquitto()
    influx = start_influxd(db="bench")
    procs: dict[str, ServeProcess] = {}
    try:
        models = args.models_dir
        if models is None:
            from tools.modelkit import KitSpec, write_model

            models = work / "models"
            write_model(models, KitSpec(name="kit", layers=2, hidden=args.hidden, mean=(20.0,), std=(3.0,),
                                        warmup_steps=10, horizon=12))
        roles = {"svc": "ingest,inference,api"} if args.topology == "one" else {
            "ingest": "ingest,api", "svc": "inference,api"}
        for name, role_set in roles.items():
            env = stack_env(
                work / name, broker.url, f"influxdb://127.0.0.1:{influx.port}/bench", models, free_port(),
                SENSORCAST_ROLES=role_set,
                SENSORCAST_LOG_LEVEL="WARNING",
                SENSORCAST_STREAMS__TICK_S=str(args.tick_s),
                SENSORCAST_INGEST__BATCH_INTERVAL_S=str(args.batch_interval_s),
                SENSORCAST_ANOMALY__MIN_COUNT="1", SENSORCAST_ANOMALY__WINDOW="1",  # fire on the spike itself
                SENSORCAST_ANOMALY__COOLDOWN_S="0",
                **({} if args.gather_s is None else {"SENSORCAST_STREAMS__GATHER_S": str(args.gather_s)}),
            )
            (work / name).mkdir(parents=True)
            procs[name] = ServeProcess(env, work / name / "serve.log")
            procs[name].start()
            procs[name].wait_ready(30)
        svc = procs["svc"]  # inference and API
        ingest = procs.get("ingest", svc)

        ctx = mp.get_context("spawn")
        w_out, w_ready, w_stop = ctx.Queue(), ctx.Event(), ctx.Event()
        p_out, go, p_stop = ctx.Queue(), ctx.Event(), ctx.Event()
        watcher = ctx.Process(target=_watcher, args=(broker.port, w_out, w_ready, w_stop))
        prober = ctx.Process(target=_prober, args=(svc.url, args.streams, args.http_rate, p_out, go, p_stop,
                                                  args.clients == "raw"))
        watcher.start()
        prober.start()
        w_ready.wait(30)

        pub = _publisher(broker.port, raw=args.clients == "raw")

        n_streams = args.streams
        rounds = max(WARM_ROUNDS + 20, int(args.seconds * args.rate / n_streams))
        rng = np.random.default_rng(0)
        phase = rng.uniform(0, 2 * np.pi, n_streams)
        spike_round = WARM_ROUNDS + rng.integers(0, rounds - WARM_ROUNDS - 5, n_streams)
        sent = np.full((rounds, n_streams), np.nan)  # (K, S) publish wall time
        slot = 0.01  # pace in 10 ms slots
        per_slot = max(1, int(args.rate * slot))
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work on this box skews every number)")
        print(f"topology: {args.topology} ({', '.join(f'{n}: {r}' for n, r in roles.items())}); "
              f"load clients: {args.clients}")
        print(f"publishing {rounds * n_streams} readings ({rounds} rounds x {n_streams} streams) at {args.rate:.0f}/s; "
              f"GET forecast at {args.http_rate:.0f}/s")
        t_start = time.perf_counter()
        cpu_start = time.process_time()
        t_probe = 0.0
        nxt = t_start
        count = 0
        for k in range(rounds):
            ts = T0 + k * C
            vals = np.sin(k / 8.0 + phase) * 3 + 20 + rng.normal(0, 0.1, n_streams)
            vals[spike_round == k] += 30.0
            if k == WARM_ROUNDS:
                go.set()  # streams are warm: start probing forecasts
                t_probe = time.perf_counter()
            for s in range(n_streams):
                sent[k, s] = time.time()
                pub.send(b"sensors/dev%d/value" % s, b'{"ts":%d,"value":%.4f}' % (ts, vals[s]))
                count += 1
                while count - pub.acked() > _MAX_UNACKED:  # the broker is behind: wait, never drop
                    pub.pump(0.001)
                if count % 32 == 0:
                    pub.pump(0)  # read the PUBACKs that have arrived
                if count % per_slot == 0:
                    nxt += slot
                    while (pause := nxt - time.perf_counter()) > 0:
                        pub.pump(pause)  # returns early when a PUBACK arrives
        elapsed = time.perf_counter() - t_start
        pub_cores = (time.process_time() - cpu_start) / elapsed
        p_stop.set()  # forecast latency is measured under load only
        probe_s = time.perf_counter() - t_probe if t_probe else 0.0
        deadline = time.monotonic() + 60
        while svc.metric("sensorcast_steps_total") < count and time.monotonic() < deadline:
            time.sleep(0.2)  # the service is still working through a backlog
        time.sleep(1.0)  # let the last alerts arrive
        w_stop.set()
        lat_http, codes = p_out.get(timeout=30)
        alerts = w_out.get(timeout=30)
        watcher.join(10)
        prober.join(10)
        pub.close()

        lat_alert = []
        matched_spikes = 0
        for sid, ts_ns, state, arrived in alerts:
            if state != "firing":
                continue
            s = int(sid.split("/")[0][3:])
            k = (ts_ns - T0) // C
            if 0 <= k < rounds and not np.isnan(sent[k, s]):
                lat_alert.append(arrived - sent[k, s])
                matched_spikes += int(spike_round[s] == k)
        stages = {
            "store write": (ingest, "sensorcast_store_write_seconds"),
            "model step": (svc, "sensorcast_step_batch_seconds"),
        }
        stage_text = "  ".join(
            f"{label} p50 <= {p.histogram_le(m, 0.5) * 1e3:g} ms, p99 <= {p.histogram_le(m, 0.99) * 1e3:g} ms"
            for label, (p, m) in stages.items()
        )
        gc_full = svc.metric("sensorcast_gc_pause_seconds_count", 'generation="2"')
        gc_text = (f"{gc_full:.0f} full collections; all pauses p99 <= "
                   f"{svc.histogram_le('sensorcast_gc_pause_seconds', 0.99) * 1e3:g} ms, "
                   f"max <= {svc.histogram_le('sensorcast_gc_pause_seconds', 1.0) * 1e3:g} ms")
        stored = ingest.metric("sensorcast_readings_stored_total")
        steps = svc.metric("sensorcast_steps_total")
        ms = 1000.0
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print(f"published      {count} readings in {elapsed:.1f} s = {count / elapsed:,.0f}/s (QoS 1), "
              f"publisher CPU {pub_cores:.2f} cores ({args.clients})")
        print(f"service        stored {stored:,.0f}, model steps {steps:,.0f}")
        for name, proc in procs.items():
            cpu = proc.cpu_seconds()
            print(f"  process {name:<7} roles {proc.env['SENSORCAST_ROLES']:<21} CPU {cpu:.1f} s "
                  f"({cpu / (elapsed + 3):.2f} cores), RSS {proc.rss_bytes() / 2**20:.0f} MiB")
        print(f"stages         {stage_text} (histogram bucket bounds)")
        print(f"gc (svc)       {gc_text}")
        print(f"alerts         {sum(1 for a in alerts if a[2] == 'firing')} firing "
              f"({matched_spikes} of {n_streams} injected spikes), {sum(1 for a in alerts if a[2] == 'resolved')} resolved")
        print(f"publish->alert p50 {_pct(lat_alert, 50) * ms:.1f} ms  p90 {_pct(lat_alert, 90) * ms:.1f} ms  "
              f"p99 {_pct(lat_alert, 99) * ms:.1f} ms  max {max(lat_alert, default=float('nan')) * ms:.1f} ms  "
              f"(n={len(lat_alert)}; target p99 <= 50 ms)")
        print(f"GET forecast   p50 {_pct(lat_http, 50) * ms:.2f} ms  p90 {_pct(lat_http, 90) * ms:.2f} ms  "
              f"p99 {_pct(lat_http, 99) * ms:.2f} ms  max {max(lat_http, default=float('nan')) * ms:.1f} ms  "
              f"(n={len(lat_http)}, {len(lat_http) / max(probe_s, 1e-9):.0f}/s, status {codes}; target p99 <= 10 ms)")
        return 0
    finally:
        for proc in procs.values():
            proc.close()
        broker.stop()
        influx.stop()
        shutil.rmtree(work, ignore_errors=True)
